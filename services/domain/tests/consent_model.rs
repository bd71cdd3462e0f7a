//! The consent decision, property-tested against a small reference model.
//!
//! Random histories of key enrollments, rotations and revocations, patient-signed and
//! attested grants, revocations by the patient and by facilities, consent requests and
//! their answers, and break-glass windows, given to `ConsentState::fold` in any order;
//! then every (reader, purpose, record author, time) is decided by `Access::decide` and
//! by the model, which follows the rules of BRIEF section 5 literally and naively
//! (quadratic scans, no shared code with the fold), and the two must agree.

use hrx_domain::consent::{
    Access, Basis, BreakGlassWindow, ConsentEvent, ConsentFact, ConsentForm, ConsentState,
    RecordFacts,
};
use hrx_domain::event::{ConsentGrant, ConsentRevocation, Grantee};
use hrx_domain::patient::StatementBody;
use hrx_domain::{
    EventId, FacilityId, KeyId, PatientId, Purpose, RecordKind, SigningKey, Timestamp,
};
use proptest::prelude::*;

const FACILITIES: [&str; 3] = ["26001", "26012", "26105"];
const PURPOSES: [Purpose; 3] = [Purpose::Treatment, Purpose::Referral, Purpose::Emergency];

fn fac(i: usize) -> FacilityId {
    FacilityId::parse(FACILITIES[i]).unwrap()
}

fn t(s: i64) -> Timestamp {
    Timestamp::from_unix_seconds(1_800_000_000 + s).unwrap()
}

fn key(i: u8) -> hrx_domain::PublicKey {
    SigningKey::from_seed(&[i + 1; 32]).unwrap().public_key()
}

/// One generated step of a patient's history.
#[derive(Clone, Debug)]
enum Step {
    Enroll {
        facility: usize,
        key: u8,
    },
    Rotate {
        signer: u8,
        new: u8,
    },
    RevokeKey {
        signer: u8,
    },
    PatientGrant {
        signer: u8,
        grantee: Option<usize>,
        purpose: usize,
        expires: i64,
    },
    Attest {
        facility: usize,
        grantee: usize,
        purpose: usize,
        expires: i64,
    },
    PatientRevoke {
        signer: u8,
        grant: usize,
    },
    FacilityRevoke {
        facility: usize,
        grant: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3usize, 0..4u8).prop_map(|(facility, key)| Step::Enroll { facility, key }),
        (0..4u8, 0..4u8).prop_map(|(signer, new)| Step::Rotate { signer, new }),
        (0..4u8).prop_map(|signer| Step::RevokeKey { signer }),
        (0..4u8, prop::option::of(0..3usize), 0..3usize, 1..200i64).prop_map(
            |(signer, grantee, purpose, expires)| Step::PatientGrant {
                signer,
                grantee,
                purpose,
                expires
            }
        ),
        (0..3usize, 0..3usize, 0..3usize, 1..200i64).prop_map(
            |(facility, grantee, purpose, expires)| Step::Attest {
                facility,
                grantee,
                purpose,
                expires
            }
        ),
        (0..4u8, 0..12usize).prop_map(|(signer, grant)| Step::PatientRevoke { signer, grant }),
        (0..3usize, 0..12usize)
            .prop_map(|(facility, grant)| Step::FacilityRevoke { facility, grant }),
    ]
}

fn id(n: usize) -> EventId {
    EventId::from_uuid(uuid::Uuid::from_u128(n as u128 + 1))
}

fn patient() -> PatientId {
    PatientId::parse("026062001234").unwrap()
}

fn terms(grantee: Grantee, purpose: usize, expires: i64) -> ConsentGrant {
    ConsentGrant {
        patient_id: patient(),
        grantee,
        purposes: vec![PURPOSES[purpose]],
        kinds: vec![],
        include_sensitive: vec![],
        data_from: None,
        data_until: None,
        expires_at: t(expires),
        evidence: None,
        request: None,
    }
}

/// The domain's event for step `i`, received at time `i` (ids follow the steps, so the
/// model can refer to "the grant made at step j").
fn event(i: usize, s: &Step) -> ConsentEvent {
    let statement = |signer: u8, body| ConsentFact::Statement {
        key: key(signer).key_id(),
        body,
    };
    let fact = match s.clone() {
        Step::Enroll { facility, key: k } => ConsentFact::KeyEnrolled {
            facility: fac(facility),
            key: key(k),
        },
        Step::Rotate { signer, new } => {
            statement(signer, StatementBody::KeyRotation { new_key: key(new) })
        }
        Step::RevokeKey { signer } => statement(
            signer,
            StatementBody::KeyRevocation {
                reason: String::new(),
            },
        ),
        Step::PatientGrant {
            signer,
            grantee,
            purpose,
            expires,
        } => statement(
            signer,
            StatementBody::Grant(terms(
                grantee.map_or(Grantee::AnyFacility, |g| Grantee::Facility(fac(g))),
                purpose,
                expires,
            )),
        ),
        Step::Attest {
            facility,
            grantee,
            purpose,
            expires,
        } => ConsentFact::AttestedGrant {
            facility: fac(facility),
            grant: terms(Grantee::Facility(fac(grantee)), purpose, expires),
        },
        Step::PatientRevoke { signer, grant } => statement(
            signer,
            StatementBody::Revocation(ConsentRevocation {
                patient_id: patient(),
                grant_event_id: id(grant),
                evidence: None,
            }),
        ),
        Step::FacilityRevoke { facility, grant } => ConsentFact::FacilityRevocation {
            facility: fac(facility),
            grant: id(grant),
        },
    };
    ConsentEvent {
        id: id(i),
        received_at: t(i as i64),
        fact,
    }
}

/// The model: the patient's key at step `i` (before it), by replaying steps 0..i.
fn key_before(steps: &[Step], i: usize) -> Option<KeyId> {
    let mut current: Option<u8> = None;
    for (j, s) in steps.iter().enumerate().take(i) {
        match s {
            Step::Enroll { key: k, .. } => current = Some(*k),
            Step::Rotate { signer, new } if valid(steps, j, *signer) => current = Some(*new),
            Step::RevokeKey { signer } if valid(steps, j, *signer) => current = None,
            _ => {}
        }
    }
    current.map(|k| key(k).key_id())
}

/// The model: whether step `i`, signed by `signer`, counts.
fn valid(steps: &[Step], i: usize, signer: u8) -> bool {
    key_before(steps, i) == Some(key(signer).key_id())
}

/// The model: the grant made at step `g`, if step `g` made one that counts: (grantee,
/// purpose, expires, attesting facility).
fn grant_at(steps: &[Step], g: usize) -> Option<(Option<usize>, usize, i64, Option<usize>)> {
    match steps.get(g)? {
        Step::PatientGrant {
            signer,
            grantee,
            purpose,
            expires,
        } if valid(steps, g, *signer) => Some((*grantee, *purpose, *expires, None)),
        Step::Attest {
            facility,
            grantee,
            purpose,
            expires,
        } => Some((Some(*grantee), *purpose, *expires, Some(*facility))),
        _ => None,
    }
}

/// The model: whether anyone allowed revoked the grant made at step `g`.
fn revoked(steps: &[Step], g: usize) -> bool {
    let attester = grant_at(steps, g).and_then(|(_, _, _, by)| by);
    steps.iter().enumerate().any(|(j, s)| match s {
        Step::PatientRevoke { signer, grant } => *grant == g && valid(steps, j, *signer),
        Step::FacilityRevoke { facility, grant } => *grant == g && attester == Some(*facility),
        _ => false,
    })
}

/// The model's decision for `reader` reading a record by `author` for `purpose` at
/// `now`: the first grant in received order that allows it, else break-glass.
fn model(
    steps: &[Step],
    windows: &[(usize, i64, i64)],
    reader: usize,
    author: usize,
    purpose: usize,
    now: i64,
) -> Option<Basis> {
    if reader == author {
        return Some(Basis::Author);
    }
    for g in 0..steps.len() {
        let Some((grantee, p, expires, by)) = grant_at(steps, g) else {
            continue;
        };
        let names = grantee.is_none_or(|f| f == reader);
        if names && p == purpose && (g as i64) <= now && now < expires && !revoked(steps, g) {
            let form = if by.is_some() {
                ConsentForm::Attested
            } else {
                ConsentForm::PatientSigned
            };
            return Some(Basis::Consent { grant: id(g), form });
        }
    }
    windows
        .iter()
        .enumerate()
        .find(|(_, (f, from, to))| {
            PURPOSES[purpose] == Purpose::Emergency && *f == reader && *from <= now && now < *to
        })
        .map(|(w, _)| Basis::BreakGlass(id(1000 + w)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_fold_decides_as_the_model_does_whatever_the_input_order(
        steps in prop::collection::vec(step(), 0..12),
        windows in prop::collection::vec((0..3usize, 0..30i64, 0..60i64), 0..3),
        order in any::<u64>(),
        now in 0..80i64,
    ) {
        let events: Vec<ConsentEvent> = steps.iter().enumerate().map(|(i, s)| event(i, s)).collect();
        // Any order in: the fold sorts by when the exchange received each event.
        let mut shuffled = events.clone();
        let n = shuffled.len();
        for i in (1..n).rev() {
            shuffled.swap(i, (order as usize).wrapping_mul(i + 7) % (i + 1));
        }
        let state = ConsentState::fold(shuffled);
        prop_assert_eq!(&state, &ConsentState::fold(events));
        let glass: Vec<BreakGlassWindow> = windows
            .iter()
            .enumerate()
            .map(|(w, (f, from, len))| BreakGlassWindow {
                event_id: id(1000 + w),
                facility_id: fac(*f),
                declared_at: t(*from),
                expires_at: t(from + len),
            })
            .collect();
        let windows: Vec<(usize, i64, i64)> =
            windows.iter().map(|(f, from, len)| (*f, *from, from + len)).collect();
        // Revocations count whenever they were received: reads happen after the log.
        let now = now.max(steps.len() as i64);
        for reader in 0..3 {
            for author in 0..3 {
                for (purpose, p) in PURPOSES.iter().enumerate() {
                    let reader_id = fac(reader);
                    let author_id = fac(author);
                    let decided = Access {
                        reader: &reader_id,
                        purpose: *p,
                        now: t(now),
                        grants: &state.grants,
                        break_glass: &glass,
                    }
                    .decide(&RecordFacts {
                        author: &author_id,
                        kind: RecordKind::Observation,
                        occurred_at: t(0),
                        sensitivity: &[],
                    });
                    prop_assert_eq!(
                        decided,
                        model(&steps, &windows, reader, author, purpose, now),
                        "reader {} author {} purpose {:?} at {}", reader, author, p, now
                    );
                }
            }
        }
    }
}
