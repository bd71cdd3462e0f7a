//! [`MonitorStore`]: per-facility counters and heads, the exchange matrix, break-glass
//! uses and rejections. Metadata only: no patient data leaves through here except the
//! patient a break-glass window was declared for, which the national center must see.
//!
//! Counters come from two sources (`schema::SOURCE_*`): the projector's, rebuilt by a
//! replay, and ingest's, which are not in the log and survive a reset. A facility's
//! figures are the sum of both.

use std::collections::BTreeMap;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use hrx_domain::{FacilityId, PatientId, Reason, Timestamp};
use hrx_ports::{
    BreakGlassUse, ChainKey, ConsentEventRow, ExchangeCell, FacilityStats, MonitorStore,
    PortResult, RejectionRow,
};
use tokio_postgres::IsolationLevel;

use crate::PgStore;
use crate::codec::{self, Cols, query};
use crate::consent::{WINDOW_COLUMNS, attested_grants, decode_window};
use crate::error::{PgError, Result, db};
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

async fn facility_stats<C: GenericClient>(c: &C) -> Result<Vec<FacilityStats>> {
    let what = "reading facility stats";
    let mut by_facility: BTreeMap<String, FacilityStats> = BTreeMap::new();
    let rows = query(
        c,
        what,
        "SELECT facility_id, accepted, duplicates, last_seen_s, last_seen_ns FROM stats",
        &[],
    )
    .await?;
    for (f, accepted, duplicates, seen) in
        codec::collect(&rows, |c| Ok((c.facility()?, c.u64()?, c.u64()?, c.ts()?)))?
    {
        let s = entry(&mut by_facility, f);
        s.accepted = s.accepted.saturating_add(accepted);
        s.duplicates = s.duplicates.saturating_add(duplicates);
        s.last_seen = s.last_seen.max(Some(seen));
    }

    let rows = query(
        c,
        what,
        "SELECT facility_id, reason, SUM(n)::bigint FROM stats_rejected \
         GROUP BY facility_id, reason HAVING SUM(n) > 0 ORDER BY facility_id, reason",
        &[],
    )
    .await?;
    for (f, reason, n) in codec::collect(&rows, |c| {
        Ok((c.facility()?, c.code(Reason::from_code)?, c.u64()?))
    })? {
        entry(&mut by_facility, f).rejected.push((reason, n));
    }

    // Heads of the projected chains. A plain `GROUP BY chain` would read every link
    // (one per event ever projected); this skips through the primary key's distinct
    // chains and takes each MAX(seq) from it, one index descent per chain.
    let rows = query(
        c,
        what,
        "WITH RECURSIVE chains (chain) AS ( \
           (SELECT chain FROM chain_links ORDER BY chain LIMIT 1) \
           UNION ALL \
           SELECT (SELECT l.chain FROM chain_links l WHERE l.chain > chains.chain \
                   ORDER BY l.chain LIMIT 1) \
           FROM chains WHERE chains.chain IS NOT NULL) \
         SELECT chain, (SELECT max(l.seq) FROM chain_links l WHERE l.chain = chains.chain) \
         FROM chains WHERE chain IS NOT NULL",
        &[],
    )
    .await?;
    for (chain, head) in codec::collect(&rows, |c| Ok((c.text()?, c.u64()?)))? {
        match ChainKey::parse(&chain) {
            Some(ChainKey::Facility(f)) => entry(&mut by_facility, f).head_seq = head,
            // Heads are per facility; the registry's and patients' chains have none.
            Some(ChainKey::Registry | ChainKey::Patient(_) | ChainKey::Reports(_)) => {}
            None => {
                return Err(PgError::Corrupt(
                    "column chain_links.chain does not hold a chain key".into(),
                ));
            }
        }
    }
    Ok(by_facility.into_values().collect())
}

fn decode_rejection(c: &mut Cols<'_>) -> Result<RejectionRow> {
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
            PgError::Corrupt("column rejections.field does not hold a known field".into())
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

/// Windows declared at or after `since` (all if `None`), or every window of `patient`
/// when given (the patient's own view; `since` is then ignored), oldest first (ties:
/// projection order), with the reads counted on the audit side. Two statements rather
/// than one with `$n IS NULL OR …`, so that the patient's is an index lookup whatever
/// plan the prepared statement settles on.
pub(crate) async fn break_glass_uses<C: GenericClient>(
    c: &C,
    since: Option<Timestamp>,
    patient: Option<&PatientId>,
) -> Result<Vec<BreakGlassUse>> {
    const WHAT: &str = "reading break-glass uses";
    let select = format!(
        "SELECT {WINDOW_COLUMNS}, b.patient_id, b.clinician, b.reason, COALESCE(r.reads, 0) \
         FROM break_glass b \
         LEFT JOIN break_glass_reads r ON r.window_event_id = b.event_id"
    );
    const ORDER: &str = "ORDER BY b.declared_s, b.declared_ns, b.id";
    let rows = match patient {
        Some(p) => {
            query(
                c,
                WHAT,
                &format!("{select} WHERE b.patient_id = $1 {ORDER}"),
                &[&p.as_str()],
            )
            .await?
        }
        None => {
            let (s, ns) = codec::opt_ts(since);
            query(
                c,
                WHAT,
                &format!(
                    "{select} WHERE $1::bigint IS NULL \
                       OR (b.declared_s, b.declared_ns) >= ($1::bigint, $2::integer) {ORDER}"
                ),
                &[&s, &ns],
            )
            .await?
        }
    };
    codec::collect(&rows, |c| {
        Ok(BreakGlassUse {
            window: decode_window(c)?,
            patient_id: c.patient()?,
            clinician: c.text()?,
            reason: c.text()?,
            reads: c.u64()?,
        })
    })
}

#[async_trait]
impl MonitorStore for PgStore {
    /// Ordered by facility id; `rejected` by reason code. Read in one snapshot.
    async fn facility_stats(&self) -> PortResult<Vec<FacilityStats>> {
        let what = "reading facility stats";
        let mut client = self.client(what).await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| db(what, &e))?;
        let stats = facility_stats(&tx).await?;
        tx.commit().await.map_err(|e| db(what, &e))?;
        Ok(stats)
    }

    /// Ordered by reader, then author.
    async fn exchange_matrix(&self) -> PortResult<Vec<ExchangeCell>> {
        let what = "reading the exchange matrix";
        let client = self.client(what).await?;
        let rows = query(
            &client,
            what,
            "SELECT reader, author, records, accesses FROM exchange_matrix \
             ORDER BY reader, author",
            &[],
        )
        .await?;
        Ok(codec::collect(&rows, |c| {
            Ok(ExchangeCell {
                reader: c.facility()?,
                author: c.facility()?,
                records: c.u64()?,
                accesses: c.u64()?,
            })
        })?)
    }

    /// Windows declared at or after `since` (all if `None`), oldest first, with the
    /// reads counted on the audit side.
    async fn break_glass_uses(&self, since: Option<Timestamp>) -> PortResult<Vec<BreakGlassUse>> {
        let client = self.client("reading break-glass uses").await?;
        Ok(break_glass_uses(&client, since, None).await?)
    }

    /// Newest first (ties: the later projected first).
    async fn attested_grants(
        &self,
        since: Option<Timestamp>,
        limit: usize,
    ) -> PortResult<Vec<ConsentEventRow>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let client = self.client("reading attested grants").await?;
        Ok(attested_grants(&client, since, limit).await?)
    }

    /// Newest first (ties: the later written first).
    async fn rejections(
        &self,
        facility: Option<&FacilityId>,
        limit: usize,
    ) -> PortResult<Vec<RejectionRow>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        const COLUMNS: &str = "log_partition, log_offset, facility_id, event_id, seq, \
             event_hash, reason, field, message, at_s, at_ns";
        const ORDER: &str = "ORDER BY at_s DESC, at_ns DESC, id DESC LIMIT";
        let what = "reading rejections";
        let client = self.client(what).await?;
        let limit = codec::limit(limit);
        let rows = match facility {
            Some(f) => {
                query(
                    &client,
                    what,
                    &format!("SELECT {COLUMNS} FROM rejections WHERE facility_id = $1 {ORDER} $2"),
                    &[&f.as_str(), &limit],
                )
                .await?
            }
            None => {
                query(
                    &client,
                    what,
                    &format!("SELECT {COLUMNS} FROM rejections {ORDER} $1"),
                    &[&limit],
                )
                .await?
            }
        };
        Ok(codec::collect(&rows, decode_rejection)?)
    }

    async fn projected_offsets(&self) -> PortResult<Vec<(u32, u64)>> {
        let client = self.client("reading projector offsets").await?;
        Ok(offsets(&client).await?)
    }
}
