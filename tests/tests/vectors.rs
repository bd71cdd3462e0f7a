//! Every test vector, checked with the Rust implementation: keys, envelope bytes, PAE,
//! event hash, verdict and reason. The Python implementation checks the same files.

use std::collections::BTreeSet;

use hrx_domain::SigningKey;
use hrx_tests::vectors::{self, EnvelopeHex};

#[test]
fn vector_files_are_what_the_generator_writes() {
    let dir = vectors::dir();
    for (name, text) in hrx_tests::generate::files().unwrap() {
        let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            on_disk == text,
            "{name} is stale: run `cargo run -p hrx-tests --bin gen-vectors`"
        );
    }
}

#[test]
fn keys_derive_from_their_seeds() {
    let (keys, _) = vectors::load().unwrap();
    for k in &keys.keys {
        let key = k.signing_key().unwrap();
        assert_eq!(
            hex::encode(key.public_key().as_bytes()),
            k.public_key,
            "{}",
            k.name
        );
        assert_eq!(key.key_id().as_str(), k.key_id, "{}", k.name);
    }
}

#[test]
fn envelopes_pae_and_hashes_rebuild_byte_for_byte() {
    let (keys, vectors) = vectors::load().unwrap();
    for v in &vectors {
        let built = vectors::build_envelope(&v.input, &keys).unwrap();
        assert_eq!(EnvelopeHex::from_envelope(&built), v.envelope, "{}", v.name);
        let env = v.envelope.to_envelope().unwrap();
        assert_eq!(hex::encode(env.pae()), v.pae, "{}", v.name);
        assert_eq!(env.event_hash().to_hex(), v.event_hash, "{}", v.name);
    }
}

#[test]
fn verdicts_and_reasons_match() {
    let (_, vectors) = vectors::load().unwrap();
    for v in &vectors {
        let got = vectors::evaluate(v.envelope.to_envelope().unwrap(), &v.context).unwrap();
        assert_eq!(got, v.expected, "{}", v.name);
    }
}

#[test]
fn the_set_covers_what_the_contract_requires() {
    let (_, vectors) = vectors::load().unwrap();
    let valid = vectors
        .iter()
        .filter(|v| v.expected.verdict == "accepted")
        .count();
    let invalid = vectors
        .iter()
        .filter(|v| v.expected.verdict != "accepted")
        .count();
    assert!(
        valid >= 5 && invalid >= 12,
        "{valid} valid, {invalid} invalid"
    );
    let reasons: BTreeSet<_> = vectors
        .iter()
        .filter_map(|v| v.expected.reason.clone())
        .collect();
    for r in [
        "BAD_SIGNATURE",
        "UNKNOWN_PAYLOAD_TYPE",
        "KEY_NOT_VALID_FOR_FACILITY",
        "UNKNOWN_KEY",
        "KEY_REVOKED",
        "MALFORMED_PAYLOAD",
        "SEQUENCE_GAP",
        "CHAIN_MISMATCH",
        "FORK",
        "INVALID_FIELD",
        "MALFORMED_ENVELOPE",
    ] {
        assert!(reasons.contains(r), "no vector for {r}");
    }
    let fields: BTreeSet<_> = vectors
        .iter()
        .filter_map(|v| v.expected.field.clone())
        .collect();
    for f in [
        "record.patient_id",
        "record.body.resourceType",
        "record.body.subject",
        "record.body",
    ] {
        assert!(fields.contains(f), "no vector for field {f}");
    }
}

#[test]
fn a_signing_key_from_a_vector_seed_signs_what_the_vector_holds() {
    // The domain's own signing path (not the vectors' raw ring path) gives the same bytes.
    let (keys, vectors) = vectors::load().unwrap();
    let v = vectors
        .iter()
        .find(|v| v.name.starts_with("valid-01"))
        .unwrap();
    let entry = keys.keys.iter().find(|k| k.name == v.input.signer).unwrap();
    let key: SigningKey = entry.signing_key().unwrap();
    let env = v.envelope.to_envelope().unwrap();
    let resigned = key.sign(hrx_domain::PayloadType::FacilityEvent, env.payload.clone());
    assert_eq!(resigned, env);
}
