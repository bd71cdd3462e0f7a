//! Certificates taken back: a revoked client certificate is refused on new calls, on
//! calls over a connection opened before the revocation, and on a follow stream open
//! across it, within seconds; a certificate past its end of validity likewise.

mod support;

use std::time::{Duration, Instant};

use hrx_domain::{Purpose, RecordKind};
use hrx_identity::TlsDir;
use hrx_node::client::FacilityClient;
use hrx_proto::v1;
use support::*;
use tokio_stream::StreamExt;

/// How soon a revocation must be enforced on every connection and stream.
const WITHIN: Duration = Duration::from_secs(10);

fn follow_request() -> v1::FollowRequest {
    v1::FollowRequest {
        patient_id: AN.into(),
        purpose: Purpose::ChronicCare.code(),
        ..Default::default()
    }
}

fn timeline_request() -> v1::GetTimelineRequest {
    v1::GetTimelineRequest {
        patient_id: AN.into(),
        purpose: Purpose::ChronicCare.code(),
        page_size: 10,
        ..Default::default()
    }
}

/// The next item of a follow stream that is an error, within `WITHIN` (items before it
/// — records, heartbeats — are skipped).
async fn ended(stream: &mut tonic::Streaming<v1::FollowResponse>) -> tonic::Status {
    let deadline = Instant::now() + WITHIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) => return status,
            Ok(None) => panic!("the stream ended without a status"),
            Err(_) => panic!("the stream was still open {WITHIN:?} after"),
        }
    }
}

fn unauthenticated(r: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    match r {
        Err(s) => assert_eq!(s.code(), tonic::Code::Unauthenticated, "{what}: {s:?}"),
        Ok(v) => panic!("{what}: answered {v:?}"),
    }
}

async fn a_revoked_certificate_is_refused_everywhere(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let obs = record(AN, RecordKind::Observation, ts("2026-11-01T00:00:00Z"), &[]);
    let (_, r) = w.district.emit(obs).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    let (_, r) = w
        .district
        .emit(grant(AN, CLINIC, &[Purpose::ChronicCare], in_days(30)))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;

    // The clinic follows the patient and reads, over one connection.
    let mut stream = w
        .clinic
        .timeline()
        .follow(follow_request())
        .await
        .unwrap()
        .into_inner();
    w.clinic
        .timeline()
        .get_timeline(timeline_request())
        .await
        .unwrap();

    let tls = TlsDir::open_or_init(env.path()).unwrap();
    let pem = tls.facility(&fac(CLINIC)).unwrap().cert_pem;
    let (facts, principal) = hrx_identity::certificate_from_pem(&pem).unwrap();
    let revoked_at = Instant::now();
    w.nc.revoke_certificate(&facts.serial, &principal.unwrap().uri(), "laptop stolen")
        .await
        .unwrap();

    // The open stream ends, UNAUTHENTICATED, within seconds.
    let status = ended(&mut stream).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    let took = revoked_at.elapsed();
    assert!(took < WITHIN, "{took:?}");
    eprintln!("revocation enforced on an open stream after {took:?}");

    // The connection opened before: refused.
    unauthenticated(
        w.clinic.timeline().get_timeline(timeline_request()).await,
        "a call on the old connection",
    );
    unauthenticated(
        w.clinic.timeline().follow(follow_request()).await,
        "a new follow on the old connection",
    );
    // A new connection with the same certificate: refused.
    let again = FacilityClient::open(env.path(), node.addr, &fac(CLINIC)).await;
    match again {
        Err(hrx_node::client::ClientError::Rpc(s)) => {
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}")
        }
        Err(e) => panic!("a new connection: {e:?}"),
        Ok(c) => unauthenticated(
            c.timeline().get_timeline(timeline_request()).await,
            "a call on a new connection",
        ),
    }
    // Other facilities are untouched.
    w.provincial
        .timeline()
        .get_timeline(v1::GetTimelineRequest {
            purpose: Purpose::Referral.code(),
            ..timeline_request()
        })
        .await
        .map(|_| ())
        .or_else(|s| {
            // No grant for the provincial hospital: refused for consent, not identity.
            (s.code() == tonic::Code::PermissionDenied)
                .then_some(())
                .ok_or(s)
        })
        .unwrap();

    // A renewed certificate (new key, new serial) works.
    let renewed = tls.renew_facility(&fac(CLINIC)).unwrap();
    let (new_facts, _) = hrx_identity::certificate_from_pem(&renewed.cert_pem).unwrap();
    assert_ne!(new_facts.serial, facts.serial);
    let clinic = FacilityClient::open(env.path(), node.addr, &fac(CLINIC))
        .await
        .unwrap();
    clinic
        .timeline()
        .get_timeline(timeline_request())
        .await
        .unwrap();
    node.stop().await;
}

/// A connection outliving its certificate: calls refused, the stream ended, once the
/// certificate's `notAfter` has passed (rustls checked it only at the handshake).
async fn an_expired_certificate_is_refused_on_an_open_connection(env: Env) {
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let obs = record(AN, RecordKind::Observation, ts("2026-11-01T00:00:00Z"), &[]);
    let (_, r) = w.district.emit(obs).await.unwrap();
    assert!(accepted(&r), "{r:?}");
    let (_, r) = w
        .district
        .emit(grant(AN, CLINIC, &[Purpose::ChronicCare], in_days(30)))
        .await
        .unwrap();
    assert!(accepted(&r), "{r:?}");
    settle(&w.nc).await;

    let tls = TlsDir::open_or_init(env.path()).unwrap();
    let short = tls
        .ca()
        .issue_client_valid_for(
            &hrx_identity::Principal::Facility(fac(CLINIC)),
            Duration::from_secs(4),
        )
        .unwrap();
    let channel = hrx_node::client::connect(node.addr, tls.ca_cert_pem(), &short)
        .await
        .unwrap();
    let mut timeline = v1::timeline_service_client::TimelineServiceClient::new(channel);
    timeline.get_timeline(timeline_request()).await.unwrap();
    let mut stream = timeline
        .follow(follow_request())
        .await
        .unwrap()
        .into_inner();
    let status = ended(&mut stream).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    unauthenticated(
        timeline.get_timeline(timeline_request()).await,
        "a call after expiry",
    );
    node.stop().await;
}

both_backends!(
    a_revoked_certificate_is_refused_everywhere,
    an_expired_certificate_is_refused_on_an_open_connection,
);
