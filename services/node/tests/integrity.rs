//! Integrity: what ingest accepts is what every replay shows, on both backends.
//! Registry changes reach every ingest before its next decision; keys are judged at the
//! exchange's receive time; recorded_at is bounded by it and cannot go backwards; a
//! record corrects only its own facility's; an event id is one facility's alone;
//! registry operations on unknown keys or
//! facilities are refused; client numbers are range-checked before anything is
//! written; and a replay after revocations and rotations in mid-stream, with several
//! projector replicas, gives identical projections.

mod support;

use hrx_domain::{Duration, FacilityLevel, Purpose, Reason, RecordKind, Timestamp};
use hrx_node::client::FacilityClient;
use hrx_node::{Node, Role};
use hrx_ports::{FacilityStats, RejectionRow, Store, TimelineQuery};
use hrx_proto::{codec, v1};
use support::*;

fn reason(r: &v1::SubmitResult) -> i32 {
    assert_eq!(r.status, v1::SubmitStatus::Rejected as i32, "{r:?}");
    r.rejection.as_ref().unwrap().reason
}

fn obs(patient: &str) -> v1::facility_event::Body {
    record(
        patient,
        RecordKind::Observation,
        ts("2026-11-01T00:00:00Z"),
        &[],
    )
}

fn secs(n: i64) -> Duration {
    Duration::from_secs(n).unwrap()
}

/// An ingest-only node on the same backends: another ingest replica, with its own
/// keyring (in its own process in production; a process of its own here changes
/// nothing, since nodes share no memory).
async fn ingest_replica(env: &Env) -> TestNode {
    let mut config = env.config.clone();
    config.roles = Role::Ingest.name().into();
    let node = Node::build(config).await.expect("an ingest replica builds");
    TestNode::from_node(node)
}

async fn a_revoked_key_is_refused_at_ingest_at_once_and_back_dating_does_not_help(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let (_, r) = w.district.emit(obs(AN)).await.unwrap();
    assert!(accepted(&r));
    // A second ingest (distributed: another replica), already holding the key.
    let replica = if env.config.backend == hrx_node::Backend::Distributed {
        Some(ingest_replica(&env).await)
    } else {
        None
    };
    let other_addr = replica.as_ref().map_or(node.addr, |r| r.addr);
    let tls = hrx_identity::TlsDir::open_or_init(env.path()).unwrap();
    let channel = hrx_node::client::connect(
        other_addr,
        tls.ca_cert_pem(),
        &tls.facility(&fac(DISTRICT)).unwrap(),
    )
    .await
    .unwrap();
    let old_key = hrx_node::keys::read_private_key(&hrx_node::client::facility_key_path(
        env.path(),
        &fac(DISTRICT),
    ))
    .unwrap();
    let mut stolen = FacilityClient::with(fac(DISTRICT), old_key.clone(), channel);
    stolen.sync_head().await.unwrap();
    let (_, r) = stolen.emit(obs(AN)).await.unwrap();
    assert!(accepted(&r), "the replica knows the key: {r:?}");

    // The national center revokes it; the very next submission, to either replica, is
    // refused at ingest — never accepted and dropped later.
    let before = Timestamp::now();
    w.nc.revoke_key(&old_key.key_id(), Timestamp::now(), "stolen laptop")
        .await
        .unwrap();
    let (_, r) = stolen.emit(obs(AN)).await.unwrap();
    assert_eq!(reason(&r), v1::RejectionReason::KeyRevoked as i32);
    stolen.sync_head().await.unwrap();
    // Claiming a recorded_at from before the revocation does not help: the exchange
    // judges the key at the time it receives the event.
    let (_, envelope) = stolen.sign_at(obs(AN), before.checked_sub(secs(60)).unwrap());
    let r = stolen.submit(vec![envelope]).await.unwrap().remove(0);
    assert_eq!(reason(&r), v1::RejectionReason::KeyRevoked as i32);
    // The facility's chain is not stuck: with a new key it goes on.
    let new_key = w.nc.add_key(&fac(DISTRICT)).await.unwrap();
    let mut district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
        .await
        .unwrap();
    assert_eq!(district.head().0, 2);
    let (_, r) = district.emit(obs(AN)).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let (entries, _) = read_all(&district, AN, Purpose::Treatment, 50).await;
    assert_eq!(
        entries.len(),
        3,
        "everything accepted is visible, nothing else"
    );
    let _ = new_key;
    if let Some(r) = replica {
        r.stop().await;
    }
    node.stop().await;
}

async fn recorded_at_is_bounded_by_the_receive_time_and_never_goes_back(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let now = Timestamp::now();
    for (recorded, expected) in [
        (
            now.checked_add(secs(3600)).unwrap(),
            v1::RejectionReason::RecordedAtOutOfRange,
        ),
        (
            now.checked_sub(secs(30 * 86_400)).unwrap(),
            v1::RejectionReason::RecordedAtOutOfRange,
        ),
    ] {
        let (_, envelope) = w.district.sign_at(obs(AN), recorded);
        let r = w.district.submit(vec![envelope]).await.unwrap().remove(0);
        assert_eq!(reason(&r), expected as i32);
        assert!(
            !r.extends_chain,
            "the facility resends this seq with a sane time"
        );
        w.district.sync_head().await.unwrap();
    }
    // A day late is within the bounds; then going back in time is refused.
    let late = now.checked_sub(secs(86_400)).unwrap();
    let (_, envelope) = w.district.sign_at(obs(AN), late);
    assert!(accepted(
        &w.district.submit(vec![envelope]).await.unwrap()[0]
    ));
    let (_, envelope) = w
        .district
        .sign_at(obs(AN), late.checked_sub(secs(1)).unwrap());
    let r = w.district.submit(vec![envelope]).await.unwrap().remove(0);
    assert_eq!(reason(&r), v1::RejectionReason::RecordedAtDecreasing as i32);
    w.district.sync_head().await.unwrap();
    // The same time again is fine, and so is now.
    let (_, envelope) = w.district.sign_at(obs(AN), late);
    assert!(accepted(
        &w.district.submit(vec![envelope]).await.unwrap()[0]
    ));
    let (_, r) = w.district.emit(obs(AN)).await.unwrap();
    assert!(accepted(&r));
    // "Last seen" is the exchange's time, not a facility's claim.
    settle(&w.nc).await;
    let stats = v1::monitor_service_client::MonitorServiceClient::new(w.nc.channel())
        .list_facility_stats(v1::ListFacilityStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .facilities;
    let district = stats.iter().find(|s| s.facility_id == DISTRICT).unwrap();
    let seen = district.last_seen.unwrap();
    assert!(
        seen.seconds >= now.seconds() - 5,
        "last seen is the receive time"
    );
    node.stop().await;
}

async fn a_record_corrects_only_its_own_facilitys_records(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let (theirs, r) = w.district.emit(obs(AN)).await.unwrap();
    assert!(accepted(&r));
    let (ours, r) = w.provincial.emit(obs(AN)).await.unwrap();
    assert!(accepted(&r));
    let correcting = |target: &hrx_domain::EventId| {
        let mut body = obs(AN);
        if let v1::facility_event::Body::Record(rec) = &mut body {
            rec.supersedes = target.to_string();
        }
        body
    };
    let (_, r) = w.provincial.emit(correcting(&theirs)).await.unwrap();
    assert_eq!(
        reason(&r),
        v1::RejectionReason::SupersedesForeignRecord as i32
    );
    assert!(r.extends_chain);
    let (_, r) = w
        .provincial
        .emit(correcting(&hrx_domain::EventId::new_v7()))
        .await
        .unwrap();
    assert_eq!(
        reason(&r),
        v1::RejectionReason::SupersedesForeignRecord as i32
    );
    let (fixed, r) = w.provincial.emit(correcting(&ours)).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let (own, _) = read_all(&w.provincial, AN, Purpose::Treatment, 50).await;
    let old = own.iter().find(|e| e.event_id == ours.to_string()).unwrap();
    assert_eq!(old.superseded_by, fixed.to_string());
    let (district, _) = read_all(&w.district, AN, Purpose::Treatment, 50).await;
    assert!(
        district.iter().all(|e| e.superseded_by.is_empty()),
        "untouched"
    );
    node.stop().await;
}

/// Event ids are unique across the exchange: an event reusing another facility's id is
/// refused at ingest (not appended, its chain not extended), never answered "accepted"
/// and then rejected by the projector; the facility's next event with a fresh id at the
/// same seq goes through. Within one batch, what follows the refused event is a gap.
async fn an_event_id_of_another_facility_is_refused_at_ingest(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let (theirs, r) = w.district.emit(obs(AN)).await.unwrap();
    assert!(accepted(&r));
    let (seq, prev) = w.provincial.head();
    let (_, reused) = w.provincial.sign_with_id(theirs, obs(AN));
    let (_, after) = w.provincial.sign(obs(AN));
    let answers = w.provincial.submit(vec![reused, after]).await.unwrap();
    assert_eq!(
        reason(&answers[0]),
        v1::RejectionReason::InvalidField as i32
    );
    let rejection = answers[0].rejection.as_ref().unwrap();
    assert_eq!(rejection.field, "header.event_id");
    assert!(!answers[0].extends_chain, "refused, not appended");
    assert_eq!(reason(&answers[1]), v1::RejectionReason::SequenceGap as i32);

    // The chain did not move; the same seq with a fresh id is accepted.
    w.provincial.sync_head().await.unwrap();
    assert_eq!(w.provincial.head(), (seq, prev));
    let (fresh, r) = w.provincial.emit(obs(AN)).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;
    let (own, _) = read_all(&w.provincial, AN, Purpose::Treatment, 50).await;
    assert_eq!(
        own.iter()
            .filter(|e| e.facility_id == PROVINCIAL)
            .map(|e| e.event_id.clone())
            .collect::<Vec<_>>(),
        vec![fresh.to_string()],
        "only the fresh event is projected"
    );
    let rejected = v1::monitor_service_client::MonitorServiceClient::new(w.nc.channel())
        .list_facility_stats(v1::ListFacilityStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .facilities
        .into_iter()
        .find(|s| s.facility_id == PROVINCIAL)
        .unwrap()
        .rejected;
    let invalid = rejected
        .iter()
        .find(|r| r.reason == v1::RejectionReason::InvalidField as i32)
        .map(|r| r.count);
    assert_eq!(invalid, Some(1), "counted once, at ingest: {rejected:?}");
    node.stop().await;
}

async fn registry_operations_on_unknown_keys_or_facilities_are_refused(env: Env) {
    let node = TestNode::start(&env).await;
    let w = World::register(env.path(), &node).await;
    let unknown = hrx_domain::SigningKey::from_seed(&[9; 32]).unwrap();
    let e =
        w.nc.revoke_key(&unknown.key_id(), Timestamp::now(), "typo")
            .await
            .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("no registered key has this key_id"), "{text}");
    let results =
        w.nc.submit_unchecked(vec![v1::registry_event::Body::KeyAdded(v1::KeyAdded {
            facility_id: "79999".into(),
            public_key: unknown.public_key().as_bytes().to_vec(),
            valid_from: Some(codec::timestamp(Timestamp::now())),
        })])
        .await
        .unwrap();
    assert_eq!(results[0].status, v1::SubmitStatus::Rejected as i32);
    assert!(
        results[0].extends_chain,
        "it keeps its place in the registry chain"
    );
    assert_eq!(
        results[0].rejection.as_ref().unwrap().field,
        "registry.key_added.facility_id"
    );
    // The registry goes on.
    w.nc.register_facility(
        &fac("79999"),
        "Phòng khám mới",
        "Hà Nội",
        FacilityLevel::Initial,
    )
    .await
    .unwrap();
    node.stop().await;
}

async fn client_numbers_are_range_checked_before_anything_is_written(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    // A batch: one good event, then one with seq 2^63: each answered for itself.
    let (good, envelope) = w.district.sign(obs(AN));
    let mut client = FacilityClient::with(
        fac(DISTRICT),
        hrx_node::keys::read_private_key(&hrx_node::client::facility_key_path(
            env.path(),
            &fac(DISTRICT),
        ))
        .unwrap(),
        w.district.channel(),
    );
    client.set_head(1u64 << 63, w.district.head().1);
    let (_, huge) = client.sign(obs(AN));
    let results = w.district.submit(vec![envelope, huge]).await.unwrap();
    assert!(accepted(&results[0]), "{:?}", results[0]);
    assert_eq!(
        results[1].rejection.as_ref().unwrap().field,
        "header.seq",
        "{:?}",
        results[1]
    );
    settle(&w.nc).await;
    let (entries, _) = read_all(&w.district, AN, Purpose::Treatment, 50).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].event_id, good.to_string());
    node.stop().await;
}

async fn the_monitor_adds_up_to_what_the_clients_were_answered(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let mut answers: Vec<v1::SubmitResult> = Vec::new();
    // Accepted, then resent (duplicates).
    let mut sent = Vec::new();
    for _ in 0..5 {
        let (_, e) = w.district.sign(obs(AN));
        sent.push(e);
    }
    answers.extend(w.district.submit(sent.clone()).await.unwrap());
    answers.extend(w.district.submit(sent[..2].to_vec()).await.unwrap());
    // Rejected for content (it extends the chain).
    let (_, r) = w
        .district
        .emit(record(AN, RecordKind::Condition, ts("2026-11-01T00:00:00Z"), &[]).into_wrong_type())
        .await
        .unwrap();
    answers.push(r);
    // A gap, a bad signature, and another facility's event: refused at ingest, counted
    // against the caller, never against the facility a payload claims.
    let (seq, prev) = w.district.head();
    w.district.set_head(seq + 5, prev);
    let (_, gap) = w.district.sign(obs(AN));
    w.district.set_head(seq, prev);
    let (_, mut forged) = w.district.sign(obs(AN));
    forged.signature[0] ^= 1;
    w.district.set_head(seq, prev);
    let (_, theirs) = w.provincial.sign(obs(AN));
    answers.extend(w.district.submit(vec![gap, forged, theirs]).await.unwrap());
    settle(&w.nc).await;

    let mut by_reason = std::collections::BTreeMap::new();
    let (mut accepted, mut duplicates) = (0, 0);
    for r in &answers {
        match v1::SubmitStatus::try_from(r.status).unwrap() {
            v1::SubmitStatus::Accepted => accepted += 1,
            v1::SubmitStatus::Duplicate => duplicates += 1,
            _ => {
                *by_reason
                    .entry(r.rejection.as_ref().unwrap().reason)
                    .or_insert(0u64) += 1
            }
        }
    }
    assert_eq!((accepted, duplicates), (5, 2));
    assert_eq!(by_reason.values().sum::<u64>(), 4, "{by_reason:?}");
    let stats = v1::monitor_service_client::MonitorServiceClient::new(w.nc.channel())
        .list_facility_stats(v1::ListFacilityStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .facilities;
    let of = |f: &str| {
        stats
            .iter()
            .find(|s| s.facility_id == f)
            .cloned()
            .unwrap_or_default()
    };
    let district = of(DISTRICT);
    assert_eq!(
        (district.accepted, district.duplicates),
        (accepted, duplicates)
    );
    let counted: std::collections::BTreeMap<i32, u64> = district
        .rejected
        .iter()
        .map(|r| (r.reason, r.count))
        .collect();
    assert_eq!(counted, by_reason);
    let provincial = of(PROVINCIAL);
    assert!(provincial.rejected.is_empty(), "{provincial:?}");

    // Every figure, refusals at ingest included, is rebuilt from the log.
    let backends = hrx_node::backends(&env.config).await.unwrap();
    let live = monitor_view(&*backends.store).await;
    let refusals: Vec<_> = live
        .1
        .iter()
        .filter(|r| r.reason != Reason::InvalidField)
        .collect();
    assert_eq!(live.1.len(), 4, "{:?}", live.1);
    assert_eq!(refusals.len(), 3, "{:?}", live.1);
    assert!(
        live.1.iter().all(|r| r.position.is_some()
            && r.facility_id.as_ref().map(|f| f.as_str()) == Some(DISTRICT)),
        "every refusal is in the log, against the caller: {:?}",
        live.1
    );
    drop(w);
    node.stop().await;
    hrx_node::reproject(&env.config).await.unwrap();
    assert_eq!(
        monitor_view(&*backends.store).await,
        live,
        "the monitor's figures after a replay of the log"
    );
}

/// Two ingest replicas (distributed; on the embedded node, one process) refusing one
/// facility's calls at the same time both number its report chain: every call is
/// answered with its refusal (a replica that lost the race for a report seq appends
/// again), and every refusal is counted once, live and after a replay.
async fn concurrent_refusals_on_two_replicas_are_each_counted_once(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let replica = if env.config.backend == hrx_node::Backend::Distributed {
        Some(ingest_replica(&env).await)
    } else {
        None
    };
    let tls = hrx_identity::TlsDir::open_or_init(env.path()).unwrap();
    let key = hrx_node::keys::read_private_key(&hrx_node::client::facility_key_path(
        env.path(),
        &fac(DISTRICT),
    ))
    .unwrap();
    let mut clients = Vec::new();
    for addr in [node.addr, replica.as_ref().map_or(node.addr, |r| r.addr)] {
        let channel = hrx_node::client::connect(
            addr,
            tls.ca_cert_pem(),
            &tls.facility(&fac(DISTRICT)).unwrap(),
        )
        .await
        .unwrap();
        clients.push(FacilityClient::with(fac(DISTRICT), key.clone(), channel));
    }
    let (_, mut forged) = w.district.sign(obs(AN));
    forged.signature[0] ^= 1;
    const CALLS: usize = 25;
    let calls = clients.iter().flat_map(|c| {
        let forged = forged.clone();
        (0..CALLS).map(move |_| c.submit(vec![forged.clone()]))
    });
    let answers = futures::future::join_all(calls).await;
    for a in &answers {
        let r = a.as_ref().expect("every call is answered");
        assert_eq!(reason(&r[0]), v1::RejectionReason::BadSignature as i32);
    }
    settle(&w.nc).await;
    let backends = hrx_node::backends(&env.config).await.unwrap();
    let count = |v: &(Vec<FacilityStats>, Vec<RejectionRow>)| {
        v.0.iter()
            .find(|s| s.facility_id.as_str() == DISTRICT)
            .and_then(|s| s.rejected.iter().find(|(r, _)| *r == Reason::BadSignature))
            .map_or(0, |(_, n)| *n)
    };
    let live = monitor_view(&*backends.store).await;
    assert_eq!(count(&live), 2 * CALLS as u64);
    assert_eq!(live.1.len(), 2 * CALLS);
    drop((w, clients));
    if let Some(r) = replica {
        r.stop().await;
    }
    node.stop().await;
    hrx_node::reproject(&env.config).await.unwrap();
    assert_eq!(monitor_view(&*backends.store).await, live);
}

/// The monitor's figures and rejections, in an order a replay keeps.
async fn monitor_view(store: &dyn Store) -> (Vec<FacilityStats>, Vec<RejectionRow>) {
    let mut stats = store.facility_stats().await.unwrap();
    stats.sort_by(|a, b| a.facility_id.cmp(&b.facility_id));
    for s in &mut stats {
        s.rejected.sort();
    }
    let mut rejections = store.rejections(None, 10_000).await.unwrap();
    rejections.sort_by_key(|r| (r.position, r.event_hash, r.reason));
    (stats, rejections)
}

/// A record body whose FHIR resource has the wrong type for its kind.
trait WrongType {
    fn into_wrong_type(self) -> Self;
}

impl WrongType for v1::facility_event::Body {
    fn into_wrong_type(mut self) -> Self {
        if let v1::facility_event::Body::Record(r) = &mut self {
            r.kind = RecordKind::Observation.code();
        }
        self
    }
}

/// Everything the projections hold about the test's patients and facilities, as text.
async fn snapshot(store: &dyn Store) -> String {
    let mut out = String::new();
    for p in [AN, BINH] {
        let patient = hrx_domain::PatientId::parse(p).unwrap();
        let q = TimelineQuery {
            patient_id: patient.clone(),
            kinds: vec![],
            facilities: vec![],
            occurred_from: None,
            occurred_until: None,
            after: None,
            limit: 10_000,
        };
        // patient_seq, the follow cursor, numbers a patient's records in the order they
        // were committed, gap-free: with several partitions that order depends on how
        // the projectors interleaved, so it is compared as a numbering, not row by row.
        let mut records = store.timeline(&q).await.unwrap();
        let mut seqs: Vec<u64> = records.iter().map(|r| r.patient_seq).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=records.len() as u64).collect::<Vec<_>>(),
            "gap-free"
        );
        for r in &mut records {
            r.patient_seq = 0;
        }
        records.sort_by_key(|r| r.event_id);
        out += &format!("{records:?}\n");
        let mut events = store.consent_events(&patient).await.unwrap();
        events.sort_by_key(|e| e.event_id);
        out += &format!("{events:?}\n");
    }
    out += &format!("{:?}\n", store.facilities().await.unwrap());
    let mut keys = store.keys(None).await.unwrap();
    keys.sort_by_key(|k| k.key.key_id());
    out += &format!("{keys:?}\n");
    out += &format!("{:?}\n", store.facility_stats().await.unwrap());
    let mut rejections = store.rejections(None, 10_000).await.unwrap();
    rejections.retain(|r| r.position.is_some());
    rejections.sort_by_key(|r| r.position);
    out += &format!("{rejections:?}\n");
    out
}

async fn replay_after_mid_stream_revocations_and_rotations_equals_live(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    // Extra projector replicas share the partitions (distributed).
    let mut replicas = Vec::new();
    if env.config.backend == hrx_node::Backend::Distributed {
        for _ in 0..2 {
            let mut config = env.config.clone();
            config.roles = Role::Projector.name().into();
            replicas.push(TestNode::from_node(Node::build(config).await.unwrap()));
        }
    }
    let mut sent = 0;
    for round in 0..4 {
        for f in [&mut w.district, &mut w.provincial, &mut w.clinic] {
            for p in [AN, BINH] {
                let (_, r) = f.emit(obs(p)).await.unwrap();
                assert!(accepted(&r), "{r:?}");
                sent += 1;
            }
        }
        // Mid-stream: rotate the district's key, revoke the previous one.
        if round == 1 || round == 2 {
            let old = hrx_node::keys::read_private_key(&hrx_node::client::facility_key_path(
                env.path(),
                &fac(DISTRICT),
            ))
            .unwrap();
            w.nc.add_key(&fac(DISTRICT)).await.unwrap();
            w.nc.revoke_key(&old.key_id(), Timestamp::now(), "rotated")
                .await
                .unwrap();
            let (_, r) = w.district.emit(obs(AN)).await.unwrap();
            assert_eq!(reason(&r), v1::RejectionReason::KeyRevoked as i32);
            w.district = FacilityClient::open(env.path(), node.addr, &fac(DISTRICT))
                .await
                .unwrap();
        }
    }
    settle(&w.nc).await;
    let backends = hrx_node::backends(&env.config).await.unwrap();
    let live = snapshot(&*backends.store).await;
    assert!(
        live.matches("Observation").count() >= sent,
        "{sent} records projected"
    );
    drop(w);
    for r in replicas {
        r.stop().await;
    }
    node.stop().await;

    hrx_node::reproject(&env.config).await.unwrap();
    let replayed = snapshot(&*backends.store).await;
    let differ: Vec<String> = live
        .lines()
        .zip(replayed.lines())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| format!("line {i}:\n live: {a:.2000}\n replay: {b:.2000}"))
        .collect();
    assert!(
        differ.is_empty() && live.lines().count() == replayed.lines().count(),
        "the replay must give identical projections, row for row:\n{}",
        differ.join("\n")
    );
}

both_backends!(
    a_revoked_key_is_refused_at_ingest_at_once_and_back_dating_does_not_help,
    recorded_at_is_bounded_by_the_receive_time_and_never_goes_back,
    a_record_corrects_only_its_own_facilitys_records,
    an_event_id_of_another_facility_is_refused_at_ingest,
    registry_operations_on_unknown_keys_or_facilities_are_refused,
    client_numbers_are_range_checked_before_anything_is_written,
    replay_after_mid_stream_revocations_and_rotations_equals_live,
    the_monitor_adds_up_to_what_the_clients_were_answered,
    concurrent_refusals_on_two_replicas_are_each_counted_once,
);
