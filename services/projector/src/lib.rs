//! The projector: tails the event log and turns it into projections.
//!
//! Every entry is verified again from scratch — signature, key validity at its
//! `recorded_at`, chain, content — because the log is the source of truth and a replay
//! (`hrx reproject`) must reach the same projections from the log alone. A batch of
//! entries becomes one [`ProjectionBatch`] that the store applies in one transaction
//! together with the offset after the batch, so a crash at any point resumes exactly
//! after the last committed batch: nothing lost, nothing doubled.
//!
//! Keys and chain heads are kept in memory (a few thousand facilities); history
//! lookups (a resent event below the head) go to the store, overlaid with the batch
//! being built.

mod batch;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hrx_domain::KeyId;
use hrx_domain::consent::ConsentPolicy;
use hrx_domain::verify::{ClockPolicy, KeyRecord, SignatureMemo};
use hrx_ports::{ChainKey, EventLog, PortError, Store};

/// How long `catch_up` waits on a partition that makes no progress.
const CATCH_UP_STALL: Duration = Duration::from_secs(30);

/// Projector settings.
#[derive(Clone, Debug)]
pub struct ProjectorConfig {
    /// Most log entries per batch (one store transaction).
    pub batch_size: usize,
    /// The national root key(s) that sign registry events.
    pub root_keys: Vec<KeyRecord>,
    /// How long to wait for new entries before checking again.
    pub idle_wait: Duration,
    /// The projector group: replicas in one group share the log's partitions.
    pub group: String,
    /// Signatures this process already verified (by its ingest): not verified twice.
    pub verified: Arc<SignatureMemo>,
    /// The bounds of facility consent events; the same as ingest's.
    pub policy: ConsentPolicy,
    /// The bounds of recorded_at around the receive time; the same as ingest's.
    pub clock: ClockPolicy,
}

impl ProjectorConfig {
    pub fn new(root_keys: Vec<KeyRecord>) -> Self {
        Self {
            batch_size: 500,
            root_keys,
            idle_wait: Duration::from_millis(500),
            group: "hrx-projector".into(),
            verified: Arc::default(),
            policy: ConsentPolicy::default(),
            clock: ClockPolicy::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The projector of one node (or one replica, for the partitions it owns).
pub struct Projector {
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    config: ProjectorConfig,
    /// Root and facility keys by id, as of the last projected registry event.
    keys: HashMap<KeyId, KeyRecord>,
    /// Next offset to read, per partition.
    offsets: HashMap<u32, u64>,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("offsets", &self.offsets)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Projector {
    /// Loads the projector's state from the store: where to resume, which keys exist.
    pub async fn build(
        log: Arc<dyn EventLog>,
        store: Arc<dyn Store>,
        config: ProjectorConfig,
    ) -> Result<Self, ProjectorError> {
        let mut p = Self {
            log,
            store,
            config,
            keys: HashMap::new(),
            offsets: HashMap::new(),
        };
        p.reload().await?;
        Ok(p)
    }

    /// Re-reads offsets and keys from the store (after a failed apply, the in-memory
    /// state may be ahead of what was committed).
    async fn reload(&mut self) -> Result<(), ProjectorError> {
        let snapshot = self.store.projector_snapshot().await?;
        self.offsets = snapshot.offsets.into_iter().collect();
        self.keys = self
            .config
            .root_keys
            .iter()
            .chain(snapshot.keys.iter())
            .map(|k| (k.key_id(), k.clone()))
            .collect();
        Ok(())
    }

    /// Makes sure every registry event appended before now is projected and in this
    /// projector's keyring, so that facility events are judged with every key that
    /// ingest could have accepted them with — also on a replay, and when another
    /// replica owns the registry partition. Returns false when another replica has not
    /// caught up yet (the caller retries later).
    async fn registry_ready(&mut self, registry: u32) -> Result<bool, ProjectorError> {
        let end = self.log.end_offset(registry).await?;
        let ours = self.offsets.get(&registry).copied().unwrap_or(0);
        if ours >= end {
            return Ok(true);
        }
        let stored = self
            .store
            .projected_offsets()
            .await?
            .into_iter()
            .find(|(p, _)| *p == registry)
            .map(|(_, o)| o)
            .unwrap_or(0);
        if stored > ours {
            // Another replica projected registry events: take its keys.
            self.reload().await?;
            if self.offsets.get(&registry).copied().unwrap_or(0) >= end {
                return Ok(true);
            }
        }
        // Project the registry partition here (a replica that does not own it may do
        // so too: the store's offset fencing lets exactly one of them commit).
        while self.offsets.get(&registry).copied().unwrap_or(0) < end {
            if self.step_unchecked(registry).await? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Projects at most one batch from `partition`; returns how many entries it took.
    pub async fn step(&mut self, partition: u32) -> Result<usize, ProjectorError> {
        let registry = self.log.partition_of(&ChainKey::Registry);
        if partition != registry && !self.registry_ready(registry).await? {
            return Ok(0);
        }
        self.step_unchecked(partition).await
    }

    async fn step_unchecked(&mut self, partition: u32) -> Result<usize, ProjectorError> {
        let from = self.offsets.get(&partition).copied().unwrap_or(0);
        let entries = self
            .log
            .read(partition, from, self.config.batch_size)
            .await?;
        if entries.is_empty() {
            return Ok(0);
        }
        let n = entries.len();
        let next = entries
            .last()
            .map(|e| e.position.offset + 1)
            .unwrap_or(from);
        let (mut batch, keys) = batch::build(
            &*self.store,
            &self.keys,
            &self.config.verified,
            (&self.config.policy, &self.config.clock),
            entries,
        )
        .await?;
        batch.offsets.push((partition, next));
        batch.expected_offsets.push((partition, from));
        match self.store.apply(batch).await {
            Ok(()) => {
                self.keys = keys;
                self.offsets.insert(partition, next);
                Ok(n)
            }
            Err(e) => {
                self.reload().await?;
                Err(e.into())
            }
        }
    }

    /// Projects until every partition is at the log's end offset as read at the start.
    /// A read that comes back empty before the end (a log whose fetches are not yet
    /// served, as a fresh Kafka consumer's may not be) is retried; a partition that
    /// makes no progress for [`CATCH_UP_STALL`] is an error, never a silent stop.
    pub async fn catch_up(&mut self) -> Result<u64, ProjectorError> {
        let mut total = 0u64;
        for partition in 0..self.log.partitions() {
            let end = self.log.end_offset(partition).await?;
            let mut stalled_since = tokio::time::Instant::now();
            loop {
                let at = self.offsets.get(&partition).copied().unwrap_or(0);
                if at >= end {
                    break;
                }
                let n = self.step(partition).await?;
                if n > 0 {
                    total += n as u64;
                    stalled_since = tokio::time::Instant::now();
                    continue;
                }
                if stalled_since.elapsed() > CATCH_UP_STALL {
                    return Err(ProjectorError::Port(PortError::Unavailable(format!(
                        "partition {partition} made no progress at offset {at} of {end}"
                    ))));
                }
                self.log
                    .wait_for(partition, at, Duration::from_millis(200))
                    .await;
            }
        }
        Ok(total)
    }

    /// Tails the partitions this replica is assigned (all of them, when it is alone)
    /// until `shutdown` resolves. Store or log outages are retried with backoff; they
    /// never end the loop.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        let mut assignment = loop {
            match self.log.join(&self.config.group).await {
                Ok(a) => break a,
                Err(e) => {
                    tracing::warn!(error = %e, "joining the projector group failed; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let mut assignment_open = true;
        let mut previous: Vec<u32> = Vec::new();
        loop {
            let assigned = assignment.borrow_and_update().clone();
            if assigned != previous {
                // Partitions new to this replica were projected elsewhere until now:
                // resume from the store's offsets, not from memory.
                if let Err(e) = self.reload().await {
                    tracing::warn!(error = %e, "reloading projector state failed; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    continue;
                }
                previous = assigned.clone();
            }
            let mut progressed = false;
            let mut failed = false;
            for &partition in &assigned {
                match self.step(partition).await {
                    Ok(n) => progressed |= n > 0,
                    Err(e) => {
                        tracing::warn!(error = %e, partition, "projector batch failed; retrying");
                        failed = true;
                    }
                }
            }
            if failed {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            backoff = Duration::from_millis(100);
            if progressed {
                continue;
            }
            let waits = assigned.iter().map(|&p| {
                let offset = self.offsets.get(&p).copied().unwrap_or(0);
                Box::pin(self.log.wait_for(p, offset, self.config.idle_wait))
            });
            let idle = async {
                if assigned.is_empty() {
                    tokio::time::sleep(self.config.idle_wait).await;
                } else {
                    futures::future::select_all(waits).await;
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                changed = assignment.changed(), if assignment_open => {
                    // A log whose assignment never changes drops its sender.
                    assignment_open = changed.is_ok();
                }
                _ = idle => {}
            }
        }
    }
}
