//! Property tests of the envelope: for arbitrary valid events, sign → encode → decode →
//! verify round-trips to the same event; any single-byte change of a signed, encoded
//! envelope is rejected.

use hrx_domain::chain::ChainHead;
use hrx_domain::dsse::PayloadType;
use hrx_domain::event::Body;
use hrx_domain::verify::{
    ClockPolicy, KeyOwner, KeyRecord, Receipt, Verdict, verify_facility_envelope,
};
use hrx_domain::{FacilityId, RecordKind, SensitivityLabel, Sha256, SigningKey, Timestamp};
use hrx_proto::{codec, v1};
use proptest::prelude::*;
use prost::Message;
use serde_json::json;

const FACILITY: &str = "26012";

fn signer() -> SigningKey {
    SigningKey::from_seed(&[42; 32]).unwrap()
}

fn keyring(key: &SigningKey) -> Vec<KeyRecord> {
    vec![KeyRecord {
        public_key: key.public_key(),
        owner: KeyOwner::Facility(FacilityId::parse(FACILITY).unwrap()),
        valid_from: Timestamp::from_unix_seconds(0).unwrap(),
        revoked_at: None,
        registered_seq: 0,
        revoked_seq: None,
    }]
}

#[derive(Debug, Clone)]
struct Case {
    patient: String,
    kind: RecordKind,
    labels: Vec<SensitivityLabel>,
    recorded: i64,
    occurred: i64,
    nanos: i32,
    seq: u64,
    prev: [u8; 32],
    note: String,
    uuid: u128,
}

fn case() -> impl Strategy<Value = Case> {
    (
        "[0-9]{12}",
        prop::sample::select(RecordKind::ALL.to_vec()),
        prop::collection::vec(prop::sample::select(SensitivityLabel::ALL.to_vec()), 0..3),
        0i64..4_000_000_000,
        0i64..4_000_000_000,
        0i32..1_000_000_000,
        1u64..1_000_000,
        any::<[u8; 32]>(),
        // Any text, including Vietnamese and quotes: the body is JSON-escaped.
        "\\PC{0,200}",
        any::<u128>(),
    )
        .prop_map(
            |(patient, kind, labels, recorded, occurred, nanos, seq, prev, note, uuid)| Case {
                patient,
                kind,
                labels,
                recorded,
                occurred,
                nanos,
                seq,
                prev,
                note,
                uuid,
            },
        )
}

fn event(c: &Case) -> v1::FacilityEvent {
    let element = c.kind.fhir_patient_element();
    let body = json!({
        "resourceType": c.kind.fhir_resource_type(),
        element: {"reference": format!("Patient/{}", c.patient)},
        "note": [{"text": c.note}],
    });
    let uuid = uuid::Uuid::from_u128(c.uuid);
    v1::FacilityEvent {
        header: Some(v1::FacilityEventHeader {
            event_id: uuid.hyphenated().to_string(),
            facility_id: FACILITY.into(),
            seq: c.seq,
            prev_hash: c.prev.to_vec(),
            recorded_at: Some(prost_types::Timestamp {
                seconds: c.recorded,
                nanos: c.nanos,
            }),
        }),
        body: Some(v1::facility_event::Body::Record(v1::Record {
            patient_id: c.patient.clone(),
            kind: c.kind.code(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: c.occurred,
                nanos: 0,
            }),
            author: "CCHN-1".into(),
            sensitivity: c.labels.iter().map(|l| l.code()).collect(),
            supersedes: String::new(),
            content_type: "application/fhir+json".into(),
            body: serde_json::to_vec(&body).unwrap(),
        })),
    }
}

/// The head that makes `c` the next event.
fn head_before(c: &Case) -> ChainHead {
    ChainHead {
        seq: c.seq - 1,
        event_hash: Sha256::from_bytes(c.prev),
        event_id: None,
        recorded_at: None,
    }
}

/// Received exactly when `c` says it was recorded.
fn receipt(c: &Case) -> Receipt {
    Receipt {
        received_at: Timestamp::new(c.recorded, c.nanos).unwrap(),
        registry_seq: None,
    }
}

fn judge(
    bytes: &[u8],
    key: &SigningKey,
    head: ChainHead,
    receipt: &Receipt,
) -> Option<Verdict<hrx_domain::event::FacilityEvent>> {
    // Bytes that are not an envelope at all are rejected at ingest as MALFORMED_ENVELOPE.
    let envelope = codec::decode_envelope(bytes).ok()?;
    Some(verify_facility_envelope(
        envelope,
        &keyring(key),
        head,
        receipt,
        &ClockPolicy::default(),
        codec::decode_facility_event,
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sign_encode_decode_verify_round_trips(c in case()) {
        let key = signer();
        let payload = event(&c).encode_to_vec();
        let envelope = key.sign(PayloadType::FacilityEvent, payload.clone());
        let bytes = codec::encode_envelope(&envelope);
        let Some(Verdict::Accepted(e)) = judge(&bytes, &key, head_before(&c), &receipt(&c)) else {
            panic!("a valid event was not accepted");
        };
        prop_assert_eq!(e.header.link.seq, c.seq);
        prop_assert_eq!(e.header.link.prev_hash.as_bytes(), &c.prev);
        prop_assert_eq!(e.header.link.recorded_at, Timestamp::new(c.recorded, c.nanos).unwrap());
        let Body::Record(r) = e.body else { panic!("not a record") };
        prop_assert_eq!(r.patient_id.as_str(), c.patient.as_str());
        prop_assert_eq!(r.kind, c.kind);
        prop_assert_eq!(r.sensitivity, c.labels.clone());
        // The payload reached verification as the bytes that were signed.
        prop_assert_eq!(codec::decode_envelope(&bytes).unwrap().payload, payload);
    }

    #[test]
    fn any_single_byte_change_is_rejected(c in case(), pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let key = signer();
        let envelope = key.sign(PayloadType::FacilityEvent, event(&c).encode_to_vec());
        let mut bytes = codec::encode_envelope(&envelope);
        let i = pos.index(bytes.len());
        bytes[i] ^= xor;
        match judge(&bytes, &key, head_before(&c), &receipt(&c)) {
            None | Some(Verdict::Rejected { .. }) => {}
            Some(other) => panic!("byte {i} ^ {xor:#x} gave {other:?}"),
        }
    }
}
