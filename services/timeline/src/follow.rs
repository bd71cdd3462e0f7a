//! Follow streams: the backlog after a cursor, then every new record as soon as it is
//! projected, with heartbeats, for as long as the reader has a standing basis (a grant
//! or break-glass for this patient and purpose).
//!
//! The stream wakes on the store's change counter (every applied batch) and at the next
//! instant its access can change by itself (a grant expiring), so a revocation or an
//! expiry ends it with PERMISSION_DENIED within one projection batch.

use std::sync::Arc;

use hrx_domain::audit::AccessAction;
use hrx_domain::consent::Access;
use hrx_domain::{FacilityId, PatientId, Purpose, RecordKind, Timestamp};
use hrx_proto::v1;
use hrx_rpc::error::{RequestError, status};
use hrx_rpc::wire;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::{Timeline, cursor, facts};

/// Records read per backlog query.
const CHUNK: usize = 200;

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

/// Checks the reader may follow, audits the start, and spawns the stream's task.
pub(crate) async fn start(
    timeline: Arc<Timeline>,
    spec: Spec,
) -> Result<ReceiverStream<Item>, Status> {
    let store = &timeline.store;
    let grants = store.grants(&spec.patient).await.map_err(|e| status(&e))?;
    let glass = store
        .break_glass(&spec.patient)
        .await
        .map_err(|e| status(&e))?;
    let standing = Access {
        reader: &spec.reader,
        purpose: spec.purpose,
        now: Timestamp::now(),
        grants: &grants,
        break_glass: &glass,
    }
    .standing();
    if standing.is_empty() {
        return Err(RequestError::PermissionDenied(
            "following needs an active consent or break-glass for this patient and purpose",
        )
        .into());
    }
    timeline
        .audit(
            &spec.reader,
            &spec.patient,
            spec.purpose,
            AccessAction::Follow,
            standing,
            0,
            0,
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
async fn pump(timeline: &Timeline, spec: &mut Spec, tx: &mpsc::Sender<Item>) -> Result<(), Status> {
    let store = &timeline.store;
    let mut changes = store.changes();
    loop {
        // Mark the current change counter seen before reading, so a batch applied
        // while we read wakes us again.
        changes.borrow_and_update();
        let grants = store.grants(&spec.patient).await.map_err(|e| status(&e))?;
        let glass = store
            .break_glass(&spec.patient)
            .await
            .map_err(|e| status(&e))?;
        let now = Timestamp::now();
        let access = Access {
            reader: &spec.reader,
            purpose: spec.purpose,
            now,
            grants: &grants,
            break_glass: &glass,
        };
        if access.standing().is_empty() {
            return Err(ended());
        }
        let rows = store
            .records_after(&spec.patient, spec.after, CHUNK)
            .await
            .map_err(|e| status(&e))?;
        let full = rows.len() == CHUNK;
        for r in rows {
            let seq = r.patient_seq;
            let wanted = spec.kinds.is_empty() || spec.kinds.contains(&r.kind);
            if let (true, Some(basis)) = (wanted, access.decide(&facts(&r))) {
                let item = v1::FollowResponse {
                    cursor: cursor::encode_follow(seq),
                    item: Some(v1::follow_response::Item::Entry(wire::entry(r, &basis))),
                };
                if tx.send(Ok(item)).await.is_err() {
                    return Ok(());
                }
            }
            spec.after = seq;
        }
        if full {
            continue;
        }
        let wake_at = access.next_change();
        let until_change = wake_at
            .map(|t| {
                std::time::Duration::from_nanos(
                    (t.unix_nanos() - now.unix_nanos()).clamp(0, u64::MAX as i128) as u64,
                )
            })
            .unwrap_or(timeline.config.heartbeat);
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Err(Status::unavailable("the store stopped"));
                }
            }
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
        }
    }
}
