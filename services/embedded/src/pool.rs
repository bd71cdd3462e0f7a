//! The database connections: one writer and a small pool of readers, all used on
//! tokio's blocking threads so that no SQLite call ever runs on an async worker.
//!
//! SQLite admits one writer at a time, so the writer is a single connection behind an
//! async mutex: writes queue without holding a thread, and every write transaction
//! (log appends, projection batches, audit appends) is serialised in one place, which is
//! what makes "read the last audit entry, chain the next one" and "offset = max + 1"
//! race-free. In WAL mode readers never wait for the writer, so reads go to their own
//! connections, bounded by a semaphore.

use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use tokio::sync::{Mutex as AsyncMutex, Semaphore};

use crate::error::{EmbeddedError, Result};

/// The writer and the readers of one database file.
pub(crate) struct Connections {
    /// The only connection that writes. `synchronous=FULL`: a commit is on disk before
    /// the call returns (see `schema::configure_writer`).
    writer: Arc<AsyncMutex<Connection>>,
    /// Idle read-only connections; a permit of `permits` is held while one is out, so
    /// taking one never finds the vector empty.
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
}

impl Connections {
    pub(crate) fn new(writer: Connection, readers: Vec<Connection>) -> Self {
        let permits = Arc::new(Semaphore::new(readers.len()));
        Self {
            writer: Arc::new(AsyncMutex::new(writer)),
            idle: Arc::new(Mutex::new(readers)),
            permits,
        }
    }

    /// Runs `f` on the writer connection, on a blocking thread. The wait for the writer
    /// is asynchronous; `f` itself opens whatever transaction it needs.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let mut conn = Arc::clone(&self.writer).lock_owned().await;
        blocking(move || f(&mut conn)).await
    }

    /// Runs `f` on a reader connection, on a blocking thread.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        // The semaphore is never closed, so acquiring fails only if it were.
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| EmbeddedError::Cancelled)?;
        let idle = Arc::clone(&self.idle);
        blocking(move || {
            let mut lease = Lease::take(idle);
            let result = f(lease.conn());
            drop(lease);
            drop(permit);
            result
        })
        .await
    }
}

/// A reader taken from the idle list; given back on drop, even if `f` panics, so the
/// pool never shrinks. (A panic inside a rusqlite transaction rolls it back on drop.)
struct Lease {
    conn: Option<Connection>,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl Lease {
    fn take(idle: Arc<Mutex<Vec<Connection>>>) -> Self {
        // The list is a plain Vec: a panic elsewhere cannot leave it half-updated, so a
        // poisoned lock is safe to use.
        let conn = idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        Self { conn, idle }
    }

    fn conn(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("a permit guarantees an idle reader")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
    }
}

/// Runs `f` on tokio's blocking pool. A panic in `f` is a bug and is resumed in the
/// caller rather than disguised as a retryable error.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(EmbeddedError::Cancelled),
    }
}
