//! [`AuditStore`]: the hash-chained audit log, the exchange matrix and the break-glass
//! read counts, which all survive `reset_projections`.
//!
//! Timeline replicas in several processes append at once, so "read the last entry,
//! chain the next" must be serialised across processes: an appender first locks the
//! one-row `audit_head` (`SELECT … FOR UPDATE`), computes the entry's hash, writes the
//! entry, the new head and the counters in one statement, and commits, which releases
//! the lock. The lock is held for three round trips; a second appender waits and then
//! reads the head the first one wrote, so two appends get seqs n and n + 1, never two
//! n's (and `audit_log.seq` is the primary key, should anything bypass the lock).

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Transaction};
use hrx_domain::audit::{
    AccessAction, AccessEvent, AccessOutcome, AuditEntry, AuditFormat, Reader,
};
use hrx_domain::consent::Basis;
use hrx_domain::{EventId, FacilityId, PatientId, Purpose, Sha256};
use hrx_ports::{AccessAppend, AccessCounts, AuditStore, PortResult};

use crate::PgStore;
use crate::codec::{self, Cols, execute, query};
use crate::error::{PgError, Result, db, int};

/// Locks the chain's head until the transaction ends; returns its seq and hash (0 and
/// the zero hash before the first entry).
pub(crate) async fn lock_head(tx: &Transaction<'_>) -> Result<(u64, Sha256)> {
    let rows = query(
        tx,
        "locking the audit head",
        "SELECT seq, entry_hash FROM audit_head FOR UPDATE",
        &[],
    )
    .await?;
    let row = rows
        .first()
        .ok_or_else(|| PgError::Corrupt("the audit head row is missing".into()))?;
    let mut c = Cols::new(row);
    Ok((c.u64()?, c.sha256()?))
}

/// What `append_access` adds besides the entry: the reading facility and the (author
/// facility, records returned) pairs of the exchange matrix.
pub(crate) type Matrix<'a> = (&'a FacilityId, &'a [(FacilityId, u64)]);

/// The exchange-matrix part of an access: the matrix is facility × facility, so the
/// national center's and the patient's reads add nothing to it.
fn matrix_of<'a>(reader: &'a Reader, authors: &'a [(FacilityId, u64)]) -> Option<Matrix<'a>> {
    reader.facility().map(|f| (f, authors))
}

/// Writes `entries` (already chained after the locked head, each with the break-glass
/// declaration it records, if any), moves the head to the last, adds `matrix` to the
/// exchange matrix and one read to each window in `windows`: one statement.
pub(crate) async fn write(
    tx: &Transaction<'_>,
    entries: &[(AuditEntry, Option<EventId>)],
    matrix: Option<Matrix<'_>>,
    windows: &[EventId],
) -> Result<()> {
    let Some((last, _)) = entries.last() else {
        return Ok(());
    };
    let n = entries.len();
    let mut seq = Vec::with_capacity(n);
    let mut reader = Vec::with_capacity(n);
    let mut patient = Vec::with_capacity(n);
    let mut purpose = Vec::with_capacity(n);
    let mut action = Vec::with_capacity(n);
    let mut bases = Vec::with_capacity(n);
    let mut returned = Vec::with_capacity(n);
    let mut withheld = Vec::with_capacity(n);
    let mut at_s = Vec::with_capacity(n);
    let mut at_ns = Vec::with_capacity(n);
    let mut prev = Vec::with_capacity(n);
    let mut hash = Vec::with_capacity(n);
    let mut declaration = Vec::with_capacity(n);
    let mut format = Vec::with_capacity(n);
    let mut reader_kind = Vec::with_capacity(n);
    let mut outcome = Vec::with_capacity(n);
    for (entry, bg) in entries {
        let e = &entry.event;
        seq.push(int(entry.seq, "audit seq")?);
        reader.push(e.reader.as_str());
        patient.push(e.patient.as_str());
        purpose.push(e.purpose.map_or(0, Purpose::code));
        action.push(e.action.code());
        bases.push(codec::bases(&e.bases));
        returned.push(int(e.records_returned, "records returned")?);
        withheld.push(int(e.records_withheld, "records withheld")?);
        let (s, ns) = codec::ts(e.at);
        at_s.push(s);
        at_ns.push(ns);
        prev.push(entry.prev_hash.as_bytes().as_slice());
        hash.push(entry.entry_hash.as_bytes().as_slice());
        declaration.push(codec::opt_id(bg.as_ref()));
        format.push(entry.format.code());
        reader_kind.push(e.reader.kind_code());
        outcome.push(e.outcome.code());
    }

    // Per author: records added, and one access per time the author is named.
    let mut cells: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let matrix_reader = matrix.map(|(r, _)| r.as_str()).unwrap_or_default();
    for (author, records) in matrix.map(|(_, a)| a).unwrap_or_default() {
        let c = cells.entry(author.as_str()).or_default();
        c.0 = c.0.saturating_add(*records);
        c.1 += 1;
    }
    let authors: Vec<&str> = cells.keys().copied().collect();
    let records: Vec<i64> = cells
        .values()
        .map(|(r, _)| int(*r, "records"))
        .collect::<Result<_>>()?;
    let accesses: Vec<i64> = cells
        .values()
        .map(|(_, a)| int(*a, "accesses"))
        .collect::<Result<_>>()?;
    // One read per window, however often a window is named among the bases.
    let windows: Vec<Vec<u8>> = windows
        .iter()
        .map(codec::id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let head_seq = int(last.seq, "audit seq")?;
    let head_hash = last.entry_hash.as_bytes().as_slice();
    execute(
        tx,
        &format!("appending {n} audit entries"),
        "WITH entries AS ( \
           INSERT INTO audit_log (seq, reader, patient_id, purpose, action, bases, \
             records_returned, records_withheld, at_s, at_ns, prev_hash, entry_hash, \
             break_glass_event_id, format, reader_kind, outcome) \
           SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::integer[], \
             $5::integer[], $6::bytea[], $7::bigint[], $8::bigint[], $9::bigint[], \
             $10::integer[], $11::bytea[], $12::bytea[], $13::bytea[], $21::integer[], \
             $22::integer[], $23::integer[])), \
         matrix AS ( \
           INSERT INTO exchange_matrix (reader, author, records, accesses) \
           SELECT $14::text, m.author, m.records, m.accesses \
           FROM unnest($15::text[], $16::bigint[], $17::bigint[]) \
             AS m(author, records, accesses) \
           ON CONFLICT (reader, author) DO UPDATE SET \
             records = exchange_matrix.records + excluded.records, \
             accesses = exchange_matrix.accesses + excluded.accesses), \
         reads AS ( \
           INSERT INTO break_glass_reads (window_event_id, reads) \
           SELECT w.id, 1 FROM unnest($18::bytea[]) AS w(id) \
           ON CONFLICT (window_event_id) DO UPDATE SET \
             reads = break_glass_reads.reads + 1) \
         UPDATE audit_head SET seq = $19::bigint, entry_hash = $20::bytea",
        &[
            &seq,
            &reader,
            &patient,
            &purpose,
            &action,
            &bases,
            &returned,
            &withheld,
            &at_s,
            &at_ns,
            &prev,
            &hash,
            &declaration,
            &matrix_reader,
            &authors,
            &records,
            &accesses,
            &windows,
            &head_seq,
            &head_hash,
            &format,
            &reader_kind,
            &outcome,
        ],
    )
    .await?;
    Ok(())
}

/// Columns of an entry, for [`decode`].
const ENTRY_COLUMNS: &str = "seq, format, reader, patient_id, purpose, action, bases, \
     records_returned, records_withheld, at_s, at_ns, outcome, prev_hash, entry_hash";

async fn accesses<C: GenericClient>(
    c: &C,
    patient: &PatientId,
    reader: Option<&Reader>,
    after: u64,
    limit: usize,
) -> Result<Vec<AuditEntry>> {
    let what = "reading audit entries";
    let (after, limit) = (codec::bound(after), codec::limit(limit));
    let rows = match reader {
        None => {
            query(
                c,
                what,
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM audit_log \
                     WHERE patient_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                ),
                &[&patient.as_str(), &after, &limit],
            )
            .await?
        }
        Some(reader) => {
            query(
                c,
                what,
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM audit_log \
                     WHERE patient_id = $1 AND reader = $2 AND seq > $3 ORDER BY seq LIMIT $4"
                ),
                &[&patient.as_str(), &reader.as_str(), &after, &limit],
            )
            .await?
        }
    };
    codec::collect(&rows, decode)
}

async fn access_counts<C: GenericClient>(c: &C, patient: &PatientId) -> Result<AccessCounts> {
    let rows = query(
        c,
        "counting audit entries",
        "SELECT count(*) FILTER (WHERE outcome = $2), count(*) FILTER (WHERE outcome = $3), \
           count(*) FILTER (WHERE action = $4) \
         FROM audit_log WHERE patient_id = $1",
        &[
            &patient.as_str(),
            &AccessOutcome::Allowed.code(),
            &AccessOutcome::Denied.code(),
            &AccessAction::BreakGlass.code(),
        ],
    )
    .await?;
    rows.first()
        .map(|r| {
            let mut c = Cols::new(r);
            Ok(AccessCounts {
                allowed: c.u64()?,
                denied: c.u64()?,
                break_glass: c.u64()?,
            })
        })
        .transpose()
        .map(Option::unwrap_or_default)
}

fn decode(c: &mut Cols<'_>) -> Result<AuditEntry> {
    let seq = c.u64()?;
    let format = c.code(AuditFormat::from_code)?;
    let event = AccessEvent {
        reader: c.reader()?,
        patient: c.patient()?,
        purpose: c.opt_code(Purpose::from_code)?,
        action: c.code(AccessAction::from_code)?,
        bases: c.bases()?,
        records_returned: c.u64()?,
        records_withheld: c.u64()?,
        at: c.ts()?,
        outcome: c.code(AccessOutcome::from_code)?,
    };
    let entry = AuditEntry {
        seq,
        format,
        event,
        prev_hash: c.sha256()?,
        entry_hash: c.sha256()?,
    };
    // Returned as stored, so that whoever checks the chain sees the evidence; but say so
    // where operators look.
    if !entry.is_intact() {
        tracing::error!(seq, "audit entry does not match its hash");
    }
    Ok(entry)
}

/// The break-glass windows a read counts against.
fn break_glass_windows(bases: &[Basis]) -> Vec<EventId> {
    bases
        .iter()
        .filter_map(|b| match b {
            Basis::BreakGlass(id) => Some(*id),
            _ => None,
        })
        .collect()
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append_access(
        &self,
        event: AccessEvent,
        authors: &[(FacilityId, u64)],
    ) -> PortResult<AuditEntry> {
        let what = "appending an audit entry";
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(|e| db(what, &e))?;
        let (seq, hash) = lock_head(&tx).await?;
        let entry = AuditEntry::chain(seq, hash, event);
        let windows = break_glass_windows(&entry.event.bases);
        write(
            &tx,
            &[(entry.clone(), None)],
            matrix_of(&entry.event.reader, authors),
            &windows,
        )
        .await?;
        tx.commit().await.map_err(|e| db(what, &e))?;
        Ok(entry)
    }

    async fn append_accesses(&self, batch: Vec<AccessAppend>) -> PortResult<Vec<AuditEntry>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let what = "appending audit entries";
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(|e| db(what, &e))?;
        let (mut seq, mut hash) = lock_head(&tx).await?;
        let mut entries = Vec::with_capacity(batch.len());
        for AccessAppend { event, authors } in batch {
            let entry = AuditEntry::chain(seq, hash, event);
            let windows = break_glass_windows(&entry.event.bases);
            write(
                &tx,
                &[(entry.clone(), None)],
                matrix_of(&entry.event.reader, &authors),
                &windows,
            )
            .await?;
            (seq, hash) = (entry.seq, entry.entry_hash);
            entries.push(entry);
        }
        tx.commit().await.map_err(|e| db(what, &e))?;
        Ok(entries)
    }

    async fn accesses(
        &self,
        patient_id: &PatientId,
        reader: Option<&Reader>,
        after: u64,
        limit: usize,
    ) -> PortResult<Vec<AuditEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let client = self.client("reading audit entries").await?;
        Ok(accesses(&client, patient_id, reader, after, limit).await?)
    }

    async fn access_counts(&self, patient_id: &PatientId) -> PortResult<AccessCounts> {
        let client = self.client("counting audit entries").await?;
        Ok(access_counts(&client, patient_id).await?)
    }
}
