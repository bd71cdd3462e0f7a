//! A `SignedEnvelope` as a facility sends it, whole: protobuf decoding, the envelope's
//! form, and the verification pipeline up to the signature.
#![no_main]

#[path = "common.rs"]
mod common;

use hrx_domain::verify::{self, VerifyAlways};
use hrx_proto::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = codec::decode_envelope(data) else {
        return;
    };
    let _ = envelope.check_form();
    let _ = envelope.event_hash();
    let keys = common::keyring();
    let _ = verify::authenticate_facility_event(
        envelope,
        keys,
        &VerifyAlways,
        &common::receipt(),
        codec::decode_facility_event,
    );
});
