//! [`AuditStore`]: the hash-chained audit log, the exchange matrix and the break-glass
//! read counts, which all survive `reset_projections`.
//!
//! Appends run on the single writer, so "read the last entry, chain the next" cannot
//! race: two readers logging at once get seqs n and n + 1, never two n's.

use std::collections::BTreeSet;

use async_trait::async_trait;
use hrx_domain::audit::{
    AccessAction, AccessEvent, AccessOutcome, AuditEntry, AuditFormat, Reader,
};
use hrx_domain::consent::Basis;
use hrx_domain::{EventId, FacilityId, PatientId, Purpose, Sha256};
use hrx_ports::{AccessAppend, AccessCounts, AuditStore, PortResult};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::SqliteNode;
use crate::codec::{self, Cols};
use crate::error::Result;

/// Whether an audit entry counts as a read under the break-glass windows among its
/// bases. A read does; the entry that records a window's declaration does not.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadCounting {
    Yes,
    No,
}

/// Chains `event` after the last entry and inserts it; adds `authors` to the exchange
/// matrix and, if `counting`, one read to each break-glass window among the bases.
/// `break_glass` marks the entry of a projected declaration (see `projection`).
pub(crate) fn append(
    tx: &Transaction<'_>,
    event: AccessEvent,
    authors: &[(FacilityId, u64)],
    counting: ReadCounting,
    break_glass: Option<&EventId>,
) -> Result<AuditEntry> {
    let last = tx
        .prepare_cached("SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .optional()?;
    let (prev_seq, prev_hash) = match last {
        None => (0, Sha256::ZERO),
        Some((seq, hash)) => (
            u64::try_from(seq).map_err(|_| corrupt("a negative audit seq"))?,
            Sha256::from_slice(&hash).map_err(|_| corrupt("an audit hash of the wrong length"))?,
        ),
    };
    let entry = AuditEntry::chain(prev_seq, prev_hash, event);
    let e = &entry.event;
    let (at_s, at_ns) = codec::ts(e.at);
    tx.prepare_cached(
        "INSERT INTO audit_log (seq, reader, patient_id, purpose, action, bases, \
         records_returned, records_withheld, at_s, at_ns, prev_hash, entry_hash, \
         break_glass_event_id, format, reader_kind, outcome) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        codec::int(entry.seq, "audit seq")?,
        e.reader.as_str(),
        e.patient.as_str(),
        e.purpose.map_or(0, Purpose::code),
        e.action.code(),
        codec::bases(&e.bases),
        codec::int(e.records_returned, "records returned")?,
        codec::int(e.records_withheld, "records withheld")?,
        at_s,
        at_ns,
        entry.prev_hash.as_bytes(),
        entry.entry_hash.as_bytes(),
        codec::opt_id(break_glass),
        entry.format.code(),
        e.reader.kind_code(),
        e.outcome.code(),
    ])?;

    let mut cell = tx.prepare_cached(
        "INSERT INTO exchange_matrix (reader, author, records, accesses) VALUES (?1, ?2, ?3, 1) \
         ON CONFLICT (reader, author) DO UPDATE SET \
         records = records + excluded.records, accesses = accesses + 1",
    )?;
    // The exchange matrix is facility × facility.
    let authors = if e.reader.facility().is_some() {
        authors
    } else {
        &[]
    };
    for (author, n) in authors {
        cell.execute(params![
            e.reader.as_str(),
            author.as_str(),
            codec::int(*n, "records")?
        ])?;
    }

    if counting == ReadCounting::Yes {
        // One read per window, however often a window is named among the bases.
        let windows: BTreeSet<[u8; 16]> = e
            .bases
            .iter()
            .filter_map(|b| match b {
                Basis::BreakGlass(id) => Some(codec::id(id)),
                _ => None,
            })
            .collect();
        let mut reads = tx.prepare_cached(
            "INSERT INTO break_glass_reads (window_event_id, reads) VALUES (?1, 1) \
             ON CONFLICT (window_event_id) DO UPDATE SET reads = reads + 1",
        )?;
        for w in windows {
            reads.execute([w])?;
        }
    }
    Ok(entry)
}

fn corrupt(what: &str) -> crate::EmbeddedError {
    crate::EmbeddedError::Corrupt(format!("the audit log holds {what}"))
}

const ENTRY_COLUMNS: &str = "seq, format, reader, patient_id, purpose, action, bases, \
     records_returned, records_withheld, at_s, at_ns, outcome, prev_hash, entry_hash";

fn accesses(
    conn: &Connection,
    patient: &PatientId,
    reader: Option<&Reader>,
    after: u64,
    limit: usize,
) -> Result<Vec<AuditEntry>> {
    let limit = codec::limit(limit);
    match reader {
        None => {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM audit_log \
                 WHERE patient_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?;
            codec::collect(
                &mut stmt,
                params![patient.as_str(), codec::bound(after), limit],
                decode,
            )
        }
        Some(reader) => {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM audit_log \
                 WHERE patient_id = ?1 AND reader = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4"
            ))?;
            codec::collect(
                &mut stmt,
                params![
                    patient.as_str(),
                    reader.as_str(),
                    codec::bound(after),
                    limit
                ],
                decode,
            )
        }
    }
}

fn access_counts(conn: &Connection, patient: &PatientId) -> Result<AccessCounts> {
    let mut stmt = conn.prepare_cached(
        "SELECT coalesce(sum(outcome = ?2), 0), coalesce(sum(outcome = ?3), 0), \
         coalesce(sum(action = ?4), 0) FROM audit_log WHERE patient_id = ?1",
    )?;
    let counts = codec::first(
        &mut stmt,
        params![
            patient.as_str(),
            AccessOutcome::Allowed.code(),
            AccessOutcome::Denied.code(),
            AccessAction::BreakGlass.code()
        ],
        |c| {
            Ok(AccessCounts {
                allowed: c.u64()?,
                denied: c.u64()?,
                break_glass: c.u64()?,
            })
        },
    )?;
    Ok(counts.unwrap_or_default())
}

fn decode(c: &mut Cols<'_, '_>) -> Result<AuditEntry> {
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

#[async_trait]
impl AuditStore for SqliteNode {
    async fn append_access(
        &self,
        event: AccessEvent,
        authors: &[(FacilityId, u64)],
    ) -> PortResult<AuditEntry> {
        let authors = authors.to_vec();
        Ok(self
            .inner
            .db
            .write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let entry = append(&tx, event, &authors, ReadCounting::Yes, None)?;
                tx.commit()?;
                Ok(entry)
            })
            .await?)
    }

    async fn append_accesses(&self, batch: Vec<AccessAppend>) -> PortResult<Vec<AuditEntry>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .inner
            .db
            .write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let entries = batch
                    .into_iter()
                    .map(|a| append(&tx, a.event, &a.authors, ReadCounting::Yes, None))
                    .collect::<Result<Vec<_>>>()?;
                tx.commit()?;
                Ok(entries)
            })
            .await?)
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
        let (patient, reader) = (patient_id.clone(), reader.cloned());
        Ok(self
            .inner
            .db
            .read(move |conn| accesses(conn, &patient, reader.as_ref(), after, limit))
            .await?)
    }

    async fn access_counts(&self, patient_id: &PatientId) -> PortResult<AccessCounts> {
        let patient = patient_id.clone();
        Ok(self
            .inner
            .db
            .read(move |conn| access_counts(conn, &patient))
            .await?)
    }
}
