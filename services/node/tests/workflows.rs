//! The workflows of BRIEF section 2, end to end: a real node on port 0, real gRPC
//! clients over mutual TLS, facilities registered through the registry.

mod support;

use std::time::Duration;

use hrx_domain::{Purpose, RecordKind, SensitivityLabel, Timestamp};
use hrx_node::client::FacilityClient;
use hrx_proto::v1;
use support::*;
use tokio_stream::StreamExt;

async fn referral_read_needs_consent_and_says_what_was_withheld(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;

    // The district hospital records three things about An, one of them HIV-labelled.
    let t = ts("2026-10-01T02:00:00Z");
    let (enc, r) = w
        .district
        .emit(record(AN, RecordKind::Encounter, t, &[]))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");
    let (cond, r) = w
        .district
        .emit(record(
            AN,
            RecordKind::Condition,
            ts("2026-10-02T02:00:00Z"),
            &[],
        ))
        .await
        .unwrap();
    assert!(accepted(&r));
    let (_hiv, r) = w
        .district
        .emit(record(
            AN,
            RecordKind::Observation,
            ts("2026-10-03T02:00:00Z"),
            &[SensitivityLabel::Hiv],
        ))
        .await
        .unwrap();
    assert!(accepted(&r));
    settle(&w.nc).await;

    // Without consent, the provincial hospital has no basis at all: refused, and told
    // nothing (not even how many records exist).
    let refused = w
        .provincial
        .timeline()
        .get_timeline(v1::GetTimelineRequest {
            patient_id: AN.into(),
            purpose: Purpose::Referral.code(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        !refused.message().contains('3'),
        "no counts: {}",
        refused.message()
    );
    // The author always reads its own.
    let (own, withheld) = read_all(&w.district, AN, Purpose::Treatment, 50).await;
    assert_eq!((own.len(), withheld), (3, 0));
    assert!(
        own.iter()
            .all(|e| e.basis.as_ref().unwrap().basis == v1::AccessBasis::Author as i32)
    );

    // The patient consents (recorded by the district hospital) to referral reads.
    let expires = Timestamp::now()
        .checked_add(hrx_domain::Duration::from_secs(86_400).unwrap())
        .unwrap();
    let (grant_id, r) = w
        .district
        .emit(grant(AN, PROVINCIAL, &[Purpose::Referral], expires))
        .await
        .unwrap();
    assert!(accepted(&r));
    settle(&w.nc).await;
    let (entries, withheld) = read_all(&w.provincial, AN, Purpose::Referral, 50).await;
    // The HIV-labelled record stays withheld: the grant does not name HIV.
    assert_eq!((entries.len(), withheld), (2, 1));
    assert_eq!(entries[0].event_id, cond.to_string(), "newest first");
    assert_eq!(entries[1].event_id, enc.to_string());
    for e in &entries {
        let b = e.basis.as_ref().unwrap();
        assert_eq!(
            (b.basis, b.source_event_id.as_str()),
            (
                v1::AccessBasis::Consent as i32,
                grant_id.to_string().as_str()
            )
        );
    }
    // Another purpose is not covered: no basis for it.
    let other = w
        .provincial
        .timeline()
        .get_timeline(v1::GetTimelineRequest {
            patient_id: AN.into(),
            purpose: Purpose::ChronicCare.code(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied);

    // GetRecord returns the original envelope; the reader verifies it itself.
    let got = w
        .provincial
        .timeline()
        .get_record(v1::GetRecordRequest {
            patient_id: AN.into(),
            event_id: enc.to_string(),
            purpose: Purpose::Referral.code(),
        })
        .await
        .unwrap()
        .into_inner();
    let envelope: hrx_domain::Envelope = got.envelope.unwrap().into();
    let facility = v1::registry_service_client::RegistryServiceClient::new(w.provincial.channel())
        .get_facility(v1::GetFacilityRequest {
            facility_id: DISTRICT.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let key = hrx_domain::PublicKey::from_slice(&facility.keys[0].public_key).unwrap();
    key.verify(&envelope)
        .expect("the hospital's signature verifies");

    // The patient's access list shows who read, why and on what basis — the refused
    // reads too.
    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    let app = w.enroll(env.path(), &node, &mut district, AN).await;
    let accesses = app.view_all().await.unwrap().accesses;
    let provincial_reads: Vec<_> = accesses
        .iter()
        .filter(|a| a.reader_facility_id == PROVINCIAL)
        .collect();
    assert_eq!(
        provincial_reads
            .iter()
            .filter(|a| a.outcome == v1::AccessOutcome::Denied as i32)
            .count(),
        2,
        "both refused reads are audited"
    );
    assert!(provincial_reads.len() >= 4);
    assert!(
        provincial_reads
            .iter()
            .any(|a| a.action == v1::AccessAction::GetRecord as i32 && a.records_returned == 1)
    );
    for pair in accesses.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].entry_hash, "audit entries chain");
    }
    node.stop().await;
}

async fn paging_is_stable_while_records_arrive(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    // 120 records, several sharing an occurred_at (ties broken by event id).
    let mut envelopes = Vec::new();
    for i in 0..120i64 {
        let at = Timestamp::from_unix_seconds(1_790_000_000 + (i / 3) * 60).unwrap();
        envelopes.push(
            w.district
                .sign(record(AN, RecordKind::Observation, at, &[]))
                .1,
        );
    }
    let results = w.district.submit(envelopes).await.unwrap();
    assert!(results.iter().all(accepted));
    settle(&w.nc).await;

    let mut seen = std::collections::HashSet::new();
    let mut cursor = String::new();
    let mut pages = 0;
    let mut last_key = None;
    loop {
        let page = w
            .district
            .timeline()
            .get_timeline(v1::GetTimelineRequest {
                patient_id: AN.into(),
                purpose: Purpose::Treatment.code(),
                page_size: 50,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        for e in &page.entries {
            assert!(seen.insert(e.event_id.clone()), "duplicate across pages");
            let at = e.occurred_at.unwrap();
            let key = (at.seconds, at.nanos, e.event_id.clone());
            if let Some(prev) = &last_key {
                assert!(&key < prev, "newest first, ties by event id descending");
            }
            last_key = Some(key);
        }
        // New records arrive between pages, both newer and older than the cursor.
        let newer = record(AN, RecordKind::Observation, ts("2027-01-01T00:00:00Z"), &[]);
        let older = record(AN, RecordKind::Observation, ts("2020-01-01T00:00:00Z"), &[]);
        let (_, r1) = w.district.emit(newer).await.unwrap();
        let (_, r2) = w.district.emit(older).await.unwrap();
        assert!(accepted(&r1) && accepted(&r2));
        settle(&w.nc).await;
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    // Every one of the original 120 was seen exactly once; newer arrivals never show
    // up behind the cursor, older ones do (they sort after it).
    assert!(pages >= 3);
    assert!(seen.len() >= 120);
    node.stop().await;
}

/// The next record of a follow stream (skipping heartbeats), and its cursor.
async fn next_entry(s: &mut tonic::Streaming<v1::FollowResponse>) -> (v1::TimelineEntry, String) {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("stream item within 5 s");
        let msg = item.expect("stream open").expect("no error");
        if let Some(v1::follow_response::Item::Entry(e)) = msg.item {
            return (e, msg.cursor);
        }
    }
}

async fn chronic_care_follow_gets_backlog_then_live_then_ends_on_revocation(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let expires = Timestamp::now()
        .checked_add(hrx_domain::Duration::from_secs(86_400).unwrap())
        .unwrap();
    // The district hospital treats An (its standing to attest a paper-form grant).
    let (first, r) = w
        .district
        .emit(record(
            AN,
            RecordKind::Observation,
            ts("2026-11-01T02:00:00Z"),
            &[],
        ))
        .await
        .unwrap();
    assert!(accepted(&r));
    let (grant_id, r) = w
        .district
        .emit(grant(AN, CLINIC, &[Purpose::ChronicCare], expires))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;

    let follow = |cursor: String| {
        let mut t = w.clinic.timeline();
        async move {
            t.follow(v1::FollowRequest {
                patient_id: AN.into(),
                purpose: Purpose::ChronicCare.code(),
                cursor,
                kinds: vec![],
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let mut stream = follow(String::new()).await;
    let (e, cursor1) = next_entry(&mut stream).await;
    assert_eq!(e.event_id, first.to_string(), "backlog first");

    // A new HbA1c result arrives live.
    let started = std::time::Instant::now();
    let (second, r) = w
        .district
        .emit(record(
            AN,
            RecordKind::Observation,
            ts("2026-11-20T02:00:00Z"),
            &[],
        ))
        .await
        .unwrap();
    assert!(accepted(&r));
    let (e, _) = next_entry(&mut stream).await;
    assert_eq!(e.event_id, second.to_string());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "live delivery took {:?}",
        started.elapsed()
    );

    // Heartbeats flow while idle.
    let beat = tokio::time::timeout(Duration::from_secs(3), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        beat.item,
        Some(v1::follow_response::Item::Heartbeat(_))
    ));
    drop(stream);

    // Resuming from the first cursor: the second record, once; nothing before it.
    let mut resumed = follow(cursor1).await;
    let (e, _) = next_entry(&mut resumed).await;
    assert_eq!(e.event_id, second.to_string());

    // Revocation ends the stream with PERMISSION_DENIED within a second of projection.
    let revoke = v1::facility_event::Body::ConsentRevocation(v1::ConsentRevocation {
        patient_id: AN.into(),
        grant_event_id: grant_id.to_string(),
        evidence: None,
    });
    let (_, r) = w.district.emit(revoke).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let revoked_at = std::time::Instant::now();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(3), resumed.next())
            .await
            .expect("the stream ends")
        {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("stream closed without a status"),
        }
    };
    assert_eq!(end.code(), tonic::Code::PermissionDenied);
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    // And a new follow is refused.
    let refused = w
        .clinic
        .timeline()
        .follow(v1::FollowRequest {
            patient_id: AN.into(),
            purpose: Purpose::ChronicCare.code(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    node.stop().await;
}

async fn break_glass_opens_everything_for_a_bounded_time_and_is_reported(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let (_, r) = w
        .district
        .emit(record(
            BINH,
            RecordKind::Allergy,
            ts("2025-05-05T00:00:00Z"),
            &[SensitivityLabel::MentalHealth],
        ))
        .await
        .unwrap();
    assert!(accepted(&r));
    settle(&w.nc).await;
    let refused = w
        .emergency
        .timeline()
        .get_timeline(v1::GetTimelineRequest {
            patient_id: BINH.into(),
            purpose: Purpose::Emergency.code(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::PermissionDenied,
        "no basis before break-glass"
    );

    let glass = v1::facility_event::Body::BreakGlass(v1::BreakGlassDeclaration {
        patient_id: BINH.into(),
        reason: "Bệnh nhân hôn mê, không thể lấy đồng ý".into(),
        clinician: "CCHN-009921".into(),
        duration: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
    });
    let (glass_id, r) = w.emergency.emit(glass).await.unwrap();
    assert!(accepted(&r));
    settle(&w.nc).await;
    let (entries, withheld) = read_all(&w.emergency, BINH, Purpose::Emergency, 50).await;
    assert_eq!((entries.len(), withheld), (1, 0));
    let b = entries[0].basis.as_ref().unwrap();
    assert_eq!(
        (b.basis, b.source_event_id.clone()),
        (v1::AccessBasis::BreakGlass as i32, glass_id.to_string())
    );

    // Over 24 hours is refused as content (it still extends the chain).
    let long = v1::facility_event::Body::BreakGlass(v1::BreakGlassDeclaration {
        patient_id: BINH.into(),
        reason: "x".into(),
        clinician: "CCHN-009921".into(),
        duration: Some(prost_types::Duration {
            seconds: 25 * 3600,
            nanos: 0,
        }),
    });
    let (_, r) = w.emergency.emit(long).await.unwrap();
    assert_eq!(r.status, v1::SubmitStatus::Rejected as i32);
    assert!(r.extends_chain);
    assert_eq!(r.rejection.unwrap().field, "break_glass.duration");

    // The national center sees the use and the read under it.
    let uses = v1::monitor_service_client::MonitorServiceClient::new(w.nc.channel())
        .list_break_glass(v1::ListBreakGlassRequest::default())
        .await
        .unwrap()
        .into_inner()
        .uses;
    assert_eq!(uses.len(), 1);
    assert_eq!(uses[0].event_id, glass_id.to_string());
    assert!(uses[0].reads >= 1);
    // Break-glass releases records for the emergency purpose only.
    let treatment = w
        .emergency
        .timeline()
        .get_timeline(v1::GetTimelineRequest {
            patient_id: BINH.into(),
            purpose: Purpose::Treatment.code(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(treatment.code(), tonic::Code::PermissionDenied);
    // And the patient's own view has the declaration, with its reason.
    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    let view = w
        .enroll(env.path(), &node, &mut district, BINH)
        .await
        .view_all()
        .await
        .unwrap();
    assert_eq!(view.break_glass.len(), 1);
    assert_eq!(
        view.break_glass[0].reason,
        "Bệnh nhân hôn mê, không thể lấy đồng ý"
    );
    let accesses = view.accesses;
    assert!(
        accesses
            .iter()
            .any(|a| a.action == v1::AccessAction::BreakGlass as i32
                && a.reader_facility_id == EMERGENCY)
    );
    node.stop().await;
}

both_backends!(
    referral_read_needs_consent_and_says_what_was_withheld,
    paging_is_stable_while_records_arrive,
    chronic_care_follow_gets_backlog_then_live_then_ends_on_revocation,
    break_glass_opens_everything_for_a_bounded_time_and_is_reported
);
