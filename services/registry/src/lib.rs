//! Registry: the national center registers facilities and their signing keys as
//! registry events signed by the national root key (`hrx.v1.RegistryService`).
//!
//! Submissions are verified against the root key and the registry chain in the log,
//! appended, and answered once the projector has applied them (or after a timeout),
//! so that a facility registered by one call can submit events in the next.

use std::sync::Arc;
use std::time::Duration;

use hrx_domain::chain::ChainHead;
use hrx_domain::verify::{self, KeyOwner, KeyRecord, Verdict};
use hrx_domain::{Envelope, EventId, FacilityId};
use hrx_ports::{
    Append, ChainKey, EventLog, FacilityInfo, KeyInfo, LogPosition, PortResult, Store,
};
use hrx_proto::{codec, v1};
use hrx_rpc::chains::ChainLocks;
use hrx_rpc::error::{RequestError, status};
use hrx_rpc::{auth, wire};
use tonic::{Request, Response, Status};

/// `RegistryService` over the log and the store.
#[derive(Clone)]
pub struct RegistryGrpc {
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    locks: ChainLocks,
    root_keys: Arc<Vec<KeyRecord>>,
    /// How long a submission waits for its events to be projected.
    projection_wait: Duration,
}

impl std::fmt::Debug for RegistryGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryGrpc").finish_non_exhaustive()
    }
}

impl RegistryGrpc {
    pub fn new(
        log: Arc<dyn EventLog>,
        store: Arc<dyn Store>,
        locks: ChainLocks,
        root_keys: Vec<KeyRecord>,
    ) -> Self {
        Self {
            log,
            store,
            locks,
            root_keys: Arc::new(root_keys),
            projection_wait: Duration::from_secs(10),
        }
    }

    pub fn into_server(self) -> v1::registry_service_server::RegistryServiceServer<Self> {
        v1::registry_service_server::RegistryServiceServer::new(self)
    }

    async fn head(&self) -> PortResult<ChainHead> {
        let probe = EventId::from_bytes([0; 16]);
        Ok(self
            .log
            .chain_context(&ChainKey::Registry, probe, 0)
            .await?
            .context
            .head)
    }

    /// Waits until the projector has applied the log up to `position` (inclusive).
    async fn projected(&self, position: LogPosition) {
        let mut changes = self.store.changes();
        let deadline = tokio::time::Instant::now() + self.projection_wait;
        loop {
            changes.borrow_and_update();
            if let Ok(offsets) = self.store.projected_offsets().await
                && offsets
                    .iter()
                    .any(|(p, next)| *p == position.partition && *next > position.offset)
            {
                return;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

fn facility(f: FacilityInfo, keys: Vec<KeyInfo>) -> v1::Facility {
    v1::Facility {
        facility_id: f.facility_id.to_string(),
        name: f.name,
        province: f.province,
        level: f.level.code(),
        keys: keys
            .into_iter()
            .map(|k| v1::FacilityKey {
                key_id: k.key.key_id().to_string(),
                public_key: k.key.public_key.as_bytes().to_vec(),
                valid_from: wire::time(k.key.valid_from),
                revoked_at: k.key.revoked_at.and_then(wire::time),
                revocation_reason: k.revocation_reason.unwrap_or_default(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl v1::registry_service_server::RegistryService for RegistryGrpc {
    async fn submit_registry_events(
        &self,
        request: Request<v1::SubmitRegistryEventsRequest>,
    ) -> Result<Response<v1::SubmitEventsResponse>, Status> {
        auth::national_center(&auth::caller(&request)?)?;
        let envelopes: Vec<Envelope> = request
            .into_inner()
            .envelopes
            .into_iter()
            .map(Envelope::from)
            .collect();
        if envelopes.len() > 1000 {
            return Err(RequestError::invalid("envelopes", "at most 1000 per call").into());
        }
        let _guard = self.locks.lock(&ChainKey::Registry).await;
        let mut results = Vec::with_capacity(envelopes.len());
        let mut last = None;
        for envelope in envelopes {
            let head = self.head().await.map_err(|e| status(&e))?;
            let event_hash = envelope.event_hash();
            let verdict = verify::verify_registry_envelope(
                &envelope,
                &*self.root_keys,
                head,
                codec::decode_registry_event,
            );
            let mut result = v1::SubmitResult {
                event_hash: event_hash.as_bytes().to_vec(),
                ..Default::default()
            };
            let link = match &verdict {
                Verdict::Accepted(e) => Some(e.header.link.clone()),
                Verdict::Rejected {
                    extends_chain: true,
                    ..
                } => codec::decode_registry_event(&envelope.payload)
                    .ok()
                    .and_then(|e| e.header)
                    .and_then(|h| hrx_domain::event::RegistryHeader::parse(&h).ok())
                    .map(|h| h.link),
                _ => None,
            };
            if let Some(link) = link {
                let append = Append {
                    chain: ChainKey::Registry,
                    seq: link.seq,
                    event_id: link.event_id,
                    event_hash,
                    envelope,
                };
                let position = self
                    .log
                    .append(vec![append])
                    .await
                    .map_err(|e| status(&e))?[0];
                result.position = Some(wire::position(position));
                last = Some(position);
            }
            match verdict {
                Verdict::Accepted(_) => result.status = v1::SubmitStatus::Accepted as i32,
                Verdict::Duplicate => result.status = v1::SubmitStatus::Duplicate as i32,
                Verdict::Rejected {
                    rejection,
                    extends_chain,
                } => {
                    result.status = v1::SubmitStatus::Rejected as i32;
                    result.rejection = Some(codec::rejection(&rejection));
                    result.extends_chain = extends_chain;
                }
            }
            results.push(result);
        }
        if let Some(position) = last {
            self.projected(position).await;
        }
        Ok(Response::new(v1::SubmitEventsResponse { results }))
    }

    async fn list_facilities(
        &self,
        request: Request<v1::ListFacilitiesRequest>,
    ) -> Result<Response<v1::ListFacilitiesResponse>, Status> {
        auth::caller(&request)?;
        let province = request.into_inner().province;
        let all = self.store.facilities().await.map_err(|e| status(&e))?;
        let keys = self.store.keys(None).await.map_err(|e| status(&e))?;
        let facilities = all
            .into_iter()
            .filter(|f| province.is_empty() || f.province == province)
            .map(|f| {
                let own = keys
                    .iter()
                    .filter(|k| k.key.owner == KeyOwner::Facility(f.facility_id.clone()))
                    .cloned()
                    .collect();
                facility(f, own)
            })
            .collect();
        Ok(Response::new(v1::ListFacilitiesResponse { facilities }))
    }

    async fn get_facility(
        &self,
        request: Request<v1::GetFacilityRequest>,
    ) -> Result<Response<v1::Facility>, Status> {
        auth::caller(&request)?;
        let id: FacilityId = wire::facility("facility_id", &request.get_ref().facility_id)?;
        let f = self
            .store
            .facility(&id)
            .await
            .map_err(|e| status(&e))?
            .ok_or(RequestError::NotFound("facility"))?;
        let keys = self.store.keys(Some(&id)).await.map_err(|e| status(&e))?;
        Ok(Response::new(facility(f, keys)))
    }

    async fn get_registry_head(
        &self,
        request: Request<v1::GetRegistryHeadRequest>,
    ) -> Result<Response<v1::ChainHead>, Status> {
        auth::caller(&request)?;
        let head = self.head().await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::ChainHead {
            seq: head.seq,
            event_hash: head.event_hash.as_bytes().to_vec(),
        }))
    }
}
