//! The content of `tests/vectors/`, made deterministically: fixed seeds, ids and
//! times. Every vector states the verdict it is meant to have, and generation fails if
//! the Rust implementation disagrees, so a vector can never silently record a bug.

use crate::vectors::{
    self, Context, ContextKey, EnvelopeHex, Expected, Head, Input, KeyEntry, KeyFile, Tamper,
    Vector,
};
use anyhow::bail;
use hrx_domain::dsse::PayloadType;
use hrx_domain::{Sha256, SigningKey};
use serde_json::{Value, json};

const FACILITY: &str = PayloadType::FACILITY_EVENT;

/// District-level hospital (basic level) that refers the patient.
const DISTRICT: &str = "26012";
/// Provincial general hospital (specialised level) that receives the referral.
const PROVINCIAL: &str = "26001";
/// Diabetes clinic following chronic patients.
const CLINIC: &str = "26105";

/// Nguyễn Văn An, born 1962 (Vĩnh Phúc): type 2 diabetes, referred to the province.
const PATIENT_AN: &str = "026062001234";
/// Trần Thị Bình, born 1985 (Vĩnh Phúc).
const PATIENT_BINH: &str = "026185004321";

fn key_entry(name: &str, facility_id: &str) -> KeyEntry {
    let seed = Sha256::digest(format!("hrx test vector key: {name}").as_bytes());
    let key = SigningKey::from_seed(seed.as_bytes()).expect("any 32 bytes are a seed");
    KeyEntry {
        name: name.to_owned(),
        facility_id: facility_id.to_owned(),
        seed: seed.to_hex(),
        public_key: hex::encode(key.public_key().as_bytes()),
        key_id: key.key_id().to_string(),
    }
}

fn keys() -> KeyFile {
    KeyFile {
        keys: vec![
            key_entry("root", ""),
            key_entry("district-k1", DISTRICT),
            key_entry("district-k0-revoked", DISTRICT),
            key_entry("provincial-k1", PROVINCIAL),
            key_entry("clinic-k1", CLINIC),
            key_entry("unregistered", DISTRICT),
            key_entry("district-k2-future", DISTRICT),
        ],
    }
}

/// The registry's view of the keys, as every vector's context carries it.
fn context_keys(keys: &KeyFile) -> Vec<ContextKey> {
    keys.keys
        .iter()
        .filter(|k| k.name != "unregistered")
        .map(|k| ContextKey {
            key_id: k.key_id.clone(),
            facility_id: k.facility_id.clone(),
            public_key: k.public_key.clone(),
            valid_from: match k.name.as_str() {
                "district-k2-future" => "2026-06-01T00:00:00Z",
                "district-k0-revoked" => "2025-01-01T00:00:00Z",
                _ => "2026-01-01T00:00:00Z",
            }
            .to_owned(),
            revoked_at: (k.name == "district-k0-revoked")
                .then(|| "2026-02-15T00:00:00Z".to_owned()),
        })
        .collect()
}

fn event_id(n: u32) -> String {
    // UUIDv7-shaped: 2026-03-02 millisecond timestamp prefix, version 7, variant 10.
    format!(
        "019cab6a-{:04x}-7{:03x}-8000-{:012x}",
        0x1000 + n,
        n,
        u64::from(n) * 0x1_0001
    )
}

fn header(facility: &str, seq: u64, prev: &str, n: u32, recorded_at: &str) -> Value {
    json!({"event_id": event_id(n), "facility_id": facility, "seq": seq, "prev_hash": prev, "recorded_at": recorded_at})
}

fn zero() -> String {
    Sha256::ZERO.to_hex()
}

fn fhir(v: Value) -> String {
    serde_json::to_string(&v).expect("JSON values serialise")
}

fn patient_ref(p: &str) -> Value {
    json!({"reference": format!("Patient/{p}")})
}

fn encounter(p: &str) -> String {
    fhir(json!({
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": patient_ref(p),
        "period": {"start": "2026-03-02T08:00:00+07:00", "end": "2026-03-02T08:40:00+07:00"},
        "reasonCode": [{"text": "Khám định kỳ đái tháo đường"}]
    }))
}

fn condition(p: &str) -> String {
    fhir(json!({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9",
                             "display": "Bệnh đái tháo đường type 2 không có biến chứng"}]},
        "subject": patient_ref(p)
    }))
}

fn hba1c(p: &str, value: f64) -> String {
    fhir(json!({
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "Hemoglobin A1c/Hemoglobin.total in Blood"}]},
        "subject": patient_ref(p),
        "effectiveDateTime": "2026-03-02T09:10:00+07:00",
        "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    }))
}

fn medication(p: &str) -> String {
    fhir(json!({
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "A10BA02", "display": "Metformin"}],
                                      "text": "Metformin 850mg"},
        "subject": patient_ref(p),
        "dosageInstruction": [{"text": "Uống 1 viên x 2 lần/ngày sau ăn"}]
    }))
}

fn allergy_by_identifier(p: &str) -> String {
    fhir(json!({
        "resourceType": "AllergyIntolerance",
        "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "J01CA04", "display": "Amoxicillin"}]},
        "patient": {"identifier": {"system": "https://vneid.gov.vn/cccd", "value": p}},
        "reaction": [{"manifestation": [{"text": "Nổi mề đay"}]}]
    }))
}

fn referral_letter(p: &str) -> String {
    fhir(json!({
        "resourceType": "DocumentReference", "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "57133-1", "display": "Referral note"}],
                 "text": "Giấy chuyển tuyến"},
        "subject": patient_ref(p),
        "content": [{"attachment": {"contentType": "application/pdf",
                                    "url": "https://his.bv26012.example/documents/ct-2026-0312",
                                    "hash": "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="}}]
    }))
}

fn record(p: &str, kind: &str, body: String, labels: &[&str]) -> Value {
    json!({"patient_id": p, "kind": kind, "occurred_at": "2026-03-02T02:00:00Z",
           "author": "CCHN-002614", "sensitivity": labels, "supersedes": "",
           "content_type": "application/fhir+json", "body": body})
}

struct Gen {
    keys: KeyFile,
    out: Vec<Vector>,
}

/// The fields of a vector its author writes; the rest is computed.
struct Spec<'a> {
    name: &'a str,
    description: &'a str,
    signer: &'a str,
    payload_type: &'a str,
    event: Option<Value>,
    payload_override: Option<Vec<u8>>,
    tamper: Option<Tamper>,
    head: Option<Head>,
    expected: (&'a str, Option<&'a str>, Option<&'a str>, bool),
}

impl<'a> Spec<'a> {
    fn new(name: &'a str, description: &'a str, signer: &'a str, event: Value) -> Self {
        Self {
            name,
            description,
            signer,
            payload_type: FACILITY,
            event: Some(event),
            payload_override: None,
            tamper: None,
            head: None,
            expected: ("accepted", None, None, true),
        }
    }
    fn head(mut self, h: &Head) -> Self {
        self.head = Some(h.clone());
        self
    }
    fn rejects(mut self, reason: &'a str) -> Self {
        self.expected = ("rejected", Some(reason), None, false);
        self
    }
    /// A header field: the event does not enter the chain.
    fn rejects_header_field(mut self, field: &'a str) -> Self {
        self.expected = ("rejected", Some("INVALID_FIELD"), Some(field), false);
        self
    }
    fn rejects_field(mut self, field: &'a str) -> Self {
        self.expected = ("rejected", Some("INVALID_FIELD"), Some(field), true);
        self
    }
}

impl Gen {
    /// Adds a vector and returns the head after it.
    fn add(&mut self, s: Spec<'_>) -> anyhow::Result<Head> {
        let input = Input {
            signer: s.signer.to_owned(),
            payload_type: s.payload_type.to_owned(),
            event: s.event,
            payload_override: s.payload_override.map(hex::encode),
            tamper: s.tamper,
        };
        let envelope = vectors::build_envelope(&input, &self.keys)?;
        let context = Context {
            keys: context_keys(&self.keys),
            head: s.head,
        };
        let (verdict, reason, field, extends_chain) = s.expected;
        let expected = Expected {
            verdict: verdict.to_owned(),
            reason: reason.map(str::to_owned),
            field: field.map(str::to_owned),
            extends_chain,
        };
        let got = vectors::evaluate(envelope.clone(), &context)?;
        if got != expected {
            bail!(
                "vector {}: meant {expected:?}, the Rust implementation says {got:?}",
                s.name
            );
        }
        let event_hash = envelope.event_hash();
        let head = Head {
            seq: input
                .event
                .as_ref()
                .and_then(|e| e["header"]["seq"].as_u64())
                .unwrap_or_default(),
            event_hash: event_hash.to_hex(),
            event_id: input
                .event
                .as_ref()
                .and_then(|e| e["header"]["event_id"].as_str())
                .unwrap_or_default()
                .to_owned(),
        };
        self.out.push(Vector {
            name: s.name.to_owned(),
            description: s.description.to_owned(),
            context,
            input,
            envelope: EnvelopeHex::from_envelope(&envelope),
            pae: hex::encode(envelope.pae()),
            event_hash: event_hash.to_hex(),
            expected,
        });
        Ok(head)
    }
}

/// Every key and vector, in file order.
pub fn generate() -> anyhow::Result<(KeyFile, Vec<Vector>)> {
    let mut g = Gen {
        keys: keys(),
        out: Vec::new(),
    };
    let t = "2026-03-02T08:15:00Z";

    // A chain of three records from the district hospital.
    let h1 = g.add(Spec::new(
        "valid-01-chain-1-encounter",
        "District hospital's first event (seq 1, prev_hash zero): an outpatient encounter.",
        "district-k1",
        json!({"header": header(DISTRICT, 1, &zero(), 1, t), "record": record(PATIENT_AN, "ENCOUNTER", encounter(PATIENT_AN), &[])}),
    ))?;
    let h2 = g.add(
        Spec::new(
            "valid-02-chain-2-condition",
            "Seq 2 chained to seq 1: type 2 diabetes (ICD-10 E11.9).",
            "district-k1",
            json!({"header": header(DISTRICT, 2, &h1.event_hash, 2, t), "record": record(PATIENT_AN, "CONDITION", condition(PATIENT_AN), &[])}),
        )
        .head(&h1),
    )?;
    let h3 = g.add(
        Spec::new(
            "valid-03-chain-3-observation",
            "Seq 3 chained to seq 2: HbA1c 8.1 % (LOINC 4548-4).",
            "district-k1",
            json!({"header": header(DISTRICT, 3, &h2.event_hash, 3, t), "record": record(PATIENT_AN, "OBSERVATION", hba1c(PATIENT_AN, 8.1), &[])}),
        )
        .head(&h2),
    )?;
    let grant = json!({
        "patient_id": PATIENT_AN, "purposes": ["REFERRAL", "TREATMENT"], "kinds": [],
        "include_sensitive": [], "data_from": "2021-01-01T00:00:00Z",
        "expires_at": "2026-09-02T00:00:00Z",
        "evidence": {"form_id": "PCT-26012-2026-000871", "sha256": Sha256::digest(b"signed consent form 000871").to_hex()},
        "grantee_facility_id": PROVINCIAL
    });
    let h4 = g.add(
        Spec::new(
            "valid-04-consent-grant",
            "The district hospital records the patient's consent for the provincial hospital to read for referral and treatment.",
            "district-k1",
            json!({"header": header(DISTRICT, 4, &h3.event_hash, 4, t), "consent_grant": grant}),
        )
        .head(&h3),
    )?;
    let h5 = g.add(
        Spec::new(
            "valid-05-referral-letter",
            "Transfer letter (DocumentReference) referring the patient to the provincial hospital.",
            "district-k1",
            json!({"header": header(DISTRICT, 5, &h4.event_hash, 5, t), "record": record(PATIENT_AN, "DOCUMENT", referral_letter(PATIENT_AN), &[])}),
        )
        .head(&h4),
    )?;
    let p1 = g.add(Spec::new(
        "valid-06-medication-request",
        "Provincial hospital's first event: metformin prescription.",
        "provincial-k1",
        json!({"header": header(PROVINCIAL, 1, &zero(), 6, t), "record": record(PATIENT_AN, "MEDICATION_REQUEST", medication(PATIENT_AN), &[])}),
    ))?;
    let c1 = g.add(Spec::new(
        "valid-07-allergy-by-identifier",
        "An allergy whose patient element refers by identifier rather than by reference.",
        "clinic-k1",
        json!({"header": header(CLINIC, 1, &zero(), 7, t), "record": record(PATIENT_BINH, "ALLERGY", allergy_by_identifier(PATIENT_BINH), &[])}),
    ))?;
    g.add(
        Spec::new(
            "valid-08-break-glass",
            "Emergency access for 6 hours, with a reason.",
            "provincial-k1",
            json!({"header": header(PROVINCIAL, 2, &p1.event_hash, 8, t), "break_glass": {
                "patient_id": PATIENT_BINH, "reason": "Bệnh nhân hôn mê, cấp cứu, không thể lấy đồng ý",
                "clinician": "CCHN-009921", "duration_seconds": 6 * 3600}}),
        )
        .head(&p1),
    )?;
    g.add(
        Spec::new(
            "valid-09-consent-revocation",
            "The patient revokes the grant of valid-04.",
            "district-k1",
            json!({"header": header(DISTRICT, 6, &h5.event_hash, 9, t), "consent_revocation": {
                "patient_id": PATIENT_AN, "grant_event_id": event_id(4)}}),
        )
        .head(&h5),
    )?;
    g.add(
        Spec::new(
            "valid-10-sensitive-correction",
            "A corrected HbA1c labelled sensitive, superseding seq 3.",
            "district-k1",
            json!({"header": header(DISTRICT, 6, &h5.event_hash, 10, t), "record": {
                "patient_id": PATIENT_AN, "kind": "OBSERVATION", "occurred_at": "2026-03-02T02:10:00Z",
                "author": "CCHN-002614", "sensitivity": ["GENETIC"], "supersedes": event_id(3),
                "content_type": "application/fhir+json", "body": hba1c(PATIENT_AN, 7.9)}}),
        )
        .head(&h5),
    )?;
    let _ = c1;

    // Negative cases. Unless stated, each is the district hospital's seq 4 after h3.
    let good = |n: u32| json!({"header": header(DISTRICT, 4, &h3.event_hash, n, t), "record": record(PATIENT_AN, "OBSERVATION", hba1c(PATIENT_AN, 8.1), &[])});
    let with_record = |n: u32, r: Value| json!({"header": header(DISTRICT, 4, &h3.event_hash, n, t), "record": r});

    let mut s = Spec::new(
        "invalid-01-payload-bit-flip",
        "One bit of the payload flipped after signing.",
        "district-k1",
        good(101),
    )
    .head(&h3)
    .rejects("BAD_SIGNATURE");
    s.tamper = Some(Tamper {
        field: "payload".into(),
        byte: Some(40),
        xor: Some(0x01),
        truncate_to: None,
    });
    g.add(s)?;
    let mut s = Spec::new(
        "invalid-02-signature-bit-flip",
        "One bit of the signature flipped.",
        "district-k1",
        good(102),
    )
    .head(&h3)
    .rejects("BAD_SIGNATURE");
    s.tamper = Some(Tamper {
        field: "signature".into(),
        byte: Some(5),
        xor: Some(0x80),
        truncate_to: None,
    });
    g.add(s)?;
    let mut s = Spec::new(
        "invalid-03-wrong-payload-type",
        "Correctly signed, but the payload type is application/json.",
        "district-k1",
        good(103),
    )
    .head(&h3)
    .rejects("UNKNOWN_PAYLOAD_TYPE");
    s.payload_type = "application/json";
    g.add(s)?;
    g.add(
        Spec::new(
            "invalid-04-other-facility-key",
            "The district hospital's event signed with the provincial hospital's key.",
            "provincial-k1",
            good(104),
        )
        .head(&h3)
        .rejects("KEY_NOT_VALID_FOR_FACILITY"),
    )?;
    g.add(
        Spec::new(
            "invalid-05-unknown-key",
            "Signed with a key the registry does not know.",
            "unregistered",
            good(105),
        )
        .head(&h3)
        .rejects("UNKNOWN_KEY"),
    )?;
    g.add(
        Spec::new(
            "invalid-06-revoked-key",
            "Signed with a key revoked on 2026-02-15, event recorded 2026-03-02.",
            "district-k0-revoked",
            good(106),
        )
        .head(&h3)
        .rejects("KEY_REVOKED"),
    )?;
    let full = vectors::event_from_json(&good(107))?;
    let mut s = Spec::new(
        "invalid-07-truncated-payload",
        "The facility signed a payload cut in the middle of a field.",
        "district-k1",
        good(107),
    )
    .head(&h3)
    .rejects("MALFORMED_PAYLOAD");
    let bytes = prost::Message::encode_to_vec(&full);
    s.payload_override = Some(bytes[..bytes.len() / 2].to_vec());
    s.event = None;
    g.add(s)?;
    g.add(
        Spec::new("invalid-08-sequence-gap", "Seq 6 arrives when the head is seq 3.", "district-k1",
            json!({"header": header(DISTRICT, 6, &h3.event_hash, 108, t), "record": record(PATIENT_AN, "OBSERVATION", hba1c(PATIENT_AN, 8.1), &[])}))
        .head(&h3)
        .rejects("SEQUENCE_GAP"),
    )?;
    g.add(
        Spec::new("invalid-09-chain-mismatch", "Seq 4 whose prev_hash is seq 2's hash, not seq 3's.", "district-k1",
            json!({"header": header(DISTRICT, 4, &h2.event_hash, 109, t), "record": record(PATIENT_AN, "OBSERVATION", hba1c(PATIENT_AN, 8.1), &[])}))
        .head(&h3)
        .rejects("CHAIN_MISMATCH"),
    )?;
    g.add(
        Spec::new("invalid-10-fork", "A different event at seq 3, the head's seq.", "district-k1",
            json!({"header": header(DISTRICT, 3, &h2.event_hash, 110, t), "record": record(PATIENT_AN, "OBSERVATION", hba1c(PATIENT_AN, 6.4), &[])}))
        .head(&h3)
        .rejects("FORK"),
    )?;
    g.add(
        Spec::new(
            "invalid-11-malformed-patient-id",
            "An 11-digit patient id: extends the chain, not projected.",
            "district-k1",
            with_record(
                111,
                record("02606200123", "OBSERVATION", hba1c("02606200123", 8.1), &[]),
            ),
        )
        .head(&h3)
        .rejects_field("record.patient_id"),
    )?;
    g.add(
        Spec::new(
            "invalid-12-resource-type-mismatch",
            "Kind OBSERVATION carrying a Condition.",
            "district-k1",
            with_record(
                112,
                record(PATIENT_AN, "OBSERVATION", condition(PATIENT_AN), &[]),
            ),
        )
        .head(&h3)
        .rejects_field("record.body.resourceType"),
    )?;
    g.add(
        Spec::new(
            "invalid-13-body-about-another-patient",
            "The record's patient is An, the FHIR subject is Bình.",
            "district-k1",
            with_record(
                113,
                record(PATIENT_AN, "OBSERVATION", hba1c(PATIENT_BINH, 8.1), &[]),
            ),
        )
        .head(&h3)
        .rejects_field("record.body.subject"),
    )?;
    let big = fhir(json!({
        "resourceType": "DocumentReference", "status": "current", "subject": patient_ref(PATIENT_AN),
        "description": "x".repeat(512 * 1024)
    }));
    g.add(
        Spec::new(
            "invalid-14-oversized-body",
            "A body over 512 KiB.",
            "district-k1",
            with_record(114, record(PATIENT_AN, "DOCUMENT", big, &[])),
        )
        .head(&h3)
        .rejects_field("record.body"),
    )?;
    let mut s = Spec::new("invalid-15-duplicate", "Seq 3 sent again, byte for byte: acknowledged, not applied.", "district-k1",
        json!({"header": header(DISTRICT, 3, &h2.event_hash, 3, t), "record": record(PATIENT_AN, "OBSERVATION", hba1c(PATIENT_AN, 8.1), &[])})).head(&h3);
    s.expected = ("duplicate", None, None, false);
    g.add(s)?;
    let mut s = Spec::new(
        "invalid-16-short-signature",
        "A 63-byte signature.",
        "district-k1",
        good(116),
    )
    .head(&h3)
    .rejects("MALFORMED_ENVELOPE");
    s.tamper = Some(Tamper {
        field: "signature".into(),
        byte: None,
        xor: None,
        truncate_to: Some(63),
    });
    g.add(s)?;
    g.add(
        Spec::new(
            "invalid-17-key-not-yet-valid",
            "Signed with a key valid only from 2026-06-01.",
            "district-k2-future",
            good(117),
        )
        .head(&h3)
        .rejects("KEY_NOT_VALID_FOR_FACILITY"),
    )?;
    g.add(
        Spec::new("invalid-18-uppercase-event-id", "An event id in uppercase: not the canonical form.", "district-k1",
            json!({"header": {"event_id": event_id(118).to_uppercase(), "facility_id": DISTRICT, "seq": 4, "prev_hash": h3.event_hash, "recorded_at": t},
                   "record": record(PATIENT_AN, "OBSERVATION", hba1c(PATIENT_AN, 8.1), &[])}))
        .head(&h3)
        .rejects_header_field("header.event_id"),
    )?;
    g.add(
        Spec::new("invalid-19-break-glass-too-long", "Break-glass for 25 hours.", "provincial-k1",
            json!({"header": header(PROVINCIAL, 2, &p1.event_hash, 119, t), "break_glass": {
                "patient_id": PATIENT_BINH, "reason": "Cấp cứu", "clinician": "CCHN-009921", "duration_seconds": 25 * 3600}}))
        .head(&p1)
        .rejects_field("break_glass.duration"),
    )?;
    g.add(
        Spec::new(
            "invalid-20-grant-without-expiry",
            "A consent grant with no expiry.",
            "district-k1",
            json!({"header": header(DISTRICT, 4, &h3.event_hash, 120, t), "consent_grant": {
                "patient_id": PATIENT_AN, "purposes": ["TREATMENT"],
                "evidence": {"form_id": "PCT-1", "sha256": Sha256::digest(b"form").to_hex()},
                "any_facility": true}}),
        )
        .head(&h3)
        .rejects_field("consent_grant.expires_at"),
    )?;
    let mut s = Spec::new(
        "invalid-21-registry-type-from-facility",
        "A facility event sent under the registry payload type.",
        "district-k1",
        good(121),
    )
    .head(&h3)
    .rejects("UNKNOWN_PAYLOAD_TYPE");
    s.payload_type = PayloadType::REGISTRY_EVENT;
    g.add(s)?;
    let mut s = Spec::new(
        "invalid-22-missing-header",
        "A payload with a body but no header.",
        "district-k1",
        json!({"record": record(PATIENT_AN, "OBSERVATION", hba1c(PATIENT_AN, 8.1), &[])}),
    )
    .head(&h3)
    .rejects("MALFORMED_PAYLOAD");
    s.expected.3 = false;
    g.add(s)?;
    Ok((g.keys, g.out))
}

/// Each file of `tests/vectors/` (name, text) except the README.
pub fn files() -> anyhow::Result<Vec<(String, String)>> {
    let (keys, vectors) = generate()?;
    let mut files = vec![(
        "keys.json".to_owned(),
        serde_json::to_string_pretty(&keys)? + "\n",
    )];
    for v in &vectors {
        files.push((
            format!("{}.json", v.name),
            serde_json::to_string_pretty(v)? + "\n",
        ));
    }
    Ok(files)
}
