//! The PostgreSQL store adapter of hrx: every store port on PostgreSQL, for the
//! distributed deployment (the log is elsewhere, in Kafka).
//!
//! [`PgStore`] implements [`hrx_ports::ProjectionStore`], `TimelineStore`,
//! `ConsentStore`, `AuditStore`, `RegistryStore` and `MonitorStore` (hence
//! [`hrx_ports::Store`]), with the embedded SQLite store's semantics, and what a store
//! shared by several processes needs on top:
//! - a projection batch commits in one transaction with the log offsets it came from,
//!   written with one multi-row statement per table (`INSERT … SELECT FROM unnest(…)`),
//!   not one round trip per row;
//! - `patient_seq` stays gap-free and in commit order when several projector processes
//!   apply at once: a patient's counter row is updated with `ON CONFLICT DO UPDATE`,
//!   which row-locks the patient until commit;
//! - the audit chain stays one line when readers in several processes append at once:
//!   appenders lock the one-row `audit_head` first;
//! - `changes()` advances in every process using the database, through LISTEN/NOTIFY
//!   (see `notify`);
//! - the schema migrates at start-up under an advisory lock, so processes starting
//!   together do not race.
//!
//! Connections use TLS (rustls) when the URL asks for it with libpq's parameters
//! (`sslmode=verify-full&sslrootcert=…`, see `hrx_identity::backend`), and then always
//! verify the server; otherwise they are plain TCP, for a database on loopback or behind
//! a mesh.
//!
//! Modules:
//! - `error`: [`PgError`], the sorting of driver errors, the mapping onto `PortError`.
//! - `schema`: the versioned, forward-only migrations (the table map is the SQL there).
//! - `codec`: domain values ⇄ columns, and query helpers.
//! - `notify`: the LISTEN connection behind `changes()`.
//! - `projection`, `timeline`, `consent`, `audit`, `registry`, `monitor`: one per port
//!   trait.
//!
//! Invariant: nothing here logs or puts into an error a patient id, a record body or an
//! SQL parameter value; messages carry event ids, facility ids, seqs and counts.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

mod audit;
mod codec;
mod consent;
mod error;
mod monitor;
mod notify;
mod projection;
mod registry;
mod schema;
mod timeline;

pub use error::PgError;
pub use schema::SCHEMA_VERSION;

use error::Result;

/// How long connecting (TCP, start-up and authentication together) may take when the
/// URL sets no `connect_timeout`: long enough for a busy server, short enough that an
/// unreachable one is reported rather than waited on.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a caller waits for a free pooled connection before `Unavailable`.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// The PostgreSQL store of one process.
///
/// Cheap to clone: clones share the pool, the listener and the change counter. The
/// listener stops when the last clone is dropped.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Counts committed projection batches and resets, in this process and (through
    /// the listener) in every other process using the database.
    changes: Arc<watch::Sender<u64>>,
    /// Which patients those batches touched, by bucket (bumped first).
    patient_changes: Arc<hrx_ports::changed::PatientChanges>,
    /// The payload of this instance's notifications, so the listener can skip them.
    instance: String,
    listener: JoinHandle<()>,
    /// `host:port/dbname` for `Debug` and messages; never the password.
    target: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.inner.pool.status();
        f.debug_struct("PgStore")
            .field("target", &self.inner.target)
            .field("pool_size", &status.size)
            .field("pool_max_size", &status.max_size)
            .field("changes", &*self.inner.changes.borrow())
            .finish()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db?…` or
    /// `host=… dbname=…`) with a pool of at most `pool_size` connections (at least 1),
    /// applies pending schema migrations, and starts listening for changes (one more
    /// connection).
    ///
    /// An unreachable or silent server fails within the URL's `connect_timeout`
    /// (default [`DEFAULT_CONNECT_TIMEOUT`]) with [`PgError::Connect`].
    pub async fn connect(url: &str, pool_size: usize) -> Result<PgStore> {
        let (config, tls) =
            hrx_identity::backend::postgres(url).map_err(|e| PgError::Config(e.to_string()))?;
        Self::connect_config(config, tls, pool_size).await
    }

    /// [`PgStore::connect`] with a parsed configuration and its TLS connector (used only
    /// when the configuration's `ssl_mode` asks for TLS).
    pub async fn connect_config(
        mut config: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        pool_size: usize,
    ) -> Result<PgStore> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        // TCP keepalives find a dead peer on an idle pooled connection; the driver's
        // default waits two hours before the first probe.
        if config.get_keepalives_idle() >= Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(30));
        }
        let app = config.get_application_name().unwrap_or("hrx").to_owned();
        config.application_name(&app);
        let target = describe(&config);

        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                // A closed connection is dropped on return; a broken-but-open one fails
                // its next query, which callers see as `Unavailable` and retry. A test
                // query per checkout would cost a round trip on every call.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            // The most recently returned connection first, not the one idle longest:
            // each connection's buffers keep the size of the largest message it carried
            // (a projector batch binds megabytes), so rotating every batch through all
            // of them grew the projector's RSS for minutes in the soak; a serial caller
            // now keeps using one warm connection.
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            // tokio-postgres's connect_timeout covers the TCP connect only; this bounds
            // the start-up and authentication too.
            .create_timeout(Some(timeout))
            .wait_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| PgError::Config(format!("cannot build the connection pool: {e}")))?;

        let connect_err = |e: PgError| PgError::Connect {
            target: target.clone(),
            reason: match e {
                PgError::Unavailable(m) | PgError::Corrupt(m) | PgError::Conflict(m) => m,
                other => other.to_string(),
            },
        };
        let mut client = pool
            .get()
            .await
            .map_err(|e| connect_err(error::pool("opening the first connection", e)))?;
        let found = match schema::migrate(&mut client).await {
            Ok(found) => found,
            Err(e @ (PgError::SchemaTooNew { .. } | PgError::Migration { .. })) => return Err(e),
            Err(e) => return Err(connect_err(e)),
        };
        drop(client);

        let changes = Arc::new(watch::Sender::new(0));
        let patient_changes = Arc::new(hrx_ports::changed::PatientChanges::default());
        let instance = instance_id();
        let mut listen_config = config;
        listen_config.application_name(format!("{app} (changes listener)"));
        let listener = notify::Listener {
            config: listen_config,
            tls,
            timeout,
            instance: instance.clone(),
            changes: changes.clone(),
            patient_changes: patient_changes.clone(),
            target: target.clone(),
        }
        .start()
        .await?;

        tracing::info!(
            target_db = %target,
            schema_version = SCHEMA_VERSION,
            schema_version_found = found,
            pool_size = pool_size.max(1),
            "postgres store connected"
        );
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                changes,
                patient_changes,
                instance,
                listener,
                target,
            }),
        })
    }

    /// A pooled connection for `what`.
    async fn client(&self, what: &str) -> Result<deadpool_postgres::Object> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| error::pool(what, e))
    }
}

/// `host:port/dbname` of a configuration, for messages (no user, no password).
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    format!("{hosts}/{}", config.get_dbname().unwrap_or("(default)"))
}

/// A unique id for this store instance, the payload of its notifications. Random per
/// process (`RandomState` is seeded from the OS) and counted within it.
fn instance_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}-{}", h.finish(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_names_hosts_and_database_but_no_secret() {
        let config: tokio_postgres::Config = "postgres://hrx:s3cret@db.internal:6543/exchange"
            .parse()
            .unwrap();
        let d = describe(&config);
        assert_eq!(d, "db.internal:6543/exchange");
        assert!(!d.contains("s3cret") && !d.contains("hrx:"));
    }

    #[test]
    fn the_store_is_a_whole_store_and_shareable() {
        fn store<T: hrx_ports::Store + Clone + Send + Sync + fmt::Debug>() {}
        store::<PgStore>();
    }

    #[test]
    fn instance_ids_differ() {
        assert_ne!(instance_id(), instance_id());
    }
}
