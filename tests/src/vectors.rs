//! The test-vector files: their schema, how an envelope is made from a vector's input,
//! and how the Rust implementation judges it. The generator (`gen-vectors`) and the
//! vector test both use this module, so that what is generated is what is checked.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail, ensure};
use hrx_domain::chain::ChainHead;
use hrx_domain::consent::{
    self, ConsentEvent, ConsentFact, ConsentPolicy, ConsentState, FacilityFacts, RequestStatus,
};
use hrx_domain::dsse::{Envelope, PublicKey, SigningKey, pae};
use hrx_domain::event::{ConsentGrant, ConsentRequest, Grantee};
use hrx_domain::rejection::Rejection;
use hrx_domain::verify::{
    ClockPolicy, KeyOwner, KeyRecord, Receipt, Verdict, verify_facility_envelope,
};
use hrx_domain::{
    Duration, EventId, FacilityId, KeyId, PatientId, Purpose, RecordKind, SensitivityLabel, Sha256,
    Timestamp, patient,
};
use hrx_proto::codec;
use hrx_proto::v1;
use prost::Message;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `tests/vectors/` of this repository.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub name: String,
    /// Empty for the national root key and for patients' keys.
    pub facility_id: String,
    /// The patient whose own key this is; absent for facility and root keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    pub seed: String,
    pub public_key: String,
    pub key_id: String,
}

impl KeyEntry {
    pub fn signing_key(&self) -> anyhow::Result<SigningKey> {
        let seed: [u8; 32] = hex::decode(&self.seed)?
            .try_into()
            .map_err(|_| anyhow!("seed of {} is not 32 bytes", self.name))?;
        Ok(SigningKey::from_seed(&seed)?)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    pub name: String,
    pub description: String,
    pub context: Context,
    pub input: Input,
    pub envelope: EnvelopeHex,
    pub pae: String,
    pub event_hash: String,
    pub expected: Expected,
}

/// Where a vector's envelope is submitted, which decides the verifier (README: "Which
/// verifier").
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubmittedTo {
    /// Ingest: verified as a facility event (steps 1–10).
    Ingest,
    /// PatientService: verified as a patient statement.
    PatientService,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Which verifier judges the envelope.
    pub submitted_to: SubmittedTo,
    /// The registry's facility and root keys (facility events; empty for statements).
    pub keys: Vec<ContextKey>,
    pub head: Option<Head>,
    /// Overrides of the consent policy's defaults (README: "Context").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyOverrides>,
    /// Facts from the facility's own chain before the event (step 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility_facts: Option<Facts>,
    /// When the exchange received the envelope (RFC 3339). Required for a patient
    /// statement; for a facility event, absent means the header's `recorded_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    /// The patient's consent state when the statement was received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<PatientContext>,
}

impl Context {
    /// Whether the vector is a patient statement rather than a facility event.
    pub fn is_statement(&self) -> bool {
        self.submitted_to == SubmittedTo::PatientService
    }
}

/// Each field absent means the default of [`ConsentPolicy`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attested_max_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standing_window_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_per_day: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_open_per_patient: Option<u32>,
    /// How far after the receive time `recorded_at` may lie (default 300 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at_max_future_seconds: Option<u32>,
    /// How far before the receive time `recorded_at` may lie (default 604,800 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at_max_past_seconds: Option<u32>,
}

/// [`FacilityFacts`] in JSON; absent fields take their defaults (null, false, 0, 0).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    #[serde(default)]
    pub latest_authored: Option<String>,
    #[serde(default)]
    pub attested_the_grant: bool,
    #[serde(default)]
    pub declared_since: u64,
    #[serde(default)]
    pub open_for_patient: u64,
    #[serde(default)]
    pub supersedes_own: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PatientContext {
    pub patient_id: String,
    /// Key id of the patient's active key; null when they have none.
    pub active_key_id: Option<String>,
    /// Ids of every grant the patient has (patient-signed or attested, in any state).
    #[serde(default)]
    pub grants: Vec<String>,
    /// The patient's consent requests still waiting for an answer.
    #[serde(default)]
    pub pending_requests: Vec<PendingRequest>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PendingRequest {
    pub request_event_id: String,
    pub facility_id: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContextKey {
    pub key_id: String,
    pub facility_id: String,
    pub public_key: String,
    pub valid_from: String,
    pub revoked_at: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub seq: u64,
    pub event_hash: String,
    pub event_id: String,
    /// The head event's `recorded_at`; absent: not known, nothing is compared with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub signer: String,
    pub payload_type: String,
    /// The JSON form of a `FacilityEvent`.
    pub event: Option<Value>,
    /// The JSON form of a `PatientStatement` (instead of `event`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<Value>,
    /// How the proof of possession nested in `event` or `statement` was made; rebuilding
    /// it must give that nested envelope byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<ProofInput>,
    pub payload_override: Option<String>,
    pub tamper: Option<Tamper>,
}

/// How a nested proof-of-possession envelope is made (README: "Proofs").
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProofInput {
    pub signer: String,
    pub payload_type: String,
    /// The JSON form of a `PatientKeyProof`.
    pub proof: Option<Value>,
    pub payload_override: Option<String>,
    /// The envelope's key_id when it is not the signer's.
    pub key_id: Option<String>,
    pub tamper: Option<Tamper>,
}

/// A change made after signing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tamper {
    /// "payload" or "signature".
    pub field: String,
    /// XOR `xor` into byte `byte`...
    pub byte: Option<usize>,
    pub xor: Option<u8>,
    /// ...or cut the field to this many bytes.
    pub truncate_to: Option<usize>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeHex {
    pub payload_type: String,
    pub payload: String,
    pub key_id: String,
    pub signature: String,
}

impl EnvelopeHex {
    pub fn from_envelope(e: &Envelope) -> Self {
        Self {
            payload_type: e.payload_type.clone(),
            payload: hex::encode(&e.payload),
            key_id: e.key_id.clone(),
            signature: hex::encode(&e.signature),
        }
    }

    pub fn to_envelope(&self) -> anyhow::Result<Envelope> {
        Ok(Envelope {
            payload_type: self.payload_type.clone(),
            payload: hex::decode(&self.payload)?,
            key_id: self.key_id.clone(),
            signature: hex::decode(&self.signature)?,
        })
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// "accepted", "duplicate" or "rejected".
    pub verdict: String,
    pub reason: Option<String>,
    pub field: Option<String>,
    pub extends_chain: bool,
}

/// Loads `keys.json` and every vector, sorted by name.
pub fn load() -> anyhow::Result<(KeyFile, Vec<Vector>)> {
    let dir = dir();
    let keys: KeyFile = serde_json::from_slice(&std::fs::read(dir.join("keys.json"))?)?;
    let mut vectors = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json")
            && path.file_name() != Some("keys.json".as_ref())
        {
            let v: Vector = serde_json::from_slice(&std::fs::read(&path)?)
                .with_context(|| format!("reading {}", path.display()))?;
            vectors.push(v);
        }
    }
    vectors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((keys, vectors))
}

fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or_default()
}

fn time_field(v: &Value, name: &str) -> anyhow::Result<Option<prost_types::Timestamp>> {
    match v.get(name).and_then(Value::as_str) {
        None => Ok(None),
        Some(s) => Ok(Some(codec::timestamp(
            Timestamp::parse_rfc3339(s).with_context(|| format!("{name} is not RFC 3339"))?,
        ))),
    }
}

fn hex_field(v: &Value, name: &str) -> anyhow::Result<Vec<u8>> {
    hex::decode(str_field(v, name)).with_context(|| format!("{name} is not hex"))
}

/// A `google.protobuf.Duration` given as `<name>_seconds` (whole seconds).
fn duration_field(v: &Value, name: &str) -> Option<prost_types::Duration> {
    v.get(format!("{name}_seconds"))
        .and_then(Value::as_i64)
        .map(|s| prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
}

fn enum_list<T>(
    v: &Value,
    name: &str,
    parse: fn(&str) -> Option<T>,
    code: fn(T) -> i32,
) -> anyhow::Result<Vec<i32>> {
    let Some(items) = v.get(name).and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|i| {
            let s = i.as_str().unwrap_or_default();
            // "UNSPECIFIED" encodes as 0 so that vectors can carry it on purpose.
            if s == "UNSPECIFIED" {
                Ok(0)
            } else {
                parse(s)
                    .map(code)
                    .ok_or_else(|| anyhow!("unknown {name} value {s}"))
            }
        })
        .collect()
}

fn evidence(v: Option<&Value>) -> anyhow::Result<Option<v1::ConsentEvidence>> {
    v.filter(|e| !e.is_null())
        .map(|e| {
            Ok(v1::ConsentEvidence {
                form_id: str_field(e, "form_id").to_owned(),
                sha256: hex_field(e, "sha256")?,
            })
        })
        .transpose()
}

/// A nested `SignedEnvelope` in JSON form: `payload` and `signature` in hex.
fn envelope_field(v: Option<&Value>) -> anyhow::Result<Option<v1::SignedEnvelope>> {
    v.filter(|e| !e.is_null())
        .map(|e| {
            Ok(v1::SignedEnvelope {
                payload_type: str_field(e, "payload_type").to_owned(),
                payload: hex_field(e, "payload")?,
                key_id: str_field(e, "key_id").to_owned(),
                signature: hex_field(e, "signature")?,
            })
        })
        .transpose()
}

fn grant_from_json(g: &Value) -> anyhow::Result<v1::ConsentGrant> {
    let grantee = if let Some(f) = g.get("grantee_facility_id").and_then(Value::as_str) {
        Some(v1::consent_grant::Grantee::GranteeFacilityId(f.to_owned()))
    } else {
        g.get("any_facility")
            .and_then(Value::as_bool)
            .map(v1::consent_grant::Grantee::AnyFacility)
    };
    Ok(v1::ConsentGrant {
        patient_id: str_field(g, "patient_id").to_owned(),
        purposes: enum_list(g, "purposes", Purpose::from_name, Purpose::code)?,
        kinds: enum_list(g, "kinds", RecordKind::from_name, RecordKind::code)?,
        include_sensitive: enum_list(
            g,
            "include_sensitive",
            SensitivityLabel::from_name,
            SensitivityLabel::code,
        )?,
        data_from: time_field(g, "data_from")?,
        data_until: time_field(g, "data_until")?,
        expires_at: time_field(g, "expires_at")?,
        evidence: evidence(g.get("evidence"))?,
        request_event_id: str_field(g, "request_event_id").to_owned(),
        grantee,
    })
}

fn revocation_from_json(r: &Value) -> anyhow::Result<v1::ConsentRevocation> {
    Ok(v1::ConsentRevocation {
        patient_id: str_field(r, "patient_id").to_owned(),
        grant_event_id: str_field(r, "grant_event_id").to_owned(),
        evidence: evidence(r.get("evidence"))?,
    })
}

/// The `FacilityEvent` described by a vector's `input.event` (README: "the JSON form").
pub fn event_from_json(v: &Value) -> anyhow::Result<v1::FacilityEvent> {
    use v1::facility_event::Body;
    let header = v
        .get("header")
        .map(|h| -> anyhow::Result<_> {
            Ok(v1::FacilityEventHeader {
                event_id: str_field(h, "event_id").to_owned(),
                facility_id: str_field(h, "facility_id").to_owned(),
                seq: h.get("seq").and_then(Value::as_u64).unwrap_or_default(),
                prev_hash: hex_field(h, "prev_hash")?,
                recorded_at: time_field(h, "recorded_at")?,
            })
        })
        .transpose()?;
    let body = if let Some(r) = v.get("record") {
        let kind = str_field(r, "kind");
        Some(Body::Record(v1::Record {
            patient_id: str_field(r, "patient_id").to_owned(),
            kind: if kind == "UNSPECIFIED" {
                0
            } else {
                RecordKind::from_name(kind)
                    .map(RecordKind::code)
                    .ok_or_else(|| anyhow!("unknown kind"))?
            },
            occurred_at: time_field(r, "occurred_at")?,
            author: str_field(r, "author").to_owned(),
            sensitivity: enum_list(
                r,
                "sensitivity",
                SensitivityLabel::from_name,
                SensitivityLabel::code,
            )?,
            supersedes: str_field(r, "supersedes").to_owned(),
            content_type: str_field(r, "content_type").to_owned(),
            body: str_field(r, "body").as_bytes().to_vec(),
        }))
    } else if let Some(g) = v.get("consent_grant") {
        Some(Body::ConsentGrant(grant_from_json(g)?))
    } else if let Some(r) = v.get("consent_revocation") {
        Some(Body::ConsentRevocation(revocation_from_json(r)?))
    } else if let Some(e) = v.get("patient_key_enrollment") {
        Some(Body::PatientKeyEnrollment(v1::PatientKeyEnrollment {
            patient_id: str_field(e, "patient_id").to_owned(),
            public_key: hex_field(e, "public_key")?,
            proof: envelope_field(e.get("proof"))?,
        }))
    } else if let Some(r) = v.get("consent_request") {
        Some(Body::ConsentRequest(v1::ConsentRequest {
            patient_id: str_field(r, "patient_id").to_owned(),
            purposes: enum_list(r, "purposes", Purpose::from_name, Purpose::code)?,
            kinds: enum_list(r, "kinds", RecordKind::from_name, RecordKind::code)?,
            data_from: time_field(r, "data_from")?,
            data_until: time_field(r, "data_until")?,
            duration: duration_field(r, "duration"),
            reason: str_field(r, "reason").to_owned(),
            include_sensitive: enum_list(
                r,
                "include_sensitive",
                SensitivityLabel::from_name,
                SensitivityLabel::code,
            )?,
        }))
    } else {
        v.get("break_glass").map(|b| {
            Body::BreakGlass(v1::BreakGlassDeclaration {
                patient_id: str_field(b, "patient_id").to_owned(),
                reason: str_field(b, "reason").to_owned(),
                clinician: str_field(b, "clinician").to_owned(),
                duration: duration_field(b, "duration"),
            })
        })
    };
    Ok(v1::FacilityEvent { header, body })
}

/// The `PatientStatement` described by a vector's `input.statement`.
pub fn statement_from_json(v: &Value) -> anyhow::Result<v1::PatientStatement> {
    use v1::patient_statement::Body;
    let header = v
        .get("header")
        .map(|h| -> anyhow::Result<_> {
            Ok(v1::PatientStatementHeader {
                statement_id: str_field(h, "statement_id").to_owned(),
                patient_id: str_field(h, "patient_id").to_owned(),
                public_key: hex_field(h, "public_key")?,
                signed_at: time_field(h, "signed_at")?,
            })
        })
        .transpose()?;
    let body = if let Some(g) = v.get("consent_grant") {
        Some(Body::ConsentGrant(grant_from_json(g)?))
    } else if let Some(r) = v.get("consent_revocation") {
        Some(Body::ConsentRevocation(revocation_from_json(r)?))
    } else if let Some(d) = v.get("consent_decline") {
        Some(Body::ConsentDecline(v1::ConsentDecline {
            request_event_id: str_field(d, "request_event_id").to_owned(),
        }))
    } else if let Some(k) = v.get("key_rotation") {
        Some(Body::KeyRotation(v1::PatientKeyRotation {
            new_public_key: hex_field(k, "new_public_key")?,
            proof: envelope_field(k.get("proof"))?,
        }))
    } else {
        v.get("key_revocation").map(|k| {
            Body::KeyRevocation(v1::PatientKeyRevocation {
                reason: str_field(k, "reason").to_owned(),
            })
        })
    };
    Ok(v1::PatientStatement { header, body })
}

/// The `PatientKeyProof` described by a proof's `proof` field.
pub fn key_proof_from_json(v: &Value) -> anyhow::Result<v1::PatientKeyProof> {
    Ok(v1::PatientKeyProof {
        patient_id: str_field(v, "patient_id").to_owned(),
        public_key: hex_field(v, "public_key")?,
        facility_id: str_field(v, "facility_id").to_owned(),
        proved_at: time_field(v, "proved_at")?,
    })
}

fn key_entry<'k>(keys: &'k KeyFile, name: &str) -> anyhow::Result<&'k KeyEntry> {
    keys.keys
        .iter()
        .find(|k| k.name == name)
        .ok_or_else(|| anyhow!("no key named {name}"))
}

/// Signs `payload` under `payload_type` with the named key and applies `tamper` after
/// signing. Signs with ring directly rather than `SigningKey::sign`, because vectors also
/// need signatures over payload types the domain refuses to sign.
fn sign_envelope(
    keys: &KeyFile,
    signer: &str,
    payload_type: &str,
    payload: Vec<u8>,
    key_id: Option<&str>,
    tamper: Option<&Tamper>,
) -> anyhow::Result<Envelope> {
    let entry = key_entry(keys, signer)?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&hex::decode(&entry.seed)?)
        .map_err(|_| anyhow!("seed of {} is not a valid Ed25519 seed", entry.name))?;
    let signature = pair.sign(&pae(payload_type, &payload)).as_ref().to_vec();
    let public_key: [u8; 32] = pair.public_key().as_ref().try_into()?;
    let mut env = Envelope {
        payload_type: payload_type.to_owned(),
        payload,
        key_id: key_id.map_or_else(
            || KeyId::of_public_key(&public_key).to_string(),
            str::to_owned,
        ),
        signature,
    };
    if let Some(t) = tamper {
        let target = match t.field.as_str() {
            "payload" => &mut env.payload,
            "signature" => &mut env.signature,
            other => bail!("cannot tamper with {other}"),
        };
        if let (Some(byte), Some(xor)) = (t.byte, t.xor) {
            *target
                .get_mut(byte)
                .ok_or_else(|| anyhow!("tamper byte out of range"))? ^= xor;
        }
        if let Some(n) = t.truncate_to {
            target.truncate(n);
        }
    }
    Ok(env)
}

/// Makes the proof-of-possession envelope a [`ProofInput`] describes, in its JSON form.
pub fn build_proof(p: &ProofInput, keys: &KeyFile) -> anyhow::Result<EnvelopeHex> {
    let payload = match (&p.payload_override, &p.proof) {
        (Some(hex_payload), _) => hex::decode(hex_payload)?,
        (None, Some(proof)) => key_proof_from_json(proof)?.encode_to_vec(),
        (None, None) => bail!("a proof needs a proof or a payload_override"),
    };
    let env = sign_envelope(
        keys,
        &p.signer,
        &p.payload_type,
        payload,
        p.key_id.as_deref(),
        p.tamper.as_ref(),
    )?;
    Ok(EnvelopeHex::from_envelope(&env))
}

/// The nested proof envelope of a vector's event or statement, if it has one.
fn nested_proof(input: &Input) -> Option<&Value> {
    let body = input.event.as_ref().or(input.statement.as_ref())?;
    ["patient_key_enrollment", "key_rotation"]
        .iter()
        .find_map(|b| body.get(b))
        .and_then(|b| b.get("proof"))
        .filter(|p| !p.is_null())
}

/// Makes the envelope a vector's input describes (README: "How the envelope is made").
pub fn build_envelope(input: &Input, keys: &KeyFile) -> anyhow::Result<Envelope> {
    if let Some(recipe) = &input.proof {
        let built = serde_json::to_value(build_proof(recipe, keys)?)?;
        ensure!(
            nested_proof(input) == Some(&built),
            "the nested proof is not what input.proof makes"
        );
    }
    let payload = match (&input.payload_override, &input.event, &input.statement) {
        (Some(hex_payload), _, _) => hex::decode(hex_payload)?,
        (None, Some(event), None) => event_from_json(event)?.encode_to_vec(),
        (None, None, Some(statement)) => statement_from_json(statement)?.encode_to_vec(),
        (None, Some(_), Some(_)) => bail!("a vector has an event or a statement, not both"),
        (None, None, None) => bail!("a vector needs an event, a statement or a payload_override"),
    };
    sign_envelope(
        keys,
        &input.signer,
        &input.payload_type,
        payload,
        None,
        input.tamper.as_ref(),
    )
}

/// The keyring a vector's context describes.
pub fn keyring(ctx: &Context) -> anyhow::Result<Vec<KeyRecord>> {
    ctx.keys
        .iter()
        .map(|k| {
            let public_key = PublicKey::from_slice(&hex::decode(&k.public_key)?)
                .ok_or_else(|| anyhow!("public key is not 32 bytes"))?;
            Ok(KeyRecord {
                public_key,
                owner: if k.facility_id.is_empty() {
                    KeyOwner::Root
                } else {
                    KeyOwner::Facility(FacilityId::parse(&k.facility_id)?)
                },
                valid_from: Timestamp::parse_rfc3339(&k.valid_from)?,
                revoked_at: k
                    .revoked_at
                    .as_deref()
                    .map(Timestamp::parse_rfc3339)
                    .transpose()?,
                // The registry as the exchange knew it when it received the event: every
                // key of the context counts (receipts carry no registry seq).
                registered_seq: 0,
                revoked_seq: None,
            })
        })
        .collect()
}

/// The chain head a vector's context describes.
pub fn head(ctx: &Context) -> anyhow::Result<ChainHead> {
    Ok(match &ctx.head {
        None => ChainHead::EMPTY,
        Some(h) => ChainHead {
            seq: h.seq,
            event_hash: Sha256::from_hex(&h.event_hash)?,
            event_id: Some(EventId::parse(&h.event_id)?),
            recorded_at: h
                .recorded_at
                .as_deref()
                .map(Timestamp::parse_rfc3339)
                .transpose()?,
        },
    })
}

/// When the exchange received the envelope, as the context says: its `received_at`,
/// or for a facility event without one the header's `recorded_at`. `None` when neither
/// is there (a payload without a readable header: verification fails before any step
/// that needs the time).
pub fn received_at(ctx: &Context, envelope: &Envelope) -> anyhow::Result<Option<Timestamp>> {
    if let Some(t) = &ctx.received_at {
        return Ok(Some(Timestamp::parse_rfc3339(t)?));
    }
    if ctx.is_statement() {
        bail!("a statement's context needs received_at");
    }
    Ok(codec::decode_facility_event(&envelope.payload)
        .ok()
        .and_then(|e| e.header)
        .and_then(|h| h.recorded_at)
        .and_then(|t| Timestamp::new(t.seconds, t.nanos).ok()))
}

/// The receipt of a facility event in a vector's context ([`received_at`]; the
/// earliest instant when there is none, which no step reached then depends on).
pub fn receipt(ctx: &Context, envelope: &Envelope) -> anyhow::Result<Receipt> {
    Ok(Receipt {
        received_at: received_at(ctx, envelope)?.unwrap_or(Timestamp::MIN),
        registry_seq: None,
    })
}

/// The bounds of `recorded_at` around the receive time: the defaults, overridden.
pub fn clock_policy(ctx: &Context) -> ClockPolicy {
    let mut p = ClockPolicy::default();
    let secs = |n: u32| Duration::from_secs(i64::from(n)).expect("u32 seconds are a duration");
    if let Some(o) = &ctx.policy {
        if let Some(n) = o.recorded_at_max_future_seconds {
            p.max_future = secs(n);
        }
        if let Some(n) = o.recorded_at_max_past_seconds {
            p.max_past = secs(n);
        }
    }
    p
}

fn days(n: u32) -> Duration {
    Duration::from_secs(i64::from(n) * 24 * 60 * 60).expect("whole days are a duration")
}

/// The consent policy a vector's context describes: the defaults, overridden.
pub fn policy(ctx: &Context) -> ConsentPolicy {
    let mut p = ConsentPolicy::default();
    if let Some(o) = &ctx.policy {
        if let Some(d) = o.attested_max_days {
            p.attested_max = days(d);
        }
        if let Some(d) = o.standing_window_days {
            p.standing_window = days(d);
        }
        if let Some(n) = o.break_glass_per_day {
            p.break_glass_per_day = n;
        }
        if let Some(n) = o.break_glass_open_per_patient {
            p.break_glass_open_per_patient = n;
        }
    }
    p
}

/// The facility facts a vector's context gives (defaults when it gives none).
pub fn facility_facts(ctx: &Context) -> anyhow::Result<FacilityFacts> {
    let f = ctx.facility_facts.clone().unwrap_or_default();
    Ok(FacilityFacts {
        latest_authored: f
            .latest_authored
            .as_deref()
            .map(Timestamp::parse_rfc3339)
            .transpose()?,
        attested_the_grant: f.attested_the_grant,
        declared_since: f.declared_since,
        open_for_patient: f.open_for_patient,
        supersedes_own: f.supersedes_own,
    })
}

/// Placeholder content of the grants and requests a context lists by id only: only
/// their ids, patient and requesting facility matter to a statement's checks.
fn placeholder_grant(patient: &PatientId, expires_at: Timestamp) -> ConsentGrant {
    ConsentGrant {
        patient_id: patient.clone(),
        grantee: Grantee::AnyFacility,
        purposes: vec![Purpose::Treatment],
        kinds: vec![],
        include_sensitive: vec![],
        data_from: None,
        data_until: None,
        expires_at,
        evidence: None,
        request: None,
    }
}

fn placeholder_request(patient: &PatientId) -> ConsentRequest {
    ConsentRequest {
        patient_id: patient.clone(),
        purposes: vec![Purpose::Treatment],
        kinds: vec![],
        data_from: None,
        data_until: None,
        duration: days(30),
        reason: "placeholder".into(),
        include_sensitive: vec![],
    }
}

/// The consent state of `patient` when the exchange received a statement at
/// `received_at`, as the context describes it (README: "Context"), folded by the
/// domain from consent events made to match. Any patient but the context's has none.
pub fn consent_state(
    ctx: &Context,
    patient: &PatientId,
    received_at: Timestamp,
    keys: &KeyFile,
    policy: &ConsentPolicy,
) -> anyhow::Result<ConsentState> {
    let Some(p) = ctx
        .patient
        .as_ref()
        .filter(|p| p.patient_id == patient.as_str())
    else {
        return Ok(ConsentState::default());
    };
    let before = |secs: i64| {
        received_at
            .checked_sub(Duration::from_secs(secs).expect("positive"))
            .ok_or_else(|| anyhow!("received_at too early"))
    };
    let enrolled_at = before(2 * 24 * 3600)?;
    let granted_at = before(24 * 3600)?;
    let requested_at = before(3600)?;
    let enrolling = FacilityId::parse("00000")?;
    let mut events = Vec::new();
    if let Some(kid) = &p.active_key_id {
        let entry = keys
            .keys
            .iter()
            .find(|k| &k.key_id == kid)
            .ok_or_else(|| anyhow!("active_key_id {kid} is not in keys.json"))?;
        let key = PublicKey::from_slice(&hex::decode(&entry.public_key)?)
            .ok_or_else(|| anyhow!("public key of {} is not 32 bytes", entry.name))?;
        events.push(ConsentEvent {
            id: EventId::from_uuid(uuid::Uuid::from_u128(1)),
            received_at: enrolled_at,
            fact: ConsentFact::KeyEnrolled {
                facility: enrolling.clone(),
                key,
            },
        });
    }
    let far = received_at
        .checked_add(days(365))
        .ok_or_else(|| anyhow!("received_at too late"))?;
    for g in &p.grants {
        events.push(ConsentEvent {
            id: EventId::parse(g)?,
            received_at: granted_at,
            fact: ConsentFact::AttestedGrant {
                facility: enrolling.clone(),
                grant: placeholder_grant(patient, far),
            },
        });
    }
    for r in &p.pending_requests {
        events.push(ConsentEvent {
            id: EventId::parse(&r.request_event_id)?,
            received_at: requested_at,
            fact: ConsentFact::Request {
                facility: FacilityId::parse(&r.facility_id)?,
                request: placeholder_request(patient),
            },
        });
    }
    let state = ConsentState::fold(events);
    // The fold must give back exactly what the context says.
    ensure!(
        state.active_key().map(|k| k.key_id().to_string()) == p.active_key_id,
        "the folded state's active key is not the context's"
    );
    ensure!(
        state.grants.len() == p.grants.len(),
        "grant ids in the context are not distinct"
    );
    ensure!(
        state.requests.len() == p.pending_requests.len()
            && state
                .requests
                .iter()
                .all(|r| r.status(received_at, policy) == RequestStatus::Pending),
        "the context's requests are not all pending"
    );
    Ok(state)
}

fn accepted(extends_chain: bool) -> Expected {
    Expected {
        verdict: "accepted".into(),
        reason: None,
        field: None,
        extends_chain,
    }
}

fn rejected(rejection: &Rejection, extends_chain: bool) -> Expected {
    Expected {
        verdict: "rejected".into(),
        reason: Some(rejection.reason().name().to_owned()),
        field: rejection.field().map(str::to_owned),
        extends_chain,
    }
}

/// Judges an envelope in a vector's context with the Rust implementation: a facility
/// event (steps 1–10), or a patient statement when it is submitted to PatientService.
/// `keys` resolves the patient's active key id of a statement's context.
pub fn evaluate(envelope: Envelope, ctx: &Context, keys: &KeyFile) -> anyhow::Result<Expected> {
    if ctx.is_statement() {
        evaluate_statement(&envelope, ctx, keys)
    } else {
        evaluate_facility_event(envelope, ctx)
    }
}

fn evaluate_facility_event(envelope: Envelope, ctx: &Context) -> anyhow::Result<Expected> {
    evaluate_facility_steps(envelope, ctx, true)
}

/// Steps 1–9 only of a facility event (no facility facts): what a verifier that sees
/// the envelope, the keys, the head and the receive time, such as `hrx verify`, can
/// say. `None` for a patient statement.
pub fn evaluate_through_content(
    envelope: Envelope,
    ctx: &Context,
) -> anyhow::Result<Option<Expected>> {
    if ctx.is_statement() {
        return Ok(None);
    }
    evaluate_facility_steps(envelope, ctx, false).map(Some)
}

fn evaluate_facility_steps(
    envelope: Envelope,
    ctx: &Context,
    with_facts: bool,
) -> anyhow::Result<Expected> {
    let receipt = receipt(ctx, &envelope)?;
    let verdict = verify_facility_envelope(
        envelope,
        &keyring(ctx)?,
        head(ctx)?,
        &receipt,
        &clock_policy(ctx),
        codec::decode_facility_event,
    );
    Ok(match verdict {
        Verdict::Accepted(_) if !with_facts => accepted(true),
        Verdict::Accepted(event) => {
            match consent::check_facility_event(
                &policy(ctx),
                &event.header,
                &event.body,
                &facility_facts(ctx)?,
            ) {
                Ok(()) => accepted(true),
                Err(rejection) => rejected(&rejection, true),
            }
        }
        Verdict::Duplicate => Expected {
            verdict: "duplicate".into(),
            reason: None,
            field: None,
            extends_chain: false,
        },
        Verdict::Rejected {
            rejection,
            extends_chain,
        } => rejected(&rejection, extends_chain),
    })
}

fn evaluate_statement(
    envelope: &Envelope,
    ctx: &Context,
    keys: &KeyFile,
) -> anyhow::Result<Expected> {
    let received_at =
        received_at(ctx, envelope)?.ok_or_else(|| anyhow!("a statement needs received_at"))?;
    let statement =
        match patient::verify_statement(envelope, received_at, codec::decode_patient_statement) {
            Ok(s) => s,
            Err(rejection) => return Ok(rejected(&rejection, false)),
        };
    let policy = policy(ctx);
    let state = consent_state(
        ctx,
        &statement.header.patient_id,
        received_at,
        keys,
        &policy,
    )?;
    Ok(
        match state.check_statement(&statement, received_at, &policy) {
            Ok(()) => accepted(false),
            Err(rejection) => rejected(&rejection, false),
        },
    )
}
