//! A registry event payload signed with the root key: protobuf decoding, the header and
//! chain, every registry body.
#![no_main]

#[path = "common.rs"]
mod common;

use hrx_domain::PayloadType;
use hrx_domain::chain::ChainHead;
use hrx_domain::verify;
use hrx_proto::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let envelope = common::root_key().sign(PayloadType::RegistryEvent, data.to_vec());
    let keys = common::keyring();
    let _ = verify::verify_registry_envelope(
        &envelope,
        keys,
        ChainHead::EMPTY,
        codec::decode_registry_event,
    );
});
