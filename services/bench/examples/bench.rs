//! Runs the benchmark and prints the table; writes `target/bench/latest.json`.
//!
//! `cargo run --release -p hrx-bench --example bench [-- --smoke] [--seed N] [--json PATH]`

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut options = hrx_bench::Options {
        progress: true,
        ..Default::default()
    };
    let mut json = PathBuf::from("target/bench/latest.json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => options.smoke = true,
            "--seed" => match args.next().and_then(|s| s.parse().ok()) {
                Some(s) => options.seed = s,
                None => {
                    eprintln!("--seed needs a number");
                    return ExitCode::from(2);
                }
            },
            "--json" => match args.next() {
                Some(p) => json = PathBuf::from(p),
                None => {
                    eprintln!("--json needs a path");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    match hrx_bench::run(options) {
        Ok(report) => {
            println!("{report}");
            if let Err(e) = report.write_json(&json) {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
            println!("\nJSON: {}", json.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::from(2)
        }
    }
}
