//! The distributed phase of a run: hrx on Kafka + PostgreSQL, and the raw limits of
//! those two services for the same work, measured after the embedded phases.
//!
//! Each run is isolated from every other on the same services: it creates a database
//! of its own (`hrx_bench_<pid>_<millis>`, through the given URL) and a topic prefix of
//! its own (`HRX_KAFKA_TOPIC_PREFIX`), migrates the schema (what `hrx migrate` does),
//! and at the end drops the database and deletes its topics.
//!
//! The deployment: the projector runs as a process of its own (`hrx serve --role
//! projector`, the executable given in [`crate::Options::hrx_exe`]) so that its peak
//! RSS (VmHWM of `/proc/<pid>/status`) is its own; ingest, timeline, consent, registry
//! and monitor run in this process (`Node::build` with the distributed backend). The
//! same population as the embedded phases is registered again and pre-signed again
//! (keys are made at registration, and an event must be signed after its key's
//! `valid_from`), then:
//!
//! 1. `limit.kafka.produce_consume`: the messages hrx's ingest writes for those
//!    envelopes, produced into a fresh topic with hrx's partition count and consumed
//!    back, by raw rdkafka ([`limits::kafka_produce_consume`]);
//! 2. `limit.postgres.copy`: the `records` / `record_envelopes` rows the projector
//!    writes for them, by binary COPY ([`limits::postgres_copy`]);
//! 3. hrx: the envelopes submitted as fast as possible while submit → visible probes
//!    run, exactly as in the embedded phase (the same functions, on this node's
//!    address), then idle probes and the projector's peak RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hrx_node::{Backend, NodeConfig};

use crate::bench::{
    self, BenchError, HarnessPatients, IngestRun, Options, Registered, RunningNode, Scale, Session,
};
use crate::limits;
use crate::loadgen::Population;
use crate::report::{Row, RowSpec, Target, fmt_ms};
use crate::stats::Samples;

/// The table section of the distributed rows.
pub const SECTION: &str = "distributed ingest (Kafka + PostgreSQL)";

/// The ids of every row this phase produces (the two limits and the four hrx rows).
const ROWS: [&str; 6] = [
    "limit.kafka.produce_consume",
    "limit.postgres.copy",
    "distributed.ingest.accepted_per_s",
    "distributed.visible.p50",
    "distributed.visible.p99",
    "distributed.rss.projector_mib",
];

/// The roles of the in-process node when the projector runs apart.
pub(crate) const ROLES_BESIDE_PROJECTOR: &str = "ingest,timeline,consent,registry,monitor";

/// Kafka and PostgreSQL to measure on.
#[derive(Clone, Debug)]
pub struct Services {
    /// Bootstrap servers, `host:port[,…]`.
    pub kafka_brokers: String,
    /// TLS to the brokers, if they take it.
    pub kafka_tls: Option<hrx_kafka::KafkaTls>,
    /// A PostgreSQL URL whose role may create and drop databases: the run creates its
    /// own database on that server and drops it at the end (TLS through libpq's URL
    /// parameters).
    pub database_url: String,
}

/// Each row of this phase, empty: label, unit, limit and target.
fn spec(id: &'static str, one_core: Option<f64>) -> RowSpec {
    match id {
        "limit.kafka.produce_consume" => RowSpec::new(
            "limits",
            id,
            "raw rdkafka produce + consume, same messages",
            "msgs/s",
        ),
        "limit.postgres.copy" => RowSpec::new(
            "limits",
            id,
            "raw PostgreSQL binary COPY, same rows",
            "rows/s",
        ),
        "distributed.ingest.accepted_per_s" => {
            RowSpec::new(SECTION, id, "accepted events/s", "events/s")
                .limit("limit.verify.one_core", one_core)
                .target(Target::AtLeast(0.6))
        }
        "distributed.visible.p50" => RowSpec::new(SECTION, id, "submit → visible p50", "ms"),
        "distributed.visible.p99" => RowSpec::new(SECTION, id, "submit → visible p99", "ms"),
        _ => RowSpec::new(SECTION, id, "projector peak RSS", "MiB").target(Target::AtMost(200.0)),
    }
}

/// The rows without Kafka and PostgreSQL: not measured, and how to measure them.
pub(crate) fn not_requested() -> (Vec<Row>, Vec<String>) {
    let rows = ROWS
        .into_iter()
        .map(|id| {
            spec(id, None)
                .detail(
                    "needs Kafka + PostgreSQL: `bash tests/bench.sh` starts both and passes \
                     them, or give `hrx bench --kafka-brokers … --database-url …` \
                     (HRX_BENCH_KAFKA_BROKERS, HRX_BENCH_DATABASE_URL)",
                )
                .not_measured()
        })
        .collect();
    (rows, Vec::new())
}

/// What the distributed phase needs from the run.
pub(crate) struct Phase<'a> {
    pub scale: &'a Scale,
    pub seed: u64,
    pub cpus: usize,
    pub options: &'a Options,
    /// `limit.verify.one_core`, the ingest row's limit.
    pub one_core: f64,
}

impl Phase<'_> {
    /// Runs the phase on `services`. A failure does not lose the embedded results: the
    /// rows not measured by then are [`crate::Status::Failed`] with the error, and a
    /// note says so. Whatever happened, the database and topics are removed.
    pub(crate) async fn run(
        &self,
        services: &Services,
        hrx_exe: Option<&Path>,
        pop: &Arc<Population>,
    ) -> (Vec<Row>, Vec<String>) {
        let mut rows = Vec::new();
        let mut notes = Vec::new();
        let name = run_name("hrx_bench");
        let prefix = format!("{name}.");
        let mut topics = Vec::new();
        let result = match Database::create(&services.database_url, &name).await {
            Ok(db) => {
                let r = self
                    .measure(
                        services,
                        hrx_exe,
                        pop,
                        &db,
                        &prefix,
                        &mut topics,
                        &mut rows,
                        &mut notes,
                    )
                    .await;
                if let Err(e) = db.drop_database().await {
                    notes.push(format!("could not drop the run's database {name}: {e}"));
                }
                r
            }
            Err(e) => Err(e),
        };
        if !topics.is_empty()
            && let Err(e) = limits::delete_topics(
                &services.kafka_brokers,
                services.kafka_tls.as_ref(),
                &topics,
            )
            .await
        {
            notes.push(format!("could not delete the run's Kafka topics: {e}"));
        }
        if let Err(e) = result {
            notes.push(format!("the distributed phase failed: {e}"));
            for id in ROWS {
                if !rows.iter().any(|r| r.id == id) {
                    rows.push(
                        spec(id, Some(self.one_core))
                            .detail(format!("the distributed phase failed: {e}"))
                            .failed(),
                    );
                }
            }
        }
        (rows, notes)
    }

    #[allow(clippy::too_many_arguments)]
    async fn measure(
        &self,
        services: &Services,
        hrx_exe: Option<&Path>,
        pop: &Arc<Population>,
        db: &Database,
        prefix: &str,
        topics: &mut Vec<String>,
        rows: &mut Vec<Row>,
        notes: &mut Vec<String>,
    ) -> Result<(), BenchError> {
        // The shared directory: the CA and certificates, the national root key and the
        // facilities' keys (the harness's clients use it; the processes get the public
        // root key and the TLS directory, as in a real deployment).
        let dir = tempfile::tempdir().map_err(|e| BenchError::Io("temp dir", e))?;
        let data = dir.path().to_owned();
        hrx_identity::TlsDir::open_or_init(&data)?;
        let (root, _) = hrx_node::keys::read_or_create(&hrx_node::root_key_path(&data))?;
        let mut config = node_config(services, &data, &db.url, prefix, &root);
        config.roles = if hrx_exe.is_some() {
            ROLES_BESIDE_PROJECTOR.into()
        } else {
            NodeConfig::default().roles
        };
        let partitions = config.kafka_partitions;
        topics.push(format!("{prefix}{}", hrx_kafka::FACILITY_EVENTS_TOPIC));
        topics.push(format!("{prefix}{}", hrx_kafka::REGISTRY_TOPIC));

        // What `hrx migrate` does: the store's schema, the chain index, the topics.
        drop(hrx_node::backends(&config).await?);

        let mut projector = match hrx_exe {
            Some(exe) => {
                let mut p = HrxProcess::spawn(exe, &config, "projector", data.join("projector"))?;
                p.ready(Duration::from_secs(60)).await?;
                Some(p)
            }
            None => None,
        };
        notes.push(format!(
            "distributed setup: Kafka {} and PostgreSQL (database {} created for this run, dropped after), topics prefixed {prefix} ({partitions} facility-events partitions); {}; in this process, one node with the roles {} (Node::build, distributed backend); the same population registered again and pre-signed again (new keys), submitted over mutual TLS as in the embedded phase",
            services.kafka_brokers,
            db.name,
            if projector.is_some() {
                "the projector as a process of its own (`hrx serve --role projector`)"
            } else {
                "the projector in this process (no hrx executable given)"
            },
            config.roles,
        ));

        let (node, addr) = RunningNode::start(config).await?;
        let result = self
            .with_node(
                services,
                pop,
                &data,
                addr,
                db,
                prefix,
                partitions,
                projector.as_mut(),
                topics,
                rows,
                notes,
            )
            .await;
        let stopped = node.stop().await;
        // A failure of the run is often the projector's: say what it last wrote.
        let result = match (result, &projector) {
            (Err(e), Some(p)) => Err(BenchError::Process(format!(
                "{e}; the projector process last wrote: {}",
                p.stderr_tail()
            ))),
            (result, _) => result,
        };
        // Killed (see its Drop) before the database is dropped.
        drop(projector);
        drop(dir);
        result?;
        stopped
    }

    #[allow(clippy::too_many_arguments)]
    async fn with_node(
        &self,
        services: &Services,
        pop: &Arc<Population>,
        data: &Path,
        addr: std::net::SocketAddr,
        db: &Database,
        prefix: &str,
        partitions: u32,
        mut projector: Option<&mut HrxProcess>,
        topics: &mut Vec<String>,
        rows: &mut Vec<Row>,
        notes: &mut Vec<String>,
    ) -> Result<(), BenchError> {
        let Registered {
            nc,
            probe_fac,
            reader_fac,
            signers,
            probe_signer,
        } = bench::register(data, addr, pop).await?;
        let (streams, _) = bench::presign(pop.clone(), signers, self.cpus).await?;
        let total: usize = streams.iter().map(|(_, e)| e.len()).sum();

        // --- Limits: the same messages through raw rdkafka, the same rows by COPY ----
        let events = limits::decode(&streams)?;
        let limit_topic = format!("{prefix}limit.facility-events");
        topics.push(limit_topic.clone());
        limits::create_topic(
            &services.kafka_brokers,
            services.kafka_tls.as_ref(),
            &limit_topic,
            partitions,
        )
        .await?;
        let messages = limits::log_messages(&events, partitions);
        // The broker was usually started just before this run: its JIT compiler would
        // take 10–20 % of the machine through the measured phases (seen in `perf record
        // -a`). One unmeasured pass of the same messages through a scratch topic first,
        // so that what follows measures a warm broker, as a deployment runs.
        let warm_topic = format!("{prefix}limit.warm-up");
        topics.push(warm_topic.clone());
        limits::create_topic(
            &services.kafka_brokers,
            services.kafka_tls.as_ref(),
            &warm_topic,
            partitions,
        )
        .await?;
        limits::kafka_produce_consume(
            &services.kafka_brokers,
            services.kafka_tls.as_ref(),
            &warm_topic,
            partitions,
            &messages,
        )
        .await?;
        let kafka = limits::kafka_produce_consume(
            &services.kafka_brokers,
            services.kafka_tls.as_ref(),
            &limit_topic,
            partitions,
            &messages,
        )
        .await?;
        drop(messages);
        rows.push(
            spec("limit.kafka.produce_consume", None)
                .value(Some(kafka.rate()))
                .detail(format!(
                    "the {} messages hrx's ingest writes for this run's envelopes (hrx_kafka::wire value, facility id key, chain headers, murmur2 partition; {:.1} MB of values), into a fresh topic of {partitions} partitions on the same broker, after one unmeasured pass of them through another topic to warm the broker up. Produce: all sent (idempotent, acks=all, lz4, linger.ms=2: hrx's producer settings) and every acknowledgement awaited, {} in {:.2} s = {:.0}/s (the first one sent before the clock, to connect and get the producer id); then consume: all read back by a BaseConsumer assigned to every partition from the start (read_committed), in {:.2} s = {:.0}/s; value = 1 / (1/produce rate + 1/consume rate), messages/s through both",
                    kafka.messages,
                    kafka.bytes as f64 / 1e6,
                    kafka.produced,
                    kafka.produce.as_secs_f64(),
                    kafka.produce_rate(),
                    kafka.consume.as_secs_f64(),
                    kafka.consume_rate(),
                ))
                .measured(),
        );
        let record_rows = limits::record_rows(&events, partitions);
        let copy = limits::postgres_copy(&db.url, &record_rows).await?;
        rows.push(
            spec("limit.postgres.copy", None)
                .value(Some(record_rows.len() as f64 / copy.as_secs_f64()))
                .detail(format!(
                    "the {} records the projector writes for this run's events, as their rows of `records` and `record_envelopes` (same columns and values, log positions and patient seqs assigned in log order), by one binary COPY per table (tokio-postgres BinaryCopyInWriter) in one transaction into fresh tables LIKE hrx's INCLUDING ALL (same keys and indexes), same server: {:.2} s from BEGIN to COMMIT; value = records / s (each is a row of both tables)",
                    record_rows.len(),
                    copy.as_secs_f64()
                ))
                .measured(),
        );
        drop(record_rows);
        drop(events);

        // --- hrx, end to end, as in the embedded phase ----------------------------------
        let people = HarnessPatients::of(pop)?;
        let Session {
            clients, prober, ..
        } = bench::open_session(
            data,
            addr,
            pop,
            &nc,
            (&probe_fac, probe_signer),
            &reader_fac,
            &people,
            self.seed,
        )
        .await?;
        let progress = bench::bar(self.options, total as u64, "distributed");
        let (run, mut prober) = bench::ingest_with_probes(
            &nc,
            &clients,
            streams,
            prober,
            self.scale.batch,
            self.scale.loaded_probe_gap,
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
        // The projector has caught up: its peak is that of the whole run.
        let rss = projector.as_mut().map(|p| p.peak_rss_mib());
        if let Some(e) = probe_error {
            notes.push(format!(
                "distributed: probing under load stopped early: {e}"
            ));
        }
        if !settled {
            notes.push("distributed: the projector had not caught up 600 s after ingest".into());
        }
        let mut idle = bench::idle_probes(&mut prober, self.scale.idle_probes).await?;

        rows.push(
            spec("distributed.ingest.accepted_per_s", Some(self.one_core))
                .value(Some(tally.accepted as f64 / ingest_time.as_secs_f64()))
                .detail(format!(
                    "{} events in {:.2} s, {} per SubmitEvents call, {} facilities concurrently over mutual TLS, each append acknowledged by Kafka (acks=all) and indexed in PostgreSQL; all visible (projected by the projector process) {:.2} s after the first submission ({:.0} events/s)",
                    tally.accepted,
                    ingest_time.as_secs_f64(),
                    self.scale.batch,
                    pop.facilities().len(),
                    visible_time.as_secs_f64(),
                    tally.accepted as f64 / visible_time.as_secs_f64(),
                ))
                .measured(),
        );
        let answered = (
            fmt_ms(loaded_answered.percentile_ms(50.0)),
            fmt_ms(loaded_answered.percentile_ms(99.0)),
        );
        let probe_detail = |idle: &mut Samples, n: usize| {
            format!(
                "{n} probes every {} ms from the start of the ingest run until the projector caught up: submit one record, until a follower of the patient (on this process's timeline, woken by LISTEN/NOTIFY) receives it; of that, submit → answered (accepted by ingest) p50 {} ms, p99 {} ms; idle, {} probes one at a time: p50 {} ms, p99 {} ms",
                self.scale.loaded_probe_gap.as_millis(),
                answered.0,
                answered.1,
                idle.len(),
                fmt_ms(idle.percentile_ms(50.0)),
                fmt_ms(idle.percentile_ms(99.0)),
            )
        };
        let detail = probe_detail(&mut idle, loaded.len());
        rows.push(
            spec("distributed.visible.p50", None)
                .value(loaded.percentile_ms(50.0))
                .detail(detail.clone())
                .measured(),
        );
        rows.push(
            spec("distributed.visible.p99", None)
                .value(loaded.percentile_ms(99.0))
                .detail(detail)
                .measured(),
        );
        let rss_row = spec("distributed.rss.projector_mib", None);
        rows.push(match rss {
            Some(Some(mib)) => rss_row
                .value(Some(mib))
                .detail("VmHWM of /proc/<pid>/status of the projector process (`hrx serve --role projector`) once it had caught up: its peak over start-up, the whole ingest run and the probes")
                .measured(),
            Some(None) => rss_row
                .detail("the projector process's /proc/<pid>/status could not be read")
                .failed(),
            None => rss_row
                .detail("not measured: the projector ran in this process (no hrx executable given in Options::hrx_exe), so no RSS of its own; `hrx bench` passes its own executable")
                .not_measured(),
        });
        Ok(())
    }
}

/// The node configuration of a run on `services`: distributed backend, the run's
/// database and topic prefix, the national root public key of `root`, and the TLS
/// directory and data of `data`; heartbeats every second. Roles are the default (all).
pub(crate) fn node_config(
    services: &Services,
    data: &Path,
    database_url: &str,
    prefix: &str,
    root: &hrx_domain::SigningKey,
) -> NodeConfig {
    let mut config = NodeConfig::ephemeral(data);
    config.heartbeat_ms = 1000;
    config.backend = Backend::Distributed;
    config.kafka_brokers = Some(services.kafka_brokers.clone());
    if let Some(tls) = &services.kafka_tls {
        config.kafka_ca_file = tls.ca_file.clone();
        (config.kafka_cert_file, config.kafka_key_file) = tls.client_identity.clone().unzip();
    }
    config.kafka_topic_prefix = prefix.to_owned();
    config.consumer_group = format!("{prefix}projector");
    config.database_url = Some(database_url.to_owned());
    config.root_public_key = Some(
        root.public_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    );
    config.tls_dir = Some(data.join("tls"));
    config
}

/// A fresh name for a run's database and topic prefix: `<kind>_<pid>_<millis>`.
pub(crate) fn run_name(kind: &str) -> String {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{kind}_{}_{stamp}", std::process::id())
}

/// The run's own database on the server of the given URL.
pub(crate) struct Database {
    admin_url: String,
    pub(crate) name: String,
    /// The URL of the run's database.
    pub(crate) url: String,
}

impl Database {
    pub(crate) async fn create(admin_url: &str, name: &str) -> Result<Self, BenchError> {
        let url = hrx_identity::backend::postgres_url_with_dbname(admin_url, name);
        admin(
            admin_url,
            &format!("CREATE DATABASE {name}"),
            "create database",
        )
        .await?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name: name.to_owned(),
            url,
        })
    }

    /// Drops it even if a connection lingers (a killed process's session).
    pub(crate) async fn drop_database(&self) -> Result<(), BenchError> {
        admin(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            "drop database",
        )
        .await
    }
}

async fn admin(url: &str, sql: &str, what: &'static str) -> Result<(), BenchError> {
    let (client, conn) = limits::connect_postgres(url).await?;
    let conn = tokio::spawn(conn);
    let r = client
        .batch_execute(sql)
        .await
        .map_err(|e| BenchError::postgres(what, &e));
    drop(client);
    let _ = conn.await;
    r
}

/// `hrx serve --role <roles>`, a child of this process (killed when dropped), on the
/// distributed backend of a [`NodeConfig`], listening on free loopback ports.
pub(crate) struct HrxProcess {
    child: Child,
    data: PathBuf,
    roles: String,
}

impl HrxProcess {
    /// Starts `exe serve --role <roles>` with `config`'s backends, root key and TLS
    /// directory, its data (and `stderr.log`) in `data`.
    pub(crate) fn spawn(
        exe: &Path,
        config: &NodeConfig,
        roles: &str,
        data: PathBuf,
    ) -> Result<Self, BenchError> {
        std::fs::create_dir_all(&data).map_err(|e| BenchError::Io("process data dir", e))?;
        let stderr = std::fs::File::create(data.join("stderr.log"))
            .map_err(|e| BenchError::Io("process log", e))?;
        let missing = |what: &str| BenchError::Process(format!("no {what} in the configuration"));
        let mut cmd = Command::new(exe);
        // Only what is set here: the harness's own environment may hold HRX_* variables
        // of another node (`source`d service files), which the child would read.
        for var in hrx_node::config::ENV_VARS {
            cmd.env_remove(var);
        }
        cmd.args(["serve", "--role", roles])
            .env("HRX_BACKEND", "distributed")
            .env("HRX_HEARTBEAT_MS", config.heartbeat_ms.to_string())
            .env("HRX_DATA_DIR", &data)
            .env("HRX_GRPC_ADDR", "127.0.0.1:0")
            .env("HRX_PATIENT_ADDR", "127.0.0.1:0")
            .env("HRX_METRICS_ADDR", "127.0.0.1:0")
            .env(
                "HRX_KAFKA_BROKERS",
                config
                    .kafka_brokers
                    .as_deref()
                    .ok_or_else(|| missing("brokers"))?,
            )
            .env("HRX_KAFKA_PARTITIONS", config.kafka_partitions.to_string())
            .envs(
                [
                    ("HRX_KAFKA_CA_FILE", &config.kafka_ca_file),
                    ("HRX_KAFKA_CERT_FILE", &config.kafka_cert_file),
                    ("HRX_KAFKA_KEY_FILE", &config.kafka_key_file),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k, v))),
            )
            .env("HRX_KAFKA_TOPIC_PREFIX", &config.kafka_topic_prefix)
            .env("HRX_CONSUMER_GROUP", &config.consumer_group)
            .env(
                "HRX_DATABASE_URL",
                config
                    .database_url
                    .as_deref()
                    .ok_or_else(|| missing("database"))?,
            )
            .env(
                "HRX_DATABASE_POOL_SIZE",
                config.database_pool_size.to_string(),
            )
            .env("HRX_PROJECTOR_BATCH", config.projector_batch.to_string())
            .env(
                "HRX_ROOT_PUBLIC_KEY",
                config
                    .root_public_key
                    .as_deref()
                    .ok_or_else(|| missing("root key"))?,
            )
            .env(
                "HRX_TLS_DIR",
                config
                    .tls_dir
                    .as_deref()
                    .ok_or_else(|| missing("TLS dir"))?,
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::Process(format!("cannot start {}: {e}", exe.display())))?;
        Ok(Self {
            child,
            data,
            roles: roles.to_owned(),
        })
    }

    /// The roles it serves, as given to `--role`.
    pub(crate) fn roles(&self) -> &str {
        &self.roles
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its gRPC address, from the `node.json` it wrote (after [`Self::ready`]).
    pub(crate) fn grpc_addr(&self) -> Result<std::net::SocketAddr, BenchError> {
        let file = self.data.join("node.json");
        let text = std::fs::read_to_string(&file)
            .map_err(|e| BenchError::Io("the node.json of an hrx process", e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| BenchError::Process(format!("{}: {e}", file.display())))?;
        value["grpc_addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| BenchError::Process(format!("{}: no grpc_addr", file.display())))
    }

    /// Until the process has built its node (migrations checked, consumer group
    /// joining): `hrx serve` writes `node.json` then.
    pub(crate) async fn ready(&mut self, timeout: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        let file = self.data.join("node.json");
        loop {
            // Written in one call, but not atomically: ready once it parses.
            if std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Process(format!(
                    "exited at start-up ({status}): {}",
                    self.stderr_tail()
                )));
            }
            if Instant::now() > deadline {
                return Err(BenchError::Process(format!(
                    "not ready within {} s: {}",
                    timeout.as_secs(),
                    self.stderr_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// VmHWM of the process (its peak RSS), in MiB; `None` once it has exited.
    pub(crate) fn peak_rss_mib(&mut self) -> Option<f64> {
        self.status_mib("VmHWM:")
    }

    /// VmRSS of the process (its RSS now), in MiB; `None` once it has exited.
    pub(crate) fn rss_mib(&mut self) -> Option<f64> {
        self.status_mib("VmRSS:")
    }

    fn status_mib(&mut self, field: &str) -> Option<f64> {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    /// Whether it has exited (and how).
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines the process wrote to stderr (hrx logs carry no patient data).
    pub(crate) fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.data.join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            "(no output)".into()
        } else {
            tail
        }
    }
}

impl Drop for HrxProcess {
    fn drop(&mut self) {
        // SIGKILL: a projector is crash-safe by design (a batch and its offset commit
        // together), and the database is dropped right after.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
