//! Given/when/then tests of consent decisions and of the consent state fold.

use super::*;
use crate::SigningKey;
use crate::event::{ConsentRevocation, Evidence};
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
fn pat() -> PatientId {
    PatientId::parse("026062001234").unwrap()
}
fn key(n: u8) -> PublicKey {
    SigningKey::from_seed(&[n; 32]).unwrap().public_key()
}

fn consent(grantee: Grantee, purposes: Vec<Purpose>) -> ConsentGrant {
    ConsentGrant {
        patient_id: pat(),
        grantee,
        purposes,
        kinds: vec![],
        include_sensitive: vec![],
        data_from: None,
        data_until: None,
        expires_at: t(1000),
        evidence: Some(Evidence {
            form_id: "F".into(),
            sha256: Sha256::ZERO,
        }),
        request: None,
    }
}

fn grant(grantee: Grantee, purposes: Vec<Purpose>) -> GrantState {
    GrantState {
        grant_event_id: id(1),
        form: ConsentForm::Attested,
        granted_by: Some(fac("26012")),
        granted_at: t(0),
        revoked_at: None,
        revoked_by: None,
        grant: consent(grantee, purposes),
    }
}

const NONE: &[SensitivityLabel] = &[];

fn attested_basis(n: u128) -> Option<Basis> {
    Some(Basis::Consent {
        grant: id(n),
        form: ConsentForm::Attested,
    })
}

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
        attested_basis(1)
    );
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
    for other in [
        rec(RecordKind::Condition, t(50), NONE),
        rec(RecordKind::Observation, t(100), NONE),
        rec(RecordKind::Observation, t(50), &[SensitivityLabel::Hiv]),
    ] {
        assert_eq!(
            access(&reader, Purpose::Referral, t(10)).decide(&other),
            None
        );
    }
    assert_eq!(
        access(&reader, Purpose::Referral, t(10)).next_change(),
        Some(t(1000))
    );
}

#[test]
fn break_glass_is_time_boxed_to_its_facility_emergency_only_and_covers_sensitive_records() {
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
    let at = |reader, purpose, now| Access {
        reader,
        purpose,
        now,
        grants: &[],
        break_glass: &w,
    };
    assert_eq!(
        at(&reader, Purpose::Emergency, t(10)).decide(&rec),
        Some(Basis::BreakGlass(id(9)))
    );
    assert_eq!(at(&reader, Purpose::Treatment, t(10)).decide(&rec), None);
    assert!(at(&reader, Purpose::Treatment, t(10)).standing().is_empty());
    assert_eq!(at(&reader, Purpose::Emergency, t(3600)).decide(&rec), None);
    let clinic = fac("26105");
    assert_eq!(at(&clinic, Purpose::Emergency, t(10)).decide(&rec), None);
    assert_eq!(
        at(&reader, Purpose::Emergency, t(10)).standing(),
        vec![Basis::BreakGlass(id(9))]
    );
}

fn ev(n: u128, at: i64, fact: ConsentFact) -> ConsentEvent {
    ConsentEvent {
        id: id(n),
        received_at: t(at),
        fact,
    }
}

fn statement(k: u8, body: StatementBody) -> ConsentFact {
    ConsentFact::Statement {
        key: key(k).key_id(),
        body,
    }
}

#[test]
fn statements_count_only_when_signed_by_the_key_the_patient_had_when_received() {
    let district = fac("26012");
    let provincial = fac("26001");
    let patient_grant = |to: &FacilityId| {
        let mut g = consent(Grantee::Facility(to.clone()), vec![Purpose::Referral]);
        g.evidence = None;
        StatementBody::Grant(g)
    };
    let events = vec![
        // Before any enrollment: ignored.
        ev(1, 0, statement(1, patient_grant(&provincial))),
        ev(
            2,
            10,
            ConsentFact::KeyEnrolled {
                facility: district.clone(),
                key: key(1),
            },
        ),
        ev(3, 20, statement(1, patient_grant(&provincial))),
        // Another key (another patient's): ignored.
        ev(4, 21, statement(2, patient_grant(&district))),
        ev(
            5,
            30,
            statement(1, StatementBody::KeyRotation { new_key: key(3) }),
        ),
        // The old key after the rotation: ignored.
        ev(6, 40, statement(1, patient_grant(&district))),
        ev(
            7,
            50,
            statement(
                3,
                StatementBody::Revocation(ConsentRevocation {
                    patient_id: pat(),
                    grant_event_id: id(3),
                    evidence: None,
                }),
            ),
        ),
        // Lost phone: a new enrollment in person replaces the rotated key.
        ev(
            8,
            60,
            ConsentFact::KeyEnrolled {
                facility: district.clone(),
                key: key(4),
            },
        ),
        ev(9, 70, statement(3, patient_grant(&district))),
    ];
    let mut shuffled = events.clone();
    shuffled.reverse();
    let state = ConsentState::fold(events);
    assert_eq!(state, ConsentState::fold(shuffled), "order-independent");
    assert_eq!(state.ignored, vec![id(1), id(4), id(6), id(9)]);
    assert_eq!(state.grants.len(), 1);
    let g = &state.grants[0];
    assert_eq!(
        (g.grant_event_id, g.form, g.revoked_at, g.revoked_by.clone()),
        (
            id(3),
            ConsentForm::PatientSigned,
            Some(t(50)),
            Some(Revoker::Patient)
        )
    );
    let ends: Vec<_> = state.keys.iter().map(|k| k.ended).collect();
    assert_eq!(
        ends,
        vec![
            Some((KeyEnd::Replaced, t(30))),
            Some((KeyEnd::Replaced, t(60))),
            None
        ]
    );
    assert_eq!(
        state.active_key().map(PatientKey::key_id),
        Some(key(4).key_id())
    );
    assert_eq!(state.keys[1].enrolled_by, None);
}

#[test]
fn facilities_revoke_only_what_they_attested_and_requests_are_answered_by_the_patient() {
    let district = fac("26012");
    let provincial = fac("26001");
    let attested = consent(
        Grantee::Facility(provincial.clone()),
        vec![Purpose::Referral],
    );
    let request = ConsentRequest {
        patient_id: pat(),
        purposes: vec![Purpose::Referral],
        kinds: vec![],
        data_from: None,
        data_until: None,
        duration: Duration::from_secs(3600).unwrap(),
        reason: "referral".into(),
        include_sensitive: vec![],
    };
    let mut approval = consent(
        Grantee::Facility(provincial.clone()),
        vec![Purpose::Referral],
    );
    approval.request = Some(id(20));
    approval.evidence = None;
    let state = ConsentState::fold(vec![
        ev(
            1,
            0,
            ConsentFact::KeyEnrolled {
                facility: district.clone(),
                key: key(1),
            },
        ),
        ev(
            10,
            1,
            ConsentFact::AttestedGrant {
                facility: district.clone(),
                grant: attested.clone(),
            },
        ),
        ev(
            11,
            2,
            ConsentFact::AttestedGrant {
                facility: district.clone(),
                grant: attested,
            },
        ),
        // Another facility cannot revoke the district's grant; the district can.
        ev(
            12,
            3,
            ConsentFact::FacilityRevocation {
                facility: provincial.clone(),
                grant: id(10),
            },
        ),
        ev(
            13,
            4,
            ConsentFact::FacilityRevocation {
                facility: district.clone(),
                grant: id(11),
            },
        ),
        ev(
            20,
            5,
            ConsentFact::Request {
                facility: provincial.clone(),
                request: request.clone(),
            },
        ),
        ev(
            21,
            6,
            ConsentFact::Request {
                facility: provincial.clone(),
                request,
            },
        ),
        ev(22, 7, statement(1, StatementBody::Grant(approval))),
        ev(
            23,
            8,
            statement(1, StatementBody::Decline { request: id(21) }),
        ),
        // A second answer does not change the first.
        ev(
            24,
            9,
            statement(1, StatementBody::Decline { request: id(20) }),
        ),
    ]);
    assert_eq!(state.grant(id(10)).unwrap().revoked_at, None);
    assert_eq!(
        state.grant(id(11)).unwrap().revoked_by,
        Some(Revoker::Facility(district))
    );
    let policy = ConsentPolicy::default();
    assert_eq!(
        state.request(id(20)).unwrap().status(t(10), &policy),
        RequestStatus::Approved { grant: id(22) }
    );
    assert_eq!(
        state.request(id(21)).unwrap().status(t(10), &policy),
        RequestStatus::Declined
    );
}
