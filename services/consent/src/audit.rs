//! Group commit of access events. Every read is audited before it is answered, and
//! under load one store transaction per read serialises all reads on the store's
//! single writer (SQLite) or on the audit head's row lock (PostgreSQL). Reads hand
//! their access event to one writer task instead, which appends whatever has queued
//! meanwhile in one transaction and then answers each read: a read still returns only
//! after its audit entry is durable, but N concurrent reads cost one commit.

use std::sync::Arc;

use hrx_ports::{AccessAppend, PortError, PortResult, Store};
use tokio::sync::{mpsc, oneshot};

/// Most access events per transaction: bounds a transaction's size, not the wait
/// (the writer takes whatever is queued as soon as the previous commit is done).
const MAX_GROUP: usize = 256;

struct Pending {
    append: AccessAppend,
    done: oneshot::Sender<PortResult<()>>,
}

/// The handle reads audit through; the writer task ends when the last handle goes.
pub struct AuditWriter {
    queue: mpsc::Sender<Pending>,
}

fn stopped() -> PortError {
    PortError::Unavailable("the audit writer stopped".into())
}

impl AuditWriter {
    /// Starts the writer task on the current tokio runtime.
    pub fn spawn(store: Arc<dyn Store>) -> Self {
        let (queue, rx) = mpsc::channel(4 * MAX_GROUP);
        tokio::spawn(write_groups(store, rx));
        Self { queue }
    }

    /// Appends `append` and returns once it is committed.
    pub async fn append(&self, append: AccessAppend) -> PortResult<()> {
        let (done, committed) = oneshot::channel();
        self.queue
            .send(Pending { append, done })
            .await
            .map_err(|_| stopped())?;
        committed.await.map_err(|_| stopped())?
    }
}

async fn write_groups(store: Arc<dyn Store>, mut queue: mpsc::Receiver<Pending>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        let (appends, waiters): (Vec<_>, Vec<_>) =
            group.drain(..).map(|p| (p.append, p.done)).unzip();
        let result = store.append_accesses(appends).await.map(drop);
        // All or nothing: every read of a failed group fails (and is not answered).
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter").finish_non_exhaustive()
    }
}
