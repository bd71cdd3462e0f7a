//! `hrx patient …`: the patient's app in CLI form. The patient holds their own Ed25519
//! key; a facility that checked their identity enrolls it in person (`enroll`, run at
//! the facility); after that every grant, revocation, answer to a consent request and
//! look at their own records is signed with that key and sent to the node's patient
//! port, which asks for no client certificate: the signature is the authentication.
//!
//! Key files: `<out>.key.pem` (PKCS#8, mode 0600) and `<out>.pub.json`
//! (`{"patient_id", "public_key", "key_id"}`); commands take `--key <out>.key.pem` and
//! read the patient id from the `.pub.json` beside it unless `--patient` is given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use hrx_domain::{
    FacilityId, PatientId, Purpose, Reason, RecordKind, SensitivityLabel, SigningKey, Timestamp,
};
use hrx_node::client::{FacilityClient, PatientClient, connect_patient_port, enrollment};
use hrx_proto::{codec, v1};
use serde::{Deserialize, Serialize};

use super::EXIT_REJECTED;
use super::serve::{node_file_of, running_node};
use crate::files::{read_private_key, write_new, write_private_key};

#[derive(clap::Args, Debug)]
pub struct PatientArgs {
    #[command(subcommand)]
    command: PatientCommand,
}

/// Where the patient's app finds the node.
#[derive(clap::Args, Debug)]
struct Connection {
    /// The node's data directory: its CA certificate (tls/ca.pem) and node.json.
    #[arg(long, default_value = "hrx-data", env = "HRX_DATA_DIR")]
    data_dir: PathBuf,
    /// The node's patient port (default: from the running node's node.json).
    #[arg(long)]
    node: Option<SocketAddr>,
    /// The CA certificate to trust (default: <data-dir>/tls/ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
}

/// The patient's key.
#[derive(clap::Args, Debug)]
struct KeyArgs {
    /// The patient's private key (<out>.key.pem from `hrx patient keygen`).
    #[arg(long)]
    key: PathBuf,
    /// The patient's 12-digit id (default: from the .pub.json beside the key).
    #[arg(long)]
    patient: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum PatientCommand {
    /// Create the patient's key pair: <OUT>.key.pem and <OUT>.pub.json; prints the key id.
    Keygen {
        #[arg(long)]
        patient: String,
        #[arg(long, short)]
        out: PathBuf,
    },
    /// At a facility that checked the patient's identity in person: enroll their key
    /// (replaces every earlier key of the patient), with the key's proof of possession.
    Enroll {
        /// The enrolling facility (its key and certificate in --data-dir).
        #[arg(long)]
        facility: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        at: Connection,
    },
    /// Consent requests waiting for the patient's answer.
    Requests {
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        at: Connection,
        /// Show answered and expired requests too.
        #[arg(long)]
        all: bool,
    },
    /// Approve a consent request with a grant of what it asked, signed by the patient.
    Approve {
        request: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        at: Connection,
    },
    /// Decline a consent request.
    Decline {
        request: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        at: Connection,
    },
    /// Grant a facility (or any facility) access, signed by the patient.
    Grant {
        /// The facility allowed to read.
        #[arg(
            long,
            required_unless_present = "any_facility",
            conflicts_with = "any_facility"
        )]
        to: Option<String>,
        /// Any registered facility.
        #[arg(long)]
        any_facility: bool,
        /// Purposes allowed (TREATMENT, REFERRAL, CHRONIC_CARE, EMERGENCY, PATIENT_REQUEST, PUBLIC_HEALTH).
        #[arg(long = "purpose", required = true)]
        purposes: Vec<String>,
        /// Record kinds covered (default all), e.g. OBSERVATION.
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Sensitive labels included (HIV, MENTAL_HEALTH, REPRODUCTIVE, SUBSTANCE_USE, GENETIC).
        #[arg(long = "include")]
        include: Vec<String>,
        /// Only records occurring at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only records occurring before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Days until the grant expires.
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        at: Connection,
    },
    /// Revoke a grant (the patient may revoke any of their grants).
    Revoke {
        grant: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        at: Connection,
    },
    /// Who read the patient's records, and the patient's keys, grants and break-glass
    /// declarations.
    Accesses {
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        at: Connection,
    },
}

/// The patient's public key file.
#[derive(Serialize, Deserialize, Debug)]
struct PatientKeyFile {
    patient_id: String,
    public_key: String,
    key_id: String,
}

fn pub_path(key: &Path) -> PathBuf {
    let s = key.to_string_lossy();
    PathBuf::from(match s.strip_suffix(".key.pem") {
        Some(prefix) => format!("{prefix}.pub.json"),
        None => format!("{s}.pub.json"),
    })
}

fn patient_key(k: &KeyArgs) -> anyhow::Result<(PatientId, SigningKey)> {
    let key = read_private_key(&k.key)?;
    let patient = match &k.patient {
        Some(p) => p.clone(),
        None => {
            let path = pub_path(&k.key);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("no --patient and cannot read {}", path.display()))?;
            let f: PatientKeyFile =
                serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            f.patient_id
        }
    };
    let patient = PatientId::parse(&patient).map_err(|e| anyhow!("--patient: {e}"))?;
    Ok((patient, key))
}

async fn client(k: &KeyArgs, at: &Connection) -> anyhow::Result<PatientClient> {
    let (patient, key) = patient_key(k)?;
    let addr = match at.node {
        Some(a) => a,
        None => node_file_of(&at.data_dir)?.patient_addr,
    };
    let ca_path = at
        .ca
        .clone()
        .unwrap_or_else(|| at.data_dir.join("tls").join("ca.pem"));
    let ca = std::fs::read_to_string(&ca_path)
        .with_context(|| format!("cannot read the CA certificate {}", ca_path.display()))?;
    let channel = connect_patient_port(addr, &ca).await?;
    Ok(PatientClient::new(patient, key, channel))
}

fn code<T>(s: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> anyhow::Result<T> {
    parse(&s.to_uppercase()).ok_or_else(|| anyhow!("unknown {what} {s:?}"))
}

fn purpose(s: &str) -> anyhow::Result<Purpose> {
    code(s, "purpose", |s| {
        Purpose::ALL.iter().copied().find(|p| p.name() == s)
    })
}

fn kind(s: &str) -> anyhow::Result<RecordKind> {
    code(s, "record kind", |s| {
        RecordKind::ALL.iter().copied().find(|k| k.name() == s)
    })
}

fn label(s: &str) -> anyhow::Result<SensitivityLabel> {
    code(s, "sensitivity label", |s| {
        SensitivityLabel::ALL
            .iter()
            .copied()
            .find(|l| l.name() == s)
    })
}

fn time(s: &Option<String>, flag: &str) -> anyhow::Result<Option<prost_types::Timestamp>> {
    s.as_deref()
        .map(|s| {
            Timestamp::parse_rfc3339(s)
                .map(codec::timestamp)
                .map_err(|e| anyhow!("{flag}: {e}"))
        })
        .transpose()
}

/// Prints a submission's result; false when it was rejected.
fn report(what: &str, id: &str, r: &v1::SubmitResult) -> bool {
    let status = v1::SubmitStatus::try_from(r.status).unwrap_or(v1::SubmitStatus::Unspecified);
    match (&r.rejection, status) {
        (Some(rej), v1::SubmitStatus::Rejected) => {
            let reason = Reason::from_code(rej.reason)
                .map(|r| r.name())
                .unwrap_or("UNKNOWN");
            println!("{what} {id}: rejected {reason}: {}", rej.message);
            false
        }
        _ => {
            println!(
                "{what} {id}: {}",
                status
                    .as_str_name()
                    .trim_start_matches("SUBMIT_STATUS_")
                    .to_lowercase()
            );
            true
        }
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REJECTED)
    }
}

fn purposes_text(codes: &[i32]) -> String {
    codes
        .iter()
        .map(|c| Purpose::from_code(*c).map(Purpose::name).unwrap_or("?"))
        .collect::<Vec<_>>()
        .join(",")
}

fn date(t: Option<prost_types::Timestamp>) -> String {
    t.and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "-".into())
}

pub fn run(a: PatientArgs) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(async move {
        match a.command {
            PatientCommand::Keygen { patient, out } => {
                let patient = PatientId::parse(&patient).map_err(|e| anyhow!("--patient: {e}"))?;
                let pkcs8 = SigningKey::generate_pkcs8()?;
                let key = SigningKey::from_pkcs8(&pkcs8)?;
                let private = super::with_suffix(&out, ".key.pem");
                let public = super::with_suffix(&out, ".pub.json");
                write_private_key(&private, &pkcs8)?;
                let file = PatientKeyFile {
                    patient_id: patient.to_string(),
                    public_key: hex::encode(key.public_key().as_bytes()),
                    key_id: key.key_id().to_string(),
                };
                write_new(
                    &public,
                    (serde_json::to_string_pretty(&file)? + "\n").as_bytes(),
                    0o644,
                )?;
                eprintln!("wrote {} and {}", private.display(), public.display());
                println!("{}", key.key_id());
                Ok(ExitCode::SUCCESS)
            }
            PatientCommand::Enroll { facility, key, at } => {
                let facility =
                    FacilityId::parse(&facility).map_err(|e| anyhow!("--facility: {e}"))?;
                let (patient, patient_key) = patient_key(&key)?;
                let addr = running_node(&at.data_dir)?;
                let mut f = FacilityClient::open(&at.data_dir, addr, &facility).await?;
                let body = enrollment(&patient, &patient_key, &facility, Timestamp::now());
                let (id, result) = f.emit(body).await?;
                if !report("enrollment", &id.to_string(), &result) {
                    return Ok(exit(false));
                }
                // Wait until the key is the patient's, so that the next command can use it.
                let app = client(&key, &at).await?;
                for _ in 0..100 {
                    if let Ok(view) = app.view(1, "").await
                        && view.keys.iter().any(|k| {
                            k.key_id == patient_key.key_id().as_str()
                                && k.status == v1::PatientKeyStatus::Active as i32
                        })
                    {
                        println!("key {} is the patient's now", patient_key.key_id());
                        return Ok(ExitCode::SUCCESS);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                bail!("the enrollment was accepted but is not visible yet; try again shortly")
            }
            PatientCommand::Requests { key, at, all } => {
                let app = client(&key, &at).await?;
                let view = app.view(1, "").await?;
                let mut shown = 0;
                for r in &view.requests {
                    let status = v1::ConsentRequestStatus::try_from(r.status)
                        .unwrap_or(v1::ConsentRequestStatus::Unspecified);
                    if !all && status != v1::ConsentRequestStatus::Pending {
                        continue;
                    }
                    shown += 1;
                    let q = r.request.clone().unwrap_or_default();
                    let days = q.duration.map(|d| d.seconds / 86_400).unwrap_or(0);
                    println!(
                        "{}  {}  from {}  for {}  {} day(s)  \"{}\"",
                        r.request_event_id,
                        status
                            .as_str_name()
                            .trim_start_matches("CONSENT_REQUEST_STATUS_")
                            .to_lowercase(),
                        r.facility_id,
                        purposes_text(&q.purposes),
                        days,
                        q.reason
                    );
                }
                if shown == 0 {
                    println!("no consent requests waiting");
                }
                Ok(ExitCode::SUCCESS)
            }
            PatientCommand::Approve { request, key, at } => {
                let app = client(&key, &at).await?;
                let view = app.view(1, "").await?;
                let r = view
                    .requests
                    .iter()
                    .find(|r| r.request_event_id == request)
                    .ok_or_else(|| anyhow!("no consent request {request} for this patient"))?;
                let (id, result) = app.approve(r).await?;
                Ok(exit(report("grant", &id.to_string(), &result)))
            }
            PatientCommand::Decline { request, key, at } => {
                let app = client(&key, &at).await?;
                let (id, result) = app.decline(&request).await?;
                Ok(exit(report("decline", &id.to_string(), &result)))
            }
            PatientCommand::Grant {
                to,
                any_facility,
                purposes,
                kinds,
                include,
                from,
                until,
                days,
                key,
                at,
            } => {
                let grantee = match (to, any_facility) {
                    (Some(f), false) => v1::consent_grant::Grantee::GranteeFacilityId(
                        FacilityId::parse(&f)
                            .map_err(|e| anyhow!("--to: {e}"))?
                            .to_string(),
                    ),
                    _ => v1::consent_grant::Grantee::AnyFacility(true),
                };
                let expires = Timestamp::now()
                    .checked_add(hrx_domain::Duration::from_secs(i64::from(days) * 86_400)?)
                    .ok_or_else(|| anyhow!("--days: too far"))?;
                let app = client(&key, &at).await?;
                let (id, result) = app
                    .state(v1::patient_statement::Body::ConsentGrant(
                        v1::ConsentGrant {
                            patient_id: app.patient.to_string(),
                            purposes: purposes
                                .iter()
                                .map(|p| purpose(p).map(Purpose::code))
                                .collect::<anyhow::Result<_>>()?,
                            kinds: kinds
                                .iter()
                                .map(|k| kind(k).map(RecordKind::code))
                                .collect::<anyhow::Result<_>>()?,
                            include_sensitive: include
                                .iter()
                                .map(|l| label(l).map(SensitivityLabel::code))
                                .collect::<anyhow::Result<_>>()?,
                            data_from: time(&from, "--from")?,
                            data_until: time(&until, "--until")?,
                            expires_at: Some(codec::timestamp(expires)),
                            evidence: None,
                            request_event_id: String::new(),
                            grantee: Some(grantee),
                        },
                    ))
                    .await?;
                Ok(exit(report("grant", &id.to_string(), &result)))
            }
            PatientCommand::Revoke { grant, key, at } => {
                let app = client(&key, &at).await?;
                let (id, result) = app.revoke(&grant).await?;
                Ok(exit(report("revocation", &id.to_string(), &result)))
            }
            PatientCommand::Accesses { key, at } => {
                let app = client(&key, &at).await?;
                let view = app.view_all().await?;
                print_view(&view);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// The patient's view as text.
pub fn print_view(view: &v1::PatientView) {
    println!("keys:");
    for k in &view.keys {
        let status = v1::PatientKeyStatus::try_from(k.status)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("PATIENT_KEY_STATUS_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        let by = if k.enrolled_by_facility_id.is_empty() {
            "rotated by the patient".to_owned()
        } else {
            format!("enrolled in person at {}", k.enrolled_by_facility_id)
        };
        println!(
            "  {}…  {status:<8} {by}, from {}",
            &k.key_id[..16],
            date(k.valid_from)
        );
    }
    println!("grants:");
    for g in &view.grants {
        let terms = g.grant.clone().unwrap_or_default();
        let to = match terms.grantee {
            Some(v1::consent_grant::Grantee::GranteeFacilityId(f)) => f,
            _ => "any facility".into(),
        };
        let form = v1::ConsentForm::try_from(g.form)
            .map(|f| {
                f.as_str_name()
                    .trim_start_matches("CONSENT_FORM_")
                    .to_lowercase()
                    .replace('_', "-")
            })
            .unwrap_or_default();
        let status = v1::GrantStatus::try_from(g.status)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("GRANT_STATUS_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        let by = if g.granted_by_facility_id.is_empty() {
            String::new()
        } else {
            format!(" by {}", g.granted_by_facility_id)
        };
        println!(
            "  {}  {form}{by} to {to} for {}  {status}, expires {}",
            g.grant_event_id,
            purposes_text(&terms.purposes),
            date(terms.expires_at)
        );
    }
    println!("break-glass:");
    for b in &view.break_glass {
        println!(
            "  {} by {} (clinician {}), \"{}\", {} read(s)",
            date(b.declared_at),
            b.facility_id,
            b.clinician,
            b.reason,
            b.reads
        );
    }
    println!("accesses:");
    for a in &view.accesses {
        let action = v1::AccessAction::try_from(a.action)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("ACCESS_ACTION_")
                    .to_owned()
            })
            .unwrap_or_default();
        let who = match v1::ReaderKind::try_from(a.reader_kind) {
            Ok(v1::ReaderKind::Patient) => "you".to_owned(),
            Ok(v1::ReaderKind::NationalCenter) => "national center".to_owned(),
            _ => a.reader_facility_id.clone(),
        };
        let refused = if a.outcome == v1::AccessOutcome::Denied as i32 {
            "  REFUSED"
        } else {
            ""
        };
        println!(
            "  #{:<4} {}  {who:<15} {action:<22} {} record(s){refused}",
            a.audit_seq,
            date(a.at),
            a.records_returned
        );
    }
}
