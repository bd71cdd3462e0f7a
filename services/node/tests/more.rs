//! Corrections, consent views, expiry of follow streams, the Prometheus endpoint and a
//! malformed protobuf on the wire.

mod support;

use std::time::Duration;

use hrx_domain::{Purpose, RecordKind, Timestamp};
use hrx_proto::v1;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

async fn corrected_records_are_shown_as_superseded_not_hidden(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let (original, r) = w
        .district
        .emit(record(
            AN,
            RecordKind::Observation,
            ts("2026-11-01T00:00:00Z"),
            &[],
        ))
        .await
        .unwrap();
    assert!(accepted(&r));
    let mut correction = record(AN, RecordKind::Observation, ts("2026-11-01T00:00:00Z"), &[]);
    if let v1::facility_event::Body::Record(rec) = &mut correction {
        rec.supersedes = original.to_string();
    }
    let (fixed, r) = w.district.emit(correction).await.unwrap();
    assert!(accepted(&r));
    settle(&w.nc).await;
    let (entries, _) = read_all(&w.district, AN, Purpose::Treatment, 50).await;
    assert_eq!(entries.len(), 2);
    let old = entries
        .iter()
        .find(|e| e.event_id == original.to_string())
        .unwrap();
    let new = entries
        .iter()
        .find(|e| e.event_id == fixed.to_string())
        .unwrap();
    assert_eq!(old.superseded_by, fixed.to_string());
    assert_eq!(new.supersedes, original.to_string());
    node.stop().await;
}

async fn check_access_and_list_grants_reflect_grants_and_revocations(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let check = |reader: &hrx_node::client::FacilityClient, purpose: Purpose| {
        let mut c = reader.consent();
        async move {
            c.check_access(v1::CheckAccessRequest {
                patient_id: AN.into(),
                purpose: purpose.code(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    assert!(!check(&w.provincial, Purpose::Referral).await.allowed);
    let expires = Timestamp::now()
        .checked_add(hrx_domain::Duration::from_secs(3600).unwrap())
        .unwrap();
    // The district hospital treats An: its standing to attest a paper-form grant.
    let (_, r) = w
        .district
        .emit(record(AN, RecordKind::Encounter, Timestamp::now(), &[]))
        .await
        .unwrap();
    assert!(accepted(&r));
    let (grant_id, r) = w
        .district
        .emit(grant(AN, PROVINCIAL, &[Purpose::Referral], expires))
        .await
        .unwrap();
    assert!(accepted(&r));
    settle(&w.nc).await;
    let ok = check(&w.provincial, Purpose::Referral).await;
    assert!(ok.allowed);
    assert_eq!(ok.bases[0].source_event_id, grant_id.to_string());
    assert!(!check(&w.provincial, Purpose::ChronicCare).await.allowed);
    assert!(!check(&w.clinic, Purpose::Referral).await.allowed);
    // A facility cannot check another's access; the national center can.
    let e = w
        .clinic
        .consent()
        .check_access(v1::CheckAccessRequest {
            patient_id: AN.into(),
            reader_facility_id: PROVINCIAL.into(),
            purpose: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    let revoke = |patient: &str| {
        v1::facility_event::Body::ConsentRevocation(v1::ConsentRevocation {
            patient_id: patient.into(),
            grant_event_id: grant_id.to_string(),
            evidence: None,
        })
    };
    // Only the facility that attested a grant (or the patient) may revoke it.
    for patient in [AN, BINH] {
        let (_, r) = w.clinic.emit(revoke(patient)).await.unwrap();
        assert_eq!(r.status, v1::SubmitStatus::Rejected as i32, "{r:?}");
        assert!(r.extends_chain);
        assert_eq!(
            r.rejection.unwrap().reason,
            v1::RejectionReason::NotGrantor as i32
        );
    }
    settle(&w.nc).await;
    assert!(check(&w.provincial, Purpose::Referral).await.allowed);
    let (_, r) = w.district.emit(revoke(AN)).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    assert!(!check(&w.provincial, Purpose::Referral).await.allowed);
    // A facility sees the grants that name it, with the signed artefact; others none.
    let grants_of = |f: &hrx_node::client::FacilityClient| {
        let mut c = f.consent();
        async move {
            c.list_grants(v1::ListGrantsRequest {
                patient_id: AN.into(),
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let grants = grants_of(&w.provincial).await.grants;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].status, v1::GrantStatus::Revoked as i32);
    assert_eq!(grants[0].form, v1::ConsentForm::Attested as i32);
    assert_eq!(grants[0].revoked_by, DISTRICT);
    let artefact: hrx_domain::Envelope = grants[0].artefact.clone().unwrap().into();
    assert_eq!(artefact.event_hash().to_string().len(), 64);
    assert!(grants_of(&w.clinic).await.grants.is_empty());
    assert!(
        grants_of(&w.district).await.grants.is_empty(),
        "the grant does not name the district"
    );
    let rejections = v1::monitor_service_client::MonitorServiceClient::new(w.nc.channel())
        .list_rejections(v1::ListRejectionsRequest {
            facility_id: CLINIC.into(),
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .rejections;
    assert_eq!(rejections.len(), 2);
    assert!(rejections.iter().all(|r| r.rejection.as_ref().unwrap().reason
        == v1::RejectionReason::NotGrantor as i32));
    node.stop().await;
}

async fn a_follow_stream_ends_when_its_grant_expires(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let expires = Timestamp::now()
        .checked_add(hrx_domain::Duration::from_secs(2).unwrap())
        .unwrap();
    let (_, r) = w
        .district
        .emit(record(AN, RecordKind::Encounter, Timestamp::now(), &[]))
        .await
        .unwrap();
    assert!(accepted(&r));
    let (_, r) = w
        .district
        .emit(grant(AN, CLINIC, &[Purpose::ChronicCare], expires))
        .await
        .unwrap();
    assert!(accepted(&r));
    settle(&w.nc).await;
    let mut stream = w
        .clinic
        .timeline()
        .follow(v1::FollowRequest {
            patient_id: AN.into(),
            purpose: Purpose::ChronicCare.code(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("ends within 5 s")
        {
            Some(Ok(_)) => continue,
            Some(Err(s)) => break s,
            None => panic!("closed without a status"),
        }
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let late = Timestamp::now().unix_millis() - expires.unix_millis();
    assert!((0..1000).contains(&late), "ended {late} ms after expiry");
    node.stop().await;
}

/// The next record of a follow stream (skipping heartbeats): (patient_seq cursor, id).
async fn next_entry(s: &mut tonic::Streaming<v1::FollowResponse>) -> (String, String) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("stream item within 10 s")
            .expect("stream open")
            .expect("no error");
        if let Some(v1::follow_response::Item::Entry(e)) = msg.item {
            return (msg.cursor, e.event_id);
        }
    }
}

/// Followers of one patient share its tail (one read of the store per batch), but
/// each keeps its own cursor and its own consent: a follower starting far behind the
/// shared window of newest records gets every record once, in order; a revoked
/// follower ends while the other goes on.
async fn followers_of_one_patient_share_its_tail_not_their_consent(env: Env) {
    const RECORDS: usize = 1100; // more than the tail's window of 1024
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let expires = Timestamp::now()
        .checked_add(hrx_domain::Duration::from_secs(86_400).unwrap())
        .unwrap();
    let mut envelopes = Vec::new();
    let start = Timestamp::parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
    for i in 0..RECORDS {
        let at = start
            .checked_add(hrx_domain::Duration::from_secs(3600 * i as i64).unwrap())
            .unwrap();
        envelopes.push(
            w.district
                .sign(record(BINH, RecordKind::Observation, at, &[])),
        );
    }
    let ids: Vec<String> = envelopes.iter().map(|(id, _)| id.to_string()).collect();
    // The grants come after the district's records: its standing for Bình.
    for reader in [CLINIC, PROVINCIAL] {
        envelopes.push(
            w.district
                .sign(grant(BINH, reader, &[Purpose::ChronicCare], expires)),
        );
    }
    let provincial_grant = envelopes[RECORDS + 1].0;
    for chunk in envelopes.chunks(200) {
        let results = w
            .district
            .submit(chunk.iter().map(|(_, e)| e.clone()).collect())
            .await
            .unwrap();
        assert!(results.iter().all(accepted));
    }
    settle(&w.nc).await;

    let follow = |client: &hrx_node::client::FacilityClient, cursor: String| {
        let mut t = client.timeline();
        async move {
            t.follow(v1::FollowRequest {
                patient_id: BINH.into(),
                purpose: Purpose::ChronicCare.code(),
                cursor,
                kinds: vec![],
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    // The clinic from the beginning: the whole history, once, in projection order.
    let mut clinic = follow(&w.clinic, String::new()).await;
    let mut last = String::new();
    for (i, id) in ids.iter().enumerate() {
        let (cursor, got) = next_entry(&mut clinic).await;
        assert_eq!(&got, id, "record {i} of the backlog");
        last = cursor;
    }
    // The provincial hospital from the end.
    let mut provincial = follow(&w.provincial, last).await;

    // A live record reaches both.
    let (live, r) = w
        .district
        .emit(record(BINH, RecordKind::Observation, Timestamp::now(), &[]))
        .await
        .unwrap();
    assert!(accepted(&r));
    assert_eq!(next_entry(&mut clinic).await.1, live.to_string());
    assert_eq!(next_entry(&mut provincial).await.1, live.to_string());

    // Revoking the provincial hospital's grant ends its stream only.
    let revoke = v1::facility_event::Body::ConsentRevocation(v1::ConsentRevocation {
        patient_id: BINH.into(),
        grant_event_id: provincial_grant.to_string(),
        evidence: None,
    });
    let (_, r) = w.district.emit(revoke).await.unwrap();
    assert!(accepted(&r));
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), provincial.next())
            .await
            .expect("the revoked stream ends")
        {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("closed without a status"),
        }
    };
    assert_eq!(end.code(), tonic::Code::PermissionDenied);
    let (after, r) = w
        .district
        .emit(record(BINH, RecordKind::Observation, Timestamp::now(), &[]))
        .await
        .unwrap();
    assert!(accepted(&r));
    assert_eq!(next_entry(&mut clinic).await.1, after.to_string());
    node.stop().await;
}

async fn metrics_are_served_in_prometheus_format_without_patient_data(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let (_, r) = w
        .district
        .emit(record(
            AN,
            RecordKind::Condition,
            ts("2026-11-01T00:00:00Z"),
            &[],
        ))
        .await
        .unwrap();
    assert!(accepted(&r));
    let (_, r) = w
        .district
        .emit(record(
            "12",
            RecordKind::Condition,
            ts("2026-11-01T00:00:00Z"),
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, v1::SubmitStatus::Rejected as i32);
    settle(&w.nc).await;
    let mut conn = tokio::net::TcpStream::connect(node.metrics).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(r#"hrx_events_accepted_total{facility="26012"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"hrx_events_rejected_total{facility="26012",reason="INVALID_FIELD"} 1"#),
        "{text}"
    );
    assert!(text.contains("hrx_projector_lag_entries"), "{text}");
    assert!(!text.contains(AN), "no patient ids in metrics");
    node.stop().await;
}

/// Sends raw bytes as a gRPC request body, so the server sees a malformed protobuf.
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    pub struct RawCodec;
    pub struct RawEncoder;
    pub struct RawDecoder;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for RawDecoder {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            let v = src.chunk().to_vec();
            src.advance(v.len());
            Ok(Some(v))
        }
    }
}

async fn a_malformed_protobuf_is_refused_and_the_node_keeps_serving(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let mut grpc = tonic::client::Grpc::new(w.district.channel());
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/hrx.v1.IngestService/SubmitEvents");
    // Field 1, length-delimited, claiming 100 bytes that are not there.
    let garbage = vec![0x0a, 0x64, 0x01, 0x02];
    let err = grpc
        .unary::<Vec<u8>, Vec<u8>, _>(tonic::Request::new(garbage), path, raw::RawCodec)
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    // Still serving, state intact.
    let (_, r) = w
        .district
        .emit(record(
            AN,
            RecordKind::Condition,
            ts("2026-11-01T00:00:00Z"),
            &[],
        ))
        .await
        .unwrap();
    assert!(accepted(&r));
    assert_eq!(w.district.head().0, 1);
    node.stop().await;
}

both_backends!(
    corrected_records_are_shown_as_superseded_not_hidden,
    check_access_and_list_grants_reflect_grants_and_revocations,
    a_follow_stream_ends_when_its_grant_expires,
    followers_of_one_patient_share_its_tail_not_their_consent,
    metrics_are_served_in_prometheus_format_without_patient_data,
    a_malformed_protobuf_is_refused_and_the_node_keeps_serving
);
