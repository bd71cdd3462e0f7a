//! The embedded adapters of hrx: the event log and the whole store on one SQLite
//! database (`<data dir>/hrx.db`, WAL), for the one-process deployment.
//!
//! [`SqliteNode`] implements [`hrx_ports::EventLog`] and every store trait (hence
//! [`hrx_ports::Store`]). Because the log, the projections, the projector's offsets and
//! the audit log share one database, a projection batch commits atomically with the
//! offsets it came from, and `reset_projections` + replay can rebuild everything the
//! log implies while leaving the log and the audit log alone.
//!
//! Modules:
//! - `error`: [`EmbeddedError`], and its mapping onto [`hrx_ports::PortError`].
//! - `schema`: connection settings and the versioned, forward-only migrations (the
//!   table map is the SQL there).
//! - `pool`: one writer connection behind an async mutex, a small pool of readers, all
//!   driven from `spawn_blocking`.
//! - `codec`: domain values ⇄ columns.
//! - `log`, `projection`, `timeline`, `consent`, `audit`, `registry`, `monitor`: one per
//!   port trait.
//!
//! Invariant: nothing here logs or puts into an error a patient id, a record body or an
//! SQL parameter value; messages carry event ids, facility ids, seqs and counts.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::watch;

mod audit;
mod codec;
mod consent;
mod error;
mod log;
mod monitor;
mod pool;
mod projection;
mod registry;
mod schema;
mod timeline;

pub use error::EmbeddedError;
pub use schema::SCHEMA_VERSION;

use error::Result;
use pool::Connections;

/// The database file's name inside the data directory.
pub const DB_FILE_NAME: &str = "hrx.db";

/// How many read connections the pool holds. Reads are short (one page of a timeline,
/// one patient's grants), and the machine this targets has few cores; four lets reads
/// overlap a write and each other without piling up file handles.
const READERS: usize = 4;

/// The embedded event log and store of one node, on one SQLite database.
///
/// Cheap to clone: clones share the connections and the change notifications.
#[derive(Clone)]
pub struct SqliteNode {
    inner: Arc<Inner>,
}

struct Inner {
    /// The database file, for `Debug` and error messages.
    path: PathBuf,
    db: Connections,
    /// The log's end offset (next offset to be written), published by `append` after
    /// each commit, so that `wait_for` wakes at once.
    log_end: watch::Sender<u64>,
    /// Counts committed projection batches (and resets): followers and revocation
    /// checks wake on it.
    changes: watch::Sender<u64>,
    /// Which patients those batches touched (bumped first).
    patient_changes: Arc<hrx_ports::changed::PatientChanges>,
}

impl fmt::Debug for SqliteNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteNode")
            .field("path", &self.inner.path)
            .field("log_end", &*self.inner.log_end.borrow())
            .field("changes", &*self.inner.changes.borrow())
            .finish()
    }
}

impl SqliteNode {
    /// Opens (creating if needed) the database in `dir`, applies pending schema
    /// migrations, and opens the connections.
    ///
    /// This does blocking file I/O: call it at start-up, before serving, or from
    /// `spawn_blocking`. Every other method runs its SQLite work on blocking threads.
    pub fn open(dir: &Path) -> Result<Self, EmbeddedError> {
        // Owner-only: it holds every patient's records. (An existing directory is left
        // as it is.)
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|source| EmbeddedError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        let path = dir.join(DB_FILE_NAME);
        let open_err = |source| EmbeddedError::Open {
            path: path.clone(),
            source,
        };

        let mut writer = Connection::open(&path).map_err(open_err)?;
        schema::configure_writer(&writer)?;
        let found = schema::migrate(&mut writer)?;
        let log_end = log::end_offset(&writer)?;

        // Readers open after the migrations so that they never see a half-made schema;
        // read-write flags because a WAL reader needs the shared-memory index, and
        // `query_only` keeps them from writing.
        let readers = (0..READERS)
            .map(|_| {
                let conn = Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(open_err)?;
                schema::configure_reader(&conn)?;
                Ok(conn)
            })
            .collect::<Result<Vec<_>>>()?;

        tracing::info!(
            path = %path.display(),
            schema_version = SCHEMA_VERSION,
            schema_version_found = found,
            log_end,
            "embedded store open"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                db: Connections::new(writer, readers),
                log_end: watch::Sender::new(log_end),
                changes: watch::Sender::new(0),
                patient_changes: Arc::default(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}
