//! Every test vector, checked with the Rust implementation: keys, envelope bytes, PAE,
//! event hash, verdict and reason. The Python implementation checks the same files.

use std::collections::BTreeSet;

use hrx_domain::SigningKey;
use hrx_tests::vectors::{self, EnvelopeHex};

#[test]
fn vector_files_are_what_the_generator_writes() {
    let dir = vectors::dir();
    let files = hrx_tests::generate::files().unwrap();
    for (name, text) in &files {
        let on_disk = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            &on_disk == text,
            "{name} is stale: run `cargo run -p hrx-tests --bin gen-vectors`"
        );
    }
    // ...and nothing else: a vector the generator no longer writes is stale too.
    let written: BTreeSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            !name.ends_with(".json") || written.contains(name.as_str()),
            "{name} is not written by the generator: remove it"
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
    let (keys, vectors) = vectors::load().unwrap();
    for v in &vectors {
        let got = vectors::evaluate(v.envelope.to_envelope().unwrap(), &v.context, &keys).unwrap();
        assert_eq!(got, v.expected, "{}", v.name);
    }
}

#[test]
fn facility_facts_decide_only_in_step_10() {
    // Without facts (steps 1–9), a vector rejected in step 10 is accepted, and every
    // other facility vector keeps its verdict.
    const STEP_10: [&str; 5] = [
        "NO_STANDING",
        "ATTESTED_GRANT_OUT_OF_BOUNDS",
        "NOT_GRANTOR",
        "BREAK_GLASS_LIMIT",
        "SUPERSEDES_FOREIGN_RECORD",
    ];
    let (_, vectors) = vectors::load().unwrap();
    for v in &vectors {
        let Some(got) =
            vectors::evaluate_through_content(v.envelope.to_envelope().unwrap(), &v.context)
                .unwrap()
        else {
            continue;
        };
        if v.expected
            .reason
            .as_deref()
            .is_some_and(|r| STEP_10.contains(&r))
        {
            assert_eq!(got.verdict, "accepted", "{}", v.name);
            assert!(got.extends_chain, "{}", v.name);
        } else {
            assert_eq!(got, v.expected, "{}", v.name);
        }
    }
}

#[test]
fn statements_never_extend_a_chain_and_carry_their_context() {
    let (_, vectors) = vectors::load().unwrap();
    let statements: Vec<_> = vectors
        .iter()
        .filter(|v| v.context.is_statement())
        .collect();
    assert!(
        statements.len() >= 10,
        "{} statement vectors",
        statements.len()
    );
    for v in statements {
        assert!(!v.expected.extends_chain, "{}", v.name);
        assert_ne!(v.expected.verdict, "duplicate", "{}", v.name);
        assert!(
            v.context.keys.is_empty() && v.context.head.is_none(),
            "{}",
            v.name
        );
        assert!(v.context.facility_facts.is_none(), "{}", v.name);
        assert!(v.context.received_at.is_some(), "{}", v.name);
    }
    for v in vectors.iter().filter(|v| !v.context.is_statement()) {
        assert!(v.context.patient.is_none(), "{}", v.name);
    }
}

/// Every reason code of the domain has a vector, and the vectors name no other.
#[test]
fn every_reason_has_a_vector() {
    let (_, vectors) = vectors::load().unwrap();
    let reasons: BTreeSet<_> = vectors
        .iter()
        .filter_map(|v| v.expected.reason.clone())
        .collect();
    let known: BTreeSet<String> = hrx_domain::Reason::ALL
        .iter()
        .map(|r| r.name().to_owned())
        .collect();
    for r in &reasons {
        assert!(known.contains(r), "a vector names unknown reason {r}");
    }
    // NOT_AUTHORISED is a caller check (the wrong facility submitting), not a verdict on
    // an envelope.
    for r in known.iter().filter(|r| r.as_str() != "NOT_AUTHORISED") {
        assert!(reasons.contains(r), "no vector for {r}");
    }
}

/// The clock of step 8b never decides a refusal that also enters the chain, and a
/// receive time in a facility event's context changes nothing the chain check decides.
#[test]
fn clock_refusals_do_not_extend_the_chain() {
    let (_, vectors) = vectors::load().unwrap();
    let mut clock = 0;
    for v in &vectors {
        if matches!(
            v.expected.reason.as_deref(),
            Some("RECORDED_AT_OUT_OF_RANGE" | "RECORDED_AT_DECREASING")
        ) {
            clock += 1;
            assert!(!v.context.is_statement(), "{}", v.name);
            assert!(!v.expected.extends_chain, "{}", v.name);
        }
    }
    assert!(clock >= 4, "{clock} clock vectors");
}

#[test]
fn patient_keys_are_not_in_the_facility_registry() {
    let (keys, vectors) = vectors::load().unwrap();
    for k in keys.keys.iter().filter(|k| k.patient_id.is_some()) {
        assert!(k.facility_id.is_empty(), "{}", k.name);
        for v in &vectors {
            assert!(
                v.context.keys.iter().all(|c| c.key_id != k.key_id),
                "{} lists patient key {}",
                v.name,
                k.name
            );
        }
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
        "PATIENT_KEY_NOT_VALID",
        "BAD_PROOF_OF_POSSESSION",
        "NO_STANDING",
        "ATTESTED_GRANT_OUT_OF_BOUNDS",
        "NOT_GRANTOR",
        "BREAK_GLASS_LIMIT",
        "RECORDED_AT_OUT_OF_RANGE",
        "RECORDED_AT_DECREASING",
        "SUPERSEDES_FOREIGN_RECORD",
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
        "consent_grant.patient_id",
        "consent_grant.request_event_id",
        "consent_decline.request_event_id",
        "statement.header.public_key",
        "patient_key_enrollment.public_key",
        "consent_request.duration",
        "header.seq",
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
