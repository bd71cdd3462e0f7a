//! `hrx reproject`: rebuilds every projection from the event log. Stop the node (or
//! every projector, in a distributed deployment) first.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};

use super::serve::node_file;

#[derive(clap::Args, Debug)]
pub struct ReprojectArgs {
    /// TOML configuration file, as for `hrx serve` (HRX_* variables apply too).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (overrides HRX_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub fn run(a: ReprojectArgs) -> anyhow::Result<ExitCode> {
    let mut config = hrx_node::NodeConfig::load(a.config.as_deref())
        .map_err(|e| anyhow!("configuration: {e}"))?;
    if let Some(d) = a.data_dir {
        config.data_dir = d;
    }
    if config.backend == hrx_node::Backend::Embedded && node_file(&config.data_dir).exists() {
        bail!(
            "a node is running on {} (stop it first)",
            config.data_dir.display()
        );
    }
    let n = super::runtime()?.block_on(hrx_node::reproject(&config))?;
    println!("reprojected {n} log entries");
    Ok(ExitCode::SUCCESS)
}
