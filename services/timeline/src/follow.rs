//! Follow streams: the backlog after a cursor, then every new record as soon as it is
//! projected, with heartbeats, for as long as the reader has a standing basis (a grant
//! or break-glass for this patient and purpose).
//!
//! All followers of one patient share a *tail*: one task that, after every applied
//! batch that may have touched the patient (the store's change counter and its
//! patient buckets), reads the patient's consent state and new records once and
//! publishes them with the records of its last few reads (see [`KEEP_READS`]). Each follower
//! decides consent for itself on that shared snapshot; only a follower behind the
//! window reads the store on its own. So a batch costs three store reads per followed
//! patient, not per follower (a chronic-care clinic's dashboard, or a thousand
//! followers of one patient, no longer multiply the store's load).
//!
//! A follower also wakes at the next instant its access can change by itself (a grant
//! expiring), so a revocation or an expiry ends it with PERMISSION_DENIED within one
//! projection batch.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hrx_consent::state::Loaded;
use hrx_domain::audit::{AccessAction, AccessOutcome};
use hrx_domain::consent::{Access, Basis};
use hrx_domain::{FacilityId, PatientId, Purpose, RecordKind, Timestamp};
use hrx_ports::{PortError, PortResult, StoredRecord};
use hrx_proto::v1;
use hrx_rpc::error::{RequestError, status};
use hrx_rpc::wire;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::{Timeline, cursor, facts};

/// Records read per store query.
const CHUNK: usize = 200;
/// Records a tail keeps for its followers: those its last [`KEEP_READS`] reads brought,
/// at most [`WINDOW`]. A follower that is caught up takes each snapshot within moments
/// of its publication, so a few reads' worth serves it; one further behind (a new
/// follower with an old cursor, a slow client) reads the store itself until it is
/// within the window. Keeping more would only hold memory per followed patient for
/// followers that no longer need it (a clinic follows thousands of patients).
const KEEP_READS: usize = 4;
const WINDOW: usize = 256;
/// How often an idle tail checks whether its followers are gone.
const TAIL_IDLE_CHECK: Duration = Duration::from_secs(5);

pub(crate) struct Spec {
    pub reader: FacilityId,
    pub patient: PatientId,
    pub purpose: Purpose,
    /// patient_seq of the last delivered record.
    pub after: u64,
    pub kinds: Vec<RecordKind>,
}

type Item = Result<v1::FollowResponse, Status>;

fn ended() -> Status {
    Status::permission_denied("no active consent or break-glass for this patient and purpose")
}

/// One patient's state as of the last applied batch, shared by its followers.
pub(crate) struct Snapshot {
    consent: Loaded,
    /// Records with patient_seq `last_seq - records.len() + 1 ..= last_seq`, in order.
    records: Vec<Arc<StoredRecord>>,
    last_seq: u64,
}

impl Snapshot {
    /// The first patient_seq the window holds.
    fn first_seq(&self) -> u64 {
        self.last_seq + 1 - self.records.len() as u64
    }
}

/// `None` until the tail's first read; an error ends every follower of the tail.
type Shared = Option<Result<Arc<Snapshot>, PortError>>;

/// The live tails by patient. A tail holds a receiver here itself, so it knows its
/// followers are gone when it is the only receiver left.
#[derive(Default)]
pub(crate) struct Tails {
    live: Mutex<HashMap<PatientId, watch::Receiver<Shared>>>,
}

impl Tails {
    /// The patient's tail, started (reading from `after`) if none is running.
    fn join(
        &self,
        timeline: &Arc<Timeline>,
        patient: &PatientId,
        after: u64,
    ) -> watch::Receiver<Shared> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = live.get(patient)
            && rx.has_changed().is_ok()
        {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        live.insert(patient.clone(), rx.clone());
        tokio::spawn(tail(timeline.clone(), patient.clone(), after, tx));
        rx
    }

    /// Removes the patient's tail if nobody but the map follows it; true if removed.
    fn leave_if_unfollowed(&self, patient: &PatientId, tx: &watch::Sender<Shared>) -> bool {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        // Under the lock no follower can join this tail meanwhile.
        if tx.receiver_count() > 1 {
            return false;
        }
        forget(&mut live, patient, tx);
        true
    }

    /// Removes the patient's tail whatever its followers (after it failed).
    fn remove(&self, patient: &PatientId, tx: &watch::Sender<Shared>) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        forget(&mut live, patient, tx);
    }
}

/// Removes `patient`'s entry if it is still this tail's (a newer tail may have
/// replaced it).
fn forget(
    live: &mut HashMap<PatientId, watch::Receiver<Shared>>,
    patient: &PatientId,
    tx: &watch::Sender<Shared>,
) {
    if live
        .get(patient)
        .is_some_and(|rx| rx.same_channel(&tx.subscribe()))
    {
        live.remove(patient);
    }
}

/// Reads the patient's consent state and records after `last_seq` once per applied
/// batch that may have touched the patient, and publishes them to its followers.
async fn tail(
    timeline: Arc<Timeline>,
    patient: PatientId,
    mut last_seq: u64,
    tx: watch::Sender<Shared>,
) {
    let store = &timeline.store;
    let mut changes = store.changes();
    // Which patients the batches touched: a batch of other patients wakes this tail but
    // costs no read (the store bumps the buckets before `changes`, so the generation
    // read here after a wake-up already shows the batch that caused it).
    let touched = store.patient_changes();
    let mut window: VecDeque<Arc<StoredRecord>> = VecDeque::new();
    // How many records each of the last reads added to the window, oldest first.
    let mut reads: VecDeque<usize> = VecDeque::new();
    loop {
        changes.borrow_and_update();
        // Read before the store: a batch committed during the read moves it, and the
        // next wake-up reads again.
        let seen = touched.generation(&patient);
        let read = async {
            let consent = timeline.consent.load(&patient).await?;
            let mut added = 0;
            loop {
                let rows = store.records_after(&patient, last_seq, CHUNK).await?;
                let full = rows.len() == CHUNK;
                for r in rows {
                    last_seq = r.patient_seq;
                    window.push_back(Arc::new(r));
                    added += 1;
                }
                if !full {
                    break;
                }
            }
            reads.push_back(added);
            while reads.len() > KEEP_READS {
                let old = reads.pop_front().unwrap_or(0);
                window.drain(..old.min(window.len()));
            }
            let over = window.len().saturating_sub(WINDOW);
            window.drain(..over);
            PortResult::Ok(consent)
        }
        .await;
        match read {
            Ok(consent) => {
                tx.send_replace(Some(Ok(Arc::new(Snapshot {
                    consent,
                    records: window.iter().cloned().collect(),
                    last_seq,
                }))));
            }
            Err(e) => {
                // Its followers end with the error; a new follower starts a new tail.
                timeline.tails.remove(&patient, &tx);
                tx.send_replace(Some(Err(e)));
                return;
            }
        }
        loop {
            if timeline.tails.leave_if_unfollowed(&patient, &tx) {
                return;
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        timeline.tails.remove(&patient, &tx);
                        tx.send_replace(Some(Err(PortError::Unavailable("the store stopped".into()))));
                        return;
                    }
                    if touched.generation(&patient) != seen {
                        break;
                    }
                }
                _ = tokio::time::sleep(TAIL_IDLE_CHECK) => {}
            }
        }
    }
}

/// Checks the reader may follow and its cursor, audits the start (or the refusal),
/// and spawns the stream's task.
pub(crate) async fn start(
    timeline: Arc<Timeline>,
    spec: Spec,
) -> Result<ReceiverStream<Item>, Status> {
    let standing = timeline
        .standing(&spec.reader, &spec.patient, spec.purpose)
        .await
        .map_err(|e| status(&e))?;
    let bases = standing.access(&spec.reader, spec.purpose).standing();
    if bases.is_empty() {
        timeline
            .refuse(
                &spec.reader,
                &spec.patient,
                spec.purpose,
                AccessAction::Follow,
                crate::ReadError::NoStanding,
            )
            .await
            .map_err(|e| status(&e))?;
    }
    // Each follower's cursor is checked on its own: one that names a record the
    // patient does not have is this follower's error, never its tail's.
    if spec.after > 0 {
        let at_or_after = timeline
            .store
            .records_after(&spec.patient, spec.after - 1, 1)
            .await
            .map_err(|e| status(&e))?;
        if at_or_after
            .first()
            .is_none_or(|r| r.patient_seq != spec.after)
        {
            return Err(
                RequestError::invalid("cursor", "not a cursor issued for this patient").into(),
            );
        }
    }
    timeline
        .audit_as(
            &spec.reader,
            &spec.patient,
            spec.purpose,
            AccessAction::Follow,
            AccessOutcome::Allowed,
            bases,
            (0, 0),
            &[],
        )
        .await
        .map_err(|e| status(&e))?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run(timeline, spec, tx));
    Ok(ReceiverStream::new(rx))
}

async fn run(timeline: Arc<Timeline>, mut spec: Spec, tx: mpsc::Sender<Item>) {
    if let Err(e) = pump(&timeline, &mut spec, &tx).await {
        let _ = tx.send(Err(e)).await;
    }
}

/// Delivers until access ends (Err) or the client goes away (Ok).
async fn pump(
    timeline: &Arc<Timeline>,
    spec: &mut Spec,
    tx: &mpsc::Sender<Item>,
) -> Result<(), Status> {
    let store = &timeline.store;
    let mut stopping = timeline.stopping.subscribe();
    let mut shared = timeline.tails.join(timeline, &spec.patient, spec.after);
    loop {
        if *stopping.borrow_and_update() {
            return Err(Status::unavailable(
                "the node is shutting down; follow again from the last cursor",
            ));
        }
        // Mark the snapshot seen before using it, so a newer one wakes us again.
        let waited = shared
            .wait_for(Option::is_some)
            .await
            .map(|s| s.clone().expect("waited for a snapshot"));
        let snapshot = match waited {
            Ok(s) => s,
            // The tail ended (its followers had all gone a moment ago): start another.
            Err(_) => {
                shared = timeline.tails.join(timeline, &spec.patient, spec.after);
                continue;
            }
        };
        let snapshot = snapshot.map_err(|e| status(&e))?;
        let now = Timestamp::now();
        let access = Access {
            reader: &spec.reader,
            purpose: spec.purpose,
            now,
            grants: &snapshot.consent.state.grants,
            break_glass: &snapshot.consent.windows,
        };
        if access.standing().is_empty() {
            return Err(ended());
        }
        // Behind the shared window: catch up from the store, a chunk at a time.
        if spec.after + 1 < snapshot.first_seq() {
            let rows = store
                .records_after(&spec.patient, spec.after, CHUNK)
                .await
                .map_err(|e| status(&e))?;
            if rows.is_empty() {
                // The window holds records after our cursor that the store does not:
                // impossible unless the store lost projected records.
                return Err(Status::internal(
                    "the store has no records where the follow window has some",
                ));
            }
            let to = (&spec.kinds[..], &spec.patient, &mut spec.after);
            if !deliver(timeline, to, &access, rows.iter(), tx).await? {
                return Ok(());
            }
            continue;
        }
        let from = spec.after;
        let fresh = snapshot
            .records
            .iter()
            .map(|r| &**r)
            .filter(|r| r.patient_seq > from);
        let to = (&spec.kinds[..], &spec.patient, &mut spec.after);
        if !deliver(timeline, to, &access, fresh, tx).await? {
            return Ok(());
        }
        let wake_at = access.next_change();
        let until_change = wake_at
            .map(|t| {
                Duration::from_nanos(
                    (t.unix_nanos() - now.unix_nanos()).clamp(0, u64::MAX as i128) as u64,
                )
            })
            .unwrap_or(timeline.config.heartbeat);
        tokio::select! {
            _ = shared.changed() => {}
            _ = tokio::time::sleep(until_change.min(timeline.config.heartbeat)) => {
                if wake_at.is_none_or(|t| Timestamp::now() < t) {
                    let beat = v1::FollowResponse {
                        cursor: cursor::encode_follow(spec.after),
                        item: Some(v1::follow_response::Item::Heartbeat(v1::Heartbeat { at: wire::time(Timestamp::now()) })),
                    };
                    if tx.send(Ok(beat)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            _ = tx.closed() => return Ok(()),
            _ = stopping.changed() => {}
        }
    }
}

/// Sends the records of `batch` the reader wants and may see, after auditing them as
/// one delivery, and moves the cursor past the whole batch; false when the client has
/// gone.
async fn deliver<'r>(
    timeline: &Timeline,
    (kinds, patient, after): (&[RecordKind], &PatientId, &mut u64),
    access: &Access<'_>,
    batch: impl Iterator<Item = &'r StoredRecord>,
    tx: &mpsc::Sender<Item>,
) -> Result<bool, Status> {
    let mut last = None;
    let mut items = Vec::new();
    let mut bases: Vec<Basis> = Vec::new();
    let mut authors: Vec<(FacilityId, u64)> = Vec::new();
    for r in batch {
        last = Some(r.patient_seq);
        let wanted = kinds.is_empty() || kinds.contains(&r.kind);
        let Some(basis) = access.decide(&facts(r)).filter(|_| wanted) else {
            continue;
        };
        if !bases.contains(&basis) {
            bases.push(basis);
        }
        match authors.iter_mut().find(|(f, _)| *f == r.facility_id) {
            Some((_, n)) => *n += 1,
            None => authors.push((r.facility_id.clone(), 1)),
        }
        items.push(v1::FollowResponse {
            cursor: cursor::encode_follow(r.patient_seq),
            item: Some(v1::follow_response::Item::Entry(wire::entry(
                r.clone(),
                &basis,
            ))),
        });
    }
    if !items.is_empty() {
        // Audited before anything is sent: the patient's access list shows what each
        // follower received, batch by batch.
        timeline
            .audit_as(
                access.reader,
                patient,
                access.purpose,
                AccessAction::FollowDelivery,
                AccessOutcome::Allowed,
                bases,
                (items.len() as u64, 0),
                &authors,
            )
            .await
            .map_err(|e| status(&e))?;
    }
    for item in items {
        if tx.send(Ok(item)).await.is_err() {
            return Ok(false);
        }
    }
    if let Some(seq) = last {
        *after = seq;
    }
    Ok(true)
}
