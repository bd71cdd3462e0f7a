//! `hrx`: the health record exchange's one binary. Each subcommand lives in [`cli`];
//! this file only parses arguments and turns errors into one line and an exit code.

mod cli;
mod files;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            // One line, causes joined; never a backtrace, whatever RUST_BACKTRACE says.
            eprintln!("hrx: error: {e:#}");
            std::process::ExitCode::from(cli::EXIT_ERROR)
        }
    }
}
