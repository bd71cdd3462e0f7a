//! `hrx migrate`: opens the configured backends, which applies their schema migrations
//! (forward only, idempotent, safe to run while other processes start), then exits.
//! Kubernetes runs it as a Job before rolling out a new version.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// TOML configuration file, as for `hrx serve` (HRX_* variables apply too).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(a: MigrateArgs) -> anyhow::Result<ExitCode> {
    let config = hrx_node::NodeConfig::load(a.config.as_deref())
        .map_err(|e| anyhow!("configuration: {e}"))?;
    super::runtime()?.block_on(hrx_node::backends(&config))?;
    println!("schema up to date ({:?} backend)", config.backend);
    Ok(ExitCode::SUCCESS)
}
