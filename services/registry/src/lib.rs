//! Registry: the national center registers facilities and their signing keys as
//! registry events signed by the national root key (`hrx.v1.RegistryService`).
//!
//! [`Registry`] is the logic, independent of any transport: submissions are verified
//! against the root key and the registry chain in the log, appended, and answered once
//! the projector has applied them (or after a timeout), so that a facility registered
//! by one call can submit events in the next. [`RegistryGrpc`] is its gRPC face.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hrx_domain::chain::ChainHead;
use hrx_domain::event::RegistryBody;
use hrx_domain::verify::{self, KeyOwner, KeyRecord, Verdict};
use hrx_domain::{Envelope, EventId, FacilityId, KeyId, Timestamp, content};
use hrx_ports::{
    Append, ChainKey, EventLog, FacilityInfo, KeyInfo, LogPosition, PortResult, Store,
};
use hrx_proto::{codec, v1};
use hrx_rpc::auth::Principal;
use hrx_rpc::chains::ChainLocks;
use hrx_rpc::error::{ErrorCode, RequestError, ServiceError, status};
use hrx_rpc::{auth, wire};
use tonic::{Request, Response, Status};

/// What the registry answers for one submitted registry event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub event_hash: hrx_domain::Sha256,
    pub verdict: Verdict<()>,
    /// Where it went in the log (accepted, or rejected for content only).
    pub position: Option<LogPosition>,
}

/// The registry's logic, independent of any transport.
#[derive(Clone)]
pub struct Registry {
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    locks: ChainLocks,
    root_keys: Arc<Vec<KeyRecord>>,
    /// How long a submission waits for its events to be projected.
    projection_wait: Duration,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// Most registry events in one submission.
pub const MAX_BATCH: usize = 1000;

impl Registry {
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

    /// The registry chain's head in the log.
    pub async fn head(&self) -> PortResult<ChainHead> {
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

    /// Verifies registry events against the root key and the registry chain, appends
    /// those that extend it, and answers once they are projected (or after a timeout),
    /// so that a facility registered by one call can submit events in the next. Only
    /// the national center may submit.
    pub async fn submit(
        &self,
        caller: &Principal,
        envelopes: Vec<Envelope>,
    ) -> Result<Vec<Submitted>, RegistryError> {
        if *caller != Principal::NationalCenter {
            return Err(
                RequestError::PermissionDenied("only the national center may call this").into(),
            );
        }
        if envelopes.len() > MAX_BATCH {
            return Err(RequestError::invalid("envelopes", "at most 1000 per call").into());
        }
        let _guard = self.locks.lock(&ChainKey::Registry).await;
        // Judge against the registry as the log holds it: the projector first catches up.
        let logged = self.head().await?;
        self.wait_projected(logged.seq).await?;
        let mut keys: HashMap<KeyId, KeyRecord> = self
            .store
            .keys(None)
            .await?
            .into_iter()
            .map(|k| (k.key.key_id(), k.key))
            .collect();
        let mut registered: HashSet<FacilityId> = HashSet::new();
        let mut results = Vec::with_capacity(envelopes.len());
        let mut last = None;
        for envelope in envelopes {
            let head = self.head().await?;
            let event_hash = envelope.event_hash();
            let verdict = verify::verify_registry_envelope(
                &envelope,
                &*self.root_keys,
                head,
                codec::decode_registry_event,
            );
            // What the registry already holds (this submission's earlier events too):
            // the projector's rule, so that what is answered is what is projected.
            let verdict = match verdict {
                Verdict::Accepted(e) => {
                    let existing = match &e.body {
                        RegistryBody::KeyAdded { public_key, .. } => keys.get(&public_key.key_id()),
                        RegistryBody::KeyRevoked { key_id, .. } => keys.get(key_id),
                        RegistryBody::FacilityRegistered { .. }
                        | RegistryBody::CertificateRevoked { .. } => None,
                    };
                    let facility_registered = match &e.body {
                        RegistryBody::KeyAdded { facility_id, .. } => {
                            registered.contains(facility_id)
                                || self.store.facility(facility_id).await?.is_some()
                        }
                        _ => true,
                    };
                    match content::check_registry_change(&e.body, existing, facility_registered) {
                        Err(rejection) => Verdict::Rejected {
                            rejection,
                            extends_chain: true,
                        },
                        Ok(()) => {
                            note(&mut keys, &mut registered, &e);
                            Verdict::Accepted(e)
                        }
                    }
                }
                other => other,
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
            let mut position = None;
            if let Some(link) = link {
                let append = Append {
                    chain: ChainKey::Registry,
                    seq: link.seq,
                    event_id: link.event_id,
                    event_hash,
                    envelope,
                    received_at: Timestamp::now().truncated_to_millis(),
                    registry_seq: None,
                    recorded_at: Some(link.recorded_at),
                };
                let at = self.log.append(vec![append]).await?[0];
                position = Some(at);
                last = Some(at);
            }
            results.push(Submitted {
                event_hash,
                verdict: verdict.map(|_| ()),
                position,
            });
        }
        if let Some(position) = last {
            self.projected(position).await;
        }
        Ok(results)
    }

    /// Waits until the projector holds the registry chain up to `seq`.
    async fn wait_projected(&self, seq: u64) -> PortResult<()> {
        let probe = EventId::from_bytes([0; 16]);
        let mut changes = self.store.changes();
        let deadline = tokio::time::Instant::now() + self.projection_wait;
        loop {
            changes.borrow_and_update();
            let projected = self
                .store
                .chain_context(&ChainKey::Registry, probe, 0)
                .await?
                .head
                .seq;
            if projected >= seq {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(hrx_ports::PortError::Unavailable(
                    "the projector has not caught up with the registry; retry".into(),
                ));
            }
        }
    }

    /// Registered facilities (of a province, when given) with their keys.
    pub async fn facilities(
        &self,
        province: &str,
    ) -> PortResult<Vec<(FacilityInfo, Vec<KeyInfo>)>> {
        let all = self.store.facilities().await?;
        let keys = self.store.keys(None).await?;
        Ok(all
            .into_iter()
            .filter(|f| province.is_empty() || f.province == province)
            .map(|f| {
                let own = keys
                    .iter()
                    .filter(|k| k.key.owner == KeyOwner::Facility(f.facility_id.clone()))
                    .cloned()
                    .collect();
                (f, own)
            })
            .collect())
    }

    /// One facility with its keys.
    pub async fn facility(
        &self,
        id: &FacilityId,
    ) -> Result<(FacilityInfo, Vec<KeyInfo>), RegistryError> {
        let f = self
            .store
            .facility(id)
            .await?
            .ok_or(RequestError::NotFound("facility"))?;
        let keys = self.store.keys(Some(id)).await?;
        Ok((f, keys))
    }
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Port(#[from] hrx_ports::PortError),
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl ServiceError for RegistryError {
    fn code(&self) -> ErrorCode {
        match self {
            RegistryError::Port(e) => e.code(),
            RegistryError::Request(e) => e.code(),
        }
    }
}

/// `RegistryService` over the registry core.
#[derive(Clone, Debug)]
pub struct RegistryGrpc {
    core: Registry,
}

impl RegistryGrpc {
    pub fn new(core: Registry) -> Self {
        Self { core }
    }

    pub fn into_server(self) -> v1::registry_service_server::RegistryServiceServer<Self> {
        v1::registry_service_server::RegistryServiceServer::new(self)
    }
}

/// What an accepted registry event adds to the registry this submission judges by.
fn note(
    keys: &mut HashMap<KeyId, KeyRecord>,
    registered: &mut HashSet<FacilityId>,
    e: &hrx_domain::event::RegistryEvent,
) {
    match &e.body {
        RegistryBody::FacilityRegistered { facility_id, .. } => {
            registered.insert(facility_id.clone());
        }
        RegistryBody::KeyAdded {
            facility_id,
            public_key,
            valid_from,
        } => {
            keys.insert(
                public_key.key_id(),
                KeyRecord {
                    public_key: *public_key,
                    owner: KeyOwner::Facility(facility_id.clone()),
                    valid_from: *valid_from,
                    revoked_at: None,
                    registered_seq: e.header.link.seq,
                    revoked_seq: None,
                },
            );
        }
        RegistryBody::KeyRevoked {
            key_id, revoked_at, ..
        } => {
            if let Some(k) = keys.get_mut(key_id) {
                k.revoked_at = Some(*revoked_at);
                k.revoked_seq = Some(e.header.link.seq);
            }
        }
        // Judged by no later event of the submission.
        RegistryBody::CertificateRevoked { .. } => {}
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

fn result(s: Submitted) -> v1::SubmitResult {
    let mut result = v1::SubmitResult {
        event_hash: s.event_hash.as_bytes().to_vec(),
        position: s.position.map(wire::position),
        ..Default::default()
    };
    match s.verdict {
        Verdict::Accepted(()) => result.status = v1::SubmitStatus::Accepted as i32,
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
    result
}

#[tonic::async_trait]
impl v1::registry_service_server::RegistryService for RegistryGrpc {
    async fn submit_registry_events(
        &self,
        request: Request<v1::SubmitRegistryEventsRequest>,
    ) -> Result<Response<v1::SubmitEventsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let envelopes: Vec<Envelope> = request
            .into_inner()
            .envelopes
            .into_iter()
            .map(Envelope::from)
            .collect();
        let submitted = self
            .core
            .submit(&caller, envelopes)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::SubmitEventsResponse {
            results: submitted.into_iter().map(result).collect(),
        }))
    }

    async fn list_facilities(
        &self,
        request: Request<v1::ListFacilitiesRequest>,
    ) -> Result<Response<v1::ListFacilitiesResponse>, Status> {
        auth::caller(&request)?;
        let province = request.into_inner().province;
        let facilities = self
            .core
            .facilities(&province)
            .await
            .map_err(|e| status(&e))?
            .into_iter()
            .map(|(f, keys)| facility(f, keys))
            .collect();
        Ok(Response::new(v1::ListFacilitiesResponse { facilities }))
    }

    async fn get_facility(
        &self,
        request: Request<v1::GetFacilityRequest>,
    ) -> Result<Response<v1::Facility>, Status> {
        auth::caller(&request)?;
        let id: FacilityId = wire::facility("facility_id", &request.get_ref().facility_id)?;
        let (f, keys) = self.core.facility(&id).await.map_err(|e| status(&e))?;
        Ok(Response::new(facility(f, keys)))
    }

    async fn get_registry_head(
        &self,
        request: Request<v1::GetRegistryHeadRequest>,
    ) -> Result<Response<v1::ChainHead>, Status> {
        auth::caller(&request)?;
        let head = self.core.head().await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::ChainHead {
            seq: head.seq,
            event_hash: head.event_hash.as_bytes().to_vec(),
        }))
    }
}
