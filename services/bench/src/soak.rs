//! The soak: hrx's distributed deployment under a steady mix of work for a long time
//! (10 minutes by default), watched for memory growth, errors and loss.
//!
//! The deployment, isolated as [`crate::distributed`]'s (a database and a topic prefix of
//! the run's own, dropped and deleted at the end): **every** hrx role runs in a child
//! process of the `hrx` executable, so that each process's RSS is its own — one `hrx
//! serve --role projector` and one `hrx serve --role
//! ingest,timeline,consent,registry,monitor` ([`HrxProcess`]). This process is the
//! client only: it registers the facilities (as the national center), gives the
//! standing records and consent grants the reads need, then offers, all at once and
//! open-loop (each at its own rate whatever the answers are doing; a tick that comes
//! while its submitter is still busy is skipped and counted as offered, not sent):
//!
//! - **ingest**: records about the population's patients, signed on the fly by several
//!   facilities (each its own hash chain, batches of up to 50 per `SubmitEvents`), at
//!   the given rate in all; every accepted event id is kept per facility;
//! - **timeline reads**: `GetTimeline` (first page of 50, chronic care) of a random
//!   followed patient by the clinic that has its grant;
//! - **followers**: one `Follow` stream per followed patient from chronic-care clinics
//!   (at most [`FOLLOWS_PER_CLINIC`] each, the node's per-caller default), consuming
//!   entries and heartbeats; a stream that ends is an error, reopened from its cursor;
//! - **consent churn**: every period, one facility-attested grant and the revocation (by
//!   the same attesting facility) of the grant made [`REVOKE_AFTER`] periods earlier.
//!
//! Every answer that is a gRPC error, a rejection or an unexpected duplicate is counted
//! by kind. Every `sample_every` (10 s): each child's VmRSS (`/proc/<pid>/status`), the
//! projector's lag (`GetProjectorLag`) and the counts so far. After the load stops and
//! the projector has caught up (bounded wait), the run is reconciled by SQL on its
//! database: each facility's chain index (count and head seq) and records (count, no
//! duplicate, the very ids accepted), the grants and their revocations, and every
//! accepted record of a followed patient delivered to its follower.
//!
//! RSS after warm-up is judged flat when it grew by less than [`FLAT_GROWTH_PCT`] % from
//! the end of warm-up to the end; the slope (least squares, MiB/min) is reported either
//! way. Nothing here writes patient data to logs or to the report: counts and ids of
//! facilities only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hrx_domain::{Envelope, EventId, FacilityId, PatientId, Purpose, Sha256, Timestamp};
use hrx_node::client::{FacilityClient, NationalCenter};
use hrx_proto::v1;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::bench::{self, BenchError, Registered, phase};
use crate::distributed::{self, Database, HrxProcess, Services};
use crate::limits;
use crate::loadgen::{self, ChainSigner, Population, PopulationSpec};
use crate::rng::Rng;
use crate::stats::{Machine, Samples};

/// Follow streams per clinic: the node's default `max_follow_streams_per_caller`.
pub const FOLLOWS_PER_CLINIC: usize = 16;
/// A churned grant is revoked this many consent periods after it was made.
pub const REVOKE_AFTER: usize = 5;
/// RSS growth after warm-up below which it is judged flat, in percent.
pub const FLAT_GROWTH_PCT: f64 = 10.0;
/// Envelopes per `SubmitEvents` call at most.
const MAX_BATCH: usize = 50;

/// What to run.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// Short and small: what CI runs so that the soak keeps working.
    pub smoke: bool,
    pub duration: Duration,
    /// Records per second offered in all.
    pub ingest_per_s: f64,
    pub reads_per_s: f64,
    pub followers: usize,
    /// One grant and one revocation per period.
    pub consent_every: Duration,
    /// RSS before this is start-up and warm-up, not judged.
    pub warmup: Duration,
    pub sample_every: Duration,
    /// Facilities submitting records.
    pub ingest_facilities: usize,
    /// Patients records are about (the followed ones among them).
    pub patients: usize,
    pub seed: u64,
    pub services: Services,
    /// The `hrx` executable whose `serve` runs the roles.
    pub hrx_exe: PathBuf,
}

impl SoakOptions {
    /// The mix: 10 minutes, 900 records/s (half the ~1,900 events/s measured
    /// "all visible" by the distributed bench), 200 reads/s, 100 followers, a grant and
    /// a revocation every second, 60 s of warm-up, a sample every 10 s.
    pub fn full(services: Services, hrx_exe: PathBuf) -> Self {
        Self {
            smoke: false,
            duration: Duration::from_secs(600),
            ingest_per_s: 900.0,
            reads_per_s: 200.0,
            followers: 100,
            consent_every: Duration::from_millis(1000),
            warmup: Duration::from_secs(60),
            sample_every: Duration::from_secs(10),
            ingest_facilities: 8,
            patients: 1000,
            seed: 20_261_203,
            services,
            hrx_exe,
        }
    }

    /// 15 s at small rates, 3 s of warm-up, a sample every 2 s.
    pub fn smoke(services: Services, hrx_exe: PathBuf) -> Self {
        Self {
            smoke: true,
            duration: Duration::from_secs(15),
            ingest_per_s: 100.0,
            reads_per_s: 20.0,
            followers: 8,
            warmup: Duration::from_secs(3),
            sample_every: Duration::from_secs(2),
            ingest_facilities: 4,
            patients: 100,
            ..Self::full(services, hrx_exe)
        }
    }
}

// --- The report ------------------------------------------------------------------------

/// One kind of load: what was offered at its rate, sent, and answered without error.
#[derive(Clone, Debug, Serialize)]
pub struct LoadLine {
    pub name: String,
    pub unit: String,
    pub target_per_s: f64,
    pub offered: u64,
    pub sent: u64,
    pub ok: u64,
    pub achieved_per_s: f64,
    /// Answer latency of the calls (from the intended send time), if measured.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A sample taken every `sample_every` during the load.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// VmRSS of each child process, by its roles, MiB (`None`: it had exited).
    pub rss_mib: BTreeMap<String, Option<f64>>,
    /// VmRSS of this harness (the client), MiB.
    pub harness_rss_mib: Option<f64>,
    /// Events in the log not yet projected, over all partitions.
    pub lag_events: Option<u64>,
    pub oldest_unprojected_ms: Option<u64>,
    pub accepted_records: u64,
    pub reads_ok: u64,
    pub deliveries: u64,
    pub grants: u64,
    pub revocations: u64,
    pub errors: u64,
}

/// One process's RSS over the run.
#[derive(Clone, Debug, Serialize)]
pub struct RssSummary {
    pub process: String,
    pub roles: String,
    pub at_warmup_end_mib: Option<f64>,
    pub at_end_mib: Option<f64>,
    pub max_mib: Option<f64>,
    /// Least squares over the samples after warm-up.
    pub slope_mib_per_min: Option<f64>,
    /// From the end of warm-up to the end.
    pub growth_pct: Option<f64>,
    pub flat: bool,
}

/// One reconciliation check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub expected: u64,
    pub found: u64,
    pub ok: bool,
}

/// What a soak run measured.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    pub mode: String,
    /// Unix seconds at the start of the load.
    pub started_at: u64,
    pub machine: Machine,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub load: Vec<LoadLine>,
    pub follow_streams: usize,
    pub follow_heartbeats: u64,
    pub follow_reopened: u64,
    pub errors: BTreeMap<String, u64>,
    /// The first message of each kind of gRPC error (no patient data: the node's
    /// messages carry ids and counts only, transport errors none).
    pub first_errors: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
    pub rss: Vec<RssSummary>,
    pub max_lag_events: Option<u64>,
    pub max_oldest_unprojected_ms: Option<u64>,
    /// From the end of the load until the projector had caught up.
    pub settle_s: Option<f64>,
    pub reconciliation: Vec<Check>,
    pub reconciled: bool,
    pub rss_flat: bool,
    pub notes: Vec<String>,
}

impl SoakReport {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// No error answered, everything reconciled, and (except in smoke runs, too short
    /// for it) RSS flat after warm-up.
    pub fn passed(&self) -> bool {
        self.error_count() == 0 && self.reconciled && (self.smoke() || self.rss_flat)
    }

    fn smoke(&self) -> bool {
        self.mode == "smoke"
    }

    pub fn write_json(&self, path: &Path) -> Result<(), BenchError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| BenchError::Io("report directory", e))?;
        }
        let text =
            serde_json::to_string_pretty(self).map_err(|e| phase(format!("report JSON: {e}")))?;
        std::fs::write(path, text).map_err(|e| BenchError::Io("report file", e))
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "## hrx soak ({}): {:.0} s of load, {:.0} s warm-up, {} CPUs ({})\n",
            self.mode, self.duration_s, self.warmup_s, self.machine.cpus, self.machine.cpu_model
        )?;
        writeln!(
            f,
            "| load | target/s | offered | sent | ok | achieved/s | p50 ms | p99 ms |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for l in &self.load {
            writeln!(
                f,
                "| {} ({}) | {:.1} | {} | {} | {} | {:.1} | {} | {} |",
                l.name,
                l.unit,
                l.target_per_s,
                l.offered,
                l.sent,
                l.ok,
                l.achieved_per_s,
                opt(l.p50_ms, 1),
                opt(l.p99_ms, 1)
            )?;
        }
        writeln!(
            f,
            "\nfollow streams: {}, heartbeats {}, reopened {}",
            self.follow_streams, self.follow_heartbeats, self.follow_reopened
        )?;
        writeln!(
            f,
            "\n| process (roles) | RSS at warm-up end MiB | at end MiB | max MiB | slope MiB/min | growth % | flat |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---|")?;
        for r in &self.rss {
            writeln!(
                f,
                "| {} ({}) | {} | {} | {} | {} | {} | {} |",
                r.process,
                r.roles,
                opt(r.at_warmup_end_mib, 1),
                opt(r.at_end_mib, 1),
                opt(r.max_mib, 1),
                opt(r.slope_mib_per_min, 2),
                opt(r.growth_pct, 1),
                if r.flat { "yes" } else { "NO" }
            )?;
        }
        writeln!(
            f,
            "\nprojector lag: max {} events, oldest unprojected max {} ms; caught up {} s after the load stopped",
            self.max_lag_events
                .map_or_else(|| "–".into(), |v| v.to_string()),
            self.max_oldest_unprojected_ms
                .map_or_else(|| "–".into(), |v| v.to_string()),
            opt(self.settle_s, 1)
        )?;
        if self.errors.is_empty() {
            writeln!(f, "\nerrors: none")?;
        } else {
            writeln!(f, "\nerrors ({} in all):", self.error_count())?;
            for (k, n) in &self.errors {
                writeln!(f, "  {k}: {n}")?;
                if let Some(first) = self.first_errors.get(k) {
                    writeln!(f, "    first: {first}")?;
                }
            }
        }
        writeln!(f, "\n| reconciliation | expected | found | ok |")?;
        writeln!(f, "|---|---:|---:|---|")?;
        for c in &self.reconciliation {
            writeln!(
                f,
                "| {} | {} | {} | {} |",
                c.name,
                c.expected,
                c.found,
                if c.ok { "yes" } else { "NO" }
            )?;
        }
        writeln!(f, "\nsamples (t s: RSS MiB per process, lag events):")?;
        for s in &self.samples {
            let rss: Vec<String> = s
                .rss_mib
                .iter()
                .map(|(k, v)| format!("{k} {}", opt(*v, 1)))
                .collect();
            writeln!(
                f,
                "  {:>6.1}: {}; lag {}; records {} reads {} deliveries {} grants {} revocations {} errors {}",
                s.t_s,
                rss.join(", "),
                s.lag_events.map_or_else(|| "–".into(), |v| v.to_string()),
                s.accepted_records,
                s.reads_ok,
                s.deliveries,
                s.grants,
                s.revocations,
                s.errors
            )?;
        }
        for n in &self.notes {
            writeln!(f, "\nnote: {n}")?;
        }
        writeln!(
            f,
            "\nverdict: errors {}, reconciliation {}, RSS after warm-up {} → {}",
            self.error_count(),
            if self.reconciled { "ok" } else { "FAILED" },
            if self.rss_flat { "flat" } else { "NOT flat" },
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

// --- Counting --------------------------------------------------------------------------

/// Counts shared by the load tasks.
#[derive(Default)]
struct Counters {
    records_sent: AtomicU64,
    records_accepted: AtomicU64,
    /// Payload bytes of the records sent.
    record_bytes: AtomicU64,
    reads_sent: AtomicU64,
    reads_ok: AtomicU64,
    deliveries: AtomicU64,
    heartbeats: AtomicU64,
    reopened: AtomicU64,
    grants_sent: AtomicU64,
    grants: AtomicU64,
    revocations_sent: AtomicU64,
    revocations: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// The first message seen of each kind of error, with its source chain: what the
    /// count alone cannot say (which layer failed, and why).
    first_errors: Mutex<BTreeMap<String, String>>,
}

impl Counters {
    fn error(&self, kind: impl Into<String>) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *e.entry(kind.into()).or_default() += 1;
    }

    fn status(&self, what: &str, s: &tonic::Status) {
        let kind = format!("{what}: gRPC {:?}", s.code());
        let mut message = s.message().to_owned();
        let mut source = std::error::Error::source(s);
        while let Some(e) = source {
            message.push_str(": ");
            message.push_str(&e.to_string());
            source = e.source();
        }
        self.first_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind.clone())
            .or_insert(message);
        self.error(kind);
    }

    fn error_total(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What the node answered for one envelope.
enum Answer {
    Accepted,
    /// Rejected; `extends_chain`: the event still took its place in the chain.
    Rejected {
        kind: String,
        extends_chain: bool,
    },
    Duplicate,
}

fn answer(r: &v1::SubmitResult) -> Answer {
    match v1::SubmitStatus::try_from(r.status) {
        Ok(v1::SubmitStatus::Accepted) => Answer::Accepted,
        Ok(v1::SubmitStatus::Duplicate) => Answer::Duplicate,
        _ => Answer::Rejected {
            kind: r
                .rejection
                .as_ref()
                .and_then(|j| hrx_domain::Reason::from_code(j.reason))
                .map(|x| x.name().to_owned())
                .unwrap_or_else(|| "UNKNOWN".into()),
            extends_chain: r.extends_chain,
        },
    }
}

/// A facility's chain as the harness submits it: its signer, and the events the node
/// put in the chain (accepted, or rejected for content only).
struct Chain {
    client: Arc<FacilityClient>,
    signer: ChainSigner,
    in_chain: u64,
}

impl Chain {
    /// Submits `envelopes` (signed by `self.signer` in order); returns, per envelope,
    /// whether it was accepted, or `None` if the call failed. Counts every error as
    /// `what`; after a rejection that left the chain behind the signer, or a failed
    /// call, catches the signer up with the node's head.
    async fn submit(
        &mut self,
        envelopes: Vec<Envelope>,
        what: &str,
        counters: &Counters,
    ) -> Option<Vec<bool>> {
        let n = envelopes.len();
        let results = match self.client.submit(envelopes).await {
            Ok(r) => r,
            Err(e) => {
                counters.error(format!("{what}: {}", client_error_kind(&e)));
                self.resync(what, counters).await;
                return None;
            }
        };
        let mut accepted = Vec::with_capacity(n);
        let mut behind = results.len() != n;
        for r in &results {
            match answer(r) {
                Answer::Accepted => {
                    self.in_chain += 1;
                    accepted.push(true);
                }
                Answer::Duplicate => {
                    counters.error(format!("{what}: duplicate"));
                    accepted.push(false);
                }
                Answer::Rejected {
                    kind,
                    extends_chain,
                } => {
                    counters.error(format!("{what}: rejected {kind}"));
                    if extends_chain {
                        self.in_chain += 1;
                    } else {
                        behind = true;
                    }
                    accepted.push(false);
                }
            }
        }
        accepted.resize(n, false);
        if behind {
            self.resync(what, counters).await;
        }
        Some(accepted)
    }

    async fn resync(&mut self, what: &str, counters: &Counters) {
        let mut ingest = v1::ingest_service_client::IngestServiceClient::new(self.client.channel());
        match ingest
            .get_facility_head(v1::GetFacilityHeadRequest {
                facility_id: self.signer.facility().to_string(),
            })
            .await
        {
            Ok(head) => {
                let head = head.into_inner().head.unwrap_or_default();
                self.signer = ChainSigner::with_head(
                    self.signer.facility().clone(),
                    self.signer.key().clone(),
                    head.seq,
                    Sha256::from_slice(&head.event_hash).unwrap_or(Sha256::ZERO),
                );
                self.in_chain = head.seq;
            }
            Err(s) => counters.status(&format!("{what} (head)"), &s),
        }
    }
}

fn client_error_kind(e: &hrx_node::client::ClientError) -> String {
    match e {
        hrx_node::client::ClientError::Rpc(s) => format!("gRPC {:?}", s.code()),
        other => format!(
            "client {}",
            other.to_string().chars().take(60).collect::<String>()
        ),
    }
}

// --- The run ---------------------------------------------------------------------------

/// Runs the soak on a runtime of its own and returns its report (also when load or
/// reconciliation found problems: the report says which). Errors are the set-up's.
pub fn run(options: SoakOptions) -> Result<SoakReport, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Io("tokio runtime", e))?;
    rt.block_on(run_async(options))
}

async fn run_async(options: SoakOptions) -> Result<SoakReport, BenchError> {
    let services = options.services.clone();
    let name = distributed::run_name("hrx_soak");
    let prefix = format!("{name}.");
    let topics = [
        format!("{prefix}{}", hrx_kafka::FACILITY_EVENTS_TOPIC),
        format!("{prefix}{}", hrx_kafka::REGISTRY_TOPIC),
    ];
    let db = Database::create(&services.database_url, &name).await?;
    let result = deployed(&options, &db, &prefix).await;
    let mut cleanup = Vec::new();
    if let Err(e) = db.drop_database().await {
        cleanup.push(format!("could not drop the run's database {name}: {e}"));
    }
    if let Err(e) = limits::delete_topics(
        &services.kafka_brokers,
        services.kafka_tls.as_ref(),
        &topics,
    )
    .await
    {
        cleanup.push(format!("could not delete the run's Kafka topics: {e}"));
    }
    let mut report = result?;
    report.notes.extend(cleanup);
    Ok(report)
}

/// The deployment on the run's database and topics, then the load.
async fn deployed(
    options: &SoakOptions,
    db: &Database,
    prefix: &str,
) -> Result<SoakReport, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::Io("temp dir", e))?;
    let data = dir.path().to_owned();
    hrx_identity::TlsDir::open_or_init(&data)?;
    let (root, _) = hrx_node::keys::read_or_create(&hrx_node::root_key_path(&data))?;
    let config = distributed::node_config(&options.services, &data, &db.url, prefix, &root);
    // What `hrx migrate` does: the store's schema, the chain index, the topics.
    drop(hrx_node::backends(&config).await?);
    let mut processes = vec![
        HrxProcess::spawn(
            &options.hrx_exe,
            &config,
            "projector",
            data.join("projector"),
        )?,
        HrxProcess::spawn(
            &options.hrx_exe,
            &config,
            distributed::ROLES_BESIDE_PROJECTOR,
            data.join("node"),
        )?,
    ];
    for p in &mut processes {
        p.ready(Duration::from_secs(60)).await?;
    }
    let addr = processes[1].grpc_addr()?;
    let result = load(options, &data, addr, &db.url, &mut processes).await;
    // A failure is often a process's: say what each last wrote.
    let result = result.map_err(|e| {
        let tails: Vec<String> = processes
            .iter()
            .map(|p| format!("{}: {}", p.roles(), p.stderr_tail()))
            .collect();
        phase(format!(
            "{e}; the hrx processes last wrote: {}",
            tails.join("; ")
        ))
    });
    // Killed (see Drop) before the database is dropped.
    drop(processes);
    drop(dir);
    result
}

/// The harness's facilities and patients.
struct Cast {
    nc: NationalCenter,
    /// Record writers.
    chains: Vec<Chain>,
    /// Attests the grants (it wrote a standing record for each patient first).
    attestor: Chain,
    /// Chronic-care clinics: clinic `i / FOLLOWS_PER_CLINIC` follows and reads the
    /// followed patient `i`.
    clinics: Vec<Arc<FacilityClient>>,
    clinic_ids: Vec<FacilityId>,
    /// The population's patients; the first `followers` are followed, the next
    /// `churn` get the churned grants.
    patients: Vec<PatientId>,
    churn: usize,
    /// Events of the attestor's chain made at set-up, records among them.
    setup_events: u64,
    setup_records: u64,
    setup_grants: u64,
}

async fn cast(
    options: &SoakOptions,
    data: &Path,
    addr: std::net::SocketAddr,
) -> Result<Cast, BenchError> {
    let pop = Population::from_spec(PopulationSpec {
        seed: options.seed,
        facilities: options.ingest_facilities,
        patients: options.patients.max(options.followers + 20),
        chronic_patients: 0,
        chronic_records: 0,
        records_per_patient: 1,
    });
    let Registered {
        nc,
        probe_fac,
        reader_fac,
        signers,
        probe_signer,
    } = bench::register(data, addr, &pop).await?;
    let taken: HashSet<FacilityId> = pop
        .facilities()
        .iter()
        .map(|f| f.id.clone())
        .chain([probe_fac.clone(), reader_fac.clone()])
        .collect();
    let mut clinic_ids = vec![reader_fac];
    let wanted = options.followers.div_ceil(FOLLOWS_PER_CLINIC).max(1);
    let mut n = 2;
    while clinic_ids.len() < wanted {
        let id = pop.spare_facility(n);
        n += 1;
        if taken.contains(&id) || clinic_ids.contains(&id) {
            continue;
        }
        nc.register_facility(
            &id,
            &format!("Phòng khám Nội tiết {}", clinic_ids.len() + 1),
            "Hà Nội",
            hrx_domain::FacilityLevel::Initial,
        )
        .await?;
        clinic_ids.push(id);
    }
    // Ingest and the certificates' checks know a facility once its registration is
    // projected.
    if !nc.settle(Duration::from_secs(60)).await? {
        return Err(phase("the registrations were not projected within 60 s"));
    }
    let mut clinics = Vec::new();
    for id in &clinic_ids {
        clinics.push(Arc::new(FacilityClient::open(data, addr, id).await?));
    }
    let mut chains = Vec::new();
    for (id, signer) in signers {
        chains.push(Chain {
            client: Arc::new(FacilityClient::open(data, addr, &id).await?),
            signer,
            in_chain: 0,
        });
    }
    let mut attestor = Chain {
        client: Arc::new(FacilityClient::open(data, addr, &probe_fac).await?),
        signer: probe_signer,
        in_chain: 0,
    };
    let patients: Vec<PatientId> = pop.patients().iter().map(|p| p.id.clone()).collect();
    let churn = 20.min(patients.len() - options.followers);

    // Standing (a record by the attestor) for every followed and churned patient, and
    // each followed patient's chronic-care grant to its clinic.
    let mut rng = Rng::derive(options.seed, 91);
    let expires = Timestamp::now()
        .checked_add(hrx_domain::Duration::from_secs(60 * 86_400).expect("in range"))
        .expect("in range");
    let mut envelopes = Vec::new();
    let (mut records, mut grants) = (0, 0);
    for (i, p) in patients.iter().take(options.followers + churn).enumerate() {
        let now = Timestamp::now();
        let body = loadgen::probe_record(&mut rng, p, now);
        envelopes.push(attestor.signer.sign(EventId::new_v7(), body, now));
        records += 1;
        if i < options.followers {
            let clinic = &clinic_ids[i / FOLLOWS_PER_CLINIC];
            let body = loadgen::grant_body(p, clinic, &[Purpose::ChronicCare], expires);
            envelopes.push(attestor.signer.sign(EventId::new_v7(), body, now));
            grants += 1;
        }
    }
    let setup = Counters::default();
    let total = envelopes.len() as u64;
    let mut it = envelopes.into_iter();
    loop {
        let chunk: Vec<Envelope> = it.by_ref().take(MAX_BATCH).collect();
        if chunk.is_empty() {
            break;
        }
        attestor.submit(chunk, "set-up", &setup).await;
    }
    if setup.error_total() > 0 || attestor.in_chain != total {
        return Err(phase(format!(
            "set-up: {} of {total} standing records and grants accepted ({:?})",
            attestor.in_chain,
            setup.errors.lock().unwrap_or_else(|p| p.into_inner())
        )));
    }
    if !nc.settle(Duration::from_secs(60)).await? {
        return Err(phase("the set-up was not projected within 60 s"));
    }
    Ok(Cast {
        nc,
        chains,
        attestor,
        clinics,
        clinic_ids,
        patients,
        churn,
        setup_events: total,
        setup_records: records,
        setup_grants: grants,
    })
}

/// The ids of accepted records: per facility (all), and per followed patient.
#[derive(Default)]
struct Accepted {
    by_facility: HashMap<FacilityId, Vec<EventId>>,
    by_followed: HashMap<usize, Vec<String>>,
}

/// One follower's deliveries.
#[derive(Default)]
struct Delivered {
    ids: HashSet<String>,
}

async fn load(
    options: &SoakOptions,
    data: &Path,
    addr: std::net::SocketAddr,
    db_url: &str,
    processes: &mut [HrxProcess],
) -> Result<SoakReport, BenchError> {
    let Cast {
        nc,
        chains,
        attestor,
        clinics,
        clinic_ids,
        patients,
        churn,
        setup_events,
        setup_records,
        setup_grants,
    } = cast(options, data, addr).await?;
    let patients = Arc::new(patients);
    let followers = options.followers;
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    let (stop_follow_tx, stop_follow) = watch::channel(false);
    let mut notes = Vec::new();

    // --- Followers first, so that every record of the run is theirs to deliver --------
    let delivered: Vec<Arc<Mutex<Delivered>>> = (0..followers)
        .map(|_| Arc::new(Mutex::new(Delivered::default())))
        .collect();
    let mut follow_tasks = JoinSet::new();
    let opened = Arc::new(AtomicU64::new(0));
    for (i, mine) in delivered.iter().enumerate() {
        let clinic = clinics[i / FOLLOWS_PER_CLINIC].clone();
        let patient = patients[i].as_str().to_owned();
        let mine = mine.clone();
        let counters = counters.clone();
        let opened = opened.clone();
        let mut stop = stop_follow.clone();
        follow_tasks.spawn(async move {
            let mut cursor = String::new();
            let mut first = true;
            while !*stop.borrow() {
                let request = v1::FollowRequest {
                    patient_id: patient.clone(),
                    purpose: Purpose::ChronicCare.code(),
                    cursor: cursor.clone(),
                    kinds: vec![],
                };
                let opening = clinic.timeline().follow(request).await;
                if first {
                    opened.fetch_add(1, Ordering::SeqCst);
                    first = false;
                }
                let mut stream = match opening {
                    Ok(s) => s.into_inner(),
                    Err(s) => {
                        counters.status("follow (open)", &s);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                loop {
                    let msg = tokio::select! {
                        _ = stop.changed() => return,
                        msg = stream.message() => msg,
                    };
                    match msg {
                        Ok(Some(msg)) => {
                            if !msg.cursor.is_empty() {
                                cursor = msg.cursor;
                            }
                            match msg.item {
                                Some(v1::follow_response::Item::Entry(e)) => {
                                    add(&counters.deliveries, 1);
                                    mine.lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .ids
                                        .insert(e.event_id);
                                }
                                Some(v1::follow_response::Item::Heartbeat(_)) => {
                                    add(&counters.heartbeats, 1)
                                }
                                None => {}
                            }
                        }
                        Ok(None) => {
                            counters.error("follow: stream ended");
                            break;
                        }
                        Err(s) => {
                            counters.status("follow", &s);
                            break;
                        }
                    }
                }
                if *stop.borrow() {
                    return;
                }
                add(&counters.reopened, 1);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while opened.load(Ordering::SeqCst) < followers as u64 {
        if Instant::now() > deadline {
            return Err(phase("the follow streams did not all open within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the backlog (the standing records), so that deliveries counted below are
    // the run's.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // --- The load ---------------------------------------------------------------------
    let started = Instant::now();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let accepted = Arc::new(Mutex::new(Accepted::default()));
    let followed_index: Arc<HashMap<String, usize>> = Arc::new(
        patients
            .iter()
            .take(followers)
            .enumerate()
            .map(|(i, p)| (p.as_str().to_owned(), i))
            .collect(),
    );

    // Ingest: each facility's share of the rate, in batches every `period`.
    let per_facility = options.ingest_per_s / chains.len().max(1) as f64;
    let batch = ((per_facility * 0.5).round() as usize).clamp(1, MAX_BATCH);
    let period = Duration::from_secs_f64(batch as f64 / per_facility.max(0.001));
    let mut ingest_tasks = JoinSet::new();
    for (k, mut chain) in chains.into_iter().enumerate() {
        let counters = counters.clone();
        let accepted = accepted.clone();
        let followed_index = followed_index.clone();
        let patients = patients.clone();
        let mut stop = stop.clone();
        let seed = options.seed;
        ingest_tasks.spawn(async move {
            let mut rng = Rng::derive(seed, 1000 + k as u64);
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
            // Spread the facilities over the period.
            tokio::time::sleep(period.mul_f64(k as f64 / 8.0)).await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => break,
                }
                if *stop.borrow() {
                    break;
                }
                let now = Timestamp::now();
                let mut ids = Vec::with_capacity(batch);
                let mut envelopes = Vec::with_capacity(batch);
                for _ in 0..batch {
                    let p = &patients[rng.below(patients.len() as u64) as usize];
                    let id = EventId::new_v7();
                    let body = loadgen::probe_record(&mut rng, p, now);
                    envelopes.push(chain.signer.sign(id, body, now));
                    ids.push((id, p.as_str()));
                }
                add(&counters.records_sent, batch as u64);
                add(
                    &counters.record_bytes,
                    envelopes.iter().map(|e| e.payload.len() as u64).sum(),
                );
                if let Some(ok) = chain.submit(envelopes, "ingest", &counters).await {
                    let mut acc = accepted.lock().unwrap_or_else(|p| p.into_inner());
                    let mut n = 0;
                    for ((id, p), ok) in ids.into_iter().zip(ok) {
                        if ok {
                            n += 1;
                            acc.by_facility
                                .entry(chain.signer.facility().clone())
                                .or_default()
                                .push(id);
                            if let Some(i) = followed_index.get(p) {
                                acc.by_followed.entry(*i).or_default().push(id.to_string());
                            }
                        }
                    }
                    add(&counters.records_accepted, n);
                }
            }
            (chain.signer.facility().clone(), chain.in_chain)
        });
    }

    // Timeline reads: open loop, each request its own task.
    let reads = {
        let counters = counters.clone();
        let clinics = clinics.clone();
        let patients = patients.clone();
        let mut stop = stop.clone();
        let rate = options.reads_per_s;
        let seed = options.seed;
        tokio::spawn(async move {
            let mut latency = Samples::new();
            if rate <= 0.0 || followers == 0 {
                return latency;
            }
            let gap = Duration::from_secs_f64(1.0 / rate);
            let mut ticker = tokio::time::interval(gap);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut rng = Rng::derive(seed, 2000);
            let mut set = JoinSet::new();
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => break,
                }
                if *stop.borrow() {
                    break;
                }
                let i = rng.below(followers as u64) as usize;
                let mut timeline = clinics[i / FOLLOWS_PER_CLINIC].timeline();
                let request = v1::GetTimelineRequest {
                    patient_id: patients[i].as_str().to_owned(),
                    purpose: Purpose::ChronicCare.code(),
                    page_size: 50,
                    ..Default::default()
                };
                add(&counters.reads_sent, 1);
                let counters = counters.clone();
                set.spawn(async move {
                    let at = Instant::now();
                    match timeline.get_timeline(request).await {
                        Ok(r) if !r.get_ref().entries.is_empty() => {
                            add(&counters.reads_ok, 1);
                            Some(at.elapsed())
                        }
                        Ok(_) => {
                            // Every followed patient has a standing record readable
                            // under its grant: an empty page is a wrong answer.
                            counters.error("timeline: empty page");
                            None
                        }
                        Err(s) => {
                            counters.status("timeline", &s);
                            None
                        }
                    }
                });
                while let Some(r) = set.try_join_next() {
                    if let Ok(Some(d)) = r {
                        latency.push(d);
                    }
                }
            }
            while let Some(r) = set.join_next().await {
                if let Ok(Some(d)) = r {
                    latency.push(d);
                }
            }
            latency
        })
    };

    // Consent churn: a grant, and the revocation of the one made REVOKE_AFTER earlier.
    let attestor_id = attestor.signer.facility().clone();
    let consent = {
        let counters = counters.clone();
        let patients = patients.clone();
        let grantee = clinic_ids[0].clone();
        let mut stop = stop.clone();
        let every = options.consent_every;
        let mut attestor = attestor;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut made: Vec<Option<(EventId, usize)>> = Vec::new();
            let mut k = 0usize;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stop.changed() => break,
                }
                if *stop.borrow() || churn == 0 {
                    break;
                }
                let now = Timestamp::now();
                let p = followers + k % churn;
                let expires = now
                    .checked_add(hrx_domain::Duration::from_secs(7 * 86_400).expect("in range"))
                    .expect("in range");
                let grant_id = EventId::new_v7();
                let mut envelopes = vec![attestor.signer.sign(
                    grant_id,
                    loadgen::grant_body(&patients[p], &grantee, &[Purpose::Treatment], expires),
                    now,
                )];
                add(&counters.grants_sent, 1);
                let revoke = k
                    .checked_sub(REVOKE_AFTER)
                    .and_then(|j| made.get(j).cloned().flatten());
                if let Some((id, q)) = revoke {
                    let body = v1::facility_event::Body::ConsentRevocation(v1::ConsentRevocation {
                        patient_id: patients[q].as_str().to_owned(),
                        grant_event_id: id.to_string(),
                        evidence: Some(v1::ConsentEvidence {
                            form_id: "PCT-SOAK-REVOKE".into(),
                            sha256: Sha256::digest(b"signed revocation form")
                                .as_bytes()
                                .to_vec(),
                        }),
                    });
                    envelopes.push(attestor.signer.sign(EventId::new_v7(), body, now));
                    add(&counters.revocations_sent, 1);
                }
                let ok = attestor.submit(envelopes, "consent", &counters).await;
                let ok = ok.unwrap_or_default();
                let granted = ok.first().copied().unwrap_or(false);
                if granted {
                    add(&counters.grants, 1);
                }
                if revoke.is_some() && ok.get(1).copied().unwrap_or(false) {
                    add(&counters.revocations, 1);
                }
                made.push(granted.then_some((grant_id, p)));
                k += 1;
            }
            attestor.in_chain
        })
    };

    // Sampling, until the load stops; the last sample at its end.
    let mut samples = Vec::new();
    let mut monitor = v1::monitor_service_client::MonitorServiceClient::new(nc.channel());
    let mut ticker = tokio::time::interval(options.sample_every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let end = tokio::time::Instant::now() + options.duration;
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = tokio::time::sleep_until(end) => true,
        };
        let (lag_events, oldest) = match monitor
            .get_projector_lag(v1::GetProjectorLagRequest {})
            .await
        {
            Ok(lag) => {
                let lag = lag.into_inner();
                let behind = lag
                    .partitions
                    .iter()
                    .map(|p| p.log_end.saturating_sub(p.projected))
                    .sum();
                (Some(behind), Some(lag.oldest_unprojected_ms))
            }
            Err(s) => {
                counters.status("monitor lag", &s);
                (None, None)
            }
        };
        let rss_mib = processes
            .iter_mut()
            .map(|p| (p.roles().to_owned(), p.rss_mib()))
            .collect();
        samples.push(Sample {
            t_s: started.elapsed().as_secs_f64(),
            rss_mib,
            harness_rss_mib: crate::stats::rss_mib(),
            lag_events,
            oldest_unprojected_ms: oldest,
            accepted_records: Counters::get(&counters.records_accepted),
            reads_ok: Counters::get(&counters.reads_ok),
            deliveries: Counters::get(&counters.deliveries),
            grants: Counters::get(&counters.grants),
            revocations: Counters::get(&counters.revocations),
            errors: counters.error_total(),
        });
        for p in processes.iter_mut() {
            if let Some(status) = p.exited() {
                counters.error(format!("process {} exited", p.roles()));
                notes.push(format!(
                    "the {} process exited ({status}): {}",
                    p.roles(),
                    p.stderr_tail()
                ));
            }
        }
        if last || processes.iter_mut().any(|p| p.exited().is_some()) {
            break;
        }
    }
    let _ = stop_tx.send(true);
    let load_time = started.elapsed();
    let mut in_chain: HashMap<FacilityId, u64> = HashMap::new();
    while let Some(r) = ingest_tasks.join_next().await {
        let (f, n) = r.map_err(|e| phase(format!("ingest task: {e}")))?;
        in_chain.insert(f, n);
    }
    let mut read_latency = reads.await.map_err(|e| phase(format!("read task: {e}")))?;
    let attestor_in_chain = consent
        .await
        .map_err(|e| phase(format!("consent task: {e}")))?;
    let load_ended = Instant::now();

    // --- Catching up, then reconciling ------------------------------------------------
    let settled = nc.settle(Duration::from_secs(120)).await?;
    let settle_s = settled.then(|| load_ended.elapsed().as_secs_f64());
    if !settled {
        notes.push("the projector had not caught up 120 s after the load stopped".into());
    }
    let accepted = std::mem::take(&mut *accepted.lock().unwrap_or_else(|p| p.into_inner()));
    // Every accepted record of a followed patient delivered to its follower (waiting
    // up to 30 s for the last deliveries).
    let follow_deadline = Instant::now() + Duration::from_secs(30);
    let count_missing = || {
        let (mut expected, mut missing) = (0u64, 0u64);
        for (i, ids) in &accepted.by_followed {
            let got = delivered[*i].lock().unwrap_or_else(|p| p.into_inner());
            expected += ids.len() as u64;
            missing += ids.iter().filter(|id| !got.ids.contains(*id)).count() as u64;
        }
        (expected, missing)
    };
    let (expected_deliveries, missing_deliveries) = loop {
        let (expected, missing) = count_missing();
        if missing == 0 || Instant::now() > follow_deadline {
            break (expected, missing);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = stop_follow_tx.send(true);
    while follow_tasks.join_next().await.is_some() {}

    let mut checks = reconcile(
        db_url,
        &accepted,
        &in_chain,
        (&attestor_id, attestor_in_chain),
        setup_records,
        setup_grants + Counters::get(&counters.grants),
        Counters::get(&counters.revocations),
    )
    .await?;
    checks.push(Check {
        name: "follow: accepted records of followed patients delivered to their follower".into(),
        expected: expected_deliveries,
        found: expected_deliveries - missing_deliveries,
        ok: missing_deliveries == 0,
    });
    checks.push(Check {
        name: format!("attestor chain events accepted (set-up {setup_events} + churn)"),
        expected: setup_events
            + Counters::get(&counters.grants)
            + Counters::get(&counters.revocations),
        found: attestor_in_chain,
        ok: setup_events + Counters::get(&counters.grants) + Counters::get(&counters.revocations)
            == attestor_in_chain,
    });
    let reconciled = settled && checks.iter().all(|c| c.ok);

    // --- The report -------------------------------------------------------------------
    let secs = load_time.as_secs_f64();
    let c = &counters;
    let offered = |rate: f64| (rate * secs).round() as u64;
    let load = vec![
        LoadLine {
            name: "ingest".into(),
            unit: format!(
                "records, {batch} per SubmitEvents, {} facilities",
                in_chain.len()
            ),
            target_per_s: options.ingest_per_s,
            offered: offered(options.ingest_per_s),
            sent: Counters::get(&c.records_sent),
            ok: Counters::get(&c.records_accepted),
            achieved_per_s: Counters::get(&c.records_accepted) as f64 / secs,
            p50_ms: None,
            p99_ms: None,
        },
        LoadLine {
            name: "timeline reads".into(),
            unit: "GetTimeline, page of 50".into(),
            target_per_s: options.reads_per_s,
            offered: offered(options.reads_per_s),
            sent: Counters::get(&c.reads_sent),
            ok: Counters::get(&c.reads_ok),
            achieved_per_s: Counters::get(&c.reads_ok) as f64 / secs,
            p50_ms: read_latency.percentile_ms(50.0),
            p99_ms: read_latency.percentile_ms(99.0),
        },
        LoadLine {
            name: "follow deliveries".into(),
            unit: format!("entries to {followers} followers"),
            target_per_s: options.ingest_per_s * followers as f64 / patients.len() as f64,
            offered: expected_deliveries,
            sent: expected_deliveries,
            ok: Counters::get(&c.deliveries),
            achieved_per_s: Counters::get(&c.deliveries) as f64 / secs,
            p50_ms: None,
            p99_ms: None,
        },
        LoadLine {
            name: "consent grants".into(),
            unit: "attested, facility-emitted".into(),
            target_per_s: 1.0 / options.consent_every.as_secs_f64(),
            offered: (secs / options.consent_every.as_secs_f64()).round() as u64,
            sent: Counters::get(&c.grants_sent),
            ok: Counters::get(&c.grants),
            achieved_per_s: Counters::get(&c.grants) as f64 / secs,
            p50_ms: None,
            p99_ms: None,
        },
        LoadLine {
            name: "consent revocations".into(),
            unit: format!("by the attestor, of the grant {REVOKE_AFTER} periods earlier"),
            target_per_s: 1.0 / options.consent_every.as_secs_f64(),
            offered: ((secs / options.consent_every.as_secs_f64()).round() as u64)
                .saturating_sub(REVOKE_AFTER as u64),
            sent: Counters::get(&c.revocations_sent),
            ok: Counters::get(&c.revocations),
            achieved_per_s: Counters::get(&c.revocations) as f64 / secs,
            p50_ms: None,
            p99_ms: None,
        },
    ];
    let warmup = options.warmup.as_secs_f64();
    let rss: Vec<RssSummary> = processes
        .iter()
        .enumerate()
        .map(|(i, p)| rss_summary(&samples, i, p.roles(), warmup))
        .collect();
    let rss_flat = rss.iter().all(|r| r.flat);
    notes.push(format!(
        "deployment: Kafka {} and PostgreSQL (a database and topic prefix of the run's own, dropped after); every role in a child process of the hrx executable: `hrx serve --role projector` (pid {}) and `hrx serve --role {}` (pid {}); this process is the client only, over mutual TLS",
        options.services.kafka_brokers,
        processes[0].pid(),
        distributed::ROLES_BESIDE_PROJECTOR,
        processes[1].pid(),
    ));
    notes.push(format!(
        "population: {} patients; {followers} followed (one stream each, from {} chronic-care clinics of at most {FOLLOWS_PER_CLINIC} streams, the node's per-caller default) and read at random by their clinic; {churn} patients take the churned grants (treatment purpose, to clinic 1); records about any patient, signed on the fly (FHIR Observations, mean payload {} B)",
        patients.len(),
        clinics.len(),
        Counters::get(&c.record_bytes) / Counters::get(&c.records_sent).max(1),
    ));
    let errors = c.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let first_errors = c
        .first_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(SoakReport {
        mode: if options.smoke { "smoke" } else { "full" }.into(),
        started_at,
        machine: Machine::detect(),
        duration_s: secs,
        warmup_s: warmup,
        load,
        follow_streams: followers,
        follow_heartbeats: Counters::get(&c.heartbeats),
        follow_reopened: Counters::get(&c.reopened),
        errors,
        first_errors,
        max_lag_events: samples.iter().filter_map(|s| s.lag_events).max(),
        max_oldest_unprojected_ms: samples.iter().filter_map(|s| s.oldest_unprojected_ms).max(),
        samples,
        rss,
        settle_s,
        reconciliation: checks,
        reconciled,
        rss_flat,
        notes,
    })
}

/// RSS of process `i` over the samples.
fn rss_summary(samples: &[Sample], i: usize, roles: &str, warmup: f64) -> RssSummary {
    let series: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| s.rss_mib.get(roles).copied().flatten().map(|v| (s.t_s, v)))
        .collect();
    let after: Vec<(f64, f64)> = series
        .iter()
        .copied()
        .filter(|(t, _)| *t + 1e-6 >= warmup)
        .collect();
    let at_warmup_end = after.first().map(|s| s.1);
    let at_end = series.last().map(|s| s.1);
    let max = series.iter().map(|s| s.1).reduce(f64::max);
    let slope = least_squares_slope(&after).map(|per_s| per_s * 60.0);
    let growth = match (at_warmup_end, at_end) {
        (Some(w), Some(e)) if w > 0.0 => Some((e - w) / w * 100.0),
        _ => None,
    };
    RssSummary {
        process: format!("process {}", i + 1),
        roles: roles.to_owned(),
        at_warmup_end_mib: at_warmup_end,
        at_end_mib: at_end,
        max_mib: max,
        slope_mib_per_min: slope,
        growth_pct: growth,
        flat: growth.is_some_and(|g| g < FLAT_GROWTH_PCT),
    }
}

/// The slope of y over x by least squares, if there are two distinct x.
fn least_squares_slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The checks made by SQL on the run's database.
async fn reconcile(
    db_url: &str,
    accepted: &Accepted,
    in_chain: &HashMap<FacilityId, u64>,
    (attestor, attestor_in_chain): (&FacilityId, u64),
    attestor_records: u64,
    grants: u64,
    revocations: u64,
) -> Result<Vec<Check>, BenchError> {
    let (client, conn) = limits::connect_postgres(db_url).await?;
    let conn = tokio::spawn(conn);
    let pg = |what: &'static str| move |e: tokio_postgres::Error| BenchError::postgres(what, &e);
    let mut checks = Vec::new();
    let mut check = |name: String, expected: u64, found: u64| {
        checks.push(Check {
            name,
            expected,
            found,
            ok: expected == found,
        })
    };
    let mut facilities: Vec<(&FacilityId, u64)> = in_chain.iter().map(|(f, n)| (f, *n)).collect();
    facilities.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    facilities.push((attestor, attestor_in_chain));
    let (mut chain_total, mut chain_expected, mut head_ok) = (0u64, 0u64, true);
    for (f, n) in &facilities {
        let row = client
            .query_one(
                "SELECT count(*), COALESCE(max(seq), 0) FROM chain_links WHERE chain = $1",
                &[&f.as_str()],
            )
            .await
            .map_err(pg("chain index"))?;
        let (count, head): (i64, i64) = (row.get(0), row.get(1));
        chain_total += count as u64;
        chain_expected += n;
        head_ok &= count as u64 == *n && head as u64 == *n;
        if count as u64 != *n || head as u64 != *n {
            check(
                format!("chain of facility {f}: events projected (head seq {head})"),
                *n,
                count as u64,
            );
        }
    }
    check(
        format!(
            "chain index: events of the run's {} facilities projected, each chain's head = its count{}",
            facilities.len(),
            if head_ok {
                ""
            } else {
                " (NOT for some, above)"
            }
        ),
        chain_expected,
        chain_total,
    );
    let (mut expected_records, mut found_records, mut missing, mut extra) =
        (0u64, 0u64, 0u64, 0u64);
    for (f, _) in &facilities {
        let want: HashSet<[u8; 16]> = if *f == attestor {
            HashSet::new()
        } else {
            accepted
                .by_facility
                .get(*f)
                .map(|ids| ids.iter().map(|id| id.to_bytes()).collect())
                .unwrap_or_default()
        };
        let rows = client
            .query(
                "SELECT event_id FROM records WHERE facility_id = $1",
                &[&f.as_str()],
            )
            .await
            .map_err(pg("records"))?;
        let got: HashSet<Vec<u8>> = rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect();
        found_records += rows.len() as u64;
        if *f == attestor {
            expected_records += attestor_records;
            continue;
        }
        expected_records += want.len() as u64;
        missing += want
            .iter()
            .filter(|id| !got.contains(id.as_slice()))
            .count() as u64;
        extra += got
            .iter()
            .filter(|id| !<[u8; 16]>::try_from(id.as_slice()).is_ok_and(|a| want.contains(&a)))
            .count() as u64;
    }
    check(
        "records in PostgreSQL of the run's facilities = records accepted".into(),
        expected_records,
        found_records,
    );
    check(
        "accepted record ids missing from PostgreSQL".into(),
        0,
        missing,
    );
    check("record ids in PostgreSQL never accepted".into(), 0, extra);
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT event_id) FROM records",
            &[],
        )
        .await
        .map_err(pg("duplicates"))?;
    let (all, distinct): (i64, i64) = (row.get(0), row.get(1));
    check(
        "records: count(*) = count(DISTINCT event_id)".into(),
        all as u64,
        distinct as u64,
    );
    // Grants and revocations are consent events, folded when read.
    let rows = client
        .query(
            "SELECT kind, count(*) FROM consent_events WHERE facility_id = $1 GROUP BY kind",
            &[&attestor.as_str()],
        )
        .await
        .map_err(pg("consent events"))?;
    let count_of = |k: hrx_ports::ConsentEventKind| {
        rows.iter()
            .find(|r| r.get::<_, i32>(0) == k as i32)
            .map_or(0, |r| r.get::<_, i64>(1) as u64)
    };
    check(
        "attested grants projected (consent_events) = grants accepted".into(),
        grants,
        count_of(hrx_ports::ConsentEventKind::AttestedGrant),
    );
    check(
        "facility revocations projected (consent_events) = revocations accepted".into(),
        revocations,
        count_of(hrx_ports::ConsentEventKind::FacilityRevocation),
    );
    drop(client);
    let _ = conn.await;
    Ok(checks)
}
