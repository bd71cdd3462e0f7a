//! [`ProjectionStore`]: the projector's batches, each one write transaction with its
//! offsets, and `reset_projections` for `hrx reproject`.
//!
//! Order inside a batch: the projections in the order given (a revocation may follow
//! its grant, a correction its record), then the chain links, the stats deltas, and
//! last the offsets. Any failure rolls the whole batch back, offsets included, so the
//! projector re-reads the same entries.

use std::sync::Arc;

use async_trait::async_trait;
use hrx_domain::chain::ChainContext;
use hrx_domain::{EventId, FacilityId};
use hrx_ports::changed::{BucketSet, PatientChanges};
use hrx_ports::{
    BreakGlassUse, ChainKey, ChainLink, ConsentEventRow, FacilityInfo, NewRecord, PortResult,
    Projection, ProjectionBatch, ProjectionStore, ProjectorSnapshot, RejectionRow, StatsDelta,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::watch;

use crate::SqliteNode;
use crate::audit::{self, ReadCounting};
use crate::codec;
use crate::consent::consent_event_by_id;
use crate::error::{EmbeddedError, Result};
use crate::log::{ChainTable, chain_context};
use crate::registry::{all_keys, insert_key, revoke_key};
use crate::schema::SOURCE_PROJECTOR;

fn apply(tx: &Transaction<'_>, batch: &ProjectionBatch) -> Result<()> {
    check_offsets(tx, &batch.expected_offsets)?;
    for p in &batch.projections {
        match p {
            Projection::Record(r) => insert_record(tx, r)?,
            Projection::ConsentEvent(row) => insert_consent_event(tx, row)?,
            Projection::BreakGlass(declared, event) => {
                insert_break_glass(tx, declared)?;
                // The declaration's audit entry, keyed by the declaration's event id: a
                // replay after `reset_projections` finds it and writes no second one.
                // The declaration is not itself a read under the window.
                let id = declared.window.event_id;
                let seen = tx
                    .prepare_cached("SELECT 1 FROM audit_log WHERE break_glass_event_id = ?1")?
                    .exists([codec::id(&id)])?;
                if !seen {
                    audit::append(tx, event.clone(), &[], ReadCounting::No, Some(&id))?;
                }
            }
            Projection::FacilityRegistered(f) => upsert_facility(tx, f)?,
            Projection::KeyAdded(key) => insert_key(tx, key)?,
            Projection::KeyRevoked {
                key_id,
                revoked_at,
                revoked_seq,
                reason,
            } => revoke_key(tx, key_id, *revoked_at, *revoked_seq, reason)?,
            Projection::CertificateRevoked(c) => crate::registry::revoke_certificate(tx, c)?,
            Projection::Rejection(row) => insert_rejection(tx, SOURCE_PROJECTOR, row)?,
        }
    }
    for link in &batch.links {
        insert_link(tx, link)?;
    }
    for delta in &batch.stats {
        add_stats(tx, SOURCE_PROJECTOR, delta)?;
    }
    let mut offsets = tx.prepare_cached(
        "INSERT INTO projector_offsets (log_partition, next_offset) VALUES (?1, ?2) \
         ON CONFLICT (log_partition) DO UPDATE SET next_offset = excluded.next_offset",
    )?;
    for (partition, next) in &batch.offsets {
        offsets.execute(params![partition, codec::int(*next, "offset")?])?;
    }
    Ok(())
}

/// Refuses the batch when a partition's stored offset is not where the batch started.
fn check_offsets(tx: &Transaction<'_>, expected: &[(u32, u64)]) -> Result<()> {
    let mut stmt =
        tx.prepare_cached("SELECT next_offset FROM projector_offsets WHERE log_partition = ?1")?;
    for (partition, start) in expected {
        let stored: Option<i64> = stmt
            .query_row(params![partition], |r| r.get(0))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        let stored = stored.unwrap_or(0);
        if stored != codec::int(*start, "offset")? {
            return Err(EmbeddedError::Conflict(format!(
                "partition {partition} was projected to offset {stored}, not {start}: another projector got there first"
            )));
        }
    }
    Ok(())
}

/// Inserts a record with the patient's next `patient_seq`, and links it with the record
/// it supersedes. Links are made in both directions at insert time, so they do not
/// depend on which of the two was projected first; they never cross patients, so a
/// timeline cannot point into another patient's records.
fn insert_record(tx: &Transaction<'_>, r: &NewRecord) -> Result<()> {
    let patient = r.patient_id.as_str();
    let id = codec::id(&r.event_id);
    let patient_seq: i64 = tx
        .prepare_cached(
            "INSERT INTO patient_counters (patient_id, last_seq) VALUES (?1, 1) \
             ON CONFLICT (patient_id) DO UPDATE SET last_seq = last_seq + 1 \
             RETURNING last_seq",
        )?
        .query_row([patient], |row| row.get(0))?;
    // A later record may already name this one (a correction projected first).
    let superseded_by: Option<Vec<u8>> = tx
        .prepare_cached(
            "SELECT event_id FROM records WHERE supersedes = ?1 AND patient_id = ?2 \
             ORDER BY patient_seq DESC LIMIT 1",
        )?
        .query_row(params![id, patient], |row| row.get(0))
        .optional()?;
    let (occurred_s, occurred_ns) = codec::ts(r.occurred_at);
    let (recorded_s, recorded_ns) = codec::ts(r.recorded_at);
    tx.prepare_cached(
        "INSERT INTO records (event_id, facility_id, seq, patient_id, kind, \
         occurred_s, occurred_ns, recorded_s, recorded_ns, author, sensitivity, \
         supersedes, superseded_by, event_hash, log_partition, log_offset, patient_seq, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?
    .execute(params![
        id,
        r.facility_id.as_str(),
        codec::int(r.seq, "seq")?,
        patient,
        r.kind.code(),
        occurred_s,
        occurred_ns,
        recorded_s,
        recorded_ns,
        r.author,
        codec::codes(&r.sensitivity, |l| l.code()),
        codec::opt_id(r.supersedes.as_ref()),
        superseded_by,
        r.event_hash.as_bytes(),
        r.position.partition,
        codec::int(r.position.offset, "offset")?,
        patient_seq,
        r.body,
    ])?;
    if let Some(older) = &r.supersedes {
        tx.prepare_cached(
            "UPDATE records SET superseded_by = ?1 \
             WHERE event_id = ?2 AND patient_id = ?3 AND event_id <> ?1",
        )?
        .execute(params![id, codec::id(older), patient])?;
    }
    Ok(())
}

fn insert_consent_event(tx: &Transaction<'_>, r: &ConsentEventRow) -> Result<()> {
    let (received_s, received_ns) = codec::ts(r.received_at);
    tx.prepare_cached(
        "INSERT INTO consent_events (event_id, patient_id, kind, facility_id, received_s, \
         received_ns, payload_type, key_id, signature, payload) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        codec::id(&r.event_id),
        r.patient_id.as_str(),
        r.kind.code(),
        r.facility_id.as_ref().map(FacilityId::as_str),
        received_s,
        received_ns,
        r.envelope.payload_type,
        r.envelope.key_id,
        r.envelope.signature,
        r.envelope.payload,
    ])?;
    Ok(())
}

/// The window only: its reads are counted on the audit side (`break_glass_reads`), and
/// the `reads` the projector passes (0) is not stored.
fn insert_break_glass(tx: &Transaction<'_>, u: &BreakGlassUse) -> Result<()> {
    let w = &u.window;
    let (declared_s, declared_ns) = codec::ts(w.declared_at);
    let (expires_s, expires_ns) = codec::ts(w.expires_at);
    tx.prepare_cached(
        "INSERT INTO break_glass (event_id, patient_id, facility_id, clinician, \
         declared_s, declared_ns, expires_s, expires_ns, reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        codec::id(&w.event_id),
        u.patient_id.as_str(),
        w.facility_id.as_str(),
        u.clinician,
        declared_s,
        declared_ns,
        expires_s,
        expires_ns,
        u.reason,
    ])?;
    Ok(())
}

/// A facility registered again (renamed, moved, re-levelled) replaces its entry.
fn upsert_facility(tx: &Transaction<'_>, f: &FacilityInfo) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO facilities (facility_id, name, province, level) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (facility_id) DO UPDATE SET \
         name = excluded.name, province = excluded.province, level = excluded.level",
    )?
    .execute(params![
        f.facility_id.as_str(),
        f.name,
        f.province,
        f.level.code()
    ])?;
    Ok(())
}

/// Inserts a rejection row; `source` says whether a reset deletes it.
pub(crate) fn insert_rejection(tx: &Transaction<'_>, source: i64, r: &RejectionRow) -> Result<()> {
    let (at_s, at_ns) = codec::ts(r.at);
    let (partition, offset) = match r.position {
        Some(p) => (Some(p.partition), Some(codec::int(p.offset, "offset")?)),
        None => (None, None),
    };
    tx.prepare_cached(
        "INSERT INTO rejections (source, log_partition, log_offset, facility_id, event_id, \
         seq, event_hash, reason, field, message, at_s, at_ns) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        source,
        partition,
        offset,
        r.facility_id.as_ref().map(|f| f.as_str()),
        codec::opt_id(r.event_id.as_ref()),
        r.seq.map(|s| codec::int(s, "seq")).transpose()?,
        r.event_hash.as_ref().map(|h| h.as_bytes().to_vec()),
        r.reason.code(),
        r.field,
        r.message,
        at_s,
        at_ns,
    ])?;
    Ok(())
}

fn insert_link(tx: &Transaction<'_>, l: &ChainLink) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO chain_links (chain, seq, event_id, event_hash, log_partition, log_offset, \
         recorded_s, recorded_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        l.chain.as_key(),
        codec::int(l.seq, "seq")?,
        codec::id(&l.event_id),
        l.event_hash.as_bytes(),
        l.position.partition,
        codec::int(l.position.offset, "offset")?,
        codec::opt_ts(l.recorded_at).0,
        codec::opt_ts(l.recorded_at).1,
    ])
    .map_err(EmbeddedError::from)
    .map_err(|e| {
        if e.is_constraint() {
            EmbeddedError::Conflict(format!(
                "chain {} already has a projected event at seq {} or with id {}",
                l.chain, l.seq, l.event_id
            ))
        } else {
            e
        }
    })?;
    Ok(())
}

/// Adds a delta to a facility's counters (`source` as for rejections); `last_seen`
/// keeps the latest time either side has seen.
pub(crate) fn add_stats(tx: &Transaction<'_>, source: i64, d: &StatsDelta) -> Result<()> {
    let facility = d.facility_id.as_str();
    let (seen_s, seen_ns) = codec::ts(d.last_seen);
    tx.prepare_cached(
        "INSERT INTO stats (source, facility_id, accepted, duplicates, last_seen_s, last_seen_ns) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (source, facility_id) DO UPDATE SET \
           accepted = accepted + excluded.accepted, \
           duplicates = duplicates + excluded.duplicates, \
           last_seen_s = CASE WHEN (excluded.last_seen_s, excluded.last_seen_ns) \
             > (last_seen_s, last_seen_ns) THEN excluded.last_seen_s ELSE last_seen_s END, \
           last_seen_ns = CASE WHEN (excluded.last_seen_s, excluded.last_seen_ns) \
             > (last_seen_s, last_seen_ns) THEN excluded.last_seen_ns ELSE last_seen_ns END",
    )?
    .execute(params![
        source,
        facility,
        codec::int(d.accepted, "accepted count")?,
        codec::int(d.duplicates, "duplicate count")?,
        seen_s,
        seen_ns,
    ])?;
    let mut rejected = tx.prepare_cached(
        "INSERT INTO stats_rejected (source, facility_id, reason, n) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (source, facility_id, reason) DO UPDATE SET n = n + excluded.n",
    )?;
    for (reason, n) in &d.rejected {
        rejected.execute(params![
            source,
            facility,
            reason.code(),
            codec::int(*n, "rejected count")?
        ])?;
    }
    Ok(())
}

/// Deletes every projection; keeps the log, the audit log and what hangs off it (the
/// exchange matrix, break-glass read counts), and ingest's rejections and counters,
/// which are not in the log and so could not be rebuilt.
fn reset(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(
        "DELETE FROM records;
         DELETE FROM patient_counters;
         DELETE FROM consent_events;
         DELETE FROM break_glass;
         DELETE FROM facilities;
         DELETE FROM keys;
         DELETE FROM revoked_certificates;
         DELETE FROM chain_links;
         DELETE FROM projector_offsets;",
    )?;
    for table in ["stats", "stats_rejected", "rejections"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE source = ?1"),
            [SOURCE_PROJECTOR],
        )?;
    }
    Ok(())
}

/// Where the projector resumes, per partition.
pub(crate) fn offsets(conn: &Connection) -> Result<Vec<(u32, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT log_partition, next_offset FROM projector_offsets ORDER BY log_partition",
    )?;
    codec::collect(&mut stmt, [], |c| Ok((c.u32()?, c.u64()?)))
}

impl SqliteNode {
    /// Runs `f` in a write transaction and, once it has committed, advances the change
    /// counter (still holding the writer, so that the counter follows commit order).
    /// `touched`: the buckets of the patients it changes ([`hrx_ports::changed`]),
    /// bumped before the counter.
    async fn write_and_notify<F>(&self, touched: BucketSet, f: F) -> PortResult<()>
    where
        F: FnOnce(&Transaction<'_>) -> Result<()> + Send + 'static,
    {
        let inner = self.inner.clone();
        self.inner
            .db
            .write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                f(&tx)?;
                tx.commit()?;
                inner.patient_changes.bump(&touched);
                bump(&inner.changes);
                Ok(())
            })
            .await?;
        Ok(())
    }
}

fn bump(changes: &watch::Sender<u64>) {
    changes.send_modify(|n| *n += 1);
}

#[async_trait]
impl ProjectionStore for SqliteNode {
    async fn projector_snapshot(&self) -> PortResult<ProjectorSnapshot> {
        Ok(self
            .inner
            .db
            .read(|conn| {
                let tx = conn.transaction()?;
                let snapshot = ProjectorSnapshot {
                    offsets: offsets(&tx)?,
                    keys: all_keys(&tx)?.into_iter().map(|k| k.key).collect(),
                };
                tx.finish()?;
                Ok(snapshot)
            })
            .await?)
    }

    async fn chain_context(
        &self,
        chain: &ChainKey,
        event_id: EventId,
        seq: u64,
    ) -> PortResult<ChainContext> {
        let chain = chain.clone();
        let (context, _) = self
            .inner
            .db
            .read(move |conn| chain_context(conn, ChainTable::Projected, &chain, event_id, seq))
            .await?;
        Ok(context)
    }

    async fn consent_event(&self, event_id: EventId) -> PortResult<Option<ConsentEventRow>> {
        Ok(self
            .inner
            .db
            .read(move |conn| consent_event_by_id(conn, &event_id))
            .await?)
    }

    async fn event_id_taken(&self, event_id: EventId) -> PortResult<bool> {
        Ok(self
            .inner
            .db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM records WHERE event_id = ?1) \
                         OR EXISTS (SELECT 1 FROM consent_events WHERE event_id = ?1) \
                         OR EXISTS (SELECT 1 FROM break_glass WHERE event_id = ?1)",
                )?;
                Ok(stmt.query_row([crate::codec::id(&event_id)], |r| r.get::<_, bool>(0))?)
            })
            .await?)
    }

    async fn apply(&self, batch: ProjectionBatch) -> PortResult<()> {
        let touched = hrx_ports::changed::touched(&batch);
        self.write_and_notify(touched, move |tx| apply(tx, &batch))
            .await
    }

    async fn reset_projections(&self) -> PortResult<()> {
        tracing::warn!("embedded store: deleting every projection for a replay of the log");
        self.write_and_notify(BucketSet::all(), reset).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn patient_changes(&self) -> Arc<PatientChanges> {
        self.inner.patient_changes.clone()
    }
}
