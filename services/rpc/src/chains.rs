//! Per-chain locks: one async mutex per chain, held from the chain lookup to the
//! append, so two submissions for one facility are placed one after the other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hrx_ports::ChainKey;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Shared by ingest and the registry service (which appends to the registry chain).
#[derive(Clone, Default, Debug)]
pub struct ChainLocks {
    locks: Arc<Mutex<HashMap<ChainKey, Arc<AsyncMutex<()>>>>>,
}

impl ChainLocks {
    pub async fn lock(&self, chain: &ChainKey) -> OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .expect("chain lock table poisoned")
            .entry(chain.clone())
            .or_default()
            .clone();
        lock.lock_owned().await
    }
}
