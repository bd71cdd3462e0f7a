//! Consent decisions (BRIEF section 5): deny by default; a facility always reads what it
//! authored; anything else needs an active grant or an active break-glass. Decisions
//! are per record and say which basis allowed it.
//!
//! Pure: the caller loads the patient's grants and break-glass windows and passes the
//! time of the read.

use crate::event::{ConsentGrant, Grantee};
use crate::ids::{EventId, FacilityId};
use crate::kinds::{Purpose, RecordKind, SensitivityLabel};
use crate::time::Timestamp;

/// A grant as projected: the grant, who recorded it, when, and whether it was revoked.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GrantState {
    pub grant_event_id: EventId,
    pub granted_by: FacilityId,
    pub granted_at: Timestamp,
    pub grant: ConsentGrant,
    /// When the revocation was recorded; a revoked grant never allows a read again.
    pub revoked_at: Option<Timestamp>,
}

/// Where a grant stands at a given time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GrantStatus {
    Active,
    Revoked,
    Expired,
    /// Recorded with a time after the read (clock skew between facilities).
    NotYetValid,
}

impl GrantState {
    pub fn status(&self, now: Timestamp) -> GrantStatus {
        if self.revoked_at.is_some() {
            GrantStatus::Revoked
        } else if now >= self.grant.expires_at {
            GrantStatus::Expired
        } else if now < self.granted_at {
            GrantStatus::NotYetValid
        } else {
            GrantStatus::Active
        }
    }

    /// Does this grant let `reader` read for `purpose` at `now` (regardless of record)?
    fn admits(&self, reader: &FacilityId, purpose: Purpose, now: Timestamp) -> bool {
        self.status(now) == GrantStatus::Active
            && match &self.grant.grantee {
                Grantee::Facility(f) => f == reader,
                Grantee::AnyFacility => true,
            }
            && self.grant.purposes.contains(&purpose)
    }

    /// Does this grant cover a record with these facts?
    fn covers(&self, record: &RecordFacts<'_>) -> bool {
        let g = &self.grant;
        (g.kinds.is_empty() || g.kinds.contains(&record.kind))
            && g.data_from.is_none_or(|from| record.occurred_at >= from)
            && g.data_until.is_none_or(|until| record.occurred_at < until)
            && record
                .sensitivity
                .iter()
                .all(|label| g.include_sensitive.contains(label))
    }
}

/// An emergency access window declared by a facility.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BreakGlassWindow {
    pub event_id: EventId,
    pub facility_id: FacilityId,
    pub declared_at: Timestamp,
    pub expires_at: Timestamp,
}

impl BreakGlassWindow {
    pub fn is_open(&self, reader: &FacilityId, now: Timestamp) -> bool {
        &self.facility_id == reader && self.declared_at <= now && now < self.expires_at
    }
}

/// What a decision needs to know about a record: never its content.
#[derive(Clone, Copy, Debug)]
pub struct RecordFacts<'a> {
    pub author: &'a FacilityId,
    pub kind: RecordKind,
    pub occurred_at: Timestamp,
    pub sensitivity: &'a [SensitivityLabel],
}

/// Why a record was released.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Basis {
    /// The reader authored it.
    Author,
    /// An active grant (its event id).
    Consent(EventId),
    /// An open break-glass window (its event id).
    BreakGlass(EventId),
}

/// One reader's standing towards one patient at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Access<'a> {
    pub reader: &'a FacilityId,
    pub purpose: Purpose,
    pub now: Timestamp,
    pub grants: &'a [GrantState],
    pub break_glass: &'a [BreakGlassWindow],
}

impl Access<'_> {
    /// The basis on which the reader may see this record, or `None`: withheld.
    /// Authorship first (it needs no consent), then grants in the order given, then
    /// break-glass, which covers every record, sensitive ones included: an emergency
    /// team must see an HIV status or an allergy.
    pub fn decide(&self, record: &RecordFacts<'_>) -> Option<Basis> {
        if record.author == self.reader {
            return Some(Basis::Author);
        }
        if let Some(g) = self
            .grants
            .iter()
            .find(|g| g.admits(self.reader, self.purpose, self.now) && g.covers(record))
        {
            return Some(Basis::Consent(g.grant_event_id));
        }
        self.break_glass
            .iter()
            .find(|w| w.is_open(self.reader, self.now))
            .map(|w| Basis::BreakGlass(w.event_id))
    }

    /// Grants and break-glass windows that currently let the reader read anything of
    /// this patient's for this purpose (authorship aside). Empty means: only its own
    /// records. A follow stream runs while this is non-empty.
    pub fn standing(&self) -> Vec<Basis> {
        let grants = self
            .grants
            .iter()
            .filter(|g| g.admits(self.reader, self.purpose, self.now))
            .map(|g| Basis::Consent(g.grant_event_id));
        let glass = self
            .break_glass
            .iter()
            .filter(|w| w.is_open(self.reader, self.now))
            .map(|w| Basis::BreakGlass(w.event_id));
        grants.chain(glass).collect()
    }

    /// The next instant after `now` at which `standing` may change by itself (a grant
    /// expiring, a window closing or opening), so a follow stream can re-check then.
    pub fn next_change(&self) -> Option<Timestamp> {
        let grant_times = self
            .grants
            .iter()
            .flat_map(|g| [g.granted_at, g.grant.expires_at]);
        let glass_times = self
            .break_glass
            .iter()
            .flat_map(|w| [w.declared_at, w.expires_at]);
        grant_times
            .chain(glass_times)
            .filter(|t| *t > self.now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Evidence;
    use crate::ids::{PatientId, Sha256};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_unix_seconds(1_800_000_000 + s).unwrap()
    }
    fn fac(s: &str) -> FacilityId {
        FacilityId::parse(s).unwrap()
    }
    fn id(n: u128) -> EventId {
        EventId::from_uuid(uuid::Uuid::from_u128(n))
    }

    fn grant(grantee: Grantee, purposes: Vec<Purpose>) -> GrantState {
        GrantState {
            grant_event_id: id(1),
            granted_by: fac("26012"),
            granted_at: t(0),
            revoked_at: None,
            grant: ConsentGrant {
                patient_id: PatientId::parse("026062001234").unwrap(),
                grantee,
                purposes,
                kinds: vec![],
                include_sensitive: vec![],
                data_from: None,
                data_until: None,
                expires_at: t(1000),
                evidence: Evidence {
                    form_id: "F".into(),
                    sha256: Sha256::ZERO,
                },
            },
        }
    }

    const NONE: &[SensitivityLabel] = &[];

    #[test]
    fn deny_by_default_but_authors_read_their_own() {
        let reader = fac("26001");
        let access = Access {
            reader: &reader,
            purpose: Purpose::Referral,
            now: t(10),
            grants: &[],
            break_glass: &[],
        };
        let other = fac("26012");
        let rec = |author| RecordFacts {
            author,
            kind: RecordKind::Observation,
            occurred_at: t(5),
            sensitivity: NONE,
        };
        assert_eq!(access.decide(&rec(&other)), None);
        assert_eq!(access.decide(&rec(&reader)), Some(Basis::Author));
        assert!(access.standing().is_empty());
    }

    #[test]
    fn grant_allows_its_grantee_purpose_kinds_period_and_labels_only() {
        let reader = fac("26001");
        let author = fac("26012");
        let mut g = grant(Grantee::Facility(reader.clone()), vec![Purpose::Referral]);
        g.grant.kinds = vec![RecordKind::Observation];
        g.grant.data_from = Some(t(0));
        g.grant.data_until = Some(t(100));
        let grants = [g];
        let access = |reader, purpose, now| Access {
            reader,
            purpose,
            now,
            grants: &grants,
            break_glass: &[],
        };
        let rec = |kind, at, labels| RecordFacts {
            author: &author,
            kind,
            occurred_at: at,
            sensitivity: labels,
        };
        let ok = rec(RecordKind::Observation, t(50), NONE);
        assert_eq!(
            access(&reader, Purpose::Referral, t(10)).decide(&ok),
            Some(Basis::Consent(id(1)))
        );
        // Wrong purpose, wrong reader, expired, other kind, outside the period, sensitive.
        assert_eq!(
            access(&reader, Purpose::ChronicCare, t(10)).decide(&ok),
            None
        );
        let clinic = fac("26105");
        assert_eq!(access(&clinic, Purpose::Referral, t(10)).decide(&ok), None);
        assert_eq!(
            access(&reader, Purpose::Referral, t(1000)).decide(&ok),
            None
        );
        assert_eq!(
            access(&reader, Purpose::Referral, t(10)).decide(&rec(
                RecordKind::Condition,
                t(50),
                NONE
            )),
            None
        );
        assert_eq!(
            access(&reader, Purpose::Referral, t(10)).decide(&rec(
                RecordKind::Observation,
                t(100),
                NONE
            )),
            None
        );
        assert_eq!(
            access(&reader, Purpose::Referral, t(10)).decide(&rec(
                RecordKind::Observation,
                t(50),
                &[SensitivityLabel::Hiv]
            )),
            None
        );
        assert_eq!(
            access(&reader, Purpose::Referral, t(10)).next_change(),
            Some(t(1000))
        );
    }

    #[test]
    fn named_sensitive_labels_are_included_and_revocation_ends_a_grant() {
        let reader = fac("26001");
        let author = fac("26012");
        let mut g = grant(Grantee::AnyFacility, vec![Purpose::Treatment]);
        g.grant.include_sensitive = vec![SensitivityLabel::Hiv];
        let rec = RecordFacts {
            author: &author,
            kind: RecordKind::Condition,
            occurred_at: t(1),
            sensitivity: &[SensitivityLabel::Hiv],
        };
        let mut grants = vec![g];
        let decide = |grants: &[GrantState]| {
            Access {
                reader: &reader,
                purpose: Purpose::Treatment,
                now: t(10),
                grants,
                break_glass: &[],
            }
            .decide(&rec)
        };
        assert_eq!(decide(&grants), Some(Basis::Consent(id(1))));
        grants[0].revoked_at = Some(t(5));
        assert_eq!(decide(&grants), None);
        assert_eq!(grants[0].status(t(10)), GrantStatus::Revoked);
    }

    #[test]
    fn break_glass_is_time_boxed_to_its_facility_and_covers_sensitive_records() {
        let reader = fac("26001");
        let author = fac("26012");
        let w = [BreakGlassWindow {
            event_id: id(9),
            facility_id: reader.clone(),
            declared_at: t(0),
            expires_at: t(3600),
        }];
        let rec = RecordFacts {
            author: &author,
            kind: RecordKind::Allergy,
            occurred_at: t(-100),
            sensitivity: &[SensitivityLabel::MentalHealth],
        };
        let at = |reader, now| Access {
            reader,
            purpose: Purpose::Emergency,
            now,
            grants: &[],
            break_glass: &w,
        };
        assert_eq!(
            at(&reader, t(10)).decide(&rec),
            Some(Basis::BreakGlass(id(9)))
        );
        assert_eq!(at(&reader, t(3600)).decide(&rec), None);
        let clinic = fac("26105");
        assert_eq!(at(&clinic, t(10)).decide(&rec), None);
        assert_eq!(
            at(&reader, t(10)).standing(),
            vec![Basis::BreakGlass(id(9))]
        );
    }
}
