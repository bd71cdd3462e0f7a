//! The machine's limits for the same work, each without hrx:
//!
//! - ring Ed25519 verification of the very PAE bytes the node will verify, on one core
//!   and on all of them ([`verify_rate`]);
//! - raw rdkafka: the messages hrx's Kafka log writes for the run's envelopes (same
//!   value encoding, key, headers and partition, [`log_messages`]), produced with hrx's
//!   producer guarantees into a fresh topic and consumed back ([`kafka_produce_consume`]);
//! - raw PostgreSQL: the rows the projector writes for those events (`records` and
//!   `record_envelopes`, [`record_rows`]) by binary COPY into fresh tables shaped like
//!   hrx's ([`postgres_copy`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrx_domain::event::{Body, FacilityHeader, Record};
use hrx_domain::{Envelope, PublicKey, Sha256};
use hrx_kafka::KafkaTls;
use hrx_ports::{Append, ChainKey};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use ring::signature::{ED25519, UnparsedPublicKey};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use crate::bench::{BenchError, Streams, phase};

/// One signed message, as the verifier sees it.
#[derive(Clone, Debug)]
pub struct VerifyItem {
    pub public_key: [u8; 32],
    pub pae: Vec<u8>,
    pub signature: Vec<u8>,
}

impl VerifyItem {
    pub fn new(key: &PublicKey, envelope: &Envelope) -> Self {
        Self {
            public_key: *key.as_bytes(),
            pae: envelope.pae(),
            signature: envelope.signature.clone(),
        }
    }
}

/// Verifies `items` round-robin for at least `duration` on one thread; returns
/// verifications per second. Panics if a signature does not verify (the harness
/// signed them: that would be a bug, and the figure would be meaningless).
fn verify_loop(items: &[VerifyItem], duration: Duration) -> (u64, Duration) {
    let started = Instant::now();
    let mut n = 0u64;
    'outer: loop {
        for item in items {
            UnparsedPublicKey::new(&ED25519, &item.public_key)
                .verify(&item.pae, &item.signature)
                .expect("the harness's own signatures verify");
            n += 1;
            if n.is_multiple_of(64) && started.elapsed() >= duration {
                break 'outer;
            }
        }
        if items.is_empty() {
            break;
        }
    }
    (n, started.elapsed())
}

/// Verifications per second on `threads` threads, each verifying for `duration`.
pub fn verify_rate(items: Arc<Vec<VerifyItem>>, threads: usize, duration: Duration) -> f64 {
    let threads = threads.max(1);
    let started = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let items = items.clone();
                s.spawn(move || {
                    // Each thread starts at a different place in the stream.
                    let offset = if items.is_empty() {
                        0
                    } else {
                        t * items.len() / threads
                    };
                    let rotated: Vec<VerifyItem> = items[offset..]
                        .iter()
                        .chain(&items[..offset])
                        .cloned()
                        .collect();
                    verify_loop(&rotated, duration).0
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a verify thread panicked"))
            .sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

/// A facility event of the run as the projector understands it: decoded and parsed
/// with the same domain parsers (off any measured path).
#[derive(Debug)]
pub struct Event<'a> {
    pub envelope: &'a Envelope,
    pub header: FacilityHeader,
    /// The record, for record events (every event of the population is one).
    pub record: Option<Record>,
    pub hash: Sha256,
}

/// Decodes and parses every envelope of `streams`, in stream order.
pub fn decode(streams: &Streams) -> Result<Vec<Event<'_>>, BenchError> {
    let mut out = Vec::with_capacity(streams.iter().map(|(_, e)| e.len()).sum());
    for (_, envelopes) in streams {
        for envelope in envelopes {
            let unchecked = hrx_proto::codec::decode_facility_event(&envelope.payload)
                .map_err(|e| phase(format!("a pre-signed payload does not decode: {e}")))?;
            let bad = |r: hrx_domain::Rejection| {
                phase(format!(
                    "a pre-signed event does not parse: {}",
                    r.message()
                ))
            };
            let header = FacilityHeader::parse(
                unchecked
                    .header
                    .as_ref()
                    .ok_or_else(|| phase("a pre-signed event has no header"))?,
            )
            .map_err(bad)?;
            let body = unchecked
                .body
                .as_ref()
                .ok_or_else(|| phase("a pre-signed event has no body"))?;
            let record = match hrx_domain::content::check_body(&header, body).map_err(bad)? {
                Body::Record(r) => Some(r),
                _ => None,
            };
            out.push(Event {
                envelope,
                header,
                record,
                hash: envelope.event_hash(),
            });
        }
    }
    Ok(out)
}

/// One message as hrx's Kafka log writes it (`KafkaLog::append`).
#[derive(Debug)]
pub struct LogMessage {
    /// Kafka's partition: murmur2 of the key modulo the partition count.
    pub partition: i32,
    /// The facility id.
    pub key: String,
    /// The envelope in hrx's value format (`hrx_kafka::wire::encode_value`).
    pub value: Vec<u8>,
    /// The chain headers (`hrx_kafka::wire::headers`).
    pub headers: OwnedHeaders,
}

/// The messages hrx's ingest writes for `events` into a facility-events topic of
/// `partitions` partitions.
pub fn log_messages(events: &[Event<'_>], partitions: u32) -> Vec<LogMessage> {
    events
        .iter()
        .map(|e| {
            let facility = e.header.facility_id.clone();
            let key = facility.as_str().to_owned();
            let append = Append {
                chain: ChainKey::Facility(facility),
                seq: e.header.link.seq,
                event_id: e.header.link.event_id,
                event_hash: e.hash,
                envelope: e.envelope.clone(),
                received_at: hrx_domain::Timestamp::now().truncated_to_millis(),
                registry_seq: Some(0),
                recorded_at: Some(e.header.link.recorded_at),
            };
            LogMessage {
                partition: hrx_kafka::key_partition(&key, partitions) as i32,
                value: hrx_kafka::wire::encode_value(&append.envelope),
                headers: hrx_kafka::wire::headers(&append),
                key,
            }
        })
        .collect()
}

/// What [`kafka_produce_consume`] measured.
#[derive(Clone, Debug)]
pub struct KafkaLimit {
    /// Messages consumed (all of them).
    pub messages: usize,
    /// Messages produced on the clock (all but the first, the warm-up).
    pub produced: usize,
    pub bytes: usize,
    /// From the second send to the last acknowledgement.
    pub produce: Duration,
    /// From the assignment to the last message received.
    pub consume: Duration,
}

impl KafkaLimit {
    pub fn produce_rate(&self) -> f64 {
        self.produced as f64 / self.produce.as_secs_f64()
    }

    pub fn consume_rate(&self) -> f64 {
        self.messages as f64 / self.consume.as_secs_f64()
    }

    /// Messages per second through produce then consume: one over the time a message
    /// costs in the two together, `1 / (1/produce_rate + 1/consume_rate)`.
    pub fn rate(&self) -> f64 {
        1.0 / (1.0 / self.produce_rate() + 1.0 / self.consume_rate())
    }
}

/// Settings every client of the limit shares (as hrx's do).
fn kafka_base(brokers: &str, tls: Option<&KafkaTls>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("broker.address.family", "v4")
        .set("allow.auto.create.topics", "false");
    for (k, v) in tls.iter().flat_map(|t| t.properties()) {
        c.set(k, v);
    }
    c
}

/// Creates `topic` with `partitions` partitions and waits until each has a leader.
pub async fn create_topic(
    brokers: &str,
    tls: Option<&KafkaTls>,
    topic: &str,
    partitions: u32,
) -> Result<(), BenchError> {
    let admin: AdminClient<DefaultClientContext> = kafka_base(brokers, tls)
        .create()
        .map_err(|e| BenchError::kafka("admin client", e))?;
    let n = i32::try_from(partitions).map_err(|_| phase("too many partitions"))?;
    // -1: the broker's default replication factor, as hrx creates its topics.
    let new = NewTopic::new(topic, n, TopicReplication::Fixed(-1));
    let timeout = Duration::from_secs(30);
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    for result in admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| BenchError::kafka("create topic", e))?
    {
        result.map_err(|(_, code)| BenchError::kafka("create topic", code))?;
    }
    let deadline = Instant::now() + timeout;
    let probe = kafka_base(brokers, tls)
        .create::<FutureProducer>()
        .map_err(|e| BenchError::kafka("metadata client", e))?;
    loop {
        let meta = {
            let topic = topic.to_owned();
            let probe = probe.clone();
            // librdkafka blocks until the answer: not on the runtime.
            tokio::task::spawn_blocking(move || {
                probe
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))
                    .map(|m| {
                        m.topics().first().map(|t| {
                            (
                                t.partitions().len(),
                                t.partitions()
                                    .iter()
                                    .all(|p| p.leader() >= 0 && p.error().is_none()),
                            )
                        })
                    })
            })
            .await
            .map_err(|e| phase(format!("metadata task: {e}")))?
        };
        if let Ok(Some((count, true))) = meta
            && count == partitions as usize
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(phase(format!(
                "topic {topic} has no leader for every partition after 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes `topics`, best effort (a throwaway cluster is the usual target).
pub async fn delete_topics(
    brokers: &str,
    tls: Option<&KafkaTls>,
    topics: &[String],
) -> Result<(), BenchError> {
    let admin: AdminClient<DefaultClientContext> = kafka_base(brokers, tls)
        .create()
        .map_err(|e| BenchError::kafka("admin client", e))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin
        .delete_topics(&names, &options)
        .await
        .map_err(|e| BenchError::kafka("delete topics", e))?
    {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => {
                return Err(BenchError::kafka(format!("delete topic {name}"), code));
            }
        }
    }
    Ok(())
}

/// Produces every message to `topic` (an existing, empty topic) with hrx's producer
/// guarantees — idempotent, `acks=all`, lz4, `linger.ms=2`, the partition given — and
/// waits for every acknowledgement; then reads them all back with a plain consumer
/// assigned to every partition from the beginning (`read_committed`, as hrx reads).
pub async fn kafka_produce_consume(
    brokers: &str,
    tls: Option<&KafkaTls>,
    topic: &str,
    partitions: u32,
    messages: &[LogMessage],
) -> Result<KafkaLimit, BenchError> {
    let producer: FutureProducer = {
        let mut c = kafka_base(brokers, tls);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("enable.gapless.guarantee", "true")
            .set("message.timeout.ms", "60000")
            .set("linger.ms", "2")
            .set("compression.type", "lz4");
        c.create().map_err(|e| BenchError::kafka("producer", e))?
    };
    let bytes: usize = messages.iter().map(|m| m.value.len()).sum();
    let Some((first, rest)) = messages.split_first() else {
        return Err(phase("no messages to produce"));
    };
    // The first message goes before the clock: it waits for the connection and the
    // idempotent producer id, which a long-lived producer (hrx's) has long had.
    produce_all(&producer, topic, std::slice::from_ref(first)).await?;
    let started = Instant::now();
    produce_all(&producer, topic, rest).await?;
    let produce = started.elapsed();
    // Dropping a producer flushes and joins its thread: not on the runtime.
    tokio::task::spawn_blocking(move || drop(producer))
        .await
        .map_err(|e| phase(format!("producer drop: {e}")))?;

    let consumer: BaseConsumer = kafka_base(brokers, tls)
        .set("group.id", format!("{topic}.limit"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| BenchError::kafka("consumer", e))?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|e| BenchError::kafka("assignment", e))?;
    }
    let want = messages.len();
    let topic_name = topic.to_owned();
    // A blocking poll loop on a thread of its own: the raw consumer, no runtime between.
    let consume = tokio::task::spawn_blocking(move || -> Result<Duration, BenchError> {
        // Connected before the clock, as hrx's long-lived readers are.
        consumer
            .fetch_metadata(Some(&topic_name), Duration::from_secs(10))
            .map_err(|e| BenchError::kafka("consumer metadata", e))?;
        let started = Instant::now();
        consumer
            .assign(&assignment)
            .map_err(|e| BenchError::kafka("assign", e))?;
        let deadline = started + Duration::from_secs(120);
        let mut got = 0usize;
        while got < want {
            if Instant::now() > deadline {
                return Err(phase(format!(
                    "consumed {got} of {want} messages of {topic_name} in 120 s"
                )));
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.payload().is_some() => got += 1,
                Some(Ok(_)) | None => {}
                Some(Err(e)) => return Err(BenchError::kafka("consume", e)),
            }
        }
        Ok(started.elapsed())
    })
    .await
    .map_err(|e| phase(format!("consumer task: {e}")))??;
    Ok(KafkaLimit {
        messages: want,
        produced: rest.len(),
        bytes,
        produce,
        consume,
    })
}

/// Sends `messages` in order and awaits every acknowledgement.
async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    messages: &[LogMessage],
) -> Result<(), BenchError> {
    let mut pending = Vec::with_capacity(messages.len());
    for m in messages {
        let mut record = FutureRecord::to(topic)
            .partition(m.partition)
            .key(&m.key)
            .payload(&m.value)
            .headers(m.headers.clone());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                // librdkafka's queue is full: let it drain a little, then send again.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(BenchError::kafka("produce", e)),
            }
        }
    }
    for delivery in pending {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(BenchError::kafka("delivery", e)),
            Err(_) => return Err(phase("the limit's producer closed before delivery")),
        }
    }
    Ok(())
}

/// The columns of one record as the projector inserts them into `records` and
/// `record_envelopes` (conventions of hrx-postgres's schema: timestamps as seconds +
/// nanoseconds, ids and hashes as bytes, enums as codes).
#[derive(Debug)]
pub struct RecordRow<'a> {
    event_id: Vec<u8>,
    facility_id: &'a str,
    seq: i64,
    patient_id: &'a str,
    kind: i32,
    occurred_s: i64,
    occurred_ns: i32,
    recorded_s: i64,
    recorded_ns: i32,
    author: &'a str,
    sensitivity: Vec<i32>,
    supersedes: Option<Vec<u8>>,
    event_hash: &'a [u8],
    log_partition: i64,
    log_offset: i64,
    patient_seq: i64,
    body: &'a [u8],
    payload_type: &'a str,
    key_id: &'a str,
    signature: &'a [u8],
    payload: &'a [u8],
}

/// The rows of the records among `events`, with the log positions they get in a fresh
/// facility-events topic of `partitions` partitions (in stream order) and per-patient
/// sequence numbers handed out in that order, as the projector assigns them.
pub fn record_rows<'a>(events: &'a [Event<'a>], partitions: u32) -> Vec<RecordRow<'a>> {
    let mut offsets: HashMap<u32, i64> = HashMap::new();
    let mut patient_seqs: HashMap<&str, i64> = HashMap::new();
    events
        .iter()
        .filter_map(|e| {
            let facility = e.header.facility_id.as_str();
            let partition = hrx_kafka::key_partition(facility, partitions);
            let offset = offsets.entry(partition).or_insert(0);
            let log_offset = *offset;
            *offset += 1;
            let r = e.record.as_ref()?;
            let patient_seq = patient_seqs.entry(r.patient_id.as_str()).or_insert(0);
            *patient_seq += 1;
            Some(RecordRow {
                event_id: e.header.link.event_id.to_bytes().to_vec(),
                facility_id: facility,
                seq: e.header.link.seq as i64,
                patient_id: r.patient_id.as_str(),
                kind: r.kind.code(),
                occurred_s: r.occurred_at.seconds(),
                occurred_ns: r.occurred_at.nanos(),
                recorded_s: e.header.link.recorded_at.seconds(),
                recorded_ns: e.header.link.recorded_at.nanos(),
                author: &r.author,
                sensitivity: r.sensitivity.iter().map(|l| l.code()).collect(),
                supersedes: r.supersedes.map(|s| s.to_bytes().to_vec()),
                event_hash: e.hash.as_bytes(),
                log_partition: i64::from(partition),
                log_offset,
                patient_seq: *patient_seq,
                body: &r.body,
                payload_type: &e.envelope.payload_type,
                key_id: &e.envelope.key_id,
                signature: &e.envelope.signature,
                payload: &e.envelope.payload,
            })
        })
        .collect()
}

/// One connection to `url`, TLS as the URL says (see `hrx_identity::backend`).
pub(crate) async fn connect_postgres(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<
            tokio_postgres::Socket,
            hrx_identity::backend::PostgresTlsStream,
        >,
    ),
    BenchError,
> {
    use hrx_identity::backend::PostgresConnectError;
    hrx_identity::backend::connect_postgres(url)
        .await
        .map_err(|e| match e {
            PostgresConnectError::Connect(e) => BenchError::postgres("connect", &e),
            PostgresConnectError::Url(e) => BenchError::Process(format!("database URL: {e}")),
        })
}

/// The schema the COPY limit's tables live in (dropped afterwards).
const LIMIT_SCHEMA: &str = "hrx_bench_limit";

/// Writes `rows` into fresh copies of hrx's `records` and `record_envelopes` (created
/// `LIKE … INCLUDING ALL`, so with the same keys and indexes) by one binary COPY each,
/// in one transaction; returns the time from `BEGIN` to `COMMIT`. `url` is a database
/// hrx's schema has been migrated into.
pub async fn postgres_copy(url: &str, rows: &[RecordRow<'_>]) -> Result<Duration, BenchError> {
    let (mut client, conn) = connect_postgres(url).await?;
    let conn = tokio::spawn(conn);
    let pg = |what: &'static str| move |e: tokio_postgres::Error| BenchError::postgres(what, &e);
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {LIMIT_SCHEMA} CASCADE;
             CREATE SCHEMA {LIMIT_SCHEMA};
             CREATE TABLE {LIMIT_SCHEMA}.records (LIKE records INCLUDING ALL);
             CREATE TABLE {LIMIT_SCHEMA}.record_envelopes (LIKE record_envelopes INCLUDING ALL);"
        ))
        .await
        .map_err(pg("create the limit's tables"))?;

    let started = Instant::now();
    let tx = client.transaction().await.map_err(pg("begin"))?;
    let sink = tx
        .copy_in(&format!(
            "COPY {LIMIT_SCHEMA}.records (event_id, facility_id, seq, patient_id, kind, \
             occurred_s, occurred_ns, recorded_s, recorded_ns, author, sensitivity, \
             supersedes, event_hash, log_partition, log_offset, patient_seq, body) \
             FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(pg("COPY records"))?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::BYTEA,
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::INT4,
            Type::INT8,
            Type::INT4,
            Type::INT8,
            Type::INT4,
            Type::TEXT,
            Type::INT4_ARRAY,
            Type::BYTEA,
            Type::BYTEA,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::BYTEA,
        ],
    );
    let mut writer = std::pin::pin!(writer);
    for r in rows {
        let values: [&(dyn ToSql + Sync); 17] = [
            &r.event_id,
            &r.facility_id,
            &r.seq,
            &r.patient_id,
            &r.kind,
            &r.occurred_s,
            &r.occurred_ns,
            &r.recorded_s,
            &r.recorded_ns,
            &r.author,
            &r.sensitivity,
            &r.supersedes,
            &r.event_hash,
            &r.log_partition,
            &r.log_offset,
            &r.patient_seq,
            &r.body,
        ];
        writer
            .as_mut()
            .write(&values)
            .await
            .map_err(pg("COPY records"))?;
    }
    writer.finish().await.map_err(pg("COPY records"))?;
    let sink = tx
        .copy_in(&format!(
            "COPY {LIMIT_SCHEMA}.record_envelopes (event_id, payload_type, key_id, signature, \
             payload) FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(pg("COPY record_envelopes"))?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::BYTEA,
            Type::TEXT,
            Type::TEXT,
            Type::BYTEA,
            Type::BYTEA,
        ],
    );
    let mut writer = std::pin::pin!(writer);
    for r in rows {
        let values: [&(dyn ToSql + Sync); 5] = [
            &r.event_id,
            &r.payload_type,
            &r.key_id,
            &r.signature,
            &r.payload,
        ];
        writer
            .as_mut()
            .write(&values)
            .await
            .map_err(pg("COPY record_envelopes"))?;
    }
    writer.finish().await.map_err(pg("COPY record_envelopes"))?;
    tx.commit().await.map_err(pg("commit"))?;
    let elapsed = started.elapsed();

    client
        .batch_execute(&format!("DROP SCHEMA {LIMIT_SCHEMA} CASCADE"))
        .await
        .map_err(pg("drop the limit's tables"))?;
    // Write the limit's WAL out now rather than during hrx's run that follows.
    // Needs superuser (or pg_checkpoint): without it, the run just goes on.
    let _ = client.batch_execute("CHECKPOINT").await;
    drop(client);
    let _ = conn.await;
    Ok(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrx_domain::SigningKey;
    use hrx_domain::dsse::PayloadType;

    #[test]
    fn verifies_real_signatures() {
        let key = SigningKey::from_seed(&[5; 32]).unwrap();
        let items: Vec<_> = (0..10u8)
            .map(|i| {
                let e = key.sign(PayloadType::FacilityEvent, vec![i; 700]);
                VerifyItem::new(&key.public_key(), &e)
            })
            .collect();
        let rate = verify_rate(Arc::new(items), 2, Duration::from_millis(50));
        assert!(rate > 0.0);
    }

    #[test]
    fn messages_and_rows_are_what_hrx_writes() {
        use std::collections::BTreeMap;

        use rdkafka::message::Headers;

        use crate::loadgen::{ChainSigner, Population, PopulationSpec};

        let pop = Population::from_spec(PopulationSpec {
            seed: 4,
            facilities: 3,
            patients: 12,
            chronic_patients: 1,
            chronic_records: 10,
            records_per_patient: 2,
        });
        let mut signers: BTreeMap<_, _> = pop
            .facilities()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let key = SigningKey::from_seed(&[i as u8 + 9; 32]).unwrap();
                (f.id.clone(), ChainSigner::new(f.id.clone(), key))
            })
            .collect();
        let streams = pop
            .presign(&mut signers, hrx_domain::Timestamp::now(), 1)
            .unwrap();
        let events = decode(&streams).unwrap();
        assert_eq!(events.len(), pop.total_records());

        let messages = log_messages(&events, 5);
        for (m, e) in messages.iter().zip(&events) {
            assert_eq!(m.key, e.header.facility_id.as_str());
            assert_eq!(
                m.partition as u32,
                hrx_kafka::key_partition(&m.key, 5),
                "the partition hrx's log puts the facility in"
            );
            assert_eq!(
                &hrx_kafka::wire::decode_value(&m.value).unwrap(),
                e.envelope
            );
            let info =
                hrx_kafka::wire::chain_info(m.headers.iter().map(|h| (h.key, h.value))).unwrap();
            assert_eq!(
                (info.seq, info.event_id, info.event_hash),
                (e.header.link.seq, e.header.link.event_id, e.hash)
            );
        }

        let rows = record_rows(&events, 5);
        assert_eq!(rows.len(), events.len());
        // Per patient, seqs 1, 2, 3…; per partition, offsets 0, 1, 2…
        let mut seqs: HashMap<&str, i64> = HashMap::new();
        let mut offsets: HashMap<i64, i64> = HashMap::new();
        for r in &rows {
            let s = seqs.entry(r.patient_id).or_insert(0);
            *s += 1;
            assert_eq!(r.patient_seq, *s);
            let o = offsets.entry(r.log_partition).or_insert(0);
            assert_eq!(r.log_offset, *o);
            *o += 1;
        }
    }
}
