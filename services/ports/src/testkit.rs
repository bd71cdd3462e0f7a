//! The behaviour suite every event-log and store adapter must pass (feature `testkit`).
//!
//! Each function is one behaviour, written against the traits only, and panics (like a
//! failed `assert!`) when the adapter breaks it. An adapter's test crate runs each
//! against a **fresh, empty** adapter, one `#[tokio::test]` apiece:
//!
//! ```ignore
//! #[tokio::test]
//! async fn log_appends_reads_and_orders() {
//!     let node = fresh_node();
//!     hrx_ports::testkit::log_appends_reads_and_orders(&node).await;
//! }
//! ```
//!
//! What the suite pins down beyond the trait signatures (and so what every adapter
//! promises): log offsets increase within a partition but may have gaps (Kafka's
//! transaction markers take offsets); a chain's entries share one partition, patients'
//! statement chains included; an entry's `appended_at` is exactly the `received_at` it
//! was appended with (whole milliseconds, which every log keeps), not the log's clock;
//! chain heads carry their event's `recorded_at` (`None` where it was not recorded);
//! break-glass windows read back in projection order; a
//! failed `append` writes nothing; consent events read back byte for byte; the audit
//! chain starts at seq 1 after the zero hash and holds every reader's accesses, refused
//! ones too; break-glass read counts and the audit entry of a declaration survive
//! `reset_projections` and a replay. Orders the traits leave open (consent events,
//! record facts, facilities, keys, facility stats, the exchange matrix) are compared as
//! sets.
//!
//! The fixtures (ids, envelopes, records, consent events, …) are public so that
//! adapters' own tests can build data the same way.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use hrx_domain::audit::{
    AccessAction, AccessEvent, AccessOutcome, AuditEntry, AuditFormat, Reader,
};
use hrx_domain::chain::{self, ChainHead, ChainStep};
use hrx_domain::consent::{Basis, BreakGlassWindow, ConsentForm};
use hrx_domain::event::Link;
use hrx_domain::verify::{KeyOwner, KeyRecord, Receipt};
use hrx_domain::{
    Envelope, EventId, FacilityId, FacilityLevel, PatientId, PayloadType, PublicKey, Purpose,
    Reason, RecordKind, SensitivityLabel, Sha256, Timestamp,
};

use crate::{
    AccessAppend, AccessCounts, Append, BreakGlassUse, ChainKey, ChainLink, ConsentEventKind,
    ConsentEventRow, EventLog, ExchangeCell, FacilityInfo, FacilityStats, LogPosition, NewRecord,
    PortError, PortResult, Projection, ProjectionBatch, RecordFactsRow, RejectionRow, StatsDelta,
    Store, StoredRecord, TimelineQuery,
};

// ── Fixtures ─────────────────────────────────────────────────────────────────────────

/// A general hospital.
pub const F1: &str = "26001";
/// A provincial hospital.
pub const F2: &str = "26012";
/// A commune clinic.
pub const F3: &str = "26105";
/// A patient.
pub const P1: &str = "026062001234";
/// Another patient.
pub const P2: &str = "001085012345";

/// The suite's epoch: `at(0)`.
const T0: i64 = 1_800_000_000;

/// A distinct, valid event id for each `n` (< 2^48), ordered like `n`.
pub fn event_id(n: u64) -> EventId {
    EventId::parse(&format!("00000000-0000-7000-8000-{n:012x}")).expect("a canonical UUID")
}

pub fn facility(code: &str) -> FacilityId {
    FacilityId::parse(code).expect("a 5-digit facility id")
}

pub fn patient(code: &str) -> PatientId {
    PatientId::parse(code).expect("a 12-digit patient id")
}

/// `seconds` after the suite's epoch (2027-01-15).
pub fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix_seconds(T0 + seconds).expect("in range")
}

/// A log position in partition 0, for store-only tests (stores do not check that the
/// log holds an entry there).
pub fn pos(offset: u64) -> LogPosition {
    LogPosition {
        partition: 0,
        offset,
    }
}

/// A distinct envelope for each `n`. Not validly signed: logs and stores don't verify.
pub fn envelope(n: u64) -> Envelope {
    Envelope {
        payload_type: PayloadType::FACILITY_EVENT.to_owned(),
        payload: format!("facility event {n}").into_bytes(),
        key_id: "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925".to_owned(),
        signature: vec![(n % 251) as u8; 64],
    }
}

/// Envelope `n` as event `n` at `seq` of `chain`, recorded at `at(n)`, judged against
/// registry seq `n`, and received now in whole milliseconds, as ingest chooses it. (Near
/// the real clock: Kafka refuses timestamps more than an hour ahead of the broker's,
/// `log.message.timestamp.after.max.ms`, by default since Kafka 4.0.)
pub fn append(chain: &ChainKey, seq: u64, n: u64) -> Append {
    let envelope = envelope(n);
    Append {
        chain: chain.clone(),
        seq,
        event_id: event_id(n),
        event_hash: envelope.event_hash(),
        envelope,
        received_at: Timestamp::now().truncated_to_millis(),
        registry_seq: Some(n),
        recorded_at: Some(at(n as i64)),
    }
}

/// Record `n` (from envelope `n`) of `facility` at `seq`, about `patient`: an
/// observation that occurred at `at(n)`, at log position `pos(n)`. Adjust fields with
/// struct update syntax.
pub fn record(n: u64, facility: &FacilityId, seq: u64, patient: &PatientId) -> NewRecord {
    NewRecord {
        event_id: event_id(n),
        facility_id: facility.clone(),
        seq,
        patient_id: patient.clone(),
        kind: RecordKind::Observation,
        occurred_at: at(n as i64),
        recorded_at: at(n as i64 + 60),
        author: format!("BS-{n:04}"),
        sensitivity: Vec::new(),
        supersedes: None,
        body: format!(r#"{{"resourceType":"Observation","id":"obs-{n}"}}"#).into_bytes(),
        event_hash: envelope(n).event_hash(),
        position: pos(n),
        envelope: envelope(n),
    }
}

/// What a store must return for `r` once projected.
pub fn stored(r: &NewRecord, patient_seq: u64, superseded_by: Option<EventId>) -> StoredRecord {
    StoredRecord {
        event_id: r.event_id,
        facility_id: r.facility_id.clone(),
        seq: r.seq,
        patient_id: r.patient_id.clone(),
        kind: r.kind,
        occurred_at: r.occurred_at,
        recorded_at: r.recorded_at,
        author: r.author.clone(),
        sensitivity: r.sensitivity.clone(),
        supersedes: r.supersedes,
        superseded_by,
        body: r.body.clone(),
        event_hash: r.event_hash,
        position: r.position,
        patient_seq,
    }
}

/// The chain link a projected record makes in its facility's chain.
pub fn link(r: &NewRecord) -> ChainLink {
    ChainLink {
        chain: ChainKey::Facility(r.facility_id.clone()),
        seq: r.seq,
        event_id: r.event_id,
        event_hash: r.event_hash,
        position: r.position,
        recorded_at: Some(r.recorded_at),
    }
}

/// A batch of records with their links and offsets `(0, last position + 1)`.
pub fn record_batch(records: &[NewRecord]) -> ProjectionBatch {
    ProjectionBatch {
        projections: records.iter().cloned().map(Projection::Record).collect(),
        links: records.iter().map(link).collect(),
        stats: Vec::new(),
        offsets: records
            .iter()
            .map(|r| r.position.offset + 1)
            .max()
            .map(|next| vec![(0, next)])
            .unwrap_or_default(),
        expected_offsets: Vec::new(),
    }
}

/// The envelope of consent event `n`: a facility event, or (`facility` false) a
/// patient's signed statement. Its payload ends in bytes that are not UTF-8, which a
/// store must keep exactly. Not validly signed: stores don't verify.
pub fn consent_envelope(n: u64, facility: bool) -> Envelope {
    let mut payload = format!("consent event {n}").into_bytes();
    payload.extend_from_slice(&[0x00, 0xff, 0xfe, (n % 256) as u8]);
    let (payload_type, key_id) = if facility {
        (
            PayloadType::FACILITY_EVENT,
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925".to_owned(),
        )
    } else {
        (PayloadType::PATIENT_STATEMENT, format!("{:064x}", n + 1))
    };
    Envelope {
        payload_type: payload_type.to_owned(),
        payload,
        key_id,
        signature: (0..64u8)
            .map(|i| i.wrapping_mul(3).wrapping_add(n as u8))
            .collect(),
    }
}

/// Consent event `n` of `kind` about `patient`: facility `by`'s event, or with `None`
/// the patient's statement; received at `at(n)`. Adjust fields with struct update
/// syntax.
pub fn consent_event(
    n: u64,
    kind: ConsentEventKind,
    patient: &PatientId,
    by: Option<&FacilityId>,
) -> ConsentEventRow {
    ConsentEventRow {
        event_id: event_id(n),
        patient_id: patient.clone(),
        kind,
        facility_id: by.cloned(),
        received_at: at(n as i64),
        envelope: consent_envelope(n, by.is_some()),
    }
}

/// A batch of consent events, nothing else.
pub fn consent_batch(rows: &[ConsentEventRow]) -> ProjectionBatch {
    ProjectionBatch {
        projections: rows.iter().cloned().map(Projection::ConsentEvent).collect(),
        ..ProjectionBatch::default()
    }
}

/// Break-glass declaration `n` by `by` for `patient` at `at(n)`, one hour long, with a
/// reason, and the audit event the projector hands the store with it.
pub fn break_glass(n: u64, patient: &PatientId, by: &FacilityId) -> (BreakGlassUse, AccessEvent) {
    let window = BreakGlassWindow {
        event_id: event_id(n),
        facility_id: by.clone(),
        declared_at: at(n as i64),
        expires_at: at(n as i64 + 3600),
    };
    let event = AccessEvent {
        reader: Reader::Facility(by.clone()),
        patient: patient.clone(),
        purpose: Some(Purpose::Emergency),
        action: AccessAction::BreakGlass,
        bases: vec![Basis::BreakGlass(event_id(n))],
        records_returned: 0,
        records_withheld: 0,
        at: at(n as i64),
        outcome: AccessOutcome::Allowed,
    };
    let use_ = BreakGlassUse {
        window,
        patient_id: patient.clone(),
        clinician: format!("BS-{n:04}"),
        reason: format!("unconscious on arrival, no relative reachable ({n})"),
        reads: 0,
    };
    (use_, event)
}

/// An allowed timeline read by facility `reader` of `patient` at `at(t)`, for
/// treatment. Other readers, actions and outcomes by struct update syntax.
pub fn access(
    reader: &FacilityId,
    patient: &PatientId,
    bases: Vec<Basis>,
    returned: u64,
    t: i64,
) -> AccessEvent {
    AccessEvent {
        reader: Reader::Facility(reader.clone()),
        patient: patient.clone(),
        purpose: Some(Purpose::Treatment),
        action: AccessAction::GetTimeline,
        bases,
        records_returned: returned,
        records_withheld: 1,
        at: at(t),
        outcome: AccessOutcome::Allowed,
    }
}

/// A consent basis: grant `n` in `form`.
pub fn consent_basis(n: u64, form: ConsentForm) -> Basis {
    Basis::Consent {
        grant: event_id(n),
        form,
    }
}

/// A rejection of event `n` (seq `n`) of `facility` at `at(t)`; `position` set for a
/// projector rejection, `None` for ingest's.
pub fn rejection(
    n: u64,
    facility: Option<&FacilityId>,
    reason: Reason,
    t: i64,
    position: Option<LogPosition>,
) -> RejectionRow {
    RejectionRow {
        position,
        facility_id: facility.cloned(),
        event_id: Some(event_id(n)),
        seq: Some(n),
        event_hash: Some(envelope(n).event_hash()),
        reason,
        field: (reason == Reason::InvalidField).then_some("record.kind"),
        message: format!("{reason} (test rejection {n})"),
        at: at(t),
    }
}

/// Key `n` of `owner`, valid from `at(0)`, added by registry event `n`.
pub fn key(n: u8, owner: &FacilityId) -> KeyRecord {
    KeyRecord {
        public_key: PublicKey::from_bytes([n; 32]),
        owner: KeyOwner::Facility(owner.clone()),
        valid_from: at(0),
        revoked_at: None,
        registered_seq: u64::from(n),
        revoked_seq: None,
    }
}

/// A timeline page request for `patient` with no filters.
pub fn timeline_query(patient: &PatientId, limit: usize) -> TimelineQuery {
    TimelineQuery {
        patient_id: patient.clone(),
        kinds: Vec::new(),
        facilities: Vec::new(),
        occurred_from: None,
        occurred_until: None,
        after: None,
        limit,
    }
}

fn ok<T>(r: PortResult<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn assert_conflict<T: Debug>(r: PortResult<T>, what: &str) {
    match r {
        Err(PortError::Conflict(_)) => {}
        other => panic!("{what}: expected a conflict, got {other:?}"),
    }
}

fn ids(records: &[StoredRecord]) -> Vec<EventId> {
    records.iter().map(|r| r.event_id).collect()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

// ── Event log ────────────────────────────────────────────────────────────────────────

/// Appends come back from `read` as written, in order, at the positions `append`
/// returned; a chain's entries share a partition with increasing offsets; `max` bounds a
/// read; `end_offset` is past every entry; `appended_at` is the `received_at` appended
/// and `registry_seq` the one appended.
pub async fn log_appends_reads_and_orders<L: EventLog + ?Sized>(log: &L) {
    assert!(log.partitions() >= 1);
    for p in 0..log.partitions() {
        assert_eq!(
            ok(log.end_offset(p).await, "end_offset"),
            0,
            "a fresh log is empty"
        );
    }
    assert!(ok(log.append(Vec::new()).await, "empty append").is_empty());

    let a = ChainKey::Facility(facility(F1));
    let b = ChainKey::Facility(facility(F2));
    let appended = [
        append(&a, 1, 1),
        append(&a, 2, 2),
        append(&b, 1, 3),
        append(&a, 3, 4),
    ];
    let first = ok(log.append(appended[..3].to_vec()).await, "append");
    let second = ok(log.append(appended[3..].to_vec()).await, "append");
    assert_eq!(
        (first.len(), second.len()),
        (3, 1),
        "one position per entry"
    );
    let positions = [first, second].concat();

    // A chain lives in one partition, in order.
    let chain_a = [positions[0], positions[1], positions[3]];
    assert!(chain_a.iter().all(|p| p.partition == chain_a[0].partition));
    assert!(chain_a.windows(2).all(|w| w[0].offset < w[1].offset));

    // Each entry reads back where append said, as written, stamped with the time it
    // was received.
    for ((position, n), a) in positions.iter().zip([1, 2, 3, 4]).zip(&appended) {
        let got = ok(
            log.read(position.partition, position.offset, 1).await,
            "read",
        );
        assert_eq!(got.len(), 1, "read of one entry");
        assert_eq!(got[0].position, *position);
        assert_eq!(got[0].envelope, envelope(n), "envelope {n} as appended");
        assert_eq!(
            (got[0].appended_at, got[0].registry_seq),
            (a.received_at, a.registry_seq),
            "entry {n}"
        );
        assert!(ok(log.end_offset(position.partition).await, "end_offset") > position.offset);
    }

    // A whole partition reads in offset order; `max` bounds a read; the end is empty.
    let p = chain_a[0].partition;
    let all = ok(log.read(p, 0, 100).await, "read all");
    assert!(
        all.windows(2)
            .all(|w| w[0].position.offset < w[1].position.offset)
    );
    let a_envelopes: Vec<_> = all
        .iter()
        .filter(|e| chain_a.contains(&e.position))
        .map(|e| e.envelope.clone())
        .collect();
    assert_eq!(a_envelopes, vec![envelope(1), envelope(2), envelope(4)]);
    let two = ok(log.read(p, 0, 2).await, "read two");
    assert_eq!(two, all[..2].to_vec());
    let end = ok(log.end_offset(p).await, "end_offset");
    assert!(ok(log.read(p, end, 10).await, "read at end").is_empty());
    let from_second = ok(log.read(p, chain_a[1].offset, 100).await, "read from");
    assert_eq!(from_second[0].position, chain_a[1]);
}

/// A batch that takes a used (chain, seq) or (chain, event_id), or repeats one within
/// itself, or uses an event id another chain holds, fails with `Conflict` and writes
/// nothing; the chain is as before, and valid appends still go through.
pub async fn log_refuses_chain_conflicts_atomically<L: EventLog + ?Sized>(log: &L) {
    let a = ChainKey::Facility(facility(F1));
    let b = ChainKey::Facility(facility(F2));
    let written = ok(
        log.append(vec![append(&a, 1, 1), append(&a, 2, 2)]).await,
        "append",
    );
    let p = written[0].partition;
    let end = ok(log.end_offset(p).await, "end_offset");

    // seq 2 is taken: the good entry before it must not be written either.
    assert_conflict(
        log.append(vec![append(&a, 3, 3), append(&a, 2, 4)]).await,
        "a taken seq",
    );
    // event 1 is taken, at another seq.
    let reused = Append {
        event_id: event_id(1),
        ..append(&a, 3, 5)
    };
    assert_conflict(log.append(vec![reused]).await, "a taken event id");
    // The same seq twice in one batch.
    assert_conflict(
        log.append(vec![append(&a, 3, 6), append(&a, 3, 7)]).await,
        "a seq repeated within a batch",
    );

    assert_eq!(
        ok(log.end_offset(p).await, "end_offset"),
        end,
        "nothing written"
    );
    let entries = ok(log.read(p, 0, 100).await, "read");
    assert_eq!(
        entries
            .iter()
            .map(|e| e.envelope.clone())
            .collect::<Vec<_>>(),
        vec![envelope(1), envelope(2)],
        "only the first batch is in the log"
    );
    let ctx = ok(log.chain_context(&a, event_id(8), 3).await, "chain_context");
    assert_eq!(ctx.context.head.seq, 2);
    assert_eq!(ctx.context.head.event_id, Some(event_id(2)));

    ok(log.append(vec![append(&a, 3, 8)]).await, "the next seq");
    // Another chain has its own seqs.
    ok(
        log.append(vec![append(&b, 1, 9)]).await,
        "seq 1 of another chain",
    );

    // Event ids are unique across chains: the context says another chain holds the id
    // (its own chain's does not), and the append refuses it, writing nothing.
    let ctx = ok(log.chain_context(&b, event_id(1), 2).await, "chain_context");
    assert!(ctx.id_in_other_chain, "chain a holds event 1");
    assert_eq!(ctx.context.same_event_id, None, "not in chain b");
    let own = ok(log.chain_context(&a, event_id(1), 1).await, "chain_context");
    assert!(!own.id_in_other_chain, "event 1 is chain a's own");
    let many = ok(
        log.chain_contexts(&b, &[(event_id(2), 2), (event_id(10), 2), (event_id(9), 1)])
            .await,
        "chain_contexts",
    );
    assert_eq!(
        many.iter().map(|c| c.id_in_other_chain).collect::<Vec<_>>(),
        vec![true, false, false],
        "ids of chain a, of nobody, of chain b"
    );
    let p_b = ok(log.append(vec![append(&b, 2, 10)]).await, "append")[0].partition;
    let end_b = ok(log.end_offset(p_b).await, "end_offset");
    let taken = Append {
        event_id: event_id(2),
        ..append(&b, 3, 11)
    };
    assert_conflict(
        log.append(vec![taken]).await,
        "an event id of another chain",
    );
    let patient = ChainKey::Patient(patient(P1));
    let statement = Append {
        event_id: event_id(8),
        ..append(&patient, 1, 12)
    };
    assert_conflict(
        log.append(vec![statement]).await,
        "a facility's event id in a patient's chain",
    );
    assert_eq!(
        ok(log.end_offset(p_b).await, "end_offset"),
        end_b,
        "nothing written"
    );
    ok(log.append(vec![append(&b, 3, 13)]).await, "a fresh id");
}

/// `wait_for` returns at once when the entry is there, after the timeout when nothing
/// arrives, and promptly when an append lands while it waits.
pub async fn log_wait_for_wakes_on_append<L: EventLog + ?Sized>(log: &L) {
    let a = ChainKey::Facility(facility(F1));
    let first = ok(log.append(vec![append(&a, 1, 1)]).await, "append")[0];
    let p = first.partition;

    let t = Instant::now();
    log.wait_for(p, first.offset, Duration::from_secs(30)).await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "an existing entry: no wait"
    );

    let end = ok(log.end_offset(p).await, "end_offset");
    let t = Instant::now();
    log.wait_for(p, end, Duration::from_millis(200)).await;
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "nothing new: the timeout"
    );

    let waiter = async {
        let t = Instant::now();
        log.wait_for(p, end, Duration::from_secs(30)).await;
        t.elapsed()
    };
    let appender = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ok(log.append(vec![append(&a, 2, 2)]).await, "append")
    };
    let (waited, appended) = tokio::join!(waiter, appender);
    assert_eq!(appended[0].partition, p);
    assert!(
        waited < Duration::from_secs(10),
        "an append wakes a waiter (waited {waited:?})"
    );
}

/// `chain_context` reports the head and the priors at the incoming event's id and seq,
/// with the prior's position, so that `chain::check` answers extends / duplicate / fork.
pub async fn log_chain_context_reports_head_and_priors<L: EventLog + ?Sized>(log: &L) {
    let a = ChainKey::Facility(facility(F1));
    let empty = ok(log.chain_context(&a, event_id(1), 1).await, "chain_context");
    assert_eq!(empty.context.head, ChainHead::EMPTY);
    assert_eq!(
        (
            empty.context.same_event_id,
            empty.context.same_seq,
            empty.prior_position
        ),
        (None, None, None)
    );

    let positions = ok(
        log.append(vec![append(&a, 1, 1), append(&a, 2, 2)]).await,
        "append",
    );
    let h = |n| envelope(n).event_hash();

    // The next event extends the chain.
    let next = ok(log.chain_context(&a, event_id(3), 3).await, "chain_context");
    assert_eq!(
        next.context.head,
        ChainHead {
            seq: 2,
            event_hash: h(2),
            event_id: Some(event_id(2)),
            recorded_at: Some(at(2)),
        }
    );
    assert_eq!(
        (next.context.same_event_id, next.context.same_seq),
        (None, None)
    );
    assert_eq!(next.prior_position, None);
    let link3 = Link {
        event_id: event_id(3),
        seq: 3,
        prev_hash: h(2),
        recorded_at: at(3),
    };
    assert_eq!(
        chain::check(&next.context, &link3, h(3)),
        Ok(ChainStep::Extends)
    );

    // Event 1 again: found by id, at its position; a duplicate.
    let again = ok(log.chain_context(&a, event_id(1), 1).await, "chain_context");
    let prior1 = chain::Prior {
        event_id: event_id(1),
        seq: 1,
        event_hash: h(1),
    };
    assert_eq!(again.context.same_event_id, Some(prior1));
    assert_eq!(again.context.same_seq, Some(prior1));
    assert_eq!(again.prior_position, Some(positions[0]));
    let link1 = Link {
        event_id: event_id(1),
        seq: 1,
        prev_hash: Sha256::ZERO,
        recorded_at: at(1),
    };
    assert_eq!(
        chain::check(&again.context, &link1, h(1)),
        Ok(ChainStep::Duplicate)
    );

    // Another event at seq 1: found by seq; a fork.
    let fork = ok(log.chain_context(&a, event_id(9), 1).await, "chain_context");
    assert_eq!(fork.context.same_event_id, None);
    assert_eq!(fork.context.same_seq, Some(prior1));
    assert_eq!(fork.prior_position, Some(positions[0]));
    let link9 = Link {
        event_id: event_id(9),
        ..link1
    };
    assert_eq!(
        chain::check(&fork.context, &link9, h(9)).map_err(|r| r.reason()),
        Err(Reason::Fork)
    );

    // Event 2's id at seq 1: both priors, each the right one.
    let both = ok(log.chain_context(&a, event_id(2), 1).await, "chain_context");
    assert_eq!(both.context.same_event_id.map(|p| p.seq), Some(2));
    assert_eq!(both.context.same_seq.map(|p| p.event_id), Some(event_id(1)));

    // The batch lookup answers each link exactly as the single one does, in order.
    let links = [
        (event_id(1), 1),
        (event_id(9), 1),
        (event_id(2), 1),
        (event_id(3), 3),
    ];
    let batch = ok(log.chain_contexts(&a, &links).await, "chain_contexts");
    assert_eq!(batch, vec![again, fork, both, next]);
    assert!(ok(log.chain_contexts(&a, &[]).await, "chain_contexts").is_empty());
    assert!(both.prior_position.is_some_and(|p| positions.contains(&p)));

    // Other chains are untouched.
    let b = ChainKey::Facility(facility(F2));
    let other = ok(log.chain_context(&b, event_id(1), 1).await, "chain_context");
    assert_eq!(other.context.head, ChainHead::EMPTY);
    assert_eq!(other.context.same_event_id, None);
    let registry = ok(
        log.chain_context(&ChainKey::Registry, event_id(1), 1).await,
        "chain_context",
    );
    assert_eq!(registry.context.head, ChainHead::EMPTY);
}

/// Statement `n` of a patient's chain at `seq`: a patient-signed envelope, which
/// carries no `recorded_at` of its own.
pub fn statement(chain: &ChainKey, seq: u64, n: u64) -> Append {
    let envelope = consent_envelope(n, false);
    Append {
        event_hash: envelope.event_hash(),
        envelope,
        recorded_at: None,
        ..append(chain, seq, n)
    }
}

/// A patient's statement chain (`ChainKey::Patient`) is a chain like a facility's:
/// its entries share the partition `partition_of` names, in order, and read back as
/// written; `chain_context` reports its head and priors; it is apart from other
/// patients' chains and from facilities', and refuses a taken seq.
pub async fn log_patient_chains_are_chains_of_their_own<L: EventLog + ?Sized>(log: &L) {
    let (p1, p2) = (patient(P1), patient(P2));
    let a = ChainKey::Patient(p1.clone());
    let b = ChainKey::Patient(p2.clone());
    let f = ChainKey::Facility(facility(F1));
    let empty = ok(log.chain_context(&a, event_id(1), 1).await, "chain_context");
    assert_eq!(empty.context.head, ChainHead::EMPTY);

    let positions = ok(
        log.append(vec![
            statement(&a, 1, 1),
            statement(&a, 2, 2),
            statement(&b, 1, 3),
            append(&f, 1, 4),
        ])
        .await,
        "append",
    );
    assert_eq!(positions.len(), 4);
    for (position, chain) in positions.iter().zip([&a, &a, &b, &f]) {
        assert_eq!(position.partition, log.partition_of(chain), "chain {chain}");
    }
    assert!(positions[0].offset < positions[1].offset, "in chain order");
    for (position, envelope) in positions.iter().zip([
        consent_envelope(1, false),
        consent_envelope(2, false),
        consent_envelope(3, false),
        self::envelope(4),
    ]) {
        let got = ok(
            log.read(position.partition, position.offset, 1).await,
            "read",
        );
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].position, &got[0].envelope), (*position, &envelope));
    }

    let h = |n| consent_envelope(n, false).event_hash();
    let next = ok(log.chain_context(&a, event_id(5), 3).await, "chain_context");
    assert_eq!(
        next.context.head,
        ChainHead {
            seq: 2,
            event_hash: h(2),
            event_id: Some(event_id(2)),
            recorded_at: None,
        },
        "a statement has no recorded_at"
    );
    assert_eq!(
        (
            next.context.same_event_id,
            next.context.same_seq,
            next.prior_position
        ),
        (None, None, None)
    );
    let again = ok(log.chain_context(&a, event_id(1), 1).await, "chain_context");
    let prior1 = chain::Prior {
        event_id: event_id(1),
        seq: 1,
        event_hash: h(1),
    };
    assert_eq!(
        (again.context.same_event_id, again.context.same_seq),
        (Some(prior1), Some(prior1))
    );
    assert_eq!(again.prior_position, Some(positions[0]));
    assert_eq!(
        ok(
            log.chain_contexts(&a, &[(event_id(1), 1), (event_id(5), 3)])
                .await,
            "chain_contexts"
        ),
        vec![again, next]
    );

    // Apart from other chains.
    let other = ok(log.chain_context(&b, event_id(5), 2).await, "chain_context");
    assert_eq!(
        (other.context.head.seq, other.context.head.event_id),
        (1, Some(event_id(3)))
    );
    let facility_chain = ok(log.chain_context(&f, event_id(5), 2).await, "chain_context");
    assert_eq!(
        (
            facility_chain.context.head.seq,
            facility_chain.context.head.event_id
        ),
        (1, Some(event_id(4)))
    );
    let nobody = ChainKey::Patient(patient("079200000001"));
    assert_eq!(
        ok(
            log.chain_context(&nobody, event_id(5), 1).await,
            "chain_context"
        )
        .context
        .head,
        ChainHead::EMPTY
    );

    // A taken seq is refused; the next one goes through.
    assert_conflict(log.append(vec![statement(&a, 2, 6)]).await, "a taken seq");
    let third = ok(log.append(vec![statement(&a, 3, 7)]).await, "append")[0];
    assert_eq!(third.partition, positions[0].partition);
    assert!(third.offset > positions[1].offset);
    assert_eq!(
        ok(log.chain_context(&a, event_id(8), 4).await, "chain_context")
            .context
            .head
            .seq,
        3
    );
}

/// `appended_at` is exactly the `received_at` of the `Append` — the time ingest chose,
/// to the millisecond, not the time the log wrote the entry (here a day and a half
/// earlier; the same instant twice; an instant earlier than the entry's before it) — and
/// `registry_seq` reads back as appended, `None` and 0 included; one entry at a time and
/// in a read of the whole partition, on a facility's chain and the registry's.
pub async fn log_keeps_receive_times_and_registry_seqs<L: EventLog + ?Sized>(log: &L) {
    let a = ChainKey::Facility(facility(F1));
    let registry = ChainKey::Registry;
    let base = Timestamp::now().seconds() - 36 * 3600;
    let received = |s: i64, ms: i32| Timestamp::new(base + s, ms * 1_000_000).expect("in range");
    let appended = [
        Append {
            received_at: received(0, 123),
            registry_seq: Some(0),
            ..append(&a, 1, 1)
        },
        Append {
            received_at: received(0, 123),
            registry_seq: None,
            ..append(&a, 2, 2)
        },
        Append {
            received_at: received(-5, 999),
            // Past 2^53: no detour through a floating-point number.
            registry_seq: Some(9_007_199_254_740_993),
            ..append(&registry, 1, 3)
        },
        Append {
            received_at: received(60, 1),
            registry_seq: Some(4),
            ..append(&a, 3, 4)
        },
    ];
    let mut positions = ok(log.append(appended[..3].to_vec()).await, "append");
    positions.extend(ok(log.append(appended[3..].to_vec()).await, "append"));
    assert_eq!(positions.len(), 4);

    let receipt = |a: &Append| Receipt {
        received_at: a.received_at,
        registry_seq: a.registry_seq,
    };
    for (position, a) in positions.iter().zip(&appended) {
        let got = ok(
            log.read(position.partition, position.offset, 1).await,
            "read",
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].envelope, a.envelope);
        assert_eq!(
            got[0].appended_at, a.received_at,
            "appended_at is the received_at of seq {} of {}, to the millisecond",
            a.seq, a.chain
        );
        assert_eq!(
            got[0].registry_seq, a.registry_seq,
            "seq {} of {}",
            a.seq, a.chain
        );
        assert_eq!(got[0].receipt(), receipt(a));
    }
    let mut partitions: Vec<u32> = positions.iter().map(|p| p.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    for p in partitions {
        for entry in ok(log.read(p, 0, 100).await, "read all") {
            let i = positions
                .iter()
                .position(|q| *q == entry.position)
                .expect("only the suite's entries");
            assert_eq!(entry.receipt(), receipt(&appended[i]), "in a longer read");
        }
    }
}

/// The chain index keeps each event's `recorded_at`, and `chain_context(s)` report the
/// head's to the nanosecond (before 1970 too): `None` for an empty chain and for a head
/// appended without one, `Some` again once an event with one follows it (the log does
/// not judge the times: an earlier one is kept as given); each chain has its own.
pub async fn log_chain_context_reports_the_heads_recorded_at<L: EventLog + ?Sized>(log: &L) {
    let (a, b) = (
        ChainKey::Facility(facility(F1)),
        ChainKey::Facility(facility(F2)),
    );
    let t = |s: i64, ns: i32| Timestamp::new(T0 + s, ns).expect("in range");
    let head = |chain: &ChainKey, next: u64| {
        let chain = chain.clone();
        async move {
            let ctx = ok(
                log.chain_context(&chain, event_id(100 + next), next).await,
                "chain_context",
            );
            // The batch lookup reports the same head for every link it is asked about.
            let links = [(event_id(100 + next), next), (event_id(1), 1)];
            let batch = ok(log.chain_contexts(&chain, &links).await, "chain_contexts");
            assert!(batch.iter().all(|c| c.context.head == ctx.context.head));
            ctx.context.head
        }
    };
    assert_eq!(head(&a, 1).await.recorded_at, None, "an empty chain");

    let before_1970 = Timestamp::new(-1, 999_999_999).expect("in range");
    ok(
        log.append(vec![
            Append {
                recorded_at: Some(t(10, 123_456_789)),
                ..append(&a, 1, 1)
            },
            Append {
                recorded_at: Some(before_1970),
                ..append(&b, 1, 2)
            },
        ])
        .await,
        "append",
    );
    let h = head(&a, 2).await;
    assert_eq!(
        (h.seq, h.event_id, h.recorded_at),
        (1, Some(event_id(1)), Some(t(10, 123_456_789)))
    );

    ok(
        log.append(vec![Append {
            recorded_at: None,
            ..append(&a, 2, 3)
        }])
        .await,
        "append",
    );
    let h = head(&a, 3).await;
    assert_eq!(
        (h.seq, h.recorded_at),
        (2, None),
        "a head without a recorded_at"
    );

    ok(
        log.append(vec![Append {
            recorded_at: Some(t(5, 999_999_999)),
            ..append(&a, 3, 4)
        }])
        .await,
        "append",
    );
    let h = head(&a, 4).await;
    assert_eq!((h.seq, h.recorded_at), (3, Some(t(5, 999_999_999))));
    assert_eq!(head(&b, 2).await.recorded_at, Some(before_1970));

    ok(
        log.append(vec![append(&ChainKey::Registry, 1, 5)]).await,
        "append",
    );
    assert_eq!(
        head(&ChainKey::Registry, 2).await.recorded_at,
        Some(at(5)),
        "the registry's chain too"
    );
}

// ── Projection ───────────────────────────────────────────────────────────────────────

/// A batch's records, links, stats and offsets are all visible after `apply`; the
/// snapshot and `projected_offsets` give the offsets; an offsets-only batch (every entry
/// a duplicate) still moves them.
/// A batch read from an offset the store has already moved past (another projector
/// replica applied it) is refused with `Conflict`, and changes nothing; a batch from
/// the stored offset goes through.
pub async fn apply_fences_batches_by_their_start_offset<S: Store + ?Sized>(store: &S) {
    let f = facility(F1);
    let p = patient(P1);
    let r1 = record(1, &f, 1, &p);
    let mut first = record_batch(std::slice::from_ref(&r1));
    first.expected_offsets = vec![(0, 0)];
    ok(store.apply(first).await, "apply from offset 0");
    assert_eq!(ok(store.projected_offsets().await, "offsets"), vec![(0, 2)]);

    // A second replica that also read from offset 0 loses.
    let r2 = record(2, &f, 2, &p);
    let mut stale = record_batch(std::slice::from_ref(&r2));
    stale.expected_offsets = vec![(0, 0)];
    match store.apply(stale).await {
        Err(PortError::Conflict(_)) => {}
        other => panic!("a stale batch must be refused with Conflict, got {other:?}"),
    }
    assert_eq!(ok(store.projected_offsets().await, "offsets"), vec![(0, 2)]);
    assert_eq!(ok(store.records_after(&p, 0, 10).await, "records").len(), 1);

    // From the stored offset it goes through.
    let mut fresh = record_batch(std::slice::from_ref(&r2));
    fresh.expected_offsets = vec![(0, 2)];
    ok(store.apply(fresh).await, "apply from offset 2");
    assert_eq!(ok(store.records_after(&p, 0, 10).await, "records").len(), 2);
}

pub async fn apply_commits_records_with_offsets<S: Store + ?Sized>(store: &S) {
    let snapshot = ok(store.projector_snapshot().await, "snapshot");
    assert!(
        snapshot.offsets.is_empty() && snapshot.keys.is_empty(),
        "a fresh store"
    );
    assert!(ok(store.projected_offsets().await, "offsets").is_empty());

    let f = facility(F1);
    let p = patient(P1);
    let r1 = NewRecord {
        sensitivity: vec![SensitivityLabel::Hiv, SensitivityLabel::MentalHealth],
        kind: RecordKind::Condition,
        ..record(1, &f, 1, &p)
    };
    let r2 = record(2, &f, 2, &p);
    let mut batch = record_batch(&[r1.clone(), r2.clone()]);
    batch.stats.push(StatsDelta {
        facility_id: f.clone(),
        accepted: 2,
        duplicates: 0,
        rejected: Vec::new(),
        last_seen: at(2),
    });
    ok(store.apply(batch).await, "apply");

    assert_eq!(ok(store.projected_offsets().await, "offsets"), vec![(0, 3)]);
    assert_eq!(
        ok(store.projector_snapshot().await, "snapshot").offsets,
        vec![(0, 3)]
    );
    assert_eq!(
        ok(store.records_after(&p, 0, 10).await, "records_after"),
        vec![stored(&r1, 1, None), stored(&r2, 2, None)]
    );
    let ctx = ok(
        store
            .chain_context(&ChainKey::Facility(f.clone()), event_id(3), 3)
            .await,
        "chain_context",
    );
    assert_eq!(
        ctx.head,
        ChainHead {
            seq: 2,
            event_hash: r2.event_hash,
            event_id: Some(r2.event_id),
            recorded_at: Some(r2.recorded_at),
        }
    );
    let dup = ok(
        store
            .chain_context(&ChainKey::Facility(f.clone()), event_id(1), 1)
            .await,
        "chain_context",
    );
    assert_eq!(dup.same_event_id.map(|p| p.event_hash), Some(r1.event_hash));
    assert_eq!(dup.same_seq.map(|p| p.event_id), Some(r1.event_id));
    let stats = ok(store.facility_stats().await, "facility_stats");
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].accepted, stats[0].head_seq), (2, 2));

    ok(
        store
            .apply(ProjectionBatch {
                offsets: vec![(0, 5)],
                ..ProjectionBatch::default()
            })
            .await,
        "offsets-only batch",
    );
    assert_eq!(ok(store.projected_offsets().await, "offsets"), vec![(0, 5)]);
}

/// `patient_seq` counts 1, 2, 3, … per patient in projection order (not clinical
/// order), across batches and interleaved patients; `records_after` pages it.
pub async fn patient_seq_is_gap_free_per_patient<S: Store + ?Sized>(store: &S) {
    let f = facility(F1);
    let (p1, p2) = (patient(P1), patient(P2));
    // Clinical times run backwards, so projection order is visibly what counts.
    let r = |n: u64, p: &PatientId| NewRecord {
        occurred_at: at(1000 - n as i64),
        ..record(n, &f, n, p)
    };
    let batches = [
        vec![r(1, &p1), r(2, &p2), r(3, &p1)],
        vec![r(4, &p1)],
        vec![r(5, &p2), r(6, &p1), r(7, &p2)],
    ];
    for b in &batches {
        ok(store.apply(record_batch(b)).await, "apply");
    }

    let all1 = ok(store.records_after(&p1, 0, 100).await, "records_after");
    assert_eq!(
        all1.iter().map(|r| r.patient_seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        ids(&all1),
        [1, 3, 4, 6].map(event_id).to_vec(),
        "projection order"
    );
    let all2 = ok(store.records_after(&p2, 0, 100).await, "records_after");
    assert_eq!(
        all2.iter()
            .map(|r| (r.patient_seq, r.event_id))
            .collect::<Vec<_>>(),
        vec![(1, event_id(2)), (2, event_id(5)), (3, event_id(7))]
    );

    // Paging by the cursor: nothing missed, nothing twice.
    let page = ok(store.records_after(&p1, 1, 2).await, "records_after");
    assert_eq!(ids(&page), vec![event_id(3), event_id(4)]);
    let page = ok(store.records_after(&p1, 3, 2).await, "records_after");
    assert_eq!(ids(&page), vec![event_id(6)]);
    assert!(ok(store.records_after(&p1, 4, 10).await, "records_after").is_empty());
    assert!(ok(store.records_after(&p1, 0, 0).await, "limit 0").is_empty());
    assert!(
        ok(
            store.records_after(&patient("079200000001"), 0, 10).await,
            "records_after"
        )
        .is_empty()
    );
}

/// A record naming an earlier one in `supersedes` sets that one's `superseded_by`
/// (within a batch and across batches); both stay on the timeline; naming a record that
/// is not projected links nothing.
pub async fn superseded_records_are_linked<S: Store + ?Sized>(store: &S) {
    let f = facility(F1);
    let p = patient(P1);
    let original = record(1, &f, 1, &p);
    let fix = NewRecord {
        supersedes: Some(event_id(1)),
        ..record(2, &f, 2, &p)
    };
    let other = record(3, &f, 3, &p);
    let fix_in_batch = NewRecord {
        supersedes: Some(event_id(3)),
        ..record(4, &f, 4, &p)
    };
    let dangling = NewRecord {
        supersedes: Some(event_id(99)),
        ..record(5, &f, 5, &p)
    };
    ok(
        store
            .apply(record_batch(std::slice::from_ref(&original)))
            .await,
        "apply",
    );
    ok(
        store
            .apply(record_batch(&[
                fix.clone(),
                other.clone(),
                fix_in_batch.clone(),
                dangling.clone(),
            ]))
            .await,
        "apply",
    );

    let all = ok(store.records_after(&p, 0, 100).await, "records_after");
    assert_eq!(
        all,
        vec![
            stored(&original, 1, Some(event_id(2))),
            stored(&fix, 2, None),
            stored(&other, 3, Some(event_id(4))),
            stored(&fix_in_batch, 4, None),
            stored(&dangling, 5, None),
        ]
    );
    let page = ok(store.timeline(&timeline_query(&p, 100)).await, "timeline");
    assert_eq!(page.len(), 5, "superseded records are shown, not hidden");
}

/// Timeline pages are newest first by `occurred_at`, ties by event id descending; the
/// cursor resumes strictly after the last record of a page, so paging while records
/// are projected between pages neither repeats nor skips (records that sort before the
/// cursor are not shown; those after it are); filters by kind, facility and the
/// `[from, until)` period combine; other patients' records never appear.
pub async fn timeline_orders_filters_and_pages_without_duplicates_or_skips<S: Store + ?Sized>(
    store: &S,
) {
    let (f1, f2) = (facility(F1), facility(F2));
    let (p1, p2) = (patient(P1), patient(P2));
    // Twelve records at four clinical times, three per time (ties), alternating
    // facility and kind; event ids are not in time order.
    let times = [at(400), at(100), at(300), at(200)];
    let mut initial = Vec::new();
    for n in 1..=12u64 {
        let f = if n % 2 == 0 { &f2 } else { &f1 };
        initial.push(NewRecord {
            occurred_at: times[(n % 4) as usize],
            kind: if n % 3 == 0 {
                RecordKind::Condition
            } else {
                RecordKind::Observation
            },
            ..record(n, f, n, &p1)
        });
    }
    let p2_record = NewRecord {
        occurred_at: at(300),
        ..record(50, &f1, 50, &p2)
    };
    let mut batch = record_batch(&initial);
    batch
        .projections
        .push(Projection::Record(p2_record.clone()));
    ok(store.apply(batch).await, "apply");

    let order = |records: &[NewRecord]| -> Vec<EventId> {
        let mut keys: Vec<_> = records
            .iter()
            .map(|r| (r.occurred_at, r.event_id))
            .collect();
        keys.sort_by(|a, b| b.cmp(a));
        keys.into_iter().map(|(_, id)| id).collect()
    };

    // One full page, exactly as stored.
    let full = ok(store.timeline(&timeline_query(&p1, 100)).await, "timeline");
    assert_eq!(ids(&full), order(&initial));
    let first = full
        .iter()
        .find(|r| r.event_id == event_id(1))
        .expect("record 1");
    assert_eq!(first, &stored(&initial[0], 1, None));

    // Page by five, projecting records between pages: some that sort before the
    // cursor (must not be shown) and some after it (must be, each exactly once).
    let limit = 5;
    let mut shown = Vec::new();
    let mut expected = initial.clone();
    // Every record of p1 in the store, for the filters below.
    let mut projected = initial.clone();
    let mut cursor: Option<(Timestamp, EventId)> = None;
    // Ids of records made between pages grow, so each is greater than every id before.
    let mut n = 100;
    loop {
        let q = TimelineQuery {
            after: cursor,
            ..timeline_query(&p1, limit)
        };
        let page = ok(store.timeline(&q).await, "timeline page");
        shown.extend(ids(&page));
        if page.len() < limit {
            break;
        }
        let last = page.last().expect("a full page");
        cursor = Some((last.occurred_at, last.event_id));
        let newer = NewRecord {
            occurred_at: at(10_000 + n as i64),
            ..record(n, &f1, n, &p1)
        };
        let tie_with_greater_id = NewRecord {
            occurred_at: last.occurred_at,
            ..record(n + 1, &f1, n + 1, &p1)
        };
        let older = NewRecord {
            occurred_at: at(-(n as i64)),
            ..record(n + 2, &f2, n + 2, &p1)
        };
        let mut between = vec![newer, tie_with_greater_id, older.clone()];
        expected.push(older);
        if n == 100 {
            // Id 0 is below every other id: on a tie it sorts after the cursor.
            let tie_with_smaller_id = NewRecord {
                occurred_at: last.occurred_at,
                ..record(0, &f1, 0, &p1)
            };
            expected.push(tie_with_smaller_id.clone());
            between.push(tie_with_smaller_id);
        }
        ok(
            store.apply(record_batch(&between)).await,
            "apply between pages",
        );
        projected.extend(between);
        n += 3;
    }
    assert!(n > 103, "several pages were read");
    assert_eq!(
        shown,
        order(&expected),
        "pages in order, without repeats or skips"
    );

    // Filters, against every record of p1 now stored.
    let filtered = |keep: &dyn Fn(&NewRecord) -> bool| -> Vec<EventId> {
        let kept: Vec<NewRecord> = projected.iter().filter(|r| keep(r)).cloned().collect();
        order(&kept)
    };
    let conditions = TimelineQuery {
        kinds: vec![RecordKind::Condition],
        ..timeline_query(&p1, 100)
    };
    let want = filtered(&|r| r.kind == RecordKind::Condition);
    assert!(!want.is_empty());
    assert_eq!(
        ids(&ok(store.timeline(&conditions).await, "kinds filter")),
        want
    );
    let from_f2 = TimelineQuery {
        facilities: vec![f2.clone()],
        ..timeline_query(&p1, 100)
    };
    let want = filtered(&|r| r.facility_id == f2);
    assert!(!want.is_empty());
    assert_eq!(
        ids(&ok(store.timeline(&from_f2).await, "facilities filter")),
        want
    );
    let period = TimelineQuery {
        occurred_from: Some(at(200)),
        occurred_until: Some(at(400)),
        ..timeline_query(&p1, 100)
    };
    let want = filtered(&|r| r.occurred_at >= at(200) && r.occurred_at < at(400));
    assert!(!want.is_empty());
    assert_eq!(
        ids(&ok(store.timeline(&period).await, "period filter")),
        want,
        "from is inclusive, until exclusive"
    );
    let combined = TimelineQuery {
        kinds: vec![RecordKind::Condition, RecordKind::Allergy],
        facilities: vec![f2.clone()],
        occurred_from: Some(at(100)),
        occurred_until: Some(at(400)),
        ..timeline_query(&p1, 100)
    };
    let want = filtered(&|r| {
        r.kind == RecordKind::Condition
            && r.facility_id == f2
            && r.occurred_at >= at(100)
            && r.occurred_at < at(400)
    });
    assert!(!want.is_empty());
    assert_eq!(
        ids(&ok(store.timeline(&combined).await, "combined filters")),
        want
    );
    // A filtered page resumes from its cursor like an unfiltered one.
    let first_two = ok(
        store
            .timeline(&TimelineQuery {
                limit: 2,
                ..period.clone()
            })
            .await,
        "filtered page",
    );
    let last = first_two.last().expect("two records");
    let rest = ok(
        store
            .timeline(&TimelineQuery {
                after: Some((last.occurred_at, last.event_id)),
                ..period.clone()
            })
            .await,
        "filtered page",
    );
    let both: Vec<EventId> = ids(&first_two).into_iter().chain(ids(&rest)).collect();
    assert_eq!(
        both,
        filtered(&|r| r.occurred_at >= at(200) && r.occurred_at < at(400))
    );

    assert!(ok(store.timeline(&timeline_query(&p1, 0)).await, "limit 0").is_empty());
    let other = ok(
        store.timeline(&timeline_query(&p2, 100)).await,
        "other patient",
    );
    assert_eq!(other, vec![stored(&p2_record, 1, None)]);
}

/// Timestamps round-trip exactly, nanoseconds included, and order correctly across the
/// whole range (year 1 to 9999, before and after 1970).
pub async fn timestamps_round_trip_exactly_and_order_across_the_range<S: Store + ?Sized>(
    store: &S,
) {
    let f = facility(F1);
    let p = patient(P1);
    let t = |s, ns| Timestamp::new(s, ns).expect("in range");
    let times = [
        t(253_402_300_799, 999_999_999), // 9999-12-31T23:59:59.999999999Z
        t(0, 1),
        t(0, 0),
        t(-1, 999_999_999),
        t(-62_135_596_800, 0), // 0001-01-01T00:00:00Z
    ];
    // Projected in an order unrelated to time.
    let records: Vec<_> = [2, 4, 0, 3, 1]
        .into_iter()
        .enumerate()
        .map(|(i, k)| NewRecord {
            occurred_at: times[k],
            recorded_at: times[4 - k],
            ..record(i as u64 + 1, &f, i as u64 + 1, &p)
        })
        .collect();
    ok(store.apply(record_batch(&records)).await, "apply");

    let page = ok(store.timeline(&timeline_query(&p, 10)).await, "timeline");
    assert_eq!(
        page.iter().map(|r| r.occurred_at).collect::<Vec<_>>(),
        times
    );
    for r in &records {
        let got = page
            .iter()
            .find(|s| s.event_id == r.event_id)
            .expect("record");
        assert_eq!(
            (got.occurred_at, got.recorded_at),
            (r.occurred_at, r.recorded_at)
        );
    }
    let one_nano = TimelineQuery {
        occurred_from: Some(t(0, 0)),
        occurred_until: Some(t(0, 1)),
        ..timeline_query(&p, 10)
    };
    let got = ok(store.timeline(&one_nano).await, "timeline");
    assert_eq!(
        got.iter().map(|r| r.occurred_at).collect::<Vec<_>>(),
        vec![t(0, 0)]
    );
}

/// `record` returns the projected record and the envelope it came from, read from the
/// log at the record's position; an unknown id is `None`.
pub async fn record_returns_the_original_envelope<L, S>(log: &L, store: &S)
where
    L: EventLog + ?Sized,
    S: Store + ?Sized,
{
    let f = facility(F1);
    let p = patient(P1);
    let chain = ChainKey::Facility(f.clone());
    let positions = ok(
        log.append(vec![append(&chain, 1, 1), append(&chain, 2, 2)])
            .await,
        "append",
    );
    let r2 = NewRecord {
        position: positions[1],
        ..record(2, &f, 2, &p)
    };
    ok(
        store.apply(record_batch(std::slice::from_ref(&r2))).await,
        "apply",
    );

    let (got, env) = ok(store.record(event_id(2)).await, "record").expect("record 2");
    assert_eq!(got, stored(&r2, 1, None));
    assert_eq!(env, envelope(2));
    assert_eq!(
        ok(store.record(event_id(1)).await, "record"),
        None,
        "not projected"
    );
}

// ── Consent ──────────────────────────────────────────────────────────────────────────

/// Sorted by event id, for the reads whose order the traits leave open.
fn by_event_id(mut rows: Vec<ConsentEventRow>) -> Vec<ConsentEventRow> {
    rows.sort_by_key(|r| r.event_id);
    rows
}

/// Consent events read back exactly — kind, carrier, time received to the nanosecond,
/// and the envelope's bytes — per patient (`consent_events`, any order) and by id
/// (`consent_event`); every kind round-trips; their ids are taken; a patient's
/// statement chain is projected like a facility's and stays out of the facility stats;
/// `reset_projections` deletes them all, and a replay brings them back.
pub async fn consent_events_round_trip_exactly<S: Store + ?Sized>(store: &S) {
    let (f1, f2) = (facility(F1), facility(F2));
    let (p1, p2) = (patient(P1), patient(P2));
    let attested = ConsentEventRow {
        received_at: Timestamp::new(T0 + 10, 123_456_789).expect("in range"),
        ..consent_event(10, ConsentEventKind::AttestedGrant, &p1, Some(&f1))
    };
    let signed = consent_event(11, ConsentEventKind::PatientGrant, &p1, None);
    let other = consent_event(12, ConsentEventKind::KeyEnrollment, &p2, Some(&f2));
    assert_ne!(
        attested.envelope, signed.envelope,
        "the fixtures differ where a store could mix them up"
    );
    // The patient's statement is seq 1 of the patient's chain.
    let statement_link = ChainLink {
        chain: ChainKey::Patient(p1.clone()),
        seq: 1,
        event_id: signed.event_id,
        event_hash: signed.envelope.event_hash(),
        position: pos(11),
        recorded_at: None,
    };
    let first = ProjectionBatch {
        links: vec![statement_link.clone()],
        offsets: vec![(0, 13)],
        ..consent_batch(&[attested.clone(), other.clone(), signed.clone()])
    };
    ok(store.apply(first.clone()).await, "apply consent events");

    assert_eq!(
        ok(store.consent_event(event_id(10)).await, "consent_event"),
        Some(attested.clone())
    );
    assert_eq!(
        ok(store.consent_event(event_id(11)).await, "consent_event"),
        Some(signed.clone()),
        "a patient statement: no facility, its own payload type and key"
    );
    assert_eq!(
        ok(store.consent_event(event_id(99)).await, "consent_event"),
        None
    );
    assert_eq!(
        by_event_id(ok(store.consent_events(&p1).await, "consent_events")),
        vec![attested.clone(), signed.clone()]
    );
    assert_eq!(
        ok(store.consent_events(&p2).await, "consent_events"),
        vec![other.clone()]
    );
    assert!(
        ok(
            store.consent_events(&patient("079200000001")).await,
            "consent_events"
        )
        .is_empty()
    );

    // Every kind, in a later batch.
    let all_kinds: Vec<ConsentEventRow> = ConsentEventKind::ALL
        .iter()
        .zip(20u64..)
        .map(|(kind, n)| {
            let facility_event = kind.code() < ConsentEventKind::PatientGrant.code();
            consent_event(n, *kind, &p1, facility_event.then_some(&f2))
        })
        .collect();
    ok(
        store.apply(consent_batch(&all_kinds)).await,
        "apply every kind",
    );
    for row in &all_kinds {
        assert_eq!(
            ok(store.consent_event(row.event_id).await, "consent_event").as_ref(),
            Some(row),
            "{:?}",
            row.kind
        );
    }
    let mut want = vec![attested.clone(), signed.clone()];
    want.extend(all_kinds.iter().cloned());
    assert_eq!(
        by_event_id(ok(store.consent_events(&p1).await, "consent_events")),
        want
    );

    // Their ids are taken, like records' and break-glass declarations'.
    let asked = [
        event_id(10),
        event_id(11),
        event_id(12),
        event_id(20),
        event_id(99),
    ];
    assert_eq!(
        ok(store.event_ids_taken(&asked).await, "event_ids_taken"),
        asked[..4].iter().copied().collect()
    );
    assert!(ok(
        store.event_id_taken(event_id(12)).await,
        "event_id_taken"
    ));
    assert!(!ok(
        store.event_id_taken(event_id(99)).await,
        "event_id_taken"
    ));

    // The patient's chain, apart from other chains; the monitor's heads are facilities'.
    let head = ok(
        store
            .chain_context(&ChainKey::Patient(p1.clone()), event_id(13), 2)
            .await,
        "chain_context",
    );
    assert_eq!(
        head.head,
        ChainHead {
            seq: 1,
            event_hash: statement_link.event_hash,
            event_id: Some(signed.event_id),
            recorded_at: None,
        }
    );
    let again = ok(
        store
            .chain_context(&ChainKey::Patient(p1.clone()), event_id(11), 1)
            .await,
        "chain_context",
    );
    assert_eq!(again.same_event_id.map(|p| p.seq), Some(1));
    for chain in [
        ChainKey::Patient(p2.clone()),
        ChainKey::Facility(f1.clone()),
    ] {
        assert_eq!(
            ok(
                store.chain_context(&chain, event_id(13), 1).await,
                "chain_context"
            )
            .head,
            ChainHead::EMPTY,
            "chain {chain}"
        );
    }
    assert!(
        ok(store.facility_stats().await, "facility_stats").is_empty(),
        "a patient's chain is no facility's"
    );

    // A reset deletes them; a replay restores them.
    ok(store.reset_projections().await, "reset");
    assert!(ok(store.consent_events(&p1).await, "consent_events").is_empty());
    assert!(ok(store.consent_events(&p2).await, "consent_events").is_empty());
    assert_eq!(
        ok(store.consent_event(event_id(10)).await, "consent_event"),
        None
    );
    assert!(!ok(
        store.event_id_taken(event_id(11)).await,
        "event_id_taken"
    ));
    assert!(ok(store.event_ids_taken(&asked).await, "event_ids_taken").is_empty());
    assert_eq!(
        ok(
            store
                .chain_context(&ChainKey::Patient(p1.clone()), event_id(13), 2)
                .await,
            "chain_context"
        )
        .head,
        ChainHead::EMPTY
    );
    ok(store.apply(first).await, "replay");
    assert_eq!(
        by_event_id(ok(store.consent_events(&p1).await, "consent_events")),
        vec![attested, signed]
    );
}

/// Facility-attested grants list newest first by the time they were received,
/// `since` inclusive (to the nanosecond), at most `limit`; other kinds of consent
/// event never appear.
pub async fn attested_grants_are_newest_first_since_inclusive_and_limited<S: Store + ?Sized>(
    store: &S,
) {
    let (f1, f2) = (facility(F1), facility(F2));
    let (p1, p2) = (patient(P1), patient(P2));
    let attested = |n, p: &PatientId, by: &FacilityId, t: Timestamp| ConsentEventRow {
        received_at: t,
        ..consent_event(n, ConsentEventKind::AttestedGrant, p, Some(by))
    };
    let t20_1 = Timestamp::new(T0 + 20, 1).expect("in range");
    let a10 = attested(1, &p1, &f1, at(10));
    let a30 = attested(2, &p2, &f2, at(30));
    let a20_1 = attested(3, &p1, &f2, t20_1);
    let a20 = attested(4, &p1, &f1, at(20));
    // Newer than every attested grant, and of other kinds.
    let others = [
        consent_event(40, ConsentEventKind::PatientGrant, &p1, None),
        consent_event(45, ConsentEventKind::KeyEnrollment, &p1, Some(&f1)),
        consent_event(50, ConsentEventKind::FacilityRevocation, &p1, Some(&f1)),
        consent_event(60, ConsentEventKind::Request, &p2, Some(&f2)),
    ];
    // Projected in an order unrelated to time.
    let mut first = vec![a20_1.clone()];
    first.extend(others.iter().cloned());
    first.push(a10.clone());
    ok(store.apply(consent_batch(&first)).await, "apply");
    ok(
        store
            .apply(consent_batch(&[a30.clone(), a20.clone()]))
            .await,
        "apply",
    );

    let listed = |since, limit| async move {
        ok(store.attested_grants(since, limit).await, "attested_grants")
    };
    assert_eq!(
        listed(None, 100).await,
        vec![a30.clone(), a20_1.clone(), a20.clone(), a10.clone()]
    );
    assert_eq!(
        listed(Some(at(20)), 100).await,
        vec![a30.clone(), a20_1.clone(), a20.clone()],
        "since is inclusive"
    );
    assert_eq!(
        listed(Some(t20_1), 100).await,
        vec![a30.clone(), a20_1.clone()],
        "to the nanosecond"
    );
    assert!(listed(Some(at(31)), 100).await.is_empty());
    assert_eq!(listed(None, 2).await, vec![a30.clone(), a20_1]);
    assert_eq!(listed(Some(at(10)), 1).await, vec![a30]);
    assert!(listed(None, 0).await.is_empty());
}

/// Break-glass windows read back for their patient with the declared reason, in
/// projection order; the monitor's uses list them oldest first (`since` inclusive) and
/// the patient's own view lists theirs, with the reads made under each; each wrote its
/// audit entry; `break_glass_declared_since` counts a facility's declarations, for any
/// patient, made strictly after a time.
pub async fn break_glass_round_trips_with_reason_and_counts<S: Store + ?Sized>(store: &S) {
    let (f1, f2, f3) = (facility(F1), facility(F2), facility(F3));
    let (p1, p2) = (patient(P1), patient(P2));
    let (u30, e30) = break_glass(30, &p1, &f2);
    let (u40, e40) = break_glass(40, &p2, &f2);
    let (u50, e50) = break_glass(50, &p1, &f3);
    let u50 = BreakGlassUse {
        reason: "Ngừng tuần hoàn, không liên lạc được người nhà".into(),
        ..u50
    };
    // Projected out of time order.
    ok(
        store
            .apply(ProjectionBatch {
                projections: vec![
                    Projection::BreakGlass(u50.clone(), e50.clone()),
                    Projection::BreakGlass(u30.clone(), e30.clone()),
                ],
                ..ProjectionBatch::default()
            })
            .await,
        "apply break-glass",
    );
    ok(
        store
            .apply(ProjectionBatch {
                projections: vec![Projection::BreakGlass(u40.clone(), e40.clone())],
                ..ProjectionBatch::default()
            })
            .await,
        "apply break-glass",
    );

    assert_eq!(
        ok(store.break_glass(&p1).await, "break_glass"),
        vec![u50.window.clone(), u30.window.clone()],
        "projection order"
    );
    assert_eq!(
        ok(store.break_glass(&p2).await, "break_glass"),
        vec![u40.window.clone()]
    );
    assert_eq!(
        ok(store.break_glass_uses(None).await, "uses"),
        vec![u30.clone(), u40.clone(), u50.clone()],
        "oldest first, reasons kept"
    );
    assert_eq!(
        ok(store.break_glass_uses(Some(at(40))).await, "uses since"),
        vec![u40.clone(), u50.clone()],
        "since is inclusive"
    );
    assert!(ok(store.break_glass_uses(Some(at(51))).await, "uses since").is_empty());
    assert_eq!(
        ok(store.break_glass_uses_of(&p1).await, "uses of p1"),
        vec![u30.clone(), u50.clone()]
    );
    assert_eq!(
        ok(store.break_glass_uses_of(&p2).await, "uses of p2"),
        vec![u40.clone()]
    );
    assert!(
        ok(
            store.break_glass_uses_of(&patient("079200000001")).await,
            "uses of nobody"
        )
        .is_empty()
    );

    // Declarations strictly after `since`, per facility, whatever the patient.
    let just_before_30 = Timestamp::new(T0 + 29, 999_999_999).expect("in range");
    for (f, since, n) in [
        (&f2, just_before_30, 2),
        (&f2, at(30), 1),
        (&f2, at(40), 0),
        (&f3, at(0), 1),
        (&f3, at(50), 0),
        (&f1, at(0), 0),
    ] {
        assert_eq!(
            ok(
                store.break_glass_declared_since(f, since).await,
                "break_glass_declared_since"
            ),
            n,
            "{f} after {since:?}"
        );
    }

    // Each declaration wrote its audit entry.
    let audit = ok(store.accesses(&p1, None, 0, 10).await, "accesses");
    assert_eq!(
        audit.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        vec![e50, e30]
    );
    assert!(audit.iter().all(AuditEntry::is_intact));
    assert_eq!(
        ok(store.accesses(&p2, None, 0, 10).await, "accesses")[0].event,
        e40
    );

    // A read under the first window counts against it, wherever it is listed.
    ok(
        store
            .append_access(
                access(&f2, &p1, vec![Basis::BreakGlass(event_id(30))], 1, 100),
                &[(f1.clone(), 1)],
            )
            .await,
        "append_access",
    );
    let read = BreakGlassUse { reads: 1, ..u30 };
    assert_eq!(
        ok(store.break_glass_uses_of(&p1).await, "uses of p1"),
        vec![read.clone(), u50.clone()]
    );
    assert_eq!(
        ok(store.break_glass_uses(None).await, "uses"),
        vec![read, u40, u50]
    );
}

/// `latest_authored` is the latest `recorded_at` (to the nanosecond, before or after
/// 1970) of the records one facility wrote about one patient, whatever order they were
/// projected in, and `None` where it wrote none; a reset forgets it.
pub async fn latest_authored_is_the_facilitys_latest_record_of_the_patient<S: Store + ?Sized>(
    store: &S,
) {
    let (f1, f2, f3) = (facility(F1), facility(F2), facility(F3));
    let (p1, p2) = (patient(P1), patient(P2));
    let t = |s, ns| Timestamp::new(T0 + s, ns).expect("in range");
    let recorded = |n, f: &FacilityId, seq, p: &PatientId, when| NewRecord {
        recorded_at: when,
        ..record(n, f, seq, p)
    };
    let latest = t(900, 7);
    let records = [
        recorded(1, &f1, 1, &p1, t(500, 0)),
        recorded(2, &f1, 2, &p1, latest),
        recorded(3, &f1, 3, &p1, t(900, 5)),
        recorded(4, &f1, 4, &p1, at(-T0 - 86_400)),
        recorded(5, &f2, 1, &p1, t(100, 0)),
        // Later than any of p1's, and about another patient.
        recorded(6, &f1, 5, &p2, t(5_000, 0)),
    ];
    ok(store.apply(record_batch(&records[..2])).await, "apply");
    ok(store.apply(record_batch(&records[2..])).await, "apply");

    let standing = |f: &FacilityId, p: &PatientId| {
        let (f, p) = (f.clone(), p.clone());
        async move { ok(store.latest_authored(&f, &p).await, "latest_authored") }
    };
    assert_eq!(standing(&f1, &p1).await, Some(latest));
    assert_eq!(standing(&f2, &p1).await, Some(t(100, 0)));
    assert_eq!(standing(&f1, &p2).await, Some(t(5_000, 0)));
    assert_eq!(standing(&f2, &p2).await, None);
    assert_eq!(standing(&f3, &p1).await, None);

    ok(store.reset_projections().await, "reset");
    assert_eq!(standing(&f1, &p1).await, None);
}

/// `record_facts` gives the facility, kind, clinical time and sensitivity of every
/// record of the patient (corrected ones too), exactly, and nothing of others'.
pub async fn record_facts_cover_every_record_of_the_patient<S: Store + ?Sized>(store: &S) {
    let (f1, f2, f3) = (facility(F1), facility(F2), facility(F3));
    let (p1, p2) = (patient(P1), patient(P2));
    let records = [
        NewRecord {
            kind: RecordKind::Condition,
            sensitivity: vec![SensitivityLabel::Hiv, SensitivityLabel::MentalHealth],
            occurred_at: Timestamp::new(T0 + 1, 999).expect("in range"),
            ..record(1, &f1, 1, &p1)
        },
        record(2, &f2, 1, &p1),
        NewRecord {
            kind: RecordKind::Condition,
            sensitivity: vec![SensitivityLabel::Reproductive],
            supersedes: Some(event_id(1)),
            ..record(3, &f1, 2, &p1)
        },
        NewRecord {
            kind: RecordKind::Allergy,
            occurred_at: at(-T0 - 1_000),
            ..record(4, &f3, 1, &p1)
        },
        record(5, &f1, 3, &p2),
    ];
    ok(store.apply(record_batch(&records[..3])).await, "apply");
    ok(store.apply(record_batch(&records[3..])).await, "apply");

    let facts_of = |r: &NewRecord| RecordFactsRow {
        facility_id: r.facility_id.clone(),
        kind: r.kind,
        occurred_at: r.occurred_at,
        sensitivity: r.sensitivity.clone(),
    };
    let sorted_facts = |mut v: Vec<RecordFactsRow>| {
        v.sort_by(|a, b| {
            (&a.facility_id, a.occurred_at, a.kind.code()).cmp(&(
                &b.facility_id,
                b.occurred_at,
                b.kind.code(),
            ))
        });
        v
    };
    assert_eq!(
        sorted_facts(ok(store.record_facts(&p1).await, "record_facts")),
        sorted_facts(records[..4].iter().map(facts_of).collect())
    );
    assert_eq!(
        ok(store.record_facts(&p2).await, "record_facts"),
        vec![facts_of(&records[4])]
    );
    assert!(
        ok(
            store.record_facts(&patient("079200000001")).await,
            "record_facts"
        )
        .is_empty()
    );
}

/// A patient request id can be claimed once: `true` the first time, `false` on every
/// reuse; ids used before `forget_before` are forgotten (claimable again), those used
/// at or after it are kept.
pub async fn claim_request_id_is_single_use_and_forgets_old_ids<S: Store + ?Sized>(store: &S) {
    let claim = |n: u64, now: i64, forget_before: i64| async move {
        ok(
            store
                .claim_request_id(event_id(n), at(now), at(forget_before))
                .await,
            "claim_request_id",
        )
    };
    assert!(claim(1, 100, 0).await, "a fresh id");
    assert!(!claim(1, 100, 0).await, "reused at once");
    assert!(!claim(1, 150, 0).await, "reused later");
    assert!(claim(2, 300, 0).await, "another id");

    // Forgetting what was used before 200: id 1, not id 2.
    assert!(claim(3, 400, 200).await, "a fresh id");
    assert!(claim(1, 401, 0).await, "id 1 was forgotten");
    assert!(!claim(2, 402, 0).await, "id 2 was kept");
    // Used exactly at `forget_before`: kept.
    assert!(
        !claim(3, 403, 400).await,
        "used at 400, kept when forgetting before 400"
    );
    // Claimed again, id 1 counts from its new use.
    assert!(!claim(1, 404, 300).await, "id 1 was used at 401");
}

// ── Audit ────────────────────────────────────────────────────────────────────────────

/// Access events chain (seq 1, 2, 3, … from the zero hash, each after the previous
/// entry's hash) and verify; `accesses` pages one patient's entries; the exchange matrix
/// adds records and one access per author; a read under a break-glass window counts
/// against it.
pub async fn audit_chain_is_intact_and_counts_exchange<S: Store + ?Sized>(store: &S) {
    let (f1, f2, f3) = (facility(F1), facility(F2), facility(F3));
    let (p1, p2) = (patient(P1), patient(P2));
    let (use_, declared) = break_glass(40, &p1, &f3);
    ok(
        store
            .apply(ProjectionBatch {
                projections: vec![Projection::BreakGlass(use_, declared)],
                ..ProjectionBatch::default()
            })
            .await,
        "apply break-glass",
    );

    let e1 = ok(
        store
            .append_access(
                access(
                    &f2,
                    &p1,
                    vec![consent_basis(10, ConsentForm::PatientSigned)],
                    4,
                    100,
                ),
                &[(f1.clone(), 3), (f3.clone(), 1)],
            )
            .await,
        "append_access",
    );
    let e2 = ok(
        store
            .append_access(access(&f2, &p2, vec![Basis::Author], 0, 101), &[])
            .await,
        "append_access",
    );
    let e3 = ok(
        store
            .append_access(
                access(
                    &f3,
                    &p1,
                    vec![Basis::BreakGlass(event_id(40)), Basis::Author],
                    2,
                    102,
                ),
                &[(f1.clone(), 2)],
            )
            .await,
        "append_access",
    );
    let e4 = ok(
        store
            .append_access(
                access(&f2, &p1, vec![Basis::Author], 1, 103),
                &[(f1.clone(), 1)],
            )
            .await,
        "append_access",
    );

    let p1_entries = ok(store.accesses(&p1, None, 0, 100).await, "accesses");
    assert_eq!(p1_entries.len(), 4);
    let first = &p1_entries[0];
    assert_eq!((first.seq, first.prev_hash), (1, Sha256::ZERO));
    assert_eq!(p1_entries[1..], [e1.clone(), e3.clone(), e4.clone()]);
    let chain: Vec<&AuditEntry> = vec![first, &e1, &e2, &e3, &e4];
    for w in chain.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
        assert_eq!(w[1].prev_hash, w[0].entry_hash);
    }
    assert!(chain.iter().all(|e| e.is_intact()));
    assert!(p1_entries.iter().all(AuditEntry::is_intact));

    assert_eq!(
        ok(store.accesses(&p1, None, e1.seq, 1).await, "accesses page"),
        vec![e3.clone()]
    );
    assert_eq!(
        ok(store.accesses(&p2, None, 0, 100).await, "accesses"),
        vec![e2]
    );
    assert!(ok(store.accesses(&p1, None, e4.seq, 100).await, "accesses").is_empty());

    let cell = |r: &FacilityId, a: &FacilityId, records, accesses| ExchangeCell {
        reader: r.clone(),
        author: a.clone(),
        records,
        accesses,
    };
    assert_eq!(
        sorted_cells(ok(store.exchange_matrix().await, "matrix")),
        sorted_cells(vec![
            cell(&f2, &f1, 4, 2),
            cell(&f2, &f3, 1, 1),
            cell(&f3, &f1, 2, 1),
        ])
    );
    let uses = ok(store.break_glass_uses(None).await, "uses");
    assert_eq!(uses.len(), 1);
    assert_eq!(
        uses[0].reads, 1,
        "one read under the window; the declaration is none"
    );
}

/// The audit log holds every reader's accesses — a facility's, the national center's,
/// the patient's — refused ones as well as allowed, all in the one chain (each entry
/// in the current format and intact) and read back exactly, consent bases with their
/// form; `accesses` filters by reader (and pages within the filter); `access_counts`
/// counts allowed, refused and break-glass entries per patient; the exchange matrix
/// counts facility readers only.
pub async fn audit_records_every_reader_and_outcome<S: Store + ?Sized>(store: &S) {
    let (f1, f2, f3) = (facility(F1), facility(F2), facility(F3));
    let (p1, p2) = (patient(P1), patient(P2));
    let (use_, declared) = break_glass(5, &p1, &f3);
    ok(
        store
            .apply(ProjectionBatch {
                projections: vec![Projection::BreakGlass(use_, declared)],
                ..ProjectionBatch::default()
            })
            .await,
        "apply break-glass",
    );
    let decl = ok(store.accesses(&p1, None, 0, 10).await, "accesses")
        .pop()
        .expect("the declaration's entry");

    let consent = vec![
        consent_basis(10, ConsentForm::PatientSigned),
        consent_basis(11, ConsentForm::Attested),
    ];
    let by_facility = access(&f2, &p1, consent.clone(), 3, 100);
    let refused = AccessEvent {
        action: AccessAction::GetRecord,
        bases: Vec::new(),
        records_returned: 0,
        records_withheld: 0,
        outcome: AccessOutcome::Denied,
        ..access(&f3, &p1, Vec::new(), 0, 101)
    };
    let by_patient = AccessEvent {
        reader: Reader::Patient,
        purpose: None,
        action: AccessAction::PatientView,
        ..access(&f2, &p1, vec![Basis::Author], 4, 102)
    };
    let by_center = AccessEvent {
        reader: Reader::NationalCenter,
        purpose: None,
        action: AccessAction::ListAccesses,
        records_withheld: 0,
        ..access(&f2, &p1, Vec::new(), 0, 103)
    };
    let center_refused = AccessEvent {
        reader: Reader::NationalCenter,
        purpose: None,
        action: AccessAction::ListGrants,
        outcome: AccessOutcome::Denied,
        ..access(&f2, &p2, Vec::new(), 0, 104)
    };
    let e1 = ok(
        store
            .append_access(by_facility.clone(), &[(f1.clone(), 2), (f3.clone(), 1)])
            .await,
        "append_access",
    );
    let e2 = ok(
        store.append_access(refused.clone(), &[]).await,
        "append_access",
    );
    // Authors given with non-facility readers must not reach the matrix.
    let grouped = ok(
        store
            .append_accesses(vec![
                AccessAppend {
                    event: by_patient.clone(),
                    authors: vec![(f1.clone(), 4)],
                },
                AccessAppend {
                    event: by_center.clone(),
                    authors: vec![(f2.clone(), 2)],
                },
                AccessAppend {
                    event: center_refused.clone(),
                    authors: Vec::new(),
                },
            ])
            .await,
        "append_accesses",
    );
    let [e3, e4, e5]: [AuditEntry; 3] = grouped.try_into().expect("three entries");
    assert_eq!(
        [&e1, &e2, &e3, &e4, &e5].map(|e| e.event.clone()),
        [by_facility, refused, by_patient, by_center, center_refused],
        "entries hold what was given"
    );

    // One chain, every entry intact and in the current format, read back exactly.
    let p1_entries = ok(store.accesses(&p1, None, 0, 100).await, "accesses");
    assert_eq!(
        p1_entries,
        vec![decl.clone(), e1.clone(), e2.clone(), e3.clone(), e4.clone()]
    );
    let chain = [&decl, &e1, &e2, &e3, &e4, &e5];
    for w in chain.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
        assert_eq!(w[1].prev_hash, w[0].entry_hash);
    }
    assert!(
        chain
            .iter()
            .all(|e| e.is_intact() && e.format == AuditFormat::V2)
    );
    assert_eq!(p1_entries[1].event.bases, consent, "consent forms are kept");
    assert_eq!(
        ok(store.accesses(&p2, None, 0, 100).await, "accesses"),
        vec![e5.clone()]
    );

    // By reader.
    let by = |p: &PatientId, r: Reader, after: u64, limit: usize| {
        let p = p.clone();
        async move {
            ok(
                store.accesses(&p, Some(&r), after, limit).await,
                "accesses by reader",
            )
        }
    };
    assert_eq!(by(&p1, Reader::Patient, 0, 100).await, vec![e3.clone()]);
    assert_eq!(
        by(&p1, Reader::NationalCenter, 0, 100).await,
        vec![e4.clone()]
    );
    assert_eq!(
        by(&p1, Reader::Facility(f2.clone()), 0, 100).await,
        vec![e1.clone()]
    );
    assert_eq!(
        by(&p1, Reader::Facility(f3.clone()), 0, 100).await,
        vec![decl.clone(), e2.clone()]
    );
    assert_eq!(
        by(&p1, Reader::Facility(f3.clone()), 0, 1).await,
        vec![decl.clone()]
    );
    assert_eq!(
        by(&p1, Reader::Facility(f3.clone()), decl.seq, 1).await,
        vec![e2.clone()],
        "paging within the filter"
    );
    assert!(
        by(&p1, Reader::Facility(f1.clone()), 0, 100)
            .await
            .is_empty()
    );
    assert!(by(&p1, Reader::Patient, e3.seq, 100).await.is_empty());
    assert_eq!(by(&p2, Reader::NationalCenter, 0, 100).await, vec![e5]);
    assert!(by(&p2, Reader::Patient, 0, 100).await.is_empty());
    assert!(by(&p1, Reader::Patient, 0, 0).await.is_empty());

    // Counted.
    assert_eq!(
        ok(store.access_counts(&p1).await, "access_counts"),
        AccessCounts {
            allowed: 4,
            denied: 1,
            break_glass: 1,
        }
    );
    assert_eq!(
        ok(store.access_counts(&p2).await, "access_counts"),
        AccessCounts {
            allowed: 0,
            denied: 1,
            break_glass: 0,
        }
    );
    assert_eq!(
        ok(
            store.access_counts(&patient("079200000001")).await,
            "access_counts"
        ),
        AccessCounts::default()
    );

    // The matrix is facility × facility.
    let cell = |r: &FacilityId, a: &FacilityId, records, accesses| ExchangeCell {
        reader: r.clone(),
        author: a.clone(),
        records,
        accesses,
    };
    assert_eq!(
        sorted_cells(ok(store.exchange_matrix().await, "matrix")),
        sorted_cells(vec![cell(&f2, &f1, 2, 1), cell(&f2, &f3, 1, 1)])
    );
}

/// A group commit of access events chains them in order after the last entry, exactly
/// as one-by-one appends would, and counts them in the exchange matrix.
pub async fn audit_batches_chain_like_single_appends<S: Store + ?Sized>(store: &S) {
    let (f1, f2) = (facility(F1), facility(F2));
    let p = patient(P1);
    assert!(ok(store.append_accesses(Vec::new()).await, "empty batch").is_empty());
    let first = ok(
        store
            .append_access(
                access(&f2, &p, vec![Basis::Author], 1, 100),
                &[(f1.clone(), 1)],
            )
            .await,
        "append_access",
    );
    let batch: Vec<AccessAppend> = (0..3)
        .map(|i| AccessAppend {
            event: access(&f2, &p, vec![Basis::Author], 2, 101 + i),
            authors: vec![(f1.clone(), 2)],
        })
        .collect();
    let events: Vec<AccessEvent> = batch.iter().map(|a| a.event.clone()).collect();
    let grouped = ok(store.append_accesses(batch).await, "append_accesses");
    assert_eq!(grouped.len(), 3);
    assert_eq!(
        grouped.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        events,
        "returned in the order given"
    );
    let last = ok(
        store
            .append_access(access(&f2, &p, vec![Basis::Author], 0, 104), &[])
            .await,
        "append_access",
    );
    let stored = ok(store.accesses(&p, None, 0, 100).await, "accesses");
    let mut expected = vec![first];
    expected.extend(grouped);
    expected.push(last);
    assert_eq!(stored, expected);
    for w in stored.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
        assert_eq!(w[1].prev_hash, w[0].entry_hash);
    }
    assert!(stored.iter().all(AuditEntry::is_intact));
    assert_eq!(
        ok(store.exchange_matrix().await, "matrix"),
        vec![ExchangeCell {
            reader: f2.clone(),
            author: f1.clone(),
            records: 7,
            accesses: 4,
        }]
    );
}

fn sorted_cells(mut cells: Vec<ExchangeCell>) -> Vec<ExchangeCell> {
    cells.sort_by(|a, b| (&a.reader, &a.author).cmp(&(&b.reader, &b.author)));
    cells
}

/// Replaying a break-glass declaration after `reset_projections` restores the window
/// but writes no second audit entry, and the reads counted under it are kept.
pub async fn break_glass_audit_is_idempotent_across_reset<S: Store + ?Sized>(store: &S) {
    let (f1, f3) = (facility(F1), facility(F3));
    let p = patient(P1);
    let (use_, declared) = break_glass(7, &p, &f3);
    let batch = ProjectionBatch {
        projections: vec![Projection::BreakGlass(use_.clone(), declared.clone())],
        offsets: vec![(0, 8)],
        ..ProjectionBatch::default()
    };
    ok(store.apply(batch.clone()).await, "apply");
    ok(
        store
            .append_access(
                access(&f3, &p, vec![Basis::BreakGlass(event_id(7))], 2, 50),
                &[(f1, 2)],
            )
            .await,
        "append_access",
    );
    let before = ok(store.accesses(&p, None, 0, 100).await, "accesses");
    assert_eq!(before.len(), 2);

    ok(store.reset_projections().await, "reset");
    assert!(ok(store.break_glass(&p).await, "break_glass").is_empty());
    assert!(ok(store.break_glass_uses(None).await, "uses").is_empty());
    assert_eq!(
        ok(store.accesses(&p, None, 0, 100).await, "accesses"),
        before
    );

    ok(store.apply(batch).await, "replay");
    assert_eq!(
        ok(store.accesses(&p, None, 0, 100).await, "accesses"),
        before,
        "no second audit entry for the declaration"
    );
    assert_eq!(
        ok(store.break_glass(&p).await, "break_glass"),
        vec![use_.window.clone()]
    );
    assert_eq!(
        ok(store.break_glass_uses(None).await, "uses"),
        vec![BreakGlassUse { reads: 1, ..use_ }],
        "reads survive the reset"
    );
    let next = ok(
        store
            .append_access(access(&f3, &p, vec![Basis::Author], 0, 60), &[])
            .await,
        "append_access",
    );
    assert_eq!(next.prev_hash, before[1].entry_hash, "the chain continues");
}

/// `reset_projections` empties every projection (rejections and the monitor's counts
/// too: ingest's refusals are projected from the log's ingest reports) and the offsets,
/// and keeps the log, the audit log and the exchange matrix. A replay then starts
/// `patient_seq` at 1 again.
pub async fn reset_projections_keeps_log_and_audit<L, S>(log: &L, store: &S)
where
    L: EventLog + ?Sized,
    S: Store + ?Sized,
{
    let (f1, f2, f3) = (facility(F1), facility(F2), facility(F3));
    let p = patient(P1);
    let chain = ChainKey::Facility(f1.clone());
    let positions = ok(
        log.append(vec![append(&chain, 1, 1), append(&chain, 2, 2)])
            .await,
        "append",
    );
    let partition = positions[0].partition;
    let log_before = ok(log.read(partition, 0, 100).await, "read");
    let end_before = ok(log.end_offset(partition).await, "end_offset");

    let r1 = NewRecord {
        position: positions[0],
        ..record(1, &f1, 1, &p)
    };
    let mut batch = record_batch(std::slice::from_ref(&r1));
    batch.offsets = vec![(partition, positions[1].offset + 1)];
    let (use_, declared) = break_glass(2, &p, &f2);
    batch.projections.extend([
        Projection::ConsentEvent(consent_event(
            3,
            ConsentEventKind::AttestedGrant,
            &p,
            Some(&f1),
        )),
        Projection::BreakGlass(use_, declared),
        Projection::FacilityRegistered(FacilityInfo {
            facility_id: f1.clone(),
            name: "Bệnh viện Đa khoa".into(),
            province: "Hà Nội".into(),
            level: FacilityLevel::Specialized,
        }),
        Projection::KeyAdded(key(1, &f1)),
        Projection::Rejection(rejection(
            2,
            Some(&f1),
            Reason::InvalidField,
            2,
            Some(positions[1]),
        )),
    ]);
    batch.stats.push(StatsDelta {
        facility_id: f1.clone(),
        accepted: 1,
        duplicates: 0,
        rejected: vec![(Reason::InvalidField, 1)],
        last_seen: at(2),
    });
    ok(store.apply(batch.clone()).await, "apply");
    ok(
        store
            .append_access(
                access(&f2, &p, vec![Basis::Author], 1, 10),
                &[(f1.clone(), 1)],
            )
            .await,
        "append_access",
    );
    let audit_before = ok(store.accesses(&p, None, 0, 100).await, "accesses");
    let matrix_before = ok(store.exchange_matrix().await, "matrix");
    assert_eq!(audit_before.len(), 2);

    ok(store.reset_projections().await, "reset");

    // The log is untouched.
    assert_eq!(ok(log.read(partition, 0, 100).await, "read"), log_before);
    assert_eq!(
        ok(log.end_offset(partition).await, "end_offset"),
        end_before
    );
    // Every projection is gone.
    assert!(ok(store.records_after(&p, 0, 10).await, "records_after").is_empty());
    assert!(ok(store.timeline(&timeline_query(&p, 10)).await, "timeline").is_empty());
    assert_eq!(ok(store.record(event_id(1)).await, "record"), None);
    assert!(ok(store.record_facts(&p).await, "record_facts").is_empty());
    assert_eq!(
        ok(store.latest_authored(&f1, &p).await, "latest_authored"),
        None
    );
    assert!(ok(store.consent_events(&p).await, "consent_events").is_empty());
    assert_eq!(
        ok(store.consent_event(event_id(3)).await, "consent_event"),
        None
    );
    assert!(ok(store.attested_grants(None, 10).await, "attested_grants").is_empty());
    assert!(
        ok(
            store
                .event_ids_taken(&[event_id(1), event_id(2), event_id(3)])
                .await,
            "ids"
        )
        .is_empty(),
        "no id is taken any more"
    );
    assert!(ok(store.break_glass(&p).await, "break_glass").is_empty());
    assert!(ok(store.break_glass_uses(None).await, "uses").is_empty());
    assert!(ok(store.break_glass_uses_of(&p).await, "uses of p").is_empty());
    assert_eq!(
        ok(
            store.break_glass_declared_since(&f2, at(0)).await,
            "declared since"
        ),
        0
    );
    assert!(ok(store.facilities().await, "facilities").is_empty());
    assert_eq!(ok(store.facility(&f1).await, "facility"), None);
    assert!(ok(store.keys(None).await, "keys").is_empty());
    let snapshot = ok(store.projector_snapshot().await, "snapshot");
    assert!(snapshot.offsets.is_empty() && snapshot.keys.is_empty());
    assert!(ok(store.projected_offsets().await, "offsets").is_empty());
    assert_eq!(
        ok(
            store.chain_context(&chain, event_id(3), 3).await,
            "chain_context"
        )
        .head,
        ChainHead::EMPTY
    );
    // Audit is kept; the monitor's figures go with the projections.
    assert_eq!(
        ok(store.accesses(&p, None, 0, 100).await, "accesses"),
        audit_before
    );
    assert_eq!(ok(store.exchange_matrix().await, "matrix"), matrix_before);
    assert!(ok(store.rejections(None, 100).await, "rejections").is_empty());
    let stats = ok(store.facility_stats().await, "facility_stats");
    for f in [&f1, &f2, &f3] {
        assert!(
            stats.iter().all(|s| &s.facility_id != f),
            "no figures left for {f}"
        );
    }

    // The replay rebuilds, from patient_seq 1.
    ok(store.apply(batch).await, "replay");
    assert_eq!(
        ok(store.records_after(&p, 0, 10).await, "records_after"),
        vec![stored(&r1, 1, None)]
    );
    assert_eq!(
        ok(store.accesses(&p, None, 0, 100).await, "accesses"),
        audit_before,
        "the replayed break-glass adds no audit entry"
    );
    assert_eq!(
        ok(store.consent_event(event_id(3)).await, "consent_event"),
        Some(consent_event(
            3,
            ConsentEventKind::AttestedGrant,
            &p,
            Some(&f1)
        ))
    );
}

// ── Registry ─────────────────────────────────────────────────────────────────────────

/// Facilities upsert (a second registration replaces the first); keys read back per
/// facility and in the projector snapshot; a key revocation sets `revoked_at` and the
/// reason.
pub async fn registry_and_keys_round_trip<S: Store + ?Sized>(store: &S) {
    let (f1, f2) = (facility(F1), facility(F2));
    let info = |f: &FacilityId, name: &str, level| FacilityInfo {
        facility_id: f.clone(),
        name: name.to_owned(),
        province: "Hà Nội".to_owned(),
        level,
    };
    let (k1, k2, k3) = (key(1, &f1), key(2, &f1), key(3, &f2));
    ok(
        store
            .apply(ProjectionBatch {
                projections: vec![
                    Projection::FacilityRegistered(info(
                        &f2,
                        "Bệnh viện tỉnh",
                        FacilityLevel::Basic,
                    )),
                    Projection::FacilityRegistered(info(&f1, "Bệnh viện A", FacilityLevel::Basic)),
                    Projection::KeyAdded(k1.clone()),
                    Projection::KeyAdded(k2.clone()),
                    Projection::KeyAdded(k3.clone()),
                ],
                links: vec![ChainLink {
                    chain: ChainKey::Registry,
                    seq: 1,
                    event_id: event_id(1),
                    event_hash: envelope(1).event_hash(),
                    position: pos(1),
                    recorded_at: Some(at(1)),
                }],
                ..ProjectionBatch::default()
            })
            .await,
        "apply",
    );
    ok(
        store
            .apply(ProjectionBatch {
                projections: vec![
                    Projection::FacilityRegistered(info(
                        &f1,
                        "Bệnh viện Đa khoa A",
                        FacilityLevel::Specialized,
                    )),
                    Projection::KeyRevoked {
                        key_id: k2.key_id(),
                        revoked_at: at(100),
                        revoked_seq: 2,
                        reason: "key compromised".into(),
                    },
                ],
                ..ProjectionBatch::default()
            })
            .await,
        "apply",
    );

    let by_id = |mut v: Vec<FacilityInfo>| {
        v.sort_by(|a, b| a.facility_id.cmp(&b.facility_id));
        v
    };
    assert_eq!(
        by_id(ok(store.facilities().await, "facilities")),
        vec![
            info(&f1, "Bệnh viện Đa khoa A", FacilityLevel::Specialized),
            info(&f2, "Bệnh viện tỉnh", FacilityLevel::Basic),
        ]
    );
    assert_eq!(
        ok(store.facility(&f2).await, "facility"),
        Some(info(&f2, "Bệnh viện tỉnh", FacilityLevel::Basic))
    );
    assert_eq!(ok(store.facility(&facility(F3)).await, "facility"), None);

    let k2_revoked = KeyRecord {
        revoked_at: Some(at(100)),
        revoked_seq: Some(2),
        ..k2.clone()
    };
    let key_ids = |keys: Vec<KeyRecord>| sorted(keys.iter().map(|k| k.key_id()).collect());
    let f1_keys = ok(store.keys(Some(&f1)).await, "keys");
    assert_eq!(f1_keys.len(), 2);
    for k in &f1_keys {
        if k.key.key_id() == k2.key_id() {
            assert_eq!(k.key, k2_revoked);
            assert_eq!(k.revocation_reason.as_deref(), Some("key compromised"));
        } else {
            assert_eq!(k.key, k1);
            assert_eq!(k.revocation_reason, None);
        }
    }
    let all = ok(store.keys(None).await, "keys");
    assert_eq!(
        key_ids(all.into_iter().map(|k| k.key).collect()),
        key_ids(vec![k1.clone(), k2.clone(), k3.clone()])
    );
    let snapshot = ok(store.projector_snapshot().await, "snapshot");
    let mut keys = snapshot.keys;
    keys.sort_by_key(|k| k.key_id());
    let mut want = vec![k1, k2_revoked, k3];
    want.sort_by_key(|k| k.key_id());
    assert_eq!(
        keys, want,
        "the snapshot has every key, revocations included"
    );
    let registry = ok(
        store
            .chain_context(&ChainKey::Registry, event_id(2), 2)
            .await,
        "chain_context",
    );
    assert_eq!(
        (registry.head.seq, registry.head.recorded_at),
        (1, Some(at(1)))
    );
}

/// Keys keep the registry seqs that added and revoked them: `registered_seq` from
/// `KeyAdded` (0 for a configured root key), `revoked_seq` from `KeyRevoked` (the first
/// revocation stands, its seq with its time) or from a key added already revoked; `keys`
/// and `projector_snapshot` return them; `reset_projections` clears them and a replay
/// restores them.
pub async fn keys_keep_their_registry_seqs<S: Store + ?Sized>(store: &S) {
    let (f1, f2) = (facility(F1), facility(F2));
    let root = KeyRecord {
        public_key: PublicKey::from_bytes([7; 32]),
        owner: KeyOwner::Root,
        valid_from: at(-100),
        revoked_at: None,
        registered_seq: 0,
        revoked_seq: None,
    };
    let k1 = KeyRecord {
        // Past 2^53: no detour through a floating-point number.
        registered_seq: 9_007_199_254_740_993,
        ..key(1, &f1)
    };
    let k2 = key(2, &f1);
    let k3 = KeyRecord {
        revoked_at: Some(at(50)),
        revoked_seq: Some(6),
        ..key(3, &f2)
    };
    let revoke = |k: &KeyRecord, t: i64, seq: u64, reason: &str| Projection::KeyRevoked {
        key_id: k.key_id(),
        revoked_at: at(t),
        revoked_seq: seq,
        reason: reason.to_owned(),
    };
    let batches = [
        ProjectionBatch {
            projections: vec![
                Projection::KeyAdded(root.clone()),
                Projection::KeyAdded(k1.clone()),
                Projection::KeyAdded(k2.clone()),
                Projection::KeyAdded(k3.clone()),
                revoke(&k2, 100, 7, "lost"),
            ],
            ..ProjectionBatch::default()
        },
        ProjectionBatch {
            projections: vec![revoke(&k2, 200, 9, "again"), revoke(&k1, 300, 8, "rotated")],
            ..ProjectionBatch::default()
        },
    ];
    let want = sorted_keys(vec![
        root.clone(),
        KeyRecord {
            revoked_at: Some(at(300)),
            revoked_seq: Some(8),
            ..k1.clone()
        },
        KeyRecord {
            revoked_at: Some(at(100)),
            revoked_seq: Some(7),
            ..k2.clone()
        },
        k3.clone(),
    ]);
    let want_reasons = sorted(vec![
        (root.key_id(), None),
        (k1.key_id(), Some("rotated".to_owned())),
        (k2.key_id(), Some("lost".to_owned())),
        (k3.key_id(), None),
    ]);
    let check = |when: &'static str| {
        let (want, want_reasons, k3, f2) =
            (want.clone(), want_reasons.clone(), k3.clone(), f2.clone());
        async move {
            let all = ok(store.keys(None).await, "keys");
            assert_eq!(
                sorted_keys(all.iter().map(|k| k.key.clone()).collect()),
                want,
                "keys, {when}"
            );
            let reasons: Vec<_> = sorted(
                all.iter()
                    .map(|k| (k.key.key_id(), k.revocation_reason.clone()))
                    .collect(),
            );
            assert_eq!(reasons, want_reasons, "{when}");
            let of_f2 = ok(store.keys(Some(&f2)).await, "keys of f2");
            assert_eq!(
                of_f2.into_iter().map(|k| k.key).collect::<Vec<_>>(),
                vec![k3.clone()],
                "{when}"
            );
            let snapshot = ok(store.projector_snapshot().await, "snapshot");
            assert_eq!(sorted_keys(snapshot.keys), want, "the snapshot, {when}");
        }
    };
    for b in &batches {
        ok(store.apply(b.clone()).await, "apply");
    }
    check("as projected").await;
    let of_f1 = ok(store.keys(Some(&f1)).await, "keys of f1");
    assert_eq!(
        sorted_keys(of_f1.into_iter().map(|k| k.key).collect()),
        want.iter()
            .filter(|k| k.owner == KeyOwner::Facility(f1.clone()))
            .cloned()
            .collect::<Vec<_>>()
    );

    ok(store.reset_projections().await, "reset");
    assert!(ok(store.keys(None).await, "keys").is_empty());
    assert!(
        ok(store.projector_snapshot().await, "snapshot")
            .keys
            .is_empty()
    );
    for b in &batches {
        ok(store.apply(b.clone()).await, "replay");
    }
    check("replayed").await;
}

fn sorted_keys(mut keys: Vec<KeyRecord>) -> Vec<KeyRecord> {
    keys.sort_by_key(|k| k.key_id());
    keys
}

/// Projected chain links keep their event's `recorded_at`, and `chain_context(s)` report
/// the head's to the nanosecond, across the whole range: `None` for an empty chain and
/// for a link without one (a patient's statement, or a row projected before it was
/// recorded), `Some` again once a link with one follows; `reset_projections` clears them
/// with the links, and a replay brings them back.
pub async fn projected_chain_heads_report_recorded_at<S: Store + ?Sized>(store: &S) {
    let (f1, f2, p) = (facility(F1), facility(F2), patient(P1));
    let (c1, c2) = (
        ChainKey::Facility(f1.clone()),
        ChainKey::Facility(f2.clone()),
    );
    let t = |s: i64, ns: i32| Timestamp::new(T0 + s, ns).expect("in range");
    let r1 = NewRecord {
        recorded_at: t(10, 123_456_789),
        ..record(1, &f1, 1, &p)
    };
    let r2 = record(2, &f1, 2, &p);
    let r3 = NewRecord {
        recorded_at: Timestamp::MIN,
        ..record(3, &f2, 1, &p)
    };
    let mut first = record_batch(&[r1.clone(), r2.clone(), r3.clone()]);
    first.links[1].recorded_at = None;
    first.links.push(ChainLink {
        chain: ChainKey::Registry,
        seq: 1,
        event_id: event_id(4),
        event_hash: envelope(4).event_hash(),
        position: pos(4),
        recorded_at: Some(Timestamp::MAX),
    });
    let r5 = NewRecord {
        recorded_at: t(4, 999_999_999),
        ..record(5, &f1, 3, &p)
    };
    let second = record_batch(std::slice::from_ref(&r5));

    let head = |chain: &ChainKey, next: u64| {
        let chain = chain.clone();
        async move {
            let ctx = ok(
                store
                    .chain_context(&chain, event_id(100 + next), next)
                    .await,
                "chain_context",
            );
            let links = [(event_id(100 + next), next), (event_id(1), 1)];
            let batch = ok(store.chain_contexts(&chain, &links).await, "chain_contexts");
            assert!(batch.iter().all(|c| c.head == ctx.head));
            ctx.head
        }
    };
    assert_eq!(head(&c1, 1).await, ChainHead::EMPTY);

    for replay in [false, true] {
        ok(store.apply(first.clone()).await, "apply");
        assert_eq!(
            head(&c1, 3).await,
            ChainHead {
                seq: 2,
                event_hash: r2.event_hash,
                event_id: Some(r2.event_id),
                recorded_at: None,
            },
            "a link without a recorded_at (replay: {replay})"
        );
        assert_eq!(head(&c2, 2).await.recorded_at, Some(Timestamp::MIN));
        assert_eq!(
            head(&ChainKey::Registry, 2).await.recorded_at,
            Some(Timestamp::MAX)
        );
        ok(store.apply(second.clone()).await, "apply");
        assert_eq!(
            head(&c1, 4).await,
            ChainHead {
                seq: 3,
                event_hash: r5.event_hash,
                event_id: Some(r5.event_id),
                recorded_at: Some(t(4, 999_999_999)),
            },
            "replay: {replay}"
        );
        if !replay {
            ok(store.reset_projections().await, "reset");
            for chain in [&c1, &c2, &ChainKey::Registry] {
                assert_eq!(head(chain, 1).await, ChainHead::EMPTY, "chain {chain}");
            }
        }
    }
}

// ── Monitor ──────────────────────────────────────────────────────────────────────────

/// Stats deltas add up per facility across batches, with ingest's rejections counted
/// in (a facility known only from those included; a row without a facility counted
/// nowhere); heads come from the projected chains; rejections list newest first, per
/// facility or all, exactly as recorded.
pub async fn monitor_stats_add_up<S: Store + ?Sized>(store: &S) {
    let (f1, f2, f3) = (facility(F1), facility(F2), facility(F3));
    let p = patient(P1);
    let invalid = rejection(3, Some(&f1), Reason::InvalidField, 5, Some(pos(3)));
    let fork = rejection(6, Some(&f1), Reason::Fork, 12, Some(pos(6)));
    let mut b1 = record_batch(&[record(1, &f1, 1, &p), record(2, &f1, 2, &p)]);
    b1.projections.push(Projection::Rejection(invalid.clone()));
    b1.links.push(ChainLink {
        chain: ChainKey::Facility(f1.clone()),
        seq: 3,
        event_id: event_id(3),
        event_hash: envelope(3).event_hash(),
        position: pos(3),
        recorded_at: Some(at(63)),
    });
    b1.stats.push(StatsDelta {
        facility_id: f1.clone(),
        accepted: 2,
        duplicates: 1,
        rejected: vec![(Reason::InvalidField, 1)],
        last_seen: at(10),
    });
    ok(store.apply(b1).await, "apply");

    let mut b2 = record_batch(&[record(4, &f2, 1, &p)]);
    b2.projections.push(Projection::Rejection(fork.clone()));
    b2.stats.extend([
        StatsDelta {
            facility_id: f1.clone(),
            accepted: 1,
            duplicates: 0,
            rejected: vec![(Reason::InvalidField, 1), (Reason::Fork, 1)],
            last_seen: at(20),
        },
        StatsDelta {
            facility_id: f2.clone(),
            accepted: 1,
            duplicates: 0,
            rejected: Vec::new(),
            last_seen: at(15),
        },
    ]);
    ok(store.apply(b2).await, "apply");

    let bad_signature = rejection(80, Some(&f1), Reason::BadSignature, 1, None);
    let gap = rejection(81, Some(&f3), Reason::SequenceGap, 30, None);
    let malformed = RejectionRow {
        facility_id: None,
        event_id: None,
        seq: None,
        event_hash: None,
        ..rejection(82, None, Reason::MalformedEnvelope, 40, None)
    };
    // Refusals and duplicates from ingest reports add to the projector's own, and to
    // last_seen.
    let b3 = ProjectionBatch {
        projections: [&bad_signature, &gap, &malformed]
            .into_iter()
            .map(|r| Projection::Rejection(r.clone()))
            .collect(),
        stats: vec![
            StatsDelta {
                facility_id: f1.clone(),
                accepted: 0,
                duplicates: 2,
                rejected: vec![(Reason::BadSignature, 1)],
                last_seen: at(5),
            },
            StatsDelta {
                facility_id: f2.clone(),
                accepted: 0,
                duplicates: 3,
                rejected: Vec::new(),
                last_seen: at(16),
            },
            StatsDelta {
                facility_id: f3.clone(),
                accepted: 0,
                duplicates: 0,
                rejected: vec![(Reason::SequenceGap, 1)],
                last_seen: at(30),
            },
        ],
        ..ProjectionBatch::default()
    };
    ok(store.apply(b3).await, "apply");

    let mut stats = ok(store.facility_stats().await, "facility_stats");
    stats.sort_by(|a, b| a.facility_id.cmp(&b.facility_id));
    for s in &mut stats {
        s.rejected.sort();
    }
    assert_eq!(stats.len(), 3, "f1, f2 and f3 (refusals only)");
    assert_eq!(
        stats[0],
        FacilityStats {
            facility_id: f1.clone(),
            accepted: 3,
            duplicates: 1 + 2,
            rejected: sorted(vec![
                (Reason::InvalidField, 2),
                (Reason::Fork, 1),
                (Reason::BadSignature, 1),
            ]),
            last_seen: Some(at(20)),
            head_seq: 3,
        }
    );
    assert_eq!(
        stats[1],
        FacilityStats {
            facility_id: f2.clone(),
            accepted: 1,
            duplicates: 3,
            rejected: Vec::new(),
            last_seen: Some(at(16)),
            head_seq: 1,
        }
    );
    assert_eq!(stats[2].facility_id, f3);
    assert_eq!(
        (
            stats[2].accepted,
            stats[2].rejected.clone(),
            stats[2].head_seq
        ),
        (0, vec![(Reason::SequenceGap, 1)], 0)
    );

    assert_eq!(
        ok(store.rejections(None, 100).await, "rejections"),
        vec![
            malformed,
            gap.clone(),
            fork.clone(),
            invalid.clone(),
            bad_signature.clone()
        ],
        "newest first, as recorded"
    );
    assert_eq!(
        ok(store.rejections(Some(&f1), 2).await, "rejections"),
        vec![fork, invalid]
    );
    assert_eq!(
        ok(store.rejections(Some(&f3), 10).await, "rejections"),
        vec![gap]
    );
    assert!(ok(store.rejections(Some(&f2), 10).await, "rejections").is_empty());
}

/// The `changes` counter advances after a committed batch, the batch is visible once
/// it has, and a follower waiting on it wakes.
pub async fn changes_counter_advances_after_apply<S: Store + ?Sized>(store: &S) {
    let f = facility(F1);
    let p = patient(P1);
    let mut rx = store.changes();
    let v0 = *rx.borrow_and_update();

    ok(
        store.apply(record_batch(&[record(1, &f, 1, &p)])).await,
        "apply",
    );
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("the counter changes after apply")
        .expect("the store keeps the sender");
    let v1 = *rx.borrow_and_update();
    assert!(v1 > v0);
    assert_eq!(
        ok(store.records_after(&p, 0, 10).await, "records_after").len(),
        1
    );
    assert!(
        *store.changes().borrow() >= v1,
        "a new subscriber sees the latest value"
    );

    let follower = async {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("a waiting follower wakes")
            .expect("the store keeps the sender");
        ok(store.records_after(&p, 1, 10).await, "records_after")
    };
    let writer = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ok(
            store.apply(record_batch(&[record(2, &f, 2, &p)])).await,
            "apply",
        );
    };
    let (seen, ()) = tokio::join!(follower, writer);
    assert_eq!(
        ids(&seen),
        vec![event_id(2)],
        "what woke the follower is visible"
    );
    assert!(*rx.borrow() > v1);
}

/// A batch moves the generation of its patients' buckets, and no other, by the time
/// `changes` advances; a reset moves every bucket.
pub async fn patient_changes_move_only_the_touched_buckets<S: Store + ?Sized>(store: &S) {
    use crate::changed::bucket_of;
    let f = facility(F1);
    let (p1, p2) = (patient(P1), patient(P2));
    assert_ne!(
        bucket_of(&p1),
        bucket_of(&p2),
        "the suite's patients share no bucket"
    );
    let touched = store.patient_changes();
    let mut rx = store.changes();
    rx.borrow_and_update();
    let (g1, g2) = (touched.generation(&p1), touched.generation(&p2));

    ok(
        store.apply(record_batch(&[record(1, &f, 1, &p1)])).await,
        "apply",
    );
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("the counter changes after apply")
        .expect("the store keeps the sender");
    assert!(touched.generation(&p1) > g1, "the batch's patient moved");
    assert_eq!(touched.generation(&p2), g2, "another patient did not");

    rx.borrow_and_update();
    ok(store.reset_projections().await, "reset");
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("the counter changes after a reset")
        .expect("the store keeps the sender");
    assert!(touched.generation(&p2) > g2, "a reset moves every patient");
}

/// The projector's batch lookups answer what the single ones do, in the order asked:
/// `chain_contexts` (head, same id, same seq; an empty chain; duplicates in the list)
/// and `event_ids_taken` (records and consent events use ids; unknown ids are free).
pub async fn projector_batch_lookups_match_single_ones<S: Store + ?Sized>(store: &S) {
    let (f1, f2, p) = (facility(F1), facility(F2), patient(P1));
    let records = [
        record(1, &f1, 1, &p),
        record(2, &f1, 2, &p),
        record(3, &f2, 1, &p),
    ];
    let mut batch = record_batch(&records);
    batch
        .projections
        .push(Projection::ConsentEvent(consent_event(
            20,
            ConsentEventKind::AttestedGrant,
            &p,
            Some(&f1),
        )));
    ok(store.apply(batch).await, "apply");

    let c1 = ChainKey::Facility(f1.clone());
    let chains = [
        (
            c1.clone(),
            vec![
                (event_id(1), 1),  // a duplicate
                (event_id(9), 2),  // a fork at seq 2
                (event_id(10), 3), // the next one
                (event_id(2), 7),  // a known id at another seq
                (event_id(1), 1),  // asked twice
                (event_id(11), u64::MAX),
            ],
        ),
        (
            ChainKey::Facility(f2.clone()),
            vec![(event_id(3), 1), (event_id(12), 2)],
        ),
        (ChainKey::Facility(facility(F3)), vec![(event_id(13), 1)]),
    ];
    for (chain, links) in &chains {
        let batch = ok(store.chain_contexts(chain, links).await, "chain_contexts");
        let mut single = Vec::new();
        for &(id, seq) in links {
            single.push(ok(
                store.chain_context(chain, id, seq).await,
                "chain_context",
            ));
        }
        assert_eq!(batch, single, "chain {chain}");
    }
    // And what they answer, spelled out for the first chain.
    let prior = |r: &NewRecord| chain::Prior {
        event_id: r.event_id,
        seq: r.seq,
        event_hash: r.event_hash,
    };
    let found = ok(
        store.chain_contexts(&c1, &chains[0].1).await,
        "chain_contexts",
    );
    let head = ChainHead {
        seq: 2,
        event_hash: records[1].event_hash,
        event_id: Some(records[1].event_id),
        recorded_at: Some(records[1].recorded_at),
    };
    assert!(found.iter().all(|c| c.head == head));
    let priors: Vec<_> = found
        .iter()
        .map(|c| (c.same_event_id, c.same_seq))
        .collect();
    assert_eq!(
        priors,
        vec![
            (Some(prior(&records[0])), Some(prior(&records[0]))),
            (None, Some(prior(&records[1]))),
            (None, None),
            (Some(prior(&records[1])), None),
            (Some(prior(&records[0])), Some(prior(&records[0]))),
            (None, None),
        ]
    );
    assert!(ok(store.chain_contexts(&c1, &[]).await, "empty").is_empty());

    let ids = [
        event_id(1),
        event_id(20),
        event_id(9),
        event_id(3),
        event_id(1),
    ];
    let taken = ok(store.event_ids_taken(&ids).await, "event_ids_taken");
    for id in ids {
        assert_eq!(
            taken.contains(&id),
            ok(store.event_id_taken(id).await, "event_id_taken"),
            "{id}"
        );
    }
    assert_eq!(
        taken,
        [event_id(1), event_id(20), event_id(3)]
            .into_iter()
            .collect()
    );
    assert!(ok(store.event_ids_taken(&[]).await, "empty").is_empty());
}
