//! `hrx bench --smoke` on Kafka + PostgreSQL (from `HRX_TEST_KAFKA_BROKERS` and
//! `HRX_TEST_DATABASE_URL`, which `tests/run.sh` sets): the real binary, so that the
//! projector runs as its own process as in the full run. Asserts that the harness
//! works — every distributed row measured with a positive value, ratios where the row
//! has a limit, the run's database dropped afterwards — never a speed.

use std::process::Command;

const DISTRIBUTED_ROWS: [&str; 6] = [
    "limit.kafka.produce_consume",
    "limit.postgres.copy",
    "distributed.ingest.accepted_per_s",
    "distributed.visible.p50",
    "distributed.visible.p99",
    "distributed.rss.projector_mib",
];

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
            eprintln!("skipping the distributed bench smoke: no Kafka/PostgreSQL given");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smoke_run_measures_the_distributed_rows() {
    let Some((brokers, url)) = services() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let child = Command::new(env!("CARGO_BIN_EXE_hrx"))
        .args(["bench", "--smoke", "--json"])
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
    assert!(out.status.success(), "hrx bench failed: {}", out.status);

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["mode"], "smoke");
    let rows = report["rows"].as_array().unwrap();
    for id in DISTRIBUTED_ROWS {
        let row = rows
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("row {id} is missing"));
        assert_eq!(row["status"], "measured", "{id}: {}", row["detail"]);
        let value = row["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{id}: no value"));
        assert!(value.is_finite() && value > 0.0, "{id}: {value}");
        if !row["limit"].is_null() {
            let ratio = row["ratio"]
                .as_f64()
                .unwrap_or_else(|| panic!("{id}: no ratio"));
            assert!(ratio.is_finite() && ratio > 0.0, "{id}: ratio {ratio}");
        }
    }
    for r in rows {
        assert_ne!(r["status"], "failed", "{}: {}", r["id"], r["detail"]);
    }

    // The run cleaned up after itself: its database (named after its pid) is gone.
    let (client, conn) = hrx_identity::backend::connect_postgres(&url).await.unwrap();
    tokio::spawn(conn);
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
            &[&format!("hrx_bench_{pid}_%")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the run's database was not dropped");
}
