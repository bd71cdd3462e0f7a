//! Consent (BRIEF section 5): who may read what, decided from a patient's consent state.
//!
//! - [`ConsentState::fold`] builds a patient's state — keys, grants, requests — from
//!   the consent events the log holds about them, in the order the exchange *received*
//!   them. The patient is the authority: a statement counts only if it was signed by
//!   the key that was the patient's when the exchange received it; facilities can
//!   attest grants (bounded), ask, and revoke only what they attested. The fold sorts
//!   its input, so a live projection and a replay that projected the log's partitions
//!   in another order reach the same state.
//! - [`check_facility_event`] is what a facility's events must satisfy against the
//!   facility's own chain (standing, break-glass limits, grantor, corrections), with
//!   [`ConsentPolicy`]'s bounds. Ingest and the projector both run it on the same facts,
//!   so what ingest accepts the projector projects.
//! - [`Access`] decides per record: deny by default; a facility always reads what it
//!   authored; anything else needs an active grant, or an open break-glass window for
//!   the emergency purpose. Decisions say which basis allowed each record.
//!
//! Pure: callers load the events and facts and pass the time.

use crate::event::{Body, ConsentGrant, ConsentRequest, FacilityHeader, Grantee};
use crate::ids::{EventId, FacilityId, KeyId};
use crate::kinds::{Purpose, RecordKind, SensitivityLabel};
use crate::patient::StatementBody;
use crate::rejection::{Reason, Rejection};
use crate::time::{Duration, Timestamp};
use crate::{PublicKey, patient::Statement};

/// How a grant was given.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ConsentForm {
    /// Signed by the patient's own key.
    PatientSigned = 1,
    /// Attested by a facility that treats the patient (a paper form).
    Attested = 2,
}

impl ConsentForm {
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            1 => Some(Self::PatientSigned),
            2 => Some(Self::Attested),
            _ => None,
        }
    }

    /// `patient-signed` or `attested`.
    pub fn name(self) -> &'static str {
        match self {
            Self::PatientSigned => "patient-signed",
            Self::Attested => "attested",
        }
    }
}

fn days(n: i64) -> Duration {
    Duration::from_secs(n * 24 * 60 * 60).expect("a whole number of days is a duration")
}

/// The bounds of what facilities may do on a patient's behalf. Ingest and the
/// projector must run with the same policy (a replay with another policy may judge old
/// events differently).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ConsentPolicy {
    /// Longest expiry of a facility-attested grant, from its recorded_at.
    pub attested_max: Duration,
    /// A facility has standing for a patient when it authored a record for them within
    /// this window before the event.
    pub standing_window: Duration,
    /// Break-glass declarations one facility may make in any 24 hours.
    pub break_glass_per_day: u32,
    /// Break-glass windows one facility may have open for one patient at once.
    pub break_glass_open_per_patient: u32,
    /// How long a consent request waits for the patient's answer.
    pub request_ttl: Duration,
}

impl Default for ConsentPolicy {
    fn default() -> Self {
        Self {
            attested_max: days(90),
            standing_window: days(365),
            break_glass_per_day: 20,
            break_glass_open_per_patient: 1,
            request_ttl: days(30),
        }
    }
}

/// What a facility's consent event must be judged against, from the facility's own
/// chain before the event (so it is the same for ingest, the live projector and a
/// replay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FactsNeeded {
    /// Nothing beyond the event.
    None,
    /// An attested grant: the facility's latest record for `patient`, by recorded_at.
    Standing,
    /// A revocation: whether the facility attested `grant` for the patient.
    Grantor { grant: EventId },
    /// A break-glass declaration: the facility's declarations since `since`, and its
    /// windows for the patient still open at `at`.
    BreakGlass { since: Timestamp, at: Timestamp },
    /// A correction: whether `record` is an earlier record of this facility about
    /// this patient.
    Supersedes { record: EventId },
}

/// The answers to [`FactsNeeded`] (fields not asked for are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FacilityFacts {
    /// recorded_at of the latest record this facility authored for the patient.
    pub latest_authored: Option<Timestamp>,
    /// Whether this facility attested the grant being revoked, for this patient.
    pub attested_the_grant: bool,
    /// This facility's break-glass declarations (any patient) recorded after `since`.
    pub declared_since: u64,
    /// This facility's windows for the patient open at `at`.
    pub open_for_patient: u64,
    /// Whether the record being corrected is this facility's, about this patient.
    pub supersedes_own: bool,
}

/// Which facts `body`, recorded as `header`, needs.
pub fn facts_needed(header: &FacilityHeader, body: &Body) -> FactsNeeded {
    let at = header.link.recorded_at;
    match body {
        Body::ConsentGrant(_) => FactsNeeded::Standing,
        Body::ConsentRevocation(r) => FactsNeeded::Grantor {
            grant: r.grant_event_id,
        },
        // Within a day of the year 1 the window reaches back to its start.
        Body::BreakGlass(_) => FactsNeeded::BreakGlass {
            since: at.checked_sub(days(1)).unwrap_or(Timestamp::MIN),
            at,
        },
        Body::Record(r) => match r.supersedes {
            Some(record) => FactsNeeded::Supersedes { record },
            None => FactsNeeded::None,
        },
        _ => FactsNeeded::None,
    }
}

fn out_of_bounds(message: &'static str) -> Rejection {
    Rejection::new(Reason::AttestedGrantOutOfBounds, message)
}

/// The checks of a facility's consent event against the policy and its own chain, in
/// the contract's order (after the content checks).
pub fn check_facility_event(
    policy: &ConsentPolicy,
    header: &FacilityHeader,
    body: &Body,
    facts: &FacilityFacts,
) -> Result<(), Rejection> {
    let at = header.link.recorded_at;
    match body {
        Body::ConsentGrant(g) => {
            if g.grantee == Grantee::AnyFacility {
                return Err(out_of_bounds(
                    "a facility-attested grant must name one facility, never any facility",
                ));
            }
            if !g.include_sensitive.is_empty() {
                return Err(out_of_bounds(
                    "a facility-attested grant may not include sensitive labels",
                ));
            }
            // Past the year 9999 there is no expiry beyond the limit.
            let limit = at.checked_add(policy.attested_max);
            if limit.is_some_and(|limit| g.expires_at > limit) {
                return Err(out_of_bounds(
                    "a facility-attested grant expires later than the policy allows",
                ));
            }
            if g.request.is_some() {
                return Err(out_of_bounds(
                    "only the patient's own signed grant answers a consent request",
                ));
            }
            // Before the year 1 the window has no lower bound.
            let window_start = at
                .checked_sub(policy.standing_window)
                .unwrap_or(Timestamp::MIN);
            if facts
                .latest_authored
                .is_none_or(|t| t < window_start || t > at)
            {
                return Err(Rejection::new(
                    Reason::NoStanding,
                    "the facility authored no record for this patient within the standing window",
                ));
            }
            Ok(())
        }
        Body::ConsentRevocation(_) if !facts.attested_the_grant => Err(Rejection::new(
            Reason::NotGrantor,
            "a facility may revoke only a grant it attested for this patient",
        )),
        Body::BreakGlass(_) => {
            if facts.declared_since >= u64::from(policy.break_glass_per_day) {
                return Err(Rejection::new(
                    Reason::BreakGlassLimit,
                    "the facility has made as many break-glass declarations in 24 hours as the policy allows",
                ));
            }
            if facts.open_for_patient >= u64::from(policy.break_glass_open_per_patient) {
                return Err(Rejection::new(
                    Reason::BreakGlassLimit,
                    "the facility already has as many open break-glass windows for this patient as the policy allows",
                ));
            }
            Ok(())
        }
        Body::Record(r) if r.supersedes.is_some() && !facts.supersedes_own => Err(Rejection::new(
            Reason::SupersedesForeignRecord,
            "a record may correct only an earlier record of the same facility about the same patient",
        )),
        _ => Ok(()),
    }
}

/// A consent-relevant event about one patient, as the log holds it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConsentEvent {
    /// The event id (facility events) or statement id (patient statements).
    pub id: EventId,
    /// When the exchange received it (the log's own time, not the signer's claim).
    pub received_at: Timestamp,
    pub fact: ConsentFact,
}

/// What a consent event says.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ConsentFact {
    /// A facility enrolled the patient's key in person.
    KeyEnrolled {
        facility: FacilityId,
        key: PublicKey,
    },
    /// The patient signed a statement with `key`.
    Statement { key: KeyId, body: StatementBody },
    /// A facility attested a grant.
    AttestedGrant {
        facility: FacilityId,
        grant: ConsentGrant,
    },
    /// A facility revoked a grant (it counts only if the facility attested it).
    FacilityRevocation {
        facility: FacilityId,
        grant: EventId,
    },
    /// A facility asked for consent.
    Request {
        facility: FacilityId,
        request: ConsentRequest,
    },
}

impl ConsentFact {
    /// The fact of a valid patient statement.
    pub fn of_statement(s: &Statement) -> Self {
        ConsentFact::Statement {
            key: s.key_id(),
            body: s.body.clone(),
        }
    }

    /// The fact of a valid facility event's body, if it is a consent event.
    pub fn of_facility_body(facility: &FacilityId, body: &Body) -> Option<Self> {
        match classify(facility, body.clone()) {
            Classified::Consent(fact) => Some(fact),
            Classified::Record(_) | Classified::BreakGlass(_) => None,
        }
    }
}

/// A facility event's body by what becomes of it: a record, a break-glass window, or a
/// consent event.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Classified {
    Record(crate::event::Record),
    BreakGlass(crate::event::BreakGlass),
    Consent(ConsentFact),
}

/// Sorts a valid body of `facility`'s event.
pub fn classify(facility: &FacilityId, body: Body) -> Classified {
    let facility = facility.clone();
    Classified::Consent(match body {
        Body::Record(r) => return Classified::Record(r),
        Body::BreakGlass(b) => return Classified::BreakGlass(b),
        Body::ConsentGrant(grant) => ConsentFact::AttestedGrant { facility, grant },
        Body::ConsentRevocation(r) => ConsentFact::FacilityRevocation {
            facility,
            grant: r.grant_event_id,
        },
        Body::PatientKeyEnrollment(e) => ConsentFact::KeyEnrolled {
            facility,
            key: e.public_key,
        },
        Body::ConsentRequest(request) => ConsentFact::Request { facility, request },
    })
}

/// Why a key stopped being the patient's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KeyEnd {
    /// A rotation, or a new enrollment in person.
    Replaced,
    /// The patient revoked it.
    Revoked,
}

/// One of the patient's keys, over its life.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PatientKey {
    pub public_key: PublicKey,
    /// The facility that enrolled it in person; `None` for a key rotated to.
    pub enrolled_by: Option<FacilityId>,
    pub valid_from: Timestamp,
    pub ended: Option<(KeyEnd, Timestamp)>,
}

impl PatientKey {
    pub fn key_id(&self) -> KeyId {
        self.public_key.key_id()
    }
}

/// Who revoked a grant.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Revoker {
    Patient,
    /// The facility that attested it.
    Facility(FacilityId),
}

/// A grant as the consent state holds it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GrantState {
    /// The statement id (patient-signed) or event id (attested).
    pub grant_event_id: EventId,
    pub form: ConsentForm,
    /// The attesting facility; `None` when the patient signed.
    pub granted_by: Option<FacilityId>,
    /// When the exchange received it.
    pub granted_at: Timestamp,
    pub grant: ConsentGrant,
    /// When a valid revocation was received; a revoked grant never allows a read again.
    pub revoked_at: Option<Timestamp>,
    pub revoked_by: Option<Revoker>,
}

/// Where a grant stands at a given time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GrantStatus {
    Active,
    Revoked,
    Expired,
    /// Received after the read's time (a clock between replicas).
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

    /// Whether the grant names `facility` (or any facility).
    pub fn names(&self, facility: &FacilityId) -> bool {
        match &self.grant.grantee {
            Grantee::Facility(f) => f == facility,
            Grantee::AnyFacility => true,
        }
    }

    /// Does this grant let `reader` read for `purpose` at `now` (regardless of record)?
    fn admits(&self, reader: &FacilityId, purpose: Purpose, now: Timestamp) -> bool {
        self.status(now) == GrantStatus::Active
            && self.names(reader)
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

    fn basis(&self) -> Basis {
        Basis::Consent {
            grant: self.grant_event_id,
            form: self.form,
        }
    }
}

/// How a consent request was answered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Answer {
    /// A patient-signed grant naming the request.
    Approved {
        grant: EventId,
    },
    Declined,
}

/// Where a request stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RequestStatus {
    Pending,
    Approved { grant: EventId },
    Declined,
    Expired,
}

/// A facility's consent request as the consent state holds it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RequestState {
    pub request_event_id: EventId,
    pub facility: FacilityId,
    pub requested_at: Timestamp,
    pub request: ConsentRequest,
    pub answer: Option<(Answer, Timestamp)>,
}

impl RequestState {
    pub fn status(&self, now: Timestamp, policy: &ConsentPolicy) -> RequestStatus {
        match self.answer {
            Some((Answer::Approved { grant }, _)) => RequestStatus::Approved { grant },
            Some((Answer::Declined, _)) => RequestStatus::Declined,
            None if self
                .requested_at
                .checked_add(policy.request_ttl)
                .is_some_and(|end| now >= end) =>
            {
                RequestStatus::Expired
            }
            None => RequestStatus::Pending,
        }
    }
}

/// A patient's consent state: keys, grants and requests, from their consent events.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ConsentState {
    /// Every key the patient had, in the order they became valid; at most one has no end.
    pub keys: Vec<PatientKey>,
    pub grants: Vec<GrantState>,
    pub requests: Vec<RequestState>,
    /// Statements that were not signed by the patient's key when received: they count
    /// for nothing (kept to show the patient).
    pub ignored: Vec<EventId>,
}

impl ConsentState {
    /// Folds a patient's consent events, in the order the exchange received them (ties
    /// by id), whatever order they are given in.
    pub fn fold(events: impl IntoIterator<Item = ConsentEvent>) -> Self {
        let mut events: Vec<ConsentEvent> = events.into_iter().collect();
        events.sort_by_key(|e| (e.received_at, e.id));
        let mut state = ConsentState::default();
        // Revocations and answers refer to grants and requests; they are resolved once
        // every grant and request is known, in the order they were received.
        let mut revocations: Vec<(EventId, Revoker, Timestamp)> = Vec::new();
        let mut answers: Vec<(EventId, Answer, Timestamp)> = Vec::new();
        for e in events {
            let t = e.received_at;
            match e.fact {
                ConsentFact::KeyEnrolled { facility, key } => {
                    state.end_active_key(KeyEnd::Replaced, t);
                    state.keys.push(PatientKey {
                        public_key: key,
                        enrolled_by: Some(facility),
                        valid_from: t,
                        ended: None,
                    });
                }
                ConsentFact::Statement { key, body } => {
                    if state.active_key().is_none_or(|k| k.key_id() != key) {
                        state.ignored.push(e.id);
                        continue;
                    }
                    match body {
                        StatementBody::KeyRotation { new_key } => {
                            state.end_active_key(KeyEnd::Replaced, t);
                            state.keys.push(PatientKey {
                                public_key: new_key,
                                enrolled_by: None,
                                valid_from: t,
                                ended: None,
                            });
                        }
                        StatementBody::KeyRevocation { .. } => {
                            state.end_active_key(KeyEnd::Revoked, t)
                        }
                        StatementBody::Grant(grant) => {
                            if let Some(request) = grant.request {
                                answers.push((request, Answer::Approved { grant: e.id }, t));
                            }
                            state.grants.push(GrantState {
                                grant_event_id: e.id,
                                form: ConsentForm::PatientSigned,
                                granted_by: None,
                                granted_at: t,
                                grant,
                                revoked_at: None,
                                revoked_by: None,
                            });
                        }
                        StatementBody::Revocation(r) => {
                            revocations.push((r.grant_event_id, Revoker::Patient, t))
                        }
                        StatementBody::Decline { request } => {
                            answers.push((request, Answer::Declined, t))
                        }
                    }
                }
                ConsentFact::AttestedGrant { facility, grant } => state.grants.push(GrantState {
                    grant_event_id: e.id,
                    form: ConsentForm::Attested,
                    granted_by: Some(facility),
                    granted_at: t,
                    grant,
                    revoked_at: None,
                    revoked_by: None,
                }),
                ConsentFact::FacilityRevocation { facility, grant } => {
                    revocations.push((grant, Revoker::Facility(facility), t))
                }
                ConsentFact::Request { facility, request } => state.requests.push(RequestState {
                    request_event_id: e.id,
                    facility,
                    requested_at: t,
                    request,
                    answer: None,
                }),
            }
        }
        for (id, by, t) in revocations {
            let Some(g) = state.grants.iter_mut().find(|g| g.grant_event_id == id) else {
                continue;
            };
            let authorised = match &by {
                Revoker::Patient => true,
                Revoker::Facility(f) => {
                    g.form == ConsentForm::Attested && g.granted_by.as_ref() == Some(f)
                }
            };
            if authorised && g.revoked_at.is_none() {
                g.revoked_at = Some(t);
                g.revoked_by = Some(by);
            }
        }
        for (id, answer, t) in answers {
            let grantee_of = |grant: EventId| {
                state
                    .grants
                    .iter()
                    .find(|g| g.grant_event_id == grant)
                    .map(|g| g.grant.grantee.clone())
            };
            let approved_for = match answer {
                Answer::Approved { grant } => grantee_of(grant),
                Answer::Declined => None,
            };
            let Some(r) = state.requests.iter_mut().find(|r| r.request_event_id == id) else {
                continue;
            };
            let fits = match answer {
                Answer::Approved { .. } => {
                    approved_for == Some(Grantee::Facility(r.facility.clone()))
                }
                Answer::Declined => true,
            };
            if fits && r.answer.is_none() {
                r.answer = Some((answer, t));
            }
        }
        state
    }

    fn end_active_key(&mut self, end: KeyEnd, at: Timestamp) {
        if let Some(k) = self.keys.iter_mut().find(|k| k.ended.is_none()) {
            k.ended = Some((end, at));
        }
    }

    /// The patient's current key, if they have one.
    pub fn active_key(&self) -> Option<&PatientKey> {
        self.keys.iter().find(|k| k.ended.is_none())
    }

    pub fn grant(&self, id: EventId) -> Option<&GrantState> {
        self.grants.iter().find(|g| g.grant_event_id == id)
    }

    pub fn request(&self, id: EventId) -> Option<&RequestState> {
        self.requests.iter().find(|r| r.request_event_id == id)
    }

    /// Whether the exchange, holding this state now, accepts `statement` (signed and
    /// well-formed) from the patient: its key is the patient's current key, and what it
    /// refers to is the patient's and still open.
    pub fn check_statement(
        &self,
        statement: &Statement,
        now: Timestamp,
        policy: &ConsentPolicy,
    ) -> Result<(), Rejection> {
        if self
            .active_key()
            .is_none_or(|k| k.key_id() != statement.key_id())
        {
            return Err(Rejection::new(
                Reason::PatientKeyNotValid,
                "the statement is not signed by the patient's enrolled key",
            ));
        }
        let pending = |id: EventId| {
            self.request(id)
                .filter(|r| r.status(now, policy) == RequestStatus::Pending)
        };
        match &statement.body {
            StatementBody::Revocation(r) if self.grant(r.grant_event_id).is_none() => Err(
                Rejection::new(Reason::NotGrantor, "the patient has no grant with this id"),
            ),
            StatementBody::Decline { request } if pending(*request).is_none() => {
                Err(Rejection::invalid_field(
                    "consent_decline.request_event_id",
                    "no pending consent request with this id for this patient",
                ))
            }
            StatementBody::Grant(g) => match g.request {
                Some(request) => match pending(request) {
                    Some(r) if g.grantee == Grantee::Facility(r.facility.clone()) => Ok(()),
                    Some(_) => Err(Rejection::invalid_field(
                        "consent_grant.request_event_id",
                        "an approval must name the requesting facility as grantee",
                    )),
                    None => Err(Rejection::invalid_field(
                        "consent_grant.request_event_id",
                        "no pending consent request with this id for this patient",
                    )),
                },
                None => Ok(()),
            },
            _ => Ok(()),
        }
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
    pub fn is_open_at(&self, now: Timestamp) -> bool {
        self.declared_at <= now && now < self.expires_at
    }

    pub fn is_open(&self, reader: &FacilityId, now: Timestamp) -> bool {
        &self.facility_id == reader && self.is_open_at(now)
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
    /// An active grant (its id), patient-signed or attested.
    Consent { grant: EventId, form: ConsentForm },
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
    /// Break-glass releases records only for the emergency purpose.
    fn glass(&self) -> impl Iterator<Item = &BreakGlassWindow> {
        let emergency = self.purpose == Purpose::Emergency;
        self.break_glass
            .iter()
            .filter(move |w| emergency && w.is_open(self.reader, self.now))
    }

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
            return Some(g.basis());
        }
        self.glass().next().map(|w| Basis::BreakGlass(w.event_id))
    }

    /// Grants and break-glass windows that currently let the reader read anything of
    /// this patient's for this purpose (authorship aside). Empty means: only its own
    /// records. A follow stream runs while this is non-empty.
    pub fn standing(&self) -> Vec<Basis> {
        let grants = self
            .grants
            .iter()
            .filter(|g| g.admits(self.reader, self.purpose, self.now))
            .map(GrantState::basis);
        let glass = self.glass().map(|w| Basis::BreakGlass(w.event_id));
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
mod tests;
