//! `hrx soak --smoke` on Kafka + PostgreSQL (from `HRX_TEST_KAFKA_BROKERS` and
//! `HRX_TEST_DATABASE_URL`, which `tests/run.sh` sets): the real binary, so that every
//! role runs in child processes as in the full soak. Asserts that the soak works — it
//! exits successfully, no error was answered, everything reconciled, RSS sampled for
//! both processes, the run's database dropped afterwards — never a speed.

use std::process::Command;

/// Kafka brokers and the PostgreSQL URL, or `None` (skipped with a notice) unless
/// `HRX_TEST_REQUIRE_SERVICES=1`, which the project's test command sets.
fn services() -> Option<(String, String)> {
    match (
        std::env::var("HRX_TEST_KAFKA_BROKERS"),
        std::env::var("HRX_TEST_DATABASE_URL"),
    ) {
        (Ok(brokers), Ok(url)) => Some((brokers, url)),
        _ => {
            assert!(
                std::env::var("HRX_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "HRX_TEST_KAFKA_BROKERS and HRX_TEST_DATABASE_URL are required (run bash tests/run.sh)"
            );
            eprintln!("skipping the soak smoke: no Kafka/PostgreSQL given");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smoke_soak_is_clean_and_reconciled() {
    let Some((brokers, url)) = services() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("soak.json");
    let child = Command::new(env!("CARGO_BIN_EXE_hrx"))
        .args(["soak", "--smoke", "--json"])
        .arg(&json)
        .env("HRX_BENCH_KAFKA_BROKERS", &brokers)
        .env("HRX_BENCH_DATABASE_URL", &url)
        .envs(
            [
                ("HRX_BENCH_KAFKA_CA_FILE", "HRX_TEST_KAFKA_CA_FILE"),
                ("HRX_BENCH_KAFKA_CERT_FILE", "HRX_TEST_KAFKA_CERT_FILE"),
                ("HRX_BENCH_KAFKA_KEY_FILE", "HRX_TEST_KAFKA_KEY_FILE"),
            ]
            .into_iter()
            .filter_map(|(to, from)| std::env::var_os(from).map(|v| (to, v))),
        )
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(
        out.status.success(),
        "hrx soak failed: {}; errors {}, reconciliation {}",
        out.status,
        report["errors"],
        report["reconciliation"]
    );
    assert_eq!(report["mode"], "smoke");
    assert_eq!(report["errors"], serde_json::json!({}), "errors answered");
    assert_eq!(report["reconciled"], true, "{}", report["reconciliation"]);
    for c in report["reconciliation"].as_array().unwrap() {
        assert_eq!(c["ok"], true, "{c}");
    }
    // Something was offered and accepted of every kind of load.
    for l in report["load"].as_array().unwrap() {
        assert!(
            l["ok"].as_u64().unwrap() > 0,
            "no {} succeeded: {l}",
            l["name"]
        );
    }
    // RSS sampled for both processes, several times.
    let samples = report["samples"].as_array().unwrap();
    assert!(samples.len() >= 3, "{} samples", samples.len());
    for roles in ["projector", "ingest,timeline,consent,registry,monitor"] {
        for s in samples {
            let mib = s["rss_mib"][roles]
                .as_f64()
                .unwrap_or_else(|| panic!("no RSS of the {roles} process at {}", s["t_s"]));
            assert!(mib > 0.0, "{roles}: {mib}");
        }
    }
    assert_eq!(report["rss"].as_array().unwrap().len(), 2);

    // The run cleaned up after itself: its database (named after its pid) is gone.
    let (client, conn) = hrx_identity::backend::connect_postgres(&url).await.unwrap();
    tokio::spawn(conn);
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
            &[&format!("hrx_soak_{pid}_%")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the run's database was not dropped");
}
