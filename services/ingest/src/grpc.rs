//! The gRPC face of ingest (`hrx.v1.IngestService`).

use std::sync::Arc;

use hrx_domain::Envelope;
use hrx_proto::v1;
use hrx_proto::v1::ingest_service_server::IngestService;
use hrx_rpc::error::{RequestError, status};
use hrx_rpc::{auth, wire};
use tonic::{Request, Response, Status};

use crate::{Ingest, MAX_BATCH, Outcome};

/// `IngestService` over an [`Ingest`].
#[derive(Clone, Debug)]
pub struct IngestGrpc {
    ingest: Arc<Ingest>,
}

impl IngestGrpc {
    pub fn new(ingest: Arc<Ingest>) -> Self {
        Self { ingest }
    }

    pub fn into_server(self) -> v1::ingest_service_server::IngestServiceServer<Self> {
        v1::ingest_service_server::IngestServiceServer::new(self)
            // A batch of 1000 envelopes with bodies up to 512 KiB each is large; the
            // per-message limit keeps a single call bounded all the same.
            .max_decoding_message_size(64 * 1024 * 1024)
    }
}

fn result(o: Outcome) -> v1::SubmitResult {
    match o {
        Outcome::Accepted {
            event_hash,
            position,
        } => wire::accepted(event_hash, position),
        Outcome::Duplicate {
            event_hash,
            position,
        } => wire::duplicate(event_hash, position),
        Outcome::Rejected {
            event_hash,
            rejection,
            position,
        } => wire::rejected(event_hash, &rejection, position),
    }
}

#[tonic::async_trait]
impl IngestService for IngestGrpc {
    async fn submit_events(
        &self,
        request: Request<v1::SubmitEventsRequest>,
    ) -> Result<Response<v1::SubmitEventsResponse>, Status> {
        let caller = auth::facility(&auth::caller(&request)?)?;
        let envelopes = request.into_inner().envelopes;
        if envelopes.len() > MAX_BATCH {
            return Err(RequestError::invalid(
                "envelopes",
                format_args!("at most {MAX_BATCH} per call"),
            )
            .into());
        }
        let outcomes = self
            .ingest
            .submit(&caller, envelopes.into_iter().map(Envelope::from).collect())
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::SubmitEventsResponse {
            results: outcomes.into_iter().map(result).collect(),
        }))
    }

    async fn get_facility_head(
        &self,
        request: Request<v1::GetFacilityHeadRequest>,
    ) -> Result<Response<v1::GetFacilityHeadResponse>, Status> {
        let caller = auth::caller(&request)?;
        let facility = wire::facility("facility_id", &request.get_ref().facility_id)?;
        // A facility asks for its own head; the national center for any.
        if let auth::Principal::Facility(f) = &caller
            && *f != facility
        {
            return Err(
                RequestError::PermissionDenied("a facility may read only its own head").into(),
            );
        }
        let head = self.ingest.head(&facility).await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::GetFacilityHeadResponse {
            facility_id: facility.to_string(),
            head: Some(v1::ChainHead {
                seq: head.seq,
                event_hash: head.event_hash.as_bytes().to_vec(),
            }),
        }))
    }
}
