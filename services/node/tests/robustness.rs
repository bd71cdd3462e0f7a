//! Bad input of every kind gets its typed answer, the node keeps serving, and nothing
//! it accepted is lost — also across a restart and a full reprojection.

mod support;

use hrx_domain::dsse::PayloadType;
use hrx_domain::{Purpose, RecordKind, Sha256, SigningKey};
use hrx_identity::{CertificateAuthority, Principal};
use hrx_node::client::{FacilityClient, connect, facility_key_path};
use hrx_proto::v1;
use support::*;

fn reason(r: &v1::SubmitResult) -> (i32, String, bool) {
    let rej = r.rejection.clone().unwrap_or_default();
    (rej.reason, rej.field, r.extends_chain)
}

fn obs(patient: &str) -> v1::facility_event::Body {
    record(
        patient,
        RecordKind::Observation,
        ts("2026-11-01T00:00:00Z"),
        &[],
    )
}

async fn every_bad_submission_is_answered_with_its_reason_and_nothing_accepted_is_lost(test: Env) {
    let node = TestNode::start(&test).await;
    let mut w = World::register(test.path(), &node).await;
    let d = &mut w.district;
    let mut accepted_ids = Vec::new();

    let (id, r) = d.emit(obs(AN)).await.unwrap();
    assert!(accepted(&r));
    accepted_ids.push(id);
    let head1 = d.head();

    // Bad signature: one payload bit flipped after signing. Not in the log.
    let (_, mut env) = d.sign(obs(AN));
    env.payload[10] ^= 1;
    let r = d.submit(vec![env]).await.unwrap().remove(0);
    assert_eq!(
        reason(&r),
        (
            hrx_domain::Reason::BadSignature.code(),
            String::new(),
            false
        )
    );
    d.set_head(head1.0, head1.1);

    // Unknown key.
    let stranger = SigningKey::from_seed(&[9; 32]).unwrap();
    let mut stranger_client = FacilityClient::with(fac(DISTRICT), stranger, d.channel());
    stranger_client.set_head(head1.0, head1.1);
    let (_, env) = stranger_client.sign(obs(AN));
    let r = d.submit(vec![env]).await.unwrap().remove(0);
    assert_eq!(reason(&r).0, hrx_domain::Reason::UnknownKey.code());

    // Wrong payload type (re-signed properly under another type).
    let (_, env) = d.sign(obs(AN));
    let key =
        hrx_node::keys::read_private_key(&facility_key_path(test.path(), &fac(DISTRICT))).unwrap();
    let mut wrong = key.sign(PayloadType::RegistryEvent, env.payload.clone());
    wrong.payload_type = PayloadType::REGISTRY_EVENT.into();
    let r = d.submit(vec![wrong]).await.unwrap().remove(0);
    assert_eq!(reason(&r).0, hrx_domain::Reason::UnknownPayloadType.code());
    d.set_head(head1.0, head1.1);

    // Gap: seq 3 when the head is 1.
    d.set_head(head1.0 + 1, head1.1);
    let (_, env) = d.sign(obs(AN));
    let r = d.submit(vec![env]).await.unwrap().remove(0);
    assert_eq!(reason(&r).0, hrx_domain::Reason::SequenceGap.code());

    // Chain mismatch: seq 2 with a wrong prev_hash.
    d.set_head(head1.0, Sha256::from_bytes([1; 32]));
    let (_, env) = d.sign(obs(AN));
    let r = d.submit(vec![env]).await.unwrap().remove(0);
    assert_eq!(reason(&r).0, hrx_domain::Reason::ChainMismatch.code());

    // Fork: a different event at seq 1.
    d.set_head(0, Sha256::ZERO);
    let (_, env) = d.sign(obs(AN));
    let r = d.submit(vec![env]).await.unwrap().remove(0);
    assert_eq!(reason(&r).0, hrx_domain::Reason::Fork.code());

    // Duplicate: the same envelope twice.
    d.set_head(head1.0, head1.1);
    let (id, env) = d.sign(obs(AN));
    let first = d.submit(vec![env.clone()]).await.unwrap().remove(0);
    assert!(accepted(&first));
    accepted_ids.push(id);
    let again = d.submit(vec![env]).await.unwrap().remove(0);
    assert_eq!(again.status, v1::SubmitStatus::Duplicate as i32);
    assert_eq!(again.position, first.position);

    // Invalid content: extends the chain, is rejected, and the next event follows it.
    let (_, r) = d.emit(obs("02606200123")).await.unwrap();
    assert_eq!(
        reason(&r),
        (
            hrx_domain::Reason::InvalidField.code(),
            "record.patient_id".into(),
            true
        )
    );
    let (_, r) = d
        .emit(record(
            AN,
            RecordKind::Observation,
            ts("2026-11-01T00:00:00Z"),
            &[],
        ))
        .await
        .unwrap();
    assert!(
        accepted(&r),
        "the chain continues after a content rejection: {r:?}"
    );
    let mut body = obs(AN);
    if let v1::facility_event::Body::Record(rec) = &mut body {
        rec.body =
            br#"{"resourceType":"Condition","subject":{"reference":"Patient/026062001234"}}"#
                .to_vec();
    }
    let (_, r) = d.emit(body).await.unwrap();
    assert_eq!(reason(&r).1, "record.body.resourceType");

    // Impersonation: the provincial hospital's certificate with the district's events.
    let (_, env) = d.sign(obs(AN));
    let r = w.provincial.submit(vec![env]).await.unwrap().remove(0);
    assert_eq!(reason(&r).0, hrx_domain::Reason::NotAuthorised.code());
    w.district.sync_head().await.unwrap();

    // Another facility reusing an accepted event id: refused at ingest (event ids are
    // unique across the exchange), never appended; the refusal is on record.
    let (_, env) = w.provincial.sign_with_id(accepted_ids[0], obs(AN));
    let r = w.provincial.submit(vec![env]).await.unwrap().remove(0);
    assert_eq!(
        reason(&r),
        (
            hrx_domain::Reason::InvalidField.code(),
            "header.event_id".into(),
            false
        )
    );
    w.provincial.sync_head().await.unwrap();
    settle(&w.nc).await;
    let provincial_rejections =
        v1::monitor_service_client::MonitorServiceClient::new(w.nc.channel())
            .list_rejections(v1::ListRejectionsRequest {
                facility_id: PROVINCIAL.into(),
                limit: 10,
            })
            .await
            .unwrap()
            .into_inner()
            .rejections;
    assert_eq!(
        provincial_rejections[0].rejection.as_ref().unwrap().field,
        "header.event_id"
    );

    // The national center cannot submit facility events.
    let err = v1::ingest_service_client::IngestServiceClient::new(w.nc.channel())
        .submit_events(v1::SubmitEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // A certificate from another CA is refused.
    let other = CertificateAuthority::generate("someone else's CA").unwrap();
    let cert = other
        .issue_client(&Principal::Facility(fac(DISTRICT)))
        .unwrap();
    let tls = hrx_identity::TlsDir::open_or_init(test.path()).unwrap();
    let refused = async {
        let ch = connect(node.addr, tls.ca_cert_pem(), &cert).await.ok()?;
        v1::ingest_service_client::IngestServiceClient::new(ch)
            .get_facility_head(v1::GetFacilityHeadRequest {
                facility_id: DISTRICT.into(),
            })
            .await
            .ok()
    }
    .await;
    assert!(
        refused.is_none(),
        "a foreign certificate must not be served"
    );

    // Read errors: page size 10,000, garbage cursor, no purpose, bad patient id.
    let mut t = w.provincial.timeline();
    for (req, field) in [
        (
            v1::GetTimelineRequest {
                patient_id: AN.into(),
                purpose: 2,
                page_size: 10_000,
                ..Default::default()
            },
            "page_size",
        ),
        (
            v1::GetTimelineRequest {
                patient_id: AN.into(),
                purpose: 2,
                cursor: "garbage!".into(),
                ..Default::default()
            },
            "cursor",
        ),
        (
            v1::GetTimelineRequest {
                patient_id: AN.into(),
                ..Default::default()
            },
            "purpose",
        ),
        (
            v1::GetTimelineRequest {
                patient_id: "12".into(),
                purpose: 2,
                ..Default::default()
            },
            "patient_id",
        ),
    ] {
        let e = t.get_timeline(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{}", e.message());
    }
    // Page size 0 means the default (for a reader with a basis: the author).
    let ok = w
        .district
        .timeline()
        .get_timeline(v1::GetTimelineRequest {
            patient_id: AN.into(),
            purpose: 2,
            page_size: 0,
            ..Default::default()
        })
        .await;
    assert!(ok.is_ok());
    // A record without consent: PERMISSION_DENIED (and it is audited).
    let e = t
        .get_record(v1::GetRecordRequest {
            patient_id: AN.into(),
            event_id: accepted_ids[0].to_string(),
            purpose: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // Still serving; everything accepted is there, in the chain, once.
    settle(&w.nc).await;
    let (entries, _) = read_all(&w.district, AN, Purpose::Treatment, 500).await;
    for id in &accepted_ids {
        assert_eq!(
            entries
                .iter()
                .filter(|e| e.event_id == id.to_string())
                .count(),
            1
        );
    }
    let stats = v1::monitor_service_client::MonitorServiceClient::new(w.nc.channel())
        .list_facility_stats(v1::ListFacilityStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .facilities;
    let district = stats.iter().find(|s| s.facility_id == DISTRICT).unwrap();
    let rejected: u64 = district.rejected.iter().map(|r| r.count).sum();
    assert!(rejected >= 8, "{district:?}");
    assert_eq!(district.accepted as usize, entries.len());
    node.stop().await;
}

async fn restart_resumes_and_reproject_gives_identical_projections(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let expires = hrx_domain::Timestamp::now()
        .checked_add(hrx_domain::Duration::from_secs(3600).unwrap())
        .unwrap();
    for i in 0..30 {
        let (_, r) = w
            .district
            .emit(record(
                AN,
                RecordKind::Observation,
                hrx_domain::Timestamp::from_unix_seconds(1_780_000_000 + i).unwrap(),
                &[],
            ))
            .await
            .unwrap();
        assert!(accepted(&r));
    }
    let (_, r) = w
        .district
        .emit(grant(AN, PROVINCIAL, &[Purpose::Referral], expires))
        .await
        .unwrap();
    assert!(accepted(&r));
    settle(&w.nc).await;
    let before = read_all(&w.provincial, AN, Purpose::Referral, 7).await;
    drop(w);
    node.stop().await;

    let node = TestNode::start(&env).await;
    let provincial = FacilityClient::open(env.path(), node.addr, &fac(PROVINCIAL))
        .await
        .unwrap();
    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    assert_eq!(district.head().0, 31, "the head survives a restart");
    let after = read_all(&provincial, AN, Purpose::Referral, 7).await;
    assert_eq!(before, after);
    let (_, r) = district.emit(obs(AN)).await.unwrap();
    assert!(accepted(&r));
    drop((provincial, district));
    node.stop().await;

    let n = hrx_node::reproject(&env.config).await.unwrap();
    assert!(n >= 32);
    let node = TestNode::start(&env).await;
    let provincial = FacilityClient::open(env.path(), node.addr, &fac(PROVINCIAL))
        .await
        .unwrap();
    let replayed = read_all(&provincial, AN, Purpose::Referral, 7).await;
    assert_eq!(replayed.0.len(), before.0.len() + 1);
    assert_eq!(
        &replayed.0[1..],
        &before.0[..],
        "identical projections after a full replay"
    );
    drop(provincial);
    node.stop().await;
}

both_backends!(
    every_bad_submission_is_answered_with_its_reason_and_nothing_accepted_is_lost,
    restart_resumes_and_reproject_gives_identical_projections
);
