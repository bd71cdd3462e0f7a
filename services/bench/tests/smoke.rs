//! The harness keeps working: a smoke run produces every row of the table, each
//! measured row with a positive, finite value. No speed is asserted. (This run is
//! embedded only; `services/hrx/tests/bench_cli.rs` runs `hrx bench --smoke` on Kafka
//! and PostgreSQL too.)

use hrx_bench::{Options, Status, run};

#[test]
fn a_smoke_run_measures_every_row() {
    let report = run(Options {
        smoke: true,
        ..Options::default()
    })
    .expect("the smoke run completes");
    println!("{report}");

    let ids: Vec<&str> = report.rows.iter().map(|r| r.id.as_str()).collect();
    for id in [
        "limit.verify.one_core",
        "limit.verify.all_cores",
        "limit.kafka.produce_consume",
        "limit.postgres.copy",
        "limit.timeline_query.p50",
        "limit.timeline_query.p99",
        "embedded.ingest.accepted_per_s",
        "embedded.ingest.visible_per_s",
        "embedded.visible.p50_loaded",
        "embedded.visible.p99_loaded",
        "embedded.visible.p50_idle",
        "embedded.visible.p99_idle",
        "embedded.rss.peak_mib",
        "distributed.ingest.accepted_per_s",
        "distributed.visible.p50",
        "distributed.visible.p99",
        "distributed.rss.projector_mib",
        "timeline.p50_at_1000",
        "timeline.p99_at_1000",
        "timeline.max_rate_p99_10ms",
        "follow.delivered_per_s",
        "follow.p50",
        "follow.p99",
    ] {
        assert!(ids.contains(&id), "row {id} is missing");
    }
    for r in &report.rows {
        match r.status {
            // A search whose every step missed the bound is a result, not a failure
            // of the harness (a debug build cannot read a page in 10 ms): asserting
            // otherwise would be asserting a speed.
            Status::Measured
                if r.id == "timeline.max_rate_p99_10ms"
                    && r.value.is_none()
                    && r.detail.starts_with("none of the offered rates met it") => {}
            Status::Measured => {
                let v = r.value.unwrap_or_else(|| panic!("{} has no value", r.id));
                assert!(v.is_finite() && v > 0.0, "{}: {v}", r.id);
                if r.limit.is_some() {
                    let ratio = r.ratio.unwrap_or_else(|| panic!("{} has no ratio", r.id));
                    assert!(ratio.is_finite() && ratio > 0.0, "{}: ratio {ratio}", r.id);
                }
            }
            // Without Kafka and PostgreSQL, exactly their rows, saying how to get them.
            Status::NotMeasured => {
                assert!(
                    r.id.starts_with("distributed.")
                        || r.id.starts_with("limit.kafka")
                        || r.id.starts_with("limit.postgres"),
                    "{}",
                    r.id
                );
                assert_eq!(r.value, None);
                assert!(
                    r.detail.contains("tests/bench.sh"),
                    "{}: {}",
                    r.id,
                    r.detail
                );
            }
            Status::Failed => panic!("{} failed: {}", r.id, r.detail),
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench").join("latest.json");
    report.write_json(&path).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["mode"], "smoke");
    assert_eq!(json["rows"].as_array().unwrap().len(), report.rows.len());
}
