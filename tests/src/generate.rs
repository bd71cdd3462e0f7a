//! The content of `tests/vectors/`, made deterministically: fixed seeds, ids and
//! times. Every vector states the verdict it is meant to have, and generation fails if
//! the Rust implementation disagrees, so a vector can never silently record a bug.

use crate::vectors::{
    self, Context, ContextKey, EnvelopeHex, Expected, Facts, Head, Input, KeyEntry, KeyFile,
    PatientContext, PendingRequest, PolicyOverrides, ProofInput, SubmittedTo, Tamper, Vector,
};
use anyhow::bail;
use hrx_domain::dsse::PayloadType;
use hrx_domain::{Sha256, SigningKey};
use serde_json::{Value, json};

const FACILITY: &str = PayloadType::FACILITY_EVENT;
const STATEMENT: &str = PayloadType::PATIENT_STATEMENT;
const KEY_PROOF: &str = PayloadType::PATIENT_KEY_PROOF;

/// When every facility event of the vectors is recorded.
const T: &str = "2026-03-02T08:15:00Z";
/// When the exchange receives every patient statement of the vectors...
const RECEIVED: &str = "2026-03-02T09:00:00Z";
/// ...which the patient signed half a minute earlier.
const SIGNED: &str = "2026-03-02T08:59:30Z";

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
        patient_id: None,
        seed: seed.to_hex(),
        public_key: hex::encode(key.public_key().as_bytes()),
        key_id: key.key_id().to_string(),
    }
}

/// A patient's own key (their phone app).
fn patient_key(name: &str, patient_id: &str) -> KeyEntry {
    KeyEntry {
        patient_id: Some(patient_id.to_owned()),
        ..key_entry(name, "")
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
            patient_key("patient-an-k1", PATIENT_AN),
            patient_key("patient-an-k2", PATIENT_AN),
            patient_key("patient-binh-k1", PATIENT_BINH),
        ],
    }
}

/// The registry's view of the keys, as every vector's context carries it.
fn context_keys(keys: &KeyFile) -> Vec<ContextKey> {
    keys.keys
        .iter()
        .filter(|k| k.name != "unregistered" && k.patient_id.is_none())
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

/// A patient statement's id, shaped like the event ids (variant nibble 9).
fn statement_id(n: u32) -> String {
    format!(
        "019cab8b-{:04x}-7{:03x}-9000-{:012x}",
        0x2000 + n,
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
    statement: Option<Value>,
    proof: Option<ProofInput>,
    payload_override: Option<Vec<u8>>,
    tamper: Option<Tamper>,
    head: Option<Head>,
    policy: Option<PolicyOverrides>,
    facts: Option<Facts>,
    submitted_to: SubmittedTo,
    received_at: Option<&'a str>,
    patient: Option<PatientContext>,
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
            statement: None,
            proof: None,
            payload_override: None,
            tamper: None,
            head: None,
            policy: None,
            facts: None,
            submitted_to: SubmittedTo::Ingest,
            received_at: None,
            patient: None,
            expected: ("accepted", None, None, true),
        }
    }
    /// A patient statement received at [`RECEIVED`], in Nguyễn Văn An's usual state.
    fn statement(name: &'a str, description: &'a str, signer: &'a str, statement: Value) -> Self {
        Self {
            payload_type: STATEMENT,
            event: None,
            statement: Some(statement),
            submitted_to: SubmittedTo::PatientService,
            received_at: Some(RECEIVED),
            patient: Some(an_state()),
            expected: ("accepted", None, None, false),
            ..Self::new(name, description, signer, Value::Null)
        }
    }
    fn head(mut self, h: &Head) -> Self {
        self.head = Some(h.clone());
        self
    }
    /// When the exchange received a facility event (otherwise: its recorded_at).
    fn received(mut self, at: &'a str) -> Self {
        self.received_at = Some(at);
        self
    }
    fn facts(mut self, f: Facts) -> Self {
        self.facts = Some(f);
        self
    }
    fn policy(mut self, p: PolicyOverrides) -> Self {
        self.policy = Some(p);
        self
    }
    fn proof(mut self, p: ProofInput) -> Self {
        self.proof = Some(p);
        self
    }
    fn patient(mut self, p: PatientContext) -> Self {
        self.patient = Some(p);
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
    /// Content (step 9): the event extends the chain.
    fn rejects_field(mut self, field: &'a str) -> Self {
        self.expected = ("rejected", Some("INVALID_FIELD"), Some(field), true);
        self
    }
    /// Content or facility facts (steps 9–10) with a reason of their own: the event
    /// extends the chain.
    fn rejects_in_chain(mut self, reason: &'a str) -> Self {
        self.expected = ("rejected", Some(reason), None, true);
        self
    }
    /// A statement's field (a statement never extends a chain).
    fn rejects_statement_field(mut self, field: &'a str) -> Self {
        self.expected = ("rejected", Some("INVALID_FIELD"), Some(field), false);
        self
    }
}

impl Gen {
    fn key(&self, name: &str) -> &KeyEntry {
        self.keys
            .keys
            .iter()
            .find(|k| k.name == name)
            .expect("a key of keys()")
    }

    fn public_key(&self, name: &str) -> String {
        self.key(name).public_key.clone()
    }

    fn key_id(&self, name: &str) -> String {
        self.key(name).key_id.clone()
    }

    /// The JSON form of the proof envelope `recipe` makes.
    fn proof_json(&self, recipe: &ProofInput) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(vectors::build_proof(
            recipe, &self.keys,
        )?)?)
    }

    /// A proof of possession of `key`, signed by it, naming `patient`, the key and
    /// `facility` ("" for a rotation), made at `proved_at`.
    fn proof_of(&self, key: &str, patient: &str, facility: &str, proved_at: &str) -> ProofInput {
        ProofInput {
            signer: key.to_owned(),
            payload_type: KEY_PROOF.to_owned(),
            proof: Some(
                json!({"patient_id": patient, "public_key": self.public_key(key),
                               "facility_id": facility, "proved_at": proved_at}),
            ),
            payload_override: None,
            key_id: None,
            tamper: None,
        }
    }

    /// A statement header: `patient` signing with `key` at [`SIGNED`].
    fn statement_header(&self, n: u32, patient: &str, key: &str) -> Value {
        json!({"statement_id": statement_id(n), "patient_id": patient,
               "public_key": self.public_key(key), "signed_at": SIGNED})
    }

    /// Adds a vector and returns the head after it.
    fn add(&mut self, s: Spec<'_>) -> anyhow::Result<Head> {
        let input = Input {
            signer: s.signer.to_owned(),
            payload_type: s.payload_type.to_owned(),
            event: s.event,
            statement: s.statement,
            proof: s.proof,
            payload_override: s.payload_override.map(hex::encode),
            tamper: s.tamper,
        };
        let envelope = vectors::build_envelope(&input, &self.keys)?;
        let statement = s.submitted_to == SubmittedTo::PatientService;
        let context = Context {
            submitted_to: s.submitted_to,
            // A statement is judged by the patient's key, not the facility registry.
            keys: if statement {
                Vec::new()
            } else {
                context_keys(&self.keys)
            },
            head: s.head,
            policy: s.policy,
            facility_facts: s.facts,
            received_at: s.received_at.map(str::to_owned),
            patient: s.patient,
        };
        let (verdict, reason, field, extends_chain) = s.expected;
        let expected = Expected {
            verdict: verdict.to_owned(),
            reason: reason.map(str::to_owned),
            field: field.map(str::to_owned),
            extends_chain,
        };
        let got = vectors::evaluate(envelope.clone(), &context, &self.keys)?;
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
            recorded_at: input
                .event
                .as_ref()
                .and_then(|e| e["header"]["recorded_at"].as_str())
                .map(str::to_owned),
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

/// Nguyễn Văn An's consent state when his statements are received: his enrolled key
/// `patient-an-k1`, the attested grant of valid-04 and a patient-signed grant of his
/// own, and the provincial hospital's consent request of valid-12 still pending.
fn an_state() -> PatientContext {
    let keys = keys();
    let k1 = keys
        .keys
        .iter()
        .find(|k| k.name == "patient-an-k1")
        .expect("An's key");
    PatientContext {
        patient_id: PATIENT_AN.to_owned(),
        active_key_id: Some(k1.key_id.clone()),
        grants: vec![event_id(4), statement_id(1)],
        pending_requests: vec![PendingRequest {
            request_event_id: event_id(12),
            facility_id: PROVINCIAL.to_owned(),
        }],
    }
}

/// Facts for an attested grant by the district hospital, which recorded An's
/// encounter, condition and HbA1c (valid-01..03) at the same instant.
fn standing() -> Facts {
    Facts {
        latest_authored: Some(T.to_owned()),
        ..Facts::default()
    }
}

fn evidence_of(form: &str) -> Value {
    json!({"form_id": form, "sha256": Sha256::digest(format!("signed consent form {form}").as_bytes()).to_hex()})
}

/// Every key and vector, in file order.
pub fn generate() -> anyhow::Result<(KeyFile, Vec<Vector>)> {
    let mut g = Gen {
        keys: keys(),
        out: Vec::new(),
    };
    let t = T;

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
        "expires_at": "2026-05-31T00:00:00Z",
        "evidence": {"form_id": "PCT-26012-2026-000871", "sha256": Sha256::digest(b"signed consent form 000871").to_hex()},
        "grantee_facility_id": PROVINCIAL
    });
    let h4 = g.add(
        Spec::new(
            "valid-04-consent-grant",
            "The district hospital attests the patient's paper consent for the provincial hospital to read for referral and treatment: one named grantee, no sensitive labels, expiry within 90 days, and standing (it recorded the patient's HbA1c at seq 3).",
            "district-k1",
            json!({"header": header(DISTRICT, 4, &h3.event_hash, 4, t), "consent_grant": grant}),
        )
        .head(&h3)
        .facts(standing()),
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
            "Emergency access for 6 hours, with a reason. The facility made 19 other declarations in the past 24 hours (the limit is 20) and has no window open for this patient.",
            "provincial-k1",
            json!({"header": header(PROVINCIAL, 2, &p1.event_hash, 8, t), "break_glass": {
                "patient_id": PATIENT_BINH, "reason": "Bệnh nhân hôn mê, cấp cứu, không thể lấy đồng ý",
                "clinician": "CCHN-009921", "duration_seconds": 6 * 3600}}),
        )
        .head(&p1)
        .facts(Facts {
            declared_since: 19,
            ..Facts::default()
        }),
    )?;
    g.add(
        Spec::new(
            "valid-09-consent-revocation",
            "The district hospital, which attested the grant of valid-04, records the patient's revocation of it.",
            "district-k1",
            json!({"header": header(DISTRICT, 6, &h5.event_hash, 9, t), "consent_revocation": {
                "patient_id": PATIENT_AN, "grant_event_id": event_id(4)}}),
        )
        .head(&h5)
        .facts(Facts {
            attested_the_grant: true,
            ..Facts::default()
        }),
    )?;
    g.add(
        Spec::new(
            "valid-10-sensitive-correction",
            "A corrected HbA1c labelled sensitive, superseding seq 3: the district hospital's own earlier record about the same patient.",
            "district-k1",
            json!({"header": header(DISTRICT, 6, &h5.event_hash, 10, t), "record": {
                "patient_id": PATIENT_AN, "kind": "OBSERVATION", "occurred_at": "2026-03-02T02:10:00Z",
                "author": "CCHN-002614", "sensitivity": ["GENETIC"], "supersedes": event_id(3),
                "content_type": "application/fhir+json", "body": hba1c(PATIENT_AN, 7.9)}}),
        )
        .head(&h5)
        .facts(Facts {
            supersedes_own: true,
            ..Facts::default()
        }),
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
            "Signed with a key revoked on 2026-02-15, event recorded and received 2026-03-02.",
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
            "Signed with a key valid only from 2026-06-01, event recorded and received 2026-03-02.",
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
    patient_vectors(&mut g, &h3, &h5, &p1)?;
    clock_vectors(&mut g, &h2, &h3, &p1)?;
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

/// `v` with `key` set to `value`.
fn set(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

/// `v` without `key`.
fn unset(mut v: Value, key: &str) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove(key);
    }
    v
}

/// Patient keys, consent requests, patient statements, and the facility facts of step 10.
/// Facility events are the district hospital's seq 6 after `h5` (key enrollments), its
/// seq 4 after `h3` (attested grants), or the provincial hospital's seq 2 after `p1`
/// (requests, revocations, break-glass); statements are An's, received at [`RECEIVED`].
fn patient_vectors(g: &mut Gen, h3: &Head, h5: &Head, p1: &Head) -> anyhow::Result<()> {
    let an_k1 = g.public_key("patient-an-k1");
    let enrollment = |n: u32, public_key: &str, proof: Value| {
        json!({"header": header(DISTRICT, 6, &h5.event_hash, n, T), "patient_key_enrollment": {
            "patient_id": PATIENT_AN, "public_key": public_key, "proof": proof}})
    };
    let attested = |n: u32, grant: Value| json!({"header": header(DISTRICT, 4, &h3.event_hash, n, T), "consent_grant": grant});
    let provincial = |n: u32, body: &str, value: Value| {
        let mut e = json!({"header": header(PROVINCIAL, 2, &p1.event_hash, n, T)});
        e[body] = value;
        e
    };
    let request = |reason: &str, duration: i64| {
        json!({"patient_id": PATIENT_AN, "purposes": ["REFERRAL", "TREATMENT"], "kinds": [],
               "data_from": "2021-01-01T00:00:00Z", "duration_seconds": duration,
               "reason": reason, "include_sensitive": []})
    };
    let break_glass = json!({"patient_id": PATIENT_BINH, "reason": "Ngừng tuần hoàn ngoại viện, cấp cứu",
                             "clinician": "CCHN-009921", "duration_seconds": 4 * 3600});
    let clinic_grant = json!({
        "patient_id": PATIENT_AN, "purposes": ["CHRONIC_CARE"], "kinds": [], "include_sensitive": [],
        "expires_at": "2026-04-01T00:00:00Z", "evidence": evidence_of("PCT-26012-2026-000902"),
        "grantee_facility_id": CLINIC
    });
    let to_any = |grant: &Value| {
        set(
            unset(grant.clone(), "grantee_facility_id"),
            "any_facility",
            json!(true),
        )
    };
    let day = 24 * 3600;

    // Facility events, accepted.
    let proof = g.proof_of(
        "patient-an-k1",
        PATIENT_AN,
        DISTRICT,
        "2026-03-02T08:10:00Z",
    );
    let event = enrollment(11, &an_k1, g.proof_json(&proof)?);
    g.add(
        Spec::new(
            "valid-11-key-enrollment",
            "The district hospital checks An's identity in person and enrolls his phone's key; the proof of possession, signed by that key five minutes earlier, names An, the key and the district hospital.",
            "district-k1",
            event,
        )
        .head(h5)
        .proof(proof),
    )?;
    g.add(
        Spec::new(
            "valid-12-consent-request",
            "The provincial hospital asks An for 90 days of access for referral and treatment; he answers with a signed grant (valid-16) or a decline (valid-17).",
            "provincial-k1",
            provincial(12, "consent_request", request("Tiếp nhận chuyển tuyến: cần tiền sử điều trị đái tháo đường", 90 * day)),
        )
        .head(p1),
    )?;
    g.add(
        Spec::new(
            "valid-13-attested-grant-at-the-bounds",
            "An attested grant for the diabetes clinic at the bounds: it expires exactly 90 days after recorded_at, and the district hospital's latest record for An was exactly 365 days earlier.",
            "district-k1",
            attested(13, set(clinic_grant.clone(), "expires_at", json!("2026-05-31T08:15:00Z"))),
        )
        .head(h3)
        .facts(Facts {
            latest_authored: Some("2025-03-02T08:15:00Z".into()),
            ..Facts::default()
        }),
    )?;
    let proof = g.proof_of(
        "patient-an-k1",
        PATIENT_AN,
        DISTRICT,
        "2026-03-02T07:15:00Z",
    );
    let event = enrollment(14, &an_k1, g.proof_json(&proof)?);
    g.add(
        Spec::new(
            "valid-14-enrollment-proof-an-hour-early",
            "A key enrollment whose proof was made exactly 3,600 s before recorded_at: still within the hour.",
            "district-k1",
            event,
        )
        .head(h5)
        .proof(proof),
    )?;

    // Patient statements, accepted.
    let statement = |g: &Gen, n: u32, key: &str, body: &str, value: Value| {
        let mut s = json!({"header": g.statement_header(n, PATIENT_AN, key)});
        s[body] = value;
        s
    };
    let own_grant = json!({
        "patient_id": PATIENT_AN, "purposes": ["TREATMENT", "CHRONIC_CARE"], "kinds": [],
        "include_sensitive": ["GENETIC"], "data_from": "2021-01-01T00:00:00Z",
        "expires_at": "2027-03-02T00:00:00Z", "any_facility": true
    });
    let approval = json!({
        "patient_id": PATIENT_AN, "purposes": ["REFERRAL", "TREATMENT"], "kinds": [],
        "include_sensitive": [], "data_from": "2021-01-01T00:00:00Z",
        "expires_at": "2026-05-31T09:00:00Z", "request_event_id": event_id(12),
        "grantee_facility_id": PROVINCIAL
    });
    let s = statement(g, 15, "patient-an-k1", "consent_grant", own_grant.clone());
    g.add(Spec::statement(
        "valid-15-patient-signed-grant",
        "An signs, with his enrolled key, a grant no facility could attest: any facility, a sensitive label, a year long, no paper evidence.",
        "patient-an-k1",
        s,
    ))?;
    let s = statement(g, 16, "patient-an-k1", "consent_grant", approval.clone());
    g.add(Spec::statement(
        "valid-16-patient-approves-request",
        "An approves the provincial hospital's pending request (valid-12): a signed grant naming the request and the requesting facility.",
        "patient-an-k1",
        s,
    ))?;
    let s = statement(
        g,
        17,
        "patient-an-k1",
        "consent_decline",
        json!({"request_event_id": event_id(12)}),
    );
    g.add(Spec::statement(
        "valid-17-patient-declines-request",
        "An declines the provincial hospital's pending request (valid-12).",
        "patient-an-k1",
        s,
    ))?;
    let s = statement(
        g,
        18,
        "patient-an-k1",
        "consent_revocation",
        json!({"patient_id": PATIENT_AN, "grant_event_id": event_id(4)}),
    );
    g.add(Spec::statement(
        "valid-18-patient-revokes-attested-grant",
        "An himself revokes the grant the district hospital attested for him (valid-04): the patient may revoke any of his grants.",
        "patient-an-k1",
        s,
    ))?;
    let proof = g.proof_of("patient-an-k2", PATIENT_AN, "", "2026-03-02T08:59:00Z");
    let s = statement(
        g,
        19,
        "patient-an-k1",
        "key_rotation",
        json!({"new_public_key": g.public_key("patient-an-k2"), "proof": g.proof_json(&proof)?}),
    );
    g.add(
        Spec::statement(
            "valid-19-key-rotation",
            "An moves to a new phone: signed by his current key, the rotation carries the new key and its proof of possession (no facility, made a minute before the exchange received it).",
            "patient-an-k1",
            s,
        )
        .proof(proof),
    )?;
    let s = statement(
        g,
        20,
        "patient-an-k1",
        "key_revocation",
        json!({"reason": "Mất điện thoại"}),
    );
    g.add(Spec::statement(
        "valid-20-key-revocation",
        "An withdraws his key (lost phone) until a facility enrolls a new one in person.",
        "patient-an-k1",
        s,
    ))?;
    g.add(
        Spec::new(
            "valid-21-attested-grant-under-a-longer-policy",
            "An exchange configured with attested_max = 180 days accepts an attested grant expiring 120 days after recorded_at.",
            "district-k1",
            attested(21, set(clinic_grant.clone(), "expires_at", json!("2026-06-30T08:15:00Z"))),
        )
        .head(h3)
        .facts(standing())
        .policy(PolicyOverrides {
            attested_max_days: Some(180),
            ..PolicyOverrides::default()
        }),
    )?;

    // Key enrollments refused.
    let proof = g.proof_of(
        "patient-an-k1",
        PATIENT_AN,
        PROVINCIAL,
        "2026-03-02T08:10:00Z",
    );
    let event = enrollment(123, &an_k1, g.proof_json(&proof)?);
    g.add(
        Spec::new(
            "invalid-23-enrollment-proof-other-facility",
            "The proof names the provincial hospital, but the district hospital enrolls the key: it extends the chain, not projected.",
            "district-k1",
            event,
        )
        .head(h5)
        .proof(proof)
        .rejects_in_chain("BAD_PROOF_OF_POSSESSION"),
    )?;
    let mut proof = g.proof_of(
        "patient-an-k1",
        PATIENT_AN,
        DISTRICT,
        "2026-03-02T08:10:00Z",
    );
    proof.signer = "patient-binh-k1".into();
    let event = enrollment(124, &an_k1, g.proof_json(&proof)?);
    g.add(
        Spec::new(
            "invalid-24-enrollment-proof-by-another-key",
            "The proof names An's key but is signed by Bình's (its key_id is Bình's key's).",
            "district-k1",
            event,
        )
        .head(h5)
        .proof(proof)
        .rejects_in_chain("BAD_PROOF_OF_POSSESSION"),
    )?;
    let mut proof = g.proof_of(
        "patient-an-k1",
        PATIENT_AN,
        DISTRICT,
        "2026-03-02T08:10:00Z",
    );
    proof.signer = "patient-binh-k1".into();
    proof.key_id = Some(g.key_id("patient-an-k1"));
    let event = enrollment(125, &an_k1, g.proof_json(&proof)?);
    g.add(
        Spec::new(
            "invalid-25-enrollment-proof-forged-signature",
            "The proof carries the enrolled key's key_id, but Bình's key made the signature.",
            "district-k1",
            event,
        )
        .head(h5)
        .proof(proof)
        .rejects_in_chain("BAD_PROOF_OF_POSSESSION"),
    )?;
    let proof = g.proof_of(
        "patient-an-k1",
        PATIENT_AN,
        DISTRICT,
        "2026-03-02T09:15:01Z",
    );
    let event = enrollment(126, &an_k1, g.proof_json(&proof)?);
    g.add(
        Spec::new(
            "invalid-26-enrollment-proof-too-late",
            "The proof claims to be made 3,601 s after recorded_at: more than an hour away.",
            "district-k1",
            event,
        )
        .head(h5)
        .proof(proof)
        .rejects_in_chain("BAD_PROOF_OF_POSSESSION"),
    )?;
    let mut proof = g.proof_of(
        "patient-an-k1",
        PATIENT_AN,
        DISTRICT,
        "2026-03-02T08:10:00Z",
    );
    proof.payload_type = STATEMENT.into();
    let event = enrollment(127, &an_k1, g.proof_json(&proof)?);
    g.add(
        Spec::new(
            "invalid-27-enrollment-proof-wrong-payload-type",
            "A correctly signed proof under the patient-statement payload type instead of the key-proof type.",
            "district-k1",
            event,
        )
        .head(h5)
        .proof(proof)
        .rejects_in_chain("BAD_PROOF_OF_POSSESSION"),
    )?;
    let proof = g.proof_of(
        "patient-an-k1",
        PATIENT_AN,
        DISTRICT,
        "2026-03-02T08:10:00Z",
    );
    let event = enrollment(128, &an_k1[..62], g.proof_json(&proof)?);
    g.add(
        Spec::new(
            "invalid-28-enrollment-short-key",
            "A 31-byte public key: the fields are checked before the proof.",
            "district-k1",
            event,
        )
        .head(h5)
        .proof(proof)
        .rejects_field("patient_key_enrollment.public_key"),
    )?;

    // Attested grants outside their bounds or without standing.
    g.add(
        Spec::new(
            "invalid-29-attested-grant-without-standing",
            "The district hospital attests a grant for a patient it never recorded anything for.",
            "district-k1",
            attested(129, clinic_grant.clone()),
        )
        .head(h3)
        .facts(Facts::default())
        .rejects_in_chain("NO_STANDING"),
    )?;
    g.add(
        Spec::new(
            "invalid-30-attested-grant-stale-standing",
            "The facility's latest record for the patient is 365 days and 1 s old: outside the standing window.",
            "district-k1",
            attested(130, clinic_grant.clone()),
        )
        .head(h3)
        .facts(Facts {
            latest_authored: Some("2025-03-02T08:14:59Z".into()),
            ..Facts::default()
        })
        .rejects_in_chain("NO_STANDING"),
    )?;
    g.add(
        Spec::new(
            "invalid-31-attested-grant-to-any-facility",
            "An attested grant to any facility, from a facility without standing too: the bounds are checked before standing.",
            "district-k1",
            attested(131, to_any(&clinic_grant)),
        )
        .head(h3)
        .facts(Facts::default())
        .rejects_in_chain("ATTESTED_GRANT_OUT_OF_BOUNDS"),
    )?;
    g.add(
        Spec::new(
            "invalid-32-attested-grant-too-long",
            "An attested grant expiring 90 days and 1 s after recorded_at.",
            "district-k1",
            attested(
                132,
                set(
                    clinic_grant.clone(),
                    "expires_at",
                    json!("2026-05-31T08:15:01Z"),
                ),
            ),
        )
        .head(h3)
        .facts(standing())
        .rejects_in_chain("ATTESTED_GRANT_OUT_OF_BOUNDS"),
    )?;
    g.add(
        Spec::new(
            "invalid-33-attested-grant-sensitive",
            "An attested grant including HIV-labelled records: only the patient may grant sensitive labels.",
            "district-k1",
            attested(133, set(clinic_grant.clone(), "include_sensitive", json!(["HIV"]))),
        )
        .head(h3)
        .facts(standing())
        .rejects_in_chain("ATTESTED_GRANT_OUT_OF_BOUNDS"),
    )?;
    g.add(
        Spec::new(
            "invalid-34-attested-grant-answers-request",
            "An attested grant naming a consent request: only the patient's own signed grant answers one.",
            "district-k1",
            attested(134, set(clinic_grant.clone(), "request_event_id", json!(event_id(12)))),
        )
        .head(h3)
        .facts(standing())
        .rejects_in_chain("ATTESTED_GRANT_OUT_OF_BOUNDS"),
    )?;
    g.add(
        Spec::new(
            "invalid-35-attested-grant-malformed-request-id",
            "An attested grant to any facility whose request_event_id is not canonical: content (step 9) comes before the bounds (step 10).",
            "district-k1",
            attested(135, set(to_any(&clinic_grant), "request_event_id", json!(event_id(12).to_uppercase()))),
        )
        .head(h3)
        .facts(Facts::default())
        .rejects_field("consent_grant.request_event_id"),
    )?;

    // Revocation, break-glass and consent requests refused.
    g.add(
        Spec::new(
            "invalid-36-revocation-by-non-grantor",
            "The provincial hospital revokes the grant the district hospital attested (valid-04).",
            "provincial-k1",
            provincial(
                136,
                "consent_revocation",
                json!({"patient_id": PATIENT_AN, "grant_event_id": event_id(4)}),
            ),
        )
        .head(p1)
        .facts(Facts::default())
        .rejects_in_chain("NOT_GRANTOR"),
    )?;
    g.add(
        Spec::new(
            "invalid-37-break-glass-daily-limit",
            "The facility already made 20 break-glass declarations in the past 24 hours (the limit).",
            "provincial-k1",
            provincial(137, "break_glass", break_glass.clone()),
        )
        .head(p1)
        .facts(Facts {
            declared_since: 20,
            ..Facts::default()
        })
        .rejects_in_chain("BREAK_GLASS_LIMIT"),
    )?;
    g.add(
        Spec::new(
            "invalid-38-break-glass-already-open",
            "The facility already has a break-glass window open for this patient.",
            "provincial-k1",
            provincial(138, "break_glass", break_glass.clone()),
        )
        .head(p1)
        .facts(Facts {
            declared_since: 1,
            open_for_patient: 1,
            ..Facts::default()
        })
        .rejects_in_chain("BREAK_GLASS_LIMIT"),
    )?;
    g.add(
        Spec::new(
            "invalid-39-break-glass-policy-limit",
            "An exchange configured with break_glass_per_day = 5: the facility's sixth declaration in 24 hours.",
            "provincial-k1",
            provincial(139, "break_glass", break_glass.clone()),
        )
        .head(p1)
        .policy(PolicyOverrides {
            break_glass_per_day: Some(5),
            ..PolicyOverrides::default()
        })
        .facts(Facts {
            declared_since: 5,
            ..Facts::default()
        })
        .rejects_in_chain("BREAK_GLASS_LIMIT"),
    )?;
    g.add(
        Spec::new(
            "invalid-40-consent-request-too-long",
            "A consent request for 365 days and 1 s.",
            "provincial-k1",
            provincial(
                140,
                "consent_request",
                request("Theo dõi bệnh mạn tính", 365 * day + 1),
            ),
        )
        .head(p1)
        .rejects_field("consent_request.duration"),
    )?;
    g.add(
        Spec::new(
            "invalid-41-consent-request-blank-reason",
            "A consent request whose reason is only white space (a space, a tab, an ideographic space).",
            "provincial-k1",
            provincial(141, "consent_request", request(" \t\u{3000} ", 90 * day)),
        )
        .head(p1)
        .rejects_field("consent_request.reason"),
    )?;
    let s = statement(g, 15, "patient-an-k1", "consent_grant", own_grant.clone());
    let mut spec = Spec::statement(
        "invalid-42-statement-sent-to-ingest",
        "valid-15's statement submitted to ingest as if it were a facility event.",
        "patient-an-k1",
        s,
    )
    .rejects("UNKNOWN_PAYLOAD_TYPE");
    spec.submitted_to = SubmittedTo::Ingest;
    spec.received_at = None;
    spec.patient = None;
    spec.head = Some(p1.clone());
    g.add(spec)?;

    // Patient statements refused.
    let s = json!({"header": g.statement_header(143, PATIENT_AN, "patient-binh-k1"), "consent_grant": own_grant.clone()});
    g.add(
        Spec::statement(
            "invalid-43-statement-other-patients-key",
            "A grant in An's name, correctly signed with the key its header names, but that key is Bình's, not An's enrolled key.",
            "patient-binh-k1",
            s,
        )
        .rejects("PATIENT_KEY_NOT_VALID"),
    )?;
    let s = statement(g, 144, "patient-an-k1", "consent_grant", own_grant.clone());
    g.add(
        Spec::statement(
            "invalid-44-statement-key-id-not-header-key",
            "The header names An's key, but Bình's key signed the envelope (so key_id is not the SHA-256 of the header's key).",
            "patient-binh-k1",
            s,
        )
        .rejects("BAD_SIGNATURE"),
    )?;
    let s = statement(g, 145, "patient-an-k1", "consent_grant", own_grant.clone());
    let mut spec = Spec::statement(
        "invalid-45-statement-signature-bit-flip",
        "One bit of the statement's signature flipped.",
        "patient-an-k1",
        s,
    )
    .rejects("BAD_SIGNATURE");
    spec.tamper = Some(Tamper {
        field: "signature".into(),
        byte: Some(7),
        xor: Some(0x04),
        truncate_to: None,
    });
    g.add(spec)?;
    let s = statement(
        g,
        146,
        "patient-an-k1",
        "consent_grant",
        set(own_grant.clone(), "patient_id", json!(PATIENT_BINH)),
    );
    g.add(
        Spec::statement(
            "invalid-46-statement-grant-for-another-patient",
            "An signs a grant over Bình's records.",
            "patient-an-k1",
            s,
        )
        .rejects_statement_field("consent_grant.patient_id"),
    )?;
    let s = statement(
        g,
        147,
        "patient-an-k1",
        "consent_revocation",
        json!({"patient_id": PATIENT_AN, "grant_event_id": statement_id(2)}),
    );
    g.add(
        Spec::statement(
            "invalid-47-statement-revokes-grant-not-theirs",
            "An revokes a grant id that is not one of his grants (it is Bình's).",
            "patient-an-k1",
            s,
        )
        .rejects("NOT_GRANTOR"),
    )?;
    let s = statement(g, 148, "patient-an-k1", "consent_grant", own_grant.clone());
    g.add(
        Spec::statement(
            "invalid-48-statement-without-enrolled-key",
            "A grant signed with An's old key after he revoked it: he has no key until a facility enrolls one.",
            "patient-an-k1",
            s,
        )
        .patient(PatientContext {
            active_key_id: None,
            ..an_state()
        })
        .rejects("PATIENT_KEY_NOT_VALID"),
    )?;
    let k2 = g.key_id("patient-an-k2");
    let s = statement(g, 149, "patient-an-k1", "consent_grant", own_grant.clone());
    g.add(
        Spec::statement(
            "invalid-49-statement-replaced-key",
            "A grant signed with the key An rotated away from (valid-19): his active key is patient-an-k2.",
            "patient-an-k1",
            s,
        )
        .patient(PatientContext {
            active_key_id: Some(k2.clone()),
            ..an_state()
        })
        .rejects("PATIENT_KEY_NOT_VALID"),
    )?;
    let s = statement(
        g,
        150,
        "patient-an-k1",
        "consent_grant",
        set(
            own_grant.clone(),
            "expires_at",
            json!("2026-03-02T08:59:45Z"),
        ),
    );
    g.add(
        Spec::statement(
            "invalid-50-statement-expired-on-arrival",
            "A grant expiring after signed_at but before the exchange received it, signed with a replaced key: the content (step 7) is checked before the key (step 8), against received_at.",
            "patient-an-k1",
            s,
        )
        .patient(PatientContext {
            active_key_id: Some(k2),
            ..an_state()
        })
        .rejects_statement_field("consent_grant.expires_at"),
    )?;
    let s = statement(
        g,
        151,
        "patient-an-k1",
        "consent_grant",
        set(approval.clone(), "grantee_facility_id", json!(DISTRICT)),
    );
    g.add(
        Spec::statement(
            "invalid-51-approval-for-another-facility",
            "An approval of the provincial hospital's request whose grantee is the district hospital.",
            "patient-an-k1",
            s,
        )
        .rejects_statement_field("consent_grant.request_event_id"),
    )?;
    let s = statement(
        g,
        152,
        "patient-an-k1",
        "consent_grant",
        set(approval.clone(), "request_event_id", json!(event_id(99))),
    );
    g.add(
        Spec::statement(
            "invalid-52-approval-of-no-pending-request",
            "An approval naming a request An does not have pending.",
            "patient-an-k1",
            s,
        )
        .rejects_statement_field("consent_grant.request_event_id"),
    )?;
    let s = statement(
        g,
        153,
        "patient-an-k1",
        "consent_decline",
        json!({"request_event_id": event_id(98)}),
    );
    g.add(
        Spec::statement(
            "invalid-53-decline-of-no-pending-request",
            "A decline of a request An does not have pending.",
            "patient-an-k1",
            s,
        )
        .rejects_statement_field("consent_decline.request_event_id"),
    )?;
    let proof = g.proof_of(
        "patient-an-k2",
        PATIENT_AN,
        DISTRICT,
        "2026-03-02T08:59:00Z",
    );
    let s = statement(
        g,
        154,
        "patient-an-k1",
        "key_rotation",
        json!({"new_public_key": g.public_key("patient-an-k2"), "proof": g.proof_json(&proof)?}),
    );
    g.add(
        Spec::statement(
            "invalid-54-rotation-proof-names-a-facility",
            "A rotation whose proof names a facility: a rotation's proof has an empty facility_id.",
            "patient-an-k1",
            s,
        )
        .proof(proof)
        .rejects("BAD_PROOF_OF_POSSESSION"),
    )?;
    let proof = g.proof_of("patient-an-k1", PATIENT_AN, "", "2026-03-02T08:59:00Z");
    let s = statement(
        g,
        155,
        "patient-an-k1",
        "key_rotation",
        json!({"new_public_key": an_k1, "proof": g.proof_json(&proof)?}),
    );
    g.add(
        Spec::statement(
            "invalid-55-rotation-to-the-same-key",
            "A rotation to the key that signs it.",
            "patient-an-k1",
            s,
        )
        .proof(proof)
        .rejects_statement_field("key_rotation.new_public_key"),
    )?;
    let mut s = statement(g, 156, "patient-an-k1", "consent_grant", own_grant.clone());
    s["header"]["public_key"] = json!(an_k1[..62]);
    g.add(
        Spec::statement(
            "invalid-56-statement-short-public-key",
            "A header public key of 31 bytes: the header (step 4) is checked before the key id (step 5).",
            "patient-an-k1",
            s,
        )
        .rejects_statement_field("statement.header.public_key"),
    )?;
    let s = statement(g, 157, "patient-an-k1", "consent_grant", own_grant.clone());
    let bytes = prost::Message::encode_to_vec(&vectors::statement_from_json(&s)?);
    let mut spec = Spec::statement(
        "invalid-57-statement-undecodable-payload",
        "A statement payload cut in half, with a bad signature too: a statement's payload is decoded (step 3) before its signature is checked (step 6), since the key is in the payload.",
        "patient-an-k1",
        s,
    )
    .rejects("MALFORMED_PAYLOAD");
    spec.statement = None;
    spec.payload_override = Some(bytes[..bytes.len() / 2].to_vec());
    spec.tamper = Some(Tamper {
        field: "signature".into(),
        byte: Some(0),
        xor: Some(0x01),
        truncate_to: None,
    });
    g.add(spec)?;
    let s = json!({"header": g.statement_header(158, PATIENT_AN, "patient-an-k1")});
    g.add(
        Spec::statement(
            "invalid-58-statement-without-body",
            "A statement with a header and no body.",
            "patient-an-k1",
            s,
        )
        .rejects("MALFORMED_PAYLOAD"),
    )?;
    let s = statement(g, 159, "patient-an-k1", "consent_grant", own_grant.clone());
    let mut spec = Spec::statement(
        "invalid-59-statement-wrong-payload-type",
        "A correctly signed statement under the facility-event payload type, submitted as a statement.",
        "patient-an-k1",
        s,
    )
    .rejects("UNKNOWN_PAYLOAD_TYPE");
    spec.payload_type = FACILITY;
    g.add(spec)?;
    let s = statement(g, 160, "patient-an-k1", "consent_grant", own_grant.clone());
    let mut spec = Spec::statement(
        "invalid-60-statement-short-signature",
        "A statement with a 63-byte signature.",
        "patient-an-k1",
        s,
    )
    .rejects("MALFORMED_ENVELOPE");
    spec.tamper = Some(Tamper {
        field: "signature".into(),
        byte: None,
        xor: None,
        truncate_to: Some(63),
    });
    g.add(spec)?;
    let s = statement(
        g,
        161,
        "patient-an-k1",
        "key_revocation",
        json!({"reason": "x".repeat(1001)}),
    );
    g.add(
        Spec::statement(
            "invalid-61-key-revocation-reason-too-long",
            "A key revocation with a 1,001-byte reason.",
            "patient-an-k1",
            s,
        )
        .rejects_statement_field("key_revocation.reason"),
    )?;
    let mut s = statement(g, 162, "patient-an-k1", "consent_grant", own_grant.clone());
    s["header"]["statement_id"] = json!(statement_id(162).to_uppercase());
    g.add(
        Spec::statement(
            "invalid-62-statement-uppercase-statement-id",
            "A statement id in uppercase: not the canonical form.",
            "patient-an-k1",
            s,
        )
        .rejects_statement_field("statement.header.statement_id"),
    )?;
    let s = statement(
        g,
        163,
        "patient-an-k1",
        "consent_grant",
        set(
            own_grant.clone(),
            "evidence",
            json!({"form_id": "PCT-1", "sha256": "00".repeat(31)}),
        ),
    );
    g.add(
        Spec::statement(
            "invalid-63-statement-grant-bad-evidence",
            "Evidence is optional in a patient-signed grant, but when present it is checked: a 31-byte sha256.",
            "patient-an-k1",
            s,
        )
        .rejects_statement_field("consent_grant.evidence"),
    )?;
    let s = statement(
        g,
        164,
        "patient-an-k1",
        "consent_revocation",
        json!({"patient_id": PATIENT_BINH, "grant_event_id": event_id(4)}),
    );
    g.add(
        Spec::statement(
            "invalid-64-statement-revocation-for-another-patient",
            "An signs a revocation in Bình's name.",
            "patient-an-k1",
            s,
        )
        .rejects_statement_field("consent_revocation.patient_id"),
    )?;
    Ok(())
}

/// The time the exchange can vouch for: key validity at the receive time (step 7),
/// `recorded_at` against the receive time and the head (step 8b), the seq bound (step 6)
/// and corrections (step 10). Unless stated, each is the district hospital's seq 4 after
/// `h3` (recorded at [`T`]) or its alternative first event (empty chain).
fn clock_vectors(g: &mut Gen, h2: &Head, h3: &Head, p1: &Head) -> anyhow::Result<()> {
    let obs = || record(PATIENT_AN, "OBSERVATION", hba1c(PATIENT_AN, 8.1), &[]);
    let after_h3 = |n: u32, recorded_at: &str| json!({"header": header(DISTRICT, 4, &h3.event_hash, n, recorded_at), "record": obs()});
    // The district hospital's first event (an alternative to valid-01): a diagnosis made
    // when recorded.
    let first = |n: u32, recorded_at: &str| {
        let r = set(
            record(PATIENT_AN, "CONDITION", condition(PATIENT_AN), &[]),
            "occurred_at",
            json!(recorded_at),
        );
        json!({"header": header(DISTRICT, 1, &zero(), n, recorded_at), "record": r})
    };

    // Step 7 at the receive time.
    g.add(
        Spec::new(
            "valid-22-revoked-key-received-before-revocation",
            "Signed with district-k0-revoked (revoked at 2026-02-15T00:00:00Z) and recorded 4 minutes after its revocation by a fast clock, but received 1 ns before it: keys are judged at the receive time, so the key was still valid.",
            "district-k0-revoked",
            first(22, "2026-02-15T00:04:00Z"),
        )
        .received("2026-02-14T23:59:59.999999999Z"),
    )?;
    g.add(
        Spec::new(
            "valid-23-received-at-key-valid-from",
            "Signed with district-k2-future (valid from 2026-06-01T00:00:00Z) and recorded 2 minutes before its valid_from, but received exactly at it: valid.",
            "district-k2-future",
            first(23, "2026-05-31T23:58:00Z"),
        )
        .received("2026-06-01T00:00:00Z"),
    )?;
    g.add(
        Spec::new(
            "invalid-65-back-dated-with-revoked-key",
            "Signed with district-k0-revoked and back-dated to an hour before its revocation (2026-02-15T00:00:00Z), but received exactly at the revocation: KEY_REVOKED, whatever recorded_at claims.",
            "district-k0-revoked",
            first(165, "2026-02-14T23:00:00Z"),
        )
        .received("2026-02-15T00:00:00Z")
        .rejects("KEY_REVOKED"),
    )?;
    g.add(
        Spec::new(
            "invalid-66-received-before-key-valid-from",
            "Signed with district-k2-future (valid from 2026-06-01T00:00:00Z) and recorded 2 minutes after its valid_from, but received 1 s before it.",
            "district-k2-future",
            first(166, "2026-06-01T00:02:00Z"),
        )
        .received("2026-05-31T23:59:59Z")
        .rejects("KEY_NOT_VALID_FOR_FACILITY"),
    )?;

    // Step 8b: recorded_at within its bounds of the receive time, not before the head's.
    g.add(
        Spec::new(
            "valid-24-recorded-at-the-future-bound",
            "Recorded exactly 300 s after the exchange received it (a facility clock running fast): at the bound, accepted.",
            "district-k1",
            after_h3(24, T),
        )
        .head(h3)
        .received("2026-03-02T08:10:00Z"),
    )?;
    g.add(
        Spec::new(
            "valid-25-recorded-at-the-past-bound",
            "Received exactly 7 days (604,800 s) after it was recorded (an offline connector catching up): at the bound, accepted.",
            "district-k1",
            after_h3(25, T),
        )
        .head(h3)
        .received("2026-03-09T08:15:00Z"),
    )?;
    g.add(
        Spec::new(
            "valid-26-recorded-at-equal-to-the-head",
            "Recorded at the same instant as the head (seq 3): recorded_at may repeat, it may not go back.",
            "district-k1",
            after_h3(26, T),
        )
        .head(h3)
        .received(T),
    )?;
    g.add(
        Spec::new(
            "valid-27-clock-skew-under-a-longer-policy",
            "An exchange configured with recorded_at_max_future = 3,600 s accepts an event recorded 30 minutes after it was received.",
            "district-k1",
            after_h3(27, T),
        )
        .head(h3)
        .received("2026-03-02T07:45:00Z")
        .policy(PolicyOverrides {
            recorded_at_max_future_seconds: Some(3600),
            ..PolicyOverrides::default()
        }),
    )?;
    g.add(
        Spec::new(
            "invalid-67-recorded-past-the-future-bound",
            "Recorded 301 s after the exchange received it: 1 s past the 300 s bound. It does not enter the chain.",
            "district-k1",
            after_h3(167, T),
        )
        .head(h3)
        .received("2026-03-02T08:09:59Z")
        .rejects("RECORDED_AT_OUT_OF_RANGE"),
    )?;
    g.add(
        Spec::new(
            "invalid-68-recorded-past-the-past-bound",
            "Received 7 days and 1 s after it was recorded: 1 s past the 604,800 s bound.",
            "district-k1",
            after_h3(168, T),
        )
        .head(h3)
        .received("2026-03-09T08:15:01Z")
        .rejects("RECORDED_AT_OUT_OF_RANGE"),
    )?;
    g.add(
        Spec::new(
            "invalid-69-recorded-before-the-head",
            "Recorded 1 ns before the head (seq 3, recorded 2026-03-02T08:15:00Z), received when recorded: a chain's recorded_at may not go back.",
            "district-k1",
            after_h3(169, "2026-03-02T08:14:59.999999999Z"),
        )
        .head(h3)
        .rejects("RECORDED_AT_DECREASING"),
    )?;
    g.add(
        Spec::new(
            "invalid-70-recorded-at-under-a-shorter-policy",
            "An exchange configured with recorded_at_max_past = 86,400 s refuses an event received 2 days after it was recorded (within the default 7 days).",
            "district-k1",
            after_h3(170, T),
        )
        .head(h3)
        .received("2026-03-04T08:15:00Z")
        .policy(PolicyOverrides {
            recorded_at_max_past_seconds: Some(86_400),
            ..PolicyOverrides::default()
        })
        .rejects("RECORDED_AT_OUT_OF_RANGE"),
    )?;
    g.add(
        Spec::new(
            "invalid-71-clock-before-content",
            "Recorded 10 minutes after it was received, with an 11-digit patient id too: recorded_at (step 8b) is checked before the content (step 9), and the event does not enter the chain.",
            "district-k1",
            json!({"header": header(DISTRICT, 4, &h3.event_hash, 171, T),
                   "record": record("02606200123", "OBSERVATION", hba1c("02606200123", 8.1), &[])}),
        )
        .head(h3)
        .received("2026-03-02T08:05:00Z")
        .rejects("RECORDED_AT_OUT_OF_RANGE"),
    )?;
    g.add(
        Spec::new(
            "invalid-72-chain-before-clock",
            "Seq 6 when the head is seq 3, received 8 days after it was recorded: the chain (step 8) is checked before recorded_at (step 8b).",
            "district-k1",
            json!({"header": header(DISTRICT, 6, &h3.event_hash, 172, T), "record": obs()}),
        )
        .head(h3)
        .received("2026-03-10T08:15:00Z")
        .rejects("SEQUENCE_GAP"),
    )?;
    let mut s = Spec::new(
        "invalid-73-duplicate-resent-a-month-later",
        "Seq 3 sent again byte for byte a month after it was recorded: still a duplicate (the chain check comes first), not out of range.",
        "district-k1",
        json!({"header": header(DISTRICT, 3, &h2.event_hash, 3, T), "record": obs()}),
    )
    .head(h3)
    .received("2026-04-02T08:15:00Z");
    s.expected = ("duplicate", None, None, false);
    g.add(s)?;

    // Step 6: the seq bound.
    let max = (1u64 << 63) - 1;
    let before_max = Head {
        seq: max - 1,
        event_hash: Sha256::digest(b"the district hospital's event at seq 2^63 - 2").to_hex(),
        event_id: event_id(200),
        recorded_at: Some(T.to_owned()),
    };
    let top = g.add(
        Spec::new(
            "valid-28-largest-seq",
            "Seq 2^63 - 1 = 9,223,372,036,854,775,807, the largest a chain may reach, after a head at 2^63 - 2.",
            "district-k1",
            json!({"header": header(DISTRICT, max, &before_max.event_hash, 28, T), "record": obs()}),
        )
        .head(&before_max),
    )?;
    g.add(
        Spec::new(
            "invalid-74-seq-past-2-63",
            "Seq 2^63 = 9,223,372,036,854,775,808 after a head at 2^63 - 1 (valid-28): it would extend the chain, but a seq is at most 2^63 - 1.",
            "district-k1",
            json!({"header": header(DISTRICT, max + 1, &top.event_hash, 174, T), "record": obs()}),
        )
        .head(&top)
        .rejects_header_field("header.seq"),
    )?;

    // Step 10: a correction only of the facility's own record about the same patient.
    g.add(
        Spec::new(
            "invalid-75-correction-of-another-facilitys-record",
            "The provincial hospital supersedes the district hospital's HbA1c (valid-03): it extends the chain, not projected.",
            "provincial-k1",
            json!({"header": header(PROVINCIAL, 2, &p1.event_hash, 175, T), "record": {
                "patient_id": PATIENT_AN, "kind": "OBSERVATION", "occurred_at": "2026-03-02T02:10:00Z",
                "author": "CCHN-009921", "sensitivity": [], "supersedes": event_id(3),
                "content_type": "application/fhir+json", "body": hba1c(PATIENT_AN, 7.9)}}),
        )
        .head(p1)
        .facts(Facts::default())
        .rejects_in_chain("SUPERSEDES_FOREIGN_RECORD"),
    )?;

    // Step 1: the exchange's own log entries are not a payload type a client may send.
    let mut s = Spec::new(
        "invalid-76-ingest-report-payload-type",
        "Correctly signed, but the payload type is the exchange's log-only ingest report.",
        "district-k1",
        json!({"header": header(DISTRICT, 4, &h3.event_hash, 176, T), "record": record(PATIENT_AN, "OBSERVATION", hba1c(PATIENT_AN, 8.1), &[])}),
    )
    .head(h3)
    .rejects("UNKNOWN_PAYLOAD_TYPE");
    s.payload_type = hrx_domain::report::PAYLOAD_TYPE;
    g.add(s)?;
    Ok(())
}
