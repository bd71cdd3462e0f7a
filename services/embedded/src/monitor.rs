//! [`MonitorStore`]: per-facility counters and heads, the exchange matrix, break-glass
//! uses and rejections. Metadata only: no patient data leaves through here except the
//! patient a break-glass window was declared for, which the national center must see.
//!
//! Counters come from two sources (`schema::SOURCE_*`): the projector's, rebuilt by a
//! replay, and ingest's, which are not in the log and survive a reset. A facility's
//! figures are the sum of both.

use std::collections::BTreeMap;

use async_trait::async_trait;
use hrx_domain::{FacilityId, PatientId, Reason, Timestamp};
use hrx_ports::{
    BreakGlassUse, ChainKey, ExchangeCell, FacilityStats, MonitorStore, PortResult, RejectionRow,
};
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};

use crate::SqliteNode;
use crate::codec::{self, Cols};
use crate::consent::{WINDOW_COLUMNS, decode_window};
use crate::error::{EmbeddedError, Result};
use crate::projection::offsets;

/// The entry of facility `f`: every facility seen by any source gets one, zeros until
/// counted.
fn entry(map: &mut BTreeMap<String, FacilityStats>, f: FacilityId) -> &mut FacilityStats {
    map.entry(f.as_str().to_owned())
        .or_insert_with(|| FacilityStats {
            facility_id: f,
            accepted: 0,
            duplicates: 0,
            rejected: Vec::new(),
            last_seen: None,
            head_seq: 0,
        })
}

fn facility_stats(conn: &mut Connection) -> Result<Vec<FacilityStats>> {
    let tx = conn.transaction()?;
    let mut by_facility: BTreeMap<String, FacilityStats> = BTreeMap::new();
    let mut stmt = tx.prepare_cached(
        "SELECT facility_id, accepted, duplicates, last_seen_s, last_seen_ns FROM stats",
    )?;
    for (f, accepted, duplicates, seen) in codec::collect(&mut stmt, [], |c| {
        Ok((c.facility()?, c.u64()?, c.u64()?, c.ts()?))
    })? {
        let s = entry(&mut by_facility, f);
        s.accepted = s.accepted.saturating_add(accepted);
        s.duplicates = s.duplicates.saturating_add(duplicates);
        s.last_seen = s.last_seen.max(Some(seen));
    }

    let mut stmt = tx.prepare_cached(
        "SELECT facility_id, reason, SUM(n) FROM stats_rejected \
         GROUP BY facility_id, reason HAVING SUM(n) > 0 ORDER BY facility_id, reason",
    )?;
    for (f, reason, n) in codec::collect(&mut stmt, [], |c| {
        Ok((c.facility()?, c.code(Reason::from_code)?, c.u64()?))
    })? {
        entry(&mut by_facility, f).rejected.push((reason, n));
    }

    // Heads of the projected chains. A plain `GROUP BY chain` would read every link
    // (one per event ever projected); this walks the distinct chains through the
    // (chain, event_id) index and takes each MAX(seq) from the primary key, one index
    // search per chain.
    let mut stmt = tx.prepare_cached(
        "WITH RECURSIVE chains (chain) AS ( \
           SELECT MIN(chain) FROM chain_links \
           UNION ALL \
           SELECT (SELECT MIN(chain) FROM chain_links WHERE chain > chains.chain) \
           FROM chains WHERE chains.chain IS NOT NULL) \
         SELECT chain, (SELECT MAX(seq) FROM chain_links l WHERE l.chain = chains.chain) \
         FROM chains WHERE chain IS NOT NULL",
    )?;
    for (chain, head) in codec::collect(&mut stmt, [], |c| Ok((c.text()?, c.u64()?)))? {
        match ChainKey::parse(&chain) {
            Some(ChainKey::Facility(f)) => entry(&mut by_facility, f).head_seq = head,
            Some(ChainKey::Registry | ChainKey::Patient(_) | ChainKey::Reports(_)) => {}
            None => {
                return Err(EmbeddedError::Corrupt(
                    "column chain_links.chain does not hold a chain key".into(),
                ));
            }
        }
    }
    Ok(by_facility.into_values().collect())
}

fn exchange_matrix(conn: &Connection) -> Result<Vec<ExchangeCell>> {
    let mut stmt = conn.prepare_cached(
        "SELECT reader, author, records, accesses FROM exchange_matrix ORDER BY reader, author",
    )?;
    codec::collect(&mut stmt, [], |c| {
        Ok(ExchangeCell {
            reader: c.facility()?,
            author: c.facility()?,
            records: c.u64()?,
            accesses: c.u64()?,
        })
    })
}

/// Windows declared at or after `since` (all if `None`), oldest first, with the reads
/// counted on the audit side.
pub(crate) fn break_glass_uses(
    conn: &Connection,
    since: Option<Timestamp>,
    patient: Option<&PatientId>,
) -> Result<Vec<BreakGlassUse>> {
    let mut sql = format!(
        "SELECT {WINDOW_COLUMNS}, b.patient_id, b.clinician, b.reason, COALESCE(r.reads, 0) \
         FROM break_glass b LEFT JOIN break_glass_reads r ON r.window_event_id = b.event_id \
         WHERE 1 = 1"
    );
    let mut values = Vec::new();
    if let Some(since) = since {
        let (s, ns) = codec::ts(since);
        sql.push_str(" AND (b.declared_s, b.declared_ns) >= (?, ?)");
        values.extend([Value::Integer(s), Value::Integer(ns)]);
    }
    if let Some(patient) = patient {
        sql.push_str(" AND b.patient_id = ?");
        values.push(Value::Text(patient.as_str().to_owned()));
    }
    sql.push_str(" ORDER BY b.declared_s, b.declared_ns, b.rowid");
    let mut stmt = conn.prepare_cached(&sql)?;
    codec::collect(&mut stmt, params_from_iter(values), |c| {
        Ok(BreakGlassUse {
            window: decode_window(c)?,
            patient_id: c.patient()?,
            clinician: c.text()?,
            reason: c.text()?,
            reads: c.u64()?,
        })
    })
}

fn decode_rejection(c: &mut Cols<'_, '_>) -> Result<RejectionRow> {
    let position = c.opt_position()?;
    let facility_id = c.opt_facility()?;
    let event_id = c.opt_event_id()?;
    let seq = c.opt_u64()?;
    let event_hash = c.opt_sha256()?;
    let reason = c.code(Reason::from_code)?;
    // A field is one of the domain's static paths; anything else was not written by us.
    let field = match c.opt_text()? {
        None => None,
        Some(f) => Some(hrx_domain::rejection::field_path(&f).ok_or_else(|| {
            EmbeddedError::Corrupt("column rejections.field does not hold a known field".into())
        })?),
    };
    Ok(RejectionRow {
        position,
        facility_id,
        event_id,
        seq,
        event_hash,
        reason,
        field,
        message: c.text()?,
        at: c.ts()?,
    })
}

fn rejections(
    conn: &Connection,
    facility: Option<&FacilityId>,
    limit: usize,
) -> Result<Vec<RejectionRow>> {
    const COLUMNS: &str = "log_partition, log_offset, facility_id, event_id, seq, event_hash, \
         reason, field, message, at_s, at_ns";
    const ORDER: &str = "ORDER BY at_s DESC, at_ns DESC, id DESC LIMIT";
    let limit = codec::limit(limit);
    match facility {
        Some(f) => {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM rejections WHERE facility_id = ?1 {ORDER} ?2"
            ))?;
            codec::collect(
                &mut stmt,
                rusqlite::params![f.as_str(), limit],
                decode_rejection,
            )
        }
        None => {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {COLUMNS} FROM rejections {ORDER} ?1"))?;
            codec::collect(&mut stmt, [limit], decode_rejection)
        }
    }
}

#[async_trait]
impl MonitorStore for SqliteNode {
    /// Ordered by facility id; `rejected` by reason code.
    async fn facility_stats(&self) -> PortResult<Vec<FacilityStats>> {
        Ok(self.inner.db.read(facility_stats).await?)
    }

    /// Ordered by reader, then author.
    async fn exchange_matrix(&self) -> PortResult<Vec<ExchangeCell>> {
        Ok(self.inner.db.read(|conn| exchange_matrix(conn)).await?)
    }

    /// Windows declared at or after `since`, oldest first.
    async fn break_glass_uses(&self, since: Option<Timestamp>) -> PortResult<Vec<BreakGlassUse>> {
        Ok(self
            .inner
            .db
            .read(move |conn| break_glass_uses(conn, since, None))
            .await?)
    }

    async fn attested_grants(
        &self,
        since: Option<Timestamp>,
        limit: usize,
    ) -> PortResult<Vec<hrx_ports::ConsentEventRow>> {
        Ok(self
            .inner
            .db
            .read(move |conn| crate::consent::attested_grants(conn, since, limit))
            .await?)
    }

    async fn rejections(
        &self,
        facility: Option<&FacilityId>,
        limit: usize,
    ) -> PortResult<Vec<RejectionRow>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let facility = facility.cloned();
        Ok(self
            .inner
            .db
            .read(move |conn| rejections(conn, facility.as_ref(), limit))
            .await?)
    }

    async fn projected_offsets(&self) -> PortResult<Vec<(u32, u64)>> {
        Ok(self.inner.db.read(|conn| offsets(conn)).await?)
    }
}
