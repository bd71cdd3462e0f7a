//! `hrx registry`: the national center's registry operations against a running node,
//! signed with the root key from the node's data directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use hrx_domain::{FacilityId, FacilityLevel, KeyId, Timestamp};
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
        }
        Ok(ExitCode::SUCCESS)
    })
}
