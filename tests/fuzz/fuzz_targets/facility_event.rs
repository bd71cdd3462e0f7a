//! A facility event payload under a registered key, its signature taken as verified so
//! that everything after the signature is reached: protobuf decoding, the header, every
//! body's content rules (the FHIR checks included), the clock and chain rules.
#![no_main]

#[path = "common.rs"]
mod common;

use hrx_domain::chain::{ChainContext, ChainHead};
use hrx_domain::verify::{self, ClockPolicy};
use hrx_domain::{Envelope, PayloadType};
use hrx_proto::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let envelope = Envelope {
        payload_type: PayloadType::FacilityEvent.as_str().to_owned(),
        payload: data.to_vec(),
        key_id: common::facility_key().key_id().to_string(),
        signature: vec![0; 64],
    };
    let keys = common::keyring();
    let receipt = common::receipt();
    let Ok(event) = verify::authenticate_facility_event(
        envelope,
        keys,
        &common::TrustEverySignature,
        &receipt,
        codec::decode_facility_event,
    ) else {
        return;
    };
    let ctx = ChainContext::head_only(ChainHead::EMPTY, &event.header.link);
    let _ = verify::settle_facility_event(event, &ctx, &receipt, Some(&ClockPolicy::default()));
});
