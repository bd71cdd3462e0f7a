//! The store port: projections written by the projector and read by the services.
//!
//! The projector writes a [`ProjectionBatch`] with [`ProjectionStore::apply`]: every
//! change and the log offsets it came from commit in one transaction, so after a crash
//! the projector resumes exactly after the last applied batch (nothing lost, nothing
//! doubled). Reads are split by the service that needs them.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use hrx_domain::audit::{AccessEvent, AuditEntry, Reader};
use hrx_domain::chain::ChainContext;
use hrx_domain::consent::BreakGlassWindow;
use hrx_domain::verify::KeyRecord;
use hrx_domain::{
    Envelope, EventId, FacilityId, FacilityLevel, KeyId, PatientId, Reason, RecordKind,
    SensitivityLabel, Sha256, Timestamp,
};
use tokio::sync::watch;

use crate::PortResult;
use crate::log::{ChainKey, LogPosition};

/// A projected record: what a timeline shows.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredRecord {
    pub event_id: EventId,
    pub facility_id: FacilityId,
    pub seq: u64,
    pub patient_id: PatientId,
    pub kind: RecordKind,
    pub occurred_at: Timestamp,
    pub recorded_at: Timestamp,
    pub author: String,
    pub sensitivity: Vec<SensitivityLabel>,
    pub supersedes: Option<EventId>,
    /// Set when a later record supersedes this one (shown, not hidden).
    pub superseded_by: Option<EventId>,
    pub body: Vec<u8>,
    pub event_hash: Sha256,
    pub position: LogPosition,
    /// 1, 2, 3, … per patient in projection order, assigned by the store: the follow
    /// cursor. Gap-free and in commit order, so a follower resuming after N misses
    /// nothing and sees nothing twice.
    pub patient_seq: u64,
}

/// A record to project (the store assigns `patient_seq`, and sets `superseded_by` on
/// the record named in `supersedes` if it exists).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NewRecord {
    pub event_id: EventId,
    pub facility_id: FacilityId,
    pub seq: u64,
    pub patient_id: PatientId,
    pub kind: RecordKind,
    pub occurred_at: Timestamp,
    pub recorded_at: Timestamp,
    pub author: String,
    pub sensitivity: Vec<SensitivityLabel>,
    pub supersedes: Option<EventId>,
    pub body: Vec<u8>,
    pub event_hash: Sha256,
    pub position: LogPosition,
    /// The original signed envelope, for `TimelineStore::record`. A store that shares a
    /// database with the log (embedded) may read it from there instead; a store apart
    /// from the log (PostgreSQL beside Kafka) keeps it with the record.
    pub envelope: Envelope,
}

/// A projected break-glass declaration.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BreakGlassUse {
    pub window: BreakGlassWindow,
    pub patient_id: PatientId,
    pub clinician: String,
    /// The declared reason (free text without patient data, by contract).
    pub reason: String,
    /// Reads made under it so far.
    pub reads: u64,
}

/// What a consent event is, for the store's indexes and the monitor's counts. The
/// consent state itself comes from the envelope, parsed again when read.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ConsentEventKind {
    /// A facility enrolled a patient's key.
    KeyEnrollment = 1,
    /// A facility attested a grant.
    AttestedGrant = 2,
    /// A facility revoked a grant it attested.
    FacilityRevocation = 3,
    /// A facility asked for consent.
    Request = 4,
    /// The patient's signed statements.
    PatientGrant = 10,
    PatientRevocation = 11,
    PatientDecline = 12,
    KeyRotation = 13,
    KeyRevocation = 14,
}

impl ConsentEventKind {
    pub const ALL: [ConsentEventKind; 9] = [
        Self::KeyEnrollment,
        Self::AttestedGrant,
        Self::FacilityRevocation,
        Self::Request,
        Self::PatientGrant,
        Self::PatientRevocation,
        Self::PatientDecline,
        Self::KeyRotation,
        Self::KeyRevocation,
    ];

    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// A consent event as projected: the signed envelope it came in (a facility event, or
/// a patient statement), who carried it and when the exchange received it. Reads parse
/// the envelope again (`hrx-consent`), so the consent state has one definition.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConsentEventRow {
    /// Event id (facility events) or statement id (patient statements): unique across
    /// the exchange's ids.
    pub event_id: EventId,
    pub patient_id: PatientId,
    pub kind: ConsentEventKind,
    /// The facility whose event it is; `None` for a patient statement.
    pub facility_id: Option<FacilityId>,
    /// The log entry's time: when the exchange received it.
    pub received_at: Timestamp,
    pub envelope: Envelope,
}

/// What the patient's access list holds, counted (for the national center).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct AccessCounts {
    pub allowed: u64,
    pub denied: u64,
    pub break_glass: u64,
}

/// The facts a consent decision needs about one record (never its content).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecordFactsRow {
    pub facility_id: FacilityId,
    pub kind: RecordKind,
    pub occurred_at: Timestamp,
    pub sensitivity: Vec<SensitivityLabel>,
}

/// A facility as registered.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FacilityInfo {
    pub facility_id: FacilityId,
    pub name: String,
    pub province: String,
    pub level: FacilityLevel,
}

/// A registered key with its revocation reason.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyInfo {
    pub key: KeyRecord,
    pub revocation_reason: Option<String>,
}

/// A refused event, for the monitor. Never holds the payload.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RejectionRow {
    /// Set when the event was in the log (projector rejections).
    pub position: Option<LogPosition>,
    /// Set when the header could be read.
    pub facility_id: Option<FacilityId>,
    pub event_id: Option<EventId>,
    pub seq: Option<u64>,
    pub event_hash: Option<Sha256>,
    pub reason: Reason,
    pub field: Option<&'static str>,
    pub message: String,
    pub at: Timestamp,
}

/// One change the projector makes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Projection {
    Record(NewRecord),
    /// A key enrollment, grant, revocation, request or patient statement.
    ConsentEvent(ConsentEventRow),
    /// A break-glass declaration; the store also appends its `BreakGlass` audit entry.
    BreakGlass(BreakGlassUse, AccessEvent),
    FacilityRegistered(FacilityInfo),
    KeyAdded(KeyRecord),
    KeyRevoked {
        key_id: KeyId,
        revoked_at: Timestamp,
        /// The registry seq of the revocation (events judged against an earlier
        /// registry head do not see it).
        revoked_seq: u64,
        reason: String,
    },
    /// A client certificate taken back; a serial revoked again keeps its first row.
    CertificateRevoked(RevokedCertificate),
    Rejection(RejectionRow),
}

/// A revoked client certificate, as the registry recorded it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RevokedCertificate {
    pub serial: hrx_domain::event::CertificateSerial,
    pub principal: String,
    pub revoked_at: Timestamp,
    pub reason: String,
    /// The registry seq of the revocation.
    pub registry_seq: u64,
}

/// An event that took its place in a chain (accepted, or rejected for content only).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChainLink {
    pub chain: ChainKey,
    pub seq: u64,
    pub event_id: EventId,
    pub event_hash: Sha256,
    pub position: LogPosition,
    /// The event's recorded_at: the next event of the chain may not claim an earlier one.
    pub recorded_at: Option<Timestamp>,
}

/// Counters for the monitor, per facility, added by a batch.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StatsDelta {
    pub facility_id: FacilityId,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: Vec<(Reason, u64)>,
    pub last_seen: Timestamp,
}

/// Everything one projector batch changes, committed together with `offsets`.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ProjectionBatch {
    pub projections: Vec<Projection>,
    pub links: Vec<ChainLink>,
    pub stats: Vec<StatsDelta>,
    /// (partition, next offset to read): where the projector resumes.
    pub offsets: Vec<(u32, u64)>,
    /// (partition, next offset) the batch was read from. `apply` refuses the batch with
    /// `PortError::Conflict` when the store's offset differs (0 when absent): another
    /// projector replica — a partition reassigned during a rebalance — applied those
    /// entries first. This fencing is what makes two replicas safe.
    pub expected_offsets: Vec<(u32, u64)>,
}

/// What the projector needs to start.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ProjectorSnapshot {
    /// (partition, next offset to read); partitions never applied are absent (start at 0).
    pub offsets: Vec<(u32, u64)>,
    /// Every registered facility key (root keys come from configuration).
    pub keys: Vec<KeyRecord>,
}

/// The projector's side of the store.
#[async_trait]
pub trait ProjectionStore: Send + Sync + 'static {
    async fn projector_snapshot(&self) -> PortResult<ProjectorSnapshot>;

    /// The projected chain around an incoming event: the head of `chain`, and the
    /// projected events with this id and at this seq.
    async fn chain_context(
        &self,
        chain: &ChainKey,
        event_id: EventId,
        seq: u64,
    ) -> PortResult<ChainContext>;

    /// [`chain_context`](Self::chain_context) for several `(event_id, seq)` of one
    /// chain, in order: what the projector needs for a batch read from the log. An
    /// adapter whose lookups cost a round trip each overrides it.
    async fn chain_contexts(
        &self,
        chain: &ChainKey,
        links: &[(EventId, u64)],
    ) -> PortResult<Vec<ChainContext>> {
        let mut contexts = Vec::with_capacity(links.len());
        for &(event_id, seq) in links {
            contexts.push(self.chain_context(chain, event_id, seq).await?);
        }
        Ok(contexts)
    }

    /// A projected consent event by id (a facility's revocation names a grant).
    async fn consent_event(&self, event_id: EventId) -> PortResult<Option<ConsentEventRow>>;

    /// Whether a projected record, consent event or break-glass declaration already has
    /// this event id. Event ids are unique across the exchange; the projector rejects a
    /// reused one as content instead of letting the batch fail on it forever.
    async fn event_id_taken(&self, event_id: EventId) -> PortResult<bool>;

    /// Those of `ids` for which [`event_id_taken`](Self::event_id_taken) holds. An
    /// adapter whose lookups cost a round trip each overrides it.
    async fn event_ids_taken(&self, ids: &[EventId]) -> PortResult<HashSet<EventId>> {
        let mut taken = HashSet::new();
        for &id in ids {
            if self.event_id_taken(id).await? {
                taken.insert(id);
            }
        }
        Ok(taken)
    }

    /// Applies a batch atomically, with its offsets. After a failure nothing of it is
    /// visible.
    async fn apply(&self, batch: ProjectionBatch) -> PortResult<()>;

    /// Deletes every projection and offset (the log is untouched): `hrx reproject`.
    async fn reset_projections(&self) -> PortResult<()>;

    /// A counter that increases after every applied batch: followers and revocation
    /// checks wake on it. `watch` keeps only the latest value, so no wake-up is lost.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Which patients the batches behind [`changes`](Self::changes) touched, by bucket
    /// ([`crate::changed`]): bumped before `changes` advances, so a reader woken by
    /// `changes` whose patient's generation did not move need not re-read.
    fn patient_changes(&self) -> Arc<crate::changed::PatientChanges>;
}

/// A page request, newest first by `occurred_at`, ties broken by `event_id` descending.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TimelineQuery {
    pub patient_id: PatientId,
    /// Empty: all kinds.
    pub kinds: Vec<RecordKind>,
    /// Empty: all authoring facilities.
    pub facilities: Vec<FacilityId>,
    pub occurred_from: Option<Timestamp>,
    /// Exclusive.
    pub occurred_until: Option<Timestamp>,
    /// Only records strictly after this (occurred_at, event_id) in the order above.
    pub after: Option<(Timestamp, EventId)>,
    pub limit: usize,
}

/// Timeline reads.
#[async_trait]
pub trait TimelineStore: Send + Sync + 'static {
    async fn timeline(&self, query: &TimelineQuery) -> PortResult<Vec<StoredRecord>>;

    /// One record and its original envelope (read from the log entry it came from).
    async fn record(&self, event_id: EventId) -> PortResult<Option<(StoredRecord, Envelope)>>;

    /// A patient's records with `patient_seq` > `after`, ascending, at most `limit`.
    async fn records_after(
        &self,
        patient_id: &PatientId,
        after: u64,
        limit: usize,
    ) -> PortResult<Vec<StoredRecord>>;

    /// The decision facts of every record of the patient (to count what a reader may not
    /// see, whatever its filters).
    async fn record_facts(&self, patient_id: &PatientId) -> PortResult<Vec<RecordFactsRow>>;
}

/// Consent state reads, and what a facility's consent events are judged against.
#[async_trait]
pub trait ConsentStore: Send + Sync + 'static {
    /// The patient's consent events, oldest first, at most `limit` (any order would do:
    /// the fold sorts them). A read asks for one more than it accepts, to tell "too
    /// many" from "all".
    async fn consent_events_up_to(
        &self,
        patient_id: &PatientId,
        limit: usize,
    ) -> PortResult<Vec<ConsentEventRow>>;

    /// Every consent event about the patient (tests and tools; reads are bounded).
    async fn consent_events(&self, patient_id: &PatientId) -> PortResult<Vec<ConsentEventRow>> {
        self.consent_events_up_to(patient_id, usize::MAX).await
    }

    /// The break-glass windows declared for the patient, oldest first, at most `limit`.
    async fn break_glass_up_to(
        &self,
        patient_id: &PatientId,
        limit: usize,
    ) -> PortResult<Vec<BreakGlassWindow>>;

    /// Every break-glass window declared for the patient (tests and tools).
    async fn break_glass(&self, patient_id: &PatientId) -> PortResult<Vec<BreakGlassWindow>> {
        self.break_glass_up_to(patient_id, usize::MAX).await
    }

    /// Every break-glass declaration for the patient, oldest first, with its reads
    /// (the patient's own view).
    async fn break_glass_uses_of(&self, patient_id: &PatientId) -> PortResult<Vec<BreakGlassUse>>;

    /// recorded_at of the latest record `facility` authored for the patient: its
    /// standing.
    async fn latest_authored(
        &self,
        facility: &FacilityId,
        patient_id: &PatientId,
    ) -> PortResult<Option<Timestamp>>;

    /// How many break-glass declarations `facility` made with declared_at after `since`.
    async fn break_glass_declared_since(
        &self,
        facility: &FacilityId,
        since: Timestamp,
    ) -> PortResult<u64>;

    /// Records a patient request id as used; false if it was used already. Ids older
    /// than `forget_before` may be forgotten (their requests are refused by time).
    async fn claim_request_id(
        &self,
        request_id: EventId,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> PortResult<bool>;
}

/// The hash-chained audit log. Append-only: no method edits or deletes.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends an access event, chained after the last entry, and adds `authors`
    /// (author facility, records returned) to the exchange matrix; counts a read
    /// against every break-glass window among the event's bases.
    async fn append_access(
        &self,
        event: AccessEvent,
        authors: &[(FacilityId, u64)],
    ) -> PortResult<AuditEntry>;

    /// Appends several access events in one transaction, chained in the given order:
    /// a group commit, one durable write for many concurrent reads. All or nothing.
    async fn append_accesses(&self, batch: Vec<AccessAppend>) -> PortResult<Vec<AuditEntry>>;

    /// The patient's access events with seq > `after`, ascending, at most `limit`; only
    /// those by `reader` when given.
    async fn accesses(
        &self,
        patient_id: &PatientId,
        reader: Option<&Reader>,
        after: u64,
        limit: usize,
    ) -> PortResult<Vec<AuditEntry>>;

    /// The patient's access events, counted.
    async fn access_counts(&self, patient_id: &PatientId) -> PortResult<AccessCounts>;
}

/// One access event to append, with the (author facility, records returned) pairs it
/// adds to the exchange matrix.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AccessAppend {
    pub event: AccessEvent,
    pub authors: Vec<(FacilityId, u64)>,
}

/// Registry reads.
#[async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    async fn facilities(&self) -> PortResult<Vec<FacilityInfo>>;
    async fn facility(&self, id: &FacilityId) -> PortResult<Option<FacilityInfo>>;
    /// Keys of one facility, or every key.
    async fn keys(&self, facility: Option<&FacilityId>) -> PortResult<Vec<KeyInfo>>;
    /// Every revoked client certificate, in registry order (a short list: certificates
    /// are short-lived, and a revoked one matters only until it would have expired).
    async fn revoked_certificates(&self) -> PortResult<Vec<RevokedCertificate>>;
}

/// Per-facility counters and head.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FacilityStats {
    pub facility_id: FacilityId,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: Vec<(Reason, u64)>,
    pub last_seen: Option<Timestamp>,
    /// Projected head seq (0 when none).
    pub head_seq: u64,
}

/// Reader × author counts.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ExchangeCell {
    pub reader: FacilityId,
    pub author: FacilityId,
    pub records: u64,
    pub accesses: u64,
}

/// Monitor reads (metadata only).
#[async_trait]
pub trait MonitorStore: Send + Sync + 'static {
    async fn facility_stats(&self) -> PortResult<Vec<FacilityStats>>;
    async fn exchange_matrix(&self) -> PortResult<Vec<ExchangeCell>>;
    /// Oldest first, declared at or after `since`.
    async fn break_glass_uses(&self, since: Option<Timestamp>) -> PortResult<Vec<BreakGlassUse>>;
    /// Facility-attested grants received at or after `since`, newest first.
    async fn attested_grants(
        &self,
        since: Option<Timestamp>,
        limit: usize,
    ) -> PortResult<Vec<ConsentEventRow>>;
    /// Newest first.
    async fn rejections(
        &self,
        facility: Option<&FacilityId>,
        limit: usize,
    ) -> PortResult<Vec<RejectionRow>>;
    /// (partition, next offset to project).
    async fn projected_offsets(&self) -> PortResult<Vec<(u32, u64)>>;
}

/// Everything a whole node needs from its store.
pub trait Store:
    ProjectionStore + TimelineStore + ConsentStore + AuditStore + RegistryStore + MonitorStore
{
}

impl<T> Store for T where
    T: ProjectionStore + TimelineStore + ConsentStore + AuditStore + RegistryStore + MonitorStore
{
}
