//! The audit log's entries and their hash chain (BRIEF section 5): every read, every
//! follow delivery, every break-glass and every look at a patient's grants, accesses
//! or own view is an access event — refused ones too — chained by SHA-256 so that an
//! edit anywhere breaks every later hash.

use crate::consent::{Basis, ConsentForm};
use crate::ids::{FacilityId, PatientId, Sha256};
use crate::kinds::Purpose;
use crate::time::Timestamp;

/// What the reader did.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AccessAction {
    GetTimeline = 1,
    GetRecord = 2,
    /// A follow stream opened (or was refused).
    Follow = 3,
    BreakGlass = 4,
    ListGrants = 5,
    ListAccesses = 6,
    CheckAccess = 7,
    /// The patient looked at their own view.
    PatientView = 8,
    /// Records a follow stream delivered.
    FollowDelivery = 9,
    ListConsentRequests = 10,
}

impl AccessAction {
    pub const ALL: [AccessAction; 10] = [
        Self::GetTimeline,
        Self::GetRecord,
        Self::Follow,
        Self::BreakGlass,
        Self::ListGrants,
        Self::ListAccesses,
        Self::CheckAccess,
        Self::PatientView,
        Self::FollowDelivery,
        Self::ListConsentRequests,
    ];

    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.code() == code)
    }
}

/// Who made an access.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Reader {
    Facility(FacilityId),
    NationalCenter,
    /// The patient the entry is about.
    Patient,
}

impl Reader {
    /// 1 facility, 2 national center, 3 patient (`ReaderKind` on the wire).
    pub fn kind_code(&self) -> i32 {
        match self {
            Reader::Facility(_) => 1,
            Reader::NationalCenter => 2,
            Reader::Patient => 3,
        }
    }

    /// The facility, if a facility read.
    pub fn facility(&self) -> Option<&FacilityId> {
        match self {
            Reader::Facility(f) => Some(f),
            _ => None,
        }
    }

    /// The text stored and hashed: the facility id, `national-center` or `patient`.
    pub fn as_str(&self) -> &str {
        match self {
            Reader::Facility(f) => f.as_str(),
            Reader::NationalCenter => "national-center",
            Reader::Patient => "patient",
        }
    }

    /// The inverse of [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "national-center" => Some(Reader::NationalCenter),
            "patient" => Some(Reader::Patient),
            f => FacilityId::parse(f).ok().map(Reader::Facility),
        }
    }
}

/// Whether the access was allowed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AccessOutcome {
    Allowed = 1,
    /// Refused: audited like an allowed access, with nothing returned.
    Denied = 2,
}

impl AccessOutcome {
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            1 => Some(Self::Allowed),
            2 => Some(Self::Denied),
            _ => None,
        }
    }
}

/// One access to one patient's records.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AccessEvent {
    pub reader: Reader,
    pub patient: PatientId,
    /// The purpose the reader gave; `None` where a call takes none (lists, views).
    pub purpose: Option<Purpose>,
    pub action: AccessAction,
    pub bases: Vec<Basis>,
    pub records_returned: u64,
    pub records_withheld: u64,
    pub at: Timestamp,
    pub outcome: AccessOutcome,
}

/// The hash format of an entry. Entries keep the format they were written with, so an
/// old chain stays verifiable after the format grows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AuditFormat {
    /// Facility readers and allowed reads only; consent bases without their form.
    V1 = 1,
    /// Any reader, an outcome, and the form of consent bases.
    V2 = 2,
}

impl AuditFormat {
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }
}

/// An access event in the chain.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditEntry {
    /// 1, 2, 3, … across the whole exchange.
    pub seq: u64,
    pub format: AuditFormat,
    pub event: AccessEvent,
    pub prev_hash: Sha256,
    pub entry_hash: Sha256,
}

impl AuditEntry {
    /// Chains `event` after an entry with `prev_seq` and `prev_hash` (0 and zero for the
    /// first), in the current format.
    pub fn chain(prev_seq: u64, prev_hash: Sha256, event: AccessEvent) -> Self {
        let seq = prev_seq + 1;
        let format = AuditFormat::V2;
        let entry_hash = entry_hash(format, seq, &prev_hash, &event);
        Self {
            seq,
            format,
            event,
            prev_hash,
            entry_hash,
        }
    }

    /// Whether `entry_hash` is what this entry's fields hash to.
    pub fn is_intact(&self) -> bool {
        self.entry_hash == entry_hash(self.format, self.seq, &self.prev_hash, &self.event)
    }
}

/// The tag of a basis in the hash: 1 author, 2 consent (patient-signed, or any consent
/// in V1), 3 break-glass, 4 attested consent (V2).
fn basis_tag(format: AuditFormat, b: &Basis) -> (u8, [u8; 16]) {
    match b {
        Basis::Author => (1, [0; 16]),
        Basis::Consent { grant, form } => {
            let tag = match (format, form) {
                (AuditFormat::V2, ConsentForm::Attested) => 4,
                _ => 2,
            };
            (tag, *grant.as_uuid().as_bytes())
        }
        Basis::BreakGlass(id) => (3, *id.as_uuid().as_bytes()),
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// SHA-256 over an unambiguous encoding: every field length-prefixed or fixed-width.
fn entry_hash(format: AuditFormat, seq: u64, prev: &Sha256, e: &AccessEvent) -> Sha256 {
    let mut buf = Vec::with_capacity(176);
    buf.extend_from_slice(match format {
        AuditFormat::V1 => b"hrx-audit-v1",
        AuditFormat::V2 => b"hrx-audit-v2",
    });
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(prev.as_bytes());
    if format == AuditFormat::V2 {
        buf.extend_from_slice(&e.reader.kind_code().to_be_bytes());
    }
    put_str(&mut buf, e.reader.as_str());
    put_str(&mut buf, e.patient.as_str());
    buf.extend_from_slice(&e.purpose.map_or(0, Purpose::code).to_be_bytes());
    buf.extend_from_slice(&e.action.code().to_be_bytes());
    if format == AuditFormat::V2 {
        buf.extend_from_slice(&e.outcome.code().to_be_bytes());
    }
    buf.extend_from_slice(&(e.bases.len() as u32).to_be_bytes());
    for b in &e.bases {
        let (tag, id) = basis_tag(format, b);
        buf.push(tag);
        buf.extend_from_slice(&id);
    }
    buf.extend_from_slice(&e.records_returned.to_be_bytes());
    buf.extend_from_slice(&e.records_withheld.to_be_bytes());
    buf.extend_from_slice(&e.at.unix_nanos().to_be_bytes());
    Sha256::digest(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(returned: u64) -> AccessEvent {
        AccessEvent {
            reader: Reader::Facility(FacilityId::parse("26001").unwrap()),
            patient: PatientId::parse("026062001234").unwrap(),
            purpose: Some(Purpose::Referral),
            action: AccessAction::GetTimeline,
            bases: vec![Basis::Author],
            records_returned: returned,
            records_withheld: 0,
            at: Timestamp::from_unix_seconds(1_800_000_000).unwrap(),
            outcome: AccessOutcome::Allowed,
        }
    }

    #[test]
    fn entries_chain_and_detect_edits() {
        let a = AuditEntry::chain(0, Sha256::ZERO, event(3));
        let b = AuditEntry::chain(a.seq, a.entry_hash, event(4));
        assert_eq!((a.seq, b.seq), (1, 2));
        assert!(a.is_intact() && b.is_intact());
        let mut edited = b.clone();
        edited.event.records_returned = 40;
        assert!(!edited.is_intact());
        let mut refused = b.clone();
        refused.event.outcome = AccessOutcome::Denied;
        assert!(!refused.is_intact(), "the outcome is hashed");
        let mut patient = b;
        patient.event.reader = Reader::Patient;
        assert!(!patient.is_intact(), "the reader is hashed");
    }

    #[test]
    fn readers_round_trip_as_text() {
        for r in [
            Reader::Facility(FacilityId::parse("26001").unwrap()),
            Reader::NationalCenter,
            Reader::Patient,
        ] {
            assert_eq!(Reader::parse(r.as_str()), Some(r));
        }
    }
}
