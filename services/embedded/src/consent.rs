//! [`ConsentStore`]: a patient's consent events and break-glass windows; the facts a
//! facility's consent events are judged against (standing, break-glass counts); and
//! the single-use patient request ids.

use async_trait::async_trait;
use hrx_domain::consent::BreakGlassWindow;
use hrx_domain::{EventId, FacilityId, PatientId, Timestamp};
use hrx_ports::{BreakGlassUse, ConsentEventKind, ConsentEventRow, ConsentStore, PortResult};
use rusqlite::{Connection, params};

use crate::SqliteNode;
use crate::codec::{self, Cols};
use crate::error::Result;

const CONSENT_COLUMNS: &str = "event_id, patient_id, kind, facility_id, received_s, \
     received_ns, payload_type, key_id, signature, payload";

/// Decodes a row of [`CONSENT_COLUMNS`].
pub(crate) fn decode_consent_event(c: &mut Cols<'_, '_>) -> Result<ConsentEventRow> {
    Ok(ConsentEventRow {
        event_id: c.event_id()?,
        patient_id: c.patient()?,
        kind: c.code(ConsentEventKind::from_code)?,
        facility_id: c.opt_facility()?,
        received_at: c.ts()?,
        envelope: c.envelope()?,
    })
}

pub(crate) fn consent_event_by_id(
    conn: &Connection,
    id: &EventId,
) -> Result<Option<ConsentEventRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CONSENT_COLUMNS} FROM consent_events WHERE event_id = ?1"
    ))?;
    codec::first(&mut stmt, [codec::id(id)], decode_consent_event)
}

/// SQLite's LIMIT is a signed 64-bit integer.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn consent_events(
    conn: &Connection,
    patient: &PatientId,
    limit: usize,
) -> Result<Vec<ConsentEventRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CONSENT_COLUMNS} FROM consent_events WHERE patient_id = ?1 ORDER BY rowid \
         LIMIT ?2"
    ))?;
    codec::collect(
        &mut stmt,
        params![patient.as_str(), sql_limit(limit)],
        decode_consent_event,
    )
}

/// Facility-attested grants received at or after `since`, newest first.
pub(crate) fn attested_grants(
    conn: &Connection,
    since: Option<Timestamp>,
    limit: usize,
) -> Result<Vec<ConsentEventRow>> {
    let (s, ns) = codec::ts(since.unwrap_or(Timestamp::from_unix_seconds(0).expect("epoch")));
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CONSENT_COLUMNS} FROM consent_events \
         WHERE kind = ?1 AND (received_s, received_ns) >= (?2, ?3) \
         ORDER BY received_s DESC, received_ns DESC, rowid DESC LIMIT ?4"
    ))?;
    codec::collect(
        &mut stmt,
        params![
            ConsentEventKind::AttestedGrant.code(),
            s,
            ns,
            codec::limit(limit)
        ],
        decode_consent_event,
    )
}

/// Columns of a window, for [`decode_window`].
pub(crate) const WINDOW_COLUMNS: &str =
    "b.event_id, b.facility_id, b.declared_s, b.declared_ns, b.expires_s, b.expires_ns";

pub(crate) fn decode_window(c: &mut Cols<'_, '_>) -> Result<BreakGlassWindow> {
    Ok(BreakGlassWindow {
        event_id: c.event_id()?,
        facility_id: c.facility()?,
        declared_at: c.ts()?,
        expires_at: c.ts()?,
    })
}

fn windows(conn: &Connection, patient: &PatientId, limit: usize) -> Result<Vec<BreakGlassWindow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {WINDOW_COLUMNS} FROM break_glass b WHERE b.patient_id = ?1 ORDER BY b.rowid \
         LIMIT ?2"
    ))?;
    codec::collect(
        &mut stmt,
        params![patient.as_str(), sql_limit(limit)],
        decode_window,
    )
}

fn latest_authored(
    conn: &Connection,
    facility: &FacilityId,
    patient: &PatientId,
) -> Result<Option<Timestamp>> {
    let mut stmt = conn.prepare_cached(
        "SELECT recorded_s, recorded_ns FROM records WHERE facility_id = ?1 AND patient_id = ?2 \
         ORDER BY recorded_s DESC, recorded_ns DESC LIMIT 1",
    )?;
    codec::first(
        &mut stmt,
        params![facility.as_str(), patient.as_str()],
        |c| c.ts(),
    )
}

fn declared_since(conn: &Connection, facility: &FacilityId, since: Timestamp) -> Result<u64> {
    let (s, ns) = codec::ts(since);
    let mut stmt = conn.prepare_cached(
        "SELECT count(*) FROM break_glass \
         WHERE facility_id = ?1 AND (declared_s, declared_ns) > (?2, ?3)",
    )?;
    Ok(codec::first(&mut stmt, params![facility.as_str(), s, ns], |c| c.u64())?.unwrap_or(0))
}

#[async_trait]
impl ConsentStore for SqliteNode {
    async fn consent_events_up_to(
        &self,
        patient_id: &PatientId,
        limit: usize,
    ) -> PortResult<Vec<ConsentEventRow>> {
        let patient = patient_id.clone();
        Ok(self
            .inner
            .db
            .read(move |conn| consent_events(conn, &patient, limit))
            .await?)
    }

    async fn break_glass_up_to(
        &self,
        patient_id: &PatientId,
        limit: usize,
    ) -> PortResult<Vec<BreakGlassWindow>> {
        let patient = patient_id.clone();
        Ok(self
            .inner
            .db
            .read(move |conn| windows(conn, &patient, limit))
            .await?)
    }

    async fn break_glass_uses_of(&self, patient_id: &PatientId) -> PortResult<Vec<BreakGlassUse>> {
        let patient = patient_id.clone();
        Ok(self
            .inner
            .db
            .read(move |conn| crate::monitor::break_glass_uses(conn, None, Some(&patient)))
            .await?)
    }

    async fn latest_authored(
        &self,
        facility: &FacilityId,
        patient_id: &PatientId,
    ) -> PortResult<Option<Timestamp>> {
        let (facility, patient) = (facility.clone(), patient_id.clone());
        Ok(self
            .inner
            .db
            .read(move |conn| latest_authored(conn, &facility, &patient))
            .await?)
    }

    async fn break_glass_declared_since(
        &self,
        facility: &FacilityId,
        since: Timestamp,
    ) -> PortResult<u64> {
        let facility = facility.clone();
        Ok(self
            .inner
            .db
            .read(move |conn| declared_since(conn, &facility, since))
            .await?)
    }

    async fn claim_request_id(
        &self,
        request_id: EventId,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> PortResult<bool> {
        Ok(self
            .inner
            .db
            .write(move |conn| {
                let tx = conn.transaction()?;
                tx.prepare_cached("DELETE FROM patient_request_ids WHERE used_s < ?1")?
                    .execute([forget_before.seconds()])?;
                let fresh = tx
                    .prepare_cached(
                        "INSERT INTO patient_request_ids (request_id, used_s) VALUES (?1, ?2) \
                         ON CONFLICT (request_id) DO NOTHING",
                    )?
                    .execute(params![codec::id(&request_id), now.seconds()])?
                    == 1;
                tx.commit()?;
                Ok(fresh)
            })
            .await?)
    }
}
