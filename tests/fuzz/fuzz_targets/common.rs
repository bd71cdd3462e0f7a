//! What the targets share: fixed keys and a keyring, as an exchange would hold them.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::OnceLock;

use hrx_domain::verify::{KeyOwner, KeyRecord, Receipt, SignatureProof, VerifiedSignatures};
use hrx_domain::{FacilityId, KeyId, SigningKey, Timestamp};

pub const FACILITY: &str = "26012";

pub fn facility_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_seed(&[7; 32]).expect("a seed"))
}

pub fn root_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_seed(&[9; 32]).expect("a seed"))
}

/// Says every signature verified: what follows the signature check is fuzzed without
/// Ed25519's cost per run (ring's verification itself is not what is fuzzed here).
pub struct TrustEverySignature;

impl VerifiedSignatures for TrustEverySignature {
    fn contains(&self, _: &SignatureProof) -> bool {
        true
    }
    fn insert(&self, _: SignatureProof) {}
}

pub fn at(s: i64) -> Timestamp {
    Timestamp::from_unix_seconds(s).expect("in range")
}

/// The facility's key and the root key, valid from 2020.
pub fn keyring() -> &'static HashMap<KeyId, KeyRecord> {
    static KEYS: OnceLock<HashMap<KeyId, KeyRecord>> = OnceLock::new();
    KEYS.get_or_init(make_keyring)
}

fn make_keyring() -> HashMap<KeyId, KeyRecord> {
    let record = |key: &SigningKey, owner| KeyRecord {
        public_key: key.public_key(),
        owner,
        valid_from: at(1_577_836_800),
        revoked_at: None,
        registered_seq: 1,
        revoked_seq: None,
    };
    let f = record(
        facility_key(),
        KeyOwner::Facility(FacilityId::parse(FACILITY).expect("a facility id")),
    );
    let r = record(root_key(), KeyOwner::Root);
    [(f.key_id(), f), (r.key_id(), r)].into_iter().collect()
}

/// Received on 2026-11-01 against registry seq 5.
pub fn receipt() -> Receipt {
    Receipt {
        received_at: at(1_793_491_200),
        registry_seq: Some(5),
    }
}
