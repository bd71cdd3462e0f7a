//! Consent: decisions and the patient's view of grants and accesses
//! (`hrx.v1.ConsentService`). Grants, revocations and break-glass declarations are
//! facility-signed events that arrive through ingest; this service only reads their
//! projection and the audit log.

use std::sync::Arc;

use hrx_domain::Timestamp;
use hrx_domain::consent::Access;
use hrx_ports::Store;
use hrx_proto::v1;
use hrx_proto::v1::consent_service_server::ConsentService;
use hrx_rpc::auth::{self, Principal};
use hrx_rpc::error::{RequestError, status};
use hrx_rpc::wire;
use tonic::{Request, Response, Status};

/// Default and largest page of accesses.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// `ConsentService` over a store.
#[derive(Clone)]
pub struct ConsentGrpc {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for ConsentGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentGrpc").finish_non_exhaustive()
    }
}

impl ConsentGrpc {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub fn into_server(self) -> v1::consent_service_server::ConsentServiceServer<Self> {
        v1::consent_service_server::ConsentServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl ConsentService for ConsentGrpc {
    async fn check_access(
        &self,
        request: Request<v1::CheckAccessRequest>,
    ) -> Result<Response<v1::CheckAccessResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let patient = wire::patient("patient_id", &r.patient_id)?;
        let purpose = wire::purpose("purpose", r.purpose)?;
        // A facility checks its own access; the national center may check anyone's.
        let reader = match (&caller, r.reader_facility_id.as_str()) {
            (Principal::Facility(f), "") => f.clone(),
            (Principal::Facility(f), other) => {
                let asked = wire::facility("reader_facility_id", other)?;
                if &asked != f {
                    return Err(RequestError::PermissionDenied(
                        "a facility may check only its own access",
                    )
                    .into());
                }
                asked
            }
            (Principal::NationalCenter, other) => wire::facility("reader_facility_id", other)?,
        };
        let grants = self.store.grants(&patient).await.map_err(|e| status(&e))?;
        let glass = self
            .store
            .break_glass(&patient)
            .await
            .map_err(|e| status(&e))?;
        let bases = Access {
            reader: &reader,
            purpose,
            now: Timestamp::now(),
            grants: &grants,
            break_glass: &glass,
        }
        .standing();
        Ok(Response::new(v1::CheckAccessResponse {
            allowed: !bases.is_empty(),
            bases: bases.iter().map(wire::basis).collect(),
        }))
    }

    async fn list_grants(
        &self,
        request: Request<v1::ListGrantsRequest>,
    ) -> Result<Response<v1::ListGrantsResponse>, Status> {
        auth::caller(&request)?;
        let patient = wire::patient("patient_id", &request.get_ref().patient_id)?;
        let grants = self.store.grants(&patient).await.map_err(|e| status(&e))?;
        let now = Timestamp::now();
        Ok(Response::new(v1::ListGrantsResponse {
            grants: grants.iter().map(|g| wire::grant(g, now)).collect(),
        }))
    }

    async fn list_accesses(
        &self,
        request: Request<v1::ListAccessesRequest>,
    ) -> Result<Response<v1::ListAccessesResponse>, Status> {
        auth::caller(&request)?;
        let r = request.into_inner();
        let patient = wire::patient("patient_id", &r.patient_id)?;
        let limit = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            _ => {
                return Err(
                    RequestError::invalid("page_size", format_args!("at most {MAX_PAGE}")).into(),
                );
            }
        };
        let after = if r.cursor.is_empty() {
            0
        } else {
            r.cursor.parse::<u64>().map_err(|_| {
                RequestError::invalid("cursor", "not a cursor issued by this service")
            })?
        };
        let entries = self
            .store
            .accesses(&patient, after, limit + 1)
            .await
            .map_err(|e| status(&e))?;
        let more = entries.len() > limit;
        let page: Vec<_> = entries.into_iter().take(limit).collect();
        let next_cursor = if more {
            page.last().map(|e| e.seq.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListAccessesResponse {
            accesses: page.iter().map(wire::access).collect(),
            next_cursor,
        }))
    }
}
