//! Node configuration: defaults, then a TOML file, then `HRX_*` environment variables
//! (e.g. `HRX_DATA_DIR`, `HRX_GRPC_ADDR`, `HRX_METRICS_ADDR`), each overriding the last.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything a node is configured with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the node keeps its database, keys and certificates.
    pub data_dir: PathBuf,
    /// gRPC (mutual TLS) listen address; port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` listen address; port 0 picks a free port.
    pub metrics_addr: SocketAddr,
    /// Heartbeat interval of idle follow streams, in milliseconds.
    pub heartbeat_ms: u64,
    /// Log entries per projector batch.
    pub projector_batch: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("hrx-data"),
            grpc_addr: "127.0.0.1:7443".parse().expect("valid address"),
            metrics_addr: "127.0.0.1:9464".parse().expect("valid address"),
            heartbeat_ms: 10_000,
            projector_batch: 500,
        }
    }
}

impl NodeConfig {
    /// Defaults ← `file` (if given) ← `HRX_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut f = Figment::from(Serialized::defaults(NodeConfig::default()));
        if let Some(file) = file {
            f = f.merge(Toml::file_exact(file));
        }
        f.merge(Env::prefixed("HRX_")).extract().map_err(Box::new)
    }

    /// A configuration for tests and `hrx demo`: everything on loopback port 0.
    pub fn ephemeral(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            grpc_addr: "127.0.0.1:0".parse().expect("valid address"),
            metrics_addr: "127.0.0.1:0".parse().expect("valid address"),
            ..Self::default()
        }
    }
}
