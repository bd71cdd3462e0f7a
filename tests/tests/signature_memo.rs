//! The signature memo (ingest and projector of one process verify each signature
//! once) never changes a verdict: every vector authenticates the same with a memo as
//! without, twice in a row, and a tampered copy of an envelope whose genuine twin is
//! remembered is still refused.

use hrx_domain::Envelope;
use hrx_domain::rejection::Reason;
use hrx_domain::verify::{
    SignatureMemo, SignatureProof, VerifiedSignatures, VerifyAlways, authenticate_facility_event,
};
use hrx_proto::codec;
use hrx_tests::vectors;

/// The outcome of steps 1–7 as comparable data.
fn outcome(envelope: Envelope, ctx: &vectors::Context, memo: &dyn VerifiedSignatures) -> String {
    let keys = vectors::keyring(ctx).unwrap();
    let receipt = vectors::receipt(ctx, &envelope).unwrap();
    match authenticate_facility_event(
        envelope,
        &keys,
        memo,
        &receipt,
        codec::decode_facility_event,
    ) {
        Ok(e) => format!("authenticated {}", e.event_hash),
        Err(r) => format!("refused {:?}", r.reason()),
    }
}

#[test]
fn a_memo_never_changes_a_verdict() {
    let (keys, vectors) = vectors::load().unwrap();
    let memo = SignatureMemo::new(1024);
    let mut authenticated = 0;
    for v in &vectors {
        let envelope = vectors::build_envelope(&v.input, &keys).unwrap();
        let plain = outcome(envelope.clone(), &v.context, &VerifyAlways);
        let first = outcome(envelope.clone(), &v.context, &memo);
        let again = outcome(envelope, &v.context, &memo);
        assert_eq!(plain, first, "{}: first pass through the memo", v.name);
        assert_eq!(plain, again, "{}: remembered", v.name);
        authenticated += usize::from(plain.starts_with("authenticated"));
    }
    assert!(authenticated >= 5, "the vectors exercise the memo's hits");
}

#[test]
fn a_tampered_twin_of_a_remembered_envelope_is_refused() {
    let (keys, vectors) = vectors::load().unwrap();
    let memo = SignatureMemo::new(1024);
    let v = vectors
        .iter()
        .find(|v| v.expected.verdict == "accepted")
        .expect("a valid vector");
    let genuine = vectors::build_envelope(&v.input, &keys).unwrap();
    assert!(outcome(genuine.clone(), &v.context, &memo).starts_with("authenticated"));
    for field in ["signature", "payload"] {
        let mut forged = genuine.clone();
        let target = if field == "signature" {
            &mut forged.signature
        } else {
            &mut forged.payload
        };
        let last = target.len() - 1;
        target[last] ^= 0x01;
        assert_eq!(
            outcome(forged, &v.context, &memo),
            format!("refused {:?}", Reason::BadSignature),
            "{field} changed after the genuine envelope was remembered"
        );
    }
}

/// Proves the memo is consulted: one that claims every signature was verified lets a
/// bad signature through (which is why only ring's own successes are ever inserted).
#[test]
fn a_remembered_proof_skips_the_ed25519_check() {
    struct Liar;
    impl VerifiedSignatures for Liar {
        fn contains(&self, _: &SignatureProof) -> bool {
            true
        }
        fn insert(&self, _: SignatureProof) {}
    }
    let (keys, vectors) = vectors::load().unwrap();
    let v = vectors
        .iter()
        .find(|v| v.expected.verdict == "accepted")
        .expect("a valid vector");
    let mut forged = vectors::build_envelope(&v.input, &keys).unwrap();
    forged.signature[0] ^= 0x01;
    assert!(outcome(forged.clone(), &v.context, &VerifyAlways).starts_with("refused"));
    assert!(outcome(forged, &v.context, &Liar).starts_with("authenticated"));
}
