//! Conversions between domain values and PostgreSQL columns (conventions in
//! [`crate::schema`]), and the query helpers every module uses.
//!
//! Reading goes through [`Cols`], which walks a row's columns in SELECT order and parses
//! each into its domain type; anything that does not decode or parse (a NULL where a
//! value belongs, an unknown enum code, a malformed id, a hash of the wrong length) is
//! [`PgError::Corrupt`], naming the column and never the value.

use deadpool_postgres::GenericClient;
use hrx_domain::audit::Reader;
use hrx_domain::consent::{Basis, ConsentForm};
use hrx_domain::{Envelope, EventId, FacilityId, PatientId, Sha256, Timestamp};
use hrx_ports::LogPosition;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql};

use crate::error::{PgError, Result, db};

/// A timestamp as its two columns: seconds (BIGINT) and nanoseconds (INTEGER).
pub(crate) fn ts(t: Timestamp) -> (i64, i32) {
    (t.seconds(), t.nanos())
}

/// An optional timestamp as two nullable columns.
pub(crate) fn opt_ts(t: Option<Timestamp>) -> (Option<i64>, Option<i32>) {
    match t {
        Some(t) => (Some(t.seconds()), Some(t.nanos())),
        None => (None, None),
    }
}

/// An event id as its 16 big-endian bytes (BYTEA compares bytewise, which is the order
/// of the canonical text).
pub(crate) fn id(e: &EventId) -> Vec<u8> {
    e.to_bytes().to_vec()
}

pub(crate) fn opt_id(e: Option<&EventId>) -> Option<Vec<u8>> {
    e.map(id)
}

/// An unsigned lower bound for a query ("greater than `v`"): values past i64::MAX
/// cannot be stored, so clamping keeps the answer right (nothing is greater).
pub(crate) fn bound(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `LIMIT`.
pub(crate) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A list of enum codes as comma-separated decimal text, order and repeats kept. Used
/// only to pass one list per row through `unnest` (PostgreSQL arrays must be
/// rectangular, so a list of lists cannot be one parameter); the statement turns it
/// back into an INTEGER[] with `string_to_array`, and the column holds the array.
pub(crate) fn codes<T: Copy>(items: &[T], code: impl Fn(T) -> i32) -> String {
    items
        .iter()
        .map(|i| code(*i).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Bases as 17 bytes each: a tag (1 author, 2 patient-signed consent, 3 break-glass,
/// 4 attested consent) and the event id (zeros for author). Entries written before
/// consent had forms hold tag 2 for every consent basis (and hash it as 2 in their
/// format). The same encoding as the embedded store, so audit rows mean the same on
/// both.
pub(crate) fn bases(bases: &[Basis]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bases.len() * 17);
    for b in bases {
        let (tag, event) = match b {
            Basis::Author => (1u8, [0u8; 16]),
            Basis::Consent {
                grant,
                form: ConsentForm::PatientSigned,
            } => (2, grant.to_bytes()),
            Basis::BreakGlass(e) => (3, e.to_bytes()),
            Basis::Consent {
                grant,
                form: ConsentForm::Attested,
            } => (4, grant.to_bytes()),
        };
        out.push(tag);
        out.extend_from_slice(&event);
    }
    out
}

pub(crate) fn event_id_from_bytes(bytes: &[u8]) -> Option<EventId> {
    let bytes: [u8; 16] = bytes.try_into().ok()?;
    Some(EventId::from_bytes(bytes))
}

fn decode_bases(bytes: &[u8]) -> Option<Vec<Basis>> {
    if !bytes.len().is_multiple_of(17) {
        return None;
    }
    bytes
        .chunks_exact(17)
        .map(|c| {
            let event = event_id_from_bytes(&c[1..]);
            let consent = |form| event.map(|grant| Basis::Consent { grant, form });
            match c[0] {
                1 => Some(Basis::Author),
                2 => consent(ConsentForm::PatientSigned),
                3 => event.map(Basis::BreakGlass),
                4 => consent(ConsentForm::Attested),
                _ => None,
            }
        })
        .collect()
}

/// Runs `sql` (prepared once per connection and cached) and returns its rows.
pub(crate) async fn query<C: GenericClient>(
    c: &C,
    what: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(|e| db(what, &e))?;
    c.query(&stmt, params).await.map_err(|e| db(what, &e))
}

/// Runs `sql` (prepared and cached) and returns the number of rows it changed.
pub(crate) async fn execute<C: GenericClient>(
    c: &C,
    what: &str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64> {
    let stmt = c.prepare_cached(sql).await.map_err(|e| db(what, &e))?;
    c.execute(&stmt, params).await.map_err(|e| db(what, &e))
}

/// Decodes every row with `f`.
pub(crate) fn collect<T>(
    rows: &[Row],
    mut f: impl FnMut(&mut Cols<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    rows.iter().map(|r| f(&mut Cols::new(r))).collect()
}

/// Reads a row's columns in order, each parsed into its domain type.
pub(crate) struct Cols<'r> {
    row: &'r Row,
    next: usize,
}

impl<'r> Cols<'r> {
    pub(crate) fn new(row: &'r Row) -> Self {
        Self { row, next: 0 }
    }

    fn get<T: FromSql<'r>>(&mut self, expected: &str) -> Result<(usize, T)> {
        let i = self.next;
        self.next += 1;
        // The driver's error would say what it found; the column and the expected type
        // are enough, and never a value.
        let v = self.row.try_get(i).map_err(|_| self.corrupt(i, expected))?;
        Ok((i, v))
    }

    /// The error for column `i`: its name and what it should have held.
    fn corrupt(&self, i: usize, expected: &str) -> PgError {
        let column = self.row.columns().get(i).map_or("?", |c| c.name());
        PgError::Corrupt(format!("column {column} does not hold {expected}"))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        let (i, v) = self.get::<i64>("a BIGINT")?;
        u64::try_from(v).map_err(|_| self.corrupt(i, "a non-negative integer"))
    }

    pub(crate) fn opt_u64(&mut self) -> Result<Option<u64>> {
        let (i, v) = self.get::<Option<i64>>("a BIGINT or NULL")?;
        v.map(|v| u64::try_from(v).map_err(|_| self.corrupt(i, "a non-negative integer")))
            .transpose()
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let (i, v) = self.get::<i64>("a BIGINT")?;
        u32::try_from(v).map_err(|_| self.corrupt(i, "a partition number"))
    }

    pub(crate) fn text(&mut self) -> Result<String> {
        Ok(self.get::<String>("TEXT")?.1)
    }

    pub(crate) fn opt_text(&mut self) -> Result<Option<String>> {
        Ok(self.get::<Option<String>>("TEXT or NULL")?.1)
    }

    pub(crate) fn blob(&mut self) -> Result<Vec<u8>> {
        Ok(self.get::<Vec<u8>>("BYTEA")?.1)
    }

    /// Two columns: seconds and nanoseconds.
    pub(crate) fn ts(&mut self) -> Result<Timestamp> {
        let (i, s) = self.get::<i64>("a BIGINT")?;
        let (_, ns) = self.get::<i32>("an INTEGER")?;
        Timestamp::new(s, ns).map_err(|_| self.corrupt(i, "a timestamp in range"))
    }

    /// Two nullable columns: both NULL is `None`.
    pub(crate) fn opt_ts(&mut self) -> Result<Option<Timestamp>> {
        let (i, s) = self.get::<Option<i64>>("a BIGINT or NULL")?;
        let (_, ns) = self.get::<Option<i32>>("an INTEGER or NULL")?;
        match (s, ns) {
            (None, None) => Ok(None),
            (Some(s), Some(ns)) => Timestamp::new(s, ns)
                .map(Some)
                .map_err(|_| self.corrupt(i, "a timestamp in range")),
            _ => Err(self.corrupt(i, "both halves of a timestamp")),
        }
    }

    pub(crate) fn event_id(&mut self) -> Result<EventId> {
        let (i, b) = self.get::<&[u8]>("BYTEA")?;
        event_id_from_bytes(b).ok_or_else(|| self.corrupt(i, "a 16-byte event id"))
    }

    pub(crate) fn opt_event_id(&mut self) -> Result<Option<EventId>> {
        let (i, b) = self.get::<Option<&[u8]>>("BYTEA or NULL")?;
        b.map(|b| event_id_from_bytes(b).ok_or_else(|| self.corrupt(i, "a 16-byte event id")))
            .transpose()
    }

    pub(crate) fn sha256(&mut self) -> Result<Sha256> {
        let (i, b) = self.get::<&[u8]>("BYTEA")?;
        Sha256::from_slice(b).map_err(|_| self.corrupt(i, "a 32-byte hash"))
    }

    pub(crate) fn opt_sha256(&mut self) -> Result<Option<Sha256>> {
        let (i, b) = self.get::<Option<&[u8]>>("BYTEA or NULL")?;
        b.map(|b| Sha256::from_slice(b).map_err(|_| self.corrupt(i, "a 32-byte hash")))
            .transpose()
    }

    pub(crate) fn patient(&mut self) -> Result<PatientId> {
        let (i, s) = self.get::<&str>("TEXT")?;
        PatientId::parse(s).map_err(|_| self.corrupt(i, "a patient id"))
    }

    pub(crate) fn facility(&mut self) -> Result<FacilityId> {
        let (i, s) = self.get::<&str>("TEXT")?;
        FacilityId::parse(s).map_err(|_| self.corrupt(i, "a facility id"))
    }

    pub(crate) fn opt_facility(&mut self) -> Result<Option<FacilityId>> {
        let (i, s) = self.get::<Option<&str>>("TEXT or NULL")?;
        s.map(|s| FacilityId::parse(s).map_err(|_| self.corrupt(i, "a facility id")))
            .transpose()
    }

    /// Who read (an audit entry's `reader` column).
    pub(crate) fn reader(&mut self) -> Result<Reader> {
        let (i, s) = self.get::<&str>("TEXT")?;
        Reader::parse(s).ok_or_else(|| self.corrupt(i, "a reader"))
    }

    /// An enum stored as its code; 0 is `None`.
    pub(crate) fn opt_code<T>(
        &mut self,
        from_code: impl Fn(i32) -> Option<T>,
    ) -> Result<Option<T>> {
        let (i, c) = self.get::<i32>("an INTEGER")?;
        match c {
            0 => Ok(None),
            c => from_code(c)
                .map(Some)
                .ok_or_else(|| self.corrupt(i, "a known code")),
        }
    }

    /// A signed envelope, four columns: payload type, key id, signature, payload.
    pub(crate) fn envelope(&mut self) -> Result<Envelope> {
        Ok(Envelope {
            payload_type: self.text()?,
            key_id: self.text()?,
            signature: self.blob()?,
            payload: self.blob()?,
        })
    }

    /// An enum stored as its code.
    pub(crate) fn code<T>(&mut self, from_code: impl Fn(i32) -> Option<T>) -> Result<T> {
        let (i, c) = self.get::<i32>("an INTEGER")?;
        from_code(c).ok_or_else(|| self.corrupt(i, "a known code"))
    }

    /// An INTEGER[] of codes, in the order written.
    pub(crate) fn code_list<T>(&mut self, from_code: impl Fn(i32) -> Option<T>) -> Result<Vec<T>> {
        let (i, codes) = self.get::<Vec<i32>>("an INTEGER[]")?;
        codes
            .into_iter()
            .map(&from_code)
            .collect::<Option<Vec<T>>>()
            .ok_or_else(|| self.corrupt(i, "a list of known codes"))
    }

    pub(crate) fn bases(&mut self) -> Result<Vec<Basis>> {
        let (i, b) = self.get::<&[u8]>("BYTEA")?;
        decode_bases(b).ok_or_else(|| self.corrupt(i, "a list of bases"))
    }

    /// Two columns: partition and offset.
    pub(crate) fn position(&mut self) -> Result<LogPosition> {
        let partition = self.u32()?;
        let offset = self.u64()?;
        Ok(LogPosition { partition, offset })
    }

    /// Two nullable columns: partition and offset.
    pub(crate) fn opt_position(&mut self) -> Result<Option<LogPosition>> {
        let i = self.next;
        let partition = self.get::<Option<i64>>("a BIGINT or NULL")?.1;
        let offset = self.opt_u64()?;
        match (partition, offset) {
            (None, None) => Ok(None),
            (Some(p), Some(offset)) => u32::try_from(p)
                .map(|partition| Some(LogPosition { partition, offset }))
                .map_err(|_| self.corrupt(i, "a partition number")),
            _ => Err(self.corrupt(i, "both halves of a log position")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrx_domain::RecordKind;

    fn eid(n: u128) -> EventId {
        EventId::from_bytes(n.to_be_bytes())
    }

    #[test]
    fn code_lists_keep_order_and_repeats() {
        let kinds = [
            RecordKind::Procedure,
            RecordKind::Encounter,
            RecordKind::Procedure,
        ];
        assert_eq!(codes(&kinds, RecordKind::code), "7,1,7");
        assert_eq!(codes::<RecordKind>(&[], RecordKind::code), "");
    }

    #[test]
    fn bases_round_trip() {
        let b = vec![
            Basis::Author,
            Basis::Consent {
                grant: eid(7),
                form: ConsentForm::PatientSigned,
            },
            Basis::BreakGlass(eid(9)),
            Basis::Consent {
                grant: eid(8),
                form: ConsentForm::Attested,
            },
        ];
        let encoded = bases(&b);
        assert_eq!(encoded[17], 2, "patient-signed consent is tag 2");
        assert_eq!(encoded[51], 4, "attested consent is tag 4");
        assert_eq!(decode_bases(&encoded), Some(b));
        assert_eq!(decode_bases(&[5; 17]), None);
        assert_eq!(decode_bases(&[1; 16]), None);
    }

    #[test]
    fn event_id_bytes_order_like_their_text() {
        let a = EventId::parse("0190f5a2-7c3e-7b61-9d2a-3c4b5d6e7f80").unwrap();
        let b = EventId::parse("0190f5a2-7c3e-7b61-9d2a-3c4b5d6e7f8a").unwrap();
        assert!(a.to_string() < b.to_string());
        assert!(id(&a) < id(&b));
        assert_eq!(event_id_from_bytes(&id(&a)), Some(a));
    }

    #[test]
    fn bounds_clamp() {
        assert_eq!(bound(5), 5);
        assert_eq!(bound(u64::MAX), i64::MAX);
        assert_eq!(limit(usize::MAX), i64::MAX);
    }
}
