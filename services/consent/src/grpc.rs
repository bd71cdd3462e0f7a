//! The gRPC faces of the consent core: `hrx.v1.ConsentService` (facilities and the
//! national center, identified by their client certificates) and
//! `hrx.v1.PatientService` (no certificate needed: every call carries the patient's
//! signature). Handlers parse, call the core, and convert; they decide nothing.

use std::sync::Arc;

use hrx_domain::consent::{GrantState, GrantStatus, KeyEnd, RequestState, RequestStatus, Revoker};
use hrx_domain::{Envelope, Timestamp};
use hrx_proto::v1;
use hrx_proto::v1::consent_service_server::ConsentService;
use hrx_proto::v1::patient_service_server::PatientService;
use hrx_rpc::error::{RequestError, status};
use hrx_rpc::{auth, wire};
use tonic::{Request, Response, Status};

use crate::core::{
    AccessesAnswer, Consent, GrantItem, GrantsAnswer, StatementOutcome, access_cursor, page_size,
};

/// `ConsentService` over the consent core.
#[derive(Clone, Debug)]
pub struct ConsentGrpc {
    core: Arc<Consent>,
}

impl ConsentGrpc {
    pub fn new(core: Arc<Consent>) -> Self {
        Self { core }
    }

    pub fn into_server(self) -> v1::consent_service_server::ConsentServiceServer<Self> {
        v1::consent_service_server::ConsentServiceServer::new(self)
    }
}

/// `PatientService` over the consent core.
#[derive(Clone, Debug)]
pub struct PatientGrpc {
    core: Arc<Consent>,
}

impl PatientGrpc {
    pub fn new(core: Arc<Consent>) -> Self {
        Self { core }
    }

    pub fn into_server(self) -> v1::patient_service_server::PatientServiceServer<Self> {
        v1::patient_service_server::PatientServiceServer::new(self)
    }
}

fn grant_status(g: &GrantState, now: Timestamp) -> v1::GrantStatus {
    match g.status(now) {
        GrantStatus::Active | GrantStatus::NotYetValid => v1::GrantStatus::Active,
        GrantStatus::Revoked => v1::GrantStatus::Revoked,
        GrantStatus::Expired => v1::GrantStatus::Expired,
    }
}

/// A grant as a facility or the patient sees it, with its signed artefact.
pub fn grant_view(item: &GrantItem, now: Timestamp) -> v1::GrantView {
    let g = &item.state;
    v1::GrantView {
        grant_event_id: g.grant_event_id.to_string(),
        granted_by_facility_id: g
            .granted_by
            .as_ref()
            .map(|f| f.to_string())
            .unwrap_or_default(),
        grant: Some(wire::consent_grant(&g.grant)),
        status: grant_status(g, now) as i32,
        granted_at: wire::time(g.granted_at),
        revoked_at: g.revoked_at.and_then(wire::time),
        form: wire::form(g.form) as i32,
        artefact: item.artefact.clone().map(v1::SignedEnvelope::from),
        revoked_by: match &g.revoked_by {
            Some(Revoker::Patient) => "patient".to_owned(),
            Some(Revoker::Facility(f)) => f.to_string(),
            None => String::new(),
        },
    }
}

/// A consent request and where it stands.
pub fn request_view(
    r: &RequestState,
    now: Timestamp,
    policy: &hrx_domain::consent::ConsentPolicy,
) -> v1::ConsentRequestView {
    let q = &r.request;
    let (status, grant) = match r.status(now, policy) {
        RequestStatus::Pending => (v1::ConsentRequestStatus::Pending, String::new()),
        RequestStatus::Approved { grant } => {
            (v1::ConsentRequestStatus::Approved, grant.to_string())
        }
        RequestStatus::Declined => (v1::ConsentRequestStatus::Declined, String::new()),
        RequestStatus::Expired => (v1::ConsentRequestStatus::Expired, String::new()),
    };
    v1::ConsentRequestView {
        request_event_id: r.request_event_id.to_string(),
        facility_id: r.facility.to_string(),
        request: Some(v1::ConsentRequest {
            patient_id: q.patient_id.to_string(),
            purposes: q.purposes.iter().map(|p| p.code()).collect(),
            kinds: q.kinds.iter().map(|k| k.code()).collect(),
            data_from: q.data_from.and_then(wire::time),
            data_until: q.data_until.and_then(wire::time),
            duration: Some(hrx_proto::codec::duration(q.duration)),
            reason: q.reason.clone(),
            include_sensitive: q.include_sensitive.iter().map(|l| l.code()).collect(),
        }),
        status: status as i32,
        requested_at: wire::time(r.requested_at),
        grant_event_id: grant,
        answered_at: r.answer.and_then(|(_, at)| wire::time(at)),
    }
}

fn submit_result(o: StatementOutcome) -> v1::SubmitResult {
    match o {
        StatementOutcome::Accepted {
            event_hash,
            position,
        } => wire::accepted(event_hash, position),
        StatementOutcome::Duplicate {
            event_hash,
            position,
        } => wire::duplicate(event_hash, position),
        // A refused statement never enters the patient's chain.
        StatementOutcome::Rejected {
            event_hash,
            rejection,
        } => wire::rejected(Some(event_hash), &rejection, None),
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
        let reader = match r.reader_facility_id.as_str() {
            "" => None,
            f => Some(wire::facility("reader_facility_id", f)?),
        };
        let bases = self
            .core
            .check_access(&caller, &patient, reader, purpose)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::CheckAccessResponse {
            allowed: !bases.is_empty(),
            bases: bases.iter().map(wire::basis).collect(),
        }))
    }

    async fn list_grants(
        &self,
        request: Request<v1::ListGrantsRequest>,
    ) -> Result<Response<v1::ListGrantsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let patient = wire::patient("patient_id", &request.get_ref().patient_id)?;
        let answer = self
            .core
            .list_grants(&caller, &patient)
            .await
            .map_err(|e| status(&e))?;
        let now = Timestamp::now();
        Ok(Response::new(match answer {
            GrantsAnswer::Grants(items) => v1::ListGrantsResponse {
                grants: items.iter().map(|g| grant_view(g, now)).collect(),
                counts: None,
            },
            GrantsAnswer::Counts(c) => v1::ListGrantsResponse {
                grants: Vec::new(),
                counts: Some(v1::GrantCounts {
                    active_patient_signed: c.active_patient_signed,
                    active_attested: c.active_attested,
                    revoked: c.revoked,
                    expired: c.expired,
                }),
            },
        }))
    }

    async fn list_accesses(
        &self,
        request: Request<v1::ListAccessesRequest>,
    ) -> Result<Response<v1::ListAccessesResponse>, Status> {
        let caller = auth::caller(&request)?;
        let r = request.into_inner();
        let patient = wire::patient("patient_id", &r.patient_id)?;
        let limit = page_size(r.page_size)?;
        let after = access_cursor(&r.cursor)?;
        let answer = self
            .core
            .list_accesses(&caller, &patient, after, limit)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(match answer {
            AccessesAnswer::Page { entries, next } => v1::ListAccessesResponse {
                accesses: entries.iter().map(wire::access).collect(),
                next_cursor: next.map(|n| n.to_string()).unwrap_or_default(),
                counts: None,
            },
            AccessesAnswer::Counts(c) => v1::ListAccessesResponse {
                accesses: Vec::new(),
                next_cursor: String::new(),
                counts: Some(v1::AccessCounts {
                    allowed: c.allowed,
                    denied: c.denied,
                    break_glass: c.break_glass,
                }),
            },
        }))
    }

    async fn list_consent_requests(
        &self,
        request: Request<v1::ListConsentRequestsRequest>,
    ) -> Result<Response<v1::ListConsentRequestsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let patient = wire::patient("patient_id", &request.get_ref().patient_id)?;
        let requests = self
            .core
            .list_requests(&caller, &patient)
            .await
            .map_err(|e| status(&e))?;
        let now = Timestamp::now();
        Ok(Response::new(v1::ListConsentRequestsResponse {
            requests: requests
                .iter()
                .map(|r| request_view(r, now, self.core.policy()))
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl PatientService for PatientGrpc {
    async fn submit_statements(
        &self,
        request: Request<v1::SubmitStatementsRequest>,
    ) -> Result<Response<v1::SubmitEventsResponse>, Status> {
        let statements = request
            .into_inner()
            .statements
            .into_iter()
            .map(Envelope::from)
            .collect();
        let outcomes = self
            .core
            .submit_statements(statements)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::SubmitEventsResponse {
            results: outcomes.into_iter().map(submit_result).collect(),
        }))
    }

    async fn get_patient_view(
        &self,
        request: Request<v1::GetPatientViewRequest>,
    ) -> Result<Response<v1::PatientView>, Status> {
        let envelope = request
            .into_inner()
            .request
            .map(Envelope::from)
            .ok_or_else(|| status(&RequestError::invalid("request", "required")))?;
        let view = self
            .core
            .patient_view(&envelope)
            .await
            .map_err(|e| status(&e))?;
        let now = view.now;
        let policy = self.core.policy();
        let state = &view.loaded.state;
        Ok(Response::new(v1::PatientView {
            patient_id: view.patient.to_string(),
            keys: state
                .keys
                .iter()
                .map(|k| v1::PatientKeyView {
                    key_id: k.key_id().to_string(),
                    public_key: k.public_key.as_bytes().to_vec(),
                    status: match k.ended {
                        None => v1::PatientKeyStatus::Active,
                        Some((KeyEnd::Replaced, _)) => v1::PatientKeyStatus::Replaced,
                        Some((KeyEnd::Revoked, _)) => v1::PatientKeyStatus::Revoked,
                    } as i32,
                    enrolled_by_facility_id: k
                        .enrolled_by
                        .as_ref()
                        .map(|f| f.to_string())
                        .unwrap_or_default(),
                    valid_from: wire::time(k.valid_from),
                    valid_until: k.ended.and_then(|(_, at)| wire::time(at)),
                })
                .collect(),
            grants: view.grants().iter().map(|g| grant_view(g, now)).collect(),
            requests: state
                .requests
                .iter()
                .map(|r| request_view(r, now, policy))
                .collect(),
            break_glass: view.break_glass.iter().map(wire::break_glass_use).collect(),
            accesses: view.accesses.iter().map(wire::access).collect(),
            accesses_next_cursor: view.next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }
}
