//! The Kafka event log of hrx: [`KafkaLog`] implements [`hrx_ports::EventLog`] on two
//! Kafka topics, with ingest's chain index in PostgreSQL.
//!
//! # Topics and partitions
//!
//! - `hrx.facility-events.v1` (N partitions, default 12): facility events, message key =
//!   facility id. The partition is chosen here, deterministically, exactly as Kafka's
//!   default partitioner (Java client, librdkafka `murmur2_random`) would:
//!   `toPositive(murmur2(key)) % N` ([`key_partition`]), so a facility's whole chain is
//!   in one partition, in order, and tools that produce by key agree. A patient's
//!   statement chain shares the topic, keyed and partitioned the same way by its key
//!   `patient:<id>`.
//! - `hrx.registry.v1` (exactly one partition): the national center's registry chain.
//!
//! The trait sees partitions `0..=N`: `0..N` are the facility-events partitions with
//! their own numbers, `N` is the registry topic's partition 0; `partitions()` is `N + 1`.
//! Topic names are configurable ([`KafkaConfig`]); [`KafkaLog::connect`] creates missing
//! topics (infinite retention) and refuses existing ones with another partition count.
//! The message format (key, value, headers, timestamp) is in [`wire`].
//!
//! # Producing
//!
//! One idempotent producer (`enable.idempotence`, `acks=all`, and librdkafka's
//! `enable.gapless.guarantee`, so that a failure inside a batch leaves at most a prefix
//! of it in a partition, not a hole — librdkafka exempts message timeouts, and the
//! index copes with a hole anyway, see below). `append` enqueues the batch in order and returns
//! only after Kafka acknowledged every message; positions come from the delivery
//! reports. Any failed delivery is `PortError::Unavailable` (ingest answers a retryable
//! UNAVAILABLE): nothing is ever answered "accepted" that Kafka did not acknowledge.
//!
//! # Reading
//!
//! Consumers with manual `assign` at an offset, no group membership, no committed
//! offsets (`reader`). `read` stops at the high watermark it saw first (under
//! `read_committed`, the last stable offset); `wait_for` long-polls a consumer
//! positioned at the offset, and is also woken at once by this process's own appends.
//!
//! # The chain index and why no chain forks
//!
//! Ingest judges an event against `chain_context` (head, and the events already at its
//! id and seq) before appending it. Kafka cannot answer that, so the index lives in
//! PostgreSQL (`index`): a row per event that entered its chain, and per partition
//! `next_offset`, the offset below which the partition has been indexed. Every message
//! carries its chain, seq, event id and event hash in headers, so any process can
//! rebuild the index from Kafka without decoding payloads (only `hrx-proto` may).
//!
//! **What the index trusts.** Headers are whatever the producer wrote, and anyone able
//! to produce to the topic could write "chain F, seq head + 1" over any payload. So a
//! message enters the index only if (a) an append *claimed* it in PostgreSQL before
//! producing it: `log_event_ids` holds its event id for its chain and
//! `log_event_hashes` its event hash and seq (ids claimed by an hrx before hashes were
//! recorded have none, and are bound by the id alone), and (b) its value decodes to an envelope
//! whose event hash ([`hrx_domain::Envelope::event_hash`]) is the one in its headers.
//! Every append claims its events, committed, before it produces (step 0 below), and
//! every hrx write goes through `append` (facility events, reports, patient
//! statements, the registry alike), so nothing hrx wrote is left out; catch-up never
//! claims anything itself. A message failing either check is skipped with a warning
//! (position and event id only), and never takes a seq from a real event: the
//! facility's next real append is accepted over it.
//!
//! **Catch-up.** Before `chain_context` answers for a chain, and inside every `append`,
//! every message of the chain below the partition's high watermark is made to be in the
//! index. If `next_offset` is below the watermark, the offsets appends indexed
//! themselves are skipped; the few left are usually other chains' messages whose
//! appends are still committing their rows, which one Kafka read shows (no write, no
//! lock). Only when one of them belongs to the chain, has stayed unindexed for seconds
//! (a crashed writer's), or the backlog is large does a full scan run: it reads the
//! partition from `next_offset` and indexes each message that is claimed and whose
//! hash is its payload's (above) *iff it extends its chain* (seq = head + 1, event id
//! new) — the rule the projector applies in the same log order, so the index and the
//! projections agree about which event holds a seq even if the log holds a stray write
//! of an append. Scans of one partition are serialised by an advisory lock and commit
//! per chunk.
//!
//! **Append**: 0. claim the batch's event ids for their chains, with their event
//! hashes, each statement committed at once (`Conflict` if another chain holds an id);
//! then, for each chain of the batch, in a fixed order:
//! 1. `BEGIN`; `pg_advisory_xact_lock` on the chain (ingest's per-chain lock serialises
//!    a process's own submissions; this one serialises processes);
//! 2. read the partition's high watermark `H` and catch the chain's index up to it;
//! 3. refuse with `Conflict` unless the batch continues the indexed head (seq = head +
//!    1, consecutive, ids new);
//! 4. produce, await every acknowledgement;
//! 5. check that nothing of these chains that catch-up would index (claimed, hash
//!    matching) landed between `H` and our offsets (a delayed write from an append that
//!    had already failed: a "zombie"); if something did, fail with `Unavailable`, index
//!    nothing, and let the retry see the log as it is;
//! 6. insert the index rows, advance `next_offset` if our messages directly follow it;
//!    `COMMIT`, which releases the chain lock.
//!
//! Every write to a chain is made under its lock, and with `acks=all` every
//! acknowledged message is below the high watermark a later lock holder reads in step 2.
//! So step 3 sees every event of the chain that Kafka acknowledged before, including
//! those of processes that crashed before indexing them; step 5 covers writes that were
//! not acknowledged in time but land anyway. An append is thus acknowledged only when each
//! of its events is, in log order, the first at its (chain, seq): the chain never forks.
//!
//! **Crash windows.**
//! - Before or during produce (steps 1–4), or a failed produce: the transaction dies
//!   with the session (or is rolled back), releasing the lock; nothing, or a prefix of
//!   the batch, is in Kafka; the client got no "accepted". Its retry catches up: the
//!   prefix reads as duplicates, the rest extends the chain. (Were there a hole — a
//!   later message of the batch written after an earlier one timed out — the message
//!   after it does not extend its chain: neither the index nor the projector takes it,
//!   and the retry writes it again after the missing one.)
//! - After Kafka acknowledged, before the commit of step 6: the events are durable in
//!   Kafka but not indexed. The next `chain_context` or `append` on that partition (in
//!   any process) finds `next_offset` below the watermark and indexes them from their
//!   headers — they were claimed in step 0, before they were produced; the retry is a
//!   duplicate, and a different event at that seq is a fork.
//!   If the index insert itself fails, `append` still returns the positions (the events
//!   *are* in the log) and leaves the repair to catch-up.
//! - After the commit, before ingest answers: an ordinary duplicate on retry.
//! - A process that hangs with the lock: `lock_timeout` makes waiters fail retryably, and
//!   `idle_in_transaction_session_timeout` ends a dead client's session (and lock).
//!
//! **Limits.** A message not written by this crate's `append` — hrx headers missing or
//! malformed, not claimed, or an event hash that is not its payload's — is skipped by
//! catch-up, while the projector still judges its payload (and rejects it unless it is
//! validly signed). So the index and the projections can disagree about a seq only if
//! someone both holds a chain's signing key and can produce to the topic, bypassing
//! ingest: their event would hold the seq for the projector but not for the index.
//! Keep produce rights on the topics to hrx. The headers' chain, seq and event id are
//! checked against the claim and the payload's hash, not against the payload's own
//! fields, which only `hrx-proto` decodes: ingest derived the claimed ones from the
//! payload, and the projector re-derives them. Claims with no hash (written by an hrx
//! of schema version 3, before hashes were recorded) bind the id alone, so an
//! unindexed message under such an id is taken if its hash header is its payload's.
//! Messages an hrx from before claims existed (before version 3) wrote and never
//! indexed are no longer taken (nor claimed) by catch-up: upgrade through a version
//! with claims, or let it index its partitions first. `append` is atomic when it
//! succeeds; when it fails, a prefix
//! of the batch may be in the log (Kafka transactions would hide it from readers, at
//! the price of a transaction per append) — the trait's "all or nothing" is kept in
//! effect by the index, which reads that prefix as duplicates on retry.

mod config;
mod error;
mod group;
mod index;
mod partition;
mod reader;
mod topics;
pub mod wire;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use hrx_domain::EventId;
use hrx_ports::{
    Append, ChainKey, EventLog, LogChainContext, LogEntry, LogPosition, PortError, PortResult,
};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;

pub use config::{
    DEFAULT_PARTITIONS, FACILITY_EVENTS_TOPIC, KafkaConfig, KafkaTls, REGISTRY_TOPIC, SaslPassword,
};
pub use error::KafkaError;
pub use partition::{key_partition, murmur2};

use error::{join, kafka, pg};
use index::{Index, IndexRow};
use partition::{Layout, Location};
use reader::{RawMessage, Readers, Waited};
use wire::ChainInfo;

/// Messages per read while catching up or checking an append's window.
const SCAN_CHUNK: usize = 500;
/// Index rows per query when skipping offsets appends indexed themselves.
const WALK_CHUNK: i64 = 10_000;
/// A message this long unindexed is taken for an orphan (its writer crashed between the
/// acknowledgement and its index commit, which normally takes milliseconds), and the
/// partition is caught up. Generous, since timestamps are the receive times ingest
/// chose on its own clock, a little before it appended (a message that only looks old
/// costs one catch-up, never a wrong answer).
const ORPHAN_AFTER_MS: i64 = 5_000;

/// The Kafka event log. Cheap to clone; clones share clients and pools.
#[derive(Clone)]
pub struct KafkaLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.inner.config.brokers)
            .field("facility_topic", &self.inner.layout.facility_topic)
            .field("registry_topic", &self.inner.layout.registry_topic)
            .field("partitions", &self.inner.layout.partitions())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: KafkaConfig,
    layout: Layout,
    producer_config: ClientConfig,
    /// The producer and its generation: after a fatal error (idempotence state lost,
    /// gapless guarantee tripped) a producer is useless and is replaced, once.
    producer: RwLock<(u64, FutureProducer)>,
    readers: Arc<Readers>,
    index: Index,
    /// One catch-up per partition at a time in this process (others wait, then find it
    /// done); the advisory scan lock does the same across processes.
    scan_locks: Vec<tokio::sync::Mutex<()>>,
    /// Per partition, the highest end offset this process knows of (its own appends,
    /// watermark queries, messages seen): wakes `wait_for` without asking Kafka.
    ends: Vec<watch::Sender<u64>>,
    /// Tests only: runs inside `append` just before it produces (under the chain locks,
    /// after the conflict check), to stage a write that races it.
    #[cfg(test)]
    before_produce: tokio::sync::Mutex<Option<tests::Hook>>,
}

impl KafkaLog {
    /// Connects to Kafka and to the chain index's PostgreSQL database: checks the brokers
    /// answer within `connect_timeout`, creates or checks both topics, migrates the
    /// index schema. Each failure is one [`KafkaError`].
    pub async fn connect(config: KafkaConfig, database_url: &str) -> Result<Self, KafkaError> {
        validate(&config)?;
        let layout = Layout {
            facility_topic: config.facility_topic.clone(),
            registry_topic: config.registry_topic.clone(),
            facility_partitions: config.partitions,
        };
        let base = base_config(&config, &[]);
        let producer_config = base_config(
            &config,
            &[
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
                ("enable.gapless.guarantee", "true".into()),
                (
                    "message.timeout.ms",
                    config.produce_timeout.as_millis().to_string(),
                ),
                // Partitions are computed here; the partitioner only matters to anyone
                // producing by key with this configuration, and then it agrees with us.
                ("partitioner", "murmur2_random".into()),
                // An ingest append is usually one facility's few events: send promptly.
                ("linger.ms", "2".into()),
                ("compression.type", "lz4".into()),
            ],
        );
        let producer: FutureProducer = producer_config
            .create()
            .map_err(|e| KafkaError::Config(format!("Kafka producer: {e}")))?;
        topics::ensure(&config, &base, &producer).await?;

        let index = Index::open(database_url, &config, layout.partitions()).await?;

        let reader_config = base_config(
            &config,
            &[
                // Required by librdkafka for `assign`; never joined (no subscribe) and
                // never committed to.
                (
                    "group.id",
                    format!("{}.hrx-log-reader", config.facility_topic),
                ),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
                // An offset outside the log is an error, never a silent jump.
                ("auto.offset.reset", "error".into()),
                ("enable.partition.eof", "true".into()),
                ("isolation.level", "read_committed".into()),
                // Bound the prefetch of each positioned reader, and fetch again soon
                // after a drained queue rather than after the 1 s default.
                ("queued.max.messages.kbytes", "4096".into()),
                ("fetch.queue.backoff.ms", "20".into()),
                // How long the broker may hold a fetch at the end of a partition. A
                // message arriving meanwhile did not end the wait early here (Kafka 4.4,
                // read_committed): with the 500 ms default, a projector in another
                // process saw an idle submit → visible p99 of ~515 ms in `hrx bench`;
                // 100 ms gave p99 140 ms, p50 54 ms, for ~10 empty fetches/s per idle
                // reader.
                ("fetch.wait.max.ms", "100".into()),
            ],
        );
        // Readers are made on demand; make one now so that a bad property (from
        // `client_properties`) fails here rather than at the first read.
        let probe = reader_config.clone();
        tokio::task::spawn_blocking(move || probe.create::<rdkafka::consumer::BaseConsumer>())
            .await
            .map_err(|e| KafkaError::Config(format!("Kafka consumer: {e}")))?
            .map_err(|e| KafkaError::Config(format!("Kafka consumer: {e}")))?;
        let partitions = layout.partitions();
        let max_readers = config.max_readers.unwrap_or(partitions as usize + 4).max(1);
        Ok(Self {
            inner: Arc::new(Inner {
                layout,
                producer_config,
                producer: RwLock::new((0, producer)),
                readers: Arc::new(Readers::new(reader_config, max_readers)),
                index,
                scan_locks: (0..partitions)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                ends: (0..partitions).map(|_| watch::Sender::new(0)).collect(),
                config,
                #[cfg(test)]
                before_produce: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The trait partition that holds `chain` (facilities and patients: murmur2 of the
    /// message key; the registry: the last partition).
    pub fn partition_of(&self, chain: &ChainKey) -> u32 {
        self.inner.layout.partition_of(chain)
    }

    /// The partition each idle reader is positioned on (`None`: unassigned, holding
    /// nothing). At most one idle reader is positioned on any partition.
    pub fn idle_reader_positions(&self) -> Vec<Option<u32>> {
        self.inner.readers.idle_positions()
    }

    /// The configuration this log runs with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Claims `batch`'s events in the chain index exactly as [`EventLog::append`] does
    /// before it produces them, and does nothing else: no lock, no produce, no index
    /// row. For tests and tools that stage what an append which crashed right after
    /// Kafka acknowledged it leaves behind (claimed, in Kafka, not indexed). `Conflict`
    /// if another chain holds one of the ids.
    pub async fn claim(&self, batch: &[Append]) -> PortResult<()> {
        check_batch(batch)?;
        let client = self.inner.index.client().await?;
        claim_batch(&client, batch).await
    }
}

fn validate(config: &KafkaConfig) -> Result<(), KafkaError> {
    let bad = |m: &str| Err(KafkaError::Config(m.to_owned()));
    if config.brokers.trim().is_empty() {
        return bad("no Kafka brokers given");
    }
    if config.partitions == 0 || config.partitions > i32::MAX as u32 - 1 {
        return bad("the facility-events topic needs 1 to 2^31 - 2 partitions");
    }
    if config.facility_topic.is_empty() || config.registry_topic.is_empty() {
        return bad("topic names must not be empty");
    }
    if config.facility_topic == config.registry_topic {
        return bad("the facility-events and registry topics must differ");
    }
    if config.connect_timeout.is_zero()
        || config.produce_timeout.is_zero()
        || config.request_timeout.is_zero()
    {
        return bad("timeouts must be positive");
    }
    Ok(())
}

/// Settings every client shares, then `extra`, then the operator's properties.
fn base_config(config: &KafkaConfig, extra: &[(&str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("broker.address.family", "v4")
        // Never let a metadata request create a topic with the broker's defaults.
        .set("allow.auto.create.topics", "false")
        // Reconnect within a couple of seconds after a broker restart.
        .set("reconnect.backoff.max.ms", "2000");
    for (k, v) in extra {
        c.set(*k, v);
    }
    for (k, v) in config.tls.iter().flat_map(KafkaTls::properties) {
        c.set(k, v);
    }
    for (k, v) in &config.client_properties {
        c.set(k, v);
    }
    if let Some(password) = &config.sasl_password {
        c.set("sasl.password", &password.0);
    }
    c
}

/// Refuses a batch that could not extend its chains whatever the log holds: a seq or
/// event id repeated, or seqs of one chain not consecutive; and one whose receive time
/// a Kafka timestamp cannot hold exactly (see [`wire`]: whole milliseconds, from 1970).
fn check_batch(batch: &[Append]) -> PortResult<()> {
    let mut last: HashMap<&ChainKey, u64> = HashMap::new();
    let mut ids: HashSet<(&ChainKey, EventId)> = HashSet::new();
    for a in batch {
        index::big(a.seq, "seq")?;
        kafka_timestamp(a)?;
        // The hash goes into the headers and the claim; catch-up checks both against
        // the envelope, so one that is not the envelope's would never be indexed there.
        if a.envelope.event_hash() != a.event_hash {
            return Err(PortError::Corrupt(format!(
                "chain {} seq {}: the event hash given is not the envelope's",
                a.chain, a.seq
            )));
        }
        if !ids.insert((&a.chain, a.event_id)) {
            return Err(PortError::Conflict(format!(
                "event {} appears twice in one append to chain {}",
                a.event_id, a.chain
            )));
        }
        if let Some(prev) = last.insert(&a.chain, a.seq)
            && a.seq != prev + 1
        {
            return Err(PortError::Conflict(format!(
                "chain {}: seq {} follows seq {prev} in one append",
                a.chain, a.seq
            )));
        }
    }
    Ok(())
}

/// Claims the batch's events (chain, id and event hash) in the index, committed, as an
/// append must before it produces them; `Conflict` if another chain holds an id.
async fn claim_batch<C: deadpool_postgres::GenericClient>(
    c: &C,
    batch: &[Append],
) -> PortResult<()> {
    let claims: Vec<index::Claim> = batch
        .iter()
        .map(|a| {
            (
                a.chain.as_key().into_owned(),
                a.event_id,
                a.event_hash,
                a.seq,
            )
        })
        .collect();
    match index::claim(c, &claims).await? {
        Some(id) => Err(PortError::Conflict(format!(
            "event {id} is already held by another chain in the log"
        ))),
        None => Ok(()),
    }
}

/// Those of `candidates` (messages with the chain info their headers give, in log
/// order) that an append of this crate wrote: the value is an envelope whose event hash
/// ([`hrx_domain::Envelope::event_hash`]) is the header's, and an append claimed that
/// chain, id and hash before producing ([`index::claimed`]). Headers alone are whatever
/// some producer wrote; the rest are logged (position and event id only) and left out.
async fn vouched<'m, C: deadpool_postgres::GenericClient>(
    c: &C,
    partition: u32,
    candidates: Vec<(&'m RawMessage, ChainInfo)>,
) -> PortResult<Vec<(&'m RawMessage, ChainInfo)>> {
    let mut hashed = Vec::with_capacity(candidates.len());
    for (m, info) in candidates {
        let why = match m.value.as_deref().map(wire::decode_value) {
            Some(Ok(envelope)) if envelope.event_hash() == info.event_hash => {
                hashed.push((m, info));
                continue;
            }
            Some(Ok(_)) => "its hrx-event-hash header is not its envelope's event hash".into(),
            Some(Err(e)) => format!("its value is not an hrx envelope ({e})"),
            None => "it has no value".into(),
        };
        tracing::warn!(
            partition,
            offset = m.offset,
            event_id = %info.event_id,
            "log message not indexed: {why}"
        );
    }
    if hashed.is_empty() {
        return Ok(hashed);
    }
    let claims: Vec<index::Claim> = hashed
        .iter()
        .map(|(_, i)| {
            let chain = i.chain.as_key().into_owned();
            (chain, i.event_id, i.event_hash, i.seq)
        })
        .collect();
    let claimed = index::claimed(c, &claims).await?;
    Ok(hashed
        .into_iter()
        .zip(claimed)
        .filter_map(|((m, info), claimed)| {
            if !claimed {
                tracing::warn!(
                    partition,
                    offset = m.offset,
                    event_id = %info.event_id,
                    "log message not indexed: no append claimed its event (written to the \
                     topic by something other than hrx)"
                );
            }
            claimed.then_some((m, info))
        })
        .collect())
}

/// The Kafka timestamp of `a`: its receive time in Unix milliseconds, which must be
/// whole (the port's contract) and not before 1970, so that the entry's `appended_at`
/// reads back equal to it. Anything else is refused rather than rounded: the projector
/// would judge the event at another time than ingest did.
fn kafka_timestamp(a: &Append) -> PortResult<i64> {
    let t = a.received_at;
    if t.nanos() % 1_000_000 != 0 || t.seconds() < 0 {
        return Err(PortError::Corrupt(format!(
            "chain {} seq {}: received_at {t} is not whole milliseconds since 1970, which \
             is all a Kafka timestamp holds",
            a.chain, a.seq
        )));
    }
    Ok(t.unix_millis())
}

impl Inner {
    fn locate(&self, partition: u32) -> PortResult<Location> {
        self.layout.locate(partition).ok_or_else(|| {
            // `PortError` has no "invalid argument"; asking for a partition that does
            // not exist is a caller bug, reported like the embedded log does.
            PortError::Unavailable(format!(
                "log partition {partition} does not exist (this log has {})",
                self.layout.partitions()
            ))
        })
    }

    fn producer(&self) -> (u64, FutureProducer) {
        self.producer
            .read()
            .expect("producer lock poisoned")
            .clone()
    }

    /// Replaces the producer of `generation` if it hit a fatal error.
    fn renew_producer_if_fatal(&self, generation: u64, used: &FutureProducer) {
        let Some((code, reason)) = used.client().fatal_error() else {
            return;
        };
        let mut current = self.producer.write().expect("producer lock poisoned");
        if current.0 != generation {
            return; // another append already replaced it
        }
        match self.producer_config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(%code, %reason, "Kafka producer failed fatally; replaced it");
                let old = std::mem::replace(&mut *current, (generation + 1, fresh));
                // Dropping a producer flushes and joins its thread: not on the runtime.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => tracing::error!(error = %e, "cannot replace the failed Kafka producer"),
        }
    }

    fn note_end(&self, partition: u32, end: u64) {
        if let Some(tx) = self.ends.get(partition as usize) {
            tx.send_if_modified(|known| {
                let newer = end > *known;
                if newer {
                    *known = end;
                }
                newer
            });
        }
    }

    /// The partition's high watermark (last stable offset under read_committed): every
    /// message below it is acknowledged and readable.
    async fn high_watermark(&self, loc: &Location) -> PortResult<u64> {
        let (_, producer) = self.producer();
        let topic = loc.topic.clone();
        let partition = loc.kafka_partition;
        let timeout = self.config.request_timeout;
        let (_, high) = tokio::task::spawn_blocking(move || {
            let client = producer.client();
            client
                .fetch_watermarks(&topic, partition, timeout)
                .or_else(|first| {
                    // After a broker restart librdkafka can keep a partition marked unknown
                    // until its next periodic metadata refresh (minutes away): fetching the
                    // topic's metadata refreshes its cache, then the query is tried once more.
                    let _ = client.fetch_metadata(Some(&topic), timeout);
                    client
                        .fetch_watermarks(&topic, partition, timeout)
                        .map_err(|_| first)
                })
        })
        .await
        .map_err(join)?
        .map_err(|e| kafka("watermark query", e))?;
        let high = u64::try_from(high).map_err(|_| {
            PortError::Unavailable(format!(
                "Kafka has no high watermark for partition {}",
                loc.partition
            ))
        })?;
        self.note_end(loc.partition, high);
        Ok(high)
    }

    /// Messages of `loc` in `[from, until)`, at most `max`.
    async fn fetch(
        &self,
        loc: &Location,
        from: u64,
        max: usize,
        until: u64,
    ) -> PortResult<Vec<RawMessage>> {
        let mut lease = self.readers.lease(loc.partition, from).await;
        let loc = loc.clone();
        let timeout = self.config.request_timeout;
        tokio::task::spawn_blocking(move || lease.fetch(&loc, from, max, until, timeout))
            .await
            .map_err(join)?
    }

    /// Makes sure every message of `chains` below `partition`'s high watermark is in the
    /// index; returns that watermark. `c` is a connection the caller already holds (an
    /// append's, inside its transaction): taking a second one from the same pool here
    /// could starve when every connection is held by an append waiting for this.
    ///
    /// Cheap in the common cases: nothing unindexed (one query each to Kafka and
    /// PostgreSQL), or only messages of other chains whose appends are still committing
    /// their rows (one Kafka read, no writes, no lock). A full [`Inner::catch_up`] runs
    /// only when an unindexed message belongs to `chains`, has stayed unindexed for a
    /// while (a crashed writer's, or one that cannot be indexed), or the backlog is large.
    async fn refresh<C: deadpool_postgres::GenericClient>(
        &self,
        c: &C,
        partition: u32,
        chains: &[&str],
    ) -> PortResult<u64> {
        let loc = self.locate(partition)?;
        let next = index::next_offset(c, partition);
        let (high, next) = tokio::join!(self.high_watermark(&loc), next);
        let (mut high, next) = (high?, next?);
        if next > high {
            // Asked concurrently: an append may have moved both since. Ask again.
            high = self.high_watermark(&loc).await?;
            if next > high {
                return Err(PortError::Corrupt(format!(
                    "the chain index of partition {partition} is at offset {next}, past the \
                     log's end {high}: the topic was recreated or truncated under the index"
                )));
            }
        }
        if next >= high {
            return Ok(high);
        }
        // Appends index their own messages; skip those.
        let walked = walk_indexed(c, partition, next, high).await?;
        if walked > next {
            self.advance_quietly(partition, walked).await;
        }
        if walked >= high {
            return Ok(high);
        }
        if high - walked > SCAN_CHUNK as u64 {
            self.catch_up(&loc, high).await?;
            return Ok(high);
        }
        let indexed: HashSet<u64> =
            index::indexed_offsets(c, partition, walked, high, SCAN_CHUNK as i64)
                .await?
                .into_iter()
                .collect();
        let messages = self.fetch(&loc, walked, SCAN_CHUNK, high).await?;
        let now_ms = hrx_domain::Timestamp::now().unix_millis();
        // A read cut short by its deadline proves nothing about the rest: scan.
        let complete = messages.last().is_some_and(|m| m.offset + 1 >= high);
        let needs_scan = !complete
            || messages
                .iter()
                .filter(|m| !indexed.contains(&m.offset))
                .any(|m| match m.chain_info() {
                    Ok(info) if chains.contains(&&*info.chain.as_key()) => true,
                    _ => m
                        .timestamp_ms
                        .is_none_or(|t| now_ms.saturating_sub(t) > ORPHAN_AFTER_MS),
                });
        if needs_scan {
            self.catch_up(&loc, high).await?;
        }
        Ok(high)
    }

    /// Moves `next_offset` forward over offsets found indexed, on a connection of its
    /// own (inside an append's transaction the row lock would be held until its commit,
    /// queueing every other append of the partition behind it). Only an optimisation:
    /// a failure is logged and left to the next caller.
    async fn advance_quietly(&self, partition: u32, end: u64) {
        let advanced = async {
            let client = self.index.scan_client().await?;
            index::advance_to(&client, partition, end).await
        };
        if let Err(e) = advanced.await {
            tracing::debug!(partition, error = %e, "could not advance the index offset");
        }
    }

    /// Indexes `loc` up to `high`, one committed chunk at a time.
    async fn catch_up(&self, loc: &Location, high: u64) -> PortResult<()> {
        let p = loc.partition;
        let _local = self.scan_locks[p as usize].lock().await;
        let mut client = self.index.scan_client().await?;
        loop {
            let tx = client.transaction().await.map_err(pg)?;
            index::lock_scan(&tx, p).await?;
            let mut next = index::next_offset(&tx, p).await?;
            if next >= high {
                tx.commit().await.map_err(pg)?;
                return Ok(());
            }
            next = walk_indexed(&tx, p, next, high).await?;
            if next < high {
                let messages = self.fetch(loc, next, SCAN_CHUNK, high).await?;
                let Some(last) = messages.last().map(|m| m.offset) else {
                    return Err(PortError::Unavailable(format!(
                        "Kafka: partition {p} yielded nothing from offset {next} below its \
                         end {high}"
                    )));
                };
                let rows = self.extending_rows(&tx, p, &messages).await?;
                tracing::debug!(
                    partition = p,
                    from = next,
                    to = last,
                    indexed = rows.len(),
                    "chain index caught up from Kafka"
                );
                // Only claimed messages are indexed, and their claims are there already:
                // catch-up never claims (what nobody claimed, no append wrote).
                index::insert(&tx, &rows).await?;
                next = last + 1;
            }
            index::advance_to(&tx, p, next).await?;
            tx.commit().await.map_err(pg)?;
            if next >= high {
                return Ok(());
            }
        }
    }

    /// The index rows for `messages` (in log order) that extend their chains, as the
    /// projector will judge them in the same order; the rest are duplicates, forks, gaps,
    /// not hrx messages, or not vouched for (see [`Inner::vouched`]), and do not enter
    /// the index.
    async fn extending_rows<C: deadpool_postgres::GenericClient>(
        &self,
        c: &C,
        partition: u32,
        messages: &[RawMessage],
    ) -> PortResult<Vec<IndexRow>> {
        let mut candidates = Vec::with_capacity(messages.len());
        for m in messages {
            match m.chain_info() {
                Ok(info) if self.layout.partition_of(&info.chain) == partition => {
                    candidates.push((m, info))
                }
                Ok(info) => tracing::warn!(
                    partition,
                    offset = m.offset,
                    chain = %info.chain,
                    "log message of a chain that belongs to another partition; not indexed"
                ),
                Err(e) => tracing::warn!(
                    partition,
                    offset = m.offset,
                    error = %e,
                    "log message without hrx chain headers; not indexed"
                ),
            }
        }
        let infos: Vec<_> = vouched(c, partition, candidates)
            .await?
            .into_iter()
            .map(|(m, info)| (m.offset, info, m.recorded_at(partition)))
            .collect();
        if infos.is_empty() {
            return Ok(Vec::new());
        }
        let mut chains: Vec<String> = infos
            .iter()
            .map(|(_, i, _)| i.chain.as_key().into_owned())
            .collect();
        chains.sort();
        chains.dedup();
        let mut heads = index::heads(c, &chains).await?;
        let pairs: Vec<(String, EventId)> = infos
            .iter()
            .map(|(_, i, _)| (i.chain.as_key().into_owned(), i.event_id))
            .collect();
        let mut ids = index::existing_ids(c, &pairs).await?;
        let mut rows = Vec::new();
        for ((offset, info, recorded_at), pair) in infos.into_iter().zip(pairs) {
            let head = heads.get(&pair.0).copied().unwrap_or(0);
            if info.seq == head + 1 && !ids.contains(&pair) {
                heads.insert(pair.0.clone(), info.seq);
                rows.push(IndexRow {
                    chain: pair.0.clone(),
                    seq: info.seq,
                    event_id: info.event_id,
                    event_hash: info.event_hash,
                    position: LogPosition { partition, offset },
                    recorded_at,
                });
                ids.insert(pair);
            }
        }
        Ok(rows)
    }

    /// Produces `batch` in order; the positions once Kafka acknowledged all of it.
    async fn produce(&self, batch: &[Append]) -> PortResult<Vec<LogPosition>> {
        let (generation, producer) = self.producer();
        let mut pending = Vec::with_capacity(batch.len());
        let mut failure: Option<String> = None;
        // Checked before anything is enqueued (`check_batch` already did).
        let timestamps = batch
            .iter()
            .map(kafka_timestamp)
            .collect::<PortResult<Vec<i64>>>()?;
        for (a, timestamp) in batch.iter().zip(timestamps) {
            let loc = self.locate(self.layout.partition_of(&a.chain))?;
            let value = wire::encode_value(&a.envelope);
            let key = a.chain.as_key();
            let record = FutureRecord::to(&loc.topic)
                .partition(loc.kafka_partition)
                .key(&*key)
                .payload(&value)
                .headers(wire::headers(a))
                .timestamp(timestamp);
            match producer.send_result(record) {
                Ok(delivery) => pending.push((loc, delivery)),
                Err((e, _)) => {
                    // Later messages must not go out without this one (a hole in the
                    // chain): stop here; what was enqueued is a prefix.
                    failure = Some(format!("enqueue: {e}"));
                    break;
                }
            }
        }
        // Await every enqueued message, even after a failure, so that what this append
        // leaves in the log is settled when it answers.
        let mut positions = Vec::with_capacity(pending.len());
        for (loc, delivery) in pending {
            match delivery.await {
                Ok(Ok(d)) if d.partition == loc.kafka_partition && d.offset >= 0 => {
                    positions.push(LogPosition {
                        partition: loc.partition,
                        offset: d.offset as u64,
                    })
                }
                Ok(Ok(d)) => {
                    failure.get_or_insert(format!(
                        "delivered to partition {} offset {}, not to partition {}",
                        d.partition, d.offset, loc.kafka_partition
                    ));
                }
                Ok(Err((e, _))) => {
                    failure.get_or_insert(e.to_string());
                }
                Err(_) => {
                    failure.get_or_insert("producer closed before delivery".to_owned());
                }
            }
        }
        if let Some(why) = failure {
            self.renew_producer_if_fatal(generation, &producer);
            return Err(PortError::Unavailable(format!(
                "Kafka produce failed ({} of {} acknowledged): {why}",
                positions.len(),
                batch.len()
            )));
        }
        for p in &positions {
            self.note_end(p.partition, p.offset + 1);
        }
        Ok(positions)
    }

    /// Step 5 of an append: nothing of `chains` may sit between `high` (what the index
    /// was caught up to under the chain locks) and our last offset, other than ours.
    async fn check_window<C: deadpool_postgres::GenericClient>(
        &self,
        c: &C,
        partition: u32,
        high: u64,
        ours: &BTreeSet<u64>,
        chains: &HashSet<&str>,
    ) -> PortResult<()> {
        let (Some(&first), Some(&last)) = (ours.first(), ours.last()) else {
            return Ok(());
        };
        if first == high && (last - first) as usize + 1 == ours.len() {
            return Ok(()); // ours directly follow the caught-up point: nothing between
        }
        let loc = self.locate(partition)?;
        let mut from = high;
        while from <= last {
            let messages = self.fetch(&loc, from, SCAN_CHUNK, last + 1).await?;
            let Some(end) = messages.last().map(|m| m.offset) else {
                break;
            };
            // Only a message catch-up would index can take a seq from ours; one nobody
            // claimed (not an append's) cannot, and must not fail the append either.
            let theirs: Vec<_> = messages
                .iter()
                .filter(|m| !ours.contains(&m.offset))
                .filter_map(|m| Some((m, m.chain_info().ok()?)))
                .filter(|(_, info)| chains.contains(&*info.chain.as_key()))
                .collect();
            if let Some((m, info)) = vouched(c, partition, theirs).await?.first() {
                return Err(PortError::Unavailable(format!(
                    "a delayed write to chain {} landed at partition {partition} offset {} \
                     ahead of this append, which is therefore not acknowledged; retry",
                    info.chain, m.offset
                )));
            }
            from = end + 1;
        }
        Ok(())
    }
}

/// Skips, from `next`, the offsets the index already has rows for (appends index their
/// own messages); returns the first offset below `high` that needs reading, or `high`.
async fn walk_indexed<C: deadpool_postgres::GenericClient>(
    c: &C,
    partition: u32,
    mut next: u64,
    high: u64,
) -> PortResult<u64> {
    loop {
        let offsets = index::indexed_offsets(c, partition, next, high, WALK_CHUNK).await?;
        let n = offsets.len();
        let run = offsets
            .iter()
            .zip(next..)
            .take_while(|(o, expected)| **o == *expected)
            .count();
        next += run as u64;
        if run < n || (n as i64) < WALK_CHUNK {
            return Ok(next);
        }
    }
}

/// Sets its flag when dropped: tells a blocking wait that nobody listens any more.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.inner.layout.partitions()
    }

    async fn join(&self, group: &str) -> PortResult<watch::Receiver<Vec<u32>>> {
        let config = base_config(&self.inner.config, &[]);
        let layout = self.inner.layout.clone();
        let group = group.to_owned();
        let membership = group::Membership {
            instance: self.inner.config.group_instance_id.clone(),
            session_timeout: self.inner.config.session_timeout,
        };
        tokio::task::spawn_blocking(move || group::join(config, layout, &group, membership))
            .await
            .map_err(join)?
    }

    fn partition_of(&self, chain: &ChainKey) -> u32 {
        self.inner.layout.partition_of(chain)
    }

    async fn chain_context(
        &self,
        chain: &ChainKey,
        event_id: EventId,
        seq: u64,
    ) -> PortResult<LogChainContext> {
        let inner = &self.inner;
        let client = inner.index.client().await?;
        inner
            .refresh(
                &client,
                inner.layout.partition_of(chain),
                &[&chain.as_key()],
            )
            .await?;
        let (context, prior_position) = index::context(&client, chain, event_id, seq).await?;
        let elsewhere = index::in_other_chains(&client, &chain.as_key(), &[event_id]).await?;
        Ok(LogChainContext {
            context,
            prior_position,
            id_in_other_chain: !elsewhere.is_empty(),
        })
    }

    /// One index refresh (a watermark query, ~1 ms) and one index query for the whole
    /// batch rather than one of each per event.
    async fn chain_contexts(
        &self,
        chain: &ChainKey,
        links: &[(EventId, u64)],
    ) -> PortResult<Vec<LogChainContext>> {
        let inner = &self.inner;
        let client = inner.index.client().await?;
        inner
            .refresh(
                &client,
                inner.layout.partition_of(chain),
                &[&chain.as_key()],
            )
            .await?;
        let ids: Vec<EventId> = links.iter().map(|(id, _)| *id).collect();
        let elsewhere = index::in_other_chains(&client, &chain.as_key(), &ids).await?;
        Ok(index::contexts(&client, chain, links)
            .await?
            .into_iter()
            .zip(links)
            .map(|((context, prior_position), (id, _))| LogChainContext {
                context,
                prior_position,
                id_in_other_chain: elsewhere.contains(id),
            })
            .collect())
    }

    async fn append(&self, batch: Vec<Append>) -> PortResult<Vec<LogPosition>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        check_batch(&batch)?;
        let inner = &self.inner;
        // Locks in one order, so two appends spanning the same chains cannot deadlock.
        let mut chains: Vec<&ChainKey> = batch.iter().map(|a| &a.chain).collect();
        chains.sort();
        chains.dedup();
        let mut partitions: Vec<u32> = chains
            .iter()
            .map(|c| inner.layout.partition_of(c))
            .collect();
        partitions.sort_unstable();
        partitions.dedup();

        let mut client = inner.index.client().await?;
        let pairs: Vec<(String, EventId)> = batch
            .iter()
            .map(|a| (a.chain.as_key().into_owned(), a.event_id))
            .collect();
        // Committed before anything is produced: catch-up indexes only claimed messages.
        claim_batch(&client, &batch).await?;
        let tx = client.transaction().await.map_err(pg)?;
        for chain in &chains {
            index::lock_chain(&tx, chain).await?;
        }
        // The message keys, in the order of `chains`.
        let keys: Vec<String> = chains.iter().map(|c| c.as_key().into_owned()).collect();
        let mut caught_up = HashMap::new();
        for &p in &partitions {
            let in_p: Vec<&str> = chains
                .iter()
                .zip(&keys)
                .filter(|(c, _)| inner.layout.partition_of(c) == p)
                .map(|(_, k)| k.as_str())
                .collect();
            caught_up.insert(p, inner.refresh(&tx, p, &in_p).await?);
        }

        // The batch must continue each chain's indexed head.
        let heads = index::heads(&tx, &keys).await?;
        for (chain, key) in chains.iter().zip(&keys) {
            let first = batch
                .iter()
                .find(|a| a.chain == **chain)
                .expect("a chain of the batch");
            let head = heads.get(key.as_str()).copied().unwrap_or(0);
            if first.seq != head + 1 {
                return Err(PortError::Conflict(format!(
                    "chain {chain}: seq {} does not follow the log's head {head}",
                    first.seq
                )));
            }
        }
        if let Some((key, id)) = index::existing_ids(&tx, &pairs).await?.into_iter().next() {
            // Named by its Display, which never writes a patient id out.
            let chain = ChainKey::parse(&key).map_or_else(|| "?".to_owned(), |c| c.to_string());
            return Err(PortError::Conflict(format!(
                "chain {chain} already holds event {id}"
            )));
        }

        #[cfg(test)]
        if let Some(hook) = inner.before_produce.lock().await.take() {
            hook().await;
        }
        let positions = inner.produce(&batch).await?;

        for &p in &partitions {
            let ours: BTreeSet<u64> = positions
                .iter()
                .filter(|pos| pos.partition == p)
                .map(|pos| pos.offset)
                .collect();
            let in_p: HashSet<&str> = chains
                .iter()
                .zip(&keys)
                .filter(|(c, _)| inner.layout.partition_of(c) == p)
                .map(|(_, k)| k.as_str())
                .collect();
            inner
                .check_window(&tx, p, caught_up[&p], &ours, &in_p)
                .await?;
        }

        // Acknowledged and first in their chains: index them. From here on the events
        // are in the log whatever happens, so a failure only delays the index (catch-up
        // repairs it) and the append still succeeds.
        let rows: Vec<IndexRow> = batch
            .iter()
            .zip(&positions)
            .map(|(a, p)| IndexRow::of(a, *p))
            .collect();
        let indexed = async {
            index::insert(&tx, &rows).await?;
            for &p in &partitions {
                let ours: Vec<u64> = positions
                    .iter()
                    .filter(|pos| pos.partition == p)
                    .map(|pos| pos.offset)
                    .collect();
                let contiguous = ours.windows(2).all(|w| w[1] == w[0] + 1);
                if let (true, Some(first), Some(last)) = (contiguous, ours.first(), ours.last()) {
                    index::advance_from(&tx, p, *first, last + 1).await?;
                }
            }
            tx.commit().await.map_err(pg)
        };
        if let Err(e) = indexed.await {
            tracing::warn!(
                error = %e,
                "appended to Kafka but could not index; catch-up will index it"
            );
        }
        Ok(positions)
    }

    async fn read(&self, partition: u32, offset: u64, max: usize) -> PortResult<Vec<LogEntry>> {
        let inner = &self.inner;
        let loc = inner.locate(partition)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let high = inner.high_watermark(&loc).await?;
        if offset >= high {
            return Ok(Vec::new());
        }
        let messages = inner.fetch(&loc, offset, max, high).await?;
        Ok(messages.into_iter().map(|m| m.entry(partition)).collect())
    }

    async fn end_offset(&self, partition: u32) -> PortResult<u64> {
        let inner = &self.inner;
        let loc = inner.locate(partition)?;
        inner.high_watermark(&loc).await
    }

    async fn wait_for(&self, partition: u32, offset: u64, timeout: Duration) {
        let inner = self.inner.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let Ok(loc) = inner.locate(partition) else {
            // Nothing will ever arrive there: honour the timeout, as for an idle log.
            tokio::time::sleep(timeout).await;
            return;
        };
        let mut known = inner.ends[partition as usize].subscribe();
        if *known.borrow_and_update() > offset {
            return;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_return = CancelOnDrop(cancel.clone());

        // This process's appends (and anything else that learns of a new end) wake us
        // through the watch at once.
        let local = async {
            let _ = known.wait_for(|end| *end > offset).await;
        };
        // Other processes' appends: a consumer positioned at `offset` long-polls the
        // broker, which answers as soon as a message is there.
        let remote = async {
            let Ok(mut lease) =
                tokio::time::timeout_at(deadline, inner.readers.lease(partition, offset)).await
            else {
                return;
            };
            let blocking_deadline = std::time::Instant::now()
                + deadline.saturating_duration_since(tokio::time::Instant::now());
            let flag = cancel.clone();
            let waited_loc = loc.clone();
            let waited = tokio::task::spawn_blocking(move || {
                lease.wait(&waited_loc, offset, blocking_deadline, &flag)
            })
            .await;
            match waited {
                Ok(Ok(Waited::Arrived)) => inner.note_end(partition, offset + 1),
                Ok(Ok(Waited::PastEnd)) => {
                    // Waiting beyond the end: watch the watermark instead.
                    while tokio::time::Instant::now() < deadline {
                        if matches!(inner.high_watermark(&loc).await, Ok(h) if h > offset) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Ok(Ok(Waited::TimedOut | Waited::Cancelled)) => {}
                // Kafka trouble: the caller will find out on its next read; honour the
                // timeout rather than spin.
                Ok(Err(_)) | Err(_) => tokio::time::sleep_until(deadline).await,
            }
        };
        tokio::select! {
            _ = local => {}
            _ = remote => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrx_domain::Envelope;
    use std::future::Future;
    use std::pin::Pin;

    /// What a test runs just before an append produces.
    pub(crate) type Hook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

    fn append(chain: &str, seq: u64, n: u8) -> Append {
        let envelope = Envelope {
            payload_type: "t".into(),
            payload: vec![n],
            key_id: "k".into(),
            signature: vec![],
        };
        Append {
            chain: ChainKey::parse(chain).expect("a chain key"),
            seq,
            event_id: EventId::from_bytes([n; 16]),
            event_hash: envelope.event_hash(),
            envelope,
            received_at: hrx_domain::Timestamp::now().truncated_to_millis(),
            registry_seq: Some(u64::from(n)),
            recorded_at: None,
        }
    }

    #[test]
    fn batches_must_be_consecutive_per_chain_without_repeats() {
        assert!(check_batch(&[append("26001", 1, 1), append("26001", 2, 2)]).is_ok());
        assert!(
            check_batch(&[
                append("26001", 4, 1),
                append("26012", 1, 2),
                append("26001", 5, 3),
            ])
            .is_ok(),
            "chains interleave freely"
        );
        for bad in [
            vec![append("26001", 3, 1), append("26001", 2, 2)],
            vec![append("26001", 3, 1), append("26001", 3, 2)],
            vec![append("26001", 1, 1), append("26001", 3, 2)],
            vec![append("26001", 1, 1), append("26001", 2, 1)],
        ] {
            assert!(matches!(check_batch(&bad), Err(PortError::Conflict(_))));
        }
        assert!(matches!(
            check_batch(&[append("26001", u64::MAX, 1)]),
            Err(PortError::Corrupt(_))
        ));
    }

    /// A receive time goes out as the message's timestamp only if the timestamp holds it
    /// exactly: whole milliseconds, not before 1970.
    #[test]
    fn receive_times_must_be_whole_milliseconds_since_1970() {
        let at = |s, ns| Append {
            received_at: hrx_domain::Timestamp::new(s, ns).expect("in range"),
            ..append("26001", 1, 1)
        };
        assert_eq!(
            kafka_timestamp(&at(1_800_000_000, 123_000_000)).ok(),
            Some(1_800_000_000_123)
        );
        assert_eq!(kafka_timestamp(&at(0, 0)).ok(), Some(0));
        for bad in [at(1_800_000_000, 123_000_001), at(1, 999_999), at(-1, 0)] {
            assert!(matches!(kafka_timestamp(&bad), Err(PortError::Corrupt(_))));
            assert!(matches!(check_batch(&[bad]), Err(PortError::Corrupt(_))));
        }
    }

    #[test]
    fn configuration_is_validated() {
        assert!(validate(&KafkaConfig::new("127.0.0.1:9092")).is_ok());
        let mut c = KafkaConfig::new(" ");
        assert!(matches!(validate(&c), Err(KafkaError::Config(_))));
        c = KafkaConfig::new("b:9092");
        c.partitions = 0;
        assert!(validate(&c).is_err());
        c = KafkaConfig::new("b:9092");
        c.registry_topic = c.facility_topic.clone();
        assert!(validate(&c).is_err());
        let prefixed = KafkaConfig::new("b:9092").with_topic_prefix("test.");
        assert_eq!(prefixed.facility_topic, "test.hrx.facility-events.v1");
        assert_eq!(prefixed.registry_topic, "test.hrx.registry.v1");
    }

    /// A write to the chain that lands after an append checked the index but before its
    /// own message (a delayed write of an append that had already failed, or of a
    /// crashed process) makes the append fail instead of acknowledging an event the
    /// projector will see as a fork; the index then follows log order. A racing write
    /// that no append claimed is ignored instead. Needs Kafka and
    /// PostgreSQL (`HRX_TEST_KAFKA_BROKERS`, `HRX_TEST_DATABASE_URL`), like
    /// `tests/behaviour.rs`.
    #[tokio::test]
    async fn a_write_racing_an_append_is_never_acknowledged_over() {
        use rdkafka::producer::FutureRecord;

        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let (Some(brokers), Some(admin_url)) =
            (var("HRX_TEST_KAFKA_BROKERS"), var("HRX_TEST_DATABASE_URL"))
        else {
            assert!(
                var("HRX_TEST_REQUIRE_SERVICES").as_deref() != Some("1"),
                "HRX_TEST_REQUIRE_SERVICES=1 but HRX_TEST_KAFKA_BROKERS and \
                 HRX_TEST_DATABASE_URL are not both set"
            );
            eprintln!("hrx-kafka: skipped (no Kafka and PostgreSQL configured)");
            return;
        };
        let id = EventId::new_v7().to_string().replace('-', "");
        let (admin, connection) = hrx_identity::backend::connect_postgres(&admin_url)
            .await
            .expect("PostgreSQL");
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("CREATE DATABASE hrx_test_{id}"))
            .await
            .expect("create database");
        let url =
            hrx_identity::backend::postgres_url_with_dbname(&admin_url, &format!("hrx_test_{id}"));
        let mut config = KafkaConfig::new(&brokers).with_topic_prefix(&format!("t{id}."));
        config.tls = KafkaTls::from_test_env();
        config.partitions = 2;
        let log = KafkaLog::connect(config.clone(), &url)
            .await
            .expect("connect");

        let c = ChainKey::parse("26001").expect("a facility");
        log.append(vec![append("26001", 1, 1)])
            .await
            .expect("seq 1");
        let zombie = append("26001", 2, 2);
        let ours = append("26001", 2, 3);
        // The delayed write is an append's: claimed before it was produced.
        log.claim(std::slice::from_ref(&zombie))
            .await
            .expect("claimed");
        let producer: FutureProducer = log.inner.producer_config.create().expect("producer");
        let topic = config.facility_topic.clone();
        let partition = log.partition_of(&c) as i32;
        *log.inner.before_produce.lock().await = Some(Box::new(move || {
            Box::pin(async move {
                let value = wire::encode_value(&zombie.envelope);
                let key = zombie.chain.as_key();
                let record = FutureRecord::to(&topic)
                    .partition(partition)
                    .key(&*key)
                    .payload(&value)
                    .headers(wire::headers(&zombie));
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .expect("the racing write lands");
            })
        }));
        match log.append(vec![ours.clone()]).await {
            Err(PortError::Unavailable(m)) => assert!(m.contains("delayed write"), "{m}"),
            other => panic!("the racing write must make the append fail, got {other:?}"),
        }
        // The racing write is first in the log, so it holds seq 2; ours is a fork.
        let ctx = log
            .chain_context(&c, ours.event_id, 2)
            .await
            .expect("context");
        assert_eq!(
            ctx.context.head.event_id,
            Some(EventId::from_bytes([2; 16]))
        );
        assert_eq!(ctx.context.same_event_id, None, "ours is not in the chain");
        match log.append(vec![ours]).await {
            Err(PortError::Conflict(_)) => {}
            other => panic!("seq 2 is taken: {other:?}"),
        }
        log.append(vec![append("26001", 3, 4)])
            .await
            .expect("seq 3");

        // A write no append claimed, racing the same way, is no append's delayed write:
        // it neither fails the append nor takes its seq.
        let forged = append("26001", 4, 5);
        let producer: FutureProducer = log.inner.producer_config.create().expect("producer");
        let topic = config.facility_topic.clone();
        *log.inner.before_produce.lock().await = Some(Box::new(move || {
            Box::pin(async move {
                let value = wire::encode_value(&forged.envelope);
                let key = forged.chain.as_key();
                let record = FutureRecord::to(&topic)
                    .partition(partition)
                    .key(&*key)
                    .payload(&value)
                    .headers(wire::headers(&forged));
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .expect("the forged write lands");
            })
        }));
        log.append(vec![append("26001", 4, 6)])
            .await
            .expect("seq 4, over an unclaimed write");
        let ctx = log
            .chain_context(&c, EventId::from_bytes([5; 16]), 4)
            .await
            .expect("context");
        assert_eq!(
            ctx.context.head.event_id,
            Some(EventId::from_bytes([6; 16]))
        );
        assert_eq!(
            ctx.context.same_event_id, None,
            "the forgery is not indexed"
        );
    }
}
