//! Limits: each exceeded gets its typed error, and the node goes on serving.

mod support;

use std::time::Duration;

use hrx_domain::{Purpose, RecordKind};
use hrx_proto::v1;
use support::*;
use tokio_stream::StreamExt;

const AN: &str = "026062001234";

fn obs() -> v1::facility_event::Body {
    record(AN, RecordKind::Observation, ts("2026-11-01T00:00:00Z"), &[])
}

/// A record whose body is about `bytes` long (a FHIR Observation with a long note).
fn big(bytes: usize) -> v1::facility_event::Body {
    let mut body = obs();
    if let v1::facility_event::Body::Record(r) = &mut body {
        let mut fhir: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        fhir["note"] = serde_json::json!([{ "text": "x".repeat(bytes) }]);
        r.body = serde_json::to_vec(&fhir).unwrap();
    }
    body
}

fn follow_request() -> v1::FollowRequest {
    v1::FollowRequest {
        patient_id: AN.into(),
        purpose: Purpose::ChronicCare.code(),
        ..Default::default()
    }
}

/// An envelope over the limit is refused with its typed reason and never reaches the
/// log (the chain's head stays where it was; on Kafka it is not a broker's "message too
/// large" retried for ever); a call over the message limit is refused before it is read.
async fn oversized_envelopes_and_messages_are_refused_before_the_log(mut env: Env) {
    env.config.max_envelope_bytes = 64 * 1024;
    env.config.max_message_bytes = 1024 * 1024;
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let (_, r) = w.district.emit(obs()).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    let head = w.district.head();

    let (_, envelope) = w.district.sign(big(100 * 1024));
    let r = w.district.submit(vec![envelope]).await.unwrap().remove(0);
    let rejection = r.rejection.as_ref().expect("a typed rejection");
    assert_eq!(rejection.reason, v1::RejectionReason::InvalidField as i32);
    assert_eq!(rejection.field, "envelope.payload");
    assert!(r.position.is_none(), "not in the log: {r:?}");

    // The message limit: five envelopes of ~300 KiB each, refused before being read.
    w.district.set_head(head.0, head.1);
    let batch: Vec<_> = (0..5).map(|_| w.district.sign(big(300 * 1024)).1).collect();
    let e = w.district.submit(batch).await.unwrap_err();
    assert!(
        matches!(&e, hrx_node::client::ClientError::Rpc(s)
            if s.code() == tonic::Code::OutOfRange),
        "{e:?}"
    );

    // Still serving, and the chain continues from where it was.
    w.district.set_head(head.0, head.1);
    let (_, r) = w.district.emit(obs()).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    w.district.sync_head().await.unwrap();
    assert_eq!(w.district.head().0, head.0 + 1);
    settle(&w.nc).await;
    let stats = v1::monitor_service_client::MonitorServiceClient::new(w.nc.channel())
        .list_facility_stats(v1::ListFacilityStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .facilities;
    let district = stats.iter().find(|s| s.facility_id == DISTRICT).unwrap();
    assert_eq!(district.accepted, 2);
    assert_eq!(
        district.rejected.iter().map(|r| r.count).sum::<u64>(),
        1,
        "the oversized envelope, counted (the oversized call was never read)"
    );
    node.stop().await;
}

/// A facility may have only so many follow streams open; one more is refused
/// RESOURCE_EXHAUSTED, and closing one frees its place. A follow stream outlives the
/// request timeout (it bounds the answer, not the stream).
async fn follow_streams_per_caller_are_bounded(mut env: Env) {
    env.config.max_follow_streams_per_caller = 2;
    env.config.request_timeout_ms = 1500;
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let (_, r) = w.district.emit(obs()).await.unwrap();
    assert!(accepted(&r));
    let (_, r) = w
        .district
        .emit(grant(AN, CLINIC, &[Purpose::ChronicCare], in_days(30)))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let open = || async {
        w.clinic
            .timeline()
            .follow(follow_request())
            .await
            .map(|r| r.into_inner())
    };
    let mut first = open().await.unwrap();
    let second = open().await.unwrap();
    let third = open().await.unwrap_err();
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third:?}");
    // Another facility is not counted against this one.
    let other = w.provincial.timeline().follow(follow_request()).await;
    assert_ne!(
        other.err().map(|s| s.code()),
        Some(tonic::Code::ResourceExhausted)
    );
    drop(second);
    let mut freed = None;
    for _ in 0..50 {
        match open().await {
            Ok(s) => {
                freed = Some(s);
                break;
            }
            Err(s) => assert_eq!(s.code(), tonic::Code::ResourceExhausted),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed.is_some(), "closing a stream frees its place");
    // Past the request timeout, the first stream still delivers (heartbeats at least).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let item = tokio::time::timeout(Duration::from_secs(5), first.next())
        .await
        .expect("an item within 5 s")
        .expect("the stream is open");
    assert!(item.is_ok(), "{item:?}");
    node.stop().await;
}

/// One caller's calls in flight are bounded across its connections; one more is
/// refused RESOURCE_EXHAUSTED while other callers are served, and once the first call is
/// answered the caller is served again.
async fn calls_in_flight_per_caller_are_bounded(mut env: Env) {
    env.config.max_concurrent_per_caller = 1;
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    // A slow call: a thousand envelopes to verify and append.
    let batch: Vec<_> = (0..1000)
        .map(|_| w.district.sign(big(2 * 1024)).1)
        .collect();
    let district = &w.district;
    let slow = async {
        let started = std::time::Instant::now();
        let r = district.submit(batch).await.unwrap();
        (r, started.elapsed())
    };
    let probe = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let started = std::time::Instant::now();
        let refused = v1::ingest_service_client::IngestServiceClient::new(district.channel())
            .get_facility_head(v1::GetFacilityHeadRequest {
                facility_id: DISTRICT.into(),
            })
            .await;
        (refused, started.elapsed())
    };
    let ((results, slow_took), (refused, _)) = tokio::join!(slow, probe);
    assert!(
        results.iter().all(accepted),
        "the slow call itself is served"
    );
    assert!(
        slow_took > Duration::from_millis(60),
        "the slow call took {slow_took:?}: too fast to hold its place"
    );
    let e = refused.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    // Served again, and other callers were never affected.
    w.district.sync_head().await.unwrap();
    assert_eq!(w.district.head().0, 1000);
    w.clinic.sync_head().await.unwrap();
    node.stop().await;
}

/// A call not answered within the request timeout is answered DEADLINE_EXCEEDED, and
/// the node goes on serving; what the call appended is whole or absent.
async fn a_call_past_its_deadline_is_answered_deadline_exceeded(mut env: Env) {
    let node = TestNode::start(&env).await;
    drop(World::register(env.path(), &node).await);
    node.stop().await;
    env.config.request_timeout_ms = 40;
    let node = TestNode::start(&env).await;
    let mut district =
        hrx_node::client::FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
            .await
            .unwrap();
    let batch: Vec<_> = (0..1000).map(|_| district.sign(big(2 * 1024)).1).collect();
    let e = district.submit(batch).await.unwrap_err();
    assert!(
        matches!(&e, hrx_node::client::ClientError::Rpc(s) if s.code() == tonic::Code::DeadlineExceeded),
        "{e:?}"
    );
    // Still serving; the batch is in the log whole or not at all.
    district.sync_head().await.unwrap();
    let head = district.head().0;
    assert!(head == 0 || head == 1000, "head {head}");
    node.stop().await;
}

/// A read folds the patient's whole consent history; past the bound it is refused
/// RESOURCE_EXHAUSTED (never decided on a part of it), other patients are read as
/// before, and the node goes on serving.
async fn consent_history_loaded_per_read_is_bounded(mut env: Env) {
    env.config.max_consent_events_per_patient = 3;
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    for patient in [AN, BINH] {
        let body = record(
            patient,
            RecordKind::Observation,
            ts("2026-11-01T00:00:00Z"),
            &[],
        );
        let (_, r) = w.district.emit(body).await.unwrap();
        assert!(accepted(&r), "{r:?}");
    }
    let read = |patient: &'static str| {
        let mut timeline = w.clinic.timeline();
        async move {
            timeline
                .get_timeline(v1::GetTimelineRequest {
                    patient_id: patient.into(),
                    purpose: Purpose::ChronicCare.code(),
                    ..Default::default()
                })
                .await
        }
    };
    // Three consent events: within the bound.
    for days in [10, 20, 30] {
        let (_, r) = w
            .district
            .emit(grant(AN, CLINIC, &[Purpose::ChronicCare], in_days(days)))
            .await
            .unwrap();
        assert!(accepted(&r), "{r:?}");
    }
    let (_, r) = w
        .district
        .emit(grant(BINH, CLINIC, &[Purpose::ChronicCare], in_days(30)))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    read(AN).await.expect("three consent events: read");

    // A fourth: over it.
    let (_, r) = w
        .district
        .emit(grant(AN, CLINIC, &[Purpose::ChronicCare], in_days(40)))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let e = read(AN).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("consent events"), "{e:?}");
    let e = w
        .clinic
        .timeline()
        .follow(follow_request())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    // Another patient, and the node, as before.
    let page = read(BINH).await.expect("another patient").into_inner();
    assert_eq!(page.entries.len(), 1);
    node.stop().await;
}

/// A connection may have only so many streams open (HTTP/2's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`): with its follow streams taking every place, one
/// more call on the same connection waits in the client, nothing queued in the node,
/// and goes through, answered, as soon as a stream closes. Another connection of the
/// same facility is not held back.
async fn streams_per_connection_are_bounded(mut env: Env) {
    env.config.max_streams_per_connection = 2;
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let (_, r) = w.district.emit(obs()).await.unwrap();
    assert!(accepted(&r));
    let (_, r) = w
        .district
        .emit(grant(AN, CLINIC, &[Purpose::ChronicCare], in_days(30)))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let open = || async {
        w.clinic
            .timeline()
            .follow(follow_request())
            .await
            .map(|r| r.into_inner())
            .expect("a follow stream opens")
    };
    let first = open().await;
    let _second = open().await;
    let read = || {
        let mut timeline = w.clinic.timeline();
        async move {
            timeline
                .get_timeline(v1::GetTimelineRequest {
                    patient_id: AN.into(),
                    purpose: Purpose::ChronicCare.code(),
                    ..Default::default()
                })
                .await
        }
    };
    let mut held = Box::pin(read());
    assert!(
        tokio::time::timeout(Duration::from_millis(800), &mut held)
            .await
            .is_err(),
        "a third stream on the connection waits while two are open"
    );
    // A second connection of the same facility has places of its own.
    let other = hrx_node::client::FacilityClient::open(env.path(), node.addr, &fac(CLINIC))
        .await
        .unwrap();
    other
        .timeline()
        .get_timeline(v1::GetTimelineRequest {
            patient_id: AN.into(),
            purpose: Purpose::ChronicCare.code(),
            ..Default::default()
        })
        .await
        .expect("another connection is served");
    drop(first);
    let page = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("answered once a stream closed")
        .expect("and answered without error")
        .into_inner();
    assert_eq!(page.entries.len(), 1);
    node.stop().await;
}

both_backends!(
    streams_per_connection_are_bounded,
    consent_history_loaded_per_read_is_bounded,
    a_call_past_its_deadline_is_answered_deadline_exceeded,
    calls_in_flight_per_caller_are_bounded,
    oversized_envelopes_and_messages_are_refused_before_the_log,
    follow_streams_per_caller_are_bounded,
);
