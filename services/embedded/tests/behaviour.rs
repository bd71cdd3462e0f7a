//! The ports' behaviour suite against `SqliteNode`, each function on a fresh node in its
//! own temporary directory; then what is particular to the embedded adapter: one
//! database that survives a reopen, all-or-nothing batches, dense offsets, the schema
//! version, append-only tables, corruption reported as such, and concurrent use.

use std::path::Path;
use std::time::Duration;

use hrx_domain::RecordKind;
use hrx_embedded::{DB_FILE_NAME, EmbeddedError, SCHEMA_VERSION, SqliteNode};
use hrx_ports::testkit::{self, F1, F2, P1, P2, append, event_id, facility, patient, record};
use hrx_ports::{
    AuditStore, ChainKey, ConsentEventKind, ConsentStore, EventLog, MonitorStore, NewRecord,
    PortError, Projection, ProjectionBatch, ProjectionStore, TimelineStore,
};
use tempfile::TempDir;

/// A fresh node in its own directory (kept alive by the returned `TempDir`).
fn fresh() -> (TempDir, SqliteNode) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let node = SqliteNode::open(dir.path()).expect("open a fresh node");
    (dir, node)
}

/// A direct connection to the node's database, to look under the adapter.
fn sql(dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE_NAME)).expect("open the file");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn
}

macro_rules! suite {
    ($($name:ident),+ $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let (_dir, node) = fresh();
            testkit::$name(&node).await;
        }
    )+};
}

macro_rules! suite_with_log {
    ($($name:ident),+ $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let (_dir, node) = fresh();
            testkit::$name(&node, &node).await;
        }
    )+};
}

suite!(
    log_appends_reads_and_orders,
    log_refuses_chain_conflicts_atomically,
    log_wait_for_wakes_on_append,
    log_chain_context_reports_head_and_priors,
    log_patient_chains_are_chains_of_their_own,
    log_keeps_receive_times_and_registry_seqs,
    log_chain_context_reports_the_heads_recorded_at,
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

// ── Embedded specifics ───────────────────────────────────────────────────────────────

#[tokio::test]
async fn reopening_the_directory_keeps_log_offsets_projections_and_audit() {
    let (dir, node) = fresh();
    let f = facility(F1);
    let p = patient(P1);
    let chain = ChainKey::Facility(f.clone());
    let positions = node
        .append(vec![append(&chain, 1, 1), append(&chain, 2, 2)])
        .await
        .unwrap();
    let r1 = NewRecord {
        position: positions[0],
        ..record(1, &f, 1, &p)
    };
    let r2 = NewRecord {
        position: positions[1],
        ..record(2, &f, 2, &p)
    };
    node.apply(testkit::record_batch(&[r1.clone(), r2.clone()]))
        .await
        .unwrap();
    let entry = node
        .append_access(testkit::access(&facility(F2), &p, vec![], 0, 1), &[])
        .await
        .unwrap();
    let log_before = node.read(0, 0, 10).await.unwrap();
    drop(node);

    let node = SqliteNode::open(dir.path()).unwrap();
    assert_eq!(node.end_offset(0).await.unwrap(), 2);
    assert_eq!(node.read(0, 0, 10).await.unwrap(), log_before);
    assert_eq!(node.projected_offsets().await.unwrap(), vec![(0, 2)]);
    assert_eq!(
        node.records_after(&p, 0, 10).await.unwrap(),
        vec![testkit::stored(&r1, 1, None), testkit::stored(&r2, 2, None)]
    );
    let (got, envelope) = node.record(event_id(2)).await.unwrap().unwrap();
    assert_eq!((got.patient_seq, envelope), (2, testkit::envelope(2)));
    let log_ctx = EventLog::chain_context(&node, &chain, event_id(3), 3)
        .await
        .unwrap();
    assert_eq!(log_ctx.context.head.seq, 2);
    let projected = ProjectionStore::chain_context(&node, &chain, event_id(3), 3)
        .await
        .unwrap();
    assert_eq!(projected.head.seq, 2);
    assert_eq!(
        node.accesses(&p, None, 0, 10).await.unwrap(),
        vec![entry.clone()]
    );

    // Writing continues where it left off: offsets, patient_seq, the audit chain.
    assert_eq!(
        node.append(vec![append(&chain, 3, 3)]).await.unwrap()[0].offset,
        2
    );
    node.apply(testkit::record_batch(&[record(3, &f, 3, &p)]))
        .await
        .unwrap();
    assert_eq!(
        node.records_after(&p, 2, 10).await.unwrap()[0].patient_seq,
        3
    );
    let next = node
        .append_access(testkit::access(&facility(F2), &p, vec![], 0, 2), &[])
        .await
        .unwrap();
    assert_eq!((next.seq, next.prev_hash), (2, entry.entry_hash));
}

#[tokio::test]
async fn a_failed_apply_leaves_nothing_of_the_batch_and_the_offsets_unchanged() {
    let (_dir, node) = fresh();
    let f = facility(F1);
    let p = patient(P1);
    let r1 = record(1, &f, 1, &p);
    node.apply(testkit::record_batch(std::slice::from_ref(&r1)))
        .await
        .unwrap();
    let stats_before = node.facility_stats().await.unwrap();
    let changes_before = *node.changes().borrow();

    // A good record, a consent event, then a record whose event id is taken.
    let mut bad = testkit::record_batch(&[record(2, &f, 2, &p)]);
    bad.projections
        .push(Projection::ConsentEvent(testkit::consent_event(
            5,
            ConsentEventKind::AttestedGrant,
            &p,
            Some(&f),
        )));
    bad.projections.push(Projection::Record(NewRecord {
        seq: 3,
        ..r1.clone()
    }));
    bad.stats.push(hrx_ports::StatsDelta {
        facility_id: f.clone(),
        accepted: 2,
        duplicates: 0,
        rejected: vec![],
        last_seen: testkit::at(9),
    });
    bad.offsets = vec![(0, 9)];
    match node.apply(bad).await {
        Err(PortError::Conflict(m)) => assert!(m.contains("records.event_id"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }

    assert_eq!(
        node.records_after(&p, 0, 10).await.unwrap(),
        vec![testkit::stored(&r1, 1, None)]
    );
    assert!(node.consent_events(&p).await.unwrap().is_empty());
    assert!(!node.event_id_taken(event_id(5)).await.unwrap());
    assert_eq!(node.projected_offsets().await.unwrap(), vec![(0, 2)]);
    assert_eq!(node.facility_stats().await.unwrap(), stats_before);
    assert_eq!(
        ProjectionStore::chain_context(&node, &ChainKey::Facility(f.clone()), event_id(9), 2)
            .await
            .unwrap()
            .head
            .seq,
        1,
        "no link of the batch"
    );
    assert_eq!(
        *node.changes().borrow(),
        changes_before,
        "no change announced"
    );

    // The patient counter was rolled back too: the next record is patient_seq 2.
    node.apply(testkit::record_batch(&[record(2, &f, 2, &p)]))
        .await
        .unwrap();
    assert_eq!(
        node.records_after(&p, 1, 10).await.unwrap()[0].patient_seq,
        2
    );
}

#[tokio::test]
async fn the_log_has_one_partition_with_dense_offsets_from_zero() {
    let (_dir, node) = fresh();
    assert_eq!(node.partitions(), 1);
    let a = ChainKey::Facility(facility(F1));
    let b = ChainKey::Registry;
    let first = node
        .append(vec![append(&a, 1, 1), append(&b, 1, 2)])
        .await
        .unwrap();
    let second = node.append(vec![append(&a, 2, 3)]).await.unwrap();
    let offsets: Vec<u64> = first.iter().chain(&second).map(|p| p.offset).collect();
    assert_eq!(offsets, vec![0, 1, 2]);
    assert!(first.iter().chain(&second).all(|p| p.partition == 0));
    assert_eq!(node.end_offset(0).await.unwrap(), 3);

    // Other partitions do not exist: reads say so, waits just time out.
    assert!(matches!(
        node.read(1, 0, 10).await,
        Err(PortError::Unavailable(_))
    ));
    assert!(matches!(
        node.end_offset(1).await,
        Err(PortError::Unavailable(_))
    ));
    let t = std::time::Instant::now();
    node.wait_for(1, 0, Duration::from_millis(50)).await;
    assert!(t.elapsed() >= Duration::from_millis(40));
}

#[tokio::test]
async fn corrections_link_whichever_arrives_first_and_never_across_patients() {
    let (_dir, node) = fresh();
    let f = facility(F1);
    let (p1, p2) = (patient(P1), patient(P2));
    // The correction is projected before the record it corrects.
    let fix = NewRecord {
        supersedes: Some(event_id(1)),
        ..record(2, &f, 2, &p1)
    };
    node.apply(testkit::record_batch(&[fix])).await.unwrap();
    node.apply(testkit::record_batch(&[record(1, &f, 1, &p1)]))
        .await
        .unwrap();
    let p1_records = node.records_after(&p1, 0, 10).await.unwrap();
    assert_eq!(p1_records[1].event_id, event_id(1));
    assert_eq!(p1_records[1].superseded_by, Some(event_id(2)));

    // Another patient's record naming p1's record links nothing.
    let foreign = NewRecord {
        supersedes: Some(event_id(1)),
        ..record(3, &f, 3, &p2)
    };
    node.apply(testkit::record_batch(&[foreign])).await.unwrap();
    let p1_records = node.records_after(&p1, 0, 10).await.unwrap();
    assert_eq!(p1_records[1].superseded_by, Some(event_id(2)));
}

#[tokio::test]
async fn the_database_is_wal_at_the_current_schema_and_a_newer_schema_is_refused() {
    let (dir, node) = fresh();
    let conn = sql(dir.path());
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    drop(node);

    // Reopening at the same version migrates nothing and works.
    drop(SqliteNode::open(dir.path()).unwrap());

    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    match SqliteNode::open(dir.path()) {
        Err(EmbeddedError::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn the_log_and_the_audit_log_refuse_edits_even_in_sql() {
    let (dir, node) = fresh();
    let p = patient(P1);
    node.append(vec![append(&ChainKey::Facility(facility(F1)), 1, 1)])
        .await
        .unwrap();
    node.append_access(testkit::access(&facility(F2), &p, vec![], 0, 1), &[])
        .await
        .unwrap();
    let conn = sql(dir.path());
    for edit in [
        "UPDATE log_entries SET payload = x'00'",
        "DELETE FROM log_entries",
        "DELETE FROM log_chain_index",
        "UPDATE audit_log SET records_returned = 40",
        "DELETE FROM audit_log",
    ] {
        let err = conn.execute(edit, []).expect_err(edit);
        assert!(err.to_string().contains("append-only"), "{edit}: {err}");
    }
    // And through the adapter, a reset leaves them whole.
    node.reset_projections().await.unwrap();
    assert_eq!(node.end_offset(0).await.unwrap(), 1);
    assert_eq!(node.accesses(&p, None, 0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_unknown_stored_code_is_reported_as_corruption() {
    let (dir, node) = fresh();
    let f = facility(F1);
    let p = patient(P1);
    node.apply(testkit::record_batch(&[NewRecord {
        kind: RecordKind::Allergy,
        ..record(1, &f, 1, &p)
    }]))
    .await
    .unwrap();
    sql(dir.path())
        .execute("UPDATE records SET kind = 99", [])
        .unwrap();
    match node.timeline(&testkit::timeline_query(&p, 10)).await {
        Err(PortError::Corrupt(m)) => {
            assert!(m.contains("kind"), "{m}");
            assert!(!m.contains(P1), "no patient id in errors: {m}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// Consent event ids are unique: a batch reusing one (which the projector's
/// `event_ids_taken` check should have turned into a rejection) is a conflict, and
/// leaves nothing of itself.
#[tokio::test]
async fn a_consent_event_id_already_projected_fails_the_batch() {
    let (_dir, node) = fresh();
    let p = patient(P1);
    let first = testkit::consent_event(1, ConsentEventKind::PatientGrant, &p, None);
    node.apply(testkit::consent_batch(std::slice::from_ref(&first)))
        .await
        .unwrap();
    let reused = ProjectionBatch {
        offsets: vec![(0, 3)],
        ..testkit::consent_batch(&[
            testkit::consent_event(2, ConsentEventKind::PatientRevocation, &p, None),
            hrx_ports::ConsentEventRow {
                kind: ConsentEventKind::PatientDecline,
                ..first.clone()
            },
        ])
    };
    match node.apply(reused).await {
        Err(PortError::Conflict(m)) => assert!(!m.contains(P1), "no patient id in {m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(node.consent_events(&p).await.unwrap(), vec![first]);
    assert!(node.projected_offsets().await.unwrap().is_empty());
}

/// A stored reader that is no facility, `national-center` or `patient` is corruption,
/// named by its column, never by its value.
#[tokio::test]
async fn an_unknown_stored_reader_is_reported_as_corruption() {
    let (dir, node) = fresh();
    let p = patient(P1);
    node.append_access(
        hrx_domain::audit::AccessEvent {
            reader: hrx_domain::audit::Reader::Patient,
            purpose: None,
            ..testkit::access(&facility(F2), &p, vec![], 0, 1)
        },
        &[],
    )
    .await
    .unwrap();
    // Under the append-only trigger: a new row with a reader nobody writes.
    let conn = sql(dir.path());
    conn.execute_batch(
        "CREATE TEMP TABLE t AS SELECT * FROM audit_log; \
         UPDATE t SET seq = seq + 1, reader = 'someone'; \
         INSERT INTO audit_log SELECT * FROM t;",
    )
    .unwrap();
    match node.accesses(&p, None, 0, 10).await {
        Err(PortError::Corrupt(m)) => {
            assert!(m.contains("reader"), "{m}");
            assert!(
                !m.contains(P1) && !m.contains("someone"),
                "no values in errors: {m}"
            );
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_and_writers_all_finish() {
    let (_dir, node) = fresh();
    let f = facility(F1);
    let p = patient(P1);
    let mut tasks = Vec::new();
    // More readers than pooled connections, so some wait for a lease.
    for _ in 0..12 {
        let node = node.clone();
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                node.timeline(&testkit::timeline_query(&p, 50))
                    .await
                    .unwrap();
                node.read(0, 0, 10).await.unwrap();
            }
        }));
    }
    let writer = {
        let node = node.clone();
        let f = f.clone();
        let p = p.clone();
        tokio::spawn(async move {
            let chain = ChainKey::Facility(f.clone());
            for n in 1..=40u64 {
                node.append(vec![append(&chain, n, n)]).await.unwrap();
                node.apply(testkit::record_batch(&[record(n, &f, n, &p)]))
                    .await
                    .unwrap();
            }
        })
    };
    let auditor = {
        let node = node.clone();
        let p = p.clone();
        tokio::spawn(async move {
            for t in 0..40 {
                node.append_access(testkit::access(&facility(F2), &p, vec![], 0, t), &[])
                    .await
                    .unwrap();
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        writer.await.unwrap();
        auditor.await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("no deadlock");

    assert_eq!(node.end_offset(0).await.unwrap(), 40);
    let records = node.records_after(&p, 0, 100).await.unwrap();
    assert_eq!(
        records.iter().map(|r| r.patient_seq).collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>()
    );
    let audit = node.accesses(&p, None, 0, 100).await.unwrap();
    assert_eq!(audit.len(), 40);
    assert!(audit.windows(2).all(|w| w[1].prev_hash == w[0].entry_hash));
}

#[tokio::test]
async fn a_re_added_key_keeps_its_revocation_and_an_unknown_revocation_changes_nothing() {
    let (_dir, node) = fresh();
    let f = facility(F1);
    let k = testkit::key(1, &f);
    let batch = |projections| ProjectionBatch {
        projections,
        ..ProjectionBatch::default()
    };
    node.apply(batch(vec![
        Projection::KeyAdded(k.clone()),
        Projection::KeyRevoked {
            key_id: k.key_id(),
            revoked_at: testkit::at(5),
            revoked_seq: 5,
            reason: "lost".into(),
        },
    ]))
    .await
    .unwrap();
    // Neither of these may stop projection: both events would be replayed forever.
    node.apply(batch(vec![
        Projection::KeyAdded(hrx_domain::verify::KeyRecord {
            owner: hrx_domain::verify::KeyOwner::Facility(facility(F2)),
            ..k.clone()
        }),
        Projection::KeyRevoked {
            key_id: testkit::key(9, &f).key_id(),
            revoked_at: testkit::at(6),
            revoked_seq: 6,
            reason: "never added".into(),
        },
        Projection::KeyRevoked {
            key_id: k.key_id(),
            revoked_at: testkit::at(7),
            revoked_seq: 7,
            reason: "again".into(),
        },
    ]))
    .await
    .unwrap();
    let keys = hrx_ports::RegistryStore::keys(&node, None).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        keys[0].key,
        hrx_domain::verify::KeyRecord {
            revoked_at: Some(testkit::at(5)),
            revoked_seq: Some(5),
            ..k
        }
    );
    assert_eq!(keys[0].revocation_reason.as_deref(), Some("lost"));
}
