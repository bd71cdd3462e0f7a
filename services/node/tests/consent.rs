//! Consent the patient controls, end to end on both backends: patient keys and their
//! proofs, patient-signed grants carried by the app or any facility, consent requests,
//! bounded attested grants, who may revoke, break-glass limits and alerts, the patient's
//! signed single-use view, what facilities and the national center may see, standing
//! for reads, audited deliveries and refusals, and a replay that rebuilds the same
//! consent state. Real node on port 0, real gRPC clients over mutual TLS (and TLS
//! without a client certificate on the patient port).

mod support;

use std::time::Duration;

use hrx_domain::dsse::PayloadType;
use hrx_domain::{
    EventId, PatientId, Purpose, RecordKind, SensitivityLabel, SigningKey, Timestamp,
};
use hrx_node::client::{FacilityClient, PatientClient, enrollment, key_proof};
use hrx_proto::{codec, v1};
use prost::Message as _;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

fn new_key() -> SigningKey {
    SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap()
}

fn pid(s: &str) -> PatientId {
    PatientId::parse(s).unwrap()
}

async fn read(
    reader: &FacilityClient,
    patient: &str,
    purpose: Purpose,
) -> Result<v1::GetTimelineResponse, tonic::Status> {
    reader
        .timeline()
        .get_timeline(v1::GetTimelineRequest {
            patient_id: patient.into(),
            purpose: purpose.code(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn reason(r: &v1::SubmitResult) -> i32 {
    assert_eq!(r.status, v1::SubmitStatus::Rejected as i32, "{r:?}");
    r.rejection.as_ref().unwrap().reason
}

fn refused(status: tonic::Status) -> tonic::Code {
    status.code()
}

/// The district hospital treats the patient: a record it authored.
async fn treat(w: &mut World, patient: &str) -> EventId {
    let (id, r) = w
        .district
        .emit(record(
            patient,
            RecordKind::Condition,
            ts("2026-10-02T02:00:00Z"),
            &[],
        ))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");
    id
}

async fn patient_keys_are_enrolled_in_person_rotated_and_revoked_by_the_patient(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let an = pid(AN);

    // A proof signed by another key, or made for another facility, is refused.
    let (key, other) = (new_key(), new_key());
    let (district, provincial) = (w.district.id.clone(), w.provincial.id.clone());
    for (signer, proof_for) in [(&other, &district), (&key, &provincial)] {
        let mut body = enrollment(&an, &key, &district, Timestamp::now());
        if let v1::facility_event::Body::PatientKeyEnrollment(e) = &mut body {
            e.proof = Some(key_proof(signer, &an, Some(proof_for), Timestamp::now()));
        }
        let (_, r) = w.district.emit(body).await.unwrap();
        assert_eq!(reason(&r), v1::RejectionReason::BadProofOfPossession as i32);
        assert!(r.extends_chain, "content rejection: the chain goes on");
    }

    // Enrolled in person: the patient's key signs their grants.
    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    let mut app = w.enroll(env.path(), &node, &mut district, AN).await;
    let first = app.key().key_id();
    let (_, r) = app
        .state(patient_grant(
            AN,
            PROVINCIAL,
            &[Purpose::Referral],
            in_days(30),
        ))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");

    // Another patient's key (here, a key nobody enrolled for An) is not An's.
    let binh_app = w.enroll(env.path(), &node, &mut district, BINH).await;
    let forger = PatientClient::new(an.clone(), new_key(), patient_port(env.path(), &node).await);
    let (_, r) = forger
        .state(patient_grant(
            AN,
            CLINIC,
            &[Purpose::Treatment],
            in_days(30),
        ))
        .await
        .unwrap();
    assert_eq!(reason(&r), v1::RejectionReason::PatientKeyNotValid as i32);
    let binh_signs_for_an = {
        let (_, envelope) = binh_app.statement(patient_grant(
            AN,
            CLINIC,
            &[Purpose::Treatment],
            in_days(30),
        ));
        // Bình's app only signs Bình's statements: make one for An with Bình's key.
        let mut s = v1::PatientStatement::decode(envelope.payload.as_slice()).unwrap();
        s.header.as_mut().unwrap().patient_id = AN.into();
        binh_app
            .key()
            .sign(PayloadType::PatientStatement, s.encode_to_vec())
    };
    let r = app.submit(vec![binh_signs_for_an]).await.unwrap().remove(0);
    assert_eq!(reason(&r), v1::RejectionReason::PatientKeyNotValid as i32);

    // The patient rotates with the current key; the old key is then refused.
    let old = app.key().clone();
    let r = app.rotate(new_key()).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let stale = PatientClient::new(an.clone(), old, patient_port(env.path(), &node).await);
    let (_, r) = stale
        .state(patient_grant(
            AN,
            CLINIC,
            &[Purpose::Treatment],
            in_days(30),
        ))
        .await
        .unwrap();
    assert_eq!(reason(&r), v1::RejectionReason::PatientKeyNotValid as i32);
    let e = stale.view(10, "").await.unwrap_err();
    assert!(
        matches!(e, hrx_node::client::ClientError::Rpc(s) if s.code() == tonic::Code::Unauthenticated)
    );
    let view = app.view(10, "").await.unwrap();
    let status = |v: &v1::PatientView| {
        v.keys
            .iter()
            .map(|k| (k.status, k.enrolled_by_facility_id.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        status(&view),
        vec![
            (v1::PatientKeyStatus::Replaced as i32, DISTRICT.to_owned()),
            (v1::PatientKeyStatus::Active as i32, String::new()),
        ]
    );
    assert_eq!(view.keys[0].key_id, first.to_string());

    // Lost phone: a new enrollment in person replaces every earlier key, and shows.
    let mut provincial = FacilityClient::open(env.path(), node.addr, &fac(PROVINCIAL))
        .await
        .unwrap();
    let lost = w.enroll(env.path(), &node, &mut provincial, AN).await;
    let e = app.view(10, "").await.unwrap_err();
    assert!(
        matches!(e, hrx_node::client::ClientError::Rpc(s) if s.code() == tonic::Code::Unauthenticated)
    );
    let view = lost.view(10, "").await.unwrap();
    assert_eq!(
        status(&view),
        vec![
            (v1::PatientKeyStatus::Replaced as i32, DISTRICT.to_owned()),
            (v1::PatientKeyStatus::Replaced as i32, String::new()),
            (v1::PatientKeyStatus::Active as i32, PROVINCIAL.to_owned()),
        ]
    );
    // The grant signed with the first key stays: it was the patient's when received.
    assert_eq!(view.grants.len(), 1);
    assert_eq!(view.grants[0].status, v1::GrantStatus::Active as i32);

    // The patient withdraws the key: until a new enrollment, they have none.
    let (_, r) = lost
        .state(v1::patient_statement::Body::KeyRevocation(
            v1::PatientKeyRevocation {
                reason: "điện thoại bị mất".into(),
            },
        ))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let e = lost.view(10, "").await.unwrap_err();
    assert!(
        matches!(e, hrx_node::client::ClientError::Rpc(s) if s.code() == tonic::Code::Unauthenticated)
    );
    node.stop().await;
}

async fn patient_signed_grants_are_verifiable_and_carried_by_app_or_facility(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    treat(&mut w, AN).await;
    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    let app = w.enroll(env.path(), &node, &mut district, AN).await;

    // From the app, on the patient port (no client certificate).
    let (grant_id, r) = app
        .state(patient_grant(
            AN,
            PROVINCIAL,
            &[Purpose::Referral],
            in_days(30),
        ))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");
    // Carried by a facility over its own mutually authenticated connection.
    let carried = PatientClient::new(pid(AN), app.key().clone(), w.clinic.channel());
    let (_, r) = carried
        .state(patient_grant(
            AN,
            CLINIC,
            &[Purpose::ChronicCare],
            in_days(30),
        ))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;

    let page = read(&w.provincial, AN, Purpose::Referral).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    let basis = page.entries[0].basis.clone().unwrap();
    assert_eq!(basis.source_event_id, grant_id.to_string());
    assert_eq!(basis.form, v1::ConsentForm::PatientSigned as i32);

    // The grant comes with its signed artefact, which anyone can verify: the
    // signature over its own bytes, by the key the patient enrolled in person.
    let grants = w
        .provincial
        .consent()
        .list_grants(v1::ListGrantsRequest {
            patient_id: AN.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(
        grants.len(),
        1,
        "only the grant that names the provincial hospital"
    );
    let artefact: hrx_domain::Envelope = grants[0].artefact.clone().unwrap().into();
    let statement = hrx_domain::patient::verify_statement(
        &artefact,
        Timestamp::now(),
        codec::decode_patient_statement,
    )
    .expect("the artefact verifies on its own");
    assert_eq!(statement.header.statement_id, grant_id);
    let view = app.view(1, "").await.unwrap();
    assert_eq!(view.keys[0].key_id, statement.key_id().to_string());
    assert_eq!(grants[0].form, v1::ConsentForm::PatientSigned as i32);
    assert!(grants[0].granted_by_facility_id.is_empty());

    // The patient revokes: reads end.
    let (_, r) = app.revoke(&grant_id.to_string()).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    assert_eq!(
        refused(
            read(&w.provincial, AN, Purpose::Referral)
                .await
                .unwrap_err()
        ),
        tonic::Code::PermissionDenied
    );
    // A grant the patient does not have cannot be revoked by them.
    let (_, r) = app.revoke(&EventId::new_v7().to_string()).await.unwrap();
    assert_eq!(reason(&r), v1::RejectionReason::NotGrantor as i32);
    node.stop().await;
}

async fn consent_requests_wait_for_the_patients_answer(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    treat(&mut w, AN).await;
    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    let app = w.enroll(env.path(), &node, &mut district, AN).await;
    let ask = |reason: &str| {
        v1::facility_event::Body::ConsentRequest(v1::ConsentRequest {
            patient_id: AN.into(),
            purposes: vec![Purpose::Referral.code()],
            kinds: vec![],
            data_from: None,
            data_until: None,
            duration: Some(prost_types::Duration {
                seconds: 7 * 86_400,
                nanos: 0,
            }),
            reason: reason.into(),
            include_sensitive: vec![],
        })
    };
    let (request, r) = w.provincial.emit(ask("chuyển tuyến")).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    // Asking gives no access.
    assert_eq!(
        refused(
            read(&w.provincial, AN, Purpose::Referral)
                .await
                .unwrap_err()
        ),
        tonic::Code::PermissionDenied
    );
    let requests_of = |f: &FacilityClient| {
        let mut c = f.consent();
        async move {
            c.list_consent_requests(v1::ListConsentRequestsRequest {
                patient_id: AN.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .requests
        }
    };
    let mine = requests_of(&w.provincial).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].status, v1::ConsentRequestStatus::Pending as i32);
    assert!(
        requests_of(&w.clinic).await.is_empty(),
        "another facility's request"
    );

    let view = app.view(1, "").await.unwrap();
    let pending = view
        .requests
        .iter()
        .find(|q| q.request_event_id == request.to_string())
        .unwrap()
        .clone();
    // An approval must name the requesting facility.
    let mut wrong = pending.clone();
    wrong.facility_id = CLINIC.into();
    let (_, r) = app.approve(&wrong).await.unwrap();
    assert_eq!(reason(&r), v1::RejectionReason::InvalidField as i32);
    assert_eq!(r.rejection.unwrap().field, "consent_grant.request_event_id");
    let (grant, r) = app.approve(&pending).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let page = read(&w.provincial, AN, Purpose::Referral).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    let mine = requests_of(&w.provincial).await;
    assert_eq!(mine[0].status, v1::ConsentRequestStatus::Approved as i32);
    assert_eq!(mine[0].grant_event_id, grant.to_string());

    // Declined requests stay declined; an answered request cannot be answered again.
    let (second, r) = w.provincial.emit(ask("tái khám")).await.unwrap();
    assert!(accepted(&r));
    settle(&w.nc).await;
    let (_, r) = app.decline(&second.to_string()).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let (_, r) = app.decline(&second.to_string()).await.unwrap();
    assert_eq!(
        r.rejection.unwrap().field,
        "consent_decline.request_event_id"
    );
    let statuses: Vec<i32> = requests_of(&w.provincial)
        .await
        .iter()
        .map(|q| q.status)
        .collect();
    assert!(statuses.contains(&(v1::ConsentRequestStatus::Declined as i32)));
    node.stop().await;
}

async fn attested_grants_are_bounded_shown_and_revoked_only_by_their_grantor(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    // No standing: the emergency hospital never treated An.
    let (_, r) = w
        .emergency
        .emit(grant(AN, EMERGENCY, &[Purpose::Treatment], in_days(30)))
        .await
        .unwrap();
    assert_eq!(reason(&r), v1::RejectionReason::NoStanding as i32);
    assert!(r.extends_chain);

    treat(&mut w, AN).await;
    let bounded = |g: v1::facility_event::Body, f: &dyn Fn(&mut v1::ConsentGrant)| {
        let v1::facility_event::Body::ConsentGrant(mut g) = g else {
            panic!("a grant")
        };
        f(&mut g);
        v1::facility_event::Body::ConsentGrant(g)
    };
    let base = || grant(AN, PROVINCIAL, &[Purpose::Referral], in_days(30));
    for out in [
        bounded(base(), &|g| {
            g.grantee = Some(v1::consent_grant::Grantee::AnyFacility(true))
        }),
        bounded(base(), &|g| {
            g.include_sensitive = vec![SensitivityLabel::Hiv.code()]
        }),
        bounded(base(), &|g| {
            g.expires_at = Some(codec::timestamp(in_days(91)))
        }),
        bounded(base(), &|g| {
            g.request_event_id = EventId::new_v7().to_string()
        }),
    ] {
        let (_, r) = w.district.emit(out).await.unwrap();
        assert_eq!(
            reason(&r),
            v1::RejectionReason::AttestedGrantOutOfBounds as i32
        );
    }
    let (grant_id, r) = w.district.emit(base()).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let page = read(&w.provincial, AN, Purpose::Referral).await.unwrap();
    assert_eq!(
        page.entries[0].basis.as_ref().unwrap().form,
        v1::ConsentForm::Attested as i32
    );
    // On the national monitor, and in the patient's own view.
    let attested = v1::monitor_service_client::MonitorServiceClient::new(w.nc.channel())
        .list_attested_grants(v1::ListAttestedGrantsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(attested.len(), 1);
    assert_eq!(
        (
            attested[0].grant_event_id.as_str(),
            attested[0].facility_id.as_str()
        ),
        (grant_id.to_string().as_str(), DISTRICT)
    );
    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    let app = w.enroll(env.path(), &node, &mut district, AN).await;
    let view = app.view(1, "").await.unwrap();
    assert_eq!(view.grants.len(), 1);
    assert_eq!(view.grants[0].form, v1::ConsentForm::Attested as i32);
    assert_eq!(view.grants[0].granted_by_facility_id, DISTRICT);

    // Another facility may not revoke it; the patient may.
    let revoke = v1::facility_event::Body::ConsentRevocation(v1::ConsentRevocation {
        patient_id: AN.into(),
        grant_event_id: grant_id.to_string(),
        evidence: None,
    });
    let (_, r) = w.provincial.emit(revoke).await.unwrap();
    assert_eq!(reason(&r), v1::RejectionReason::NotGrantor as i32);
    let (_, r) = app.revoke(&grant_id.to_string()).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let view = app.view(1, "").await.unwrap();
    assert_eq!(view.grants[0].status, v1::GrantStatus::Revoked as i32);
    assert_eq!(view.grants[0].revoked_by, "patient");
    let attested = v1::monitor_service_client::MonitorServiceClient::new(w.nc.channel())
        .list_attested_grants(v1::ListAttestedGrantsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert!(attested[0].revoked_at.is_some());
    node.stop().await;
}

fn declaration(patient: &str) -> v1::facility_event::Body {
    v1::facility_event::Body::BreakGlass(v1::BreakGlassDeclaration {
        patient_id: patient.into(),
        reason: "Bệnh nhân hôn mê".into(),
        clinician: "CCHN-009921".into(),
        duration: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
    })
}

async fn break_glass_is_limited_alerted_live_and_shown_to_the_patient(mut env: Env) {
    env.config.break_glass_per_day = 2;
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    treat(&mut w, AN).await;
    let mut monitor = v1::monitor_service_client::MonitorServiceClient::new(w.nc.channel());
    let mut alerts = monitor
        .watch_break_glass(v1::ListBreakGlassRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Only the national center may watch.
    let e = v1::monitor_service_client::MonitorServiceClient::new(w.emergency.channel())
        .watch_break_glass(v1::ListBreakGlassRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    let (first, r) = w.emergency.emit(declaration(AN)).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    let alert = tokio::time::timeout(Duration::from_secs(5), alerts.next())
        .await
        .expect("an alert within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            alert.event_id.as_str(),
            alert.facility_id.as_str(),
            alert.reason.as_str()
        ),
        (first.to_string().as_str(), EMERGENCY, "Bệnh nhân hôn mê")
    );
    // One open window per patient; two declarations a day (configured here).
    let (_, r) = w.emergency.emit(declaration(AN)).await.unwrap();
    assert_eq!(reason(&r), v1::RejectionReason::BreakGlassLimit as i32);
    let (_, r) = w.emergency.emit(declaration(BINH)).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    let (_, r) = w.emergency.emit(declaration("026070009876")).await.unwrap();
    assert_eq!(reason(&r), v1::RejectionReason::BreakGlassLimit as i32);
    settle(&w.nc).await;

    // Emergency reads only.
    assert_eq!(
        read(&w.emergency, AN, Purpose::Emergency)
            .await
            .unwrap()
            .entries
            .len(),
        1
    );
    assert_eq!(
        refused(
            read(&w.emergency, AN, Purpose::Treatment)
                .await
                .unwrap_err()
        ),
        tonic::Code::PermissionDenied
    );
    // Prometheus has it per facility.
    let mut conn = tokio::net::TcpStream::connect(node.metrics).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    assert!(
        text.contains(r#"hrx_break_glass_declarations_total{facility="26002"} 2"#),
        "{text}"
    );
    // The patient sees the declaration with its reason, and the read under it.
    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    let app = w.enroll(env.path(), &node, &mut district, AN).await;
    let view = app.view_all().await.unwrap();
    assert_eq!(view.break_glass.len(), 1);
    assert_eq!(view.break_glass[0].event_id, first.to_string());
    assert!(view.break_glass[0].reads >= 1);
    assert!(
        view.accesses
            .iter()
            .any(|a| a.action == v1::AccessAction::BreakGlass as i32)
    );
    node.stop().await;
}

async fn facilities_and_the_national_center_see_only_their_share(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    treat(&mut w, AN).await;
    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    let app = w.enroll(env.path(), &node, &mut district, AN).await;
    for (to, purpose) in [
        (PROVINCIAL, Purpose::Referral),
        (CLINIC, Purpose::ChronicCare),
    ] {
        let (_, r) = app
            .state(patient_grant(AN, to, &[purpose], in_days(30)))
            .await
            .unwrap();
        assert!(accepted(&r));
    }
    settle(&w.nc).await;
    read(&w.provincial, AN, Purpose::Referral).await.unwrap();
    read(&w.clinic, AN, Purpose::ChronicCare).await.unwrap();

    let grants = |ch| async move {
        v1::consent_service_client::ConsentServiceClient::new(ch)
            .list_grants(v1::ListGrantsRequest {
                patient_id: AN.into(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let provincial = grants(w.provincial.channel()).await;
    assert_eq!(provincial.grants.len(), 1);
    assert!(provincial.counts.is_none());
    let nc = grants(w.nc.channel()).await;
    assert!(nc.grants.is_empty(), "the national center sees counts only");
    assert_eq!(nc.counts.unwrap().active_patient_signed, 2);

    let accesses = |ch| async move {
        v1::consent_service_client::ConsentServiceClient::new(ch)
            .list_accesses(v1::ListAccessesRequest {
                patient_id: AN.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    };
    let own = accesses(w.provincial.channel()).await;
    assert!(!own.accesses.is_empty());
    assert!(
        own.accesses
            .iter()
            .all(|a| a.reader_facility_id == PROVINCIAL),
        "a facility sees its own accesses only"
    );
    let counted = accesses(w.nc.channel()).await;
    assert!(counted.accesses.is_empty());
    assert!(counted.counts.unwrap().allowed >= 2);
    let e = v1::consent_service_client::ConsentServiceClient::new(w.nc.channel())
        .list_consent_requests(v1::ListConsentRequestsRequest {
            patient_id: AN.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // Checking another facility's access is refused (and audited).
    let e = w
        .clinic
        .consent()
        .check_access(v1::CheckAccessRequest {
            patient_id: AN.into(),
            reader_facility_id: PROVINCIAL.into(),
            purpose: Purpose::Referral.code(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // Every look is in the patient's list, the refused one too, with who looked.
    let view = app.view_all().await.unwrap();
    let seen = |kind: v1::ReaderKind, action: v1::AccessAction, outcome: v1::AccessOutcome| {
        view.accesses.iter().any(|a| {
            a.reader_kind == kind as i32 && a.action == action as i32 && a.outcome == outcome as i32
        })
    };
    use v1::{AccessAction as A, AccessOutcome as O, ReaderKind as R};
    assert!(seen(R::Facility, A::ListGrants, O::Allowed));
    assert!(seen(R::NationalCenter, A::ListGrants, O::Allowed));
    assert!(seen(R::NationalCenter, A::ListAccesses, O::Allowed));
    assert!(seen(R::NationalCenter, A::ListConsentRequests, O::Denied));
    assert!(seen(R::Facility, A::CheckAccess, O::Denied));
    for pair in view.accesses.windows(2) {
        assert!(pair[0].audit_seq < pair[1].audit_seq);
    }
    node.stop().await;
}

async fn no_basis_means_no_answer_and_withheld_never_follows_the_filters(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let mut ids = Vec::new();
    for (kind, at, labels) in [
        (RecordKind::Encounter, "2026-01-05T00:00:00Z", &[][..]),
        (RecordKind::Condition, "2026-03-05T00:00:00Z", &[][..]),
        (RecordKind::Observation, "2026-06-05T00:00:00Z", &[][..]),
        (
            RecordKind::Observation,
            "2026-09-05T00:00:00Z",
            &[SensitivityLabel::Hiv][..],
        ),
    ] {
        let (id, r) = w
            .district
            .emit(record(AN, kind, ts(at), labels))
            .await
            .unwrap();
        assert!(accepted(&r));
        ids.push(id);
    }
    settle(&w.nc).await;
    // The clinic has no basis: refused, for every call, whether the record exists or not.
    assert_eq!(
        refused(read(&w.clinic, AN, Purpose::Treatment).await.unwrap_err()),
        tonic::Code::PermissionDenied
    );
    for id in [ids[0], EventId::new_v7()] {
        let e = w
            .clinic
            .timeline()
            .get_record(v1::GetRecordRequest {
                patient_id: AN.into(),
                event_id: id.to_string(),
                purpose: Purpose::Treatment.code(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::PermissionDenied,
            "existence is not revealed"
        );
    }
    let e = w
        .clinic
        .timeline()
        .follow(v1::FollowRequest {
            patient_id: AN.into(),
            purpose: Purpose::Treatment.code(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // With a grant for observations only: the withheld count covers the whole timeline
    // and is the same whatever the filters.
    let mut only_obs = grant(AN, PROVINCIAL, &[Purpose::Referral], in_days(30));
    if let v1::facility_event::Body::ConsentGrant(g) = &mut only_obs {
        g.kinds = vec![RecordKind::Observation.code()];
    }
    let (_, r) = w.district.emit(only_obs).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let mut counts = Vec::new();
    for req in [
        v1::GetTimelineRequest::default(),
        v1::GetTimelineRequest {
            kinds: vec![RecordKind::Condition.code()],
            ..Default::default()
        },
        v1::GetTimelineRequest {
            facility_ids: vec![CLINIC.into()],
            ..Default::default()
        },
        v1::GetTimelineRequest {
            occurred_from: Some(codec::timestamp(ts("2026-02-01T00:00:00Z"))),
            occurred_until: Some(codec::timestamp(ts("2026-04-01T00:00:00Z"))),
            ..Default::default()
        },
        v1::GetTimelineRequest {
            page_size: 1,
            ..Default::default()
        },
    ] {
        let page = w
            .provincial
            .timeline()
            .get_timeline(v1::GetTimelineRequest {
                patient_id: AN.into(),
                purpose: Purpose::Referral.code(),
                ..req
            })
            .await
            .unwrap()
            .into_inner();
        counts.push(page.withheld_count);
    }
    assert_eq!(
        counts,
        vec![3; 5],
        "encounter, condition and the HIV record"
    );
    node.stop().await;
}

async fn patient_views_are_signed_single_use_and_the_patient_port_serves_nothing_else(env: Env) {
    let node = TestNode::start(&env).await;
    let w = World::register(env.path(), &node).await;
    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    let app = w.enroll(env.path(), &node, &mut district, AN).await;
    let unauthenticated = |e: hrx_node::client::ClientError| matches!(e, hrx_node::client::ClientError::Rpc(s) if s.code() == tonic::Code::Unauthenticated);
    // A request is used once.
    let request = app.view_request(10, "");
    app.send_view_request(request.clone()).await.unwrap();
    assert!(unauthenticated(
        app.send_view_request(request).await.unwrap_err()
    ));
    // Stale, or signed by a key that is not the patient's, or for another patient.
    let signed = |key: &SigningKey, patient: &str, at: Timestamp| {
        let r = v1::PatientRequest {
            request_id: EventId::new_v7().to_string(),
            patient_id: patient.into(),
            public_key: key.public_key().as_bytes().to_vec(),
            issued_at: Some(codec::timestamp(at)),
            query: Some(v1::patient_request::Query::View(
                v1::PatientViewQuery::default(),
            )),
        };
        v1::SignedEnvelope::from(key.sign(PayloadType::PatientRequest, r.encode_to_vec()))
    };
    let ten_minutes_ago = Timestamp::from_unix_seconds(Timestamp::now().seconds() - 600).unwrap();
    for request in [
        signed(app.key(), AN, ten_minutes_ago),
        signed(&new_key(), AN, Timestamp::now()),
        signed(app.key(), BINH, Timestamp::now()),
    ] {
        assert!(unauthenticated(
            app.send_view_request(request).await.unwrap_err()
        ));
    }
    // The patient port serves the patient service only.
    let e = v1::timeline_service_client::TimelineServiceClient::new(
        patient_port(env.path(), &node).await,
    )
    .get_timeline(v1::GetTimelineRequest {
        patient_id: AN.into(),
        purpose: 1,
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    // Each view is audited as the patient's.
    let views = app
        .view_all()
        .await
        .unwrap()
        .accesses
        .iter()
        .filter(|a| a.action == v1::AccessAction::PatientView as i32)
        .count();
    // The first view (this one is audited once it has been read); refused requests were
    // not the patient's.
    assert_eq!(views, 1);
    node.stop().await;
}

async fn every_follow_delivery_and_refusal_is_audited(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    for _ in 0..3 {
        treat(&mut w, AN).await;
    }
    let (_, r) = w
        .district
        .emit(grant(AN, CLINIC, &[Purpose::ChronicCare], in_days(30)))
        .await
        .unwrap();
    assert!(accepted(&r));
    settle(&w.nc).await;
    let clinic = w.clinic.timeline();
    let follow = |cursor: &str| {
        let mut t = clinic.clone();
        let cursor = cursor.to_owned();
        async move {
            t.follow(v1::FollowRequest {
                patient_id: AN.into(),
                purpose: Purpose::ChronicCare.code(),
                cursor,
                kinds: vec![],
            })
            .await
        }
    };
    let mut stream = follow("").await.unwrap().into_inner();
    let mut got = 0;
    let mut cursor = String::new();
    while got < 3 {
        let item = stream.next().await.unwrap().unwrap();
        if matches!(item.item, Some(v1::follow_response::Item::Entry(_))) {
            got += 1;
            cursor = item.cursor;
        }
    }
    treat(&mut w, AN).await;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if matches!(item.item, Some(v1::follow_response::Item::Entry(_))) {
            break;
        }
    }
    // A cursor this patient never had is this follower's error alone.
    let bad = hrx_timeline::cursor::encode_follow(u64::MAX);
    assert_eq!(
        follow(&bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let mut resumed = follow(&cursor).await.unwrap().into_inner();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), resumed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if matches!(item.item, Some(v1::follow_response::Item::Entry(_))) {
            break;
        }
    }
    drop((stream, resumed));
    // A refused follow.
    let e = w
        .provincial
        .timeline()
        .follow(v1::FollowRequest {
            patient_id: AN.into(),
            purpose: Purpose::ChronicCare.code(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    let app = w.enroll(env.path(), &node, &mut district, AN).await;
    let accesses = app.view_all().await.unwrap().accesses;
    let delivered: u64 = accesses
        .iter()
        .filter(|a| {
            a.action == v1::AccessAction::FollowDelivery as i32 && a.reader_facility_id == CLINIC
        })
        .map(|a| a.records_returned)
        .sum();
    assert_eq!(
        delivered,
        3 + 1 + 1,
        "backlog, live, and the resumed stream's one record"
    );
    assert!(
        accesses
            .iter()
            .any(|a| a.action == v1::AccessAction::Follow as i32
                && a.reader_facility_id == PROVINCIAL
                && a.outcome == v1::AccessOutcome::Denied as i32)
    );
    node.stop().await;
}

/// The patient's consent state as the view shows it, without the parts that move on
/// their own (the access list, which every view grows).
fn consent_state(v: &v1::PatientView) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}",
        v.keys,
        v.grants,
        v.requests,
        v.break_glass
            .iter()
            .map(|b| (&b.event_id, &b.facility_id, &b.reason))
            .collect::<Vec<_>>()
    )
}

async fn a_replay_of_the_log_rebuilds_the_same_consent_state(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    treat(&mut w, AN).await;
    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    let mut app = w.enroll(env.path(), &node, &mut district, AN).await;
    let (attested, r) = district
        .emit(grant(AN, CLINIC, &[Purpose::ChronicCare], in_days(30)))
        .await
        .unwrap();
    assert!(accepted(&r));
    let (request, r) = w
        .provincial
        .emit(v1::facility_event::Body::ConsentRequest(
            v1::ConsentRequest {
                patient_id: AN.into(),
                purposes: vec![Purpose::Referral.code()],
                duration: Some(prost_types::Duration {
                    seconds: 86_400,
                    nanos: 0,
                }),
                reason: "chuyển tuyến".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert!(accepted(&r));
    settle(&w.nc).await;
    let view = app.view(1, "").await.unwrap();
    let pending = view
        .requests
        .iter()
        .find(|q| q.request_event_id == request.to_string())
        .unwrap()
        .clone();
    let (_, r) = app.approve(&pending).await.unwrap();
    assert!(accepted(&r));
    let r = app.rotate(new_key()).await.unwrap();
    assert!(accepted(&r));
    let (_, r) = app.revoke(&attested.to_string()).await.unwrap();
    assert!(accepted(&r));
    let (_, r) = w.emergency.emit(declaration(AN)).await.unwrap();
    assert!(accepted(&r));
    // A statement refused at the door goes into the log too (the patients' ingest
    // report chain), so the replay rebuilds the monitor's record of it.
    let forger = PatientClient::new(pid(AN), new_key(), patient_port(env.path(), &node).await);
    let (_, r) = forger
        .state(patient_grant(
            AN,
            CLINIC,
            &[Purpose::Treatment],
            in_days(30),
        ))
        .await
        .unwrap();
    assert_eq!(reason(&r), v1::RejectionReason::PatientKeyNotValid as i32);
    settle(&w.nc).await;
    let backends = hrx_node::backends(&env.config).await.unwrap();
    let refused_before = statement_refusals(&*backends.store).await;
    assert_eq!(refused_before.len(), 1, "{refused_before:?}");
    assert!(refused_before[0].position.is_some(), "in the log");
    let before = consent_state(&app.view(1, "").await.unwrap());
    let provincial_before = read_all(&w.provincial, AN, Purpose::Referral, 10).await;
    drop(w);
    node.stop().await;

    let n = hrx_node::reproject(&env.config).await.unwrap();
    // Every facility event and statement (registry events are projected on the way
    // and not counted on the distributed log).
    assert!(n >= 8, "replayed {n} entries");
    let node = TestNode::start(&env).await;
    let nc = hrx_node::client::NationalCenter::open(env.path(), node.addr)
        .await
        .unwrap();
    settle(&nc).await;
    let app = PatientClient::new(
        pid(AN),
        app.key().clone(),
        patient_port(env.path(), &node).await,
    );
    let after = consent_state(&app.view(1, "").await.unwrap());
    assert_eq!(before, after, "the replay rebuilds the same consent state");
    assert_eq!(statement_refusals(&*backends.store).await, refused_before);
    let provincial = FacilityClient::open(env.path(), node.addr, &fac(PROVINCIAL))
        .await
        .unwrap();
    assert_eq!(
        read_all(&provincial, AN, Purpose::Referral, 10).await,
        provincial_before
    );
    drop((nc, provincial));
    node.stop().await;
}

/// Refused patient statements, as the monitor lists them.
async fn statement_refusals(store: &dyn hrx_ports::Store) -> Vec<hrx_ports::RejectionRow> {
    let mut rows = store.rejections(None, 1000).await.unwrap();
    rows.retain(|r| r.facility_id.is_none() && r.reason == hrx_domain::Reason::PatientKeyNotValid);
    rows
}

both_backends!(
    patient_keys_are_enrolled_in_person_rotated_and_revoked_by_the_patient,
    patient_signed_grants_are_verifiable_and_carried_by_app_or_facility,
    consent_requests_wait_for_the_patients_answer,
    attested_grants_are_bounded_shown_and_revoked_only_by_their_grantor,
    break_glass_is_limited_alerted_live_and_shown_to_the_patient,
    facilities_and_the_national_center_see_only_their_share,
    no_basis_means_no_answer_and_withheld_never_follows_the_filters,
    patient_views_are_signed_single_use_and_the_patient_port_serves_nothing_else,
    every_follow_delivery_and_refusal_is_audited,
    a_replay_of_the_log_rebuilds_the_same_consent_state,
);
