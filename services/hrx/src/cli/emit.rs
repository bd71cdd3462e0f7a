//! `hrx emit`: signs FHIR files as a registered facility of a running node (keeping the
//! facility's seq and prev hash, learnt from the node) and submits them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use hrx_domain::event::FHIR_JSON;
use hrx_domain::{FacilityId, Reason, Timestamp};
use hrx_node::client::FacilityClient;
use hrx_proto::{codec, v1};
use serde_json::Value;

use super::EXIT_REJECTED;
use super::fhir::{infer_kind, infer_patient, infer_time};
use super::serve::running_node;

#[derive(clap::Args, Debug)]
pub struct EmitArgs {
    /// The node's data directory (holds the facility's key and certificate).
    #[arg(long, default_value = "hrx-data", env = "HRX_DATA_DIR")]
    data_dir: PathBuf,
    /// The emitting facility (registered with `hrx registry facility add`).
    #[arg(long)]
    facility: String,
    /// Clinician who authored the records.
    #[arg(long)]
    author: String,
    /// FHIR R4 resources (JSON), one record each.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(a: EmitArgs) -> anyhow::Result<ExitCode> {
    let facility = FacilityId::parse(&a.facility).map_err(|e| anyhow!("--facility: {e}"))?;
    let addr = running_node(&a.data_dir)?;
    let mut records = Vec::new();
    for path in &a.files {
        let body =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let resource: Value = serde_json::from_slice(&body)
            .map_err(|e| anyhow!("{} is not JSON: {e}", path.display()))?;
        let kind = infer_kind(&resource)
            .ok_or_else(|| anyhow!("{}: resourceType is not one hrx carries", path.display()))?;
        let patient = infer_patient(&resource)
            .ok_or_else(|| anyhow!("{}: no subject/patient", path.display()))?;
        let occurred = infer_time(&resource).unwrap_or_else(Timestamp::now);
        records.push(v1::facility_event::Body::Record(v1::Record {
            patient_id: patient,
            kind: kind.code(),
            occurred_at: Some(codec::timestamp(occurred)),
            author: a.author.clone(),
            sensitivity: vec![],
            supersedes: String::new(),
            content_type: FHIR_JSON.to_owned(),
            body,
        }));
    }
    super::runtime()?.block_on(async move {
        let mut client = FacilityClient::open(&a.data_dir, addr, &facility).await?;
        let envelopes: Vec<_> = records.into_iter().map(|b| client.sign(b).1).collect();
        // Rides out an unavailable node with backoff; what it already has comes back
        // as duplicates. Every file's answer is printed.
        let results = client.submit_retrying(envelopes).await?;
        let mut rejected = false;
        for (path, r) in a.files.iter().zip(results) {
            let status =
                v1::SubmitStatus::try_from(r.status).unwrap_or(v1::SubmitStatus::Unspecified);
            match (status, r.rejection) {
                (v1::SubmitStatus::Rejected, Some(rej)) => {
                    rejected = true;
                    let reason = Reason::from_code(rej.reason)
                        .map(|r| r.name())
                        .unwrap_or("UNKNOWN");
                    println!("{}: rejected {reason}: {}", path.display(), rej.message);
                }
                (s, _) => {
                    let at = r
                        .position
                        .map(|p| format!(" at {}:{}", p.partition, p.offset))
                        .unwrap_or_default();
                    println!(
                        "{}: {}{at}",
                        path.display(),
                        s.as_str_name()
                            .trim_start_matches("SUBMIT_STATUS_")
                            .to_lowercase()
                    );
                }
            }
        }
        Ok(if rejected {
            ExitCode::from(EXIT_REJECTED)
        } else {
            ExitCode::SUCCESS
        })
    })
}
