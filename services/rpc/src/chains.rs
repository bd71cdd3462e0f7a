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

/// Appends a call's `events` and, when there is something to report, its ingest report
/// after them, in one atomic append (for a facility, to one partition: its reports share
/// its chain's partition). Returns the events' positions. The events' chains must be
/// locked by the caller.
///
/// The report chain is numbered here, under its lock, optimistically: another process
/// may take the same seq first (the log then refuses the whole append as a conflict and
/// appends nothing). The append is then made again at the new head, after a short,
/// jittered wait so that two replicas do not keep colliding.
pub async fn append_reported(
    log: &dyn EventLog,
    locks: &ChainLocks,
    events: Vec<Append>,
    report: &IngestReport,
    received_at: Timestamp,
) -> PortResult<Vec<LogPosition>> {
    use backon::{ExponentialBuilder, Retryable as _};

    /// A conflict on the report chain (retried) or any other failure (returned).
    enum Failed {
        Raced,
        Other(PortError),
    }

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
    let attempt = || async {
        let head = head_seq(log, &chain).await.map_err(Failed::Other)?;
        let mut batch = events.clone();
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
        match log.append(batch).await {
            Ok(mut positions) => {
                positions.truncate(n);
                Ok(positions)
            }
            // Retried only when the report chain moved: any other conflict (an event
            // chain's) would only conflict again.
            Err(PortError::Conflict(why)) => match head_seq(log, &chain).await {
                Ok(now) if now != head => {
                    tracing::debug!(%chain, %why, "report chain moved; appending again");
                    Err(Failed::Raced)
                }
                Ok(_) => Err(Failed::Other(PortError::Conflict(why))),
                Err(e) => Err(Failed::Other(e)),
            },
            Err(e) => Err(Failed::Other(e)),
        }
    };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(std::time::Duration::from_millis(1))
                .with_max_delay(std::time::Duration::from_millis(50))
                .with_max_times(REPORT_RETRIES)
                .with_jitter(),
        )
        .when(|e| matches!(e, Failed::Raced))
        .await
        .map_err(|e| match e {
            Failed::Other(e) => e,
            Failed::Raced => PortError::Conflict(format!(
                "{chain}: another process kept taking the next seq; retry"
            )),
        })
}

/// How often a report is appended again when another process took its seq first.
const REPORT_RETRIES: usize = 30;

/// The seq of `chain`'s head in the log.
async fn head_seq(log: &dyn EventLog, chain: &ChainKey) -> PortResult<u64> {
    // Any event id with seq 0 only fetches the head.
    let probe = EventId::from_bytes([0; 16]);
    Ok(log.chain_context(chain, probe, 0).await?.context.head.seq)
}
