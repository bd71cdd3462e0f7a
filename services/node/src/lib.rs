//! An hrx node: one process running the whole exchange on a data directory.
//!
//! `Node::build(config)` opens the data directory (creating on first start the
//! development CA and certificates, the national root key, and the database) and binds
//! the listeners; `Node::run(shutdown)` runs the projector, the gRPC services over
//! mutual TLS (ingest, timeline, consent, registry, monitor, health) and the Prometheus
//! endpoint until `shutdown` resolves.
//!
//! - [`config`]: defaults ← file ← `HRX_*` environment.
//! - [`keys`]: private key files.
//! - [`client`]: connecting to a node as a facility or as the national center, and the
//!   operations the CLI, the demo and the tests perform (register, emit, read).

pub mod client;
pub mod config;
pub mod keys;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hrx_domain::verify::{KeyOwner, KeyRecord};
use hrx_domain::{KeyId, SigningKey, Timestamp};
use hrx_embedded::SqliteNode;
use hrx_identity::TlsDir;
use hrx_ports::{EventLog, ProjectionStore, Store};
use hrx_rpc::chains::ChainLocks;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

pub use config::NodeConfig;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] hrx_identity::IdentityError),
    #[error(transparent)]
    Key(#[from] keys::KeyFileError),
    #[error("database: {0}")]
    Database(#[from] hrx_embedded::EmbeddedError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("projector: {0}")]
    Projector(#[from] hrx_projector::ProjectorError),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("metrics server: {0}")]
    Metrics(std::io::Error),
}

/// Where the national root key lives in a data directory.
pub fn root_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("registry").join("root.key.pem")
}

/// The root key as the registry's verifiers know it.
pub fn root_record(key: &SigningKey) -> KeyRecord {
    KeyRecord {
        public_key: key.public_key(),
        owner: KeyOwner::Root,
        valid_from: Timestamp::from_unix_seconds(0).expect("epoch is in range"),
        revoked_at: None,
    }
}

/// A node, built and listening, not yet running.
pub struct Node {
    config: NodeConfig,
    tls: TlsDir,
    db: Arc<SqliteNode>,
    root: SigningKey,
    root_created: bool,
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    metrics: TcpListener,
    metrics_addr: SocketAddr,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("data_dir", &self.config.data_dir)
            .field("grpc_addr", &self.grpc_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), NodeError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    let a = l
        .local_addr()
        .map_err(|source| NodeError::Bind { addr, source })?;
    Ok((l, a))
}

impl Node {
    pub async fn build(config: NodeConfig) -> Result<Self, NodeError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| NodeError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let tls = TlsDir::open_or_init(dir)?;
        let (root, root_created) = keys::read_or_create(&root_key_path(dir))?;
        let db = Arc::new(SqliteNode::open(dir)?);
        let (grpc, grpc_addr) = bind(config.grpc_addr).await?;
        let (metrics, metrics_addr) = bind(config.metrics_addr).await?;
        Ok(Self {
            config,
            tls,
            db,
            root,
            root_created,
            grpc,
            grpc_addr,
            metrics,
            metrics_addr,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    pub fn root_key_id(&self) -> KeyId {
        self.root.key_id()
    }

    /// Whether this start created the national root key (first start).
    pub fn root_key_created(&self) -> bool {
        self.root_created
    }

    /// Runs everything until `shutdown` resolves, then stops the servers and the
    /// projector cleanly (a batch in flight is either committed or not at all).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        let log: Arc<dyn EventLog> = self.db.clone();
        let store: Arc<dyn Store> = self.db.clone();
        let roots = vec![root_record(&self.root)];
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let mut projector_config = hrx_projector::ProjectorConfig::new(roots.clone());
        projector_config.batch_size = self.config.projector_batch;
        let projector =
            hrx_projector::Projector::build(log.clone(), store.clone(), projector_config).await?;
        let projector = tokio::spawn(projector.run(stopped(stop_rx.clone())));

        let locks = ChainLocks::default();
        let ingest = Arc::new(hrx_ingest::Ingest::new(
            log.clone(),
            store.clone(),
            locks.clone(),
        ));
        let timeline = Arc::new(hrx_timeline::Timeline::new(
            store.clone(),
            hrx_timeline::TimelineConfig {
                heartbeat: Duration::from_millis(self.config.heartbeat_ms.max(1)),
            },
        ));
        let (health, health_service) = tonic_health::server::health_reporter();
        let ingest = hrx_ingest::IngestGrpc::new(ingest).into_server();
        let timeline = hrx_timeline::TimelineGrpc::new(timeline).into_server();
        let consent = hrx_consent::ConsentGrpc::new(store.clone()).into_server();
        let registry =
            hrx_registry::RegistryGrpc::new(log.clone(), store.clone(), locks, roots).into_server();
        let monitor = hrx_monitor::MonitorGrpc::new(log.clone(), store.clone()).into_server();
        health.set_serving::<hrx_proto::v1::ingest_service_server::IngestServiceServer<hrx_ingest::IngestGrpc>>().await;
        health
            .set_serving::<hrx_proto::v1::timeline_service_server::TimelineServiceServer<
                hrx_timeline::TimelineGrpc,
            >>()
            .await;
        health.set_serving::<hrx_proto::v1::consent_service_server::ConsentServiceServer<hrx_consent::ConsentGrpc>>().await;
        health
            .set_serving::<hrx_proto::v1::registry_service_server::RegistryServiceServer<
                hrx_registry::RegistryGrpc,
            >>()
            .await;
        health.set_serving::<hrx_proto::v1::monitor_service_server::MonitorServiceServer<hrx_monitor::MonitorGrpc>>().await;

        let grpc = tonic::transport::Server::builder()
            .tls_config(hrx_identity::server_tls(
                self.tls.ca_cert_pem(),
                self.tls.server(),
            ))?
            .add_service(health_service)
            .add_service(ingest)
            .add_service(timeline)
            .add_service(consent)
            .add_service(registry)
            .add_service(monitor)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(self.grpc),
                stopped(stop_rx.clone()),
            );
        let metrics =
            hrx_monitor::metrics::serve(self.metrics, log, store, stopped(stop_rx.clone()));
        let grpc = tokio::spawn(grpc);
        let metrics = tokio::spawn(metrics);

        shutdown.await;
        let _ = stop_tx.send(true);
        let grpc_result = grpc.await;
        let metrics_result = metrics.await;
        let _ = projector.await;
        match grpc_result {
            Ok(r) => r?,
            Err(e) => tracing::error!(error = %e, "gRPC server task failed"),
        }
        match metrics_result {
            Ok(r) => r.map_err(NodeError::Metrics)?,
            Err(e) => tracing::error!(error = %e, "metrics task failed"),
        }
        Ok(())
    }
}

/// Rebuilds every projection from the log: deletes them, then projects the whole log
/// (`hrx reproject`). The node must not be running on this directory.
pub async fn reproject(data_dir: &Path) -> Result<u64, NodeError> {
    let (root, _) = keys::read_or_create(&root_key_path(data_dir))?;
    let db = Arc::new(SqliteNode::open(data_dir)?);
    db.reset_projections()
        .await
        .map_err(hrx_projector::ProjectorError::from)?;
    let config = hrx_projector::ProjectorConfig::new(vec![root_record(&root)]);
    let mut projector = hrx_projector::Projector::build(db.clone(), db.clone(), config).await?;
    Ok(projector.catch_up().await?)
}
