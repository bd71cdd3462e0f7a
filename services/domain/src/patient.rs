//! The patient as the authority: their own Ed25519 key, the statements they sign with it
//! (consent grants, revocations, declines, key rotation and revocation), the proof that
//! they hold a key being enrolled, and their signed single-use requests.
//!
//! A patient statement travels in a DSSE envelope of its own payload type. Its header
//! carries the signing public key, so that anyone holding the log can check the
//! signature without the exchange's state; whether that key *is the patient's* at the
//! moment the exchange received the statement is decided by the consent state
//! ([`crate::consent::ConsentState`]), from the log alone.
//!
//! Verification order of a statement (the contract; `tests/vectors/README.md`):
//! payload type → envelope form → payload decodes → header fields → key id names the
//! header's key → signature → content → the key is the patient's (when received) →
//! what it refers to (grants, pending requests).

use crate::dsse::{Envelope, PayloadType, PublicKey};
use crate::event::{ConsentGrant, ConsentRevocation, Link, timestamp, unchecked};
use crate::ids::{EventId, FacilityId, KeyId, PatientId, Sha256};
use crate::rejection::{Reason, Rejection};
use crate::time::{Duration, Timestamp};

/// How far a key proof's `proved_at` may lie from the enrollment's or rotation's time.
pub const MAX_PROOF_SKEW_SECONDS: i64 = 60 * 60;

/// How far a patient request's `issued_at` may lie from the exchange's clock.
pub const MAX_REQUEST_SKEW_SECONDS: i64 = 5 * 60;

/// Patient statements, key proofs and requests as decoded, before validation.
pub mod raw {
    use crate::dsse::Envelope;
    use crate::event::unchecked::{ConsentGrant, ConsentRevocation, RawTime};

    /// A `PatientKeyProof` as sent.
    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct KeyProof {
        pub patient_id: String,
        pub public_key: Vec<u8>,
        pub facility_id: String,
        pub proved_at: Option<RawTime>,
    }

    /// A proof-of-possession envelope, with its payload decoded when it decodes (the
    /// codec does that, so the domain needs no wire format).
    #[derive(Clone, PartialEq, Eq, Debug)]
    pub struct Proof {
        pub envelope: Envelope,
        pub decoded: Option<KeyProof>,
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct StatementHeader {
        pub statement_id: String,
        pub patient_id: String,
        pub public_key: Vec<u8>,
        pub signed_at: Option<RawTime>,
    }

    #[derive(Clone, PartialEq, Eq, Debug)]
    pub enum StatementBody {
        ConsentGrant(ConsentGrant),
        ConsentRevocation(ConsentRevocation),
        ConsentDecline {
            request_event_id: String,
        },
        KeyRotation {
            new_public_key: Vec<u8>,
            proof: Option<Proof>,
        },
        KeyRevocation {
            reason: String,
        },
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct Statement {
        pub header: Option<StatementHeader>,
        pub body: Option<StatementBody>,
    }

    #[derive(Clone, PartialEq, Eq, Debug)]
    pub enum Query {
        View { page_size: u32, cursor: String },
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct Request {
        pub request_id: String,
        pub patient_id: String,
        pub public_key: Vec<u8>,
        pub issued_at: Option<RawTime>,
        pub query: Option<Query>,
    }
}

/// A statement's header, parsed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StatementHeader {
    pub statement_id: EventId,
    pub patient_id: PatientId,
    pub public_key: PublicKey,
    pub signed_at: Timestamp,
}

/// What a patient states.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum StatementBody {
    Grant(ConsentGrant),
    Revocation(ConsentRevocation),
    Decline { request: EventId },
    KeyRotation { new_key: PublicKey },
    KeyRevocation { reason: String },
}

/// A patient statement, valid in form, content and signature. Whether its key is the
/// patient's is for the consent state to say.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Statement {
    pub header: StatementHeader,
    pub body: StatementBody,
    pub event_hash: Sha256,
}

impl Statement {
    pub fn key_id(&self) -> KeyId {
        self.header.public_key.key_id()
    }
}

fn malformed_statement() -> Rejection {
    Rejection::new(
        Reason::MalformedPayload,
        "payload is not a valid patient statement with a header and a body",
    )
}

fn patient_field(s: &str, field: &'static str) -> Result<PatientId, Rejection> {
    PatientId::parse(s).map_err(|e| Rejection::invalid_field(field, e))
}

fn public_key(bytes: &[u8], field: &'static str) -> Result<PublicKey, Rejection> {
    PublicKey::from_slice(bytes)
        .ok_or_else(|| Rejection::invalid_field(field, "must be 32 bytes (Ed25519)"))
}

/// Checks a DSSE envelope signed by the public key `key` named in its own payload:
/// payload type, form, that `key_id` names `key`, and the signature. Returns the event
/// hash (SHA-256 of the PAE).
fn check_self_signed(
    envelope: &Envelope,
    expected: PayloadType,
    key: &PublicKey,
) -> Result<Sha256, Rejection> {
    let key_id = envelope.check_key_id_and_signature_form()?;
    if PayloadType::parse(&envelope.payload_type) != Some(expected) {
        return Err(Rejection::new(
            Reason::UnknownPayloadType,
            "this payload type is not accepted here",
        ));
    }
    if key_id != key.key_id() {
        return Err(Rejection::new(
            Reason::BadSignature,
            "key_id is not the SHA-256 of the public key the payload names",
        ));
    }
    let pae = envelope.pae();
    key.verify_pae(&pae, &envelope.signature)?;
    Ok(Sha256::digest(&pae))
}

/// Verifies a patient statement envelope: everything but whether the key is the
/// patient's. `decode` turns the payload into its raw form (an error is
/// `MALFORMED_PAYLOAD`); `received_at` bounds a grant's expiry and a rotation proof's
/// time.
pub fn verify_statement<D, E>(
    envelope: &Envelope,
    received_at: Timestamp,
    decode: D,
) -> Result<Statement, Rejection>
where
    D: FnOnce(&[u8]) -> Result<raw::Statement, E>,
{
    if PayloadType::parse(&envelope.payload_type) != Some(PayloadType::PatientStatement) {
        return Err(Rejection::new(
            Reason::UnknownPayloadType,
            "only patient statements are accepted here",
        ));
    }
    envelope.check_key_id_and_signature_form()?;
    let decoded = decode(&envelope.payload).map_err(|_| malformed_statement())?;
    let (Some(h), Some(body)) = (decoded.header, decoded.body) else {
        return Err(malformed_statement());
    };
    let header = StatementHeader {
        statement_id: EventId::parse(&h.statement_id)
            .map_err(|e| Rejection::invalid_field("statement.header.statement_id", e))?,
        patient_id: patient_field(&h.patient_id, "statement.header.patient_id")?,
        public_key: public_key(&h.public_key, "statement.header.public_key")?,
        signed_at: timestamp(h.signed_at, "statement.header.signed_at")?,
    };
    let event_hash =
        check_self_signed(envelope, PayloadType::PatientStatement, &header.public_key)?;
    let body = check_statement_body(&header, &body, received_at)?;
    Ok(Statement {
        header,
        body,
        event_hash,
    })
}

fn check_statement_body(
    header: &StatementHeader,
    body: &raw::StatementBody,
    received_at: Timestamp,
) -> Result<StatementBody, Rejection> {
    let same_patient = |p: &PatientId, field: &'static str| {
        if p == &header.patient_id {
            Ok(())
        } else {
            Err(Rejection::invalid_field(
                field,
                "must be the signing patient (statement.header.patient_id)",
            ))
        }
    };
    Ok(match body {
        raw::StatementBody::ConsentGrant(g) => {
            let grant = crate::content::check_grant_fields(g, received_at, false)?;
            same_patient(&grant.patient_id, "consent_grant.patient_id")?;
            StatementBody::Grant(grant)
        }
        raw::StatementBody::ConsentRevocation(r) => {
            let revocation = crate::content::check_revocation(r)?;
            same_patient(&revocation.patient_id, "consent_revocation.patient_id")?;
            StatementBody::Revocation(revocation)
        }
        raw::StatementBody::ConsentDecline { request_event_id } => StatementBody::Decline {
            request: EventId::parse(request_event_id)
                .map_err(|e| Rejection::invalid_field("consent_decline.request_event_id", e))?,
        },
        raw::StatementBody::KeyRotation {
            new_public_key,
            proof,
        } => {
            let new_key = public_key(new_public_key, "key_rotation.new_public_key")?;
            if new_key == header.public_key {
                return Err(Rejection::invalid_field(
                    "key_rotation.new_public_key",
                    "must differ from the current key",
                ));
            }
            let proof = proof
                .as_ref()
                .ok_or_else(|| Rejection::invalid_field("key_rotation.proof", "required"))?;
            check_proof(proof, &header.patient_id, &new_key, None, received_at)?;
            StatementBody::KeyRotation { new_key }
        }
        raw::StatementBody::KeyRevocation { reason } => {
            if reason.len() > 1000 {
                return Err(Rejection::invalid_field(
                    "key_revocation.reason",
                    "at most 1000 bytes",
                ));
            }
            StatementBody::KeyRevocation {
                reason: reason.clone(),
            }
        }
    })
}

fn bad_proof(message: &'static str) -> Rejection {
    Rejection::new(Reason::BadProofOfPossession, message)
}

/// Checks a proof of possession of `key` by `patient`: a `PatientKeyProof` envelope
/// signed by `key`, naming this patient, this key and `facility` (empty for a
/// rotation), made within [`MAX_PROOF_SKEW_SECONDS`] of `at`.
pub fn check_proof(
    proof: &raw::Proof,
    patient: &PatientId,
    key: &PublicKey,
    facility: Option<&FacilityId>,
    at: Timestamp,
) -> Result<(), Rejection> {
    let e = &proof.envelope;
    if PayloadType::parse(&e.payload_type) != Some(PayloadType::PatientKeyProof) {
        return Err(bad_proof(
            "the proof's payload type must be application/vnd.hrx.patient-key-proof.v1+protobuf",
        ));
    }
    let well_formed = e.check_key_id_and_signature_form().is_ok();
    if !well_formed || KeyId::parse(&e.key_id).ok() != Some(key.key_id()) {
        return Err(bad_proof(
            "the proof is not signed by the key being enrolled",
        ));
    }
    key.verify(e)
        .map_err(|_| bad_proof("the proof's signature does not verify with the enrolled key"))?;
    let p = proof
        .decoded
        .as_ref()
        .ok_or_else(|| bad_proof("the proof's payload is not a PatientKeyProof"))?;
    let expected_facility = facility.map(FacilityId::as_str).unwrap_or("");
    if p.patient_id != patient.as_str()
        || p.public_key != key.as_bytes()
        || p.facility_id != expected_facility
    {
        return Err(bad_proof(
            "the proof does not name this patient, this key and this facility",
        ));
    }
    let proved_at = p
        .proved_at
        .and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
        .ok_or_else(|| bad_proof("the proof has no valid proved_at"))?;
    let skew = (proved_at.unix_nanos() - at.unix_nanos()).abs();
    if skew > i128::from(MAX_PROOF_SKEW_SECONDS) * 1_000_000_000 {
        return Err(bad_proof(
            "the proof was made more than 1 hour from the enrollment's time",
        ));
    }
    Ok(())
}

/// A key enrollment, valid: the patient's key and the proof that they hold it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyEnrollment {
    pub patient_id: PatientId,
    pub public_key: PublicKey,
}

/// Checks an enrollment carried by `facility`'s event recorded at `link.recorded_at`.
pub fn check_enrollment(
    facility: &FacilityId,
    link: &Link,
    e: &unchecked::PatientKeyEnrollment,
) -> Result<KeyEnrollment, Rejection> {
    let patient_id = patient_field(&e.patient_id, "patient_key_enrollment.patient_id")?;
    let key = public_key(&e.public_key, "patient_key_enrollment.public_key")?;
    let proof = e
        .proof
        .as_ref()
        .ok_or_else(|| Rejection::invalid_field("patient_key_enrollment.proof", "required"))?;
    check_proof(proof, &patient_id, &key, Some(facility), link.recorded_at)?;
    Ok(KeyEnrollment {
        patient_id,
        public_key: key,
    })
}

/// What a patient asks to see.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Query {
    View { page_size: u32, cursor: String },
}

/// A patient request, valid in form, signature and time; whether its key is the
/// patient's and whether its id is fresh are for the caller to check.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Request {
    pub request_id: EventId,
    pub patient_id: PatientId,
    pub public_key: PublicKey,
    pub issued_at: Timestamp,
    pub query: Query,
}

/// Verifies a patient request envelope at `now`.
pub fn verify_request<D, E>(
    envelope: &Envelope,
    now: Timestamp,
    decode: D,
) -> Result<Request, Rejection>
where
    D: FnOnce(&[u8]) -> Result<raw::Request, E>,
{
    if PayloadType::parse(&envelope.payload_type) != Some(PayloadType::PatientRequest) {
        return Err(Rejection::new(
            Reason::UnknownPayloadType,
            "a patient request must be application/vnd.hrx.patient-request.v1+protobuf",
        ));
    }
    envelope.check_key_id_and_signature_form()?;
    let r = decode(&envelope.payload)
        .map_err(|_| Rejection::new(Reason::MalformedPayload, "payload is not a PatientRequest"))?;
    let request_id = EventId::parse(&r.request_id)
        .map_err(|e| Rejection::invalid_field("request.request_id", e))?;
    let patient_id = patient_field(&r.patient_id, "request.patient_id")?;
    let key = public_key(&r.public_key, "request.public_key")?;
    let issued_at = timestamp(r.issued_at, "request.issued_at")?;
    check_self_signed(envelope, PayloadType::PatientRequest, &key)?;
    let skew = (issued_at.unix_nanos() - now.unix_nanos()).abs();
    if skew > i128::from(MAX_REQUEST_SKEW_SECONDS) * 1_000_000_000 {
        return Err(Rejection::invalid_field(
            "request.issued_at",
            "must be within 5 minutes of the exchange's clock",
        ));
    }
    let query = match r.query {
        Some(raw::Query::View { page_size, cursor }) => Query::View { page_size, cursor },
        None => return Err(Rejection::invalid_field("request.query", "required")),
    };
    Ok(Request {
        request_id,
        patient_id,
        public_key: key,
        issued_at,
        query,
    })
}

/// How long a request id is remembered: past this, `issued_at` alone refuses a replay.
pub fn request_id_memory() -> Duration {
    Duration::from_secs(2 * MAX_REQUEST_SKEW_SECONDS).expect("ten minutes is a duration")
}
