//! Identifiers, validated by parsing: a value of these types is always well formed.
//!
//! Parse errors say what shape was expected and never echo the input, because the input
//! may be patient data.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid identifier. Carries no part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("expected exactly {0} ASCII digits")]
    Digits(usize),
    #[error("expected a UUID in canonical lowercase form")]
    Uuid,
    #[error("expected 64 lowercase hex characters")]
    KeyId,
    #[error("expected exactly 32 bytes")]
    HashLength,
}

fn all_digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

macro_rules! digit_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Number of digits.
            pub const LEN: usize = $len;

            /// Parses a value of exactly `LEN` ASCII digits.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if all_digits(s, $len) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError::Digits($len))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

digit_id!(
    /// A patient's 12-digit personal identification number (số định danh cá nhân), also
    /// the health-insurance id. Its `Debug` form is redacted so that it never reaches a
    /// log by accident; use `as_str` where the id itself is needed.
    PatientId,
    12
);

digit_id!(
    /// A facility's 5-digit code (MA_CSKCB) as used in the insurance XML.
    FacilityId,
    5
);

impl fmt::Debug for PatientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PatientId(..)")
    }
}

impl fmt::Debug for FacilityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FacilityId({})", self.0)
    }
}

/// An event id: a UUID, transmitted in canonical lowercase text form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(uuid::Uuid);

impl EventId {
    /// Parses the canonical hyphenated lowercase form (what `Display` writes), so that an
    /// event id has exactly one spelling on the wire.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let u = uuid::Uuid::try_parse(s).map_err(|_| IdError::Uuid)?;
        if u.hyphenated().to_string() == s {
            Ok(Self(u))
        } else {
            Err(IdError::Uuid)
        }
    }

    /// A new time-ordered (v7) id.
    pub fn new_v7() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    pub fn from_uuid(u: uuid::Uuid) -> Self {
        Self(u)
    }

    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }

    /// The 16 bytes, big-endian: sorts like the canonical text form.
    pub fn to_bytes(&self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }
}

impl FromStr for EventId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

/// A SHA-256 digest: event hashes, previous-event hashes, evidence hashes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// 32 zero bytes: the `prev_hash` of seq 1.
    pub const ZERO: Sha256 = Sha256([0; 32]);

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| IdError::HashLength)
    }

    pub fn digest(data: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, data);
        Self::from_slice(d.as_ref()).expect("SHA-256 is 32 bytes")
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self, IdError> {
        let v = hex::decode(s).map_err(|_| IdError::HashLength)?;
        Self::from_slice(&v)
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", &self.to_hex()[..12])
    }
}

/// The id of a signing key: lowercase hex SHA-256 of the raw 32-byte Ed25519 public key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::KeyId)
        }
    }

    /// The key id of a raw Ed25519 public key.
    pub fn of_public_key(public_key: &[u8; 32]) -> Self {
        Self(Sha256::digest(public_key).to_hex())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", &self.0[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_id_is_exactly_twelve_ascii_digits() {
        assert!(PatientId::parse("001085012345").is_ok());
        for bad in [
            "",
            "00108501234",
            "0010850123456",
            "00108501234a",
            "٠٠١٠٨٥٠١٢٣٤٥",
            " 001085012345",
        ] {
            assert_eq!(PatientId::parse(bad), Err(IdError::Digits(12)), "{bad:?}");
        }
    }

    #[test]
    fn patient_id_debug_is_redacted() {
        let p = PatientId::parse("001085012345").unwrap();
        assert!(!format!("{p:?}").contains("0010"));
    }

    #[test]
    fn facility_id_is_exactly_five_digits() {
        assert!(FacilityId::parse("01001").is_ok());
        assert!(FacilityId::parse("1001").is_err());
        assert!(FacilityId::parse("010010").is_err());
    }

    #[test]
    fn event_id_accepts_only_canonical_lowercase() {
        let s = "0190f5a2-7c3e-7b61-9d2a-3c4b5d6e7f80";
        assert_eq!(EventId::parse(s).unwrap().to_string(), s);
        assert!(EventId::parse(&s.to_uppercase()).is_err());
        assert!(EventId::parse(&s.replace('-', "")).is_err());
        assert!(EventId::parse("{0190f5a2-7c3e-7b61-9d2a-3c4b5d6e7f80}").is_err());
    }

    #[test]
    fn key_id_is_sha256_of_public_key() {
        // SHA-256 of 32 zero bytes.
        let k = KeyId::of_public_key(&[0; 32]);
        assert_eq!(
            k.as_str(),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
        assert!(KeyId::parse(k.as_str()).is_ok());
        assert!(KeyId::parse(&k.as_str().to_uppercase()).is_err());
    }
}
