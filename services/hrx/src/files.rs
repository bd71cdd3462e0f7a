//! The file formats of the CLI: key files and envelope files.
//!
//! - Private keys: PKCS#8 in PEM (`-----BEGIN PRIVATE KEY-----`), what OpenSSL and every
//!   Ed25519 library read and write.
//! - Public keys: JSON, `{"facility_id", "public_key" (hex), "key_id", "valid_from",
//!   "revoked_at"}` — the key plus what the registry says about it, the same shape as a
//!   test vector's context key. `facility_id` is empty for the national root key.
//! - Envelopes: the standard DSSE JSON envelope (`payloadType`, base64 `payload`,
//!   `signatures: [{keyid, sig}]`) with exactly one signature; a binary protobuf
//!   `SignedEnvelope` is read too.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hrx_domain::dsse::{Envelope, PublicKey};
use hrx_domain::verify::{KeyOwner, KeyRecord};
use hrx_domain::{FacilityId, KeyId, SigningKey, Timestamp};
use serde::{Deserialize, Serialize};

pub use hrx_node::keys::{read_private_key, write_new, write_private_key};

/// A public key and the registry's facts about it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PublicKeyFile {
    pub facility_id: String,
    pub public_key: String,
    pub key_id: String,
    pub valid_from: String,
    #[serde(default)]
    pub revoked_at: Option<String>,
}

impl PublicKeyFile {
    pub fn new(key: &SigningKey, owner: Option<&FacilityId>, valid_from: Timestamp) -> Self {
        Self {
            facility_id: owner.map(|f| f.to_string()).unwrap_or_default(),
            public_key: hex::encode(key.public_key().as_bytes()),
            key_id: key.key_id().to_string(),
            valid_from: valid_from.to_rfc3339(),
            revoked_at: None,
        }
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read public key file {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| anyhow!("{} is not a public key file: {e}", path.display()))
    }

    /// The registry entry this file describes; checks the key id matches the key.
    pub fn to_record(&self) -> anyhow::Result<KeyRecord> {
        let public_key = hex::decode(&self.public_key)
            .ok()
            .and_then(|b| PublicKey::from_slice(&b))
            .ok_or_else(|| anyhow!("public_key must be 32 bytes of hex"))?;
        if public_key.key_id() != KeyId::parse(&self.key_id).map_err(|e| anyhow!("key_id: {e}"))? {
            bail!("key_id does not match public_key");
        }
        let owner = if self.facility_id.is_empty() {
            KeyOwner::Root
        } else {
            KeyOwner::Facility(
                FacilityId::parse(&self.facility_id).map_err(|e| anyhow!("facility_id: {e}"))?,
            )
        };
        Ok(KeyRecord {
            public_key,
            owner,
            valid_from: Timestamp::parse_rfc3339(&self.valid_from)
                .map_err(|e| anyhow!("valid_from: {e}"))?,
            revoked_at: self
                .revoked_at
                .as_deref()
                .map(Timestamp::parse_rfc3339)
                .transpose()
                .map_err(|e| anyhow!("revoked_at: {e}"))?,
            // A key file describes the registry as its holder knows it: all of it.
            registered_seq: 0,
            revoked_seq: None,
        })
    }
}

#[derive(Serialize, Deserialize, Debug)]
struct DsseJson {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<DsseSignature>,
}

#[derive(Serialize, Deserialize, Debug)]
struct DsseSignature {
    keyid: String,
    sig: String,
}

/// The DSSE JSON form of an envelope.
pub fn envelope_to_json(e: &Envelope) -> String {
    let doc = DsseJson {
        payload_type: e.payload_type.clone(),
        payload: STANDARD.encode(&e.payload),
        signatures: vec![DsseSignature {
            keyid: e.key_id.clone(),
            sig: STANDARD.encode(&e.signature),
        }],
    };
    serde_json::to_string_pretty(&doc).expect("plain strings serialise") + "\n"
}

/// Why an envelope file could not be read as an envelope. The CLI reports these as
/// MALFORMED_ENVELOPE, like ingest does for bytes that are not an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeFileError {
    #[error("not a DSSE JSON envelope: {0}")]
    Json(String),
    #[error("a DSSE envelope for hrx carries exactly one signature, found {0}")]
    SignatureCount(usize),
    #[error("{0} is not valid base64")]
    Base64(&'static str),
    #[error("not a protobuf SignedEnvelope")]
    Protobuf,
}

/// Reads an envelope file: DSSE JSON if it starts with `{`, else protobuf.
pub fn parse_envelope(bytes: &[u8]) -> Result<Envelope, EnvelopeFileError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        let doc: DsseJson =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeFileError::Json(e.to_string()))?;
        let [sig] = doc.signatures.as_slice() else {
            return Err(EnvelopeFileError::SignatureCount(doc.signatures.len()));
        };
        Ok(Envelope {
            payload_type: doc.payload_type,
            payload: STANDARD
                .decode(&doc.payload)
                .map_err(|_| EnvelopeFileError::Base64("payload"))?,
            key_id: sig.keyid.clone(),
            signature: STANDARD
                .decode(&sig.sig)
                .map_err(|_| EnvelopeFileError::Base64("sig"))?,
        })
    } else {
        hrx_proto::codec::decode_envelope(bytes).map_err(|_| EnvelopeFileError::Protobuf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsse_json_round_trips() {
        let e = Envelope {
            payload_type: "application/vnd.hrx.facility-event.v1+protobuf".into(),
            payload: vec![0, 1, 2, 255],
            key_id: "ab".repeat(32),
            signature: vec![9; 64],
        };
        assert_eq!(parse_envelope(envelope_to_json(&e).as_bytes()).unwrap(), e);
        assert_eq!(
            parse_envelope(&hrx_proto::codec::encode_envelope(&e)).unwrap(),
            e
        );
    }

    #[test]
    fn two_signatures_are_refused() {
        let doc = r#"{"payloadType":"t","payload":"","signatures":[{"keyid":"a","sig":""},{"keyid":"b","sig":""}]}"#;
        assert!(matches!(
            parse_envelope(doc.as_bytes()),
            Err(EnvelopeFileError::SignatureCount(2))
        ));
    }
}
