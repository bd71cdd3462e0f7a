//! One benchmark run: an embedded node in a temp directory, in this process, loaded
//! with a pre-signed synthetic population, measured side by side with the machine's
//! limits for the same work (see the crate docs for the phases); then, given Kafka and
//! PostgreSQL, the same on them ([`crate::distributed`]), through the same helpers
//! (registration, sessions, ingest with probes), which take the node's address.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrx_domain::{Envelope, EventId, FacilityId, PatientId, Purpose, Timestamp};
use hrx_embedded::SqliteNode;
use hrx_node::client::{ClientError, FacilityClient, NationalCenter, facility_key_path};
use hrx_node::{Node, NodeConfig, NodeError};
use hrx_ports::{TimelineQuery, TimelineStore};
use hrx_proto::v1;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::distributed::{self, Services};
use crate::limits::{self, VerifyItem};
use crate::loadgen::{
    self, ChainSigner, LoadgenError, Pace, Population, PopulationSpec, SubmitTally,
};
use crate::report::{Report, RowSpec, Target};
use crate::rng::Rng;
use crate::stats::{self, Machine, Samples};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Tiny counts, a few seconds: what CI runs so that the harness keeps working.
    pub smoke: bool,
    /// Seeds the population.
    pub seed: u64,
    /// Progress bars on stderr during the long phases.
    pub progress: bool,
    /// Kafka and PostgreSQL to measure the distributed rows on (after the embedded
    /// phases); `None`: those rows are reported as not measured.
    pub distributed: Option<Services>,
    /// The `hrx` executable, so that the distributed projector runs as a process of its
    /// own (`hrx serve --role projector`) whose peak RSS is its own. `None`: the
    /// projector runs in this process and its RSS is not measured.
    pub hrx_exe: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            smoke: false,
            seed: 20_261_126,
            progress: false,
            distributed: None,
            hrx_exe: None,
        }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("node: {0}")]
    Node(#[from] NodeError),
    #[error("client: {0}")]
    Client(#[from] ClientError),
    #[error("load: {0}")]
    Loadgen(#[from] LoadgenError),
    #[error("key file: {0}")]
    Key(#[from] hrx_node::keys::KeyFileError),
    #[error("store: {0}")]
    Store(String),
    #[error("identity: {0}")]
    Identity(#[from] hrx_identity::IdentityError),
    /// A Kafka operation of the distributed phase or its limit.
    #[error("Kafka: {what}: {detail}")]
    Kafka { what: String, detail: String },
    /// A PostgreSQL operation of the distributed phase or its limit. `detail` is the
    /// server's message and SQLSTATE only: a row's values (patient ids) never appear.
    #[error("PostgreSQL: {what}: {detail}")]
    Postgres { what: String, detail: String },
    /// The projector process of the distributed phase.
    #[error("projector process: {0}")]
    Process(String),
    #[error("{0}")]
    Phase(String),
}

impl BenchError {
    pub(crate) fn kafka(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Kafka {
            what: what.into(),
            detail: e.to_string(),
        }
    }

    pub(crate) fn postgres(what: impl Into<String>, e: &tokio_postgres::Error) -> Self {
        // `Display` of a server error is only "db error"; its message and code say
        // what went wrong, while its DETAIL may quote row values and is left out.
        let detail = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            // "error connecting to server" says little without its cause.
            None => match std::error::Error::source(e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            },
        };
        Self::Postgres {
            what: what.into(),
            detail,
        }
    }
}

pub(crate) fn phase(msg: impl Into<String>) -> BenchError {
    BenchError::Phase(msg.into())
}

/// The sizes of a run.
#[derive(Clone, Debug)]
pub(crate) struct Scale {
    pub(crate) facilities: usize,
    pub(crate) patients: usize,
    pub(crate) chronic_patients: usize,
    pub(crate) chronic_records: usize,
    pub(crate) records_per_patient: usize,
    /// Envelopes per `SubmitEvents` call.
    pub(crate) batch: usize,
    pub(crate) verify_time: Duration,
    /// Probes of submit → visible while idle.
    pub(crate) idle_probes: usize,
    /// Pause between probes during the ingest run.
    pub(crate) loaded_probe_gap: Duration,
    /// The timeline's reference offered rate (the 1,000 requests/s).
    pub(crate) read_rate: f64,
    pub(crate) read_time: Duration,
    /// Offered rates tried, ascending, for the highest rate with p99 ≤ 10 ms.
    pub(crate) step_rates: Vec<f64>,
    pub(crate) step_time: Duration,
    pub(crate) followers: usize,
    pub(crate) follow_records: usize,
    /// Followers per connection.
    pub(crate) followers_per_conn: usize,
    /// Records per second offered to the followers (× followers = deliveries/s
    /// offered), in batches of `follow_batch`.
    pub(crate) follow_rate: f64,
    pub(crate) follow_batch: usize,
    pub(crate) follow_timeout: Duration,
}

impl Scale {
    fn of(smoke: bool) -> Self {
        if smoke {
            Self {
                facilities: 3,
                patients: 30,
                chronic_patients: 1,
                chronic_records: 120,
                records_per_patient: 3,
                batch: 50,
                verify_time: Duration::from_millis(150),
                idle_probes: 5,
                loaded_probe_gap: Duration::from_millis(20),
                read_rate: 1000.0,
                read_time: Duration::from_millis(300),
                step_rates: vec![250.0, 500.0, 1000.0],
                step_time: Duration::from_millis(200),
                followers: 8,
                follow_records: 10,
                followers_per_conn: 4,
                follow_rate: 100.0,
                follow_batch: 5,
                follow_timeout: Duration::from_secs(30),
            }
        } else {
            Self {
                facilities: 12,
                patients: 2500,
                chronic_patients: 4,
                chronic_records: 1000,
                records_per_patient: 8,
                batch: 200,
                verify_time: Duration::from_secs(3),
                idle_probes: 200,
                loaded_probe_gap: Duration::from_millis(20),
                read_rate: 1000.0,
                read_time: Duration::from_secs(5),
                step_rates: vec![
                    250.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0,
                ],
                step_time: Duration::from_secs(3),
                followers: 1000,
                follow_records: 500,
                followers_per_conn: 100,
                follow_rate: 125.0,
                follow_batch: 5,
                follow_timeout: Duration::from_secs(120),
            }
        }
    }
}

/// Runs the benchmark on a runtime of its own (one worker per CPU, shared by the node
/// and the load it serves) and returns the report. Nothing is printed but progress
/// bars (if asked for); the caller prints the report and writes its JSON.
pub fn run(options: Options) -> Result<Report, BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Io("tokio runtime", e))?;
    rt.block_on(run_async(options))
}

pub(crate) fn bar(options: &Options, len: u64, what: &str) -> Option<ProgressBar> {
    if !options.progress {
        return None;
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_owned());
    Some(pb)
}

fn expect_accepted(tally: &SubmitTally, what: &str) -> Result<(), BenchError> {
    if tally.accepted == tally.submitted {
        Ok(())
    } else {
        Err(phase(format!(
            "{what}: {} of {} accepted (first rejection: {})",
            tally.accepted,
            tally.submitted,
            tally.first_rejection.as_deref().unwrap_or("none")
        )))
    }
}

async fn submit_one(
    client: &FacilityClient,
    envelopes: Vec<Envelope>,
    what: &str,
) -> Result<(), BenchError> {
    let mut tally = SubmitTally::default();
    tally.add(&client.submit(envelopes).await?);
    expect_accepted(&tally, what)
}

/// A node running in this process until `stop`.
pub(crate) struct RunningNode {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), NodeError>>,
}

impl RunningNode {
    /// Builds the node of `config` and runs it on this runtime until [`Self::stop`].
    pub(crate) async fn start(config: NodeConfig) -> Result<(Self, SocketAddr), BenchError> {
        let node = Node::build(config).await?;
        let addr = node.grpc_addr();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let running = Self {
            stop: Some(stop_tx),
            task: tokio::spawn(node.run(async {
                let _ = stop_rx.await;
            })),
        };
        Ok((running, addr))
    }

    pub(crate) async fn stop(mut self) -> Result<(), BenchError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(r)) => Ok(r?),
            Ok(Err(e)) => Err(phase(format!("node task: {e}"))),
            Err(_) => Err(phase("the node did not stop within 30 s")),
        }
    }
}

/// Follows `patient` as `reader` and forwards (event id, arrival) of every entry.
async fn spawn_probe_follower(
    reader: &FacilityClient,
    patient: &PatientId,
    purpose: Purpose,
) -> Result<mpsc::UnboundedReceiver<(String, Instant)>, BenchError> {
    let mut stream = reader
        .timeline()
        .follow(v1::FollowRequest {
            patient_id: patient.as_str().to_owned(),
            purpose: purpose.code(),
            cursor: String::new(),
            kinds: vec![],
        })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Ends when the prober goes away (not only at the next entry), so that the
        // stream does not hold the node's graceful shutdown.
        loop {
            let msg = tokio::select! {
                _ = tx.closed() => break,
                msg = stream.message() => msg,
            };
            match msg {
                Ok(Some(msg)) => {
                    if let Some(v1::follow_response::Item::Entry(e)) = msg.item
                        && tx.send((e.event_id, Instant::now())).is_err()
                    {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
    Ok(rx)
}

/// What submit → visible probing needs: the probe facility's client and chain, the
/// probe patient, and the follower's arrivals.
pub(crate) struct Prober {
    client: Arc<FacilityClient>,
    signer: ChainSigner,
    patient: PatientId,
    arrivals: mpsc::UnboundedReceiver<(String, Instant)>,
    rng: Rng,
}

impl Prober {
    /// Submits one record (waiting for the answer only); returns its event id, when
    /// the submission started and how long the answer took.
    async fn submit_probe(&mut self) -> Result<(String, Instant, Duration), BenchError> {
        let now = Timestamp::now();
        let id = EventId::new_v7();
        let body = loadgen::probe_record(&mut self.rng, &self.patient, now);
        let envelope = self.signer.sign(id, body, now);
        let started = Instant::now();
        submit_one(&self.client, vec![envelope], "probe").await?;
        Ok((id.to_string(), started, started.elapsed()))
    }

    /// Until `stop`: one probe every `gap`, without waiting for the previous one to be
    /// visible (so a projector backlog shows as latency, not as fewer samples); then
    /// waits up to 60 s for the outstanding ones.
    async fn probe_while(
        &mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
        gap: Duration,
    ) -> (Samples, Samples, Option<String>) {
        let mut pending: HashMap<String, Instant> = HashMap::new();
        let mut samples = Samples::new();
        let mut answered = Samples::new();
        let mut ticker = tokio::time::interval(gap);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = *stop.borrow_and_update();
        while !stopping {
            tokio::select! {
                _ = ticker.tick() => match self.submit_probe().await {
                    Ok((id, at, answer)) => {
                        pending.insert(id, at);
                        answered.push(answer);
                    }
                    Err(e) => return (samples, answered, Some(e.to_string())),
                },
                arrival = self.arrivals.recv() => match arrival {
                    Some((id, at)) => if let Some(t) = pending.remove(&id) {
                        samples.push(at.duration_since(t));
                    },
                    None => {
                        let why = "the probe follower stream ended".into();
                        return (samples, answered, Some(why));
                    }
                },
                _ = stop.changed() => stopping = true,
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !pending.is_empty() {
            match tokio::time::timeout_at(deadline, self.arrivals.recv()).await {
                Ok(Some((id, at))) => {
                    if let Some(t) = pending.remove(&id) {
                        samples.push(at.duration_since(t));
                    }
                }
                _ => {
                    let n = pending.len();
                    let why = format!("{n} probes not visible within 60 s");
                    return (samples, answered, Some(why));
                }
            }
        }
        (samples, answered, None)
    }

    /// Submits one record and waits until the follower sees it: the latency.
    async fn probe(&mut self) -> Result<Duration, BenchError> {
        let now = Timestamp::now();
        let id = EventId::new_v7();
        let body = loadgen::probe_record(&mut self.rng, &self.patient, now);
        let envelope = self.signer.sign(id, body, now);
        let want = id.to_string();
        let started = Instant::now();
        submit_one(&self.client, vec![envelope], "probe").await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.arrivals.recv()).await {
                Ok(Some((got, at))) if got == want => return Ok(at.duration_since(started)),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(phase("the probe follower stream ended")),
                Err(_) => return Err(phase("a probe was not visible within 30 s")),
            }
        }
    }
}

/// The facilities of a run, registered on a node: the population's, and the harness's
/// own two — one writes grants, probes and fan-out records (its chain never competes
/// with the population's), one reads and follows.
pub(crate) struct Registered {
    pub nc: NationalCenter,
    pub probe_fac: FacilityId,
    pub reader_fac: FacilityId,
    /// One per population facility, at the head of its (empty) chain.
    pub signers: BTreeMap<FacilityId, ChainSigner>,
    pub probe_signer: ChainSigner,
}

/// Registers the population's facilities and the harness's two on the node at `addr`
/// as the national center of `data` (keys are created there), and makes their signers.
pub(crate) async fn register(
    data: &Path,
    addr: SocketAddr,
    pop: &Population,
) -> Result<Registered, BenchError> {
    let nc = NationalCenter::open(data, addr).await?;
    for f in pop.facilities() {
        nc.register_facility(&f.id, &f.name, &f.province, f.level)
            .await?;
    }
    let probe_fac = pop.spare_facility(0);
    let reader_fac = (1..)
        .map(|n| pop.spare_facility(n))
        .find(|f| *f != probe_fac)
        .expect("spare facility ids exist");
    nc.register_facility(
        &probe_fac,
        "Trung tâm Kiểm soát bệnh tật (probe)",
        "Hà Nội",
        hrx_domain::FacilityLevel::Specialized,
    )
    .await?;
    nc.register_facility(
        &reader_fac,
        "Phòng khám Nội tiết - Đái tháo đường",
        "Hà Nội",
        hrx_domain::FacilityLevel::Initial,
    )
    .await?;
    let key = |id: &FacilityId| hrx_node::keys::read_private_key(&facility_key_path(data, id));
    let mut signers = BTreeMap::new();
    for f in pop.facilities() {
        signers.insert(f.id.clone(), ChainSigner::new(f.id.clone(), key(&f.id)?));
    }
    let probe_signer = ChainSigner::new(probe_fac.clone(), key(&probe_fac)?);
    Ok(Registered {
        nc,
        probe_fac,
        reader_fac,
        signers,
        probe_signer,
    })
}

/// Each facility's planned records as its chain of signed envelopes (on `threads`
/// threads, off the runtime), signed now: after the keys' registration.
pub(crate) async fn presign(
    pop: Arc<Population>,
    mut signers: BTreeMap<FacilityId, ChainSigner>,
    threads: usize,
) -> Result<(Streams, BTreeMap<FacilityId, ChainSigner>), BenchError> {
    let (streams, signers) = tokio::task::spawn_blocking(move || {
        let streams = pop.presign(&mut signers, Timestamp::now(), threads);
        (streams, signers)
    })
    .await
    .map_err(|e| phase(format!("presign: {e}")))?;
    Ok((streams?, signers))
}

/// Each facility's envelopes, in chain order.
pub(crate) type Streams = Vec<(FacilityId, Vec<Envelope>)>;

/// The patients the harness itself uses.
pub(crate) struct HarnessPatients {
    /// The first chronic patient (timeline reads) and its record count.
    pub chronic: PatientId,
    pub chronic_records: usize,
    /// Probes of submit → visible are about this patient.
    pub probe: PatientId,
    /// Follow fan-out records are about this patient.
    pub follow: PatientId,
}

impl HarnessPatients {
    pub fn of(pop: &Population) -> Result<Self, BenchError> {
        let chronic_index = pop
            .patients()
            .iter()
            .position(|p| p.chronic)
            .ok_or_else(|| phase("the population has no chronic patient"))?;
        let probe = pop.spare_patient(0);
        let follow = (1..)
            .map(|n| pop.spare_patient(n))
            .find(|p| *p != probe)
            .expect("spare patient ids exist");
        Ok(Self {
            chronic: pop.patients()[chronic_index].id.clone(),
            chronic_records: pop.records_of(chronic_index),
            probe,
            follow,
        })
    }
}

/// Connections to one node: every facility's client, and a prober whose follower of
/// the probe patient is open.
pub(crate) struct Session {
    pub clients: HashMap<FacilityId, Arc<FacilityClient>>,
    pub probe_client: Arc<FacilityClient>,
    pub reader: Arc<FacilityClient>,
    pub prober: Prober,
}

/// Opens the clients of every facility on the node at `addr`, submits the grants the
/// harness's reads need (the reader facility may read the probe, chronic and follow
/// patients), waits until they are projected, opens the probe follower and warms the
/// path up with one probe.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open_session(
    data: &Path,
    addr: SocketAddr,
    pop: &Population,
    nc: &NationalCenter,
    (probe_fac, probe_signer): (&FacilityId, ChainSigner),
    reader_fac: &FacilityId,
    people: &HarnessPatients,
    seed: u64,
) -> Result<Session, BenchError> {
    let mut clients: HashMap<FacilityId, Arc<FacilityClient>> = HashMap::new();
    for f in pop.facilities() {
        clients.insert(
            f.id.clone(),
            Arc::new(FacilityClient::open(data, addr, &f.id).await?),
        );
    }
    let probe_client = Arc::new(FacilityClient::open(data, addr, probe_fac).await?);
    let reader = Arc::new(FacilityClient::open(data, addr, reader_fac).await?);
    let mut prober = Prober {
        client: probe_client.clone(),
        signer: probe_signer,
        patient: people.probe.clone(),
        arrivals: mpsc::unbounded_channel().1,
        rng: Rng::derive(seed, 77),
    };
    let expires = Timestamp::now()
        .checked_add(hrx_domain::Duration::from_secs(30 * 86_400).expect("in range"))
        .expect("in range");
    // Facility-attested grants need standing: the probe facility first authors a record
    // for each patient it attests a grant for (in the same batch).
    let mut grants: Vec<Envelope> = Vec::new();
    for (p, purpose) in [
        (&people.probe, Purpose::Treatment),
        (&people.chronic, Purpose::ChronicCare),
        (&people.follow, Purpose::ChronicCare),
    ] {
        let standing = loadgen::probe_record(&mut prober.rng, p, Timestamp::now());
        grants.push(
            prober
                .signer
                .sign(EventId::new_v7(), standing, Timestamp::now()),
        );
        grants.push(prober.signer.sign(
            EventId::new_v7(),
            loadgen::grant_body(p, reader_fac, &[purpose], expires),
            Timestamp::now(),
        ));
    }
    submit_one(&probe_client, grants, "grants").await?;
    if !nc.settle(Duration::from_secs(30)).await? {
        return Err(phase("the grants were not projected within 30 s"));
    }
    prober.arrivals = spawn_probe_follower(&reader, &people.probe, Purpose::Treatment).await?;
    // One probe to warm the path up (connections, statements).
    prober.probe().await?;
    Ok(Session {
        clients,
        probe_client,
        reader,
        prober,
    })
}

/// What an ingest run measured.
pub(crate) struct IngestRun {
    pub tally: SubmitTally,
    /// From the first submission to the last answer.
    pub ingest_time: Duration,
    /// From the first submission until the projector had caught up.
    pub visible_time: Duration,
    /// Whether the projector caught up within 600 s.
    pub settled: bool,
    /// Submit → visible of probes made every `gap` meanwhile.
    pub loaded: Samples,
    /// Submit → answered (accepted) of the same probes: the part of `loaded` spent in
    /// ingest, before the projector.
    pub loaded_answered: Samples,
    /// Why probing stopped early, if it did.
    pub probe_error: Option<String>,
}

/// Submits `streams` as fast as possible (`batch` per call, facilities concurrently)
/// while `prober` probes submit → visible every `gap`, until the projector has caught
/// up (asked through `nc`'s monitor). Returns the prober for later use.
pub(crate) async fn ingest_with_probes(
    nc: &NationalCenter,
    clients: &HashMap<FacilityId, Arc<FacilityClient>>,
    streams: Streams,
    mut prober: Prober,
    batch: usize,
    gap: Duration,
    progress: Option<ProgressBar>,
) -> Result<(IngestRun, Prober), BenchError> {
    let (stop_probes, probes_stopped) = tokio::sync::watch::channel(false);
    let probe_task = tokio::spawn(async move {
        let (samples, answered, error) = prober.probe_while(probes_stopped, gap).await;
        (prober, samples, answered, error)
    });
    let ingest_started = Instant::now();
    let submit_streams = streams
        .into_iter()
        .map(|(f, envs)| {
            clients
                .get(&f)
                .cloned()
                .map(|c| (c, envs))
                .ok_or_else(|| phase(format!("no client for facility {f}")))
        })
        .collect::<Result<_, _>>()?;
    let (tally, ingest_time) = loadgen::submit_streams(
        submit_streams,
        batch,
        Pace::AsFastAsPossible,
        progress.clone(),
    )
    .await?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    expect_accepted(&tally, "ingest")?;
    let settled = nc.settle(Duration::from_secs(600)).await?;
    let visible_time = ingest_started.elapsed();
    let _ = stop_probes.send(true);
    let (prober, loaded, loaded_answered, probe_error) = probe_task
        .await
        .map_err(|e| phase(format!("probe task: {e}")))?;
    Ok((
        IngestRun {
            tally,
            ingest_time,
            visible_time,
            settled,
            loaded,
            loaded_answered,
            probe_error,
        },
        prober,
    ))
}

/// `n` probes one at a time on an idle node.
pub(crate) async fn idle_probes(prober: &mut Prober, n: usize) -> Result<Samples, BenchError> {
    let mut idle = Samples::new();
    for _ in 0..n {
        idle.push(prober.probe().await?);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(idle)
}

/// Every row of the table, in the table's order.
const ROW_ORDER: &[&str] = &[
    "limit.verify.one_core",
    "limit.verify.all_cores",
    "limit.kafka.produce_consume",
    "limit.postgres.copy",
    "limit.timeline_query.p50",
    "limit.timeline_query.p99",
    "embedded.ingest.accepted_per_s",
    "embedded.ingest.visible_per_s",
    "embedded.visible.p50_loaded",
    "embedded.visible.p99_loaded",
    "embedded.visible.p50_idle",
    "embedded.visible.p99_idle",
    "embedded.rss.peak_mib",
    "distributed.ingest.accepted_per_s",
    "distributed.visible.p50",
    "distributed.visible.p99",
    "distributed.rss.projector_mib",
    "timeline.p50_at_1000",
    "timeline.p99_at_1000",
    "timeline.max_rate_p99_10ms",
    "follow.delivered_per_s",
    "follow.p50",
    "follow.p99",
];

/// The result of an open-loop load.
#[derive(Debug, Default)]
struct OpenLoop {
    /// From each request's intended send time to its answer (no coordinated omission).
    latency: Samples,
    sent: u64,
    errors: u64,
    wall: Duration,
}

/// Offers `rate` requests per second for `duration`, each sent at its scheduled time
/// whatever the previous ones are doing (open loop), paced by a 1 ms tokio interval.
async fn open_loop<F, Fut>(rate: f64, duration: Duration, request: F) -> OpenLoop
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let start = Instant::now();
    let mut set = JoinSet::new();
    let mut out = OpenLoop::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let record = |out: &mut OpenLoop, r: Result<(bool, Duration), tokio::task::JoinError>| match r {
        Ok((true, d)) => out.latency.push(d),
        _ => out.errors += 1,
    };
    while out.sent < total {
        ticker.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while out.sent < due {
            let intended = start + Duration::from_secs_f64(out.sent as f64 / rate);
            let fut = request();
            set.spawn(async move {
                let ok = fut.await;
                (ok, intended.elapsed())
            });
            out.sent += 1;
        }
        while let Some(r) = set.try_join_next() {
            record(&mut out, r);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(r)) => record(&mut out, r),
            Ok(None) => break,
            Err(_) => {
                out.errors += set.len() as u64;
                set.abort_all();
                break;
            }
        }
    }
    out.wall = start.elapsed();
    out
}

/// What the follow fan-out measured.
#[derive(Debug, Default)]
struct FanOut {
    delivered: u64,
    expected: u64,
    rate: Option<f64>,
    latency: Samples,
    follow_errors: u64,
}

async fn run_async(options: Options) -> Result<Report, BenchError> {
    let run_started = Instant::now();
    let scale = Scale::of(options.smoke);
    let machine = Machine::detect();
    let cpus = machine.cpus;
    let mut notes: Vec<String> = Vec::new();
    let mut rows = Vec::new();

    // --- The population, the node, the registry -------------------------------------
    let pop = Arc::new(Population::from_spec(PopulationSpec {
        seed: options.seed,
        facilities: scale.facilities,
        patients: scale.patients,
        chronic_patients: scale.chronic_patients,
        chronic_records: scale.chronic_records,
        records_per_patient: scale.records_per_patient,
    }));
    let dir = tempfile::tempdir().map_err(|e| BenchError::Io("temp dir", e))?;
    let data = dir.path().to_owned();
    let mut config = NodeConfig::ephemeral(&data);
    config.heartbeat_ms = 1000;
    let (node, addr) = RunningNode::start(config).await?;
    let Registered {
        nc,
        probe_fac,
        reader_fac,
        signers,
        probe_signer,
    } = register(&data, addr, &pop).await?;

    // --- Pre-signing (off the measured path) -----------------------------------------
    let sign_started = Instant::now();
    let (streams, signers) = presign(pop.clone(), signers, cpus).await?;
    let total_events: usize = streams.iter().map(|(_, e)| e.len()).sum();
    let bytes: usize = streams
        .iter()
        .flat_map(|(_, e)| e.iter().map(|e| e.payload.len()))
        .sum();
    notes.push(format!(
        "population: {} facilities (+2 of the harness), {} patients ({} chronic × {} records), {} events, mean payload {} B; pre-signed on {} threads in {:.2} s",
        pop.facilities().len(),
        pop.patients().len(),
        scale.chronic_patients,
        scale.chronic_records,
        total_events,
        bytes / total_events.max(1),
        cpus,
        sign_started.elapsed().as_secs_f64()
    ));

    // --- Limit: ring Ed25519 verify of the same PAE bytes ----------------------------
    let sample_every = (total_events / 5000).max(1);
    let items: Vec<VerifyItem> = streams
        .iter()
        .flat_map(|(f, envs)| {
            let pk = signers[f].key().public_key();
            envs.iter()
                .step_by(sample_every)
                .map(move |e| VerifyItem::new(&pk, e))
        })
        .collect();
    let n_items = items.len();
    let items = Arc::new(items);
    let (one_core, all_cores) = {
        let items = items.clone();
        let d = scale.verify_time;
        tokio::task::spawn_blocking(move || {
            let one = limits::verify_rate(items.clone(), 1, d);
            let all = limits::verify_rate(items, cpus, d);
            (one, all)
        })
        .await
        .map_err(|e| phase(format!("verify limit: {e}")))?
    };
    drop(items);
    let verify_detail = format!(
        "{n_items} of the run's envelopes (PAE bytes as signed), ring UnparsedPublicKey::verify, {:.1} s",
        scale.verify_time.as_secs_f64()
    );
    rows.push(
        RowSpec::new(
            "limits",
            "limit.verify.one_core",
            "ring Ed25519 verify, 1 core",
            "verifies/s",
        )
        .value(Some(one_core))
        .detail(verify_detail.clone())
        .measured(),
    );
    rows.push(
        RowSpec::new(
            "limits",
            "limit.verify.all_cores",
            format!("ring Ed25519 verify, all cores ({cpus} threads)"),
            "verifies/s",
        )
        .value(Some(all_cores))
        .detail(verify_detail)
        .measured(),
    );
    // --- Clients and grants -----------------------------------------------------------
    let people = HarnessPatients::of(&pop)?;
    let chronic = people.chronic.clone();
    let chronic_records = people.chronic_records;
    let follow_patient = people.follow.clone();
    let Session {
        clients,
        probe_client,
        reader,
        prober,
    } = open_session(
        &data,
        addr,
        &pop,
        &nc,
        (&probe_fac, probe_signer),
        &reader_fac,
        &people,
        options.seed,
    )
    .await?;

    // --- Embedded ingest, end to end --------------------------------------------------
    let rss_before = stats::rss_mib();
    let peak_reset = stats::reset_peak_rss();
    let progress = bar(&options, total_events as u64, "ingest");
    let (run, mut prober) = ingest_with_probes(
        &nc,
        &clients,
        streams,
        prober,
        scale.batch,
        scale.loaded_probe_gap,
        progress,
    )
    .await?;
    let IngestRun {
        tally,
        ingest_time,
        visible_time,
        settled,
        mut loaded,
        mut loaded_answered,
        probe_error,
    } = run;
    if let Some(e) = probe_error {
        notes.push(format!("probing under load stopped early: {e}"));
    }
    if !settled {
        notes.push("the projector had not caught up 600 s after ingest".into());
    }
    let peak_rss = stats::peak_rss_mib();
    let accepted_rate = tally.accepted as f64 / ingest_time.as_secs_f64();
    let visible_rate = tally.accepted as f64 / visible_time.as_secs_f64();
    notes.push(format!(
        "peak RSS is the whole process's VmHWM{}: the embedded node runs in-process with the harness, which holds the pre-signed stream ({:.0} MiB RSS before ingest)",
        if peak_reset { " since ingest started (reset via /proc/self/clear_refs)" } else { " since start" },
        rss_before.unwrap_or(0.0)
    ));

    let mut idle = idle_probes(&mut prober, scale.idle_probes).await?;
    let s = "embedded ingest";
    rows.push(
        RowSpec::new(s, "embedded.ingest.accepted_per_s", "accepted events/s (as fast as possible)", "events/s")
            .value(Some(accepted_rate))
            .limit("limit.verify.one_core", Some(one_core))
            .target(Target::AtLeast(0.75))
            .detail(format!(
                "{} events in {:.2} s, {} per SubmitEvents call, {} facilities concurrently over mutual TLS",
                tally.accepted,
                ingest_time.as_secs_f64(),
                scale.batch,
                pop.facilities().len()
            ))
            .measured(),
    );
    rows.push(
        RowSpec::new(
            s,
            "embedded.ingest.visible_per_s",
            "events/s until all visible (projected)",
            "events/s",
        )
        .value(Some(visible_rate))
        .limit("limit.verify.one_core", Some(one_core))
        .detail(format!(
            "first submission to the projector caught up: {:.2} s",
            visible_time.as_secs_f64()
        ))
        .measured(),
    );
    let answered = format!(
        "; of that, submit → answered (accepted by ingest) p50 {} ms, p99 {} ms",
        crate::report::fmt_ms(loaded_answered.percentile_ms(50.0)),
        crate::report::fmt_ms(loaded_answered.percentile_ms(99.0)),
    );
    let probe_detail = |n: usize, when: &str| {
        format!("{n} probes {when}: submit one record, until a follower of the patient receives it")
    };
    let loaded_detail = |n: usize| {
        probe_detail(
            n,
            "every 20 ms from the start of the ingest run until the projector caught up",
        ) + &answered
    };
    rows.push(
        RowSpec::new(
            s,
            "embedded.visible.p50_loaded",
            "submit → visible p50, under ingest load",
            "ms",
        )
        .value(loaded.percentile_ms(50.0))
        .detail(loaded_detail(loaded.len()))
        .measured(),
    );
    rows.push(
        RowSpec::new(
            s,
            "embedded.visible.p99_loaded",
            "submit → visible p99, under ingest load",
            "ms",
        )
        .value(loaded.percentile_ms(99.0))
        .detail(loaded_detail(loaded.len()))
        .measured(),
    );
    rows.push(
        RowSpec::new(
            s,
            "embedded.visible.p50_idle",
            "submit → visible p50, idle",
            "ms",
        )
        .value(idle.percentile_ms(50.0))
        .detail(probe_detail(idle.len(), "one at a time, idle node"))
        .measured(),
    );
    rows.push(
        RowSpec::new(
            s,
            "embedded.visible.p99_idle",
            "submit → visible p99, idle",
            "ms",
        )
        .value(idle.percentile_ms(99.0))
        .detail(probe_detail(idle.len(), "one at a time, idle node"))
        .measured(),
    );
    rows.push(
        RowSpec::new(
            s,
            "embedded.rss.peak_mib",
            "peak RSS (node + harness, one process)",
            "MiB",
        )
        .value(peak_rss)
        .target(Target::AtMost(200.0))
        .detail("VmHWM of /proc/self/status; see notes")
        .measured(),
    );
    // --- Timeline reads ---------------------------------------------------------------
    let page = 50u32;
    let request = v1::GetTimelineRequest {
        patient_id: chronic.as_str().to_owned(),
        purpose: Purpose::ChronicCare.code(),
        page_size: page,
        ..Default::default()
    };
    let first = reader
        .timeline()
        .get_timeline(request.clone())
        .await
        .map_err(ClientError::from)?
        .into_inner();
    if first.entries.len() != page as usize {
        return Err(phase(format!(
            "the chronic patient's first page has {} entries, not {page}",
            first.entries.len()
        )));
    }
    let raw = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || SqliteNode::open(&data))
            .await
            .map_err(|e| phase(format!("open store: {e}")))?
            .map_err(|e| BenchError::Store(e.to_string()))?
    };
    let raw = Arc::new(raw);
    let query = TimelineQuery {
        patient_id: chronic.clone(),
        kinds: vec![],
        facilities: vec![],
        occurred_from: None,
        occurred_until: None,
        after: None,
        limit: page as usize,
    };
    let raw_request = || {
        let raw = raw.clone();
        let query = query.clone();
        async move {
            raw.timeline(&query)
                .await
                .map(|rows| rows.len() == query.limit)
                .unwrap_or(false)
        }
    };
    let hrx_request = || {
        let mut client = reader.timeline();
        let request = request.clone();
        async move {
            client
                .get_timeline(request)
                .await
                .map(|r| r.into_inner().entries.len() == page as usize)
                .unwrap_or(false)
        }
    };
    let mut raw_load = open_loop(scale.read_rate, scale.read_time, raw_request).await;
    let mut hrx_load = open_loop(scale.read_rate, scale.read_time, hrx_request).await;
    let mut best: Option<(f64, f64)> = None;
    let mut steps = Vec::new();
    let mut misses = 0;
    for &rate in &scale.step_rates {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut l = open_loop(rate, scale.step_time, hrx_request).await;
        let p99 = l.percentile_or_inf(99.0);
        steps.push(format!(
            "{rate:.0}/s → p99 {p99:.1} ms{}",
            if l.errors > 0 {
                format!(" ({} errors)", l.errors)
            } else {
                String::new()
            }
        ));
        // One noisy step (another tenant, a WAL checkpoint) should not end the
        // search: stop after two misses in a row.
        if p99 <= 10.0 && l.errors == 0 {
            best = Some((rate, p99));
            misses = 0;
        } else {
            misses += 1;
            if misses == 2 {
                break;
            }
        }
    }
    // If even the lowest step missed 10 ms, halve down to 10 requests/s.
    if best.is_none() {
        let mut rate = scale.step_rates.first().copied().unwrap_or(100.0) / 2.0;
        while rate >= 10.0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut l = open_loop(
                rate,
                scale.step_time.max(Duration::from_millis(500)),
                hrx_request,
            )
            .await;
            let p99 = l.percentile_or_inf(99.0);
            steps.push(format!("{rate:.0}/s → p99 {p99:.1} ms"));
            if p99 <= 10.0 && l.errors == 0 {
                best = Some((rate, p99));
                break;
            }
            rate /= 2.0;
        }
    }
    let t = "timeline reads";
    let read_detail = |l: &OpenLoop, what: &str| {
        format!(
            "{what}; patient with {chronic_records} records, page of {page}; {} requests offered open-loop at {:.0}/s over {:.1} s, {} errors",
            l.sent,
            scale.read_rate,
            l.wall.as_secs_f64(),
            l.errors
        )
    };
    let raw_p99 = raw_load.latency.percentile_ms(99.0);
    rows.push(
        RowSpec::new("limits", "limit.timeline_query.p50", "raw store timeline query p50 @ 1,000 rps", "ms")
            .value(raw_load.latency.percentile_ms(50.0))
            .detail(read_detail(&raw_load, "TimelineStore::timeline on a second SqliteNode of the same data directory (SQLite, in-process)"))
            .measured(),
    );
    rows.push(
        RowSpec::new(
            "limits",
            "limit.timeline_query.p99",
            "raw store timeline query p99 @ 1,000 rps",
            "ms",
        )
        .value(raw_p99)
        .detail(read_detail(&raw_load, "as above"))
        .measured(),
    );
    rows.push(
        RowSpec::new(
            t,
            "timeline.p50_at_1000",
            "GetTimeline p50 @ 1,000 rps",
            "ms",
        )
        .value(hrx_load.latency.percentile_ms(50.0))
        .detail(read_detail(
            &hrx_load,
            "gRPC over mutual TLS, consent decided per record, audited",
        ))
        .measured(),
    );
    rows.push(
        RowSpec::new(
            t,
            "timeline.p99_at_1000",
            "GetTimeline p99 @ 1,000 rps",
            "ms",
        )
        .value(hrx_load.latency.percentile_ms(99.0))
        .limit("limit.timeline_query.p99", raw_p99)
        .target(Target::AtMost(3.0))
        .detail(read_detail(&hrx_load, "as above"))
        .measured(),
    );
    rows.push(
        RowSpec::new(
            t,
            "timeline.max_rate_p99_10ms",
            "highest offered rate with p99 ≤ 10 ms",
            "req/s",
        )
        .value(best.map(|(r, _)| r))
        .detail(format!(
            "{}steps of {:.1} s: {}",
            if best.is_none() {
                "none of the offered rates met it (down to 10/s); "
            } else {
                ""
            },
            scale.step_time.as_secs_f64(),
            steps.join(", ")
        ))
        .measured(),
    );
    drop(raw);

    // --- Follow fan-out ---------------------------------------------------------------
    let fan = fan_out(
        &scale,
        &data,
        addr,
        &mut prober,
        &reader_fac,
        &follow_patient,
    )
    .await?;
    let mut fan_latency = fan.latency;
    if fan.follow_errors > 0 || fan.delivered < fan.expected {
        notes.push(format!(
            "follow fan-out: {} of {} deliveries, {} follow streams failed",
            fan.delivered, fan.expected, fan.follow_errors
        ));
    }
    let f = "follow fan-out";
    let fan_detail = format!(
        "{} followers of one patient (one reader facility, {} per connection), then {} records offered at {:.0}/s ({:.0} deliveries/s offered) in batches of {}; {} deliveries",
        scale.followers,
        scale.followers_per_conn,
        scale.follow_records,
        scale.follow_rate,
        scale.follow_rate * scale.followers as f64,
        scale.follow_batch,
        fan.delivered
    );
    rows.push(
        RowSpec::new(
            f,
            "follow.delivered_per_s",
            format!("delivered events/s, {} followers", scale.followers),
            "events/s",
        )
        .value(fan.rate)
        .target(Target::AtLeast(100_000.0))
        .detail(format!(
            "{fan_detail}; from the first submission to the last delivery"
        ))
        .measured(),
    );
    rows.push(
        RowSpec::new(f, "follow.p50", "produce → deliver p50", "ms")
            .value(fan_latency.percentile_ms(50.0))
            .detail(fan_detail.clone())
            .measured(),
    );
    rows.push(
        RowSpec::new(f, "follow.p99", "produce → deliver p99", "ms")
            .value(fan_latency.percentile_ms(99.0))
            .target(Target::AtMost(250.0))
            .detail(fan_detail)
            .measured(),
    );

    drop(prober);
    drop(clients);
    drop(reader);
    drop(probe_client);
    drop(nc);
    node.stop().await?;
    // Keep the directory until the node has stopped.
    drop(dir);

    // --- Distributed: Kafka + PostgreSQL, after the embedded phases -------------------
    // Last, so that nothing above ran beside Kafka's and PostgreSQL's background work.
    let dist = distributed::Phase {
        scale: &scale,
        seed: options.seed,
        cpus,
        options: &options,
        one_core,
    };
    let (dist_rows, dist_notes) = match &options.distributed {
        Some(services) => dist.run(services, options.hrx_exe.as_deref(), &pop).await,
        None => distributed::not_requested(),
    };
    rows.extend(dist_rows);
    notes.extend(dist_notes);

    // Limits first, then the sections in the order; within a section, the
    // table's order (rows are pushed in the order they are measured).
    let order = [
        "limits",
        "embedded ingest",
        distributed::SECTION,
        "timeline reads",
        "follow fan-out",
    ];
    rows.sort_by_key(|r| {
        (
            order
                .iter()
                .position(|s| *s == r.section)
                .unwrap_or(order.len()),
            ROW_ORDER
                .iter()
                .position(|id| *id == r.id)
                .unwrap_or(ROW_ORDER.len()),
        )
    });
    Ok(Report {
        mode: if options.smoke { "smoke" } else { "full" }.into(),
        seed: options.seed,
        machine,
        elapsed_s: run_started.elapsed().as_secs_f64(),
        rows,
        notes,
    })
}

impl OpenLoop {
    fn percentile_or_inf(&mut self, p: f64) -> f64 {
        self.latency.percentile_ms(p).unwrap_or(f64::INFINITY)
    }
}

/// `followers` follow streams of `patient` (connections of the reader facility), then
/// `follow_records` new records about the patient from the probe facility.
async fn fan_out(
    scale: &Scale,
    data: &std::path::Path,
    addr: std::net::SocketAddr,
    prober: &mut Prober,
    reader_fac: &FacilityId,
    patient: &PatientId,
) -> Result<FanOut, BenchError> {
    let conns = scale
        .followers
        .div_ceil(scale.followers_per_conn.max(1))
        .max(1);
    let mut readers = Vec::with_capacity(conns);
    for _ in 0..conns {
        readers.push(FacilityClient::open(data, addr, reader_fac).await?);
    }
    // The records, signed before anything is measured.
    let now = Timestamp::now();
    let mut envelopes = Vec::with_capacity(scale.follow_records);
    let mut index = HashMap::with_capacity(scale.follow_records);
    for i in 0..scale.follow_records {
        let id = EventId::new_v7();
        let body = loadgen::probe_record(&mut prober.rng, patient, now);
        envelopes.push(prober.signer.sign(id, body, now));
        index.insert(id.to_string(), i);
    }
    let index = Arc::new(index);
    let expected_each = scale.follow_records;
    let base = Instant::now();
    let deadline = tokio::time::Instant::now() + scale.follow_timeout;
    let ready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for i in 0..scale.followers {
        let mut timeline = readers[i % conns].timeline();
        let patient = patient.as_str().to_owned();
        let index = index.clone();
        let ready = ready.clone();
        set.spawn(async move {
            let stream = timeline
                .follow(v1::FollowRequest {
                    patient_id: patient,
                    purpose: Purpose::ChronicCare.code(),
                    cursor: String::new(),
                    kinds: vec![],
                })
                .await;
            ready.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut stream = match stream {
                Ok(s) => s.into_inner(),
                Err(_) => return None,
            };
            let mut got = Vec::with_capacity(expected_each);
            while got.len() < expected_each {
                match tokio::time::timeout_at(deadline, stream.message()).await {
                    Ok(Ok(Some(msg))) => {
                        if let Some(v1::follow_response::Item::Entry(e)) = msg.item
                            && let Some(i) = index.get(&e.event_id)
                        {
                            got.push((*i, base.elapsed()));
                        }
                    }
                    _ => break,
                }
            }
            Some(got)
        });
    }
    while ready.load(std::sync::atomic::Ordering::SeqCst) < scale.followers {
        if tokio::time::Instant::now() > deadline {
            return Err(phase("the followers did not all start in time"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut submitted_at = vec![Duration::ZERO; scale.follow_records];
    let mut next = 0;
    let mut it = envelopes.into_iter();
    // Paced, not a burst: latency at a sustained offered rate, not the queueing of
    // a burst behind itself.
    let batch = scale.follow_batch.max(1);
    let gap = Duration::from_secs_f64(batch as f64 / scale.follow_rate.max(1.0));
    let paced_from = tokio::time::Instant::now();
    for k in 0u32.. {
        let chunk: Vec<Envelope> = it.by_ref().take(batch).collect();
        if chunk.is_empty() {
            break;
        }
        tokio::time::sleep_until(paced_from + gap * k).await;
        let at = base.elapsed();
        for s in submitted_at.iter_mut().skip(next).take(chunk.len()) {
            *s = at;
        }
        next += chunk.len();
        submit_one(&prober.client, chunk, "fan-out records").await?;
    }
    let mut out = FanOut {
        expected: (scale.followers * scale.follow_records) as u64,
        ..FanOut::default()
    };
    let mut last = Duration::ZERO;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Some(got)) => {
                for (i, at) in got {
                    out.delivered += 1;
                    last = last.max(at);
                    out.latency.push(at.saturating_sub(submitted_at[i]));
                }
            }
            _ => out.follow_errors += 1,
        }
    }
    let first = submitted_at.first().copied().unwrap_or_default();
    if out.delivered > 0 && last > first {
        out.rate = Some(out.delivered as f64 / (last - first).as_secs_f64());
    }
    Ok(out)
}
