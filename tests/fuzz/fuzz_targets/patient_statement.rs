//! A patient statement and a patient's view request: protobuf decoding, the header,
//! the key proof, every statement body. The payload is made to name the key that signs
//! it (a statement names its own key), so that what follows the signature is reached.
#![no_main]

#[path = "common.rs"]
mod common;

use hrx_domain::PayloadType;
use hrx_domain::patient;
use hrx_proto::{codec, v1};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let key = common::facility_key();
    let public = key.public_key().as_bytes().to_vec();
    let now = common::receipt().received_at;
    if let Ok(mut s) = v1::PatientStatement::decode(data) {
        if let Some(h) = s.header.as_mut() {
            h.public_key = public.clone();
        }
        let envelope = key.sign(PayloadType::PatientStatement, s.encode_to_vec());
        let _ = patient::verify_statement(&envelope, now, codec::decode_patient_statement);
    }
    if let Ok(mut r) = v1::PatientRequest::decode(data) {
        r.public_key = public;
        let envelope = key.sign(PayloadType::PatientRequest, r.encode_to_vec());
        let _ = patient::verify_request(&envelope, now, codec::decode_patient_request);
    }
    // The bytes as sent, too (a signature that does not match).
    let envelope = key.sign(PayloadType::PatientStatement, data.to_vec());
    let _ = patient::verify_statement(&envelope, now, codec::decode_patient_statement);
});
