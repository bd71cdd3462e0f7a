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
//! - Rows in `stats`, `stats_rejected` and `rejections` carry their `source`: the
//!   projector's ([`SOURCE_PROJECTOR`], which since ingest reports are in the log
//!   include ingest's refusals) are rebuilt by a replay; source 2 rows were written by
//!   ingest directly before that, are in no log, and survive `reset_projections`.
//! - Tables whose order is "projection order" (consent events, break-glass windows,
//!   keys, rejections) have an identity `id`, assigned in batch order.
//! - A signed envelope is four columns: `payload_type TEXT`, `key_id TEXT`,
//!   `signature BYTEA`, `payload BYTEA`, the bytes as signed.

use deadpool_postgres::Client;

use crate::error::{PgError, Result, db, describe};

/// The key of the advisory lock that serialises migrations (per database): "hrx_migr".
pub(crate) const MIGRATION_LOCK: i64 = 0x6872_785f_6d69_6772;

/// Where a row of `stats`, `stats_rejected` or `rejections` came from (2: written by
/// ingest before its reports went into the log).
pub(crate) const SOURCE_PROJECTOR: i16 = 1;

/// The latest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The migrations, in order. Index `i` upgrades version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

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

/// Version 3: consent the patient controls (the embedded store's version 2). Consent
/// events (key enrollments, grants, revocations, requests, patient statements) replace
/// the grants table: the consent state is folded from their envelopes when read. The
/// audit log records who read (a facility, the national center or the patient) and
/// whether the access was refused, in hash format 2; older entries keep format 1, which
/// the defaults give them.
///
/// Projections are rebuilt from the log after this migration (every projection and the
/// projector's offsets are cleared, as `reset_projections` does), so that every consent
/// event is judged by the new rules and nothing projected under the old ones survives.
/// The audit log and what hangs off it, and ingest's rows, are kept.
const V3: &str = r#"
DROP TABLE grants;
CREATE TABLE consent_events (
    id           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     BYTEA   NOT NULL UNIQUE,
    patient_id   TEXT    NOT NULL,
    kind         INTEGER NOT NULL,
    facility_id  TEXT,                     -- NULL: a patient statement
    received_s   BIGINT  NOT NULL,
    received_ns  INTEGER NOT NULL,
    payload_type TEXT    NOT NULL,
    key_id       TEXT    NOT NULL,
    signature    BYTEA   NOT NULL,
    payload      BYTEA   NOT NULL
);
CREATE INDEX consent_events_patient ON consent_events (patient_id, id);
CREATE INDEX consent_events_kind
    ON consent_events (kind, received_s DESC, received_ns DESC, id DESC);

ALTER TABLE break_glass ADD COLUMN reason TEXT NOT NULL DEFAULT '';
-- break_glass_declared_since: a facility's declarations after a time.
CREATE INDEX break_glass_facility ON break_glass (facility_id, declared_s, declared_ns);
-- A facility's standing for a patient: its latest record.
CREATE INDEX records_author ON records (facility_id, patient_id, recorded_s, recorded_ns);

-- A constant default adds the columns without rewriting the table (and without firing
-- the append-only triggers, which guard UPDATE and DELETE).
ALTER TABLE audit_log
    ADD COLUMN format      INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN reader_kind INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN outcome     INTEGER NOT NULL DEFAULT 1;
CREATE INDEX audit_patient_reader ON audit_log (patient_id, reader, seq);

-- Patient request ids already used (a signed view request is single-use).
CREATE TABLE patient_request_ids (
    request_id BYTEA   PRIMARY KEY,
    used_s     BIGINT  NOT NULL,
    used_ns    INTEGER NOT NULL
);
CREATE INDEX patient_request_ids_used ON patient_request_ids (used_s, used_ns);

TRUNCATE records, record_envelopes, patient_counters, break_glass, facilities, keys,
    chain_links, projector_offsets;
DELETE FROM stats WHERE source = 1;
DELETE FROM stats_rejected WHERE source = 1;
DELETE FROM rejections WHERE source = 1;
"#;

/// Version 4: time the exchange can vouch for (the embedded store's version 3). Chain
/// links keep their event's recorded_at, so that the next event of the chain cannot
/// claim an earlier one; keys keep the registry seqs of the events that added and
/// revoked them, so that an event is judged against the registry as ingest knew it.
/// Rows projected before have NULL times (heads without a time) and seqs 0 and NULL (a
/// key known from the start; a revocation every event sees), as the embedded store's;
/// nothing is cleared, and a replay fills them in. Nullable columns and a constant
/// default: no table is rewritten.
const V4: &str = r#"
ALTER TABLE chain_links
    ADD COLUMN recorded_s  BIGINT,
    ADD COLUMN recorded_ns INTEGER;
ALTER TABLE keys
    ADD COLUMN registered_seq BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN revoked_seq    BIGINT;
"#;

/// Version 5: revoked client certificates, a projection of the registry chain (emptied
/// by a reset, rebuilt by replay, like `keys`).
const V5: &str = r#"
CREATE TABLE revoked_certificates (
    serial        TEXT    PRIMARY KEY,
    principal     TEXT    NOT NULL,
    revoked_s     BIGINT  NOT NULL,
    revoked_ns    INTEGER NOT NULL,
    reason        TEXT    NOT NULL,
    registry_seq  BIGINT  NOT NULL
);
"#;

#[cfg(test)]
mod tests {
    //! Upgrading a database that holds data, against a real server named by
    //! `HRX_TEST_DATABASE_URL` (as in `tests/behaviour.rs`): skipped without one, unless
    //! `HRX_TEST_REQUIRE_SERVICES=1`.

    use hrx_domain::audit::{AccessAction, AccessEvent, AccessOutcome, AuditFormat, Reader};
    use hrx_domain::consent::{Basis, ConsentForm};
    use hrx_domain::{Purpose, Sha256};
    use hrx_ports::testkit::{self, F1, F2, P1, event_id, facility, patient};
    use hrx_ports::{
        AuditStore, ChainKey, ConsentStore, MonitorStore, ProjectionStore, TimelineStore,
    };

    use super::{SCHEMA_VERSION, V1, V2, V3};
    use crate::PgStore;

    fn admin_url() -> Option<String> {
        match std::env::var("HRX_TEST_DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Some(url),
            _ if std::env::var("HRX_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") => {
                panic!("HRX_TEST_REQUIRE_SERVICES=1 but HRX_TEST_DATABASE_URL is not set")
            }
            _ => {
                eprintln!("hrx-postgres: HRX_TEST_DATABASE_URL is not set; skipping this test");
                None
            }
        }
    }

    async fn connect(url: &str) -> tokio_postgres::Client {
        let (client, connection) = hrx_identity::backend::connect_postgres(url)
            .await
            .unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}"));
        tokio::spawn(connection);
        client
    }

    /// A database of its own, dropped when this goes out of scope (a panic included).
    struct Scratch {
        admin: String,
        name: String,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let (admin, name) = (self.admin.clone(), self.name.clone());
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(async {
                        connect(&admin)
                            .await
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await
                    })
            })
            .join();
        }
    }

    /// An entry hash in format 1, as hrx wrote them before version 3, computed here from
    /// the format's definition rather than by the code under test.
    fn v1_hash(seq: u64, prev: &Sha256, e: &AccessEvent) -> Sha256 {
        let mut buf = b"hrx-audit-v1".to_vec();
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(prev.as_bytes());
        for s in [e.reader.as_str(), e.patient.as_str()] {
            buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        buf.extend_from_slice(&e.purpose.map_or(0, Purpose::code).to_be_bytes());
        buf.extend_from_slice(&e.action.code().to_be_bytes());
        buf.extend_from_slice(&(e.bases.len() as u32).to_be_bytes());
        for b in &e.bases {
            let (tag, id) = match b {
                Basis::Author => (1u8, [0u8; 16]),
                Basis::Consent { grant, .. } => (2, grant.to_bytes()),
                Basis::BreakGlass(id) => (3, id.to_bytes()),
            };
            buf.push(tag);
            buf.extend_from_slice(&id);
        }
        buf.extend_from_slice(&e.records_returned.to_be_bytes());
        buf.extend_from_slice(&e.records_withheld.to_be_bytes());
        buf.extend_from_slice(&e.at.unix_nanos().to_be_bytes());
        Sha256::digest(&buf)
    }

    /// A version 2 database with projections, ingest's rows and a format-1 audit entry
    /// upgrades to version 3: the grants table is gone and consent events are there
    /// (empty), every projection and offset is cleared for a replay, ingest's rows, the
    /// audit log, the exchange matrix and the break-glass reads are kept; the old entry
    /// reads back in format 1, intact, and the chain continues from it in format 2.
    #[tokio::test]
    async fn version_3_keeps_the_audit_log_and_clears_projections_for_a_replay() {
        let Some(admin) = admin_url() else { return };
        let name = format!("hrx_test_v3_{}", crate::instance_id().replace('-', "_"));
        connect(&admin)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let _scratch = Scratch {
            admin: admin.clone(),
            name: name.clone(),
        };
        let url = hrx_identity::backend::postgres_url_with_dbname(&admin, &name);

        // Version 2, as an older hrx left it.
        let sql = connect(&url).await;
        sql.batch_execute(
            "CREATE TABLE hrx_store_migrations (
                 version    INTEGER     PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .expect("the migrations table");
        sql.batch_execute(V1).await.expect("version 1");
        sql.batch_execute(V2).await.expect("version 2");
        sql.batch_execute("INSERT INTO hrx_store_migrations (version) VALUES (1), (2)")
            .await
            .expect("record versions");

        let (f1, f2, p) = (facility(F1), facility(F2), patient(P1));
        let r = testkit::record(1, &f1, 1, &p);
        let old = AccessEvent {
            reader: Reader::Facility(f2.clone()),
            patient: p.clone(),
            purpose: Some(Purpose::Referral),
            action: AccessAction::GetTimeline,
            bases: vec![
                Basis::Author,
                Basis::Consent {
                    grant: event_id(3),
                    form: ConsentForm::PatientSigned,
                },
                Basis::BreakGlass(event_id(4)),
            ],
            records_returned: 2,
            records_withheld: 1,
            at: testkit::at(50),
            outcome: AccessOutcome::Allowed,
        };
        let old_hash = v1_hash(1, &Sha256::ZERO, &old);
        let bases = crate::codec::bases(&old.bases);
        let (at_s, at_ns) = crate::codec::ts(old.at);
        sql.execute(
            "INSERT INTO audit_log (seq, reader, patient_id, purpose, action, bases, \
               records_returned, records_withheld, at_s, at_ns, prev_hash, entry_hash) \
             VALUES (1, $1, $2, $3, $4, $5, 2, 1, $6, $7, $8, $9)",
            &[
                &f2.as_str(),
                &p.as_str(),
                &Purpose::Referral.code(),
                &AccessAction::GetTimeline.code(),
                &bases,
                &at_s,
                &at_ns,
                &Sha256::ZERO.as_bytes().as_slice(),
                &old_hash.as_bytes().as_slice(),
            ],
        )
        .await
        .expect("a format-1 audit entry");
        sql.execute(
            "UPDATE audit_head SET seq = 1, entry_hash = $1",
            &[&old_hash.as_bytes().as_slice()],
        )
        .await
        .expect("the audit head");
        let (rec_s, rec_ns) = crate::codec::ts(r.recorded_at);
        sql.execute(
            "INSERT INTO records (event_id, facility_id, seq, patient_id, kind, occurred_s, \
               occurred_ns, recorded_s, recorded_ns, author, sensitivity, event_hash, \
               log_partition, log_offset, patient_seq, body) \
             VALUES ($1, $2, 1, $3, 1, 0, 0, $4, $5, 'BS', '{}', $6, 0, 1, 1, 'x')",
            &[
                &crate::codec::id(&r.event_id),
                &f1.as_str(),
                &p.as_str(),
                &rec_s,
                &rec_ns,
                &r.event_hash.as_bytes().as_slice(),
            ],
        )
        .await
        .expect("a record");
        sql.batch_execute(&format!(
            "INSERT INTO patient_counters VALUES ('{P1}', 1);
             INSERT INTO grants (grant_event_id, patient_id, granted_by, granted_s, granted_ns,
                 purposes, kinds, include_sensitive, expires_s, expires_ns, evidence_form_id,
                 evidence_sha256)
               VALUES ('\\x{grant}', '{P1}', '{F1}', 1, 0, '{{1}}', '{{}}', '{{}}', 9, 0, 'F',
                 '\\x00');
             INSERT INTO break_glass (event_id, patient_id, facility_id, clinician, declared_s,
                 declared_ns, expires_s, expires_ns)
               VALUES ('\\x{window}', '{P1}', '{F2}', 'BS', 1, 0, 2, 0);
             INSERT INTO break_glass_reads VALUES ('\\x{window}', 3);
             INSERT INTO exchange_matrix VALUES ('{F2}', '{F1}', 2, 1);
             INSERT INTO chain_links VALUES ('{F1}', 1, '\\x{record}', '\\x00', 0, 1),
                                            ('registry', 1, '\\x{grant}', '\\x00', 3, 0);
             INSERT INTO projector_offsets VALUES (0, 2), (3, 1);
             INSERT INTO stats VALUES (1, '{F1}', 1, 0, 1, 0), (2, '{F2}', 0, 0, 2, 0);
             INSERT INTO stats_rejected VALUES (1, '{F1}', 3, 1), (2, '{F2}', 4, 1);
             INSERT INTO rejections (source, facility_id, reason, message, at_s, at_ns)
               VALUES (1, '{F1}', 3, 'projected', 1, 0), (2, '{F2}', 4, 'ingest', 2, 0);",
            grant = hex(&event_id(3).to_bytes()),
            window = hex(&event_id(4).to_bytes()),
            record = hex(&r.event_id.to_bytes()),
        ))
        .await
        .expect("version 2 data");

        // The upgrade.
        let store = PgStore::connect(&url, 2)
            .await
            .expect("connect and migrate");
        let versions: Vec<i32> = sql
            .query(
                "SELECT version FROM hrx_store_migrations ORDER BY version",
                &[],
            )
            .await
            .expect("versions")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        let exists = |table: &'static str| {
            let sql = &sql;
            async move {
                sql.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                    .await
                    .expect("to_regclass")
                    .get::<_, bool>(0)
            }
        };
        assert!(!exists("grants").await, "the grants table is dropped");
        assert!(exists("consent_events").await);
        assert!(exists("patient_request_ids").await);

        // Projections and offsets cleared, for a replay under the new rules.
        assert!(store.records_after(&p, 0, 10).await.unwrap().is_empty());
        assert!(store.record_facts(&p).await.unwrap().is_empty());
        assert!(store.break_glass(&p).await.unwrap().is_empty());
        assert!(store.consent_events(&p).await.unwrap().is_empty());
        assert!(store.projected_offsets().await.unwrap().is_empty());
        for chain in [ChainKey::Facility(f1.clone()), ChainKey::Registry] {
            let head = ProjectionStore::chain_context(&store, &chain, event_id(9), 2)
                .await
                .unwrap()
                .head;
            assert_eq!(head.seq, 0, "chain {chain}");
        }
        let counters: i64 = sql
            .query_one("SELECT count(*) FROM patient_counters", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(counters, 0, "patient_seq restarts at 1 on the replay");
        // Ingest's rows are kept, the projector's are not.
        let rejections = store.rejections(None, 10).await.unwrap();
        assert_eq!(
            rejections
                .iter()
                .map(|r| r.message.as_str())
                .collect::<Vec<_>>(),
            vec!["ingest"]
        );
        let stats = store.facility_stats().await.unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].facility_id, f2);

        // The audit side is kept; the old entry is format 1 and intact.
        let entries = store.accesses(&p, None, 0, 10).await.unwrap();
        assert_eq!(entries.len(), 1);
        let entry = &entries[0];
        assert_eq!(entry.format, AuditFormat::V1);
        assert_eq!(entry.event, old);
        assert_eq!(entry.entry_hash, old_hash);
        assert!(entry.is_intact(), "a format-1 entry still verifies");
        assert_eq!(store.exchange_matrix().await.unwrap().len(), 1);
        let reads: i64 = sql
            .query_one("SELECT reads FROM break_glass_reads", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(reads, 3);
        let next = store
            .append_access(testkit::access(&f2, &p, vec![Basis::Author], 0, 60), &[])
            .await
            .unwrap();
        assert_eq!(
            (next.seq, next.prev_hash, next.format),
            (2, old_hash, AuditFormat::V2)
        );
        assert!(next.is_intact());
        assert_eq!(
            store.accesses(&p, None, 0, 10).await.unwrap(),
            vec![entry.clone(), next]
        );

        // A second start finds nothing to do.
        drop(store);
        PgStore::connect(&url, 2).await.expect("reconnect");
        let n: i64 = sql
            .query_one("SELECT count(*) FROM hrx_store_migrations", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, i64::from(SCHEMA_VERSION));
    }

    /// A version 3 database with keys (one revoked) and chain links upgrades to version
    /// 4 keeping them all, and with the projector's offsets (nothing is cleared): the
    /// old keys read back as known from registry seq 0, with no revocation seq; the old
    /// heads have no recorded_at. New rows keep both, beside the old ones.
    #[tokio::test]
    async fn version_4_keeps_projections_and_reads_old_rows_as_unrecorded() {
        use hrx_domain::chain::ChainHead;
        use hrx_domain::verify::KeyRecord;
        use hrx_ports::{ChainLink, Projection, ProjectionBatch, RegistryStore};

        let Some(admin) = admin_url() else { return };
        let name = format!("hrx_test_v4_{}", crate::instance_id().replace('-', "_"));
        connect(&admin)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create the test database");
        let _scratch = Scratch {
            admin: admin.clone(),
            name: name.clone(),
        };
        let url = hrx_identity::backend::postgres_url_with_dbname(&admin, &name);

        // Version 3, as the previous hrx left it.
        let sql = connect(&url).await;
        sql.batch_execute(
            "CREATE TABLE hrx_store_migrations (
                 version    INTEGER     PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .expect("the migrations table");
        for (v, migration) in [V1, V2, V3].into_iter().enumerate() {
            sql.batch_execute(migration).await.expect("an old version");
            sql.execute(
                "INSERT INTO hrx_store_migrations (version) VALUES ($1)",
                &[&(v as i32 + 1)],
            )
            .await
            .expect("record the version");
        }
        let f1 = facility(F1);
        let (k1, k2) = (testkit::key(1, &f1), testkit::key(2, &f1));
        let (k1_s, k1_ns) = crate::codec::ts(k1.valid_from);
        let (revoked_s, revoked_ns) = crate::codec::ts(testkit::at(40));
        for (k, revoked) in [(&k1, None), (&k2, Some((revoked_s, revoked_ns)))] {
            sql.execute(
                "INSERT INTO keys (key_id, public_key, owner, valid_from_s, valid_from_ns, \
                   revoked_s, revoked_ns, revocation_reason) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &k.key_id().as_str(),
                    &k.public_key.as_bytes().as_slice(),
                    &F1,
                    &k1_s,
                    &k1_ns,
                    &revoked.map(|r| r.0),
                    &revoked.map(|r| r.1),
                    &revoked.map(|_| "lost"),
                ],
            )
            .await
            .expect("a key");
        }
        let hash = testkit::envelope(1).event_hash();
        sql.execute(
            "INSERT INTO chain_links VALUES ($1, 1, $2, $3, 0, 1)",
            &[
                &F1,
                &crate::codec::id(&event_id(1)),
                &hash.as_bytes().as_slice(),
            ],
        )
        .await
        .expect("a chain link");
        sql.batch_execute("INSERT INTO projector_offsets VALUES (0, 2)")
            .await
            .expect("an offset");

        let store = PgStore::connect(&url, 2)
            .await
            .expect("connect and migrate");
        let mut keys: Vec<KeyRecord> = store
            .keys(None)
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.key)
            .collect();
        keys.sort_by_key(|k| k.key_id());
        let mut want = vec![
            KeyRecord {
                registered_seq: 0,
                ..k1.clone()
            },
            KeyRecord {
                registered_seq: 0,
                revoked_at: Some(testkit::at(40)),
                revoked_seq: None,
                ..k2.clone()
            },
        ];
        want.sort_by_key(|k| k.key_id());
        assert_eq!(
            keys, want,
            "old keys: known from seq 0, revoked without a seq"
        );
        assert_eq!(store.projected_offsets().await.unwrap(), vec![(0, 2)]);
        let c = ChainKey::Facility(f1.clone());
        let head = ProjectionStore::chain_context(&store, &c, event_id(2), 2)
            .await
            .unwrap()
            .head;
        assert_eq!(
            head,
            ChainHead {
                seq: 1,
                event_hash: hash,
                event_id: Some(event_id(1)),
                recorded_at: None,
            },
            "an old head has no recorded_at"
        );

        // New rows beside the old ones.
        let k3 = testkit::key(3, &f1);
        store
            .apply(ProjectionBatch {
                projections: vec![
                    Projection::KeyAdded(k3.clone()),
                    Projection::KeyRevoked {
                        key_id: k1.key_id(),
                        revoked_at: testkit::at(50),
                        revoked_seq: 4,
                        reason: "rotated".into(),
                    },
                ],
                links: vec![ChainLink {
                    chain: c.clone(),
                    seq: 2,
                    event_id: event_id(2),
                    event_hash: testkit::envelope(2).event_hash(),
                    position: testkit::pos(2),
                    recorded_at: Some(testkit::at(62)),
                }],
                ..ProjectionBatch::default()
            })
            .await
            .expect("apply");
        let keys = store.keys(Some(&f1)).await.unwrap();
        let by_id = |k: &KeyRecord| {
            keys.iter()
                .find(|i| i.key.key_id() == k.key_id())
                .map(|i| i.key.clone())
                .expect("the key")
        };
        assert_eq!(by_id(&k3), k3);
        assert_eq!(
            (by_id(&k1).revoked_at, by_id(&k1).revoked_seq),
            (Some(testkit::at(50)), Some(4))
        );
        let head = ProjectionStore::chain_context(&store, &c, event_id(3), 3)
            .await
            .unwrap()
            .head;
        assert_eq!((head.seq, head.recorded_at), (2, Some(testkit::at(62))));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
