//! Reading the log: a small pool of Kafka consumers ("readers"), each assigned to one
//! partition at a time with `assign` at an explicit offset — no group subscription and
//! no committed offsets, since every caller keeps its own progress (the projector's
//! lives in the store, ingest's in the chain index).
//!
//! A reader stays positioned where its last read or wait ended, with librdkafka
//! prefetching behind it, so the projector's sequential reads of a partition do not
//! re-seek, and a `wait_for` at the end of a partition is a long-poll fetch that wakes as
//! soon as the broker has a new message (the message it got is kept for the next read).
//!
//! At most one idle reader stays positioned on each partition: the one furthest ahead.
//! A second one appears when a read comes while the partition's reader is still
//! finishing a cancelled wait; left positioned, it would never be used again (reads
//! only move forward) yet go on prefetching up to `queued.max.messages.kbytes` behind
//! its stale offset. With one such reader per partition, that was the projector's RSS
//! growing for minutes in the soak. The one behind is unassigned and emptied instead,
//! and re-used first.
//!
//! librdkafka's consumer calls block, so every operation on a reader runs on the
//! blocking thread pool, polling in short slices so that a cancelled wait gives its
//! reader back promptly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hrx_domain::{Envelope, Timestamp};
use hrx_ports::{LogEntry, LogPosition, PortError, PortResult};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::partition::Location;
use crate::wire::{self, ChainInfo, WireError};

/// How long one blocking poll may take before the loop checks its deadline and
/// cancellation flag again.
const POLL_SLICE: Duration = Duration::from_millis(50);

/// A message as read, owned, before it is interpreted.
#[derive(Debug, Clone)]
pub(crate) struct RawMessage {
    pub offset: u64,
    pub timestamp_ms: Option<i64>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl RawMessage {
    fn from_borrowed(m: &BorrowedMessage<'_>, offset: u64) -> Self {
        Self {
            offset,
            timestamp_ms: m.timestamp().to_millis(),
            value: m.payload().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn header_pairs(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// The event's place in its chain, from the headers `append` wrote.
    pub fn chain_info(&self) -> Result<ChainInfo, WireError> {
        wire::chain_info(self.header_pairs())
    }

    /// The event's recorded_at from its header: `None` when absent (a message of an
    /// earlier version, or an event without one), and when malformed (logged).
    pub fn recorded_at(&self, partition: u32) -> Option<hrx_domain::Timestamp> {
        wire::recorded_at(self.header_pairs())
            .inspect_err(|e| self.malformed(partition, e))
            .ok()
            .flatten()
    }

    /// The registry seq from its header, `None` when absent or malformed (logged).
    pub fn registry_seq(&self, partition: u32) -> Option<u64> {
        wire::registry_seq(self.header_pairs())
            .inspect_err(|e| self.malformed(partition, e))
            .ok()
            .flatten()
    }

    fn malformed(&self, partition: u32, e: &WireError) {
        tracing::warn!(
            partition,
            offset = self.offset,
            error = %e,
            "log message with a malformed optional hrx header; read as absent"
        );
    }

    /// The log entry at this message.
    ///
    /// A value that is not an hrx envelope (written by some other producer, or damaged)
    /// is returned as an envelope with an empty payload type and key id, carrying the
    /// raw value as its payload: verification then rejects it at its position with a
    /// recorded reason, instead of the projector stalling on it forever or skipping it
    /// silently.
    pub fn entry(self, partition: u32) -> LogEntry {
        let position = LogPosition {
            partition,
            offset: self.offset,
        };
        let registry_seq = self.registry_seq(partition);
        let envelope = match self.value.as_deref().map(wire::decode_value) {
            Some(Ok(envelope)) => envelope,
            other => {
                let why = match other {
                    Some(Err(e)) => e,
                    _ => WireError::NoValue,
                };
                tracing::warn!(
                    partition,
                    offset = self.offset,
                    error = %why,
                    "log message is not an hrx envelope; passing it on as malformed"
                );
                Envelope {
                    payload_type: String::new(),
                    payload: self.value.unwrap_or_default(),
                    key_id: String::new(),
                    signature: Vec::new(),
                }
            }
        };
        LogEntry {
            position,
            envelope,
            appended_at: millis_to_timestamp(self.timestamp_ms.unwrap_or(0)),
            registry_seq,
        }
    }
}

/// Kafka's millisecond timestamps as hrx timestamps (clamped into hrx's range, which
/// any real clock is far inside).
pub(crate) fn millis_to_timestamp(ms: i64) -> Timestamp {
    let seconds = ms.div_euclid(1000);
    let nanos = (ms.rem_euclid(1000) * 1_000_000) as i32;
    Timestamp::new(seconds, nanos)
        .unwrap_or_else(|_| Timestamp::from_unix_seconds(0).expect("the Unix epoch is in range"))
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// A message at or after the offset is there (kept for the next read).
    Arrived,
    TimedOut,
    Cancelled,
    /// The offset is past the partition's end, where a consumer cannot wait.
    PastEnd,
}

/// The readers' client context: like the default one, except that reaching the end of
/// a partition is not logged as an error. Reads ask librdkafka for partition-EOF events
/// on purpose (`enable.partition.eof`), to know they have seen everything.
struct ReaderContext;

impl rdkafka::client::ClientContext for ReaderContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let eof = matches!(
            error,
            RdKafkaError::PartitionEOF(_) | RdKafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

/// One consumer and where it stands.
struct Reader {
    consumer: BaseConsumer<ReaderContext>,
    /// `(partition, x)`: `pending`, then the consumer's queue, yield exactly the
    /// messages of the trait partition with offsets ≥ x, in order. `None`: unknown
    /// (fresh, or after an error), so the next use assigns again.
    at: Option<(u32, u64)>,
    /// Messages polled but not yet returned (by a wait, or past a read's end).
    pending: VecDeque<RawMessage>,
    used: Instant,
}

/// The pool of readers of one [`KafkaLog`](crate::KafkaLog).
pub(crate) struct Readers {
    config: ClientConfig,
    idle: Mutex<Vec<Reader>>,
    permits: Arc<Semaphore>,
    max: usize,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Readers {
    pub fn new(config: ClientConfig, max: usize) -> Self {
        Self {
            config,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The trait partition each idle reader is positioned on (`None`: unassigned).
    pub fn idle_positions(&self) -> Vec<Option<u32>> {
        self.idle
            .lock()
            .map(|idle| idle.iter().map(|r| r.at.map(|(p, _)| p)).collect())
            .unwrap_or_default()
    }

    /// A reader for `partition`, preferably one already positioned at `offset`; waits
    /// while all readers are in use. The reader itself is created or assigned later, on
    /// the blocking pool.
    pub async fn lease(self: &Arc<Self>, partition: u32, offset: u64) -> Lease {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the readers' semaphore is never closed");
        let mut idle = self.idle.lock().expect("readers lock poisoned");
        let exact = idle.iter().position(|r| r.at == Some((partition, offset)));
        // Readers in use, this lease included; each holds a permit.
        let leased = self.max - self.permits.available_permits();
        let unpositioned = || idle.iter().position(|r| r.at.is_none());
        let reader = match exact.or_else(unpositioned) {
            Some(i) => Some(idle.swap_remove(i)),
            // Room for one more (the others' leases may still create theirs): keep the
            // positioned readers positioned.
            None if idle.len() + leased <= self.max => None,
            // Otherwise re-use the one unused for longest.
            None => idle
                .iter()
                .enumerate()
                .min_by_key(|(_, r)| r.used)
                .map(|(i, _)| i)
                .map(|i| idle.swap_remove(i)),
        };
        drop(idle);
        Lease {
            readers: self.clone(),
            reader,
            _permit: permit,
        }
    }
}

/// A reader on loan; it goes back to the pool when dropped.
pub(crate) struct Lease {
    readers: Arc<Readers>,
    reader: Option<Reader>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut reader) = self.reader.take() else {
            return;
        };
        reader.used = Instant::now();
        // A poisoned lock only loses the reader, which is then closed.
        let Ok(mut idle) = self.readers.idle.lock() else {
            return;
        };
        let Some((partition, _)) = reader.at else {
            idle.push(reader);
            return;
        };
        let Some(i) = idle
            .iter()
            .position(|r| matches!(r.at, Some((p, _)) if p == partition))
        else {
            idle.push(reader);
            return;
        };
        // Two idle readers on one partition: keep the one further ahead (at the same
        // offset, the one holding a waited-for message).
        let rank = |r: &Reader| (r.at.map(|(_, o)| o), !r.pending.is_empty());
        let mut behind = if rank(&reader) >= rank(&idle[i]) {
            std::mem::replace(&mut idle[i], reader)
        } else {
            reader
        };
        drop(idle);
        // Outside the lock: librdkafka calls. A lease is dropped on the blocking pool
        // (its reader was used there), so blocking briefly is fine.
        behind.release();
        if let Ok(mut idle) = self.readers.idle.lock() {
            idle.push(behind);
        }
    }
}

impl Reader {
    /// Unassigns the consumer and frees what it had prefetched, so that it holds no
    /// messages until it is positioned again.
    fn release(&mut self) {
        self.at = None;
        self.pending.clear();
        if let Err(e) = self.consumer.unassign() {
            tracing::warn!(error = %e, "unassigning an idle Kafka reader failed");
        }
        // `unassign` only marks what was prefetched as outdated; polling is what frees
        // it (outdated messages are dropped as they are served). Bounded: a queue holds
        // at most `queued.max.messages.kbytes`, and nothing new arrives once unassigned.
        for _ in 0..100_000 {
            if self.consumer.poll(Duration::ZERO).is_none() {
                break;
            }
        }
    }
}

fn unavailable(what: &str, e: RdKafkaError) -> PortError {
    PortError::Unavailable(format!("Kafka {what}: {e}"))
}

fn is_out_of_range(e: &RdKafkaError) -> bool {
    matches!(
        e,
        RdKafkaError::MessageConsumption(
            RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset
        )
    )
}

impl Lease {
    /// The reader, assigned so that it yields `loc`'s messages from `offset` on.
    /// Blocking. Returns whether it had to (re)assign.
    fn position(&mut self, loc: &Location, offset: u64) -> PortResult<(&mut Reader, bool)> {
        if self.reader.is_none() {
            let consumer: BaseConsumer<ReaderContext> = self
                .readers
                .config
                .create_with_context(ReaderContext)
                .map_err(|e| unavailable("consumer creation", e))?;
            self.reader = Some(Reader {
                consumer,
                at: None,
                pending: VecDeque::new(),
                used: Instant::now(),
            });
        }
        let reader = self.reader.as_mut().expect("just ensured");
        if reader.at == Some((loc.partition, offset)) {
            return Ok((reader, false));
        }
        let start = i64::try_from(offset)
            .map_err(|_| PortError::Unavailable(format!("offset {offset} out of range")))?;
        let mut tpl = TopicPartitionList::with_capacity(1);
        tpl.add_partition_offset(&loc.topic, loc.kafka_partition, Offset::Offset(start))
            .map_err(|e| unavailable("assign", e))?;
        reader.at = None;
        reader.pending.clear();
        // `assign` replaces the whole assignment; librdkafka drops what was prefetched
        // for the old one (a version barrier), so no stale message follows.
        reader
            .consumer
            .assign(&tpl)
            .map_err(|e| unavailable("assign", e))?;
        reader.at = Some((loc.partition, offset));
        Ok((reader, true))
    }

    /// Up to `max` messages of `loc` from `from` on, stopping at `until` (exclusive; the
    /// high watermark the caller saw, so the messages before it exist). Blocking.
    /// Fails when nothing at all arrives within `timeout`.
    pub fn fetch(
        &mut self,
        loc: &Location,
        from: u64,
        max: usize,
        until: u64,
        timeout: Duration,
    ) -> PortResult<Vec<RawMessage>> {
        let deadline = Instant::now() + timeout;
        let (reader, fresh) = self.position(loc, from)?;
        let mut out = Vec::new();
        let mut next = from;
        while out.len() < max {
            match reader.pending.front() {
                Some(m) if m.offset < until => {
                    let m = reader.pending.pop_front().expect("just seen");
                    next = m.offset + 1;
                    out.push(m);
                }
                _ => break,
            }
        }
        reader.at = Some((loc.partition, next));
        let mut last_error = None;
        while out.len() < max && next < until && reader.pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match reader.consumer.poll(left.min(POLL_SLICE)) {
                None => {}
                Some(Ok(m)) => {
                    if m.topic() != loc.topic || m.partition() != loc.kafka_partition {
                        continue;
                    }
                    let Ok(offset) = u64::try_from(m.offset()) else {
                        continue;
                    };
                    if offset < next {
                        continue; // not ours to return: older than this position
                    }
                    let raw = RawMessage::from_borrowed(&m, offset);
                    if offset >= until {
                        // Past this read's end (there was a gap): keep it for the next.
                        reader.pending.push_back(raw);
                        break;
                    }
                    next = offset + 1;
                    reader.at = Some((loc.partition, next));
                    out.push(raw);
                }
                // The end of the partition (gaps of transaction markers can end it before
                // `until`). An EOF queued before this read on a re-used reader may be
                // stale (and is ignored); one after a fresh assign or after a message of
                // this read is not.
                Some(Err(RdKafkaError::PartitionEOF(_))) if fresh || !out.is_empty() => break,
                Some(Err(RdKafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) if is_out_of_range(&e) => {
                    reader.at = None;
                    return Err(PortError::Corrupt(format!(
                        "partition {} offset {from} is outside the log (deleted by \
                         retention, or the topic was recreated): {e}",
                        loc.partition
                    )));
                }
                // Transport errors and the like: librdkafka retries by itself.
                Some(Err(e)) => last_error = Some(e),
            }
        }
        if out.is_empty() && next < until && reader.pending.is_empty() {
            reader.at = None;
            return Err(PortError::Unavailable(format!(
                "Kafka: no message from partition {} at offset {from} within {timeout:?} \
                 although the log ends at {until}{}",
                loc.partition,
                last_error.map(|e| format!(" ({e})")).unwrap_or_default()
            )));
        }
        Ok(out)
    }

    /// Waits until a message at or after `offset` is in `loc`, `deadline` passes, or
    /// `cancel` is set. Blocking.
    pub fn wait(
        &mut self,
        loc: &Location,
        offset: u64,
        deadline: Instant,
        cancel: &AtomicBool,
    ) -> PortResult<Waited> {
        let (reader, _) = self.position(loc, offset)?;
        if !reader.pending.is_empty() {
            return Ok(Waited::Arrived);
        }
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Ok(Waited::Cancelled);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Waited::TimedOut);
            }
            match reader.consumer.poll(left.min(POLL_SLICE)) {
                Some(Ok(m)) => {
                    if m.topic() != loc.topic || m.partition() != loc.kafka_partition {
                        continue;
                    }
                    match u64::try_from(m.offset()) {
                        Ok(o) if o >= offset => {
                            reader.pending.push_back(RawMessage::from_borrowed(&m, o));
                            return Ok(Waited::Arrived);
                        }
                        _ => continue,
                    }
                }
                Some(Err(e)) if is_out_of_range(&e) => {
                    reader.at = None;
                    return Ok(Waited::PastEnd);
                }
                // EOF (nothing yet) and transient errors: keep waiting.
                Some(Err(_)) | None => {}
            }
        }
    }
}
