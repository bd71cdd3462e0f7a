//! The audit log's entries and their hash chain (BRIEF section 5): every read, follow
//! and break-glass is an access event, chained by SHA-256 so that an edit anywhere
//! breaks every later hash.

use crate::consent::Basis;
use crate::ids::{FacilityId, PatientId, Sha256};
use crate::kinds::Purpose;
use crate::time::Timestamp;

/// What the reader did.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AccessAction {
    GetTimeline = 1,
    GetRecord = 2,
    Follow = 3,
    BreakGlass = 4,
}

impl AccessAction {
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<Self> {
        [
            Self::GetTimeline,
            Self::GetRecord,
            Self::Follow,
            Self::BreakGlass,
        ]
        .into_iter()
        .find(|a| a.code() == code)
    }
}

/// One access to one patient's records.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AccessEvent {
    pub reader: FacilityId,
    pub patient: PatientId,
    pub purpose: Purpose,
    pub action: AccessAction,
    pub bases: Vec<Basis>,
    pub records_returned: u64,
    pub records_withheld: u64,
    pub at: Timestamp,
}

/// An access event in the chain.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditEntry {
    /// 1, 2, 3, … across the whole exchange.
    pub seq: u64,
    pub event: AccessEvent,
    pub prev_hash: Sha256,
    pub entry_hash: Sha256,
}

impl AuditEntry {
    /// Chains `event` after an entry with `prev_seq` and `prev_hash` (0 and zero for the
    /// first).
    pub fn chain(prev_seq: u64, prev_hash: Sha256, event: AccessEvent) -> Self {
        let seq = prev_seq + 1;
        let entry_hash = entry_hash(seq, &prev_hash, &event);
        Self {
            seq,
            event,
            prev_hash,
            entry_hash,
        }
    }

    /// Whether `entry_hash` is what this entry's fields hash to.
    pub fn is_intact(&self) -> bool {
        self.entry_hash == entry_hash(self.seq, &self.prev_hash, &self.event)
    }
}

/// SHA-256 over an unambiguous encoding: every field length-prefixed or fixed-width.
fn entry_hash(seq: u64, prev: &Sha256, e: &AccessEvent) -> Sha256 {
    let mut buf = Vec::with_capacity(160);
    buf.extend_from_slice(b"hrx-audit-v1");
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(prev.as_bytes());
    for s in [e.reader.as_str(), e.patient.as_str()] {
        buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
        buf.extend_from_slice(s.as_bytes());
    }
    buf.extend_from_slice(&e.purpose.code().to_be_bytes());
    buf.extend_from_slice(&e.action.code().to_be_bytes());
    buf.extend_from_slice(&(e.bases.len() as u32).to_be_bytes());
    for b in &e.bases {
        let (tag, id) = match b {
            Basis::Author => (1u8, [0u8; 16]),
            Basis::Consent(id) => (2, *id.as_uuid().as_bytes()),
            Basis::BreakGlass(id) => (3, *id.as_uuid().as_bytes()),
        };
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
            reader: FacilityId::parse("26001").unwrap(),
            patient: PatientId::parse("026062001234").unwrap(),
            purpose: Purpose::Referral,
            action: AccessAction::GetTimeline,
            bases: vec![Basis::Author],
            records_returned: returned,
            records_withheld: 0,
            at: Timestamp::from_unix_seconds(1_800_000_000).unwrap(),
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
    }
}
