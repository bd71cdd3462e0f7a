//! `hrx serve`: the whole exchange in one process on a data directory (default
//! `./hrx-data`). Configuration: defaults ← `--config` file ← `HRX_*` environment ←
//! flags. Writes `<data_dir>/node.json` with its addresses so that the other
//! subcommands find it, and removes it on a clean stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use hrx_node::{Node, NodeConfig};
use serde::{Deserialize, Serialize};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file (keys: data_dir, grpc_addr, patient_addr, metrics_addr,
    /// heartbeat_ms, projector_batch, attested_grant_max_days, standing_window_days,
    /// break_glass_per_day, break_glass_open_per_patient, …).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (overrides HRX_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC listen address (overrides HRX_GRPC_ADDR).
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// Prometheus listen address (overrides HRX_METRICS_ADDR).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Patient port: TLS without client certificates, patient-signed calls only
    /// (overrides HRX_PATIENT_ADDR).
    #[arg(long)]
    patient_addr: Option<SocketAddr>,
    /// Roles to run, comma-separated: ingest,projector,timeline,consent,registry,monitor
    /// (overrides HRX_ROLES; default all).
    #[arg(long)]
    role: Option<String>,
}

/// What `node.json` says about a running node.
#[derive(Serialize, Deserialize, Debug)]
pub struct NodeFile {
    pub grpc_addr: SocketAddr,
    /// The patient port (TLS without client certificates).
    pub patient_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub pid: u32,
}

pub fn node_file(data_dir: &Path) -> PathBuf {
    data_dir.join("node.json")
}

/// What `node.json` says about the node running on `data_dir`.
pub fn node_file_of(data_dir: &Path) -> anyhow::Result<NodeFile> {
    let path = node_file(data_dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no node is running on {} (start one with `hrx serve`)",
            data_dir.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The gRPC address of the node running on `data_dir`.
pub fn running_node(data_dir: &Path) -> anyhow::Result<SocketAddr> {
    Ok(node_file_of(data_dir)?.grpc_addr)
}

pub fn config(args: &ServeArgs) -> anyhow::Result<NodeConfig> {
    let mut c =
        NodeConfig::load(args.config.as_deref()).map_err(|e| anyhow!("configuration: {e}"))?;
    if let Some(d) = &args.data_dir {
        c.data_dir = d.clone();
    }
    if let Some(a) = args.grpc_addr {
        c.grpc_addr = a;
    }
    if let Some(a) = args.metrics_addr {
        c.metrics_addr = a;
    }
    if let Some(a) = args.patient_addr {
        c.patient_addr = a;
    }
    if let Some(r) = &args.role {
        c.roles = r.clone();
    }
    c.role_list().map_err(|e| anyhow!("--role: {e}"))?;
    Ok(c)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler works on Unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = config(&args)?;
    super::runtime()?.block_on(async move {
        let node = Node::build(config).await?;
        let dir = node.data_dir().to_owned();
        if node.root_key_created() {
            println!("created the national root key {}", node.root_key_id());
        }
        let roles: Vec<&str> = node.roles().iter().map(|r| r.name()).collect();
        println!("hrx node on {} ({})", dir.display(), roles.join(", "));
        println!("  national root key  {}", node.root_key_id());
        println!("  gRPC (mutual TLS)  {}", node.grpc_addr());
        println!("  patient port (TLS) {}", node.patient_addr());
        println!(
            "  metrics            http://{}/metrics",
            node.metrics_addr()
        );
        println!("  certificates       {}", dir.join("tls").display());
        let file = NodeFile {
            grpc_addr: node.grpc_addr(),
            patient_addr: node.patient_addr(),
            metrics_addr: node.metrics_addr(),
            pid: std::process::id(),
        };
        std::fs::write(node_file(&dir), serde_json::to_string_pretty(&file)?)?;
        let result = node.run(shutdown_signal()).await;
        let _ = std::fs::remove_file(node_file(&dir));
        result?;
        println!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}
