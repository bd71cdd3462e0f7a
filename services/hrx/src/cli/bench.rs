//! `hrx bench`: one run measuring hrx against the machine's own limits for the same
//! work, printed as a table and written as JSON (default `target/bench/latest.json`).
//! `--smoke` runs tiny counts in seconds (what CI runs); benchmarks are not tests.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Tiny counts, a few seconds: checks the harness works, measures nothing useful.
    #[arg(long)]
    smoke: bool,
    /// Seed of the synthetic population.
    #[arg(long, default_value_t = 20_261_126)]
    seed: u64,
    /// Where to write the report as JSON.
    #[arg(long, default_value = "target/bench/latest.json")]
    json: PathBuf,
}

pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let report = hrx_bench::run(hrx_bench::Options {
        smoke: a.smoke,
        seed: a.seed,
        progress: !a.smoke && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    })?;
    println!("{report}");
    report.write_json(&a.json)?;
    eprintln!("wrote {}", a.json.display());
    Ok(ExitCode::SUCCESS)
}
