//! The crate's typed error, how driver and pool failures are sorted into it, and how it
//! maps onto the ports' [`PortError`].
//!
//! PostgreSQL's own messages can quote values: a unique violation's DETAIL names the
//! duplicate key, a data exception quotes the input it could not parse. So nothing here
//! keeps a `tokio_postgres::Error` (whose `Display` includes the DETAIL) as a source:
//! each failure is reduced at once to its SQLSTATE, the names of the constraint, table
//! or column involved, and the server's message only for the error classes that never
//! quote data. Messages otherwise carry event ids, facility ids, seqs and counts.

use deadpool_postgres::{PoolError, TimeoutType};
use hrx_ports::PortError;
use tokio_postgres::error::SqlState;

/// What can go wrong connecting to or using the PostgreSQL store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The database URL does not parse.
    #[error("invalid database URL: {0}")]
    Config(String),
    /// The server could not be reached, refused us, or did not answer in time, at
    /// start-up (later, the same failures are [`PgError::Unavailable`]).
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Connect { target: String, reason: String },
    /// The database was migrated by a newer build whose schema this one does not know.
    #[error("the database has schema version {found}; this build knows up to {known}")]
    SchemaTooNew { found: i32, known: i32 },
    /// A schema migration failed; the transaction rolled back, so the database stays at
    /// the version it had.
    #[error("migrating the schema to version {version} failed: {reason}")]
    Migration { version: i32, reason: String },
    /// The engine cannot be reached or is overloaded (connection lost, pool exhausted,
    /// deadlock, serialization failure, shutdown): the caller may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data breaks an invariant (an unknown enum code, a malformed id, …), or a
    /// statement was refused in a way that means a bug (a schema mismatch, a value out
    /// of range).
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// A write collides with what is stored (a taken chain position, a duplicate id).
    #[error("conflict: {0}")]
    Conflict(String),
}

pub(crate) type Result<T, E = PgError> = std::result::Result<T, E>;

impl From<PgError> for PortError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Conflict(m) => PortError::Conflict(m),
            PgError::Corrupt(m) => PortError::Corrupt(m),
            PgError::SchemaTooNew { .. } => PortError::Corrupt(e.to_string()),
            PgError::Unavailable(m) => PortError::Unavailable(m),
            other => PortError::Unavailable(other.to_string()),
        }
    }
}

/// Which [`PgError`] a driver failure becomes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Unavailable,
    Corrupt,
    Conflict,
}

/// Sorts a driver failure into the three kinds the services act on — retry
/// (`Unavailable`), stop and alert (`Corrupt`), or re-read and decide (`Conflict`) —
/// and describes it without data: the SQLSTATE, the schema objects involved, and the
/// server's message except for the classes whose messages quote values.
fn sort(e: &tokio_postgres::Error) -> (Kind, String) {
    let Some(d) = e.as_db_error() else {
        if e.is_closed() {
            return (Kind::Unavailable, "the connection is closed".to_owned());
        }
        // Client-side failures (I/O, a timeout, a protocol surprise, a parameter of the
        // wrong type): their text names types and OS errors, never values.
        return (Kind::Unavailable, e.to_string());
    };
    let code = d.code();
    let sqlstate = code.code();
    let name =
        |label: &str, v: Option<&str>| v.map(|v| format!(", {label} {v}")).unwrap_or_default();
    // Names of schema objects only: safe to show.
    let objects = format!(
        "{}{}{}",
        name("table", d.table()),
        name("column", d.column()),
        name("constraint", d.constraint())
    );
    let class = &sqlstate[..2];
    // Data exceptions and integrity violations quote the offending value (and their
    // DETAIL the key): only the code and the object names for those. Every other
    // class's message names objects, users or databases, never row data.
    let text = if matches!(class, "22" | "23") {
        format!("SQLSTATE {sqlstate}{objects}")
    } else {
        format!("SQLSTATE {sqlstate}: {}{objects}", d.message())
    };
    let kind = if *code == SqlState::UNIQUE_VIOLATION
        || *code == SqlState::FOREIGN_KEY_VIOLATION
        || *code == SqlState::EXCLUSION_VIOLATION
    {
        Kind::Conflict
    } else {
        match class {
            // Other integrity constraints (NOT NULL, CHECK), data exceptions (a value
            // out of range), syntax or access-rule violations (a schema that is not
            // ours), internal errors (data corrupted) and our own triggers (an edit of an
            // append-only table): a bug or corruption, not worth retrying.
            "23" | "22" | "42" | "XX" | "P0" => Kind::Corrupt,
            // Connection exceptions, transaction rollbacks (serialization failure,
            // deadlock), insufficient resources, lock not available, operator
            // intervention (shutdown, cancel, statement timeout), authentication, a
            // missing database, …: the engine or its setup, not the data.
            _ => Kind::Unavailable,
        }
    };
    (kind, text)
}

/// A driver failure, described without data (for logs and start-up errors).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    sort(e).1
}

/// A driver failure during `what`, as a [`PgError`].
pub(crate) fn db(what: &str, e: &tokio_postgres::Error) -> PgError {
    let (kind, text) = sort(e);
    let message = format!("{what}: {text}");
    match kind {
        Kind::Unavailable => PgError::Unavailable(message),
        Kind::Corrupt => PgError::Corrupt(message),
        Kind::Conflict => PgError::Conflict(message),
    }
}

/// A failure to get a pooled connection during `what`.
pub(crate) fn pool(what: &str, e: PoolError) -> PgError {
    match e {
        PoolError::Timeout(TimeoutType::Wait) => PgError::Unavailable(format!(
            "{what}: no pooled connection became free in time (pool exhausted)"
        )),
        PoolError::Timeout(TimeoutType::Create) => {
            PgError::Unavailable(format!("{what}: connecting to the database timed out"))
        }
        PoolError::Timeout(TimeoutType::Recycle) => {
            PgError::Unavailable(format!("{what}: checking a pooled connection timed out"))
        }
        PoolError::Backend(e) => db(&format!("{what}: connecting"), &e),
        PoolError::Closed => PgError::Unavailable(format!("{what}: the pool is closed")),
        PoolError::NoRuntimeSpecified => {
            PgError::Unavailable(format!("{what}: the pool has no runtime for its timeouts"))
        }
        PoolError::PostCreateHook(e) => {
            PgError::Unavailable(format!("{what}: setting up a connection failed: {e}"))
        }
    }
}

/// An unsigned value for a BIGINT column; `what` names it in the error.
pub(crate) fn int(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v)
        .map_err(|_| PgError::Corrupt(format!("{what} exceeds 2^63 - 1 and cannot be stored")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_errors_are_unavailable_and_a_newer_schema_is_corrupt() {
        let e = PgError::Connect {
            target: "127.0.0.1:1/hrx".into(),
            reason: "refused".into(),
        };
        assert!(matches!(PortError::from(e), PortError::Unavailable(_)));
        let e = PgError::SchemaTooNew { found: 9, known: 1 };
        assert!(matches!(PortError::from(e), PortError::Corrupt(_)));
        assert!(matches!(
            PortError::from(PgError::Conflict("x".into())),
            PortError::Conflict(_)
        ));
    }

    #[test]
    fn values_past_i64_are_refused() {
        assert_eq!(int(7, "seq").unwrap(), 7);
        assert!(matches!(int(u64::MAX, "seq"), Err(PgError::Corrupt(_))));
    }
}
