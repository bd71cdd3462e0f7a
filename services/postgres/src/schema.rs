//! The schema, as versioned, forward-only migrations applied at start-up.
//!
//! `hrx_store_migrations(version, applied_at)` lists the versions applied.
//! [`MIGRATIONS`]`[i]` takes the database from version `i` to `i + 1`. Every pending
//! migration runs in ONE transaction that first takes a transaction-scoped advisory lock
//! ([`MIGRATION_LOCK`]): PostgreSQL's DDL is transactional, so a failure leaves the
//! previous version intact, and a second process starting at the same moment waits on
//! the lock, then finds the work done (even `CREATE TABLE IF NOT EXISTS` races without
//! it). Migrations are never edited once released: a change is a new entry.
//!
//! Storage conventions (the same as the embedded store's, so the two mean the same):
//! - A timestamp is two columns `<name>_s BIGINT` (Unix seconds) and `<name>_ns INTEGER`
//!   (0..1e9), compared as a row value `(s, ns)`: exact, and ordered correctly over
//!   years 1–9999, which neither `timestamptz` (microseconds) nor one nanosecond BIGINT
//!   (±292 years) could hold.
//! - Event ids are BYTEA of 16 bytes (the UUID big-endian): bytewise order is the order
//!   of their canonical text. Hashes are BYTEA of 32 bytes.
//! - Enums are their wire codes (INTEGER); lists of codes are INTEGER[] in the order
//!   given.
//! - Unsigned counters, seqs and offsets are BIGINT; values past i64::MAX are refused.
//! - Rows in `stats`, `stats_rejected` and `rejections` carry their `source`
//!   ([`SOURCE_PROJECTOR`] or [`SOURCE_INGEST`]): the projector's are rebuilt by a
//!   replay, ingest's are not in the log and survive `reset_projections`.
//! - Tables whose order is "projection order" (grants, break-glass windows, keys,
//!   rejections) have an identity `id`, assigned in batch order.

use deadpool_postgres::Client;

use crate::error::{PgError, Result, db, describe};

/// The key of the advisory lock that serialises migrations (per database): "hrx_migr".
pub(crate) const MIGRATION_LOCK: i64 = 0x6872_785f_6d69_6772;

/// Where a row of `stats`, `stats_rejected` or `rejections` came from.
pub(crate) const SOURCE_PROJECTOR: i16 = 1;
pub(crate) const SOURCE_INGEST: i16 = 2;

/// The latest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The migrations, in order. Index `i` upgrades version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2];

/// Brings the database up to [`SCHEMA_VERSION`]; returns the version found.
pub(crate) async fn migrate(client: &mut Client) -> Result<i32> {
    let what = "migrating the schema";
    let tx = client.transaction().await.map_err(|e| db(what, &e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| db(what, &e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS hrx_store_migrations (
             version    INTEGER     PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(|e| db(what, &e))?;
    let found: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM hrx_store_migrations",
            &[],
        )
        .await
        .map_err(|e| db(what, &e))?
        .try_get(0)
        .map_err(|_| PgError::Corrupt("hrx_store_migrations.version is not an INTEGER".into()))?;
    if found > SCHEMA_VERSION {
        return Err(PgError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let failed = |e: tokio_postgres::Error| PgError::Migration {
            version,
            reason: describe(&e),
        };
        tx.batch_execute(sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO hrx_store_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(failed)?;
        tracing::info!(version, "postgres store: schema migration applied");
    }
    tx.commit().await.map_err(|e| db(what, &e))?;
    Ok(found)
}

/// Version 1: the projections, the projector's offsets, the monitor's tables and the
/// audit log.
const V1: &str = r#"
-- ── Projections (emptied by reset_projections, rebuilt by replay) ──────────────────
CREATE TABLE records (
    event_id      BYTEA     PRIMARY KEY,
    facility_id   TEXT      NOT NULL,
    seq           BIGINT    NOT NULL,
    patient_id    TEXT      NOT NULL,
    kind          INTEGER   NOT NULL,
    occurred_s    BIGINT    NOT NULL,
    occurred_ns   INTEGER   NOT NULL,
    recorded_s    BIGINT    NOT NULL,
    recorded_ns   INTEGER   NOT NULL,
    author        TEXT      NOT NULL,
    sensitivity   INTEGER[] NOT NULL,
    supersedes    BYTEA,
    superseded_by BYTEA,
    event_hash    BYTEA     NOT NULL,
    log_partition BIGINT    NOT NULL,
    log_offset    BIGINT    NOT NULL,
    patient_seq   BIGINT    NOT NULL,
    body          BYTEA     NOT NULL,
    UNIQUE (patient_id, patient_seq)       -- also serves records_after
);
-- The timeline's order, read backwards (newest first): the cursor is a row comparison
-- on these same columns, which a B-tree answers as a range.
CREATE INDEX records_timeline ON records (patient_id, occurred_s, occurred_ns, event_id);
-- Corrections: "which record names this one in supersedes" (patient-scoped).
CREATE INDEX records_supersedes
    ON records (supersedes, patient_id, patient_seq) WHERE supersedes IS NOT NULL;

-- The signed envelope a record came from, for TimelineStore::record (this store is
-- apart from the log). Kept out of `records` so that timeline pages do not carry it.
CREATE TABLE record_envelopes (
    event_id     BYTEA PRIMARY KEY,
    payload_type TEXT  NOT NULL,
    key_id       TEXT  NOT NULL,
    signature    BYTEA NOT NULL,
    payload      BYTEA NOT NULL
);

-- Last patient_seq handed out per patient. Updated with ON CONFLICT DO UPDATE, which
-- row-locks the patient until commit: two projectors never interleave one patient's
-- seqs, and the seqs commit in order.
CREATE TABLE patient_counters (
    patient_id TEXT   PRIMARY KEY,
    last_seq   BIGINT NOT NULL
);

CREATE TABLE grants (
    id                BIGINT    GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    grant_event_id    BYTEA     NOT NULL UNIQUE,
    patient_id        TEXT      NOT NULL,
    granted_by        TEXT      NOT NULL,
    granted_s         BIGINT    NOT NULL,
    granted_ns        INTEGER   NOT NULL,
    grantee           TEXT,                -- facility id; NULL = any facility
    purposes          INTEGER[] NOT NULL,
    kinds             INTEGER[] NOT NULL,  -- empty = every kind
    include_sensitive INTEGER[] NOT NULL,
    data_from_s       BIGINT,
    data_from_ns      INTEGER,
    data_until_s      BIGINT,
    data_until_ns     INTEGER,
    expires_s         BIGINT    NOT NULL,
    expires_ns        INTEGER   NOT NULL,
    evidence_form_id  TEXT      NOT NULL,
    evidence_sha256   BYTEA     NOT NULL,
    revoked_s         BIGINT,
    revoked_ns        INTEGER,
    revoked_by        BYTEA
);
CREATE INDEX grants_patient ON grants (patient_id, id);

-- Break-glass windows. Reads under a window are counted in break_glass_reads, on the
-- audit side, so that they survive a reset.
CREATE TABLE break_glass (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    BYTEA   NOT NULL UNIQUE,
    patient_id  TEXT    NOT NULL,
    facility_id TEXT    NOT NULL,
    clinician   TEXT    NOT NULL,
    declared_s  BIGINT  NOT NULL,
    declared_ns INTEGER NOT NULL,
    expires_s   BIGINT  NOT NULL,
    expires_ns  INTEGER NOT NULL
);
CREATE INDEX break_glass_patient ON break_glass (patient_id, id);
CREATE INDEX break_glass_declared ON break_glass (declared_s, declared_ns, id);

CREATE TABLE facilities (
    facility_id TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    province    TEXT    NOT NULL,
    level       INTEGER NOT NULL
);

CREATE TABLE keys (
    id                BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id            TEXT    NOT NULL UNIQUE,
    public_key        BYTEA   NOT NULL,
    owner             TEXT    NOT NULL,    -- facility id, or 'root'
    valid_from_s      BIGINT  NOT NULL,
    valid_from_ns     INTEGER NOT NULL,
    revoked_s         BIGINT,
    revoked_ns        INTEGER,
    revocation_reason TEXT
);
CREATE INDEX keys_owner ON keys (owner, id);

-- The projector's chain index (what it has verified and projected). The two keys make a
-- forked chain unrepresentable.
CREATE TABLE chain_links (
    chain         TEXT   NOT NULL,         -- ChainKey::as_key(): facility id or 'registry'
    seq           BIGINT NOT NULL,
    event_id      BYTEA  NOT NULL,
    event_hash    BYTEA  NOT NULL,
    log_partition BIGINT NOT NULL,
    log_offset    BIGINT NOT NULL,
    PRIMARY KEY (chain, seq),
    UNIQUE (chain, event_id)
);

-- Where the projector resumes, per log partition: written in the batch's transaction.
CREATE TABLE projector_offsets (
    log_partition BIGINT PRIMARY KEY,
    next_offset   BIGINT NOT NULL
);

-- ── Monitor (rows tagged by source: 1 projector, reset; 2 ingest, kept) ────────────
CREATE TABLE stats (
    source       SMALLINT NOT NULL,
    facility_id  TEXT     NOT NULL,
    accepted     BIGINT   NOT NULL,
    duplicates   BIGINT   NOT NULL,
    last_seen_s  BIGINT   NOT NULL,
    last_seen_ns INTEGER  NOT NULL,
    PRIMARY KEY (source, facility_id)
);

CREATE TABLE stats_rejected (
    source      SMALLINT NOT NULL,
    facility_id TEXT     NOT NULL,
    reason      INTEGER  NOT NULL,
    n           BIGINT   NOT NULL,
    PRIMARY KEY (source, facility_id, reason)
);

CREATE TABLE rejections (
    id            BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source        SMALLINT NOT NULL,
    log_partition BIGINT,
    log_offset    BIGINT,
    facility_id   TEXT,
    event_id      BYTEA,
    seq           BIGINT,
    event_hash    BYTEA,
    reason        INTEGER  NOT NULL,
    field         TEXT,
    message       TEXT     NOT NULL,
    at_s          BIGINT   NOT NULL,
    at_ns         INTEGER  NOT NULL
);
CREATE INDEX rejections_newest ON rejections (at_s DESC, at_ns DESC, id DESC);
CREATE INDEX rejections_facility
    ON rejections (facility_id, at_s DESC, at_ns DESC, id DESC);
CREATE INDEX rejections_source ON rejections (source);

-- ── Audit (never reset; append-only) ───────────────────────────────────────────────
CREATE TABLE audit_log (
    seq                  BIGINT  PRIMARY KEY,   -- 1, 2, 3, … across the exchange
    reader               TEXT    NOT NULL,
    patient_id           TEXT    NOT NULL,
    purpose              INTEGER NOT NULL,
    action               INTEGER NOT NULL,
    bases                BYTEA   NOT NULL,      -- 17 bytes per basis: tag, event id
    records_returned     BIGINT  NOT NULL,
    records_withheld     BIGINT  NOT NULL,
    at_s                 BIGINT  NOT NULL,
    at_ns                INTEGER NOT NULL,
    prev_hash            BYTEA   NOT NULL,
    entry_hash           BYTEA   NOT NULL,
    -- Set for the entry a projected break-glass declaration wrote: replaying the log
    -- after a reset finds it and does not write a second one.
    break_glass_event_id BYTEA   UNIQUE
);
CREATE INDEX audit_patient ON audit_log (patient_id, seq);

-- The last entry of the chain, one row. Appenders in every process lock it
-- (SELECT … FOR UPDATE) before chaining, so the chain stays one line.
CREATE TABLE audit_head (
    singleton  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    seq        BIGINT  NOT NULL,
    entry_hash BYTEA   NOT NULL
);
INSERT INTO audit_head (singleton, seq, entry_hash) VALUES (TRUE, 0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION hrx_refuse_edit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION hrx_refuse_edit();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION hrx_refuse_edit();
CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION hrx_refuse_edit();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION hrx_refuse_edit();

-- Reader × author counts, added by append_access.
CREATE TABLE exchange_matrix (
    reader   TEXT   NOT NULL,
    author   TEXT   NOT NULL,
    records  BIGINT NOT NULL,
    accesses BIGINT NOT NULL,
    PRIMARY KEY (reader, author)
);

-- Reads made under each break-glass window, added by append_access.
CREATE TABLE break_glass_reads (
    window_event_id BYTEA  PRIMARY KEY,
    reads           BIGINT NOT NULL
);
"#;

/// Version 2: the clinical bodies and signed payloads (0.5–4 KB of JSON, mostly over
/// the 2 KB TOAST threshold) are compressed with LZ4 rather than the default pglz, whose
/// compression was ~3 % of the whole machine while the projector wrote (`perf record -a`
/// of `hrx bench`); LZ4 also decompresses faster on every timeline read. Only where the
/// server was built with LZ4 (Debian's and most distributions' are); elsewhere nothing
/// changes. Rows already stored keep their compression until rewritten.
const V2: &str = r#"
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE records ALTER COLUMN body SET COMPRESSION lz4;
        ALTER TABLE record_envelopes ALTER COLUMN payload SET COMPRESSION lz4;
    END IF;
END
$$;
"#;
