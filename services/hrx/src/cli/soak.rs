//! `hrx soak`: every hrx role in child processes of this executable on Kafka +
//! PostgreSQL, under a steady mix for `--duration` seconds (ingest, timeline reads,
//! followers, a grant and a revocation every `--consent-every-ms`), sampling each
//! process's RSS and the projector's lag, then reconciling (see `hrx_bench::soak`).
//! Prints a summary, writes the JSON; exits non-zero on any error answered, a failed
//! reconciliation, or (full runs) RSS not flat after warm-up.
//!
//! Kafka and PostgreSQL as for `hrx bench`: `--kafka-brokers`/`--database-url` or
//! `HRX_BENCH_KAFKA_BROKERS`/`HRX_BENCH_DATABASE_URL` (and the Kafka TLS files);
//! `bash tests/soak.sh` starts both and sets them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// 15 s at small rates (unless given): checks the soak works, measures little.
    #[arg(long)]
    smoke: bool,
    /// Seconds of load [default: 600; 15 with --smoke].
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Records per second offered in all [default: 900, half the ~1,900 events/s the
    /// distributed bench measured "all visible"; 100 with --smoke].
    #[arg(long)]
    ingest_per_s: Option<f64>,
    /// GetTimeline requests per second [default: 200; 20 with --smoke].
    #[arg(long)]
    reads_per_s: Option<f64>,
    /// Live follow streams, one per followed patient [default: 100; 8 with --smoke].
    #[arg(long)]
    followers: Option<usize>,
    /// A consent grant and a revocation every this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    consent_every_ms: u64,
    /// Where to write the report as JSON.
    #[arg(long, default_value = "target/soak/latest.json")]
    json: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "HRX_BENCH_KAFKA_BROKERS", value_name = "HOST:PORT[,…]")]
    kafka_brokers: String,
    /// PostgreSQL URL of a server where the run may create a database of its own (and
    /// drop it afterwards).
    #[arg(
        long,
        env = "HRX_BENCH_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: String,
    /// CA certificate (PEM) of brokers reached over TLS.
    #[arg(long, env = "HRX_BENCH_KAFKA_CA_FILE", value_name = "PEM")]
    kafka_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that authenticate clients.
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

pub fn run(a: SoakArgs) -> anyhow::Result<ExitCode> {
    let services = hrx_bench::Services {
        kafka_brokers: a.kafka_brokers,
        kafka_tls: (a.kafka_ca_file.is_some() || a.kafka_cert_file.is_some()).then(|| {
            hrx_kafka::KafkaTls {
                ca_file: a.kafka_ca_file,
                client_identity: a.kafka_cert_file.zip(a.kafka_key_file),
            }
        }),
        database_url: a.database_url,
    };
    let exe = std::env::current_exe().context("the path of this executable (for hrx serve)")?;
    let mut o = if a.smoke {
        hrx_bench::SoakOptions::smoke(services, exe)
    } else {
        hrx_bench::SoakOptions::full(services, exe)
    };
    if let Some(d) = a.duration {
        o.duration = Duration::from_secs(d);
    }
    if let Some(r) = a.ingest_per_s {
        o.ingest_per_s = r;
    }
    if let Some(r) = a.reads_per_s {
        o.reads_per_s = r;
    }
    if let Some(n) = a.followers {
        o.followers = n;
    }
    o.consent_every = Duration::from_millis(a.consent_every_ms.max(1));
    // A short run (a check before the real one) keeps three quarters after warm-up.
    o.warmup = o.warmup.min(o.duration / 4);
    let report = hrx_bench::soak::run(o)?;
    println!("{report}");
    report.write_json(&a.json)?;
    eprintln!("wrote {}", a.json.display());
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_ERROR)
    })
}
