//! The DSSE v1 envelope: pre-authentication encoding, Ed25519 signing and verification
//! with `ring`, key ids and event hashes (BRIEF section 4).

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::ids::{KeyId, Sha256};
use crate::rejection::{Reason, Rejection};

/// What an envelope's payload is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PayloadType {
    /// A `hrx.v1.FacilityEvent`, signed by a facility key.
    FacilityEvent,
    /// A `hrx.v1.RegistryEvent`, signed by the national root key.
    RegistryEvent,
    /// A `hrx.v1.PatientStatement` (consent, key change), signed by the patient's key.
    PatientStatement,
    /// A `hrx.v1.PatientKeyProof`: proof that a patient holds the key being enrolled.
    PatientKeyProof,
    /// A `hrx.v1.PatientRequest`: a patient's signed, single-use request for their view.
    PatientRequest,
}

impl PayloadType {
    pub const FACILITY_EVENT: &'static str = "application/vnd.hrx.facility-event.v1+protobuf";
    pub const REGISTRY_EVENT: &'static str = "application/vnd.hrx.registry-event.v1+protobuf";
    pub const PATIENT_STATEMENT: &'static str = "application/vnd.hrx.patient-statement.v1+protobuf";
    pub const PATIENT_KEY_PROOF: &'static str = "application/vnd.hrx.patient-key-proof.v1+protobuf";
    pub const PATIENT_REQUEST: &'static str = "application/vnd.hrx.patient-request.v1+protobuf";

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            Self::FACILITY_EVENT => Some(Self::FacilityEvent),
            Self::REGISTRY_EVENT => Some(Self::RegistryEvent),
            Self::PATIENT_STATEMENT => Some(Self::PatientStatement),
            Self::PATIENT_KEY_PROOF => Some(Self::PatientKeyProof),
            Self::PATIENT_REQUEST => Some(Self::PatientRequest),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FacilityEvent => Self::FACILITY_EVENT,
            Self::RegistryEvent => Self::REGISTRY_EVENT,
            Self::PatientStatement => Self::PATIENT_STATEMENT,
            Self::PatientKeyProof => Self::PATIENT_KEY_PROOF,
            Self::PatientRequest => Self::PATIENT_REQUEST,
        }
    }
}

/// `PAE(type, payload) = "DSSEv1" SP LEN(type) SP type SP LEN(payload) SP payload`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let type_len = payload_type.len().to_string();
    let payload_len = payload.len().to_string();
    let mut out = Vec::with_capacity(
        6 + 4 + type_len.len() + payload_type.len() + payload_len.len() + payload.len(),
    );
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(type_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// An envelope as received: nothing about it is trusted yet.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl Envelope {
    /// The PAE bytes the signature covers.
    pub fn pae(&self) -> Vec<u8> {
        pae(&self.payload_type, &self.payload)
    }

    /// SHA-256 of the PAE bytes: the event's identity in its chain.
    pub fn event_hash(&self) -> Sha256 {
        Sha256::digest(&self.pae())
    }

    /// Steps 1–2 of verification: a known payload type, a well-formed key id and a
    /// 64-byte signature.
    pub fn check_form(&self) -> Result<(PayloadType, KeyId), Rejection> {
        let payload_type = PayloadType::parse(&self.payload_type).ok_or_else(|| {
            Rejection::new(
                Reason::UnknownPayloadType,
                "payload_type is not a payload type of this exchange",
            )
        })?;
        Ok((payload_type, self.check_key_id_and_signature_form()?))
    }

    /// Step 2 of verification alone: a well-formed key id and a 64-byte signature.
    pub fn check_key_id_and_signature_form(&self) -> Result<KeyId, Rejection> {
        let key_id = KeyId::parse(&self.key_id).map_err(|_| {
            Rejection::new(
                Reason::MalformedEnvelope,
                "key_id must be 64 lowercase hex characters",
            )
        })?;
        if self.signature.len() != 64 {
            return Err(Rejection::new(
                Reason::MalformedEnvelope,
                "signature must be 64 bytes (Ed25519)",
            ));
        }
        Ok(key_id)
    }
}

/// A raw Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn key_id(&self) -> KeyId {
        KeyId::of_public_key(&self.0)
    }

    /// Verifies `signature` over `PAE(payload_type, payload)`.
    pub fn verify(&self, envelope: &Envelope) -> Result<(), Rejection> {
        self.verify_pae(&envelope.pae(), &envelope.signature)
    }

    /// Verifies `signature` over PAE bytes the caller already built.
    pub fn verify_pae(&self, pae: &[u8], signature: &[u8]) -> Result<(), Rejection> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(pae, signature)
            .map_err(|_| {
                Rejection::new(
                    Reason::BadSignature,
                    "signature does not verify over the envelope's PAE with this key",
                )
            })
    }
}

/// Why key material could not be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a valid Ed25519 private key")]
    Rejected,
    #[error("the system random generator failed")]
    Random,
}

/// An Ed25519 signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
    /// What the key was made from, so that it can be cloned (ring's key pairs cannot).
    source: KeySource,
}

#[derive(Clone)]
enum KeySource {
    Seed([u8; 32]),
    Pkcs8(Vec<u8>),
}

impl Clone for SigningKey {
    fn clone(&self) -> Self {
        let copy = match &self.source {
            KeySource::Seed(seed) => Self::from_seed(seed),
            KeySource::Pkcs8(der) => Self::from_pkcs8(der),
        };
        copy.expect("a key that parsed once parses again")
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.public.key_id())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// From the 32-byte private seed (RFC 8032), as test vectors carry it.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| KeyError::Rejected)?;
        Ok(Self::from_pair(pair, KeySource::Seed(*seed)))
    }

    /// From a PKCS#8 v1 or v2 document (what `generate_pkcs8` and OpenSSL write).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| KeyError::Rejected)?;
        Ok(Self::from_pair(pair, KeySource::Pkcs8(der.to_vec())))
    }

    /// A fresh key as a PKCS#8 v2 document, to be stored by the caller.
    pub fn generate_pkcs8() -> Result<Vec<u8>, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| KeyError::Random)
    }

    fn from_pair(pair: Ed25519KeyPair, source: KeySource) -> Self {
        let public = PublicKey::from_slice(pair.public_key().as_ref())
            .expect("Ed25519 public keys are 32 bytes");
        Self {
            pair,
            public,
            source,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    /// Signs `payload` as-is and returns the envelope.
    pub fn sign(&self, payload_type: PayloadType, payload: Vec<u8>) -> Envelope {
        let signature = self.pair.sign(&pae(payload_type.as_str(), &payload));
        Envelope {
            payload_type: payload_type.as_str().to_owned(),
            payload,
            key_id: self.key_id().to_string(),
            signature: signature.as_ref().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let key = SigningKey::from_seed(&[7; 32]).unwrap();
        let mut env = key.sign(PayloadType::FacilityEvent, b"payload".to_vec());
        assert_eq!(env.check_form().unwrap().1, key.key_id());
        key.public_key().verify(&env).unwrap();
        env.payload[0] ^= 1;
        assert_eq!(
            key.public_key().verify(&env).unwrap_err().reason(),
            Reason::BadSignature
        );
    }

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 section 7.1, TEST 1 (empty message) — checks we sign the PAE, not
        // the raw message, by comparing against a direct ring signature.
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let key = SigningKey::from_seed(&seed.try_into().unwrap()).unwrap();
        assert_eq!(
            hex::encode(key.public_key().as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }

    #[test]
    fn pkcs8_round_trip() {
        let der = SigningKey::generate_pkcs8().unwrap();
        let a = SigningKey::from_pkcs8(&der).unwrap();
        let b = SigningKey::from_pkcs8(&der).unwrap();
        assert_eq!(a.key_id(), b.key_id());
    }
}
