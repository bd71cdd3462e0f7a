//! `hrx keygen`: a new Ed25519 key pair in `<out>.key.pem` (PKCS#8, mode 0600) and
//! `<out>.pub.json` (the public key with its facility), printing the key id.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use hrx_domain::{FacilityId, SigningKey, Timestamp};

use crate::files::{PublicKeyFile, write_new, write_private_key};

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// The facility (5-digit MA_CSKCB code) the key signs for.
    #[arg(long, required_unless_present = "root", conflicts_with = "root")]
    facility: Option<String>,
    /// Make the national root key (signs registry events) instead of a facility key.
    #[arg(long)]
    root: bool,
    /// Path prefix of the two files written: <OUT>.key.pem and <OUT>.pub.json.
    #[arg(long, short)]
    out: PathBuf,
    /// When the key becomes valid (RFC 3339); default now.
    #[arg(long)]
    valid_from: Option<String>,
}

pub fn run(a: KeygenArgs) -> anyhow::Result<ExitCode> {
    let facility = a
        .facility
        .as_deref()
        .map(FacilityId::parse)
        .transpose()
        .map_err(|e| anyhow!("--facility: {e}"))?;
    let valid_from = match &a.valid_from {
        Some(s) => Timestamp::parse_rfc3339(s).map_err(|e| anyhow!("--valid-from: {e}"))?,
        None => Timestamp::now(),
    };
    let pkcs8 = SigningKey::generate_pkcs8()?;
    let key = SigningKey::from_pkcs8(&pkcs8)?;
    let private = super::with_suffix(&a.out, ".key.pem");
    let public = super::with_suffix(&a.out, ".pub.json");
    let public_file = PublicKeyFile::new(&key, facility.as_ref(), valid_from);
    write_private_key(&private, &pkcs8)?;
    write_new(
        &public,
        (serde_json::to_string_pretty(&public_file)? + "\n").as_bytes(),
        0o644,
    )?;
    eprintln!("wrote {} and {}", private.display(), public.display());
    println!("{}", key.key_id());
    Ok(ExitCode::SUCCESS)
}
