//! [`TimelineStore`]: pages of a patient's records, newest first; the follow feed by
//! `patient_seq`; one record with the envelope it came from.
//!
//! The page order is (occurred_at, event_id) descending, with the event id as the 16
//! bytes it is stored as (the same order as its canonical text). The cursor is that
//! same key, compared as a row value, so a page starts strictly after the last record
//! of the previous one: ties on `occurred_at` are neither repeated nor skipped, and
//! records projected between pages appear if and only if they sort after the cursor.
//! The `records_timeline` index serves the row comparison as a range, read backwards.

use async_trait::async_trait;
use hrx_domain::{Envelope, EventId, PatientId, RecordKind, SensitivityLabel};
use hrx_ports::{PortResult, RecordFactsRow, StoredRecord, TimelineQuery, TimelineStore};
use tokio_postgres::types::ToSql;

use crate::PgStore;
use crate::codec::{self, Cols, query};
use crate::error::{PgError, Result};

const RECORD_COLUMNS: &str = "r.event_id, r.facility_id, r.seq, r.patient_id, r.kind, \
     r.occurred_s, r.occurred_ns, r.recorded_s, r.recorded_ns, r.author, r.sensitivity, \
     r.supersedes, r.superseded_by, r.event_hash, r.log_partition, r.log_offset, \
     r.patient_seq, r.body";

fn decode_record(c: &mut Cols<'_>) -> Result<StoredRecord> {
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

/// A query parameter owned by the builder.
type Param = Box<dyn ToSql + Sync + Send>;

/// Adds a parameter; returns its placeholder number.
fn next(params: &mut Vec<Param>, p: Param) -> usize {
    params.push(p);
    params.len()
}

/// The SQL and parameters of a timeline page. Only placeholders are formatted in; every
/// value is a parameter. Lists are one array parameter each (`= ANY($n)`), so the
/// statement text depends only on which filters are present, and caches well.
fn timeline_sql(q: &TimelineQuery) -> (String, Vec<Param>) {
    let mut sql = format!("SELECT {RECORD_COLUMNS} FROM records r WHERE r.patient_id = $1");
    let mut params: Vec<Param> = vec![Box::new(q.patient_id.as_str().to_owned())];

    if !q.kinds.is_empty() {
        let kinds: Vec<i32> = q.kinds.iter().map(|k| k.code()).collect();
        let n = next(&mut params, Box::new(kinds));
        sql.push_str(&format!(" AND r.kind = ANY(${n}::integer[])"));
    }
    if !q.facilities.is_empty() {
        let facilities: Vec<String> = q.facilities.iter().map(|f| f.as_str().to_owned()).collect();
        let n = next(&mut params, Box::new(facilities));
        sql.push_str(&format!(" AND r.facility_id = ANY(${n}::text[])"));
    }
    if let Some(from) = q.occurred_from {
        let (s, ns) = codec::ts(from);
        let a = next(&mut params, Box::new(s));
        let b = next(&mut params, Box::new(ns));
        sql.push_str(&format!(
            " AND (r.occurred_s, r.occurred_ns) >= (${a}::bigint, ${b}::integer)"
        ));
    }
    if let Some(until) = q.occurred_until {
        let (s, ns) = codec::ts(until);
        let a = next(&mut params, Box::new(s));
        let b = next(&mut params, Box::new(ns));
        sql.push_str(&format!(
            " AND (r.occurred_s, r.occurred_ns) < (${a}::bigint, ${b}::integer)"
        ));
    }
    if let Some((at, id)) = &q.after {
        let (s, ns) = codec::ts(*at);
        let a = next(&mut params, Box::new(s));
        let b = next(&mut params, Box::new(ns));
        let c = next(&mut params, Box::new(codec::id(id)));
        sql.push_str(&format!(
            " AND (r.occurred_s, r.occurred_ns, r.event_id) < (${a}::bigint, ${b}::integer, ${c}::bytea)"
        ));
    }
    let n = next(&mut params, Box::new(codec::limit(q.limit)));
    sql.push_str(&format!(
        " ORDER BY r.occurred_s DESC, r.occurred_ns DESC, r.event_id DESC LIMIT ${n}"
    ));
    (sql, params)
}

#[async_trait]
impl TimelineStore for PgStore {
    async fn timeline(&self, q: &TimelineQuery) -> PortResult<Vec<StoredRecord>> {
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        let what = "reading a timeline page";
        let (sql, params) = timeline_sql(q);
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let client = self.client(what).await?;
        let rows = query(&client, what, &sql, &refs).await?;
        Ok(codec::collect(&rows, decode_record)?)
    }

    /// The record and its envelope in one statement (one snapshot). The envelope must
    /// hash to the record's event hash; anything else is corruption.
    async fn record(&self, event_id: EventId) -> PortResult<Option<(StoredRecord, Envelope)>> {
        let what = "reading a record";
        let client = self.client(what).await?;
        let rows = query(
            &client,
            what,
            &format!(
                "SELECT {RECORD_COLUMNS}, e.payload_type, e.key_id, e.signature, e.payload \
                 FROM records r LEFT JOIN record_envelopes e ON e.event_id = r.event_id \
                 WHERE r.event_id = $1"
            ),
            &[&codec::id(&event_id)],
        )
        .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let mut c = Cols::new(row);
        let record = decode_record(&mut c)?;
        let missing = || {
            PgError::Corrupt(format!(
                "record {event_id} has no envelope, or one that does not hash to its event hash"
            ))
        };
        let envelope = (|| -> Result<Envelope> {
            Ok(Envelope {
                payload_type: c.opt_text()?.ok_or_else(missing)?,
                key_id: c.opt_text()?.ok_or_else(missing)?,
                signature: c.blob()?,
                payload: c.blob()?,
            })
        })()
        .map_err(|_| missing())?;
        if envelope.event_hash() != record.event_hash {
            return Err(missing().into());
        }
        Ok(Some((record, envelope)))
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
        let what = "reading records after a cursor";
        let client = self.client(what).await?;
        let rows = query(
            &client,
            what,
            &format!(
                "SELECT {RECORD_COLUMNS} FROM records r \
                 WHERE r.patient_id = $1 AND r.patient_seq > $2 ORDER BY r.patient_seq LIMIT $3"
            ),
            &[
                &patient_id.as_str(),
                &codec::bound(after),
                &codec::limit(limit),
            ],
        )
        .await?;
        Ok(codec::collect(&rows, decode_record)?)
    }

    /// In projection order (`patient_seq`); the bodies are not read.
    async fn record_facts(&self, patient_id: &PatientId) -> PortResult<Vec<RecordFactsRow>> {
        let what = "reading record facts";
        let client = self.client(what).await?;
        let rows = query(
            &client,
            what,
            "SELECT facility_id, kind, occurred_s, occurred_ns, sensitivity FROM records \
             WHERE patient_id = $1 ORDER BY patient_seq",
            &[&patient_id.as_str()],
        )
        .await?;
        Ok(codec::collect(&rows, |c| {
            Ok(RecordFactsRow {
                facility_id: c.facility()?,
                kind: c.code(RecordKind::from_code)?,
                occurred_at: c.ts()?,
                sensitivity: c.code_list(SensitivityLabel::from_code)?,
            })
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrx_domain::{FacilityId, Timestamp};

    #[test]
    fn filters_are_placeholders_never_values() {
        let q = TimelineQuery {
            patient_id: PatientId::parse("026062001234").unwrap(),
            kinds: vec![RecordKind::Condition, RecordKind::Allergy],
            facilities: vec![FacilityId::parse("26012").unwrap()],
            occurred_from: Some(Timestamp::new(5, 0).unwrap()),
            occurred_until: None,
            after: None,
            limit: 10,
        };
        let (sql, params) = timeline_sql(&q);
        assert!(!sql.contains("026062001234") && !sql.contains("26012"));
        assert!(sql.contains("r.kind = ANY($2::integer[])"));
        assert!(sql.contains("r.facility_id = ANY($3::text[])"));
        assert!(sql.ends_with("LIMIT $6"));
        // patient, kinds, facilities, from (two), limit
        assert_eq!(params.len(), 6);
    }
}
