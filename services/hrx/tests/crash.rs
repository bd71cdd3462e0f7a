//! Crash and restart tests of the distributed deployment, with real processes, a real
//! Kafka broker and a real PostgreSQL (from `HRX_TEST_KAFKA_BROKERS`,
//! `HRX_TEST_DATABASE_URL`, and `HRX_TEST_SERVICES_DIR` for restarting them):
//!
//! - a projector process is killed with SIGKILL again and again while events stream
//!   in; afterwards the projections equal a from-scratch replay into another database,
//!   and no accepted event is missing or doubled;
//! - PostgreSQL, then Kafka, are restarted during ingest: clients get UNAVAILABLE (and
//!   retry the same envelope), never a false acceptance; nothing accepted is lost; the
//!   pipeline resumes by itself.
//!
//! The two tests share the broker and the database server, so they run one at a time.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hrx_domain::event::FHIR_JSON;
use hrx_domain::{EventId, FacilityId, FacilityLevel, PatientId, RecordKind, Timestamp};
use hrx_node::client::{FacilityClient, NationalCenter};
use hrx_node::{Backend, NodeConfig};
use hrx_ports::{MonitorStore, TimelineQuery, TimelineStore};
use hrx_proto::{codec, v1};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

const FACILITIES: [&str; 3] = ["26012", "26001", "26105"];
const PATIENTS: [&str; 4] = [
    "026062001234",
    "026185004321",
    "026070009876",
    "026090001111",
];

struct Services {
    brokers: String,
    admin_url: String,
    dir: Option<PathBuf>,
}

fn services() -> Option<Services> {
    match (
        std::env::var("HRX_TEST_KAFKA_BROKERS"),
        std::env::var("HRX_TEST_DATABASE_URL"),
    ) {
        (Ok(brokers), Ok(admin_url)) => Some(Services {
            brokers,
            admin_url,
            dir: std::env::var("HRX_TEST_SERVICES_DIR")
                .ok()
                .map(PathBuf::from),
        }),
        _ => {
            assert!(
                std::env::var("HRX_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "HRX_TEST_KAFKA_BROKERS and HRX_TEST_DATABASE_URL are required (run bash tests/run.sh)"
            );
            eprintln!("skipping a crash test: no Kafka/PostgreSQL given");
            None
        }
    }
}

async fn create_database(admin_url: &str) -> String {
    let name = format!(
        "hrx_crash_{}",
        EventId::new_v7().to_string().replace('-', "")
    );
    let (client, conn) = hrx_identity::backend::connect_postgres(admin_url)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    hrx_identity::backend::postgres_url_with_dbname(admin_url, &name)
}

/// A deployment: a shared directory (CA, root key, facility keys, used by the test's
/// clients) and the configuration every process gets.
struct Deployment {
    dir: tempfile::TempDir,
    config: NodeConfig,
}

impl Deployment {
    async fn new(s: &Services) -> Self {
        let dir = tempfile::tempdir().unwrap();
        hrx_identity::TlsDir::open_or_init(dir.path()).unwrap();
        let (root, _) =
            hrx_node::keys::read_or_create(&hrx_node::root_key_path(dir.path())).unwrap();
        let mut config = NodeConfig::ephemeral(dir.path());
        config.backend = Backend::Distributed;
        config.kafka_brokers = Some(s.brokers.clone());
        if let Some(tls) = hrx_kafka::KafkaTls::from_test_env() {
            config.kafka_ca_file = tls.ca_file;
            (config.kafka_cert_file, config.kafka_key_file) = tls.client_identity.unzip();
        }
        config.kafka_partitions = 4;
        config.kafka_topic_prefix =
            format!("crash{}.", EventId::new_v7().to_string().replace('-', ""));
        config.database_url = Some(create_database(&s.admin_url).await);
        config.database_pool_size = 4;
        config.projector_batch = 20;
        config.root_public_key = Some(
            root.public_key()
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        );
        config.tls_dir = Some(dir.path().join("tls"));
        Self { dir, config }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `hrx serve --role <roles>` with its own data directory.
    fn spawn(&self, name: &str, roles: &str) -> Proc {
        self.spawn_with(name, roles, &[])
    }

    /// Starts `hrx serve --role <roles>` with extra environment variables.
    fn spawn_with(&self, name: &str, roles: &str, env: &[(&str, &str)]) -> Proc {
        spawn_process(&self.config, self.path(), name, roles, env)
    }
}

/// Starts `hrx serve --role <roles>` on `config`, with a data directory `name` under
/// `base`.
fn spawn_process(
    c: &NodeConfig,
    base: &Path,
    name: &str,
    roles: &str,
    env: &[(&str, &str)],
) -> Proc {
    let data = base.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hrx"))
        .envs(env.iter().copied())
        .args(["serve", "--role", roles])
        .env("HRX_BACKEND", "distributed")
        .env("HRX_DATA_DIR", &data)
        .env("HRX_GRPC_ADDR", "127.0.0.1:0")
        .env("HRX_PATIENT_ADDR", "127.0.0.1:0")
        .env("HRX_METRICS_ADDR", "127.0.0.1:0")
        .env("HRX_KAFKA_BROKERS", c.kafka_brokers.as_ref().unwrap())
        .env("HRX_KAFKA_PARTITIONS", c.kafka_partitions.to_string())
        .envs(
            [
                ("HRX_KAFKA_CA_FILE", &c.kafka_ca_file),
                ("HRX_KAFKA_CERT_FILE", &c.kafka_cert_file),
                ("HRX_KAFKA_KEY_FILE", &c.kafka_key_file),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v))),
        )
        .env("HRX_KAFKA_TOPIC_PREFIX", &c.kafka_topic_prefix)
        .env("HRX_DATABASE_URL", c.database_url.as_ref().unwrap())
        .env("HRX_DATABASE_POOL_SIZE", "4")
        .env("HRX_PROJECTOR_BATCH", c.projector_batch.to_string())
        .env("HRX_ROOT_PUBLIC_KEY", c.root_public_key.as_ref().unwrap())
        .env("HRX_TLS_DIR", c.tls_dir.as_ref().unwrap())
        .env(
            "HRX_CONSUMER_GROUP",
            format!("{}projector", c.kafka_topic_prefix),
        )
        .env("RUST_LOG", "error,hrx_kafka::group=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(data.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    Proc { child, data }
}

struct Proc {
    child: Child,
    data: PathBuf,
}

impl Proc {
    /// The gRPC address, once the process has written its node.json.
    fn addr(&mut self) -> std::net::SocketAddr {
        let path = self.data.join("node.json");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                return v["grpc_addr"].as_str().unwrap().parse().unwrap();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("hrx serve exited early: {status}");
            }
            assert!(Instant::now() < deadline, "hrx serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.data.join("node.json"));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn record(patient: &str, n: u64) -> v1::facility_event::Body {
    let kind = RecordKind::Observation;
    let body = serde_json::json!({
        "resourceType": "Observation",
        "subject": {"reference": format!("Patient/{patient}")},
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "valueQuantity": {"value": 6.0 + (n % 30) as f64 / 10.0, "unit": "%"},
    });
    v1::facility_event::Body::Record(v1::Record {
        patient_id: patient.into(),
        kind: kind.code(),
        occurred_at: Some(codec::timestamp(
            Timestamp::from_unix_seconds(1_780_000_000 + n as i64).unwrap(),
        )),
        author: "CCHN-002614".into(),
        sensitivity: vec![],
        supersedes: String::new(),
        content_type: FHIR_JSON.into(),
        body: serde_json::to_vec(&body).unwrap(),
    })
}

async fn register(dep: &Deployment, addr: std::net::SocketAddr) -> Vec<FacilityClient> {
    let nc = NationalCenter::open(dep.path(), addr).await.unwrap();
    for id in FACILITIES {
        nc.register_facility(
            &FacilityId::parse(id).unwrap(),
            "Bệnh viện",
            "Phú Thọ",
            FacilityLevel::Basic,
        )
        .await
        .unwrap();
    }
    let mut clients = Vec::new();
    for id in FACILITIES {
        clients.push(
            FacilityClient::open(dep.path(), addr, &FacilityId::parse(id).unwrap())
                .await
                .unwrap(),
        );
    }
    clients
}

/// Submits one envelope until it is answered accepted or duplicate, retrying on
/// UNAVAILABLE (and on transport errors while a server restarts). Returns the event id.
async fn submit_until_done(client: &mut FacilityClient, n: u64, unavailable: &mut u64) -> EventId {
    let patient = PATIENTS[(n % PATIENTS.len() as u64) as usize];
    let (id, envelope) = client.sign(record(patient, n));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    loop {
        match client.submit(vec![envelope.clone()]).await {
            Ok(mut r) => {
                let r = r.remove(0);
                let status = v1::SubmitStatus::try_from(r.status).unwrap();
                assert!(
                    matches!(
                        status,
                        v1::SubmitStatus::Accepted | v1::SubmitStatus::Duplicate
                    ),
                    "event {n} refused: {r:?}"
                );
                return id;
            }
            Err(hrx_node::client::ClientError::Rpc(s)) if s.code() == tonic::Code::Unavailable => {
                *unavailable += 1
            }
            Err(hrx_node::client::ClientError::Rpc(s)) => {
                // A connection reset while a dependency restarts is retryable too; any
                // other status is a bug.
                assert!(
                    matches!(s.code(), tonic::Code::Unknown | tonic::Code::Cancelled),
                    "event {n}: {s:?}"
                );
                last = format!("{s:?}");
                *unavailable += 1;
            }
            Err(e) => panic!("event {n}: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "event {n} was not accepted within 2 minutes; last error: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The deployment's store, read directly.
async fn store(config: &NodeConfig) -> hrx_postgres::PgStore {
    hrx_postgres::PgStore::connect(config.database_url.as_ref().unwrap(), 2)
        .await
        .unwrap()
}

/// A patient's whole timeline.
fn everything(patient: &str) -> TimelineQuery {
    TimelineQuery {
        patient_id: PatientId::parse(patient).unwrap(),
        kinds: vec![],
        facilities: vec![],
        occurred_from: None,
        occurred_until: None,
        after: None,
        limit: 100_000,
    }
}

/// Everything projected that must not depend on how projection was interrupted.
async fn snapshot(config: &NodeConfig) -> String {
    let store = store(config).await;
    let mut out = String::new();
    for p in PATIENTS {
        let mut records = store.timeline(&everything(p)).await.unwrap();
        // Per-patient sequence numbers follow projection order across partitions, which
        // a replay may interleave differently; everything else must be identical.
        for r in &mut records {
            r.patient_seq = 0;
        }
        records.sort_by_key(|r| r.event_id);
        out += &format!("{records:?}\n");
    }
    let mut stats = store.facility_stats().await.unwrap();
    for s in &mut stats {
        s.last_seen = None;
    }
    out += &format!("{stats:?}\n");
    out
}

async fn projected_ids(config: &NodeConfig) -> BTreeMap<EventId, usize> {
    let store = store(config).await;
    let mut ids = BTreeMap::new();
    for p in PATIENTS {
        for r in store.timeline(&everything(p)).await.unwrap() {
            *ids.entry(r.event_id).or_default() += 1;
        }
    }
    ids
}

async fn wait_caught_up(dep: &Deployment, addr: std::net::SocketAddr) {
    let nc = NationalCenter::open(dep.path(), addr).await.unwrap();
    assert!(
        nc.settle(Duration::from_secs(60)).await.unwrap(),
        "projection did not catch up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_projector_repeatedly_loses_and_doubles_nothing() {
    let Some(s) = services() else { return };
    let _serial = SERIAL.lock().await;
    let dep = Deployment::new(&s).await;
    let mut api = dep.spawn("api", "ingest,registry,consent,timeline,monitor");
    let addr = api.addr();
    let mut projector = dep.spawn("projector", "projector");
    let mut clients = register(&dep, addr).await;

    // Stream events from every facility while the projector is killed 12 times.
    let mut accepted = Vec::new();
    let mut unavailable = 0;
    let mut n = 0u64;
    for round in 0..12u64 {
        let until = Instant::now() + Duration::from_millis(300 + (round * 37) % 200);
        while Instant::now() < until {
            let c = &mut clients[(n % 3) as usize];
            accepted.push(submit_until_done(c, n, &mut unavailable).await);
            n += 1;
        }
        projector.kill9();
        projector = dep.spawn("projector", "projector");
    }
    wait_caught_up(&dep, addr).await;
    let ids = projected_ids(&dep.config).await;
    let unique: HashSet<_> = accepted.iter().collect();
    assert_eq!(unique.len(), accepted.len());
    for id in &accepted {
        assert_eq!(
            ids.get(id),
            Some(&1),
            "event {id} projected {:?} times",
            ids.get(id)
        );
    }
    assert_eq!(
        ids.len(),
        accepted.len(),
        "nothing projected that was not accepted"
    );
    let live = snapshot(&dep.config).await;
    drop(projector);
    drop(api);

    // A from-scratch replay of the same topics into another database.
    let mut replay = dep.config.clone();
    replay.database_url = Some(create_database(&s.admin_url).await);
    let replayed = hrx_node::reproject(&replay).await.unwrap();
    assert!(replayed >= accepted.len() as u64);
    assert_eq!(
        live,
        snapshot(&replay).await,
        "projections equal a from-scratch replay"
    );
    eprintln!(
        "{} events, 12 projector kills, {unavailable} retries",
        accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_postgres_then_kafka_during_ingest_gives_retryable_errors_and_loses_nothing() {
    let Some(s) = services() else { return };
    let Some(services_dir) = s.dir.clone() else {
        assert!(
            std::env::var("HRX_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "HRX_TEST_SERVICES_DIR is required to restart the services"
        );
        return;
    };
    let _serial = SERIAL.lock().await;
    let dep = Deployment::new(&s).await;
    let mut api = dep.spawn("api", "ingest,registry,consent,timeline,monitor,projector");
    let addr = api.addr();
    let mut clients = register(&dep, addr).await;

    let testenv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/testenv/testenv.sh");
    let restart = |what: &'static str| {
        let testenv = testenv.clone();
        let dir = services_dir.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let ok = Command::new("bash")
                .arg(&testenv)
                .arg(what)
                .arg(&dir)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(ok.success(), "{what} failed");
        })
    };
    let mut accepted = Vec::new();
    let mut unavailable = 0;
    let mut n = 0u64;
    for what in ["restart-postgres", "restart-kafka"] {
        let restarting = restart(what);
        let started = Instant::now();
        while !restarting.is_finished() || started.elapsed() < Duration::from_secs(2) {
            let c = &mut clients[(n % 3) as usize];
            accepted.push(submit_until_done(c, n, &mut unavailable).await);
            n += 1;
        }
        restarting.join().unwrap();
        // After the restart, the pipeline works without anyone touching it.
        for _ in 0..10 {
            let c = &mut clients[(n % 3) as usize];
            accepted.push(submit_until_done(c, n, &mut unavailable).await);
            n += 1;
        }
    }
    wait_caught_up(&dep, addr).await;
    let ids = projected_ids(&dep.config).await;
    for id in &accepted {
        assert_eq!(
            ids.get(id),
            Some(&1),
            "accepted event {id} projected {:?} times",
            ids.get(id)
        );
    }
    assert_eq!(ids.len(), accepted.len());
    eprintln!(
        "{} events across restarts, {unavailable} retryable errors",
        accepted.len()
    );
    drop(api);
}

/// The partition sets a projector process was assigned, from its log.
fn assignments(data: &Path) -> Vec<String> {
    std::fs::read_to_string(data.join("stderr.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("projector partitions assigned"))
        .map(|l| {
            l.split("partitions=")
                .nth(1)
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_projector_replicas_share_the_partitions_and_one_takes_over_from_the_other() {
    let Some(s) = services() else { return };
    let _serial = SERIAL.lock().await;
    let dep = Deployment::new(&s).await;
    let mut api = dep.spawn("api", "ingest,registry,consent,timeline,monitor");
    let addr = api.addr();
    let mut a = dep.spawn("projector-a", "projector");
    let b = dep.spawn("projector-b", "projector");
    let mut clients = register(&dep, addr).await;
    let mut accepted = Vec::new();
    let mut unavailable = 0;
    let mut n = 0u64;
    let stream_for = |d: Duration| Instant::now() + d;
    let until = stream_for(Duration::from_secs(3));
    while Instant::now() < until {
        let c = &mut clients[(n % 3) as usize];
        accepted.push(submit_until_done(c, n, &mut unavailable).await);
        n += 1;
    }
    wait_caught_up(&dep, addr).await;
    // Both replicas hold partitions: the group split them.
    let (la, lb) = (assignments(&a.data), assignments(&b.data));
    let last = |l: &[String]| l.last().cloned().unwrap_or_default();
    assert!(last(&la) != "[]" && !la.is_empty(), "replica a: {la:?}");
    assert!(last(&lb) != "[]" && !lb.is_empty(), "replica b: {lb:?}");
    assert_ne!(last(&la), last(&lb), "the replicas share the partitions");

    // One replica dies; the other takes its partitions over and projects everything.
    a.kill9();
    let until = stream_for(Duration::from_secs(2));
    while Instant::now() < until {
        let c = &mut clients[(n % 3) as usize];
        accepted.push(submit_until_done(c, n, &mut unavailable).await);
        n += 1;
    }
    wait_caught_up(&dep, addr).await;
    let ids = projected_ids(&dep.config).await;
    for id in &accepted {
        assert_eq!(
            ids.get(id),
            Some(&1),
            "event {id} projected {:?} times",
            ids.get(id)
        );
    }
    assert_eq!(ids.len(), accepted.len());
    eprintln!(
        "{} events; replica a {la:?}; replica b {:?}",
        accepted.len(),
        assignments(&b.data)
    );
    drop((api, b));
}

/// A projector replica restarted under its stable name (static membership) takes its
/// partitions back at once: a record submitted when the replacement starts is visible
/// within two seconds, where dynamic membership waited out the session timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replacement_projector_takes_over_within_two_seconds() {
    let Some(s) = services() else { return };
    let _serial = SERIAL.lock().await;
    let dep = Deployment::new(&s).await;
    let mut api = dep.spawn("api", "ingest,registry,consent,timeline,monitor");
    let addr = api.addr();
    let instance = [("HRX_PROJECTOR_INSTANCE", "projector-0")];
    let mut projector = dep.spawn_with("projector", "projector", &instance);
    let mut clients = register(&dep, addr).await;
    let mut unavailable = 0;
    for n in 0..20 {
        submit_until_done(&mut clients[(n % 3) as usize], n, &mut unavailable).await;
    }
    wait_caught_up(&dep, addr).await;
    let nc = NationalCenter::open(dep.path(), addr).await.unwrap();
    let mut worst = Duration::ZERO;
    for round in 0..3u64 {
        projector.kill9();
        let started = Instant::now();
        projector = dep.spawn_with("projector", "projector", &instance);
        submit_until_done(&mut clients[0], 100 + round, &mut unavailable).await;
        assert!(nc.settle(Duration::from_secs(30)).await.unwrap());
        let took = started.elapsed();
        eprintln!("replacement projector: the new record visible {took:?} after its start");
        worst = worst.max(took);
    }
    assert!(
        worst < Duration::from_secs(2),
        "a replacement projector took {worst:?} to take over"
    );
    drop((projector, api));
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs a command and returns its stdout, failing the test with its stderr otherwise.
fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Crash reconciliation: events stream from many facilities while the projector is
/// killed with SIGKILL again and again and PostgreSQL and Kafka are each restarted
/// once under load. Afterwards an independent count straight from Kafka (kcat, not
/// hrx's code) equals the rows PostgreSQL holds (psql), no event id appears twice, and
/// every facility's chain head is the last seq it sent.
///
/// CI runs a short form; `bash tests/crash-at-scale.sh` the long one (HRX_CRASH_EVENTS,
/// HRX_CRASH_FACILITIES, HRX_CRASH_KILLS, HRX_CRASH_BATCH size it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_reconciliation_counts_agree_with_kafka_and_postgres() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let Some(s) = services() else { return };
    let Some(services_dir) = s.dir.clone() else {
        assert!(
            std::env::var("HRX_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "HRX_TEST_SERVICES_DIR is required to restart the services"
        );
        return;
    };
    let _serial = SERIAL.lock().await;
    let target: u64 = env_or("HRX_CRASH_EVENTS", 3_000);
    let facility_count: u32 = env_or("HRX_CRASH_FACILITIES", 6);
    let kills_wanted: u32 = env_or("HRX_CRASH_KILLS", 10);
    let batch: usize = env_or("HRX_CRASH_BATCH", 50);
    let started = Instant::now();

    let dep = Deployment::new(&s).await;
    let mut api = dep.spawn("api", "ingest,registry,consent,timeline,monitor");
    let addr = api.addr();
    let instance = [("HRX_PROJECTOR_INSTANCE", "projector-0")];
    let mut projector = dep.spawn_with("projector", "projector", &instance);
    let nc = NationalCenter::open(dep.path(), addr).await.unwrap();
    let ids: Vec<FacilityId> = (0..facility_count)
        .map(|i| FacilityId::parse(&format!("{:05}", 30_000 + i)).unwrap())
        .collect();
    for id in &ids {
        nc.register_facility(id, "Bệnh viện", "Phú Thọ", FacilityLevel::Basic)
            .await
            .unwrap();
    }

    // The killer: SIGKILLs the projector at random moments (replacing it under the
    // same name), and restarts PostgreSQL after a third of the kills and Kafka after
    // two thirds, while the load goes on.
    let kills_done = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let (kills_done, stop) = (kills_done.clone(), stop.clone());
        let testenv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/testenv/testenv.sh");
        let (config, base) = (dep.config.clone(), dep.path().to_owned());
        let restarts = [
            ((kills_wanted / 3).max(1), "restart-postgres"),
            ((2 * kills_wanted / 3).max(2), "restart-kafka"),
        ];
        std::thread::spawn(move || {
            let mut kills = 0u32;
            let mut seed = Timestamp::now().unix_nanos() as u64 | 1;
            while !stop.load(Ordering::Relaxed) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                std::thread::sleep(Duration::from_millis(200 + seed % 600));
                if kills >= kills_wanted {
                    kills_done.store(true, Ordering::Relaxed);
                    continue;
                }
                projector.kill9();
                kills += 1;
                projector = spawn_process(&config, &base, "projector", "projector", &instance);
                for (at, what) in restarts {
                    if kills == at {
                        let ok = Command::new("bash")
                            .arg(&testenv)
                            .arg(what)
                            .arg(&services_dir)
                            .stdout(Stdio::null())
                            .status()
                            .unwrap();
                        assert!(ok.success(), "{what} failed");
                        eprintln!("crash: {what} done after {kills} kills");
                    }
                }
            }
            (kills, projector)
        })
    };

    // The load: every facility streams batches in order, riding out every outage.
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let mut client = FacilityClient::open(dep.path(), addr, id).await.unwrap();
        let (sent, kills_done) = (sent.clone(), kills_done.clone());
        tasks.spawn(async move {
            let (mut accepted, mut duplicates) = (0u64, 0u64);
            let mut n = i as u64 * 1_000_000;
            while sent.load(Ordering::Relaxed) < target || !kills_done.load(Ordering::Relaxed) {
                let envelopes: Vec<_> = (0..batch)
                    .map(|_| {
                        n += 1;
                        let patient = format!("0260{:08}", n % 5_000);
                        client.sign(record(&patient, n)).1
                    })
                    .collect();
                let results = match client.submit_retrying(envelopes).await {
                    Ok(results) => results,
                    Err(e) => return Err(e.to_string()),
                };
                for r in &results {
                    match v1::SubmitStatus::try_from(r.status).unwrap() {
                        v1::SubmitStatus::Accepted => accepted += 1,
                        v1::SubmitStatus::Duplicate => duplicates += 1,
                        _ => panic!("refused: {r:?}"),
                    }
                }
                sent.fetch_add(results.len() as u64, Ordering::Relaxed);
            }
            Ok((client.id.clone(), client.head().0, accepted, duplicates))
        });
    }
    let mut heads = BTreeMap::new();
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    while let Some(done) = tasks.join_next().await {
        let (id, seq, a, d) = done.unwrap().unwrap_or_else(|e| {
            // What the exchange logged about it (errors carry the reference answered).
            let log = std::fs::read_to_string(dep.path().join("api/stderr.log"));
            let log = log.unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "a facility gave up: {e}\napi's log, newest first:\n{}",
                tail.join("\n")
            )
        });
        heads.insert(id.to_string(), seq);
        accepted += a;
        duplicates += d;
    }
    stop.store(true, Ordering::Relaxed);
    let (kills, projector) = killer.join().unwrap();
    let streamed = started.elapsed();
    assert!(
        nc.settle(Duration::from_secs(600)).await.unwrap(),
        "projection did not catch up"
    );
    let converged = started.elapsed();

    // Kafka, counted by kcat: every facility event in the log, once.
    let topic = format!("{}hrx.facility-events.v1", dep.config.kafka_topic_prefix);
    let tls: Vec<String> = hrx_kafka::KafkaTls::from_test_env()
        .iter()
        .flat_map(|t| t.properties())
        .flat_map(|(k, v)| ["-X".to_owned(), format!("{k}={v}")])
        .collect();
    let dump = output(Command::new("kcat").args(&tls).args([
        "-b",
        dep.config.kafka_brokers.as_deref().unwrap(),
        "-C",
        "-t",
        &topic,
        "-o",
        "beginning",
        "-e",
        "-q",
        "-f",
        "%k %h\\n",
    ]));
    let mut kafka_ids = HashSet::new();
    let mut kafka_events = 0u64;
    for line in dump.lines().filter(|l| !l.is_empty()) {
        let (key, headers) = line.split_once(' ').unwrap_or((line, ""));
        // Facility chains only: not patients' statements nor the exchange's ingest
        // reports.
        if key.starts_with("patient:") || key.starts_with("reports:") {
            continue;
        }
        kafka_events += 1;
        let id = headers
            .split(',')
            .find_map(|h| h.strip_prefix("hrx-event-id="))
            .unwrap_or_else(|| panic!("no event id header in {line}"));
        kafka_ids.insert(id.to_owned());
    }
    // PostgreSQL, counted by psql.
    let url = dep.config.database_url.clone().unwrap();
    let psql = |sql: &str| output(Command::new("psql").args([&url, "-Atc", sql]));
    let rows = psql("SELECT count(*) || ' ' || count(DISTINCT event_id) FROM records");
    let (records, distinct) = rows.trim().split_once(' ').unwrap();
    let projected_heads: BTreeMap<String, u64> = psql(
        "SELECT chain || ' ' || max(seq) FROM chain_links \
         WHERE chain <> 'registry' AND chain NOT LIKE 'patient:%' GROUP BY chain",
    )
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(c, s)| (c.to_owned(), s.parse().unwrap()))
    .collect();

    eprintln!(
        "crash reconciliation: {accepted} accepted + {duplicates} duplicates answered from {} facilities in {streamed:.1?}, {kills} projector SIGKILLs, PostgreSQL and Kafka restarted once; converged after {converged:.1?}",
        heads.len()
    );
    eprintln!(
        "crash reconciliation: kcat counts {kafka_events} facility events ({} distinct ids), psql {records} records ({distinct} distinct ids), chain heads sent {} projected {}",
        kafka_ids.len(),
        heads.values().sum::<u64>(),
        projected_heads.values().sum::<u64>()
    );
    // An event answered "duplicate" on a retry was appended by the attempt whose answer
    // the outage swallowed: each event sent is answered once, accepted or duplicate.
    let unique = accepted + duplicates;
    assert!(unique >= target && kills >= kills_wanted);
    assert_eq!(
        unique,
        heads.values().sum::<u64>(),
        "every event sent was answered once"
    );
    assert_eq!(kafka_events, unique, "Kafka holds every event sent once");
    assert_eq!(
        kafka_ids.len() as u64,
        kafka_events,
        "no event id twice in Kafka"
    );
    assert_eq!(
        records,
        unique.to_string(),
        "PostgreSQL projected every event"
    );
    assert_eq!(distinct, records, "no event id twice in PostgreSQL");
    assert_eq!(
        projected_heads, heads,
        "every chain head is the last seq sent"
    );
    drop((projector, api));
}
