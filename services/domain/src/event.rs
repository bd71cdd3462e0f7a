//! Facility and registry events, in two forms.
//!
//! [`unchecked`] holds an event exactly as decoded from the wire: plain strings, raw
//! enum codes, optional fields. The parsed types in this module are what the rest of
//! hrx works with; they are made only by parsing (`header` here, bodies in
//! [`crate::content`]), so holding one means it is valid. The split exists because the
//! contract treats the two halves differently: a bad header keeps an event out of its
//! chain, while bad content still extends the chain and is recorded as rejected.

use crate::ids::{EventId, FacilityId, KeyId, PatientId, Sha256};
use crate::kinds::{FacilityLevel, Purpose, RecordKind, SensitivityLabel};
use crate::rejection::Rejection;
use crate::time::{Duration, Timestamp};

/// Events as decoded from protobuf, before any validation.
pub mod unchecked {
    /// A `google.protobuf.Timestamp` or `Duration` as sent.
    #[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
    pub struct RawTime {
        pub seconds: i64,
        pub nanos: i32,
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct FacilityEvent {
        pub header: Option<FacilityHeader>,
        pub body: Option<Body>,
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct FacilityHeader {
        pub event_id: String,
        pub facility_id: String,
        pub seq: u64,
        pub prev_hash: Vec<u8>,
        pub recorded_at: Option<RawTime>,
    }

    #[derive(Clone, PartialEq, Eq, Debug)]
    pub enum Body {
        Record(Record),
        ConsentGrant(ConsentGrant),
        ConsentRevocation(ConsentRevocation),
        BreakGlass(BreakGlass),
        PatientKeyEnrollment(PatientKeyEnrollment),
        ConsentRequest(ConsentRequest),
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct PatientKeyEnrollment {
        pub patient_id: String,
        pub public_key: Vec<u8>,
        pub proof: Option<crate::patient::raw::Proof>,
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct ConsentRequest {
        pub patient_id: String,
        pub purposes: Vec<i32>,
        pub kinds: Vec<i32>,
        pub data_from: Option<RawTime>,
        pub data_until: Option<RawTime>,
        pub duration: Option<RawTime>,
        pub reason: String,
        pub include_sensitive: Vec<i32>,
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct Record {
        pub patient_id: String,
        pub kind: i32,
        pub occurred_at: Option<RawTime>,
        pub author: String,
        pub sensitivity: Vec<i32>,
        pub supersedes: String,
        pub content_type: String,
        pub body: Vec<u8>,
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct Evidence {
        pub form_id: String,
        pub sha256: Vec<u8>,
    }

    #[derive(Clone, PartialEq, Eq, Debug)]
    pub enum Grantee {
        Facility(String),
        AnyFacility(bool),
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct ConsentGrant {
        pub patient_id: String,
        pub purposes: Vec<i32>,
        pub kinds: Vec<i32>,
        pub include_sensitive: Vec<i32>,
        pub data_from: Option<RawTime>,
        pub data_until: Option<RawTime>,
        pub expires_at: Option<RawTime>,
        pub evidence: Option<Evidence>,
        pub request_event_id: String,
        pub grantee: Option<Grantee>,
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct ConsentRevocation {
        pub patient_id: String,
        pub grant_event_id: String,
        pub evidence: Option<Evidence>,
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct BreakGlass {
        pub patient_id: String,
        pub reason: String,
        pub clinician: String,
        pub duration: Option<RawTime>,
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct RegistryEvent {
        pub header: Option<RegistryHeader>,
        pub body: Option<RegistryBody>,
    }

    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct RegistryHeader {
        pub event_id: String,
        pub seq: u64,
        pub prev_hash: Vec<u8>,
        pub recorded_at: Option<RawTime>,
    }

    #[derive(Clone, PartialEq, Eq, Debug)]
    pub enum RegistryBody {
        FacilityRegistered {
            facility_id: String,
            name: String,
            province: String,
            level: i32,
        },
        KeyAdded {
            facility_id: String,
            public_key: Vec<u8>,
            valid_from: Option<RawTime>,
        },
        KeyRevoked {
            key_id: String,
            revoked_at: Option<RawTime>,
            reason: String,
        },
        CertificateRevoked {
            serial: String,
            principal: String,
            revoked_at: Option<RawTime>,
            reason: String,
        },
    }
}

/// A timestamp field, present and in range, or an `INVALID_FIELD` naming it.
pub(crate) fn timestamp(
    raw: Option<unchecked::RawTime>,
    field: &'static str,
) -> Result<Timestamp, Rejection> {
    let raw = raw.ok_or_else(|| Rejection::invalid_field(field, "required"))?;
    Timestamp::new(raw.seconds, raw.nanos).map_err(|e| Rejection::invalid_field(field, e))
}

/// An optional timestamp field: absent is fine, present must be in range.
pub(crate) fn optional_timestamp(
    raw: Option<unchecked::RawTime>,
    field: &'static str,
) -> Result<Option<Timestamp>, Rejection> {
    raw.map(|r| timestamp(Some(r), field)).transpose()
}

/// The largest seq a chain may reach: 2^63 - 1.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// A link of a hash chain: what every event header has in common.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Link {
    pub event_id: EventId,
    pub seq: u64,
    pub prev_hash: Sha256,
    pub recorded_at: Timestamp,
}

impl Link {
    fn parse(
        event_id: EventId,
        seq: u64,
        prev_hash: &[u8],
        recorded_at: Option<unchecked::RawTime>,
    ) -> Result<Self, Rejection> {
        if seq == 0 {
            return Err(Rejection::invalid_field("header.seq", "must be 1 or more"));
        }
        // Stores keep seqs as signed 64-bit integers; refusing larger ones here keeps a
        // client's number from failing a whole call later.
        if seq > MAX_SEQ {
            return Err(Rejection::invalid_field(
                "header.seq",
                "must be at most 9223372036854775807 (2^63 - 1)",
            ));
        }
        let prev_hash = Sha256::from_slice(prev_hash)
            .map_err(|e| Rejection::invalid_field("header.prev_hash", e))?;
        let recorded_at = timestamp(recorded_at, "header.recorded_at")?;
        Ok(Self {
            event_id,
            seq,
            prev_hash,
            recorded_at,
        })
    }
}

/// A facility event's header, parsed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FacilityHeader {
    pub facility_id: FacilityId,
    pub link: Link,
}

impl FacilityHeader {
    /// Step 6 of verification. Field order follows the README of the test vectors.
    pub fn parse(h: &unchecked::FacilityHeader) -> Result<Self, Rejection> {
        let event_id = EventId::parse(&h.event_id)
            .map_err(|e| Rejection::invalid_field("header.event_id", e))?;
        let facility_id = FacilityId::parse(&h.facility_id)
            .map_err(|e| Rejection::invalid_field("header.facility_id", e))?;
        let link = Link::parse(event_id, h.seq, &h.prev_hash, h.recorded_at)?;
        Ok(Self { facility_id, link })
    }
}

/// A registry event's header, parsed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RegistryHeader {
    pub link: Link,
}

impl RegistryHeader {
    pub fn parse(h: &unchecked::RegistryHeader) -> Result<Self, Rejection> {
        let event_id = EventId::parse(&h.event_id)
            .map_err(|e| Rejection::invalid_field("header.event_id", e))?;
        Ok(Self {
            link: Link::parse(event_id, h.seq, &h.prev_hash, h.recorded_at)?,
        })
    }
}

/// A clinical record, valid.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    pub patient_id: PatientId,
    pub kind: RecordKind,
    pub occurred_at: Timestamp,
    pub author: String,
    pub sensitivity: Vec<SensitivityLabel>,
    pub supersedes: Option<EventId>,
    /// A FHIR R4 resource, checked: a JSON object of the kind's type, about this patient.
    pub body: Vec<u8>,
}

/// Content type of every record body in v1.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Largest record body accepted: 512 KiB. Larger content stays at the facility.
pub const MAX_BODY_BYTES: usize = 512 * 1024;

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Evidence {
    pub form_id: String,
    pub sha256: Sha256,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Grantee {
    Facility(FacilityId),
    AnyFacility,
}

/// A patient's consent, valid.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConsentGrant {
    pub patient_id: PatientId,
    pub grantee: Grantee,
    pub purposes: Vec<Purpose>,
    /// Empty means every kind.
    pub kinds: Vec<RecordKind>,
    pub include_sensitive: Vec<SensitivityLabel>,
    pub data_from: Option<Timestamp>,
    pub data_until: Option<Timestamp>,
    pub expires_at: Timestamp,
    /// Required when a facility attests the grant; optional when the patient signs it.
    pub evidence: Option<Evidence>,
    /// The consent request this grant approves.
    pub request: Option<EventId>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConsentRevocation {
    pub patient_id: PatientId,
    pub grant_event_id: EventId,
    pub evidence: Option<Evidence>,
}

/// Longest break-glass window: 24 hours.
pub const MAX_BREAK_GLASS_SECONDS: i64 = 24 * 60 * 60;

/// Longest break-glass reason, in bytes.
pub const MAX_BREAK_GLASS_REASON_BYTES: usize = 1000;

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BreakGlass {
    pub patient_id: PatientId,
    pub reason: String,
    pub clinician: String,
    pub duration: Duration,
    /// `recorded_at + duration`.
    pub expires_at: Timestamp,
}

/// Longest consent request duration: 365 days.
pub const MAX_REQUEST_SECONDS: i64 = 365 * 24 * 60 * 60;

/// Longest consent request reason, in bytes.
pub const MAX_REQUEST_REASON_BYTES: usize = 1000;

/// A facility's request for the patient's consent, valid. The grantee is the facility.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConsentRequest {
    pub patient_id: PatientId,
    pub purposes: Vec<Purpose>,
    pub kinds: Vec<RecordKind>,
    pub data_from: Option<Timestamp>,
    pub data_until: Option<Timestamp>,
    /// How long the grant would last once approved.
    pub duration: Duration,
    pub reason: String,
    pub include_sensitive: Vec<SensitivityLabel>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Body {
    Record(Record),
    /// A facility-attested grant.
    ConsentGrant(ConsentGrant),
    /// A facility's revocation of a grant it attested.
    ConsentRevocation(ConsentRevocation),
    BreakGlass(BreakGlass),
    PatientKeyEnrollment(crate::patient::KeyEnrollment),
    ConsentRequest(ConsentRequest),
}

impl Body {
    /// The patient the event is about.
    pub fn patient_id(&self) -> &PatientId {
        match self {
            Body::Record(r) => &r.patient_id,
            Body::ConsentGrant(g) => &g.patient_id,
            Body::ConsentRevocation(r) => &r.patient_id,
            Body::BreakGlass(b) => &b.patient_id,
            Body::PatientKeyEnrollment(e) => &e.patient_id,
            Body::ConsentRequest(r) => &r.patient_id,
        }
    }
}

/// A facility event, valid in every respect.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FacilityEvent {
    pub header: FacilityHeader,
    pub body: Body,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RegistryBody {
    FacilityRegistered {
        facility_id: FacilityId,
        name: String,
        province: String,
        level: FacilityLevel,
    },
    KeyAdded {
        facility_id: FacilityId,
        public_key: crate::dsse::PublicKey,
        valid_from: Timestamp,
    },
    KeyRevoked {
        key_id: KeyId,
        revoked_at: Timestamp,
        reason: String,
    },
    /// A client certificate taken back (see `CertificateRevoked` in the contract).
    CertificateRevoked {
        serial: CertificateSerial,
        /// The principal URI the certificate named, as the national center recorded it.
        principal: String,
        revoked_at: Timestamp,
        reason: String,
    },
}

/// A certificate serial number in hrx's one spelling: lowercase hex of its bytes,
/// leading zero bytes dropped, at most 20 bytes (RFC 5280) and never empty.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct CertificateSerial(String);

impl CertificateSerial {
    /// From the serial's big-endian bytes (as a certificate's DER holds them).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let bytes = &bytes[first..];
        if bytes.len() > 20 {
            return None;
        }
        let hex = if bytes.is_empty() {
            "00".to_owned()
        } else {
            hex::encode(bytes)
        };
        Some(Self(hex))
    }

    /// From hex, in either case, with or without `:` separators and leading zeros
    /// (`openssl x509 -serial` prints `serial=3A0F…`).
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let digits: String = s
            .trim()
            .trim_start_matches("serial=")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("must be a hexadecimal serial number");
        }
        let padded = if digits.len() % 2 == 1 {
            format!("0{digits}")
        } else {
            digits
        };
        let bytes = hex::decode(padded).map_err(|_| "must be a hexadecimal serial number")?;
        Self::from_bytes(&bytes).ok_or("a serial number is at most 20 bytes")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CertificateSerial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RegistryEvent {
    pub header: RegistryHeader,
    pub body: RegistryBody,
}

#[cfg(test)]
mod serial_tests {
    use super::CertificateSerial;

    #[test]
    fn serials_have_one_spelling() {
        let a = CertificateSerial::parse("serial=0A:1B:FF").unwrap();
        assert_eq!(a.as_str(), "0a1bff");
        assert_eq!(CertificateSerial::parse("a1bff").unwrap(), a);
        assert_eq!(
            CertificateSerial::from_bytes(&[0, 0x0a, 0x1b, 0xff]).unwrap(),
            a
        );
        assert_eq!(CertificateSerial::parse("00").unwrap().as_str(), "00");
        for bad in ["", "xyz", "serial=", &"ab".repeat(21)] {
            assert!(CertificateSerial::parse(bad).is_err(), "{bad}");
        }
    }
}
