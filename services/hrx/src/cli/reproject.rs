//! `hrx reproject`: rebuilds every projection from the event log. Stop the node first.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use super::serve::node_file;

#[derive(clap::Args, Debug)]
pub struct ReprojectArgs {
    #[arg(long, default_value = "hrx-data", env = "HRX_DATA_DIR")]
    data_dir: PathBuf,
}

pub fn run(a: ReprojectArgs) -> anyhow::Result<ExitCode> {
    if node_file(&a.data_dir).exists() {
        bail!(
            "a node is running on {} (stop it first)",
            a.data_dir.display()
        );
    }
    let n = super::runtime()?.block_on(hrx_node::reproject(&a.data_dir))?;
    println!("reprojected {n} log entries from {}", a.data_dir.display());
    Ok(ExitCode::SUCCESS)
}
