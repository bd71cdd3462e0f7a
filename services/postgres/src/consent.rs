//! [`ConsentStore`]: a patient's consent events and break-glass windows, in projection
//! order; the facts a facility's consent events are judged against (standing,
//! break-glass counts); the single-use patient request ids; and the consent event
//! lookup the projector uses to check a revocation.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use hrx_domain::consent::BreakGlassWindow;
use hrx_domain::{EventId, FacilityId, PatientId, Timestamp};
use hrx_ports::{BreakGlassUse, ConsentEventKind, ConsentEventRow, ConsentStore, PortResult};

use crate::PgStore;
use crate::codec::{self, Cols, execute, query};
use crate::error::{Result, db};

/// Columns of a consent event, for [`decode_consent_event`].
const CONSENT_COLUMNS: &str = "event_id, patient_id, kind, facility_id, received_s, \
     received_ns, payload_type, key_id, signature, payload";

/// Decodes a row of [`CONSENT_COLUMNS`].
fn decode_consent_event(c: &mut Cols<'_>) -> Result<ConsentEventRow> {
    Ok(ConsentEventRow {
        event_id: c.event_id()?,
        patient_id: c.patient()?,
        kind: c.code(ConsentEventKind::from_code)?,
        facility_id: c.opt_facility()?,
        received_at: c.ts()?,
        envelope: c.envelope()?,
    })
}

pub(crate) async fn consent_event_by_id<C: GenericClient>(
    c: &C,
    id: &EventId,
) -> Result<Option<ConsentEventRow>> {
    let rows = query(
        c,
        "reading a consent event",
        &format!("SELECT {CONSENT_COLUMNS} FROM consent_events WHERE event_id = $1"),
        &[&codec::id(id)],
    )
    .await?;
    rows.first()
        .map(|r| decode_consent_event(&mut Cols::new(r)))
        .transpose()
}

/// Facility-attested grants received at or after `since` (all if `None`), newest first
/// (ties: the later projected first), at most `limit`.
pub(crate) async fn attested_grants<C: GenericClient>(
    c: &C,
    since: Option<Timestamp>,
    limit: usize,
) -> Result<Vec<ConsentEventRow>> {
    let (s, ns) = codec::opt_ts(since);
    let rows = query(
        c,
        "reading attested grants",
        &format!(
            "SELECT {CONSENT_COLUMNS} FROM consent_events \
             WHERE kind = $1 AND ($2::bigint IS NULL \
                OR (received_s, received_ns) >= ($2::bigint, $3::integer)) \
             ORDER BY received_s DESC, received_ns DESC, id DESC LIMIT $4"
        ),
        &[
            &ConsentEventKind::AttestedGrant.code(),
            &s,
            &ns,
            &codec::limit(limit),
        ],
    )
    .await?;
    codec::collect(&rows, decode_consent_event)
}

/// Columns of a window, for [`decode_window`].
pub(crate) const WINDOW_COLUMNS: &str =
    "b.event_id, b.facility_id, b.declared_s, b.declared_ns, b.expires_s, b.expires_ns";

pub(crate) fn decode_window(c: &mut Cols<'_>) -> Result<BreakGlassWindow> {
    Ok(BreakGlassWindow {
        event_id: c.event_id()?,
        facility_id: c.facility()?,
        declared_at: c.ts()?,
        expires_at: c.ts()?,
    })
}

#[async_trait]
impl ConsentStore for PgStore {
    async fn consent_events_up_to(
        &self,
        patient_id: &PatientId,
        limit: usize,
    ) -> PortResult<Vec<ConsentEventRow>> {
        let what = "reading consent events";
        let client = self.client(what).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = query(
            &client,
            what,
            &format!(
                "SELECT {CONSENT_COLUMNS} FROM consent_events WHERE patient_id = $1 ORDER BY id \
                 LIMIT $2"
            ),
            &[&patient_id.as_str(), &limit],
        )
        .await?;
        Ok(codec::collect(&rows, decode_consent_event)?)
    }

    async fn break_glass_up_to(
        &self,
        patient_id: &PatientId,
        limit: usize,
    ) -> PortResult<Vec<BreakGlassWindow>> {
        let what = "reading break-glass windows";
        let client = self.client(what).await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = query(
            &client,
            what,
            &format!(
                "SELECT {WINDOW_COLUMNS} FROM break_glass b WHERE b.patient_id = $1 \
                 ORDER BY b.id LIMIT $2"
            ),
            &[&patient_id.as_str(), &limit],
        )
        .await?;
        Ok(codec::collect(&rows, decode_window)?)
    }

    async fn break_glass_uses_of(&self, patient_id: &PatientId) -> PortResult<Vec<BreakGlassUse>> {
        let client = self.client("reading a patient's break-glass uses").await?;
        Ok(crate::monitor::break_glass_uses(&client, None, Some(patient_id)).await?)
    }

    /// One descent of `records_author`.
    async fn latest_authored(
        &self,
        facility: &FacilityId,
        patient_id: &PatientId,
    ) -> PortResult<Option<Timestamp>> {
        let what = "reading a facility's latest record for a patient";
        let client = self.client(what).await?;
        let rows = query(
            &client,
            what,
            "SELECT recorded_s, recorded_ns FROM records \
             WHERE facility_id = $1 AND patient_id = $2 \
             ORDER BY recorded_s DESC, recorded_ns DESC LIMIT 1",
            &[&facility.as_str(), &patient_id.as_str()],
        )
        .await?;
        Ok(rows.first().map(|r| Cols::new(r).ts()).transpose()?)
    }

    async fn break_glass_declared_since(
        &self,
        facility: &FacilityId,
        since: Timestamp,
    ) -> PortResult<u64> {
        let what = "counting a facility's break-glass declarations";
        let client = self.client(what).await?;
        let (s, ns) = codec::ts(since);
        let rows = query(
            &client,
            what,
            "SELECT count(*) FROM break_glass \
             WHERE facility_id = $1 AND (declared_s, declared_ns) > ($2::bigint, $3::integer)",
            &[&facility.as_str(), &s, &ns],
        )
        .await?;
        Ok(rows
            .first()
            .map(|r| Cols::new(r).u64())
            .transpose()?
            .unwrap_or(0))
    }

    /// Forgets the ids used before `forget_before`, then inserts this one unless it is
    /// there: one transaction, and the primary key decides between concurrent claims
    /// (in any process) of the same id, so exactly one of them gets `true`.
    async fn claim_request_id(
        &self,
        request_id: EventId,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> PortResult<bool> {
        let what = "claiming a patient request id";
        let mut client = self.client(what).await?;
        let tx = client.transaction().await.map_err(|e| db(what, &e))?;
        let (before_s, before_ns) = codec::ts(forget_before);
        execute(
            &tx,
            what,
            "DELETE FROM patient_request_ids \
             WHERE (used_s, used_ns) < ($1::bigint, $2::integer)",
            &[&before_s, &before_ns],
        )
        .await?;
        let (s, ns) = codec::ts(now);
        let inserted = execute(
            &tx,
            what,
            "INSERT INTO patient_request_ids (request_id, used_s, used_ns) \
             VALUES ($1, $2, $3) ON CONFLICT (request_id) DO NOTHING",
            &[&codec::id(&request_id), &s, &ns],
        )
        .await?;
        tx.commit().await.map_err(|e| db(what, &e))?;
        Ok(inserted == 1)
    }
}
