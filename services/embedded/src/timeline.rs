//! [`TimelineStore`]: pages of a patient's records, newest first, and the follow feed
//! by `patient_seq`.
//!
//! The page order is (occurred_at, event_id) descending, with the event id as the 16
//! bytes it is stored as (the same order as its canonical text). The cursor is that
//! same key, compared as a row value, so a page starts strictly after the last record
//! of the previous one: ties on `occurred_at` are neither repeated nor skipped, and
//! records projected between pages appear if and only if they sort after the cursor.

use async_trait::async_trait;
use hrx_domain::{Envelope, EventId, PatientId, RecordKind, SensitivityLabel};
use hrx_ports::{PortResult, RecordFactsRow, StoredRecord, TimelineQuery, TimelineStore};
use rusqlite::types::Value;
use rusqlite::{Connection, params, params_from_iter};

use crate::SqliteNode;
use crate::codec::{self, Cols, Values};
use crate::error::{EmbeddedError, Result};
use crate::log::envelope_at;

const RECORD_COLUMNS: &str = "event_id, facility_id, seq, patient_id, kind, occurred_s, \
     occurred_ns, recorded_s, recorded_ns, author, sensitivity, supersedes, superseded_by, \
     event_hash, log_partition, log_offset, patient_seq, body";

fn decode_record(c: &mut Cols<'_, '_>) -> Result<StoredRecord> {
    Ok(StoredRecord {
        event_id: c.event_id()?,
        facility_id: c.facility()?,
        seq: c.u64()?,
        patient_id: c.patient()?,
        kind: c.code(RecordKind::from_code)?,
        occurred_at: c.ts()?,
        recorded_at: c.ts()?,
        author: c.text()?,
        sensitivity: c.code_list(SensitivityLabel::from_code)?,
        supersedes: c.opt_event_id()?,
        superseded_by: c.opt_event_id()?,
        event_hash: c.sha256()?,
        position: c.position()?,
        patient_seq: c.u64()?,
        body: c.blob()?,
    })
}

/// The SQL and parameters of a timeline page. Only placeholders are formatted in; every
/// value is a parameter.
fn timeline_sql(q: &TimelineQuery) -> (String, Values) {
    let mut sql = format!("SELECT {RECORD_COLUMNS} FROM records WHERE patient_id = ?");
    let mut values: Values = vec![Value::Text(q.patient_id.as_str().to_owned())];

    let mut kinds: Vec<i64> = q.kinds.iter().map(|k| i64::from(k.code())).collect();
    kinds.sort_unstable();
    kinds.dedup();
    if !kinds.is_empty() {
        sql.push_str(&format!(" AND kind IN ({})", placeholders(kinds.len())));
        values.extend(kinds.into_iter().map(Value::Integer));
    }
    let mut facilities: Vec<&str> = q.facilities.iter().map(|f| f.as_str()).collect();
    facilities.sort_unstable();
    facilities.dedup();
    if !facilities.is_empty() {
        sql.push_str(&format!(
            " AND facility_id IN ({})",
            placeholders(facilities.len())
        ));
        values.extend(facilities.into_iter().map(|f| Value::Text(f.to_owned())));
    }
    if let Some(from) = q.occurred_from {
        let (s, ns) = codec::ts(from);
        sql.push_str(" AND (occurred_s, occurred_ns) >= (?, ?)");
        values.extend([Value::Integer(s), Value::Integer(ns)]);
    }
    if let Some(until) = q.occurred_until {
        let (s, ns) = codec::ts(until);
        sql.push_str(" AND (occurred_s, occurred_ns) < (?, ?)");
        values.extend([Value::Integer(s), Value::Integer(ns)]);
    }
    if let Some((at, id)) = &q.after {
        let (s, ns) = codec::ts(*at);
        sql.push_str(" AND (occurred_s, occurred_ns, event_id) < (?, ?, ?)");
        values.extend([
            Value::Integer(s),
            Value::Integer(ns),
            Value::Blob(codec::id(id).to_vec()),
        ]);
    }
    sql.push_str(" ORDER BY occurred_s DESC, occurred_ns DESC, event_id DESC LIMIT ?");
    values.push(Value::Integer(codec::limit(q.limit)));
    (sql, values)
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn record(conn: &mut Connection, id: &EventId) -> Result<Option<(StoredRecord, Envelope)>> {
    // One snapshot for the record and its log entry.
    let tx = conn.transaction()?;
    let found = codec::first(
        &mut *tx.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE event_id = ?1"
        ))?,
        [codec::id(id)],
        decode_record,
    )?;
    let Some(record) = found else {
        return Ok(None);
    };
    let missing = || {
        EmbeddedError::Corrupt(format!(
            "record {id} names log position {}:{}, which holds no entry for it",
            record.position.partition, record.position.offset
        ))
    };
    // The embedded log has one partition; a record from elsewhere cannot be served.
    if record.position.partition != 0 {
        return Err(missing());
    }
    let envelope = envelope_at(&tx, record.position.offset)?.ok_or_else(missing)?;
    if envelope.event_hash() != record.event_hash {
        return Err(missing());
    }
    tx.finish()?;
    Ok(Some((record, envelope)))
}

#[async_trait]
impl TimelineStore for SqliteNode {
    async fn timeline(&self, query: &TimelineQuery) -> PortResult<Vec<StoredRecord>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let (sql, values) = timeline_sql(query);
        Ok(self
            .inner
            .db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&sql)?;
                codec::collect(&mut stmt, params_from_iter(values), decode_record)
            })
            .await?)
    }

    async fn record(&self, event_id: EventId) -> PortResult<Option<(StoredRecord, Envelope)>> {
        Ok(self
            .inner
            .db
            .read(move |conn| record(conn, &event_id))
            .await?)
    }

    async fn records_after(
        &self,
        patient_id: &PatientId,
        after: u64,
        limit: usize,
    ) -> PortResult<Vec<StoredRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let patient = patient_id.clone();
        Ok(self
            .inner
            .db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records \
                     WHERE patient_id = ?1 AND patient_seq > ?2 ORDER BY patient_seq LIMIT ?3"
                ))?;
                codec::collect(
                    &mut stmt,
                    params![patient.as_str(), codec::bound(after), codec::limit(limit)],
                    decode_record,
                )
            })
            .await?)
    }

    async fn record_facts(&self, patient_id: &PatientId) -> PortResult<Vec<RecordFactsRow>> {
        let patient = patient_id.clone();
        Ok(self
            .inner
            .db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT facility_id, kind, occurred_s, occurred_ns, sensitivity \
                     FROM records WHERE patient_id = ?1",
                )?;
                codec::collect(&mut stmt, [patient.as_str()], |c| {
                    Ok(RecordFactsRow {
                        facility_id: c.facility()?,
                        kind: c.code(RecordKind::from_code)?,
                        occurred_at: c.ts()?,
                        sensitivity: c.code_list(SensitivityLabel::from_code)?,
                    })
                })
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_placeholders_never_values() {
        let q = TimelineQuery {
            patient_id: PatientId::parse("026062001234").unwrap(),
            kinds: vec![
                RecordKind::Condition,
                RecordKind::Condition,
                RecordKind::Allergy,
            ],
            facilities: vec![hrx_domain::FacilityId::parse("26012").unwrap()],
            occurred_from: None,
            occurred_until: None,
            after: None,
            limit: 10,
        };
        let (sql, values) = timeline_sql(&q);
        assert!(!sql.contains("026062001234") && !sql.contains("26012"));
        assert!(sql.contains("kind IN (?, ?)"));
        // patient, two kinds, one facility, limit
        assert_eq!(values.len(), 5);
    }
}
