//! `hrx registry`: the national center's registry operations against a running node,
//! signed with the root key from the node's data directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use hrx_domain::event::CertificateSerial;
use hrx_domain::{FacilityId, FacilityLevel, KeyId, Timestamp};
use hrx_identity::TlsDir;
use hrx_node::client::NationalCenter;
use hrx_proto::v1;

use super::serve::running_node;

#[derive(clap::Args, Debug)]
pub struct RegistryArgs {
    /// The node's data directory.
    #[arg(long, default_value = "hrx-data", env = "HRX_DATA_DIR", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(clap::Subcommand, Debug)]
enum RegistryCommand {
    /// Facilities.
    #[command(subcommand)]
    Facility(FacilityCommand),
    /// Facility signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Client certificates: issue, renew, revoke.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(clap::Subcommand, Debug)]
enum CertCommand {
    /// The facility's client certificate from the data directory's CA: the existing
    /// one, or a new one if it has none or less than a third of its validity is left.
    Issue {
        #[arg(long)]
        facility: String,
    },
    /// Issue the facility a new certificate and key now (the old one stays valid until
    /// it expires, unless --revoke-old).
    Renew {
        #[arg(long)]
        facility: String,
        /// Revoke the certificate being replaced.
        #[arg(long)]
        revoke_old: bool,
    },
    /// Revoke a client certificate: every hrx process refuses it within seconds, on
    /// new calls and on open streams.
    Revoke {
        /// The certificate (PEM); its serial and principal are read from it.
        #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
        cert: Option<PathBuf>,
        /// Or its serial number, hex (as `openssl x509 -serial` prints it).
        #[arg(long)]
        serial: Option<String>,
        /// Whom the certificate identified, for the record (with --serial).
        #[arg(long, default_value = "")]
        principal: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum FacilityCommand {
    /// Register a facility: its client certificate, its signing key, and the registry events.
    Add {
        /// 5-digit facility code (MA_CSKCB).
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        province: String,
        /// initial, basic or specialized.
        #[arg(long)]
        level: String,
    },
    /// List registered facilities and their keys.
    List,
}

#[derive(clap::Subcommand, Debug)]
enum KeyCommand {
    /// Rotate: a new signing key becomes the facility's current key.
    Add {
        #[arg(long)]
        facility: String,
    },
    /// Revoke a key from a moment on (default now).
    Revoke {
        #[arg(long)]
        key_id: String,
        #[arg(long)]
        reason: String,
        /// RFC 3339; events recorded at or after it with this key are rejected.
        #[arg(long)]
        at: Option<String>,
    },
}

fn facility_id(s: &str) -> anyhow::Result<FacilityId> {
    FacilityId::parse(s).map_err(|e| anyhow!("facility id: {e}"))
}

/// Serial, principal and end of validity of a PEM certificate.
fn describe(pem: &str) -> anyhow::Result<(CertificateSerial, String, String)> {
    let (facts, principal) = hrx_identity::certificate_from_pem(pem)?;
    let until = Timestamp::from_unix_seconds(facts.not_after_unix)
        .map(|t| t.to_string())
        .unwrap_or_default();
    Ok((
        facts.serial,
        principal.map(|p| p.uri()).unwrap_or_default(),
        until,
    ))
}

pub fn run(args: RegistryArgs) -> anyhow::Result<ExitCode> {
    let addr = running_node(&args.data_dir)?;
    super::runtime()?.block_on(async move {
        let nc = NationalCenter::open(&args.data_dir, addr).await?;
        match args.command {
            RegistryCommand::Facility(FacilityCommand::Add {
                id,
                name,
                province,
                level,
            }) => {
                let level = FacilityLevel::from_name(&level)
                    .ok_or_else(|| anyhow!("--level: one of initial, basic, specialized"))?;
                let r = nc
                    .register_facility(&facility_id(&id)?, &name, &province, level)
                    .await?;
                println!(
                    "registered facility {} with signing key {}",
                    r.facility_id, r.key_id
                );
                println!("  signing key         {}", r.signing_key_path.display());
                println!("  client certificate  {}", r.certificate_path.display());
                println!("  certificate key     {}", r.certificate_key_path.display());
            }
            RegistryCommand::Facility(FacilityCommand::List) => {
                let list = v1::registry_service_client::RegistryServiceClient::new(nc.channel())
                    .list_facilities(v1::ListFacilitiesRequest::default())
                    .await?
                    .into_inner();
                for f in list.facilities {
                    let level = FacilityLevel::from_code(f.level)
                        .map(|l| l.name())
                        .unwrap_or("?");
                    println!(
                        "{}  {:<12} {}  ({})",
                        f.facility_id, level, f.name, f.province
                    );
                    for k in f.keys {
                        let state = if k.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!("       key {}  {state}", k.key_id);
                    }
                }
            }
            RegistryCommand::Key(KeyCommand::Add { facility }) => {
                let key = nc.add_key(&facility_id(&facility)?).await?;
                println!(
                    "added key {key} for facility {facility}; it is now the facility's signing key"
                );
            }
            RegistryCommand::Key(KeyCommand::Revoke { key_id, reason, at }) => {
                let key = KeyId::parse(&key_id).map_err(|e| anyhow!("--key-id: {e}"))?;
                let at = match at {
                    Some(s) => Timestamp::parse_rfc3339(&s).map_err(|e| anyhow!("--at: {e}"))?,
                    None => Timestamp::now(),
                };
                nc.revoke_key(&key, at, &reason).await?;
                println!("revoked key {key} from {at}");
            }
            RegistryCommand::Cert(CertCommand::Issue { facility }) => {
                let id = facility_id(&facility)?;
                let tls = TlsDir::open_or_init(&args.data_dir)?;
                let pair = tls.facility(&id)?;
                let (serial, _, until) = describe(&pair.cert_pem)?;
                let (cert, key) = tls.facility_paths(&id);
                println!("facility {id}: certificate {serial}, valid until {until}");
                println!("  client certificate  {}", cert.display());
                println!("  certificate key     {}", key.display());
            }
            RegistryCommand::Cert(CertCommand::Renew {
                facility,
                revoke_old,
            }) => {
                let id = facility_id(&facility)?;
                let tls = TlsDir::open_or_init(&args.data_dir)?;
                let (cert, _) = tls.facility_paths(&id);
                let old = std::fs::read_to_string(&cert)
                    .ok()
                    .map(|pem| describe(&pem))
                    .transpose()?;
                let pair = tls.renew_facility(&id)?;
                let (serial, principal, until) = describe(&pair.cert_pem)?;
                println!("facility {id}: new certificate {serial}, valid until {until}");
                println!("  client certificate  {}", cert.display());
                if let Some((old, _, _)) = old {
                    if revoke_old {
                        nc.revoke_certificate(&old, &principal, "renewed").await?;
                        println!("revoked the certificate it replaces, {old}");
                    } else {
                        println!(
                            "the certificate it replaces, {old}, stays valid until it expires"
                        );
                    }
                }
            }
            RegistryCommand::Cert(CertCommand::Revoke {
                cert,
                serial,
                principal,
                reason,
            }) => {
                let (serial, principal) = match (cert, serial) {
                    (Some(path), _) => {
                        let pem = std::fs::read_to_string(&path)
                            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
                        let (serial, principal, _) = describe(&pem)?;
                        (serial, principal)
                    }
                    (None, Some(s)) => (
                        CertificateSerial::parse(&s).map_err(|e| anyhow!("--serial: {e}"))?,
                        principal,
                    ),
                    (None, None) => return Err(anyhow!("--cert or --serial is required")),
                };
                nc.revoke_certificate(&serial, &principal, &reason).await?;
                println!("revoked certificate {serial}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
