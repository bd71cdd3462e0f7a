//! The ports' behaviour suite against `PgStore`, each function on a fresh database of its
//! own; then what is particular to a store shared by several processes: change
//! notification across stores, gap-free `patient_seq` and one audit chain under
//! concurrent writers, migrations racing, all-or-nothing batches, connection failures.
//!
//! The tests need a PostgreSQL server: `HRX_TEST_DATABASE_URL` names a database on it
//! whose user may `CREATE DATABASE` (each test makes `hrx_test_<random>` and drops it
//! afterwards). Without it a test prints a notice and passes, unless
//! `HRX_TEST_REQUIRE_SERVICES=1`, when it fails: the project's test command sets both,
//! so it cannot skip silently. Start a throwaway server with
//! `deploy/testenv/testenv.sh up DIR` and use `HRX_DATABASE_URL` from `DIR/env`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hrx_domain::Reason;
use hrx_domain::consent::Basis;
use hrx_embedded::SqliteNode;
use hrx_ports::testkit::{
    self, F1, F2, P1, P2, access, at, consent_event, event_id, facility, patient, record,
    record_batch, rejection,
};
use hrx_ports::{
    AuditStore, ChainKey, ConsentEventKind, ConsentStore, LogPosition, MonitorStore, NewRecord,
    PortError, Projection, ProjectionStore, StatsDelta, TimelineStore,
};
use hrx_postgres::{PgError, PgStore, SCHEMA_VERSION};

// ── Test databases ───────────────────────────────────────────────────────────────────

/// The admin URL from `HRX_TEST_DATABASE_URL`; `None` (after a notice) when it is unset
/// and services are not required, a panic when they are.
fn admin_url() -> Option<String> {
    match std::env::var("HRX_TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("HRX_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") => panic!(
            "HRX_TEST_REQUIRE_SERVICES=1 but HRX_TEST_DATABASE_URL is not set: start PostgreSQL \
             (deploy/testenv/testenv.sh up DIR; . DIR/env) and set \
             HRX_TEST_DATABASE_URL=$HRX_DATABASE_URL"
        ),
        _ => {
            eprintln!("hrx-postgres: HRX_TEST_DATABASE_URL is not set; skipping this test");
            None
        }
    }
}

fn random_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}

/// A database made for one test, dropped (with whatever is still connected) when this
/// goes out of scope, also when the test panics.
struct TestDb {
    admin: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn create() -> Option<TestDb> {
        let admin = admin_url()?;
        let name = format!("hrx_test_{}", random_suffix());
        let client = connect_raw(&admin).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let url = hrx_identity::backend::postgres_url_with_dbname(&admin, &name);
        Some(TestDb { admin, name, url })
    }

    async fn store(&self) -> PgStore {
        PgStore::connect(&self.url, 4)
            .await
            .unwrap_or_else(|e| panic!("connect to the test database: {e}"))
    }

    /// A plain connection to the test database, to look under the adapter.
    async fn sql(&self) -> tokio_postgres::Client {
        connect_raw(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Its own thread and runtime: Drop cannot await, and the test's runtime may be
        // the single-threaded one this is running on.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let client = connect_raw(&admin).await;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("hrx-postgres: could not drop test database {}", self.name);
        }
    }
}

async fn connect_raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = hrx_identity::backend::connect_postgres(url)
        .await
        .unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}"));
    tokio::spawn(connection);
    client
}

// ── The behaviour suite ──────────────────────────────────────────────────────────────

macro_rules! suite {
    ($($name:ident),+ $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(db) = TestDb::create().await else { return };
            let store = db.store().await;
            testkit::$name(&store).await;
        }
    )+};
}

/// Suite functions that also need a log: an embedded one, since this store is apart
/// from the log.
macro_rules! suite_with_log {
    ($($name:ident),+ $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(db) = TestDb::create().await else { return };
            let store = db.store().await;
            let dir = tempfile::tempdir().expect("a temporary directory");
            let log = SqliteNode::open(dir.path()).expect("open an embedded log");
            testkit::$name(&log, &store).await;
        }
    )+};
}

suite!(
    apply_commits_records_with_offsets,
    apply_fences_batches_by_their_start_offset,
    patient_seq_is_gap_free_per_patient,
    superseded_records_are_linked,
    timeline_orders_filters_and_pages_without_duplicates_or_skips,
    timestamps_round_trip_exactly_and_order_across_the_range,
    consent_events_round_trip_exactly,
    attested_grants_are_newest_first_since_inclusive_and_limited,
    break_glass_round_trips_with_reason_and_counts,
    latest_authored_is_the_facilitys_latest_record_of_the_patient,
    record_facts_cover_every_record_of_the_patient,
    claim_request_id_is_single_use_and_forgets_old_ids,
    audit_chain_is_intact_and_counts_exchange,
    audit_records_every_reader_and_outcome,
    audit_batches_chain_like_single_appends,
    projector_batch_lookups_match_single_ones,
    break_glass_audit_is_idempotent_across_reset,
    registry_and_keys_round_trip,
    keys_keep_their_registry_seqs,
    projected_chain_heads_report_recorded_at,
    monitor_stats_add_up,
    changes_counter_advances_after_apply,
    patient_changes_move_only_the_touched_buckets,
);

suite_with_log!(
    record_returns_the_original_envelope,
    reset_projections_keeps_log_and_audit,
);

// ── PostgreSQL specifics ─────────────────────────────────────────────────────────────

/// Two stores on one database stand for two processes: a batch applied through one
/// advances the other's `changes()` within a second (LISTEN/NOTIFY), and the batch is
/// visible there once it has; a reset wakes the other too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_applied_through_one_store_wakes_the_other_within_a_second() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (a, b) = (db.store().await, db.store().await);
    let (f, p) = (facility(F1), patient(P1));
    let other = patient(P2);
    let mut rx = b.changes();
    rx.borrow_and_update();
    let touched = b.patient_changes();
    let (g, g_other) = (touched.generation(&p), touched.generation(&other));

    a.apply(record_batch(&[record(1, &f, 1, &p)]))
        .await
        .expect("apply through a");
    tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .expect("b's counter advances within 1 s")
        .expect("b keeps its sender");
    // The notification named the batch's patient's bucket, and only it.
    assert!(
        touched.generation(&p) > g,
        "b sees the batch's patient moved"
    );
    assert_eq!(touched.generation(&other), g_other, "and no other patient");
    assert_eq!(
        b.records_after(&p, 0, 10)
            .await
            .expect("read through b")
            .len(),
        1,
        "what woke b is visible to b"
    );

    rx.borrow_and_update();
    a.reset_projections().await.expect("reset through a");
    tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .expect("a reset wakes b within 1 s")
        .expect("b keeps its sender");
    assert!(b.records_after(&p, 0, 10).await.expect("read").is_empty());
    assert!(
        touched.generation(&other) > g_other,
        "a reset moves every patient in b"
    );
}

/// Two stores apply batches for the same patients at once (each its own facility and
/// partition, as two projector processes would) while a follower pages by the cursor:
/// every page continues exactly at cursor + 1 (nothing is visible before what precedes
/// it commits), and in the end each patient's seqs are 1..=n with each writer's records
/// in the order it applied them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_keep_patient_seq_gap_free_and_in_commit_order() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (a, b) = (db.store().await, db.store().await);
    let (p1, p2) = (patient(P1), patient(P2));
    const BATCHES: u64 = 25;
    const PER_BATCH: u64 = 3;

    let writer = |store: PgStore, f: &'static str, partition: u32, base: u64| {
        let (p1, p2) = (p1.clone(), p2.clone());
        tokio::spawn(async move {
            let f = facility(f);
            let mut seq = 0;
            for batch in 0..BATCHES {
                let records: Vec<NewRecord> = (0..PER_BATCH)
                    .map(|i| {
                        seq += 1;
                        let n = base + batch * PER_BATCH + i;
                        // Mostly p1, with p2 in between: both counters are contended.
                        let p = if i == 1 { &p2 } else { &p1 };
                        NewRecord {
                            position: LogPosition {
                                partition,
                                offset: n,
                            },
                            ..record(n, &f, seq, p)
                        }
                    })
                    .collect();
                let mut batch = record_batch(&records);
                batch.offsets = vec![(
                    partition,
                    records.last().expect("records").position.offset + 1,
                )];
                store.apply(batch).await.expect("concurrent apply");
            }
        })
    };
    let follower = {
        let (store, p1) = (b.clone(), p1.clone());
        tokio::spawn(async move {
            let total = BATCHES * 2 * (PER_BATCH - 1);
            let mut cursor = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while cursor < total {
                assert!(
                    Instant::now() < deadline,
                    "the follower saw only {cursor} records"
                );
                let page = store.records_after(&p1, cursor, 7).await.expect("follow");
                for (i, r) in page.iter().enumerate() {
                    assert_eq!(
                        r.patient_seq,
                        cursor + 1 + i as u64,
                        "a page continues exactly after the cursor"
                    );
                }
                cursor += page.len() as u64;
                if page.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let (wa, wb) = (
        writer(a.clone(), F1, 0, 10_000),
        writer(b.clone(), F2, 1, 20_000),
    );
    wa.await.expect("writer a");
    wb.await.expect("writer b");
    follower.await.expect("follower");

    for (p, per_writer) in [(&p1, 2 * BATCHES), (&p2, BATCHES)] {
        let all = a.records_after(p, 0, 10_000).await.expect("read all");
        assert_eq!(
            all.iter().map(|r| r.patient_seq).collect::<Vec<_>>(),
            (1..=2 * per_writer).collect::<Vec<_>>(),
            "gap-free"
        );
        for f in [facility(F1), facility(F2)] {
            let mine: Vec<u64> = all
                .iter()
                .filter(|r| r.facility_id == f)
                .map(|r| r.seq)
                .collect();
            assert_eq!(mine.len() as u64, per_writer);
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "each writer's order kept"
            );
        }
    }
}

/// Readers in two processes append at once: the audit log is still one chain, 1..=n,
/// each entry after the previous one's hash, every entry intact; the matrix counts all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_stays_intact_under_concurrent_appends_from_two_stores() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (a, b) = (db.store().await, db.store().await);
    let (f1, f2, p) = (facility(F1), facility(F2), patient(P1));
    const EACH: u64 = 30;
    let mut tasks = tokio::task::JoinSet::new();
    for (store, reader) in [(a.clone(), f2.clone()), (b.clone(), f1.clone())] {
        for i in 0..EACH {
            let (store, reader, f1, p) = (store.clone(), reader.clone(), f1.clone(), p.clone());
            tasks.spawn(async move {
                store
                    .append_access(
                        access(&reader, &p, vec![Basis::Author], 1, i as i64),
                        &[(f1, 1)],
                    )
                    .await
                    .expect("append_access")
            });
        }
    }
    let mut returned = Vec::new();
    while let Some(r) = tasks.join_next().await {
        returned.push(r.expect("append task"));
    }

    let entries = a.accesses(&p, None, 0, 1000).await.expect("accesses");
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=2 * EACH).collect::<Vec<_>>()
    );
    assert_eq!(entries[0].prev_hash, hrx_domain::Sha256::ZERO);
    assert!(
        entries
            .windows(2)
            .all(|w| w[1].prev_hash == w[0].entry_hash)
    );
    assert!(entries.iter().all(|e| e.is_intact()));
    returned.sort_by_key(|e| e.seq);
    assert_eq!(returned, entries, "each append returned what was stored");

    let cells = b.exchange_matrix().await.expect("matrix");
    let total: u64 = cells.iter().map(|c| c.accesses).sum();
    assert_eq!(total, 2 * EACH);
}

/// Two stores migrating a fresh database at once both start, the migrations are
/// recorded once each, and a later connect (an upgrade with nothing to do) changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_when_two_stores_connect_at_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (a, b) = tokio::join!(PgStore::connect(&db.url, 2), PgStore::connect(&db.url, 2));
    let (a, b) = (a.expect("first store"), b.expect("second store"));
    let sql = db.sql().await;
    let versions = |rows: Vec<tokio_postgres::Row>| -> Vec<i32> {
        rows.iter().map(|r| r.get::<_, i32>(0)).collect()
    };
    let applied = versions(
        sql.query(
            "SELECT version FROM hrx_store_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("read migrations"),
    );
    assert_eq!(applied, (1..=SCHEMA_VERSION).collect::<Vec<_>>());

    let (f, p) = (facility(F1), patient(P1));
    a.apply(record_batch(&[record(1, &f, 1, &p)]))
        .await
        .expect("apply");
    drop((a, b));
    let c = db.store().await;
    assert_eq!(
        versions(
            sql.query(
                "SELECT version FROM hrx_store_migrations ORDER BY version",
                &[]
            )
            .await
            .expect("read migrations")
        ),
        applied
    );
    assert_eq!(c.records_after(&p, 0, 10).await.expect("read").len(), 1);
}

/// Version 2: where the server has LZ4, the large columns use it (and a record written
/// after the migration reads back whole); elsewhere they keep the server's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_columns_are_lz4_compressed_where_the_server_has_it() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let sql = db.sql().await;
    let has_lz4: bool = sql
        .query_one(
            "SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression'",
            &[],
        )
        .await
        .expect("read settings")
        .get(0);
    let methods: Vec<(String, String)> = sql
        .query(
            "SELECT attrelid::regclass::text, attcompression::text FROM pg_attribute
             WHERE (attrelid, attname) IN (('records'::regclass, 'body'),
                                           ('record_envelopes'::regclass, 'payload'))
             ORDER BY 1",
            &[],
        )
        .await
        .expect("read columns")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(methods.len(), 2);
    for (table, method) in &methods {
        // 'l' is LZ4; unset (the server's default) otherwise.
        assert_eq!(method == "l", has_lz4, "{table}: compression {method:?}");
    }
    // A body well over the TOAST threshold, and compressible, as FHIR JSON is.
    let (f, p) = (facility(F1), patient(P1));
    let mut big = record(1, &f, 1, &p);
    big.body = format!(
        r#"{{"resourceType":"Observation","note":"{}"}}"#,
        "glucose 7.2 mmol/L fasting; ".repeat(300)
    )
    .into_bytes();
    store
        .apply(record_batch(std::slice::from_ref(&big)))
        .await
        .expect("apply");
    let read = store.records_after(&p, 0, 10).await.expect("read");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].body, big.body);
    let stored: Option<String> = sql
        .query_one("SELECT pg_column_compression(body) FROM records", &[])
        .await
        .expect("read compression")
        .get(0);
    assert_eq!(
        stored.as_deref(),
        Some(if has_lz4 { "lz4" } else { "pglz" })
    );
}

/// A batch that fails part-way (a chain link at a taken seq, or a record id already
/// projected) is a conflict and leaves nothing: no record, consent event, rejection, stats or
/// link, the offsets and the patient's counter as before, no change signalled.
#[tokio::test]
async fn a_failed_apply_leaves_nothing_and_offsets_unchanged() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let (f, p) = (facility(F1), patient(P1));
    let r1 = record(1, &f, 1, &p);
    store
        .apply(record_batch(std::slice::from_ref(&r1)))
        .await
        .expect("apply");
    let stats_before = store.facility_stats().await.expect("stats");
    let mut rx = store.changes();
    rx.borrow_and_update();

    let r2 = record(2, &f, 2, &p);
    let doomed = |extra_record: Option<NewRecord>, taken_link: bool| {
        let mut records = vec![r2.clone()];
        records.extend(extra_record);
        let mut batch = record_batch(&records);
        batch.projections.extend([
            Projection::ConsentEvent(consent_event(
                3,
                ConsentEventKind::AttestedGrant,
                &p,
                Some(&f),
            )),
            Projection::Rejection(rejection(4, Some(&f), Reason::InvalidField, 4, None)),
        ]);
        batch.stats.push(StatsDelta {
            facility_id: f.clone(),
            accepted: 1,
            duplicates: 0,
            rejected: vec![(Reason::InvalidField, 1)],
            last_seen: at(4),
        });
        if taken_link {
            batch.links.push(testkit::link(&r1));
        }
        batch.offsets = vec![(0, 50)];
        batch
    };
    let again = NewRecord {
        seq: 3,
        ..record(1, &f, 3, &p)
    };
    for (name, batch) in [
        ("a taken chain seq", doomed(None, true)),
        ("a record id already projected", doomed(Some(again), false)),
    ] {
        match store.apply(batch).await {
            Err(PortError::Conflict(m)) => assert!(!m.contains(P1), "no patient id in {m}"),
            other => panic!("{name}: expected a conflict, got {other:?}"),
        }
        assert_eq!(
            store.records_after(&p, 0, 10).await.expect("read").len(),
            1,
            "{name}"
        );
        assert_eq!(store.record(event_id(2)).await.expect("record"), None);
        assert!(
            store
                .consent_events(&p)
                .await
                .expect("consent events")
                .is_empty(),
            "{name}"
        );
        assert!(
            !store.event_id_taken(event_id(3)).await.expect("ids"),
            "{name}"
        );
        assert!(
            store
                .rejections(None, 10)
                .await
                .expect("rejections")
                .is_empty()
        );
        assert_eq!(store.facility_stats().await.expect("stats"), stats_before);
        assert_eq!(
            store.projected_offsets().await.expect("offsets"),
            vec![(0, 2)]
        );
        let head = store
            .chain_context(&ChainKey::Facility(f.clone()), event_id(9), 9)
            .await
            .expect("chain_context")
            .head;
        assert_eq!(head.seq, 1, "{name}");
    }
    assert!(
        !rx.has_changed().expect("sender"),
        "a failed apply signals nothing"
    );

    // The patient's counter did not move: the next record is patient_seq 2.
    store
        .apply(record_batch(std::slice::from_ref(&r2)))
        .await
        .expect("apply");
    let all = store.records_after(&p, 0, 10).await.expect("read");
    assert_eq!(
        all.iter().map(|r| r.patient_seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

/// Consent event ids are unique: a batch reusing one (which the projector's
/// `event_ids_taken` check should have turned into a rejection) is a conflict naming no
/// patient, and leaves nothing of itself.
#[tokio::test]
async fn a_consent_event_id_already_projected_fails_the_batch() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let p = patient(P1);
    let first = consent_event(1, ConsentEventKind::PatientGrant, &p, None);
    store
        .apply(testkit::consent_batch(std::slice::from_ref(&first)))
        .await
        .expect("apply");
    let reused = hrx_ports::ProjectionBatch {
        offsets: vec![(0, 3)],
        ..testkit::consent_batch(&[
            consent_event(2, ConsentEventKind::PatientRevocation, &p, None),
            hrx_ports::ConsentEventRow {
                kind: ConsentEventKind::PatientDecline,
                ..first.clone()
            },
        ])
    };
    match store.apply(reused).await {
        Err(PortError::Conflict(m)) => assert!(!m.contains(P1), "no patient id in {m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        store.consent_events(&p).await.expect("consent events"),
        vec![first]
    );
    assert!(store.projected_offsets().await.expect("offsets").is_empty());
}

/// A large batch (thousands of records over many patients, with their links and
/// offsets) goes in as one transaction of a few multi-row statements: every record is
/// there with its patient's seqs 1..=n in batch order.
#[tokio::test]
async fn a_large_batch_is_applied_whole() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let f = facility(F1);
    let patients: Vec<_> = (0..40)
        .map(|i| patient(&format!("0260620{:05}", i)))
        .collect();
    let records: Vec<NewRecord> = (1..=2_000u64)
        .map(|n| record(n, &f, n, &patients[(n % 40) as usize]))
        .collect();
    let t = Instant::now();
    store.apply(record_batch(&records)).await.expect("apply");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}");
    for (i, p) in patients.iter().enumerate() {
        let got = store.records_after(p, 0, 1_000).await.expect("read");
        assert_eq!(
            got.iter().map(|r| r.patient_seq).collect::<Vec<_>>(),
            (1..=50).collect::<Vec<_>>()
        );
        assert!(got.iter().all(|r| r.event_id == event_id(r.seq)));
        assert!(got.windows(2).all(|w| w[0].seq < w[1].seq), "batch order");
        assert_eq!(got[0].seq, if i == 0 { 40 } else { i as u64 });
    }
    assert_eq!(
        store.projected_offsets().await.expect("offsets"),
        vec![(0, 2_001)]
    );
    let head = store
        .chain_context(&ChainKey::Facility(f), event_id(1), 1)
        .await
        .expect("chain_context")
        .head;
    assert_eq!(head.seq, 2_000);
}

/// `record` serves the envelope kept with the record, whatever log partition it names
/// (this store does not read the log).
#[tokio::test]
async fn record_keeps_the_envelope_with_the_record() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let (f, p) = (facility(F2), patient(P2));
    let r = NewRecord {
        position: LogPosition {
            partition: 7,
            offset: 123_456,
        },
        ..record(5, &f, 1, &p)
    };
    let mut batch = record_batch(std::slice::from_ref(&r));
    batch.offsets = vec![(7, 123_457)];
    store.apply(batch).await.expect("apply");
    let (got, envelope) = store
        .record(event_id(5))
        .await
        .expect("record")
        .expect("record 5");
    assert_eq!(got, testkit::stored(&r, 1, None));
    assert_eq!(envelope, r.envelope);
    assert_eq!(
        store.projected_offsets().await.expect("offsets"),
        vec![(7, 123_457)]
    );
}

/// The audit log refuses edits even through plain SQL.
#[tokio::test]
async fn the_audit_log_is_append_only_in_the_database() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = db.store().await;
    let (f, p) = (facility(F1), patient(P1));
    store
        .append_access(access(&f, &p, vec![Basis::Author], 0, 1), &[])
        .await
        .expect("append");
    let sql = db.sql().await;
    for edit in [
        "UPDATE audit_log SET records_returned = 99",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "DELETE FROM audit_head",
    ] {
        assert!(sql.batch_execute(edit).await.is_err(), "{edit} must fail");
    }
    assert_eq!(
        store
            .accesses(&p, None, 0, 10)
            .await
            .expect("accesses")
            .len(),
        1
    );
}

/// Dropped connections (a server restart, an idle kill) are `Unavailable`, never a
/// panic or corruption, and the store recovers by itself: the pool replaces pooled
/// connections, the listener reconnects and wakes followers (notifications may have
/// been missed), and notifications flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_recovers_from_dropped_connections() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (a, b) = (db.store().await, db.store().await);
    let (f, p) = (facility(F1), patient(P1));
    a.apply(record_batch(&[record(1, &f, 1, &p)]))
        .await
        .expect("apply");
    let mut rx = b.changes();
    rx.borrow_and_update();

    let admin = connect_raw(&db.admin).await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db.name],
        )
        .await
        .expect("terminate every session of the test database");

    // The listener's reconnection is a change.
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("b's listener reconnects and wakes followers")
        .expect("sender");

    // Pooled connections: failures are Unavailable, and a retry succeeds.
    let mut ok = false;
    for _ in 0..10 {
        match b.records_after(&p, 0, 10).await {
            Ok(records) => {
                assert_eq!(records.len(), 1);
                ok = true;
                break;
            }
            Err(PortError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("a dropped connection must be Unavailable, got {e:?}"),
        }
    }
    assert!(ok, "the pool recovers");

    // Notifications flow again after the reconnection.
    rx.borrow_and_update();
    let mut applied = false;
    for _ in 0..10 {
        match a.apply(record_batch(&[record(2, &f, 2, &p)])).await {
            Ok(()) => {
                applied = true;
                break;
            }
            Err(PortError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("expected Unavailable or success, got {e:?}"),
        }
    }
    assert!(applied);
    tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .expect("b is woken within 1 s after reconnecting")
        .expect("sender");
}

/// Nothing listening on the port: `connect` fails at once with a clear error.
#[tokio::test]
async fn connect_to_a_closed_port_fails_fast() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let t = Instant::now();
    let err = PgStore::connect(&format!("postgres://hrx@127.0.0.1:{port}/hrx"), 2)
        .await
        .expect_err("nothing listens there");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    match &err {
        PgError::Connect { target, .. } => assert_eq!(target, &format!("127.0.0.1:{port}/hrx")),
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(matches!(PortError::from(err), PortError::Unavailable(_)));
}

/// A server that accepts the TCP connection and never answers: `connect` gives up after
/// the URL's `connect_timeout` instead of hanging.
#[tokio::test]
async fn connect_to_a_silent_server_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let t = Instant::now();
    let err = PgStore::connect(
        &format!("postgres://hrx:secret@127.0.0.1:{port}/hrx?connect_timeout=1"),
        2,
    )
    .await
    .expect_err("the server never answers");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    assert!(matches!(err, PgError::Connect { .. }), "got {err:?}");
    assert!(!err.to_string().contains("secret"), "no password in {err}");
    drop(listener);
}

/// A server that answers but lacks the database: a connect error that says so.
#[tokio::test]
async fn connect_to_a_missing_database_says_so() {
    let Some(admin) = admin_url() else {
        return;
    };
    let name = format!("hrx_missing_{}", random_suffix());
    let err = PgStore::connect(
        &hrx_identity::backend::postgres_url_with_dbname(&admin, &name),
        2,
    )
    .await
    .expect_err("no such database");
    match &err {
        PgError::Connect { reason, .. } => assert!(reason.contains("3D000"), "{reason}"),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_malformed_url_is_a_config_error() {
    let err = PgStore::connect("postgres://hrx@127.0.0.1:notaport/hrx", 2)
        .await
        .expect_err("a bad port");
    assert!(matches!(err, PgError::Config(_)), "got {err:?}");
}
