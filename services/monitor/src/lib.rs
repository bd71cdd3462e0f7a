//! Monitor: what the National Center for Medical Information watches — which facilities
//! emit, how much, what was rejected and why, who reads whose records, break-glass use,
//! projector lag. Metadata only: ids, counts and times, never clinical content.
//!
//! - [`MonitorGrpc`]: `hrx.v1.MonitorService`, for the national center only.
//! - [`metrics`]: the same figures in the Prometheus text format, read from the store at
//!   scrape time so that metrics and the gRPC answers never disagree.

pub mod metrics;

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hrx_consent::state::{self, FactCache};
use hrx_domain::consent::ConsentFact;
use hrx_domain::{EventId, Timestamp};
use hrx_ports::{EventLog, PortResult, Store};
use hrx_proto::v1;
use hrx_rpc::error::status;
use hrx_rpc::{auth, wire};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// How far back from the newest declaration seen the live break-glass stream looks
/// again: declared_at is the declaring facility's clock, so a declaration may arrive
/// after a later-dated one.
const WATCH_MARGIN: Duration = Duration::from_secs(3600);
/// Fewest time between two reads of the live stream (projector batches come faster).
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Projector lag, per partition and overall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lag {
    /// (partition, log end offset, next offset to project).
    pub partitions: Vec<(u32, u64, u64)>,
    /// Age of the oldest entry not yet projected, in milliseconds (0 when caught up).
    pub oldest_unprojected_ms: u64,
}

/// Measures how far the projections are behind the log.
pub async fn lag(log: &dyn EventLog, store: &dyn Store) -> PortResult<Lag> {
    let projected = store.projected_offsets().await?;
    let mut partitions = Vec::new();
    let mut oldest: Option<Timestamp> = None;
    for p in 0..log.partitions() {
        let end = log.end_offset(p).await?;
        let next = projected
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        if next < end
            && let Some(entry) = log.read(p, next, 1).await?.into_iter().next()
        {
            oldest = Some(oldest.map_or(entry.appended_at, |o| o.min(entry.appended_at)));
        }
        partitions.push((p, end, next));
    }
    let oldest_unprojected_ms = oldest
        .map(|t| (Timestamp::now().unix_millis() - t.unix_millis()).max(0) as u64)
        .unwrap_or(0);
    Ok(Lag {
        partitions,
        oldest_unprojected_ms,
    })
}

/// `MonitorService` over the log and the store.
#[derive(Clone)]
pub struct MonitorGrpc {
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    facts: Arc<FactCache>,
    /// Set when the node shuts down: live streams end so the server can stop.
    stopping: watch::Receiver<bool>,
}

impl std::fmt::Debug for MonitorGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorGrpc").finish_non_exhaustive()
    }
}

impl MonitorGrpc {
    /// `stopping` turns true when the node shuts down.
    pub fn new(
        log: Arc<dyn EventLog>,
        store: Arc<dyn Store>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            log,
            store,
            facts: Arc::default(),
            stopping,
        }
    }

    pub fn into_server(self) -> v1::monitor_service_server::MonitorServiceServer<Self> {
        v1::monitor_service_server::MonitorServiceServer::new(self)
    }
}

fn since(t: Option<prost_types::Timestamp>) -> Result<Option<Timestamp>, Status> {
    Ok(wire::optional_time("since", t)?)
}

#[tonic::async_trait]
impl v1::monitor_service_server::MonitorService for MonitorGrpc {
    async fn list_facility_stats(
        &self,
        request: Request<v1::ListFacilityStatsRequest>,
    ) -> Result<Response<v1::ListFacilityStatsResponse>, Status> {
        auth::national_center(&auth::caller(&request)?)?;
        let stats = self.store.facility_stats().await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::ListFacilityStatsResponse {
            facilities: stats
                .into_iter()
                .map(|s| v1::FacilityStats {
                    facility_id: s.facility_id.to_string(),
                    accepted: s.accepted,
                    duplicates: s.duplicates,
                    rejected: s
                        .rejected
                        .into_iter()
                        .map(|(reason, count)| v1::RejectionCount {
                            reason: reason.code(),
                            count,
                        })
                        .collect(),
                    last_seen: s.last_seen.and_then(wire::time),
                    head_seq: s.head_seq,
                })
                .collect(),
        }))
    }

    async fn get_exchange_matrix(
        &self,
        request: Request<v1::GetExchangeMatrixRequest>,
    ) -> Result<Response<v1::GetExchangeMatrixResponse>, Status> {
        auth::national_center(&auth::caller(&request)?)?;
        let cells = self.store.exchange_matrix().await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::GetExchangeMatrixResponse {
            cells: cells
                .into_iter()
                .map(|c| v1::ExchangeCell {
                    reader_facility_id: c.reader.to_string(),
                    author_facility_id: c.author.to_string(),
                    records: c.records,
                    accesses: c.accesses,
                })
                .collect(),
        }))
    }

    async fn list_break_glass(
        &self,
        request: Request<v1::ListBreakGlassRequest>,
    ) -> Result<Response<v1::ListBreakGlassResponse>, Status> {
        auth::national_center(&auth::caller(&request)?)?;
        let since = since(request.into_inner().since)?;
        let uses = self
            .store
            .break_glass_uses(since)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::ListBreakGlassResponse {
            uses: uses.iter().map(wire::break_glass_use).collect(),
        }))
    }

    type WatchBreakGlassStream =
        Pin<Box<dyn Stream<Item = Result<v1::BreakGlassUse, Status>> + Send + 'static>>;

    async fn watch_break_glass(
        &self,
        request: Request<v1::ListBreakGlassRequest>,
    ) -> Result<Response<Self::WatchBreakGlassStream>, Status> {
        auth::national_center(&auth::caller(&request)?)?;
        let since = since(request.into_inner().since)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(watch(self.store.clone(), since, self.stopping.clone(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_attested_grants(
        &self,
        request: Request<v1::ListAttestedGrantsRequest>,
    ) -> Result<Response<v1::ListAttestedGrantsResponse>, Status> {
        auth::national_center(&auth::caller(&request)?)?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 100,
            n => (n as usize).min(1000),
        };
        let rows = self
            .store
            .attested_grants(since(r.since)?, limit)
            .await
            .map_err(|e| status(&e))?;
        let mut grants = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(ConsentFact::AttestedGrant { facility, grant }) = state::fact_of(&row) else {
                continue;
            };
            // Revocations may come later and from the patient: the patient's consent
            // state says.
            let loaded = state::load(
                &*self.store,
                &self.facts,
                &row.patient_id,
                state::ReadBounds::default(),
            )
            .await
            .map_err(|e| status(&e))?;
            let revoked_at = loaded.state.grant(row.event_id).and_then(|g| g.revoked_at);
            grants.push(v1::AttestedGrant {
                grant_event_id: row.event_id.to_string(),
                facility_id: facility.to_string(),
                patient_id: row.patient_id.to_string(),
                grantee_facility_id: match &grant.grantee {
                    hrx_domain::event::Grantee::Facility(f) => f.to_string(),
                    hrx_domain::event::Grantee::AnyFacility => String::new(),
                },
                purposes: grant.purposes.iter().map(|p| p.code()).collect(),
                granted_at: wire::time(row.received_at),
                expires_at: wire::time(grant.expires_at),
                revoked_at: revoked_at.and_then(wire::time),
            });
        }
        Ok(Response::new(v1::ListAttestedGrantsResponse { grants }))
    }

    async fn list_rejections(
        &self,
        request: Request<v1::ListRejectionsRequest>,
    ) -> Result<Response<v1::ListRejectionsResponse>, Status> {
        auth::national_center(&auth::caller(&request)?)?;
        let r = request.into_inner();
        let facility = if r.facility_id.is_empty() {
            None
        } else {
            Some(wire::facility("facility_id", &r.facility_id)?)
        };
        let limit = match r.limit {
            0 => 100,
            n => (n as usize).min(1000),
        };
        let rows = self
            .store
            .rejections(facility.as_ref(), limit)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::ListRejectionsResponse {
            rejections: rows
                .into_iter()
                .map(|r| v1::RejectionRecord {
                    facility_id: r.facility_id.map(|f| f.to_string()).unwrap_or_default(),
                    event_id: r.event_id.map(|e| e.to_string()).unwrap_or_default(),
                    seq: r.seq.unwrap_or_default(),
                    event_hash: r
                        .event_hash
                        .map(|h| h.as_bytes().to_vec())
                        .unwrap_or_default(),
                    rejection: Some(v1::Rejection {
                        reason: r.reason.code(),
                        field: r.field.unwrap_or_default().to_owned(),
                        message: r.message,
                    }),
                    at: wire::time(r.at),
                })
                .collect(),
        }))
    }

    async fn get_projector_lag(
        &self,
        request: Request<v1::GetProjectorLagRequest>,
    ) -> Result<Response<v1::GetProjectorLagResponse>, Status> {
        auth::national_center(&auth::caller(&request)?)?;
        let lag = lag(&*self.log, &*self.store)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::GetProjectorLagResponse {
            partitions: lag
                .partitions
                .into_iter()
                .map(|(partition, log_end, projected)| v1::PartitionLag {
                    partition,
                    log_end,
                    projected,
                })
                .collect(),
            oldest_unprojected_ms: lag.oldest_unprojected_ms,
        }))
    }
}

/// The live break-glass stream: the declarations since `since`, then each new one as
/// it is projected, until the client goes or the node stops.
async fn watch(
    store: Arc<dyn Store>,
    since: Option<Timestamp>,
    mut stopping: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<v1::BreakGlassUse, Status>>,
) {
    let mut changes = store.changes();
    let mut seen: HashSet<EventId> = HashSet::new();
    // Without `since`, only what is declared from now on (by the declarer's clock,
    // less the margin) and not already projected.
    let mut from = match since {
        Some(t) => t,
        None => {
            let now = Timestamp::now();
            let start = now.checked_sub(margin()).unwrap_or(now);
            match store.break_glass_uses(Some(start)).await {
                Ok(uses) => seen.extend(uses.iter().map(|u| u.window.event_id)),
                Err(e) => {
                    let _ = tx.send(Err(status(&e))).await;
                    return;
                }
            }
            start
        }
    };
    loop {
        changes.borrow_and_update();
        let uses = match store.break_glass_uses(Some(from)).await {
            Ok(u) => u,
            Err(e) => {
                let _ = tx.send(Err(status(&e))).await;
                return;
            }
        };
        for u in uses {
            if seen.insert(u.window.event_id) {
                let newest = u.window.declared_at.checked_sub(margin());
                if tx.send(Ok(wire::break_glass_use(&u))).await.is_err() {
                    return;
                }
                if let Some(t) = newest
                    && t > from
                {
                    from = t;
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(WATCH_EVERY).await;
            }
            _ = async { stopping.wait_for(|s| *s).await.map(|_| ()) } => {
                let _ = tx.send(Err(Status::unavailable("the node is shutting down; watch again"))).await;
                return;
            }
            _ = tx.closed() => return,
        }
    }
}

fn margin() -> hrx_domain::Duration {
    hrx_domain::Duration::from_secs(WATCH_MARGIN.as_secs() as i64).expect("an hour is a duration")
}
