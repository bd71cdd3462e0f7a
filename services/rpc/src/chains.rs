//! Per-chain locks: one async mutex per chain, held from the chain lookup to the
//! append, so two submissions for one facility are placed one after the other; and the
//! append of a call's events with its ingest report, which numbers the report chain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hrx_domain::EventId;
use hrx_domain::Timestamp;
use hrx_domain::report::IngestReport;
use hrx_ports::{Append, ChainKey, EventLog, LogPosition, PortError, PortResult};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Shared by ingest and the registry service (which appends to the registry chain).
#[derive(Clone, Default, Debug)]
pub struct ChainLocks {
    locks: Arc<Mutex<HashMap<ChainKey, Arc<AsyncMutex<()>>>>>,
}

impl ChainLocks {
    pub async fn lock(&self, chain: &ChainKey) -> OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .expect("chain lock table poisoned")
            .entry(chain.clone())
            .or_default()
            .clone();
        lock.lock_owned().await
    }
}

/// How often a report is appended again when another process took its seq in the
/// report chain first.
const REPORT_RETRIES: u32 = 5;

/// Appends a call's `events` and, when there is something to report, its ingest report
/// after them, in one atomic append (for a facility, to one partition: its reports share
/// its chain's partition). Returns the events' positions. The events' chains must be
/// locked by the caller.
///
/// The report chain is numbered here, under its lock. Another process may take the same
/// seq first (the log then refuses the append as a conflict and appends nothing): the
/// append is then made again at the new head.
pub async fn append_reported(
    log: &dyn EventLog,
    locks: &ChainLocks,
    events: Vec<Append>,
    report: &IngestReport,
    received_at: Timestamp,
) -> PortResult<Vec<LogPosition>> {
    if report.is_empty() {
        return if events.is_empty() {
            Ok(Vec::new())
        } else {
            log.append(events).await
        };
    }
    let chain = ChainKey::Reports(report.caller.clone());
    let _guard = locks.lock(&chain).await;
    let envelope = report.envelope(hrx_proto::codec::encode_ingest_report);
    let event_hash = envelope.event_hash();
    let n = events.len();
    let mut batch = events;
    let mut attempts = 0;
    loop {
        let head = head_seq(log, &chain).await?;
        batch.truncate(n);
        batch.push(Append {
            chain: chain.clone(),
            seq: head + 1,
            event_id: report.report_id,
            event_hash,
            envelope: envelope.clone(),
            received_at,
            registry_seq: None,
            recorded_at: None,
        });
        match log.append(batch.clone()).await {
            Ok(mut positions) => {
                positions.truncate(n);
                return Ok(positions);
            }
            Err(PortError::Conflict(why))
                if attempts < REPORT_RETRIES && head_seq(log, &chain).await? != head =>
            {
                attempts += 1;
                tracing::debug!(%chain, %why, "report chain moved; appending again");
            }
            Err(e) => return Err(e),
        }
    }
}

/// The seq of `chain`'s head in the log.
async fn head_seq(log: &dyn EventLog, chain: &ChainKey) -> PortResult<u64> {
    // Any event id with seq 0 only fetches the head.
    let probe = EventId::from_bytes([0; 16]);
    Ok(log.chain_context(chain, probe, 0).await?.context.head.seq)
}
