//! Observability: per-RPC counters and latency histograms on `/metrics` (method and
//! status code as labels, no patient data), and gRPC server reflection checked with
//! grpcurl, a client no one here wrote.

mod support;

use std::path::PathBuf;
use std::process::Command;

use hrx_domain::{Purpose, RecordKind};
use hrx_proto::v1;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AN: &str = "026062001234";

async fn scrape(node: &TestNode) -> String {
    let mut conn = tokio::net::TcpStream::connect(node.metrics).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// The value of the sample `name{labels}` in a scrape.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

async fn every_call_is_counted_and_timed_per_method_and_outcome(env: Env) {
    let node = TestNode::start(&env).await;
    let w = World::register(env.path(), &node).await;
    let submit = r#"{method="/hrx.v1.IngestService/SubmitEvents",code="Ok"}"#;
    let read = r#"{method="/hrx.v1.TimelineService/GetTimeline",code="PermissionDenied"}"#;
    let before = scrape(&node).await;
    let submits_before = sample(&before, &format!("hrx_rpc_requests_total{submit}")).unwrap_or(0.0);
    let mut district = w.district;
    for _ in 0..3 {
        let (_, r) = district
            .emit(record(
                AN,
                RecordKind::Observation,
                ts("2026-11-01T00:00:00Z"),
                &[],
            ))
            .await
            .unwrap();
        assert!(accepted(&r));
    }
    // No standing: refused, and counted as such.
    let denied = w
        .clinic
        .timeline()
        .get_timeline(v1::GetTimelineRequest {
            patient_id: AN.into(),
            purpose: Purpose::Treatment.code(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    let text = scrape(&node).await;
    assert_eq!(
        sample(&text, &format!("hrx_rpc_requests_total{submit}")),
        Some(submits_before + 3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("hrx_rpc_requests_total{read}")),
        Some(1.0),
        "{text}"
    );
    let count = sample(&text, &format!("hrx_rpc_duration_seconds_count{submit}"));
    assert_eq!(count, Some(submits_before + 3.0), "{text}");
    assert!(
        sample(&text, &format!("hrx_rpc_duration_seconds_sum{submit}")).unwrap() > 0.0,
        "{text}"
    );
    assert!(!text.contains(AN), "no patient ids in metrics");
    node.stop().await;
}

/// grpcurl: from `HRX_TEST_GRPCURL`, the test environment's tools, or `PATH`.
fn grpcurl() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("HRX_TEST_GRPCURL") {
        return Some(p.into());
    }
    let cached = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/tools/bin/grpcurl");
    if cached.is_file() {
        return Some(cached);
    }
    Command::new("grpcurl")
        .arg("-version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "grpcurl".into())
}

async fn grpcurl_lists_describes_and_calls_the_services(env: Env) {
    let Some(grpcurl) = grpcurl() else {
        assert!(
            std::env::var("HRX_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "grpcurl is required (deploy/testenv/testenv.sh install fetches it)"
        );
        eprintln!("skipping: no grpcurl");
        return;
    };
    let node = TestNode::start(&env).await;
    let mut w = World::register(env.path(), &node).await;
    let (_, r) = w
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
    let tls = hrx_identity::TlsDir::open_or_init(env.path()).unwrap();
    let (cert, key) = tls.facility_paths(&fac(DISTRICT));
    let ca = tls.path().join("ca.pem");
    let addr = node.addr.to_string();
    let run = |args: &[&str]| {
        let out = Command::new(&grpcurl)
            .args(["-cacert", ca.to_str().unwrap()])
            .args([
                "-cert",
                cert.to_str().unwrap(),
                "-key",
                key.to_str().unwrap(),
            ])
            .args(["-authority", "localhost"])
            .args(args)
            .output()
            .expect("grpcurl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.success(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, list, err) = run(&[&addr, "list"]);
    assert!(ok, "{err}");
    for service in [
        "hrx.v1.IngestService",
        "hrx.v1.TimelineService",
        "hrx.v1.ConsentService",
        "hrx.v1.PatientService",
        "hrx.v1.RegistryService",
        "hrx.v1.MonitorService",
        "grpc.health.v1.Health",
    ] {
        assert!(list.lines().any(|l| l == service), "{service} in {list}");
    }
    let (ok, described, err) = run(&[&addr, "describe", "hrx.v1.IngestService.SubmitEvents"]);
    assert!(ok, "{err}");
    assert!(described.contains("SubmitEventsRequest"), "{described}");
    let (ok, head, err) = run(&[
        "-d",
        &format!(r#"{{"facility_id":"{DISTRICT}"}}"#),
        &addr,
        "hrx.v1.IngestService/GetFacilityHead",
    ]);
    assert!(ok, "{err}");
    let head: serde_json::Value = serde_json::from_str(&head).unwrap();
    assert_eq!(head["head"]["seq"], "1", "{head}");
    // Without a client certificate, nothing (reflection included) is served.
    let out = Command::new(&grpcurl)
        .args(["-cacert", ca.to_str().unwrap(), "-authority", "localhost"])
        .args([addr.as_str(), "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    node.stop().await;
}

both_backends!(
    every_call_is_counted_and_timed_per_method_and_outcome,
    grpcurl_lists_describes_and_calls_the_services,
);
