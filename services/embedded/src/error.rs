//! The crate's typed error, and how it maps onto the ports' [`PortError`].
//!
//! Messages carry paths, table and column names, event ids, seqs and counts only: never
//! a patient id, a body, or the value of an SQL parameter. SQLite's own messages (e.g.
//! "UNIQUE constraint failed: records.event_id") name columns, not values, so they are
//! passed on as they are.

use std::path::PathBuf;

use hrx_ports::PortError;
use rusqlite::ErrorCode;

/// What can go wrong opening or using the embedded database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be opened or configured.
    #[error("cannot open the database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite would not switch to write-ahead logging (e.g. an in-memory or network
    /// file system): appends could then block readers, so we refuse to run.
    #[error("the database's journal mode is {0:?}, and WAL is required")]
    NotWal(String),
    /// The file was written by a newer build whose schema this one does not know.
    #[error("the database has schema version {found}; this build knows up to {known}")]
    SchemaTooNew { found: i64, known: i64 },
    /// A schema migration failed; the database stays at the previous version.
    #[error("migrating the schema to version {version} failed: {source}")]
    Migration {
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    /// Any other SQLite failure.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Stored data breaks an invariant (an unknown enum code, a malformed id, …).
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// A write collides with what is stored (a taken chain position, a duplicate id).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The runtime is shutting down and the storage task was cancelled.
    #[error("the storage task was cancelled")]
    Cancelled,
}

impl EmbeddedError {
    /// Whether this is SQLite refusing a write because of a constraint (UNIQUE,
    /// PRIMARY KEY, FOREIGN KEY, CHECK, or one of our append-only triggers).
    pub(crate) fn is_constraint(&self) -> bool {
        matches!(
            self,
            EmbeddedError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if f.code == ErrorCode::ConstraintViolation
        )
    }
}

pub(crate) type Result<T, E = EmbeddedError> = std::result::Result<T, E>;

impl From<EmbeddedError> for PortError {
    fn from(e: EmbeddedError) -> Self {
        match e {
            EmbeddedError::Conflict(m) => PortError::Conflict(m),
            EmbeddedError::Corrupt(m) => PortError::Corrupt(m),
            EmbeddedError::Sqlite(err) => classify(err),
            EmbeddedError::SchemaTooNew { .. } => PortError::Corrupt(e.to_string()),
            other => PortError::Unavailable(other.to_string()),
        }
    }
}

/// Sorts a SQLite failure into the three kinds the services act on: retry
/// (`Unavailable`), stop and alert (`Corrupt`), or re-read and decide (`Conflict`).
fn classify(err: rusqlite::Error) -> PortError {
    use rusqlite::Error as E;
    let message = err.to_string();
    match &err {
        E::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation => PortError::Conflict(message),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase | ErrorCode::TypeMismatch => {
                PortError::Corrupt(message)
            }
            // Busy, locked, I/O, disk full, out of memory, …: the engine, not the data.
            _ => PortError::Unavailable(message),
        },
        // A stored value of the wrong type or range: the data, not the engine.
        E::FromSqlConversionFailure(..)
        | E::IntegralValueOutOfRange(..)
        | E::InvalidColumnType(..)
        | E::Utf8Error(..) => PortError::Corrupt(message),
        _ => PortError::Unavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_failures_are_conflicts_and_bad_types_are_corruption() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'x');",
        )
        .unwrap();
        let dup = EmbeddedError::from(
            conn.execute("INSERT INTO t VALUES (1, 'y')", [])
                .unwrap_err(),
        );
        assert!(dup.is_constraint());
        assert!(matches!(PortError::from(dup), PortError::Conflict(_)));

        let wrong_type = conn
            .query_row("SELECT v FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(matches!(
            PortError::from(EmbeddedError::from(wrong_type)),
            PortError::Corrupt(_)
        ));
    }
}
