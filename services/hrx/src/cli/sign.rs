//! `hrx sign`: a FHIR JSON file plus header options → a signed facility-event envelope.
//!
//! Kind, patient and clinical time are read from the resource when not given. The event
//! is checked with the same code that verifies it at the exchange before it is signed,
//! so a facility does not sign something the exchange will refuse.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use hrx_domain::dsse::PayloadType;
use hrx_domain::event::FHIR_JSON;
use hrx_domain::{EventId, FacilityId, PatientId, RecordKind, SensitivityLabel, Sha256, Timestamp};
use hrx_proto::{codec, v1};
use prost::Message as _;
use serde_json::Value;

use super::fhir::{infer_kind, infer_patient, infer_time};
use crate::files::{envelope_to_json, parse_envelope, read_private_key, write_new};

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The FHIR R4 resource (JSON) to sign.
    file: PathBuf,
    /// The facility's private key (PKCS#8 PEM from `hrx keygen`).
    #[arg(long)]
    key: PathBuf,
    /// The emitting facility (5 digits).
    #[arg(long)]
    facility: String,
    /// Where to write the DSSE JSON envelope.
    #[arg(long, short)]
    out: PathBuf,
    /// The facility's previous envelope: sets --seq and --prev-hash from it.
    #[arg(long, conflicts_with_all = ["seq", "prev_hash"])]
    after: Option<PathBuf>,
    /// This event's sequence number in the facility's chain.
    #[arg(long)]
    seq: Option<u64>,
    /// event_hash of the facility's previous event (hex); zeros for seq 1.
    #[arg(long)]
    prev_hash: Option<String>,
    /// Clinician who authored the record.
    #[arg(long)]
    author: String,
    /// Patient (12 digits); default: from the resource's subject or patient.
    #[arg(long)]
    patient: Option<String>,
    /// Record kind (e.g. OBSERVATION); default: from the resource's resourceType.
    #[arg(long)]
    kind: Option<String>,
    /// Clinical time (RFC 3339); default: from the resource (effectiveDateTime, …).
    #[arg(long)]
    occurred_at: Option<String>,
    /// Sensitivity label (HIV, MENTAL_HEALTH, REPRODUCTIVE, SUBSTANCE_USE, GENETIC); repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Event id of the record this one corrects.
    #[arg(long)]
    supersedes: Option<String>,
    /// Event id (UUID); default a new UUIDv7.
    #[arg(long)]
    event_id: Option<String>,
    /// When the facility recorded the event (RFC 3339); default now.
    #[arg(long)]
    recorded_at: Option<String>,
}

fn time_arg(name: &str, value: Option<&str>) -> anyhow::Result<Option<Timestamp>> {
    value
        .map(Timestamp::parse_rfc3339)
        .transpose()
        .map_err(|e| anyhow!("--{name}: {e}"))
}

pub fn run(a: SignArgs) -> anyhow::Result<ExitCode> {
    let key = read_private_key(&a.key)?;
    let body =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let resource: Value = serde_json::from_slice(&body)
        .map_err(|e| anyhow!("{} is not JSON: {e}", a.file.display()))?;
    let facility = FacilityId::parse(&a.facility).map_err(|e| anyhow!("--facility: {e}"))?;

    let (seq, prev_hash) = match &a.after {
        Some(prev) => {
            let bytes =
                std::fs::read(prev).with_context(|| format!("cannot read {}", prev.display()))?;
            let env = parse_envelope(&bytes).map_err(|e| anyhow!("{}: {e}", prev.display()))?;
            let event = codec::decode_facility_event(&env.payload)
                .map_err(|_| anyhow!("{} does not hold a facility event", prev.display()))?;
            let header = event
                .header
                .ok_or_else(|| anyhow!("{} has no header", prev.display()))?;
            (header.seq + 1, env.event_hash())
        }
        None => {
            let seq = a
                .seq
                .ok_or_else(|| anyhow!("give --seq (and --prev-hash), or --after"))?;
            let prev = match (&a.prev_hash, seq) {
                (Some(h), _) => Sha256::from_hex(h).map_err(|e| anyhow!("--prev-hash: {e}"))?,
                (None, 1) => Sha256::ZERO,
                (None, _) => bail!("--prev-hash is required after seq 1 (or use --after)"),
            };
            (seq, prev)
        }
    };

    let kind = match &a.kind {
        Some(k) => {
            RecordKind::from_name(k).ok_or_else(|| anyhow!("--kind: unknown record kind"))?
        }
        None => infer_kind(&resource)
            .ok_or_else(|| anyhow!("cannot tell the record kind from resourceType; pass --kind"))?,
    };
    let patient = match &a.patient {
        Some(p) => p.clone(),
        None => infer_patient(&resource)
            .ok_or_else(|| anyhow!("cannot find the patient in subject/patient; pass --patient"))?,
    };
    PatientId::parse(&patient).map_err(|e| anyhow!("patient id: {e}"))?;
    let recorded_at =
        time_arg("recorded-at", a.recorded_at.as_deref())?.unwrap_or_else(Timestamp::now);
    let occurred_at = match time_arg("occurred-at", a.occurred_at.as_deref())? {
        Some(t) => t,
        None => infer_time(&resource).ok_or_else(|| {
            anyhow!("cannot find a full date-time in the resource; pass --occurred-at")
        })?,
    };
    let sensitivity = a
        .labels
        .iter()
        .map(|l| {
            SensitivityLabel::from_name(l)
                .map(SensitivityLabel::code)
                .ok_or_else(|| anyhow!("--label: unknown sensitivity label"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let event_id = match &a.event_id {
        Some(id) => EventId::parse(id).map_err(|e| anyhow!("--event-id: {e}"))?,
        None => EventId::new_v7(),
    };

    let event = v1::FacilityEvent {
        header: Some(v1::FacilityEventHeader {
            event_id: event_id.to_string(),
            facility_id: facility.to_string(),
            seq,
            prev_hash: prev_hash.as_bytes().to_vec(),
            recorded_at: Some(codec::timestamp(recorded_at)),
        }),
        body: Some(v1::facility_event::Body::Record(v1::Record {
            patient_id: patient,
            kind: kind.code(),
            occurred_at: Some(codec::timestamp(occurred_at)),
            author: a.author.clone(),
            sensitivity,
            supersedes: a.supersedes.clone().unwrap_or_default(),
            content_type: FHIR_JSON.to_owned(),
            body,
        })),
    };
    let payload = event.encode_to_vec();
    check_before_signing(&payload)?;
    let envelope = key.sign(PayloadType::FacilityEvent, payload);
    write_new(&a.out, envelope_to_json(&envelope).as_bytes(), 0o644)?;
    eprintln!(
        "signed {kind} event {event_id} as facility {facility} seq {seq} with key {}",
        key.key_id()
    );
    println!("{}", envelope.event_hash());
    Ok(ExitCode::SUCCESS)
}

/// Runs the exchange's own header and content checks on the payload.
fn check_before_signing(payload: &[u8]) -> anyhow::Result<()> {
    let event = codec::decode_facility_event(payload).expect("we just encoded it");
    let header = hrx_domain::event::FacilityHeader::parse(&event.header.expect("set above"))
        .map_err(|r| anyhow!("refusing to sign: {r}"))?;
    hrx_domain::content::check_body(&header, &event.body.expect("set above"))
        .map_err(|r| anyhow!("refusing to sign: {r}"))?;
    Ok(())
}
