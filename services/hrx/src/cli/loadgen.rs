//! `hrx loadgen`: a deterministic synthetic population (facilities of the three levels,
//! patients, chronic patients with long histories, FHIR R4 bodies of 0.5–4 KB) as load
//! for a running node.
//!
//! - `presign --out DIR`: signs every facility's chain to files (see
//!   `hrx_bench::files`), so that a run spends nothing on signing.
//! - `run`: registers the population's facilities and keys at the node (idempotently)
//!   and submits each facility's chain in order, from `--from DIR` or signed on the fly,
//!   at `--rate` events/s or as fast as possible; prints what the node answered, the
//!   throughput and the latency of the `SubmitEvents` calls.
//!
//! Keys come from the seed and every event is signed at one time (`--signed-at`, by
//! default the start of the day), so a population pre-signed and the same population
//! signed on the fly are the same bytes, and running twice against one node gives
//! duplicates the second time, never a second copy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use hrx_bench::files::{self, LoadFacility};
use hrx_bench::loadgen::{
    self, ChainSigner, EnvelopeSource, LoadgenError, Pace, Population, PopulationSpec,
    SubmitOptions, SubmitReport,
};
use hrx_domain::FacilityLevel;
use hrx_identity::TlsDir;
use hrx_node::client::NationalCenter;

use super::EXIT_REJECTED;
use super::serve::running_node;

#[derive(clap::Args, Debug)]
pub struct LoadgenArgs {
    #[command(subcommand)]
    command: LoadgenCommand,
}

#[derive(clap::Subcommand, Debug)]
enum LoadgenCommand {
    /// Generate a population and pre-sign every facility's chain to files (no node needed).
    Presign(PresignArgs),
    /// Register a population's facilities at a running node and submit their chains.
    Run(Box<RunArgs>),
}

/// The population's size; the same flags and seed give the same population, keys and
/// signed bytes.
#[derive(clap::Args, Debug, Clone)]
struct PopulationArgs {
    /// Seeds everything: facilities, patients, records, signing keys.
    #[arg(long, default_value_t = 20_261_126)]
    seed: u64,
    /// Facilities (a third each initial, basic, specialized).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=4000))]
    facilities: u64,
    /// Patients (synthetic 12-digit personal ids).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    patients: u64,
    /// Chronic patients, with long histories [default: one per 200 patients, at least 1].
    #[arg(long)]
    chronic: Option<u64>,
    /// Records of each chronic patient.
    #[arg(long, default_value_t = 1000)]
    chronic_records: u64,
    /// Mean records of every other patient.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    records_per_patient: u64,
    /// Every event's recorded_at, RFC 3339 [default: the start of today, UTC]. The same
    /// seed and time sign the same bytes; the exchange refuses times more than its
    /// clock bound (7 days by default) in the past.
    #[arg(long)]
    signed_at: Option<String>,
}

impl PopulationArgs {
    fn signed_at(&self) -> anyhow::Result<hrx_domain::Timestamp> {
        match &self.signed_at {
            Some(t) => hrx_domain::Timestamp::parse_rfc3339(t)
                .map_err(|_| anyhow::anyhow!("--signed-at {t:?} is not an RFC 3339 time")),
            None => Ok(Population::signed_at(hrx_domain::Timestamp::now())),
        }
    }

    fn spec(&self) -> anyhow::Result<PopulationSpec> {
        let chronic = self.chronic.unwrap_or((self.patients / 200).max(1));
        if chronic > self.patients {
            bail!(
                "--chronic {chronic} is more than --patients {}",
                self.patients
            );
        }
        Ok(PopulationSpec {
            seed: self.seed,
            facilities: self.facilities as usize,
            patients: self.patients as usize,
            chronic_patients: chronic as usize,
            chronic_records: self.chronic_records as usize,
            records_per_patient: self.records_per_patient as usize,
        })
    }
}

#[derive(clap::Args, Debug)]
struct PresignArgs {
    /// Directory to write (created; must not hold a population already).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    population: PopulationArgs,
    /// Signing threads [default: the CPUs available].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The node's data directory: the national center's credentials and root key, and
    /// where the facilities' client certificates are issued.
    #[arg(
        long,
        visible_alias = "data",
        default_value = "hrx-data",
        env = "HRX_DATA_DIR"
    )]
    data_dir: PathBuf,
    /// The node's gRPC address [default: the one in DATA_DIR/node.json, written by `hrx serve`].
    #[arg(long)]
    node: Option<SocketAddr>,
    /// A directory written by `hrx loadgen presign`; without it, the population the
    /// flags below describe is signed on the fly (signing on the measured path).
    #[arg(long, conflicts_with_all = [
        "seed", "facilities", "patients", "chronic", "chronic_records", "records_per_patient",
        "signed_at",
    ])]
    from: Option<PathBuf>,
    #[command(flatten)]
    population: PopulationArgs,
    /// Target events per second, all facilities together [default: as fast as possible].
    #[arg(long)]
    rate: Option<f64>,
    /// Envelopes per SubmitEvents call.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// SubmitEvents calls in flight at most (each facility's chain stays in order).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
}

pub fn run(args: LoadgenArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        LoadgenCommand::Presign(a) => presign(a),
        LoadgenCommand::Run(a) => run_load(*a),
    }
}

fn show_progress() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

fn describe(pop: &Population) -> String {
    let spec = pop.spec();
    let level = |l: FacilityLevel| pop.facilities().iter().filter(|f| f.level == l).count();
    format!(
        "seed {}, {} facilities ({} initial, {} basic, {} specialized), {} patients ({} chronic × {} records), {} events",
        spec.seed,
        pop.facilities().len(),
        level(FacilityLevel::Initial),
        level(FacilityLevel::Basic),
        level(FacilityLevel::Specialized),
        pop.patients().len(),
        pop.chronic().count(),
        spec.chronic_records,
        pop.total_records(),
    )
}

fn presign(a: PresignArgs) -> anyhow::Result<ExitCode> {
    let pop = Population::from_spec(a.population.spec()?);
    println!("population: {}", describe(&pop));
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let bar = show_progress().then(|| loadgen::progress_bar(pop.total_records() as u64, "signed"));
    let started = Instant::now();
    let manifest =
        files::write_population(&a.out, &pop, a.population.signed_at()?, threads, &|n| {
            if let Some(b) = &bar {
                b.inc(n);
            }
        })
        .with_context(|| format!("presigning to {}", a.out.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let bytes: u64 = manifest.facilities.iter().map(|f| f.chain_bytes).sum();
    println!(
        "wrote {} envelopes ({:.1} MB, mean {} B) for {} facilities in {:.2} s on {threads} threads",
        manifest.events,
        bytes as f64 / 1e6,
        bytes / manifest.events.max(1),
        manifest.facilities.len(),
        started.elapsed().as_secs_f64(),
    );
    println!("  manifest  {}", a.out.join(files::MANIFEST).display());
    println!("  chains    {}", a.out.join("chains").display());
    println!(
        "  keys      {} (derived from the seed: synthetic facilities only)",
        a.out.join("keys").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What a run submits: the facilities to register (and from when their keys are
/// valid), and per facility its signing key and its chain.
struct Load {
    what: String,
    facilities: Vec<LoadFacility>,
    valid_from: hrx_domain::Timestamp,
    chains: Vec<(hrx_domain::SigningKey, EnvelopeSource)>,
    events: u64,
}

fn from_dir(dir: &std::path::Path) -> anyhow::Result<Load> {
    let manifest = files::read_manifest(dir)?;
    let facilities = manifest.load_facilities()?;
    let chains = files::open_chains(dir, &manifest)?
        .into_iter()
        .map(|c| {
            let source: EnvelopeSource = Box::new(
                c.reader
                    .map(|r| r.map_err(|e| LoadgenError::Source(Box::new(e)))),
            );
            (c.key, source)
        })
        .collect();
    Ok(Load {
        what: format!(
            "{} facilities, {} events from {} (seed {})",
            facilities.len(),
            manifest.events,
            dir.display(),
            manifest.spec.seed
        ),
        valid_from: manifest.recorded_at()?,
        facilities,
        chains,
        events: manifest.events,
    })
}

fn on_the_fly(spec: PopulationSpec, signed_at: hrx_domain::Timestamp) -> Load {
    let pop = Arc::new(Population::from_spec(spec));
    let facilities = pop
        .facilities()
        .iter()
        .enumerate()
        .map(|(i, f)| LoadFacility {
            facility: f.clone(),
            public_key: pop.facility_key(i).public_key(),
        })
        .collect();
    let chains = pop
        .facilities()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let signer = ChainSigner::new(f.id.clone(), pop.facility_key(i));
            let source: EnvelopeSource = Box::new(pop.chain(i, signer, signed_at).map(Ok));
            (pop.facility_key(i), source)
        })
        .collect();
    Load {
        what: format!("{}, signed on the fly", describe(&pop)),
        facilities,
        valid_from: signed_at,
        chains,
        events: pop.total_records() as u64,
    }
}

fn run_load(a: RunArgs) -> anyhow::Result<ExitCode> {
    let addr = match a.node {
        Some(addr) => addr,
        None => running_node(&a.data_dir)?,
    };
    let load = match &a.from {
        Some(dir) => from_dir(dir)?,
        None => on_the_fly(a.population.spec()?, a.population.signed_at()?),
    };
    let pace = match a.rate {
        Some(r) if r.is_finite() && r > 0.0 => Pace::Rate(r),
        Some(_) => bail!("--rate must be a positive number of events per second"),
        None => Pace::AsFastAsPossible,
    };
    let options = SubmitOptions {
        batch: a.batch as usize,
        pace,
        concurrency: a.concurrency as usize,
    };
    println!("population: {}", load.what);
    let report = super::runtime()?.block_on(async {
        let nc = NationalCenter::open(&a.data_dir, addr)
            .await
            .with_context(|| format!("the national center at {addr}"))?;
        let tls = TlsDir::open_or_init(&a.data_dir)?;
        let reg = files::register(&nc, &tls, &load.facilities, load.valid_from).await?;
        println!(
            "registry: {} facilities registered, {} keys added, {} already registered",
            reg.registered, reg.keys_added, reg.already
        );
        let mut sources = Vec::with_capacity(load.chains.len());
        for (lf, (key, source)) in load.facilities.iter().zip(load.chains) {
            let client = files::facility_client(&tls, addr, &lf.facility.id, key).await?;
            sources.push((client, source));
        }
        let bar = show_progress().then(|| loadgen::progress_bar(load.events, "submitted"));
        let report = loadgen::submit_sources(sources, options, bar.clone()).await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        anyhow::Ok(report)
    })?;
    // Stopped part-way: what the node answered until then, then the reason.
    let report = match report {
        Ok(r) => r,
        Err(loadgen::LoadgenError::Interrupted { report, cause }) => {
            print_report(&report, addr, &options);
            bail!("stopped: {cause}");
        }
        Err(e) => return Err(e.into()),
    };
    print_report(&report, addr, &options);
    if report.tally.submitted != load.events {
        bail!(
            "submitted {} events where the population has {}",
            report.tally.submitted,
            load.events
        );
    }
    Ok(if report.tally.rejected > 0 {
        ExitCode::from(EXIT_REJECTED)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_report(report: &SubmitReport, addr: SocketAddr, options: &SubmitOptions) {
    let t = &report.tally;
    let pace = match options.pace {
        Pace::Rate(r) => format!("at {r} events/s"),
        Pace::AsFastAsPossible => "as fast as possible".into(),
    };
    println!(
        "submitted {} events to {addr} in {} calls (batch {}, concurrency {}, {pace})",
        t.submitted, t.calls, options.batch, options.concurrency
    );
    println!("accepted    {}", t.accepted);
    println!("duplicate   {}", t.duplicates);
    if report.rejected_by_reason.is_empty() {
        println!("rejected    {}", t.rejected);
    } else {
        let reasons: Vec<String> = report
            .rejected_by_reason
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        println!("rejected    {} ({})", t.rejected, reasons.join(", "));
    }
    let secs = report.elapsed.as_secs_f64();
    println!("elapsed     {secs:.3} s");
    println!(
        "throughput  {:.1} events/s",
        t.submitted as f64 / secs.max(1e-9)
    );
    let mut latency = report.latency.clone();
    match (latency.percentile_ms(50.0), latency.percentile_ms(99.0)) {
        (Some(p50), Some(p99)) => println!(
            "latency     p50 {p50:.1} ms, p99 {p99:.1} ms ({} SubmitEvents calls)",
            latency.len()
        ),
        _ => println!("latency     no calls"),
    }
}
