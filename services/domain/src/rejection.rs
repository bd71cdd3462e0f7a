//! Typed rejections: why an event was refused, in a form machines and people can both
//! use. Every message names a field or a rule, never a value a hospital sent.

use std::fmt;

/// The machine-readable reason (BRIEF section 4). Codes are `RejectionReason` in
/// `proto/hrx/v1/common.proto`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Reason {
    MalformedEnvelope = 1,
    UnknownPayloadType = 2,
    UnknownKey = 3,
    KeyNotValidForFacility = 4,
    KeyRevoked = 5,
    BadSignature = 6,
    MalformedPayload = 7,
    InvalidField = 8,
    SequenceGap = 9,
    ChainMismatch = 10,
    Fork = 11,
    NotAuthorised = 12,
    PatientKeyNotValid = 13,
    BadProofOfPossession = 14,
    NoStanding = 15,
    AttestedGrantOutOfBounds = 16,
    NotGrantor = 17,
    BreakGlassLimit = 18,
    RecordedAtOutOfRange = 19,
    RecordedAtDecreasing = 20,
    SupersedesForeignRecord = 21,
}

impl Reason {
    pub const ALL: &'static [Reason] = &[
        Reason::MalformedEnvelope,
        Reason::UnknownPayloadType,
        Reason::UnknownKey,
        Reason::KeyNotValidForFacility,
        Reason::KeyRevoked,
        Reason::BadSignature,
        Reason::MalformedPayload,
        Reason::InvalidField,
        Reason::SequenceGap,
        Reason::ChainMismatch,
        Reason::Fork,
        Reason::NotAuthorised,
        Reason::PatientKeyNotValid,
        Reason::BadProofOfPossession,
        Reason::NoStanding,
        Reason::AttestedGrantOutOfBounds,
        Reason::NotGrantor,
        Reason::BreakGlassLimit,
        Reason::RecordedAtOutOfRange,
        Reason::RecordedAtDecreasing,
        Reason::SupersedesForeignRecord,
    ];

    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }

    /// The stable name, as in the protobuf enum without its prefix.
    pub fn name(self) -> &'static str {
        match self {
            Reason::MalformedEnvelope => "MALFORMED_ENVELOPE",
            Reason::UnknownPayloadType => "UNKNOWN_PAYLOAD_TYPE",
            Reason::UnknownKey => "UNKNOWN_KEY",
            Reason::KeyNotValidForFacility => "KEY_NOT_VALID_FOR_FACILITY",
            Reason::KeyRevoked => "KEY_REVOKED",
            Reason::BadSignature => "BAD_SIGNATURE",
            Reason::MalformedPayload => "MALFORMED_PAYLOAD",
            Reason::InvalidField => "INVALID_FIELD",
            Reason::SequenceGap => "SEQUENCE_GAP",
            Reason::ChainMismatch => "CHAIN_MISMATCH",
            Reason::Fork => "FORK",
            Reason::NotAuthorised => "NOT_AUTHORISED",
            Reason::PatientKeyNotValid => "PATIENT_KEY_NOT_VALID",
            Reason::BadProofOfPossession => "BAD_PROOF_OF_POSSESSION",
            Reason::NoStanding => "NO_STANDING",
            Reason::AttestedGrantOutOfBounds => "ATTESTED_GRANT_OUT_OF_BOUNDS",
            Reason::NotGrantor => "NOT_GRANTOR",
            Reason::BreakGlassLimit => "BREAK_GLASS_LIMIT",
            Reason::RecordedAtOutOfRange => "RECORDED_AT_OUT_OF_RANGE",
            Reason::RecordedAtDecreasing => "RECORDED_AT_DECREASING",
            Reason::SupersedesForeignRecord => "SUPERSEDES_FOREIGN_RECORD",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.name() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rejection: the reason, the field it concerns (for `InvalidField`), and a message for
/// people. Built only through the constructors below so that messages stay free of
/// patient data: they take static text and numbers, never strings from the input.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Rejection {
    reason: Reason,
    field: Option<&'static str>,
    message: String,
}

impl Rejection {
    /// A rejection whose message is fixed text.
    pub fn new(reason: Reason, message: &'static str) -> Self {
        Self {
            reason,
            field: None,
            message: message.to_owned(),
        }
    }

    /// A field is missing or wrong; `problem` says what was expected, without the value.
    pub fn invalid_field(field: &'static str, problem: impl fmt::Display) -> Self {
        Self {
            reason: Reason::InvalidField,
            field: Some(field),
            message: format!("field {field}: {problem}"),
        }
    }

    /// A sequence gap: the facility's head and the seq that arrived (numbers only).
    pub fn sequence_gap(head_seq: u64, seq: u64) -> Self {
        Self {
            reason: Reason::SequenceGap,
            field: None,
            message: format!(
                "seq {seq} arrived but the facility's head is {head_seq}; expected seq {}",
                head_seq + 1
            ),
        }
    }

    /// Rebuilds a rejection read back from storage or the wire. `message` must come from
    /// a `Rejection` this crate built.
    pub fn restore(reason: Reason, field: Option<&'static str>, message: String) -> Self {
        Self {
            reason,
            field,
            message,
        }
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }

    pub fn field(&self) -> Option<&'static str> {
        self.field
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Every field path a rejection can name, so that a stored or received field name can be
/// turned back into the `&'static str` a `Rejection` holds.
pub const FIELDS: &[&str] = &[
    "header",
    "header.event_id",
    "header.facility_id",
    "header.seq",
    "header.prev_hash",
    "header.recorded_at",
    "body",
    "record.patient_id",
    "record.kind",
    "record.occurred_at",
    "record.author",
    "record.sensitivity",
    "record.supersedes",
    "record.content_type",
    "record.body",
    "record.body.resourceType",
    "record.body.subject",
    "record.body.patient",
    "consent_grant.patient_id",
    "consent_grant.purposes",
    "consent_grant.kinds",
    "consent_grant.include_sensitive",
    "consent_grant.data_from",
    "consent_grant.data_until",
    "consent_grant.expires_at",
    "consent_grant.evidence",
    "consent_grant.grantee",
    "consent_grant.request_event_id",
    "consent_revocation.patient_id",
    "consent_revocation.grant_event_id",
    "consent_revocation.evidence",
    "break_glass.patient_id",
    "break_glass.reason",
    "break_glass.clinician",
    "break_glass.duration",
    "patient_key_enrollment.patient_id",
    "patient_key_enrollment.public_key",
    "patient_key_enrollment.proof",
    "consent_request.patient_id",
    "consent_request.purposes",
    "consent_request.kinds",
    "consent_request.data_from",
    "consent_request.data_until",
    "consent_request.duration",
    "consent_request.reason",
    "consent_request.include_sensitive",
    "envelope.payload",
    "statement.header",
    "statement.header.statement_id",
    "statement.header.patient_id",
    "statement.header.public_key",
    "statement.header.signed_at",
    "statement.body",
    "consent_decline.request_event_id",
    "key_rotation.new_public_key",
    "key_rotation.proof",
    "key_revocation.reason",
    "request.header",
    "request.request_id",
    "request.patient_id",
    "request.public_key",
    "request.issued_at",
    "request.query",
    "registry.facility_registered.facility_id",
    "registry.facility_registered.name",
    "registry.facility_registered.province",
    "registry.facility_registered.level",
    "registry.key_added.facility_id",
    "registry.key_added.public_key",
    "registry.key_added.valid_from",
    "registry.key_revoked.key_id",
    "registry.key_revoked.revoked_at",
];

/// The static field path equal to `s`, if it is one of [`FIELDS`].
pub fn field_path(s: &str) -> Option<&'static str> {
    FIELDS.iter().copied().find(|f| *f == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_by_code_and_name() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(*r));
            assert_eq!(Reason::from_name(r.name()), Some(*r));
        }
        assert_eq!(Reason::from_code(0), None);
    }

    #[test]
    fn invalid_field_names_the_field() {
        let r = Rejection::invalid_field("record.patient_id", "expected exactly 12 ASCII digits");
        assert_eq!(r.reason(), Reason::InvalidField);
        assert_eq!(r.field(), Some("record.patient_id"));
        assert!(r.message().contains("record.patient_id"));
    }
}
