//! The Kafka log against a real broker and a real PostgreSQL server: every log behaviour
//! of the shared suite (`hrx_ports::testkit::log_*`), each on fresh topics and a fresh
//! database, and the behaviours only a distributed log has — partitioning by facility,
//! topic creation and checking, an unreachable broker, two processes racing on one
//! chain, events in Kafka that the index has not seen (and which of them it takes:
//! only what an append claimed, never a forgery produced straight to the topic),
//! messages written by the previous version (without the receipt headers), failed
//! produces (librdkafka's mock cluster), prompt wake-ups across processes, and many
//! chains appended concurrently (with timings).
//!
//! Services come from `HRX_TEST_KAFKA_BROKERS` and `HRX_TEST_DATABASE_URL` (see
//! `deploy/testenv`). Without them each test prints a notice and passes, unless
//! `HRX_TEST_REQUIRE_SERVICES=1`, when it fails.

use std::time::{Duration, Instant};

use hrx_domain::EventId;
use hrx_domain::chain::ChainHead;
use hrx_kafka::{KafkaConfig, KafkaError, KafkaLog, KafkaTls, key_partition, wire};
use hrx_ports::testkit::{self, F1, F2, append, envelope, event_id, facility};
use hrx_ports::{ChainKey, EventLog, LogPosition, PortError};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

struct Services {
    brokers: String,
    database_url: String,
}

fn services() -> Option<Services> {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    match (var("HRX_TEST_KAFKA_BROKERS"), var("HRX_TEST_DATABASE_URL")) {
        (Some(brokers), Some(database_url)) => Some(Services {
            brokers,
            database_url,
        }),
        _ if var("HRX_TEST_REQUIRE_SERVICES").as_deref() == Some("1") => panic!(
            "HRX_TEST_REQUIRE_SERVICES=1 but HRX_TEST_KAFKA_BROKERS and HRX_TEST_DATABASE_URL \
             are not both set: start Kafka and PostgreSQL with `deploy/testenv/testenv.sh up DIR`"
        ),
        _ => {
            eprintln!(
                "hrx-kafka: skipped (set HRX_TEST_KAFKA_BROKERS and HRX_TEST_DATABASE_URL to run \
                 against real Kafka and PostgreSQL)"
            );
            None
        }
    }
}

/// 32 random hex digits (a v7 UUID's), for names nobody else uses.
fn unique() -> String {
    EventId::new_v7().to_string().replace('-', "")
}

/// Fresh topics (by name) and a fresh database for one test.
struct Fixture {
    services: Services,
    config: KafkaConfig,
    database_url: String,
}

async fn fixture(partitions: u32) -> Option<Fixture> {
    let services = services()?;
    let id = unique();
    let database = format!("hrx_test_{id}");
    let (admin, connection) = hrx_identity::backend::connect_postgres(&services.database_url)
        .await
        .expect("the test PostgreSQL server answers");
    tokio::spawn(connection);
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .expect("create a test database");
    let mut config = KafkaConfig::new(&services.brokers).with_topic_prefix(&format!("t{id}."));
    config.tls = KafkaTls::from_test_env();
    config.partitions = partitions;
    Some(Fixture {
        database_url: hrx_identity::backend::postgres_url_with_dbname(
            &services.database_url,
            &database,
        ),
        services,
        config,
    })
}

impl Fixture {
    async fn open(&self) -> KafkaLog {
        KafkaLog::connect(self.config.clone(), &self.database_url)
            .await
            .expect("connect the Kafka log")
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        client_config(&self.services.brokers)
            .create()
            .expect("an admin client")
    }

    /// A plain idempotent producer, as another program (or a crashed hrx) would use.
    fn raw_producer(&self, extra: &[(&str, &str)]) -> FutureProducer {
        let mut c = client_config(&self.services.brokers);
        c.set("enable.idempotence", "true").set("acks", "all");
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c.create().expect("a producer")
    }
}

/// Produces `value` with `headers` straight to `partition` of the facility-events topic,
/// as any client allowed to produce there could; its position.
async fn produce_raw(
    f: &Fixture,
    producer: &FutureProducer,
    partition: u32,
    key: &str,
    value: &[u8],
    headers: rdkafka::message::OwnedHeaders,
) -> LogPosition {
    let d = producer
        .send(
            FutureRecord::to(&f.config.facility_topic)
                .partition(partition as i32)
                .key(key)
                .payload(value)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");
    LogPosition {
        partition,
        offset: d.offset as u64,
    }
}

fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("broker.address.family", "v4");
    for (k, v) in KafkaTls::from_test_env()
        .iter()
        .flat_map(KafkaTls::properties)
    {
        c.set(k, v);
    }
    c
}

fn chain(code: &str) -> ChainKey {
    ChainKey::Facility(facility(code))
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

// ── The shared behaviour suite ───────────────────────────────────────────────────────

macro_rules! log_behaviours {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(f) = fixture(3).await else { return };
            let log = f.open().await;
            testkit::$name(&log).await;
        }
    )*};
}

log_behaviours!(
    log_appends_reads_and_orders,
    log_refuses_chain_conflicts_atomically,
    log_wait_for_wakes_on_append,
    log_chain_context_reports_head_and_priors,
    log_patient_chains_are_chains_of_their_own,
    log_keeps_receive_times_and_registry_seqs,
    log_chain_context_reports_the_heads_recorded_at,
);

// ── Kafka-specific behaviours ────────────────────────────────────────────────────────

/// Every event of a facility lands in the partition Kafka's default partitioner picks
/// for its id, append after append; librdkafka's own murmur2 partitioner agrees.
#[tokio::test]
async fn a_facility_always_lands_in_its_partition() {
    let Some(f) = fixture(5).await else { return };
    let log = f.open().await;
    let facilities: Vec<String> = (26000..26040).map(|n| n.to_string()).collect();
    let mut used = std::collections::BTreeSet::new();
    for (i, code) in facilities.iter().enumerate() {
        let c = chain(code);
        let n = 10 * i as u64;
        let first = log
            .append(vec![append(&c, 1, n), append(&c, 2, n + 1)])
            .await
            .expect("append");
        let second = log
            .append(vec![append(&c, 3, n + 2)])
            .await
            .expect("append");
        let expected = key_partition(code, 5);
        assert_eq!(log.partition_of(&c), expected);
        assert_eq!(EventLog::partition_of(&log, &c), expected);
        for p in first.iter().chain(&second) {
            assert_eq!(p.partition, expected, "facility {code}");
        }
        used.insert(expected);
    }
    assert!(used.len() > 1, "facilities spread over partitions");
    assert_eq!(
        log.partition_of(&ChainKey::Registry),
        5,
        "the registry is last"
    );
    let registry = log
        .append(vec![append(&ChainKey::Registry, 1, 1000)])
        .await
        .expect("append to the registry");
    assert_eq!(registry[0].partition, 5);

    // Produce by key, leaving the choice to librdkafka's Java-compatible partitioner.
    let scratch = format!("{}.scratch", f.config.facility_topic);
    let created = f
        .admin()
        .create_topics(
            [&NewTopic::new(&scratch, 5, TopicReplication::Fixed(1))],
            &options(),
        )
        .await
        .expect("create a scratch topic");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let producer = f.raw_producer(&[("partitioner", "murmur2_random")]);
    for code in facilities.iter().map(String::as_str).chain(["registry"]) {
        let delivered = producer
            .send(
                FutureRecord::to(&scratch).key(code).payload("x"),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
        assert_eq!(
            delivered.partition as u32,
            key_partition(code, 5),
            "librdkafka puts {code} where we do"
        );
    }
}

/// Missing topics are created with the configured partition counts and infinite
/// retention; an existing topic with another count, a multi-partition registry topic or
/// a compacted topic is one clear error.
#[tokio::test]
async fn topics_are_created_and_checked() {
    let Some(f) = fixture(hrx_kafka::DEFAULT_PARTITIONS).await else {
        return;
    };
    let log = f.open().await;
    assert_eq!(
        log.partitions(),
        13,
        "12 facility partitions and the registry's"
    );
    let producer = f.raw_producer(&[]);
    for (topic, partitions) in [
        (&f.config.facility_topic, 12),
        (&f.config.registry_topic, 1),
    ] {
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        assert_eq!(
            metadata.topics()[0].partitions().len(),
            partitions,
            "{topic}"
        );
    }
    let described = f
        .admin()
        .describe_configs(
            [&ResourceSpecifier::Topic(&f.config.facility_topic)],
            &options(),
        )
        .await
        .expect("describe");
    let config = described[0].as_ref().expect("the topic's configuration");
    let value = |k: &str| config.get(k).and_then(|e| e.value.clone());
    assert_eq!(value("retention.ms").as_deref(), Some("-1"));
    assert_eq!(value("cleanup.policy").as_deref(), Some("delete"));
    drop(log);

    // The same topics with another partition count configured.
    let mut six = f.config.clone();
    six.partitions = 6;
    let e = KafkaLog::connect(six, &f.database_url)
        .await
        .expect_err("a partition count mismatch");
    match &e {
        KafkaError::TopicMisconfigured { topic, detail } => {
            assert_eq!(topic, &f.config.facility_topic);
            assert!(detail.contains("12 partition(s)") && detail.contains("must have 6"));
        }
        other => panic!("expected TopicMisconfigured, got {other:?}"),
    }
    eprintln!("mismatched partition count: {e}");

    // A registry topic with two partitions, made by someone else.
    let mut two = f.config.clone();
    two.facility_topic = format!("{}.b", f.config.facility_topic);
    two.registry_topic = format!("{}.b", f.config.registry_topic);
    f.admin()
        .create_topics(
            [&NewTopic::new(
                &two.registry_topic,
                2,
                TopicReplication::Fixed(1),
            )],
            &options(),
        )
        .await
        .expect("create");
    let e = KafkaLog::connect(two.clone(), &f.database_url)
        .await
        .expect_err("a registry topic with two partitions");
    assert!(
        matches!(&e, KafkaError::TopicMisconfigured { topic, .. } if *topic == two.registry_topic),
        "{e:?}"
    );
    eprintln!("two-partition registry: {e}");

    // A compacted facility-events topic, and one whose broker stamps messages itself.
    for (suffix, key, value) in [
        ("c", "cleanup.policy", "compact"),
        ("d", "message.timestamp.type", "LogAppendTime"),
    ] {
        let mut made = f.config.clone();
        made.facility_topic = format!("{}.{suffix}", f.config.facility_topic);
        made.registry_topic = format!("{}.{suffix}", f.config.registry_topic);
        made.partitions = 2;
        f.admin()
            .create_topics(
                [
                    &NewTopic::new(&made.facility_topic, 2, TopicReplication::Fixed(1))
                        .set(key, value),
                ],
                &options(),
            )
            .await
            .expect("create");
        let e = KafkaLog::connect(made.clone(), &f.database_url)
            .await
            .expect_err("a misconfigured facility-events topic");
        assert!(
            matches!(&e, KafkaError::TopicMisconfigured { topic, detail }
                if *topic == made.facility_topic && detail.contains(value)),
            "{e:?}"
        );
        eprintln!("{key}={value} topic: {e}");
    }
}

/// A broker address where nothing listens fails `connect` with one clear error in
/// bounded time. Needs no services: nothing is reached.
#[tokio::test]
async fn an_unreachable_broker_fails_connect_quickly() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("its address").port()
    }; // closed again here
    let t = Instant::now();
    let e = KafkaLog::connect(
        KafkaConfig::new(format!("127.0.0.1:{port}")),
        "postgres://nobody@127.0.0.1:1/nothing",
    )
    .await
    .expect_err("nothing listens there");
    let took = t.elapsed();
    assert!(matches!(e, KafkaError::Unreachable { .. }), "{e:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    eprintln!("unreachable broker after {took:?}: {e}");
}

/// Two logs (two ingest processes) appending the next seq of one chain at the same
/// moment: one wins, the other gets `Conflict`, and the log holds each seq once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_never_both_append_at_one_seq() {
    let Some(f) = fixture(3).await else { return };
    let (a, b) = (f.open().await, f.open().await);
    let c = chain(F1);
    let mut winners = Vec::new();
    for round in 0..25u64 {
        let head = a
            .chain_context(&c, event_id(0), 0)
            .await
            .expect("head")
            .context
            .head
            .seq;
        assert_eq!(head, round);
        let (na, nb) = (1000 + round, 2000 + round);
        let (ra, rb) = tokio::join!(
            a.append(vec![append(&c, head + 1, na)]),
            b.append(vec![append(&c, head + 1, nb)]),
        );
        match (ra, rb) {
            (Ok(_), Err(PortError::Conflict(_))) => winners.push(na),
            (Err(PortError::Conflict(_)), Ok(_)) => winners.push(nb),
            other => panic!("round {round}: exactly one append must win, got {other:?}"),
        }
    }
    let p = a.partition_of(&c);
    let entries = b.read(p, 0, 1000).await.expect("read");
    let logged: Vec<_> = entries.iter().map(|e| e.envelope.clone()).collect();
    let expected: Vec<_> = winners.iter().map(|n| envelope(*n)).collect();
    assert_eq!(logged, expected, "each seq once, the winners in order");
    let head = b
        .chain_context(&c, event_id(0), 0)
        .await
        .expect("head")
        .context
        .head;
    assert_eq!(head.seq, 25);
    assert_eq!(
        head.event_id,
        Some(event_id(*winners.last().expect("winners")))
    );
}

/// An event that reached Kafka without being indexed (its append claimed it, produced
/// it, and crashed right after the acknowledgement; here: a claim, then a raw producer
/// writing the same headers) is found by another process's `chain_context`, and
/// `append` refuses to fork it.
#[tokio::test]
async fn an_event_in_kafka_but_not_in_the_index_is_found() {
    let Some(f) = fixture(3).await else { return };
    let a = f.open().await;
    let c = chain(F2);
    let p = a.partition_of(&c);
    let producer = f.raw_producer(&[]);
    let produce_raw = |event: hrx_ports::Append| {
        let producer = producer.clone();
        let topic = f.config.facility_topic.clone();
        let log = a.clone();
        async move {
            log.claim(std::slice::from_ref(&event))
                .await
                .expect("claimed, as an append does before producing");
            let value = wire::encode_value(&event.envelope);
            let key = event.chain.as_key();
            let record = FutureRecord::to(&topic)
                .partition(p as i32)
                .key(&*key)
                .payload(&value)
                .headers(wire::headers(&event));
            let d = producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("delivered");
            LogPosition {
                partition: p,
                offset: d.offset as u64,
            }
        }
    };
    let at1 = produce_raw(append(&c, 1, 1)).await;

    let b = f.open().await;
    for log in [&a, &b] {
        let ctx = log
            .chain_context(&c, event_id(1), 1)
            .await
            .expect("chain_context");
        assert_eq!(ctx.context.head.seq, 1);
        assert_eq!(
            ctx.context.same_event_id.map(|p| p.event_id),
            Some(event_id(1))
        );
        assert_eq!(ctx.prior_position, Some(at1));
    }
    match b.append(vec![append(&c, 1, 7)]).await {
        Err(PortError::Conflict(_)) => {}
        other => panic!("seq 1 is taken in Kafka: {other:?}"),
    }
    let at2 = b.append(vec![append(&c, 2, 2)]).await.expect("seq 2")[0];
    assert!(at2.offset > at1.offset);

    // Unindexed again, and this time `append` itself must catch up first.
    produce_raw(append(&c, 3, 3)).await;
    match a.append(vec![append(&c, 3, 8)]).await {
        Err(PortError::Conflict(_)) => {}
        other => panic!("seq 3 is taken in Kafka: {other:?}"),
    }
    a.append(vec![append(&c, 4, 4)]).await.expect("seq 4");
    let logged: Vec<_> = a
        .read(p, 0, 100)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.envelope)
        .collect();
    assert_eq!(
        logged,
        vec![envelope(1), envelope(2), envelope(3), envelope(4)]
    );
}

/// A patient's statement chain lives on the facility-events topic in the partition
/// Kafka's default partitioner picks for its key (`patient:<id>`): a statement produced
/// by key alone, leaving the partition to librdkafka, lands where `partition_of` says,
/// and another process's chain index catches it up from the headers (its append having
/// claimed it and crashed after producing), under the patient's chain key; `append`
/// then continues that chain there.
#[tokio::test]
async fn a_patient_chain_is_partitioned_by_its_key_and_caught_up_from_the_headers() {
    let Some(f) = fixture(5).await else { return };
    let a = f.open().await;
    let patient = testkit::patient(testkit::P1);
    let c = ChainKey::Patient(patient.clone());
    assert_eq!(c.as_key(), format!("patient:{}", testkit::P1));
    let p = a.partition_of(&c);
    assert_eq!(p, key_partition(&c.as_key(), 5));
    assert!(
        p < 5,
        "on the facility-events topic, not the registry's partition"
    );

    let producer = f.raw_producer(&[("partitioner", "murmur2_random")]);
    let first = testkit::statement(&c, 1, 1);
    a.claim(std::slice::from_ref(&first))
        .await
        .expect("claimed, as an append does before producing");
    let key = first.chain.as_key();
    let value = wire::encode_value(&first.envelope);
    let delivered = producer
        .send(
            FutureRecord::to(&f.config.facility_topic)
                .key(&*key)
                .payload(&value)
                .headers(wire::headers(&first)),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");
    assert_eq!(delivered.partition as u32, p, "librdkafka agrees");
    let at1 = LogPosition {
        partition: p,
        offset: delivered.offset as u64,
    };

    let b = f.open().await;
    let ctx = b
        .chain_context(&c, event_id(1), 1)
        .await
        .expect("chain_context");
    assert_eq!(
        ctx.context.head,
        ChainHead {
            seq: 1,
            event_hash: first.event_hash,
            event_id: Some(event_id(1)),
            recorded_at: None,
        }
    );
    assert_eq!(ctx.prior_position, Some(at1));
    let other = ChainKey::Patient(testkit::patient(testkit::P2));
    assert_eq!(
        b.chain_context(&other, event_id(1), 1)
            .await
            .expect("chain_context")
            .context
            .head,
        ChainHead::EMPTY,
        "another patient's chain is apart"
    );
    match b.append(vec![testkit::statement(&c, 1, 2)]).await {
        Err(PortError::Conflict(m)) => assert!(!m.contains(testkit::P1), "no patient id in {m}"),
        other => panic!("seq 1 is taken in Kafka: {other:?}"),
    }
    let second = b
        .append(vec![testkit::statement(&c, 2, 3)])
        .await
        .expect("seq 2")[0];
    assert_eq!(second.partition, p);
    let entries = a.read(p, 0, 10).await.expect("read");
    assert_eq!(
        entries
            .iter()
            .map(|e| e.envelope.clone())
            .collect::<Vec<_>>(),
        vec![
            testkit::consent_envelope(1, false),
            testkit::consent_envelope(3, false)
        ]
    );
}

/// A message as the previous version wrote it — the four chain headers only, its
/// timestamp the producer's clock — still reads, with that timestamp as `appended_at`
/// and no `registry_seq`, and is caught up into the index (by another process) as a
/// head without a recorded_at; the chain continues from it, and the next head has one.
/// Malformed optional headers (no hrx writer's) read as absent, and the message is
/// still indexed by its chain headers, so its seq stays taken.
#[tokio::test]
async fn a_message_without_the_receipt_headers_still_reads_and_indexes() {
    use rdkafka::message::{Header, OwnedHeaders};

    let Some(f) = fixture(3).await else { return };
    let a = f.open().await;
    let c = chain(F1);
    let p = a.partition_of(&c);
    let producer = f.raw_producer(&[]);
    let old_headers = |e: &hrx_ports::Append| {
        let (chain, seq, id, hash) = (
            e.chain.as_key(),
            e.seq.to_string(),
            e.event_id.to_string(),
            e.event_hash.to_hex(),
        );
        let mut h = OwnedHeaders::new();
        for (key, value) in [
            (wire::HEADER_CHAIN, &*chain),
            (wire::HEADER_SEQ, &seq),
            (wire::HEADER_EVENT_ID, &id),
            (wire::HEADER_EVENT_HASH, &hash),
        ] {
            h = h.insert(Header {
                key,
                value: Some(value),
            });
        }
        h
    };
    let produce = |e: hrx_ports::Append, headers: OwnedHeaders, timestamp: i64| {
        let producer = producer.clone();
        let topic = f.config.facility_topic.clone();
        let log = a.clone();
        async move {
            // Its writer claimed it (hrx has claimed every event before producing it since
            // the claims exist) and crashed after producing.
            log.claim(std::slice::from_ref(&e))
                .await
                .expect("claimed, as an append does before producing");
            let value = wire::encode_value(&e.envelope);
            let key = e.chain.as_key();
            let d = producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(p as i32)
                        .key(&*key)
                        .payload(&value)
                        .headers(headers)
                        .timestamp(timestamp),
                    Duration::from_secs(10),
                )
                .await
                .expect("delivered");
            LogPosition {
                partition: p,
                offset: d.offset as u64,
            }
        }
    };
    let old = append(&c, 1, 1);
    let stamp = hrx_domain::Timestamp::now().unix_millis() - 1234;
    let at1 = produce(old.clone(), old_headers(&old), stamp).await;

    let entry = &a.read(p, at1.offset, 1).await.expect("read")[0];
    assert_eq!(entry.envelope, old.envelope);
    assert_eq!(entry.appended_at.unix_millis(), stamp);
    assert_eq!(entry.appended_at.nanos() % 1_000_000, 0);
    assert_eq!(entry.registry_seq, None, "no hrx-registry-seq: None");

    let b = f.open().await;
    let ctx = b
        .chain_context(&c, event_id(2), 2)
        .await
        .expect("chain_context");
    assert_eq!(
        ctx.context.head,
        ChainHead {
            seq: 1,
            event_hash: old.event_hash,
            event_id: Some(event_id(1)),
            recorded_at: None,
        },
        "caught up from the old headers, without a recorded_at"
    );
    let next = append(&c, 2, 2);
    b.append(vec![next.clone()]).await.expect("seq 2");
    for log in [&a, &b] {
        let head = log
            .chain_context(&c, event_id(3), 3)
            .await
            .expect("chain_context")
            .context
            .head;
        assert_eq!((head.seq, head.recorded_at), (2, next.recorded_at));
    }

    // Malformed optional headers: read as absent; the chain headers still index it.
    let odd = append(&c, 3, 3);
    let mut headers = old_headers(&odd);
    for (key, value) in [
        (wire::HEADER_RECORDED_AT, "yesterday"),
        (wire::HEADER_REGISTRY_SEQ, "+3"),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    let at3 = produce(odd, headers, stamp + 1).await;
    let entry = &a.read(p, at3.offset, 1).await.expect("read")[0];
    assert_eq!(
        (entry.registry_seq, entry.appended_at.unix_millis()),
        (None, stamp + 1)
    );
    let c_head = a
        .chain_context(&c, event_id(4), 4)
        .await
        .expect("chain_context")
        .context
        .head;
    assert_eq!((c_head.seq, c_head.recorded_at), (3, None));
    match b.append(vec![append(&c, 3, 9)]).await {
        Err(PortError::Conflict(_)) => {}
        other => panic!("seq 3 is taken in Kafka: {other:?}"),
    }
}

/// Catching up from Kafka indexes only what extends a chain, in log order — as the
/// projector judges it: a second event at a taken seq (a fork), an event past a gap,
/// a message of another chain's partition and a message without headers stay out, even
/// though appends claimed every one of the events (and crashed after producing them).
#[tokio::test]
async fn catch_up_indexes_only_what_extends_a_chain() {
    let Some(f) = fixture(3).await else { return };
    let log = f.open().await;
    let c = chain(F1);
    let p = log.partition_of(&c);
    let producer = f.raw_producer(&[]);
    let mut offsets = Vec::new();
    let other = chain(F2);
    assert_ne!(log.partition_of(&other), p);
    let events = [
        append(&c, 1, 1),
        append(&c, 1, 2),     // fork of seq 1
        append(&c, 3, 3),     // gap
        append(&other, 1, 6), // misrouted: F2's chain lives in another partition
        append(&c, 2, 4),     // extends
    ];
    for event in &events {
        log.claim(std::slice::from_ref(event))
            .await
            .expect("claimed");
        let value = wire::encode_value(&event.envelope);
        let d = producer
            .send(
                FutureRecord::to(&f.config.facility_topic)
                    .partition(p as i32)
                    .key(&*event.chain.as_key())
                    .payload(&value)
                    .headers(wire::headers(event)),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
        offsets.push(d.offset as u64);
    }
    // Not hrx's: no headers at all.
    producer
        .send(
            FutureRecord::to(&f.config.facility_topic)
                .partition(p as i32)
                .key(F1)
                .payload("not an envelope"),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");

    let ctx = log
        .chain_context(&c, event_id(2), 1)
        .await
        .expect("context");
    assert_eq!(
        ctx.context.head,
        ChainHead {
            seq: 2,
            event_hash: envelope(4).event_hash(),
            event_id: Some(event_id(4)),
            recorded_at: Some(testkit::at(4)),
        },
        "caught up with its recorded_at, from the header"
    );
    assert_eq!(ctx.context.same_event_id, None, "the fork is not indexed");
    assert_eq!(ctx.context.same_seq.map(|p| p.event_id), Some(event_id(1)));
    let gap = log
        .chain_context(&c, event_id(3), 3)
        .await
        .expect("context");
    assert_eq!(
        (gap.context.same_event_id, gap.context.same_seq),
        (None, None)
    );
    log.append(vec![append(&c, 3, 5)])
        .await
        .expect("seq 3 is free");

    // The foreign message reads back as a malformed envelope at its position, for the
    // projector to reject with a reason.
    let entries = log.read(p, 0, 100).await.expect("read");
    assert_eq!(entries.len(), 7);
    assert_eq!(entries[5].envelope.payload_type, "");
    assert_eq!(entries[5].envelope.payload, b"not an envelope");
}

/// Whoever can produce to the topic can write any headers, but the chain index trusts
/// only what an append claimed: a message saying "facility F1, seq head + 1" that no
/// append claimed, one whose payload is not the envelope its headers and a claim name,
/// one whose headers and payload agree but whose envelope was never claimed under that
/// id, one under an id another chain claimed, and a claimed envelope under another seq
/// than its claim's are all passed over by catch-up, in every process. F1's real next event is
/// then still accepted, and the index follows it; the forgeries stay in the log for the
/// projector to judge (and reject: they are not validly signed).
#[tokio::test]
async fn a_forged_message_does_not_move_the_chain_index() {
    let Some(f) = fixture(3).await else { return };
    let a = f.open().await;
    let c = chain(F1);
    let p = a.partition_of(&c);
    a.append(vec![append(&c, 1, 1)]).await.expect("seq 1");
    let producer = f.raw_producer(&[]);
    let key = c.as_key();

    // 1. Well-formed headers, a payload that hashes to them, and no claim.
    let unclaimed = append(&c, 2, 50);
    let forged = [produce_raw(
        &f,
        &producer,
        p,
        &key,
        &wire::encode_value(&unclaimed.envelope),
        wire::headers(&unclaimed),
    )
    .await];
    // 2. The headers of an event an append claimed (and then failed before producing),
    //    over another payload.
    let claimed = append(&c, 2, 51);
    a.claim(std::slice::from_ref(&claimed))
        .await
        .expect("claimed");
    let mut forged = forged.to_vec();
    forged.push(
        produce_raw(
            &f,
            &producer,
            p,
            &key,
            &wire::encode_value(&envelope(52)),
            wire::headers(&claimed),
        )
        .await,
    );
    // 3. A claimed id, with headers that agree with the payload, but an envelope nobody
    //    claimed under that id.
    let claimed = append(&c, 2, 53);
    a.claim(std::slice::from_ref(&claimed))
        .await
        .expect("claimed");
    let other = hrx_ports::Append {
        event_hash: envelope(54).event_hash(),
        envelope: envelope(54),
        ..claimed
    };
    forged.push(
        produce_raw(
            &f,
            &producer,
            p,
            &key,
            &wire::encode_value(&other.envelope),
            wire::headers(&other),
        )
        .await,
    );
    // 4. An id another chain claimed.
    let elsewhere = append(&chain(F2), 1, 55);
    a.claim(std::slice::from_ref(&elsewhere))
        .await
        .expect("claimed");
    let stolen = hrx_ports::Append {
        chain: c.clone(),
        seq: 2,
        ..elsewhere
    };
    forged.push(
        produce_raw(
            &f,
            &producer,
            p,
            &key,
            &wire::encode_value(&stolen.envelope),
            wire::headers(&stolen),
        )
        .await,
    );

    // 5. An envelope an append claimed at another seq (and ingest then refused), replayed
    //    under headers that place it at seq 2.
    let refused = append(&c, 5, 56);
    a.claim(std::slice::from_ref(&refused))
        .await
        .expect("claimed");
    let moved = hrx_ports::Append { seq: 2, ..refused };
    forged.push(
        produce_raw(
            &f,
            &producer,
            p,
            &key,
            &wire::encode_value(&moved.envelope),
            wire::headers(&moved),
        )
        .await,
    );

    let b = f.open().await;
    for (log, n) in [(&b, 50), (&a, 51), (&b, 53), (&a, 55), (&b, 56)] {
        let ctx = log
            .chain_context(&c, event_id(n), 2)
            .await
            .expect("chain_context");
        assert_eq!(ctx.context.head.seq, 1, "event {n}: the head has not moved");
        assert_eq!(ctx.context.head.event_id, Some(event_id(1)));
        assert_eq!(
            (ctx.context.same_event_id, ctx.context.same_seq),
            (None, None),
            "event {n} is not in the chain, nor anything at seq 2"
        );
    }
    let real = append(&c, 2, 2);
    let at2 = b
        .append(vec![real.clone()])
        .await
        .expect("F1's real seq 2 is accepted")[0];
    assert!(forged.iter().all(|f| f.offset < at2.offset));
    for log in [&a, &b] {
        let ctx = log
            .chain_context(&c, event_id(3), 3)
            .await
            .expect("chain_context");
        assert_eq!(
            (ctx.context.head.seq, ctx.context.head.event_id),
            (2, Some(event_id(2)))
        );
        assert_eq!(ctx.context.head.event_hash, real.event_hash);
    }
    a.append(vec![append(&c, 3, 3)]).await.expect("seq 3");

    // Everything is in the log, in order; the projector judges the payloads.
    let entries = a.read(p, 0, 100).await.expect("read");
    assert_eq!(entries.len(), 8);
    assert_eq!(entries[2].envelope, envelope(52));
}

/// The crash window keeps working: an append that claimed its events, had them
/// acknowledged by Kafka and crashed before indexing them (here: `claim`, then a raw
/// producer writing what `append` writes) leaves them to catch-up, which indexes them in
/// another process — a batch of two, one of them under an id its chain had claimed
/// before with another envelope (an earlier attempt refused before it was produced, then
/// re-signed and retried). Their seqs are then taken, and the chain continues after them.
#[tokio::test]
async fn a_claimed_event_whose_append_crashed_after_producing_is_indexed() {
    let Some(f) = fixture(3).await else { return };
    let a = f.open().await;
    let c = chain(F1);
    let p = a.partition_of(&c);
    a.append(vec![append(&c, 1, 1)]).await.expect("seq 1");

    let earlier = hrx_ports::Append {
        event_hash: envelope(21).event_hash(),
        envelope: envelope(21),
        ..append(&c, 2, 20)
    };
    a.claim(std::slice::from_ref(&earlier))
        .await
        .expect("the earlier attempt's claim");
    let batch = vec![append(&c, 2, 20), append(&c, 3, 22)];
    a.claim(&batch).await.expect("the crashed append's claims");
    let producer = f.raw_producer(&[]);
    let mut at = Vec::new();
    for e in &batch {
        at.push(
            produce_raw(
                &f,
                &producer,
                p,
                &e.chain.as_key(),
                &wire::encode_value(&e.envelope),
                wire::headers(e),
            )
            .await,
        );
    }
    drop(a); // crashed before indexing

    let b = f.open().await;
    let ctx = b
        .chain_context(&c, event_id(20), 2)
        .await
        .expect("chain_context");
    assert_eq!(
        (ctx.context.head.seq, ctx.context.head.event_id),
        (3, Some(event_id(22)))
    );
    assert_eq!(
        ctx.context.same_event_id.map(|p| (p.seq, p.event_hash)),
        Some((2, envelope(20).event_hash()))
    );
    assert_eq!(ctx.prior_position, Some(at[0]));
    match b.append(vec![append(&c, 3, 23)]).await {
        Err(PortError::Conflict(_)) => {}
        other => panic!("seq 3 is taken in Kafka: {other:?}"),
    }
    b.append(vec![append(&c, 4, 24)]).await.expect("seq 4");
    let c2 = f.open().await;
    assert_eq!(
        c2.chain_context(&c, event_id(0), 0)
            .await
            .expect("chain_context")
            .context
            .head
            .seq,
        4
    );
}

/// A `wait_for` in one process wakes within a second of another process's append —
/// the path follow streams depend on — for a facility partition and the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_for_wakes_within_a_second_of_another_process_append() {
    let Some(f) = fixture(3).await else { return };
    let (waiter, writer) = (f.open().await, f.open().await);
    let mut latencies = Vec::new();
    for (round, c) in [chain(F1), chain(F1), ChainKey::Registry, chain(F2)]
        .into_iter()
        .enumerate()
    {
        let p = waiter.partition_of(&c);
        let end = waiter.end_offset(p).await.expect("end");
        let seq = waiter
            .chain_context(&c, event_id(0), 0)
            .await
            .expect("head")
            .context
            .head
            .seq
            + 1;
        let wait = async {
            waiter.wait_for(p, end, Duration::from_secs(30)).await;
            Instant::now()
        };
        let write = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let started = Instant::now();
            let position = writer
                .append(vec![append(&c, seq, 100 + round as u64)])
                .await
                .expect("append")[0];
            (started, Instant::now(), position)
        };
        let (woke, (started, acked, position)) = tokio::join!(wait, write);
        assert_eq!(position.partition, p);
        assert!(woke >= started, "woke before the append started");
        let woke_after = woke.duration_since(started);
        assert!(
            woke_after < Duration::from_secs(1),
            "round {round}: woke {woke_after:?} after the append started"
        );
        latencies.push((acked - started, woke_after));
    }
    eprintln!("(append took, waiter woke after the append started): {latencies:?}");

    // And the reader the waiter used serves the next read at once.
    let t = Instant::now();
    let p = waiter.partition_of(&chain(F2));
    let entries = waiter.read(p, 0, 10).await.expect("read");
    assert!(!entries.is_empty());
    eprintln!("read after wake: {:?}", t.elapsed());
}

/// Reads of one partition at two places leave at most one idle reader positioned on it,
/// the one further ahead; the other is unassigned (it would otherwise prefetch behind a
/// position no read comes back to: the projector's RSS growth in the soak). Reads at
/// either place still return exactly their messages afterwards.
#[tokio::test]
async fn one_idle_reader_stays_positioned_per_partition() {
    let Some(f) = fixture(1).await else { return };
    let log = f.open().await;
    let c = chain(F1);
    let batch: Vec<_> = (1..=30).map(|s| append(&c, s, s)).collect();
    log.append(batch).await.expect("append");
    let offsets = |entries: &[hrx_ports::LogEntry]| -> Vec<u64> {
        entries.iter().map(|e| e.position.offset).collect()
    };
    let positioned = |log: &KafkaLog| {
        let all = log.idle_reader_positions();
        (all.iter().filter(|p| p.is_some()).count(), all.len())
    };

    assert_eq!(
        offsets(&log.read(0, 0, 5).await.expect("read")),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(positioned(&log), (1, 1));
    // Another place in the same partition: a second reader, then one positioned.
    assert_eq!(
        offsets(&log.read(0, 20, 5).await.expect("read")),
        [20, 21, 22, 23, 24]
    );
    assert_eq!(
        positioned(&log),
        (1, 2),
        "{:?}",
        log.idle_reader_positions()
    );
    // The positioned one continues where it stopped; the unassigned one serves the
    // place behind (re-used before any new reader is made).
    assert_eq!(
        offsets(&log.read(0, 25, 5).await.expect("read")),
        [25, 26, 27, 28, 29]
    );
    assert_eq!(
        offsets(&log.read(0, 5, 5).await.expect("read")),
        [5, 6, 7, 8, 9]
    );
    assert_eq!(
        positioned(&log),
        (1, 2),
        "{:?}",
        log.idle_reader_positions()
    );
    // Concurrent reads at three places (a reader each, besides the positioned idle
    // one): still one positioned reader when all are idle.
    let (a, b, d) = tokio::join!(log.read(0, 10, 3), log.read(0, 0, 3), log.read(0, 27, 3));
    assert_eq!(offsets(&a.expect("read")), [10, 11, 12]);
    assert_eq!(offsets(&b.expect("read")), [0, 1, 2]);
    assert_eq!(offsets(&d.expect("read")), [27, 28, 29]);
    let (n, total) = positioned(&log);
    assert_eq!(n, 1, "{:?}", log.idle_reader_positions());
    assert!(total <= 4, "{:?}", log.idle_reader_positions());
}

/// Many chains appended concurrently through one log and through a second one: every
/// append succeeds (interleaving in a partition is not a conflict), each chain's head is
/// right in both processes, and the log holds each event once. Prints the latencies of
/// single appends, chain lookups, a 1000-event batch and reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_chains_and_timings() {
    let Some(f) = fixture(3).await else { return };
    let t = Instant::now();
    let a = f.open().await;
    let creating = t.elapsed();
    let t = Instant::now();
    let b = f.open().await;
    let checking = t.elapsed();
    eprintln!(
        "connect creating topics + migrating: {creating:?}; connect to existing: {checking:?}"
    );
    const CHAINS: u64 = 16;
    const EACH: u64 = 8;
    let started = Instant::now();
    let runs = (0..CHAINS).map(|i| {
        let log = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            let c = chain(&(27000 + i).to_string());
            let mut took = Vec::new();
            for seq in 1..=EACH {
                let t = Instant::now();
                log.append(vec![append(&c, seq, i * 100 + seq)])
                    .await
                    .unwrap_or_else(|e| panic!("chain {c} seq {seq}: {e}"));
                took.push(t.elapsed());
            }
            took
        }
    });
    let mut concurrent_appends: Vec<Duration> = futures_join_all(runs).await.concat();
    let concurrent = started.elapsed();
    for i in 0..CHAINS {
        let c = chain(&(27000 + i).to_string());
        for log in [&a, &b] {
            let head = log.chain_context(&c, event_id(0), 0).await.expect("head");
            assert_eq!(head.context.head.seq, EACH, "chain {c}");
            assert_eq!(head.context.head.event_id, Some(event_id(i * 100 + EACH)));
        }
    }
    let mut total = 0;
    for p in 0..3 {
        total += a.read(p, 0, 10_000).await.expect("read").len() as u64;
    }
    assert_eq!(total, CHAINS * EACH, "each event once");

    // Sequential single-event appends and lookups on one chain.
    let c = chain(F1);
    let mut lookups = Vec::new();
    let mut appends = Vec::new();
    for seq in 1..=100 {
        let t = Instant::now();
        let ctx = a
            .chain_context(&c, event_id(10_000 + seq), seq)
            .await
            .expect("context");
        lookups.push(t.elapsed());
        assert_eq!(ctx.context.head.seq, seq - 1);
        let t = Instant::now();
        a.append(vec![append(&c, seq, 10_000 + seq)])
            .await
            .expect("append");
        appends.push(t.elapsed());
    }
    // One ingest batch of 1000 events.
    let batch: Vec<_> = (101..=1100)
        .map(|seq| append(&c, seq, 10_000 + seq))
        .collect();
    let t = Instant::now();
    let positions = a.append(batch).await.expect("a 1000-event append");
    let big = t.elapsed();
    assert!(positions.windows(2).all(|w| w[0].offset < w[1].offset));
    // Reading it back, as the projector does, in batches of 500 (on the other process,
    // which has not seen it).
    let p = b.partition_of(&c);
    let t = Instant::now();
    let mut next = 0;
    let mut read = Vec::new();
    loop {
        let entries = b.read(p, next, 500).await.expect("read");
        let Some(last) = entries.last() else { break };
        next = last.position.offset + 1;
        read.extend(entries.into_iter().map(|e| e.envelope));
    }
    let reading = t.elapsed();
    // The partition also holds some of the concurrent chains' events.
    let mine: Vec<_> = (1..=1100).map(|seq| envelope(10_000 + seq)).collect();
    read.retain(|e| mine.contains(e));
    assert_eq!(read, mine, "the chain, in order");

    let pct = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * q) as usize]
    };
    eprintln!(
        "{} concurrent appends over {CHAINS} chains in {concurrent:?} (each p50 {:?} p99 {:?}); \
         sequential single append p50 {:?} p99 {:?}; chain_context p50 {:?} p99 {:?}; \
         1000-event append {big:?}; read 1100 entries in {reading:?}",
        CHAINS * EACH,
        pct(&mut concurrent_appends, 0.5),
        pct(&mut concurrent_appends, 0.99),
        pct(&mut appends, 0.5),
        pct(&mut appends, 0.99),
        pct(&mut lookups, 0.5),
        pct(&mut lookups, 0.99),
    );
}

/// `join_all` without a `futures` dependency: spawn each and collect in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// A produce Kafka refuses, or never acknowledges in time, is `Unavailable`: nothing is
/// acknowledged, nothing indexed, and the same append goes through once Kafka is back.
/// Uses librdkafka's mock cluster to inject broker errors (and the real PostgreSQL).
#[tokio::test]
async fn a_failed_produce_is_unavailable_and_indexes_nothing() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let Some(f) = fixture(3).await else { return };
    let mock = MockCluster::new(1).expect("a mock cluster");
    mock.create_topic(&f.config.facility_topic, 3, 1)
        .expect("topic");
    mock.create_topic(&f.config.registry_topic, 1, 1)
        .expect("topic");
    let mut config = f.config.clone();
    config.brokers = mock.bootstrap_servers();
    // librdkafka's mock cluster speaks plaintext only (the real one may be TLS).
    config.tls = None;
    config.produce_timeout = Duration::from_secs(3);
    // The mock does not answer DescribeConfigs: connect waits for it until its
    // deadline, then goes on with a warning.
    config.connect_timeout = Duration::from_secs(2);
    let t = Instant::now();
    let log = KafkaLog::connect(config, &f.database_url)
        .await
        .expect("connect to the mock cluster");
    eprintln!("connected to the mock cluster in {:?}", t.elapsed());
    let c = chain(F1);
    log.append(vec![append(&c, 1, 1)]).await.expect("seq 1");

    // A permanent refusal.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    match log.append(vec![append(&c, 2, 2), append(&c, 3, 3)]).await {
        Err(PortError::Unavailable(m)) => eprintln!("refused: {m}"),
        other => panic!("a refused produce must be Unavailable, got {other:?}"),
    }
    // Retriable errors until the produce timeout.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100],
    );
    let t = Instant::now();
    match log.append(vec![append(&c, 2, 2), append(&c, 3, 3)]).await {
        Err(PortError::Unavailable(m)) => eprintln!("timed out after {:?}: {m}", t.elapsed()),
        other => panic!("an unacknowledged produce must be Unavailable, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    mock.clear_request_errors(RDKafkaApiKey::Produce);

    let ctx = log
        .chain_context(&c, event_id(2), 2)
        .await
        .expect("context");
    assert_eq!(
        ctx.context.head.seq, 1,
        "nothing of the failed appends is indexed"
    );
    assert_eq!(ctx.context.same_event_id, None);
    log.append(vec![append(&c, 2, 2), append(&c, 3, 3)])
        .await
        .expect("the same append, with Kafka back");
    let logged: Vec<_> = log
        .read(log.partition_of(&c), 0, 100)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.envelope)
        .collect();
    assert_eq!(logged, vec![envelope(1), envelope(2), envelope(3)]);
}
