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
    max_message_bytes: usize,
}

/// The default largest SubmitEvents message.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

impl IngestGrpc {
    pub fn new(ingest: Arc<Ingest>) -> Self {
        Self {
            ingest,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// The largest SubmitEvents message, checked against its length prefix before the
    /// message is read (a larger one is refused OUT_OF_RANGE, nothing buffered).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    pub fn into_server(self) -> v1::ingest_service_server::IngestServiceServer<Self> {
        let max = self.max_message_bytes;
        v1::ingest_service_server::IngestServiceServer::new(self).max_decoding_message_size(max)
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
