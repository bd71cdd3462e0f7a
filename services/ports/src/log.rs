//! The event log port: an append-only, partitioned log of signed envelopes, plus the
//! chain index ingest keeps over it to answer accepted / duplicate / rejected before an
//! event is written.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use hrx_domain::chain::ChainContext;
use hrx_domain::{Envelope, EventId, FacilityId, PatientId, Sha256, Timestamp};
use tokio::sync::watch;

use crate::PortResult;

/// Where an entry sits in the log. The embedded log has one partition.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct LogPosition {
    pub partition: u32,
    pub offset: u64,
}

/// Which hash chain an event belongs to. Also the log's partitioning key: one chain
/// lives in one partition, so its events are read in order.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum ChainKey {
    Facility(FacilityId),
    /// The national center's registry chain.
    Registry,
    /// One patient's signed statements, in the order the exchange received them. The
    /// exchange numbers them (the patient signs no chain: their app may be new, or
    /// several); the statement id is the event id.
    Patient(PatientId),
    /// The exchange's ingest reports (what it refused before the log, and duplicates)
    /// for one authenticated caller, numbered by the exchange; `None` for patients'
    /// statements. A facility's reports go to the partition of its own chain, so that a
    /// report and the events of its call are one append to one partition.
    Reports(Option<FacilityId>),
}

/// The message-key prefix of a patient's statement chain.
const PATIENT_KEY_PREFIX: &str = "patient:";
/// The message-key prefix of a report chain, and the key of the patients' one.
const REPORTS_KEY_PREFIX: &str = "reports:";
const PATIENTS_REPORTS_KEY: &str = "reports:patients";

impl ChainKey {
    /// `"26012"` for a facility, `"registry"` for the registry, `"patient:<id>"` for a
    /// patient's statements, `"reports:26012"` and `"reports:patients"` for ingest
    /// reports: the message key.
    pub fn as_key(&self) -> Cow<'_, str> {
        match self {
            ChainKey::Facility(f) => Cow::Borrowed(f.as_str()),
            ChainKey::Registry => Cow::Borrowed("registry"),
            ChainKey::Patient(p) => Cow::Owned(format!("{PATIENT_KEY_PREFIX}{}", p.as_str())),
            ChainKey::Reports(Some(f)) => Cow::Owned(format!("{REPORTS_KEY_PREFIX}{}", f.as_str())),
            ChainKey::Reports(None) => Cow::Borrowed(PATIENTS_REPORTS_KEY),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        if s == "registry" {
            Some(ChainKey::Registry)
        } else if s == PATIENTS_REPORTS_KEY {
            Some(ChainKey::Reports(None))
        } else if let Some(f) = s.strip_prefix(REPORTS_KEY_PREFIX) {
            FacilityId::parse(f)
                .ok()
                .map(|f| ChainKey::Reports(Some(f)))
        } else if let Some(p) = s.strip_prefix(PATIENT_KEY_PREFIX) {
            PatientId::parse(p).ok().map(ChainKey::Patient)
        } else {
            FacilityId::parse(s).ok().map(ChainKey::Facility)
        }
    }
}

impl fmt::Display for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // A patient id is never written out whole (logs, errors): the key's prefix
            // says enough to tell the chains apart.
            ChainKey::Patient(_) => f.write_str("patient chain"),
            other => f.write_str(&other.as_key()),
        }
    }
}

/// One envelope to append, with its place in its chain and what ingest judged it by.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Append {
    pub chain: ChainKey,
    pub seq: u64,
    pub event_id: EventId,
    pub event_hash: Sha256,
    pub envelope: Envelope,
    /// When the exchange received it (whole milliseconds, which every log keeps
    /// exactly): the log's `appended_at`, the time key validity is judged at.
    pub received_at: Timestamp,
    /// The registry chain's head seq that ingest judged the signing key against; the
    /// projector and every replay judge it against the same.
    pub registry_seq: Option<u64>,
    /// The event's own recorded_at (facility and registry events), kept in the chain
    /// index so that the next event's can be checked against it.
    pub recorded_at: Option<Timestamp>,
}

/// An entry read back from the log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LogEntry {
    pub position: LogPosition,
    pub envelope: Envelope,
    /// When the exchange received the entry.
    pub appended_at: Timestamp,
    /// The registry head seq ingest judged it against (`None` for entries written
    /// before the log recorded it).
    pub registry_seq: Option<u64>,
}

impl LogEntry {
    /// What the entry was received as, for verification.
    pub fn receipt(&self) -> hrx_domain::verify::Receipt {
        hrx_domain::verify::Receipt {
            received_at: self.appended_at,
            registry_seq: self.registry_seq,
        }
    }
}

/// Ingest's view of a chain around an incoming event, with the log position of the
/// prior event that has the same id or seq (to answer "duplicate, at position P").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogChainContext {
    pub context: ChainContext,
    pub prior_position: Option<LogPosition>,
    /// The event id is already held by another chain's entry. Event ids are unique
    /// across the exchange, so ingest refuses such an event instead of appending one the
    /// projector would have to reject (and could reject differently on replay, since
    /// which of two chains' entries it applies first depends on partition order).
    pub id_in_other_chain: bool,
}

/// The append-only event log.
///
/// Appends to one chain must be serialised by the caller (ingest holds a lock per
/// chain); the log rejects an append whose (chain, seq) or (chain, event_id) is taken,
/// or whose event id another chain holds, with
/// [`PortError::Conflict`](crate::PortError::Conflict), so a race can never fork a
/// chain in the log nor give one event id to two chains.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Number of partitions (1 for the embedded log).
    fn partitions(&self) -> u32;

    /// The partition a chain's events go to. Every event of one chain is in one
    /// partition, in chain order; the projector uses the registry's partition to project
    /// registry events (keys) before the facility events that need them.
    fn partition_of(&self, chain: &ChainKey) -> u32;

    /// Head of `chain` as written to the log, and the prior events with this event id
    /// and at this seq, if any.
    async fn chain_context(
        &self,
        chain: &ChainKey,
        event_id: EventId,
        seq: u64,
    ) -> PortResult<LogChainContext>;

    /// [`chain_context`](Self::chain_context) for several `(event_id, seq)` of one
    /// chain, in order, as of one moment: what ingest needs for a submitted batch. An
    /// adapter whose lookups cost a round trip each overrides it.
    async fn chain_contexts(
        &self,
        chain: &ChainKey,
        links: &[(EventId, u64)],
    ) -> PortResult<Vec<LogChainContext>> {
        let mut contexts = Vec::with_capacity(links.len());
        for &(event_id, seq) in links {
            contexts.push(self.chain_context(chain, event_id, seq).await?);
        }
        Ok(contexts)
    }

    /// Appends a batch atomically (all or nothing) and durably; returns the positions in
    /// order. Only after this returns may ingest answer "accepted".
    async fn append(&self, batch: Vec<Append>) -> PortResult<Vec<LogPosition>>;

    /// Up to `max` entries of `partition` from `offset` on, in order.
    async fn read(&self, partition: u32, offset: u64, max: usize) -> PortResult<Vec<LogEntry>>;

    /// The offset the next append to `partition` will get.
    async fn end_offset(&self, partition: u32) -> PortResult<u64>;

    /// Returns once `partition` may hold an entry at `offset`, or after `timeout`.
    async fn wait_for(&self, partition: u32, offset: u64, timeout: Duration);

    /// Joins the projector group `group`: the partitions this process should project,
    /// as they change. A log without groups (embedded) assigns every partition, for
    /// good; the Kafka log follows its consumer group, so projector replicas share the
    /// partitions.
    async fn join(&self, group: &str) -> PortResult<watch::Receiver<Vec<u32>>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_keys_round_trip_through_their_message_keys() {
        let chains = [
            ChainKey::Facility(FacilityId::parse("26012").unwrap()),
            ChainKey::Registry,
            ChainKey::Patient(PatientId::parse("026062001234").unwrap()),
            ChainKey::Reports(Some(FacilityId::parse("26012").unwrap())),
            ChainKey::Reports(None),
        ];
        for c in chains {
            assert_eq!(ChainKey::parse(&c.as_key()), Some(c.clone()), "{c}");
        }
        assert_eq!(ChainKey::parse("reports:"), None);
        assert_eq!(ChainKey::parse("reports:2601"), None);
    }
}
