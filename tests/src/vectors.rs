//! The test-vector files: their schema, how an envelope is made from a vector's input,
//! and how the Rust implementation judges it. The generator (`gen-vectors`) and the
//! vector test both use this module, so that what is generated is what is checked.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use hrx_domain::KeyId;
use hrx_domain::chain::ChainHead;
use hrx_domain::dsse::{Envelope, PublicKey, SigningKey, pae};
use hrx_domain::verify::{KeyOwner, KeyRecord, Verdict, verify_facility_envelope};
use hrx_domain::{EventId, FacilityId, Purpose, RecordKind, SensitivityLabel, Sha256, Timestamp};
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
pub struct KeyFile {
    pub keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct KeyEntry {
    pub name: String,
    /// Empty for the national root key.
    pub facility_id: String,
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

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Context {
    pub keys: Vec<ContextKey>,
    pub head: Option<Head>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ContextKey {
    pub key_id: String,
    pub facility_id: String,
    pub public_key: String,
    pub valid_from: String,
    pub revoked_at: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Head {
    pub seq: u64,
    pub event_hash: String,
    pub event_id: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Input {
    pub signer: String,
    pub payload_type: String,
    pub event: Option<Value>,
    pub payload_override: Option<String>,
    pub tamper: Option<Tamper>,
}

/// A change made after signing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
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
    v.map(|e| {
        Ok(v1::ConsentEvidence {
            form_id: str_field(e, "form_id").to_owned(),
            sha256: hex_field(e, "sha256")?,
        })
    })
    .transpose()
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
        let grantee = if let Some(f) = g.get("grantee_facility_id").and_then(Value::as_str) {
            Some(v1::consent_grant::Grantee::GranteeFacilityId(f.to_owned()))
        } else {
            g.get("any_facility")
                .and_then(Value::as_bool)
                .map(v1::consent_grant::Grantee::AnyFacility)
        };
        Some(Body::ConsentGrant(v1::ConsentGrant {
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
            grantee,
        }))
    } else if let Some(r) = v.get("consent_revocation") {
        Some(Body::ConsentRevocation(v1::ConsentRevocation {
            patient_id: str_field(r, "patient_id").to_owned(),
            grant_event_id: str_field(r, "grant_event_id").to_owned(),
            evidence: evidence(r.get("evidence"))?,
        }))
    } else {
        v.get("break_glass").map(|b| {
            Body::BreakGlass(v1::BreakGlassDeclaration {
                patient_id: str_field(b, "patient_id").to_owned(),
                reason: str_field(b, "reason").to_owned(),
                clinician: str_field(b, "clinician").to_owned(),
                duration: b.get("duration_seconds").and_then(Value::as_i64).map(|s| {
                    prost_types::Duration {
                        seconds: s,
                        nanos: 0,
                    }
                }),
            })
        })
    };
    Ok(v1::FacilityEvent { header, body })
}

/// Makes the envelope a vector's input describes (README: "How the envelope is made").
/// Signs with ring directly rather than `SigningKey::sign`, because vectors also need
/// signatures over payload types the domain refuses to sign.
pub fn build_envelope(input: &Input, keys: &KeyFile) -> anyhow::Result<Envelope> {
    let entry = keys
        .keys
        .iter()
        .find(|k| k.name == input.signer)
        .ok_or_else(|| anyhow!("no key named {}", input.signer))?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&hex::decode(&entry.seed)?)
        .map_err(|_| anyhow!("seed of {} is not a valid Ed25519 seed", entry.name))?;
    let payload = match (&input.payload_override, &input.event) {
        (Some(hex_payload), _) => hex::decode(hex_payload)?,
        (None, Some(event)) => event_from_json(event)?.encode_to_vec(),
        (None, None) => bail!("a vector needs an event or a payload_override"),
    };
    let signature = pair
        .sign(&pae(&input.payload_type, &payload))
        .as_ref()
        .to_vec();
    let public_key: [u8; 32] = pair.public_key().as_ref().try_into()?;
    let mut env = Envelope {
        payload_type: input.payload_type.clone(),
        payload,
        key_id: KeyId::of_public_key(&public_key).to_string(),
        signature,
    };
    if let Some(t) = &input.tamper {
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
        },
    })
}

/// Judges an envelope in a vector's context with the Rust implementation.
pub fn evaluate(envelope: Envelope, ctx: &Context) -> anyhow::Result<Expected> {
    let verdict = verify_facility_envelope(
        envelope,
        &keyring(ctx)?,
        head(ctx)?,
        codec::decode_facility_event,
    );
    Ok(match verdict {
        Verdict::Accepted(_) => Expected {
            verdict: "accepted".into(),
            reason: None,
            field: None,
            extends_chain: true,
        },
        Verdict::Duplicate => Expected {
            verdict: "duplicate".into(),
            reason: None,
            field: None,
            extends_chain: false,
        },
        Verdict::Rejected {
            rejection,
            extends_chain,
        } => Expected {
            verdict: "rejected".into(),
            reason: Some(rejection.reason().name().to_owned()),
            field: rejection.field().map(str::to_owned),
            extends_chain,
        },
    })
}
