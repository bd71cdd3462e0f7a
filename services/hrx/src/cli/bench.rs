//! `hrx bench`: one run measuring hrx against the machine's own limits for the same
//! work, printed as a table and written as JSON (default `target/bench/latest.json`).
//! `--smoke` runs tiny counts in seconds (what CI runs); benchmarks are not tests.
//!
//! With `--kafka-brokers` and `--database-url` (or `HRX_BENCH_KAFKA_BROKERS` and
//! `HRX_BENCH_DATABASE_URL`; `bash tests/bench.sh` starts both services and sets them)
//! the run also measures hrx on Kafka + PostgreSQL and those services' raw limits; the
//! projector then runs as a process of this very executable (`hrx serve --role
//! projector`), so that its RSS is its own.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

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
    /// Kafka bootstrap servers: with --database-url, also measures the distributed rows
    /// (on topics of the run's own, deleted afterwards).
    #[arg(
        long,
        env = "HRX_BENCH_KAFKA_BROKERS",
        requires = "database_url",
        value_name = "HOST:PORT[,…]"
    )]
    kafka_brokers: Option<String>,
    /// PostgreSQL URL of a server where the run may create a database of its own (and
    /// drop it afterwards), e.g. postgres://postgres@127.0.0.1:5432/postgres.
    #[arg(
        long,
        env = "HRX_BENCH_DATABASE_URL",
        requires = "kafka_brokers",
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Option<String>,
    /// CA certificate (PEM) of brokers reached over TLS.
    #[arg(long, env = "HRX_BENCH_KAFKA_CA_FILE", value_name = "PEM")]
    kafka_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that authenticate clients; with
    /// --kafka-key-file.
    #[arg(
        long,
        env = "HRX_BENCH_KAFKA_CERT_FILE",
        requires = "kafka_key_file",
        value_name = "PEM"
    )]
    kafka_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --kafka-cert-file.
    #[arg(
        long,
        env = "HRX_BENCH_KAFKA_KEY_FILE",
        requires = "kafka_cert_file",
        value_name = "PEM"
    )]
    kafka_key_file: Option<PathBuf>,
}

pub fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let distributed = match (a.kafka_brokers, a.database_url) {
        (Some(kafka_brokers), Some(database_url)) => Some(hrx_bench::Services {
            kafka_brokers,
            kafka_tls: (a.kafka_ca_file.is_some() || a.kafka_cert_file.is_some()).then(|| {
                hrx_kafka::KafkaTls {
                    ca_file: a.kafka_ca_file,
                    client_identity: a.kafka_cert_file.zip(a.kafka_key_file),
                }
            }),
            database_url,
        }),
        _ => None,
    };
    let hrx_exe = if distributed.is_some() {
        Some(
            std::env::current_exe()
                .context("the path of this executable (for the projector process)")?,
        )
    } else {
        None
    };
    let report = hrx_bench::run(hrx_bench::Options {
        smoke: a.smoke,
        seed: a.seed,
        progress: !a.smoke && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        distributed,
        hrx_exe,
    })?;
    println!("{report}");
    report.write_json(&a.json)?;
    eprintln!("wrote {}", a.json.display());
    // A phase that was asked for and failed fails the command (after the table, which
    // still holds everything else).
    let failed: Vec<&str> = report
        .rows
        .iter()
        .filter(|r| r.status == hrx_bench::Status::Failed)
        .map(|r| r.id.as_str())
        .collect();
    if !failed.is_empty() {
        eprintln!(
            "hrx bench: not measured because of errors: {}",
            failed.join(", ")
        );
        return Ok(ExitCode::from(super::EXIT_ERROR));
    }
    Ok(ExitCode::SUCCESS)
}
