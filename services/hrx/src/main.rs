//! `hrx`: the health record exchange's one binary. Each subcommand lives in [`cli`];
//! this file only parses arguments and turns errors into one line and an exit code.

mod cli;
mod files;

use clap::Parser as _;

/// jemalloc, not the system allocator: a node's load comes in bursts (a projector
/// catching up, a page of large bodies), and glibc's per-thread arenas keep what a
/// burst took, so its RSS climbs to the largest burst seen and stays there; jemalloc
/// returns freed pages after a few seconds (BENCHMARKS.md, "Soak").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    // Logs go to stderr; RUST_LOG overrides the default (warnings and errors). Logs
    // carry ids and counts only, never patient data.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            // One line, causes joined; never a backtrace, whatever RUST_BACKTRACE says.
            eprintln!("hrx: error: {e:#}");
            std::process::ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
