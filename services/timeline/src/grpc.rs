//! The gRPC face of the timeline (`hrx.v1.TimelineService`).

use std::pin::Pin;
use std::sync::Arc;

use hrx_domain::audit::{AccessAction, AccessOutcome};
use hrx_ports::TimelineQuery;
use hrx_proto::v1;
use hrx_proto::v1::timeline_service_server::TimelineService;
use hrx_rpc::error::{RequestError, status};
use hrx_rpc::{auth, wire};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{DEFAULT_PAGE, MAX_PAGE, ReadError, Timeline, cursor, facts, follow};

/// `TimelineService` over a [`Timeline`].
#[derive(Clone, Debug)]
pub struct TimelineGrpc {
    timeline: Arc<Timeline>,
}

impl TimelineGrpc {
    pub fn new(timeline: Arc<Timeline>) -> Self {
        Self { timeline }
    }

    pub fn into_server(self) -> v1::timeline_service_server::TimelineServiceServer<Self> {
        v1::timeline_service_server::TimelineServiceServer::new(self)
    }
}

fn page_size(n: u32) -> Result<usize, RequestError> {
    match n as usize {
        0 => Ok(DEFAULT_PAGE),
        n if n <= MAX_PAGE => Ok(n),
        _ => Err(RequestError::invalid(
            "page_size",
            format_args!("at most {MAX_PAGE}"),
        )),
    }
}

#[tonic::async_trait]
impl TimelineService for TimelineGrpc {
    async fn get_timeline(
        &self,
        request: Request<v1::GetTimelineRequest>,
    ) -> Result<Response<v1::GetTimelineResponse>, Status> {
        let reader = auth::facility(&auth::caller(&request)?)?;
        let r = request.into_inner();
        let query = TimelineQuery {
            patient_id: wire::patient("patient_id", &r.patient_id)?,
            kinds: wire::kinds("kinds", &r.kinds)?,
            facilities: r
                .facility_ids
                .iter()
                .map(|f| wire::facility("facility_ids", f))
                .collect::<Result<_, _>>()?,
            occurred_from: wire::optional_time("occurred_from", r.occurred_from)?,
            occurred_until: wire::optional_time("occurred_until", r.occurred_until)?,
            after: if r.cursor.is_empty() {
                None
            } else {
                Some(
                    cursor::decode_timeline(&r.cursor)
                        .map_err(|e| RequestError::invalid("cursor", e))?,
                )
            },
            limit: page_size(r.page_size)?,
        };
        let purpose = wire::purpose("purpose", r.purpose)?;
        let page = self
            .timeline
            .page(&reader, purpose, query)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(v1::GetTimelineResponse {
            entries: page
                .entries
                .into_iter()
                .map(|(r, b)| wire::entry(r, &b))
                .collect(),
            next_cursor: page.next.unwrap_or_default(),
            withheld_count: page.withheld,
        }))
    }

    async fn get_record(
        &self,
        request: Request<v1::GetRecordRequest>,
    ) -> Result<Response<v1::GetRecordResponse>, Status> {
        let reader = auth::facility(&auth::caller(&request)?)?;
        let r = request.into_inner();
        let patient = wire::patient("patient_id", &r.patient_id)?;
        let event_id = wire::event_id("event_id", &r.event_id)?;
        let purpose = wire::purpose("purpose", r.purpose)?;
        let t = &self.timeline;
        let standing = t
            .standing(&reader, &patient, purpose)
            .await
            .map_err(|e| status(&e))?;
        if !standing.any(&reader, purpose) {
            t.refuse(
                &reader,
                &patient,
                purpose,
                AccessAction::GetRecord,
                ReadError::NoStanding,
            )
            .await
            .map_err(|e| status(&e))?;
        }
        let found = t.store.record(event_id).await.map_err(|e| status(&e))?;
        // A record of another patient is "not found": the answer must not reveal
        // which patient an event id belongs to.
        let Some((record, envelope)) = found.filter(|(rec, _)| rec.patient_id == patient) else {
            return Err(RequestError::NotFound("record").into());
        };
        let decision = standing.access(&reader, purpose).decide(&facts(&record));
        let (bases, returned, withheld, outcome) = match decision {
            Some(b) => (vec![b], 1, 0, AccessOutcome::Allowed),
            None => (vec![], 0, 1, AccessOutcome::Denied),
        };
        let authors = [(record.facility_id.clone(), returned)];
        t.audit_as(
            &reader,
            &patient,
            purpose,
            AccessAction::GetRecord,
            outcome,
            bases,
            (returned, withheld),
            &authors,
        )
        .await
        .map_err(|e| status(&e))?;
        let Some(basis) = decision else {
            return Err(status(&ReadError::Withheld));
        };
        Ok(Response::new(v1::GetRecordResponse {
            entry: Some(wire::entry(record, &basis)),
            envelope: Some(envelope.into()),
        }))
    }

    type FollowStream =
        Pin<Box<dyn Stream<Item = Result<v1::FollowResponse, Status>> + Send + 'static>>;

    async fn follow(
        &self,
        request: Request<v1::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let reader = auth::facility(&auth::caller(&request)?)?;
        let permit = self
            .timeline
            .follow_permit(&reader)
            .map_err(|e| status(&e))?;
        let r = request.into_inner();
        let spec = follow::Spec {
            reader,
            patient: wire::patient("patient_id", &r.patient_id)?,
            purpose: wire::purpose("purpose", r.purpose)?,
            after: cursor::decode_follow(&r.cursor)
                .map_err(|e| RequestError::invalid("cursor", e))?,
            kinds: wire::kinds("kinds", &r.kinds)?,
        };
        let stream = follow::start(self.timeline.clone(), spec).await?;
        // The permit goes with the stream: dropped (the place freed) when the stream
        // ends or its client goes away.
        let stream = tokio_stream::StreamExt::map(stream, move |item| {
            let _held = &permit;
            item
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
