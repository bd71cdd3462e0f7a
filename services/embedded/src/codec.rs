//! Conversions between domain values and SQLite columns (conventions in [`crate::schema`]).
//!
//! Reading goes through [`Cols`], which walks a row's columns in SELECT order and
//! parses each into its domain type; anything that does not parse (an unknown enum
//! code, a malformed id, a hash of the wrong length) is [`EmbeddedError::Corrupt`],
//! naming the column and never the value.

use hrx_domain::audit::Reader;
use hrx_domain::consent::{Basis, ConsentForm};
use hrx_domain::{EventId, FacilityId, PatientId, Sha256, Timestamp};
use hrx_ports::LogPosition;
use rusqlite::types::{FromSql, Value};
use rusqlite::{Params, Row, Statement};

use crate::error::{EmbeddedError, Result};

/// A timestamp as its two columns.
pub(crate) fn ts(t: Timestamp) -> (i64, i64) {
    (t.seconds(), i64::from(t.nanos()))
}

/// An optional timestamp as two nullable columns.
pub(crate) fn opt_ts(t: Option<Timestamp>) -> (Option<i64>, Option<i64>) {
    match t {
        Some(t) => (Some(t.seconds()), Some(i64::from(t.nanos()))),
        None => (None, None),
    }
}

/// An event id as its 16 big-endian bytes (ordered like its canonical text).
pub(crate) fn id(e: &EventId) -> [u8; 16] {
    *e.as_uuid().as_bytes()
}

pub(crate) fn opt_id(e: Option<&EventId>) -> Option<[u8; 16]> {
    e.map(id)
}

/// An unsigned value for an INTEGER column; `what` names it in the error.
pub(crate) fn int(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| {
        EmbeddedError::Corrupt(format!("{what} exceeds 2^63 - 1 and cannot be stored"))
    })
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

/// A list of enum codes as comma-separated decimal text, order and repeats kept so that
/// what was projected reads back equal.
pub(crate) fn codes<T: Copy>(items: &[T], code: impl Fn(T) -> i32) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&code(*item).to_string());
    }
    out
}

/// Bases as 17 bytes each: a tag (1 author, 2 patient-signed consent, 3 break-glass,
/// 4 attested consent) and the event id (zeros for author). Entries written before
/// consent had forms hold tag 2 for every consent basis.
pub(crate) fn bases(bases: &[Basis]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bases.len() * 17);
    for b in bases {
        let (tag, event) = match b {
            Basis::Author => (1u8, [0u8; 16]),
            Basis::Consent {
                grant,
                form: ConsentForm::PatientSigned,
            } => (2, id(grant)),
            Basis::BreakGlass(e) => (3, id(e)),
            Basis::Consent {
                grant,
                form: ConsentForm::Attested,
            } => (4, id(grant)),
        };
        out.push(tag);
        out.extend_from_slice(&event);
    }
    out
}

fn event_id_from_bytes(bytes: &[u8]) -> Option<EventId> {
    let bytes: [u8; 16] = bytes.try_into().ok()?;
    Some(EventId::from_uuid(uuid::Uuid::from_bytes(bytes)))
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

/// Runs `stmt` and decodes every row with `f`.
pub(crate) fn collect<T>(
    stmt: &mut Statement<'_>,
    params: impl Params,
    mut f: impl FnMut(&mut Cols<'_, '_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(f(&mut Cols::new(row))?);
    }
    Ok(out)
}

/// Runs `stmt` and decodes the first row, if any, with `f`.
pub(crate) fn first<T>(
    stmt: &mut Statement<'_>,
    params: impl Params,
    f: impl FnOnce(&mut Cols<'_, '_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(row) => f(&mut Cols::new(row)).map(Some),
        None => Ok(None),
    }
}

/// Owned query parameters, for SQL built at run time (the timeline's filters).
pub(crate) type Values = Vec<Value>;

/// Reads a row's columns in order, each parsed into its domain type.
pub(crate) struct Cols<'r, 's> {
    row: &'r Row<'s>,
    next: usize,
}

impl<'r, 's> Cols<'r, 's> {
    pub(crate) fn new(row: &'r Row<'s>) -> Self {
        Self { row, next: 0 }
    }

    fn get<T: FromSql>(&mut self) -> Result<(usize, T)> {
        let i = self.next;
        self.next += 1;
        Ok((i, self.row.get(i)?))
    }

    /// The error for column `i`: its name and what it should have held.
    fn corrupt(&self, i: usize, expected: &str) -> EmbeddedError {
        let column = self.row.as_ref().column_name(i).unwrap_or("?");
        EmbeddedError::Corrupt(format!("column {column} does not hold {expected}"))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        let (i, v) = self.get::<i64>()?;
        u64::try_from(v).map_err(|_| self.corrupt(i, "a non-negative integer"))
    }

    pub(crate) fn opt_u64(&mut self) -> Result<Option<u64>> {
        let (i, v) = self.get::<Option<i64>>()?;
        v.map(|v| u64::try_from(v).map_err(|_| self.corrupt(i, "a non-negative integer")))
            .transpose()
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let (i, v) = self.get::<i64>()?;
        u32::try_from(v).map_err(|_| self.corrupt(i, "a partition number"))
    }

    pub(crate) fn text(&mut self) -> Result<String> {
        Ok(self.get::<String>()?.1)
    }

    pub(crate) fn opt_text(&mut self) -> Result<Option<String>> {
        Ok(self.get::<Option<String>>()?.1)
    }

    pub(crate) fn blob(&mut self) -> Result<Vec<u8>> {
        Ok(self.get::<Vec<u8>>()?.1)
    }

    /// Two columns: seconds and nanoseconds.
    pub(crate) fn ts(&mut self) -> Result<Timestamp> {
        let (i, s) = self.get::<i64>()?;
        let (_, ns) = self.get::<i64>()?;
        i32::try_from(ns)
            .ok()
            .and_then(|ns| Timestamp::new(s, ns).ok())
            .ok_or_else(|| self.corrupt(i, "a timestamp in range"))
    }

    /// Two nullable columns: both NULL is `None`.
    pub(crate) fn opt_ts(&mut self) -> Result<Option<Timestamp>> {
        let (i, s) = self.get::<Option<i64>>()?;
        let (_, ns) = self.get::<Option<i64>>()?;
        match (s, ns) {
            (None, None) => Ok(None),
            (Some(s), Some(ns)) => i32::try_from(ns)
                .ok()
                .and_then(|ns| Timestamp::new(s, ns).ok())
                .map(Some)
                .ok_or_else(|| self.corrupt(i, "a timestamp in range")),
            _ => Err(self.corrupt(i, "both halves of a timestamp")),
        }
    }

    pub(crate) fn event_id(&mut self) -> Result<EventId> {
        let (i, b) = self.get::<Vec<u8>>()?;
        event_id_from_bytes(&b).ok_or_else(|| self.corrupt(i, "a 16-byte event id"))
    }

    pub(crate) fn opt_event_id(&mut self) -> Result<Option<EventId>> {
        let (i, b) = self.get::<Option<Vec<u8>>>()?;
        b.map(|b| event_id_from_bytes(&b).ok_or_else(|| self.corrupt(i, "a 16-byte event id")))
            .transpose()
    }

    pub(crate) fn sha256(&mut self) -> Result<Sha256> {
        let (i, b) = self.get::<Vec<u8>>()?;
        Sha256::from_slice(&b).map_err(|_| self.corrupt(i, "a 32-byte hash"))
    }

    pub(crate) fn opt_sha256(&mut self) -> Result<Option<Sha256>> {
        let (i, b) = self.get::<Option<Vec<u8>>>()?;
        b.map(|b| Sha256::from_slice(&b).map_err(|_| self.corrupt(i, "a 32-byte hash")))
            .transpose()
    }

    pub(crate) fn patient(&mut self) -> Result<PatientId> {
        let (i, s) = self.get::<String>()?;
        PatientId::parse(&s).map_err(|_| self.corrupt(i, "a patient id"))
    }

    pub(crate) fn facility(&mut self) -> Result<FacilityId> {
        let (i, s) = self.get::<String>()?;
        FacilityId::parse(&s).map_err(|_| self.corrupt(i, "a facility id"))
    }

    pub(crate) fn opt_facility(&mut self) -> Result<Option<FacilityId>> {
        let (i, s) = self.get::<Option<String>>()?;
        s.map(|s| FacilityId::parse(&s).map_err(|_| self.corrupt(i, "a facility id")))
            .transpose()
    }

    /// Who read (an audit entry's `reader` column).
    pub(crate) fn reader(&mut self) -> Result<Reader> {
        let (i, s) = self.get::<String>()?;
        Reader::parse(&s).ok_or_else(|| self.corrupt(i, "a reader"))
    }

    /// An enum stored as its code; 0 is `None`.
    pub(crate) fn opt_code<T>(
        &mut self,
        from_code: impl Fn(i32) -> Option<T>,
    ) -> Result<Option<T>> {
        let (i, c) = self.get::<i64>()?;
        match i32::try_from(c) {
            Ok(0) => Ok(None),
            Ok(c) => from_code(c)
                .map(Some)
                .ok_or_else(|| self.corrupt(i, "a known code")),
            Err(_) => Err(self.corrupt(i, "a known code")),
        }
    }

    /// An envelope stored as four columns: payload type, key id, signature, payload.
    pub(crate) fn envelope(&mut self) -> Result<hrx_domain::Envelope> {
        Ok(hrx_domain::Envelope {
            payload_type: self.text()?,
            key_id: self.text()?,
            signature: self.blob()?,
            payload: self.blob()?,
        })
    }

    /// An enum stored as its code.
    pub(crate) fn code<T>(&mut self, from_code: impl Fn(i32) -> Option<T>) -> Result<T> {
        let (i, c) = self.get::<i64>()?;
        i32::try_from(c)
            .ok()
            .and_then(from_code)
            .ok_or_else(|| self.corrupt(i, "a known code"))
    }

    /// A comma-separated list of codes.
    pub(crate) fn code_list<T>(&mut self, from_code: impl Fn(i32) -> Option<T>) -> Result<Vec<T>> {
        let (i, s) = self.get::<String>()?;
        if s.is_empty() {
            return Ok(Vec::new());
        }
        s.split(',')
            .map(|c| c.parse::<i32>().ok().and_then(&from_code))
            .collect::<Option<Vec<T>>>()
            .ok_or_else(|| self.corrupt(i, "a list of known codes"))
    }

    pub(crate) fn bases(&mut self) -> Result<Vec<Basis>> {
        let (i, b) = self.get::<Vec<u8>>()?;
        decode_bases(&b).ok_or_else(|| self.corrupt(i, "a list of bases"))
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
        let partition = self.get::<Option<i64>>()?.1;
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
    use hrx_domain::{RecordKind, SensitivityLabel};

    fn eid(n: u128) -> EventId {
        EventId::from_uuid(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn code_lists_keep_order_and_reject_unknown_codes() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let kinds = [RecordKind::Procedure, RecordKind::Encounter];
        let text = codes(&kinds, RecordKind::code);
        assert_eq!(text, "7,1");
        let back = conn
            .query_row("SELECT ?1", [&text], |r| {
                Ok(Cols::new(r).code_list(RecordKind::from_code))
            })
            .unwrap()
            .unwrap();
        assert_eq!(back, kinds);
        let empty = conn
            .query_row("SELECT ''", [], |r| {
                Ok(Cols::new(r).code_list(SensitivityLabel::from_code))
            })
            .unwrap()
            .unwrap();
        assert!(empty.is_empty());
        let bad = conn
            .query_row("SELECT '1,99'", [], |r| {
                Ok(Cols::new(r).code_list(RecordKind::from_code))
            })
            .unwrap();
        assert!(matches!(bad, Err(EmbeddedError::Corrupt(_))));
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
        assert_eq!(decode_bases(&bases(&b)), Some(b));
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
    fn timestamps_round_trip_at_the_ends_of_the_range() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for t in [
            Timestamp::new(-62_135_596_800, 0).unwrap(),
            Timestamp::new(-1, 999_999_999).unwrap(),
            Timestamp::new(253_402_300_799, 999_999_999).unwrap(),
        ] {
            let (s, ns) = ts(t);
            let back = conn
                .query_row("SELECT ?1, ?2", [s, ns], |r| Ok(Cols::new(r).ts()))
                .unwrap()
                .unwrap();
            assert_eq!(back, t);
        }
    }
}
