//! Connection settings and the schema, with forward-only migrations.
//!
//! The schema version lives in `PRAGMA user_version`. [`MIGRATIONS`]`[i]` takes the
//! database from version `i` to `i + 1`; each runs in its own transaction together with
//! the version bump, so a crash mid-migration leaves the previous version intact.
//! Migrations are never edited once released: a change is a new entry.
//!
//! Storage conventions (see the crate docs for the table map):
//! - A timestamp is two INTEGER columns `<name>_s` (Unix seconds) and `<name>_ns`
//!   (nanoseconds, 0..1e9), ordered together: exact, and ordered correctly over years
//!   1–9999, which a single nanosecond integer could not hold.
//! - Event ids are 16-byte BLOBs (the UUID's big-endian bytes): memcmp order is the order
//!   of their canonical lowercase text. Hashes are 32-byte BLOBs.
//! - Enums are their wire codes; lists of codes are comma-separated decimal text.
//! - Unsigned counters and seqs are INTEGER (i64); values past i64::MAX are refused.

use std::time::Duration;

use rusqlite::{Connection, Transaction};

use crate::error::{EmbeddedError, Result};

/// How long a connection waits for a lock held by another connection (e.g. the WAL
/// checkpoint, or an operator's `sqlite3` shell) before reporting `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the writer connection.
///
/// `synchronous=FULL`: in WAL mode, `NORMAL` syncs only at checkpoints, so a power cut
/// could lose commits that ingest had already answered "accepted" and that readers had
/// seen; `FULL` syncs the WAL at every commit. Appends are batched by ingest, so the
/// fsync is paid per batch, not per event.
pub(crate) fn configure_writer(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(EmbeddedError::NotWal(mode));
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    Ok(())
}

/// Settings of a reader connection: `query_only`, so a bug can never write through one.
pub(crate) fn configure_reader(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA query_only = ON;")?;
    Ok(())
}

/// The latest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`SCHEMA_VERSION`]; returns the version found.
pub(crate) fn migrate(conn: &mut Connection) -> Result<i64> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(EmbeddedError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let step = |tx: &Transaction<'_>| -> rusqlite::Result<()> {
            tx.execute_batch(sql)?;
            // user_version is part of the database header, so it commits (or rolls back)
            // with the migration.
            tx.pragma_update(None, "user_version", version)
        };
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        step(&tx)
            .and_then(|()| tx.commit())
            .map_err(|source| EmbeddedError::Migration { version, source })?;
        tracing::info!(version, "embedded store: schema migrated");
    }
    Ok(found)
}

/// Where a row of `stats`, `stats_rejected` or `rejections` came from. Projector rows are
/// rebuilt from the log by `reset_projections` + replay; ingest's refusals are in the
/// log too (ingest reports), projected like the rest. Rows with source 2 were written
/// by ingest directly before the log held its reports: they are in no log, so a reset
/// keeps them.
pub(crate) const SOURCE_PROJECTOR: i64 = 1;

/// The migrations, in order. Index `i` upgrades version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

/// Version 1: the log, the projections, the audit log and the monitor's tables.
const V1: &str = r#"
-- ── The event log ──────────────────────────────────────────────────────────────────
-- Partition 0 of the embedded log. Append-only: the triggers below refuse edits, so
-- neither a bug nor `reset_projections` can touch the source of truth.
CREATE TABLE log_entries (
    log_offset   INTEGER PRIMARY KEY,      -- 0, 1, 2, …
    payload_type TEXT    NOT NULL,
    key_id       TEXT    NOT NULL,
    signature    BLOB    NOT NULL,
    appended_s   INTEGER NOT NULL,
    appended_ns  INTEGER NOT NULL,
    payload      BLOB    NOT NULL          -- last: large values overflow, the rest stays inline
);

-- Ingest's chain index over the log. The two keys make a forked chain unrepresentable:
-- an append taking a used (chain, seq) or (chain, event_id) fails as a whole.
CREATE TABLE log_chain_index (
    chain      TEXT    NOT NULL,           -- ChainKey::as_key(): facility id or 'registry'
    seq        INTEGER NOT NULL,
    event_id   BLOB    NOT NULL,
    event_hash BLOB    NOT NULL,
    log_offset INTEGER NOT NULL UNIQUE REFERENCES log_entries (log_offset),
    PRIMARY KEY (chain, seq),
    UNIQUE (chain, event_id)
) WITHOUT ROWID;

CREATE TRIGGER log_entries_no_update BEFORE UPDATE ON log_entries
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER log_entries_no_delete BEFORE DELETE ON log_entries
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER log_chain_index_no_update BEFORE UPDATE ON log_chain_index
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER log_chain_index_no_delete BEFORE DELETE ON log_chain_index
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;

-- ── Projections (deleted by reset_projections, rebuilt by replay) ──────────────────
CREATE TABLE records (
    event_id      BLOB    NOT NULL UNIQUE,
    facility_id   TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    patient_id    TEXT    NOT NULL,
    kind          INTEGER NOT NULL,
    occurred_s    INTEGER NOT NULL,
    occurred_ns   INTEGER NOT NULL,
    recorded_s    INTEGER NOT NULL,
    recorded_ns   INTEGER NOT NULL,
    author        TEXT    NOT NULL,
    sensitivity   TEXT    NOT NULL,
    supersedes    BLOB,
    superseded_by BLOB,
    event_hash    BLOB    NOT NULL,
    log_partition INTEGER NOT NULL,
    log_offset    INTEGER NOT NULL,
    patient_seq   INTEGER NOT NULL,
    body          BLOB    NOT NULL,        -- last: up to 512 KiB, overflows
    UNIQUE (patient_id, patient_seq)       -- also serves records_after
);
-- The timeline's order, with the filter columns included so that kind and facility
-- filters are decided in the index before a row (and its body) is read.
CREATE INDEX records_timeline
    ON records (patient_id, occurred_s DESC, occurred_ns DESC, event_id DESC, kind, facility_id);
-- Corrections: "which record names this one in supersedes" (patient-scoped).
CREATE INDEX records_supersedes
    ON records (supersedes, patient_id, patient_seq) WHERE supersedes IS NOT NULL;

-- Last patient_seq handed out per patient: the follow cursor's counter.
CREATE TABLE patient_counters (
    patient_id TEXT    PRIMARY KEY,
    last_seq   INTEGER NOT NULL
) WITHOUT ROWID;

-- Grants; rowid order is projection order.
CREATE TABLE grants (
    grant_event_id    BLOB    NOT NULL UNIQUE,
    patient_id        TEXT    NOT NULL,
    granted_by        TEXT    NOT NULL,
    granted_s         INTEGER NOT NULL,
    granted_ns        INTEGER NOT NULL,
    grantee           TEXT,                -- facility id; NULL = any facility
    purposes          TEXT    NOT NULL,
    kinds             TEXT    NOT NULL,    -- '' = every kind
    include_sensitive TEXT    NOT NULL,
    data_from_s       INTEGER,
    data_from_ns      INTEGER,
    data_until_s      INTEGER,
    data_until_ns     INTEGER,
    expires_s         INTEGER NOT NULL,
    expires_ns        INTEGER NOT NULL,
    evidence_form_id  TEXT    NOT NULL,
    evidence_sha256   BLOB    NOT NULL,
    revoked_s         INTEGER,
    revoked_ns        INTEGER,
    revoked_by        BLOB
);
CREATE INDEX grants_patient ON grants (patient_id);

-- Break-glass windows; rowid order is projection order. Reads under a window are
-- counted in break_glass_reads, on the audit side, so that they survive a reset.
CREATE TABLE break_glass (
    event_id    BLOB    NOT NULL UNIQUE,
    patient_id  TEXT    NOT NULL,
    facility_id TEXT    NOT NULL,
    clinician   TEXT    NOT NULL,
    declared_s  INTEGER NOT NULL,
    declared_ns INTEGER NOT NULL,
    expires_s   INTEGER NOT NULL,
    expires_ns  INTEGER NOT NULL
);
CREATE INDEX break_glass_patient ON break_glass (patient_id);
CREATE INDEX break_glass_declared ON break_glass (declared_s, declared_ns);

CREATE TABLE facilities (
    facility_id TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    province    TEXT    NOT NULL,
    level       INTEGER NOT NULL
) WITHOUT ROWID;

-- Registered keys; rowid order is registration order.
CREATE TABLE keys (
    key_id            TEXT    NOT NULL UNIQUE,
    public_key        BLOB    NOT NULL,
    owner             TEXT    NOT NULL,    -- facility id, or 'root'
    valid_from_s      INTEGER NOT NULL,
    valid_from_ns     INTEGER NOT NULL,
    revoked_s         INTEGER,
    revoked_ns        INTEGER,
    revocation_reason TEXT
);
CREATE INDEX keys_owner ON keys (owner);

-- The projector's chain index (what it has verified and projected).
CREATE TABLE chain_links (
    chain         TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    event_id      BLOB    NOT NULL,
    event_hash    BLOB    NOT NULL,
    log_partition INTEGER NOT NULL,
    log_offset    INTEGER NOT NULL,
    PRIMARY KEY (chain, seq),
    UNIQUE (chain, event_id)
) WITHOUT ROWID;

-- Where the projector resumes, per log partition: written in the batch's transaction.
CREATE TABLE projector_offsets (
    log_partition INTEGER PRIMARY KEY,
    next_offset   INTEGER NOT NULL
);

-- ── Monitor (rows tagged by source: 1 projector, reset; 2 ingest, kept) ────────────
CREATE TABLE stats (
    source       INTEGER NOT NULL,
    facility_id  TEXT    NOT NULL,
    accepted     INTEGER NOT NULL,
    duplicates   INTEGER NOT NULL,
    last_seen_s  INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    PRIMARY KEY (source, facility_id)
) WITHOUT ROWID;

CREATE TABLE stats_rejected (
    source      INTEGER NOT NULL,
    facility_id TEXT    NOT NULL,
    reason      INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (source, facility_id, reason)
) WITHOUT ROWID;

CREATE TABLE rejections (
    id            INTEGER PRIMARY KEY,
    source        INTEGER NOT NULL,
    log_partition INTEGER,
    log_offset    INTEGER,
    facility_id   TEXT,
    event_id      BLOB,
    seq           INTEGER,
    event_hash    BLOB,
    reason        INTEGER NOT NULL,
    field         TEXT,
    message       TEXT    NOT NULL,
    at_s          INTEGER NOT NULL,
    at_ns         INTEGER NOT NULL
);
CREATE INDEX rejections_newest ON rejections (at_s DESC, at_ns DESC, id DESC);
CREATE INDEX rejections_facility ON rejections (facility_id, at_s DESC, at_ns DESC, id DESC);
CREATE INDEX rejections_source ON rejections (source);

-- ── Audit (never reset; append-only) ───────────────────────────────────────────────
CREATE TABLE audit_log (
    seq                  INTEGER PRIMARY KEY,   -- 1, 2, 3, … across the exchange
    reader               TEXT    NOT NULL,
    patient_id           TEXT    NOT NULL,
    purpose              INTEGER NOT NULL,
    action               INTEGER NOT NULL,
    bases                BLOB    NOT NULL,      -- 17 bytes per basis: tag, event id
    records_returned     INTEGER NOT NULL,
    records_withheld     INTEGER NOT NULL,
    at_s                 INTEGER NOT NULL,
    at_ns                INTEGER NOT NULL,
    prev_hash            BLOB    NOT NULL,
    entry_hash           BLOB    NOT NULL,
    -- Set for the entry a projected break-glass declaration wrote: replaying the log
    -- after a reset finds it and does not write a second one.
    break_glass_event_id BLOB    UNIQUE
);
CREATE INDEX audit_patient ON audit_log (patient_id, seq);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- Reader × author counts, added by append_access.
CREATE TABLE exchange_matrix (
    reader   TEXT    NOT NULL,
    author   TEXT    NOT NULL,
    records  INTEGER NOT NULL,
    accesses INTEGER NOT NULL,
    PRIMARY KEY (reader, author)
) WITHOUT ROWID;

-- Reads made under each break-glass window, added by append_access.
CREATE TABLE break_glass_reads (
    window_event_id BLOB    PRIMARY KEY,
    reads           INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Version 2: consent the patient controls. Consent events (key enrollments, grants,
/// revocations, requests, patient statements) replace the grants table: the consent
/// state is folded from them when read. The audit log records who read (a facility,
/// the national center or the patient) and whether the access was refused, in hash
/// format 2; older entries keep format 1.
///
/// Projections are rebuilt from the log after this migration (their offsets are
/// cleared), so that every consent event is judged by the new rules and no grant
/// projected under the old ones survives.
const V2: &str = r#"
DROP TABLE grants;
CREATE TABLE consent_events (
    event_id     BLOB    NOT NULL UNIQUE,
    patient_id   TEXT    NOT NULL,
    kind         INTEGER NOT NULL,
    facility_id  TEXT,                     -- NULL: a patient statement
    received_s   INTEGER NOT NULL,
    received_ns  INTEGER NOT NULL,
    payload_type TEXT    NOT NULL,
    key_id       TEXT    NOT NULL,
    signature    BLOB    NOT NULL,
    payload      BLOB    NOT NULL
);
CREATE INDEX consent_events_patient ON consent_events (patient_id);
CREATE INDEX consent_events_kind ON consent_events (kind, received_s DESC, received_ns DESC);

ALTER TABLE break_glass ADD COLUMN reason TEXT NOT NULL DEFAULT '';
CREATE INDEX break_glass_facility ON break_glass (facility_id, declared_s, declared_ns);
-- A facility's standing for a patient: its latest record.
CREATE INDEX records_author ON records (facility_id, patient_id, recorded_s, recorded_ns);

ALTER TABLE audit_log ADD COLUMN format INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit_log ADD COLUMN reader_kind INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit_log ADD COLUMN outcome INTEGER NOT NULL DEFAULT 1;
CREATE INDEX audit_patient_reader ON audit_log (patient_id, reader, seq);

-- Patient request ids already used (a signed view request is single-use).
CREATE TABLE patient_request_ids (
    request_id BLOB    PRIMARY KEY,
    used_s     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX patient_request_ids_used ON patient_request_ids (used_s);

DELETE FROM records;
DELETE FROM patient_counters;
DELETE FROM break_glass;
DELETE FROM facilities;
DELETE FROM keys;
DELETE FROM chain_links;
DELETE FROM projector_offsets;
DELETE FROM stats WHERE source = 1;
DELETE FROM stats_rejected WHERE source = 1;
DELETE FROM rejections WHERE source = 1;
"#;

/// Version 3: time the exchange can vouch for. Each log entry keeps the registry head
/// seq ingest judged its key against (its appended time is the receive time ingest
/// chose); chain indexes keep each event's recorded_at, so the next one cannot claim an
/// earlier time; keys keep the registry seqs that added and revoked them. Rows written
/// before have NULLs: entries judged against the whole registry, heads without a time.
const V3: &str = r#"
ALTER TABLE log_entries ADD COLUMN registry_seq INTEGER;
ALTER TABLE log_chain_index ADD COLUMN recorded_s INTEGER;
ALTER TABLE log_chain_index ADD COLUMN recorded_ns INTEGER;
ALTER TABLE chain_links ADD COLUMN recorded_s INTEGER;
ALTER TABLE chain_links ADD COLUMN recorded_ns INTEGER;
ALTER TABLE keys ADD COLUMN registered_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN revoked_seq INTEGER;
"#;

/// Version 4: event ids are unique across chains in the log. Ingest looks an incoming
/// id up by itself (not only within its chain) and the append refuses one another chain
/// holds.
const V4: &str = r#"
CREATE INDEX log_chain_index_event_id ON log_chain_index (event_id);
"#;

/// Version 5: revoked client certificates, a projection of the registry chain (emptied
/// by a reset, rebuilt by replay, like `keys`).
const V5: &str = r#"
CREATE TABLE revoked_certificates (
    serial        TEXT    PRIMARY KEY,
    principal     TEXT    NOT NULL,
    revoked_s     INTEGER NOT NULL,
    revoked_ns    INTEGER NOT NULL,
    reason        TEXT    NOT NULL,
    registry_seq  INTEGER NOT NULL
) STRICT;
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_set_the_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        assert_eq!(migrate(&mut conn).unwrap(), SCHEMA_VERSION);
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(EmbeddedError::SchemaTooNew { .. })
        ));
    }
}
