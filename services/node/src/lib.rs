//! An hrx node: one process running the whole exchange on a data directory.
//!
//! `Node::build(config)` opens the data directory (creating on first start the
//! development CA and certificates, the national root key, and the database) and binds
//! the listeners; `Node::run(shutdown)` runs the projector, the gRPC services over
//! mutual TLS (ingest, timeline, consent, patient, registry, monitor, health), the
//! patient port (TLS without client certificates: `PatientService` only, every call
//! signed by the patient) and the Prometheus endpoint until `shutdown` resolves.
//!
//! - [`config`]: defaults ← file ← `HRX_*` environment.
//! - [`keys`]: private key files.
//! - [`client`]: connecting to a node as a facility or as the national center, and the
//!   operations the CLI, the demo and the tests perform (register, emit, read).

pub mod client;
pub use hrx_config as config;
mod distributed;
pub mod keys;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hrx_domain::verify::SignatureMemo;
use hrx_domain::verify::{KeyOwner, KeyRecord};
use hrx_domain::{KeyId, Timestamp};
use hrx_embedded::SqliteNode;
use hrx_identity::{ServerIdentity, TlsDir};
use hrx_ports::{EventLog, Store};
use hrx_proto::v1;
use hrx_rpc::chains::ChainLocks;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Backend, NodeConfig, Role};

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
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Backend(String),
}

/// Where the national root key lives in a data directory.
pub fn root_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("registry").join("root.key.pem")
}

/// Where its public half is kept beside it (hex): all a running embedded node reads.
pub fn root_public_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("registry").join("root.pub")
}

/// The passphrase to create a new root key with, if one is set.
fn root_passphrase() -> Option<String> {
    std::env::var(keys::ROOT_PASSPHRASE_VAR)
        .ok()
        .filter(|p| !p.is_empty())
}

/// The log and the store a node runs on.
#[derive(Clone)]
pub struct Backends {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn Store>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

/// The national root public key: all a running process needs (registry changes are
/// signed by the CLI, with the private key). `created`: this start made the key pair
/// (first start of an embedded node).
#[derive(Debug)]
struct Root {
    public: hrx_domain::PublicKey,
    created: bool,
}

impl Root {
    fn record(&self) -> KeyRecord {
        let public_key = self.public;
        KeyRecord {
            public_key,
            owner: KeyOwner::Root,
            valid_from: Timestamp::from_unix_seconds(0).expect("epoch is in range"),
            revoked_at: None,
            registered_seq: 0,
            revoked_seq: None,
        }
    }
}

/// A node, built and listening, not yet running.
pub struct Node {
    config: NodeConfig,
    roles: Vec<Role>,
    identity: ServerIdentity,
    backends: Backends,
    root: Root,
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    patient: TcpListener,
    patient_addr: SocketAddr,
    metrics: TcpListener,
    metrics_addr: SocketAddr,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("data_dir", &self.config.data_dir)
            .field("roles", &self.roles)
            .field("grpc_addr", &self.grpc_addr)
            .field("patient_addr", &self.patient_addr)
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

/// How long a starting process waits for Kafka and PostgreSQL to answer (one of them
/// restarting, or starting with it) before it gives up.
const BACKEND_WAIT: Duration = Duration::from_secs(60);

/// Opens the backends the configuration names (and applies their migrations). The
/// distributed backends are retried with backoff and jitter for [`BACKEND_WAIT`]: a
/// process started while PostgreSQL or Kafka restarts waits for them.
pub async fn backends(config: &NodeConfig) -> Result<Backends, NodeError> {
    match config.backend {
        Backend::Embedded => {
            let db = Arc::new(SqliteNode::open(&config.data_dir)?);
            Ok(Backends {
                log: db.clone(),
                store: db,
            })
        }
        Backend::Distributed => {
            use backon::{ExponentialBuilder, Retryable as _};
            (|| distributed::backends(config))
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(200))
                        .with_max_delay(Duration::from_secs(5))
                        .with_total_delay(Some(BACKEND_WAIT))
                        .without_max_times()
                        .with_jitter(),
                )
                .when(|e| matches!(e, NodeError::Backend(_)))
                .notify(
                    |e, wait| tracing::warn!(error = %e, ?wait, "backends unavailable; retrying"),
                )
                .await
        }
    }
}

impl Node {
    pub async fn build(config: NodeConfig) -> Result<Self, NodeError> {
        let roles = config.role_list().map_err(NodeError::Config)?;
        config.consent_policy().map_err(NodeError::Config)?;
        let dir = &config.data_dir;
        // Owner-only, like everything in it (keys, certificates, the embedded database);
        // an existing directory is left as it is.
        keys::create_private_dir(dir).map_err(|source| NodeError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let identity = match &config.tls_dir {
            Some(tls) => ServerIdentity::load(tls)?,
            None => TlsDir::open_or_init(dir)?.server_identity(),
        };
        let root = match (&config.root_public_key, config.backend) {
            (Some(hex_key), _) => Root {
                public: parse_public_key(hex_key)?,
                created: false,
            },
            (None, Backend::Embedded) => {
                let (public, created) =
                    keys::read_or_create_root(dir, root_passphrase().as_deref())?;
                Root { public, created }
            }
            (None, Backend::Distributed) => {
                return Err(NodeError::Config(
                    "a distributed process needs HRX_ROOT_PUBLIC_KEY (the national root public key, hex)".into(),
                ));
            }
        };
        let backends = backends(&config).await?;
        let (grpc, grpc_addr) = bind(config.grpc_addr).await?;
        let (patient, patient_addr) = bind(config.patient_addr).await?;
        let (metrics, metrics_addr) = bind(config.metrics_addr).await?;
        Ok(Self {
            config,
            roles,
            identity,
            backends,
            root,
            grpc,
            grpc_addr,
            patient,
            patient_addr,
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

    /// The patient port (served when this process runs the consent role).
    pub fn patient_addr(&self) -> SocketAddr {
        self.patient_addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    pub fn root_key_id(&self) -> KeyId {
        self.root.record().key_id()
    }

    /// Whether this start created the national root key (first start of an embedded node).
    pub fn root_key_created(&self) -> bool {
        self.root.created
    }

    /// Runs this process's roles until `shutdown` resolves, then stops the servers and
    /// the projector cleanly (a batch in flight is either committed or not at all).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        let Backends { log, store } = self.backends.clone();
        let roots = vec![self.root.record()];
        let policy = self.config.consent_policy().map_err(NodeError::Config)?;
        let has = |r: Role| self.roles.contains(&r);
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        // Ingest and projector in one process verify each signature once (see
        // `SignatureMemo`); a projector in a process of its own verifies everything.
        let verified = Arc::new(SignatureMemo::default());
        let projector = if has(Role::Projector) {
            let mut projector_config = hrx_projector::ProjectorConfig::new(roots.clone());
            projector_config.verified = verified.clone();
            projector_config.batch_size = self.config.projector_batch;
            projector_config.group = self.config.consumer_group.clone();
            projector_config.policy = policy;
            projector_config.clock = self.config.clock_policy();
            // Its state comes from the store: wait for a store that is restarting.
            let projector = {
                use backon::{ExponentialBuilder, Retryable as _};
                (|| {
                    hrx_projector::Projector::build(
                        log.clone(),
                        store.clone(),
                        projector_config.clone(),
                    )
                })
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(200))
                        .with_max_delay(Duration::from_secs(5))
                        .with_total_delay(Some(BACKEND_WAIT))
                        .without_max_times()
                        .with_jitter(),
                )
                .notify(|e, wait| {
                    tracing::warn!(error = %e, ?wait, "projector state unavailable; retrying")
                })
                .await?
            };
            Some(tokio::spawn(projector.run(stopped(stop_rx.clone()))))
        } else {
            None
        };

        let (health, health_service) = tonic_health::server::health_reporter();
        // Every call counted and timed per method and outcome, bounded in time and in
        // calls per connection (tower's layers, through tonic's builder).
        let rpc = hrx_rpc::observe::RpcMetrics::default();
        let per_caller =
            hrx_rpc::limit::PerCallerLimitLayer::new(self.config.max_concurrent_per_caller);
        // Revoked client certificates, as projected, refused on every call and open
        // stream of this process within seconds (`hrx_rpc::revoke`).
        // Loaded before the first call is served, so a restart has no window.
        let revocations = hrx_rpc::revoke::Revocations::default();
        revocations
            .load(store.as_ref())
            .await
            .map_err(|e| NodeError::Backend(format!("revoked certificates: {e}")))?;
        let revocation_follower = tokio::spawn(
            revocations
                .clone()
                .follow_store(store.clone(), stop_rx.clone()),
        );
        let server = || {
            tonic::transport::Server::builder()
                .concurrency_limit_per_connection(self.config.max_concurrent_per_connection.max(1))
                // Bounds what waits for that limit: without it, a client sending faster
                // than the node answers queues calls in the node without end (each
                // holding its request), until the connection fails.
                .max_concurrent_streams(self.config.max_streams_per_connection.max(1))
                .layer(rpc.layer())
                .layer(revocations.layer())
                .layer(per_caller.clone())
                .layer(hrx_rpc::limit::DeadlineLayer::new(Duration::from_millis(
                    self.config.request_timeout_ms.max(1),
                )))
        };
        // Server reflection, so that grpcurl can list and call the services (on the
        // mutual-TLS port: it needs a client certificate like every other call).
        let reflection = |b: tonic_reflection::server::Builder<'static>| {
            b.register_encoded_file_descriptor_set(hrx_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
            .build_v1()
            .map_err(|e| NodeError::Config(format!("reflection: {e}")))?;
        let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
            .build_v1alpha()
            .map_err(|e| NodeError::Config(format!("reflection: {e}")))?;
        let mut router = server()
            .tls_config(hrx_identity::server_tls(
                &self.identity.ca_cert_pem,
                &self.identity.server,
            ))?
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let locks = ChainLocks::default();
        // The consent core: the patient's consent state and the audit log, for the
        // timeline and consent roles.
        let consent = (has(Role::Timeline) || has(Role::Consent)).then(|| {
            Arc::new(
                hrx_consent::Consent::new(store.clone(), Some(log.clone()), locks.clone(), policy)
                    .with_read_bounds(hrx_consent::state::ReadBounds {
                        max_consent_events: self.config.max_consent_events_per_patient.max(1),
                        max_break_glass_windows: self
                            .config
                            .max_break_glass_windows_per_patient
                            .max(1),
                    }),
            )
        });
        if has(Role::Ingest) {
            let ingest = Arc::new(
                hrx_ingest::Ingest::new(log.clone(), store.clone(), locks.clone())
                    .with_verified(verified.clone())
                    .with_policy(policy)
                    .with_clock(self.config.clock_policy())
                    .with_max_envelope_bytes(self.config.max_envelope_bytes),
            );
            router = router.add_service(
                hrx_ingest::IngestGrpc::new(ingest)
                    .with_max_message_bytes(self.config.max_message_bytes)
                    .into_server(),
            );
            health.set_serving::<v1::ingest_service_server::IngestServiceServer<hrx_ingest::IngestGrpc>>().await;
        }
        let mut timeline_service = None;
        if has(Role::Timeline)
            && let Some(consent) = &consent
        {
            let timeline = Arc::new(hrx_timeline::Timeline::new(
                consent.clone(),
                hrx_timeline::TimelineConfig {
                    heartbeat: Duration::from_millis(self.config.heartbeat_ms.max(1)),
                    max_follow_streams_per_caller: self.config.max_follow_streams_per_caller,
                },
            ));
            timeline_service = Some(timeline.clone());
            router = router.add_service(hrx_timeline::TimelineGrpc::new(timeline).into_server());
            health.set_serving::<v1::timeline_service_server::TimelineServiceServer<hrx_timeline::TimelineGrpc>>().await;
        }
        let mut patient_server = None;
        if has(Role::Consent)
            && let Some(consent) = &consent
        {
            router = router
                .add_service(hrx_consent::ConsentGrpc::new(consent.clone()).into_server())
                .add_service(hrx_consent::PatientGrpc::new(consent.clone()).into_server());
            health.set_serving::<v1::consent_service_server::ConsentServiceServer<hrx_consent::ConsentGrpc>>().await;
            health.set_serving::<v1::patient_service_server::PatientServiceServer<hrx_consent::PatientGrpc>>().await;
            // The patient port: PatientService alone, with no client certificate asked.
            let patient_router = server()
                .tls_config(hrx_identity::server_tls_without_client_auth(
                    &self.identity.server,
                ))?
                .add_service(hrx_consent::PatientGrpc::new(consent.clone()).into_server());
            let incoming =
                tonic::transport::server::TcpIncoming::from(self.patient).with_nodelay(Some(true));
            patient_server = Some(tokio::spawn(
                patient_router.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())),
            ));
        }
        if has(Role::Registry) {
            let registry = hrx_registry::RegistryGrpc::new(hrx_registry::Registry::new(
                log.clone(),
                store.clone(),
                locks,
                roots,
            ));
            router = router.add_service(registry.into_server());
            health.set_serving::<v1::registry_service_server::RegistryServiceServer<hrx_registry::RegistryGrpc>>().await;
        }
        if has(Role::Monitor) {
            router = router.add_service(
                hrx_monitor::MonitorGrpc::new(log.clone(), store.clone(), stop_rx.clone())
                    .into_server(),
            );
            health.set_serving::<v1::monitor_service_server::MonitorServiceServer<hrx_monitor::MonitorGrpc>>().await;
        }
        // Our own listener (bound early so port 0 is known before serving) loses
        // tonic's TCP_NODELAY default, which only applies to listeners tonic binds:
        // without it Nagle's algorithm holds a response's last segment until the
        // client's delayed ACK, ~40 ms on every idle-connection request.
        let incoming =
            tonic::transport::server::TcpIncoming::from(self.grpc).with_nodelay(Some(true));
        let grpc = router.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
        let metrics =
            hrx_monitor::metrics::serve(self.metrics, log, store, rpc, stopped(stop_rx.clone()));
        let grpc = tokio::spawn(grpc);
        let metrics = tokio::spawn(metrics);

        shutdown.await;
        let _ = stop_tx.send(true);
        if let Some(timeline) = &timeline_service {
            timeline.shut_down();
        }
        let grpc_result = grpc.await;
        let metrics_result = metrics.await;
        if let Some(p) = patient_server {
            match p.await {
                Ok(r) => r?,
                Err(e) => tracing::error!(error = %e, "patient server task failed"),
            }
        }
        if let Some(p) = projector {
            let _ = p.await;
        }
        let _ = revocation_follower.await;
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

fn parse_public_key(hex_key: &str) -> Result<hrx_domain::PublicKey, NodeError> {
    let bad = || {
        NodeError::Config(
            "HRX_ROOT_PUBLIC_KEY must be 64 hex characters (a raw Ed25519 public key)".into(),
        )
    };
    let bytes: Vec<u8> = (0..hex_key.len())
        .step_by(2)
        .map(|i| {
            hex_key
                .get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    hrx_domain::PublicKey::from_slice(&bytes).ok_or_else(bad)
}

/// Rebuilds every projection from the log: deletes them, then projects the whole log
/// (`hrx reproject`). No projector may be running on these backends meanwhile.
pub async fn reproject(config: &NodeConfig) -> Result<u64, NodeError> {
    let root = match &config.root_public_key {
        Some(k) => Root {
            public: parse_public_key(k)?,
            created: false,
        },
        None => {
            let (public, created) =
                keys::read_or_create_root(&config.data_dir, root_passphrase().as_deref())?;
            Root { public, created }
        }
    };
    let Backends { log, store } = backends(config).await?;
    store
        .reset_projections()
        .await
        .map_err(hrx_projector::ProjectorError::from)?;
    let mut projector_config = hrx_projector::ProjectorConfig::new(vec![root.record()]);
    projector_config.policy = config.consent_policy().map_err(NodeError::Config)?;
    projector_config.clock = config.clock_policy();
    let mut projector = hrx_projector::Projector::build(log, store, projector_config).await?;
    Ok(projector.catch_up().await?)
}
