//! [`EventLog`] on the `log_entries` table (one partition, offsets 0, 1, 2, …) and the
//! `log_chain_index` ingest consults before appending.
//!
//! Also the chain lookup shared with the projector's chain index (`chain_links`): both
//! tables have the same shape, and both answer "head, and the events already at this id
//! or seq" the same way.

use std::time::Duration;

use async_trait::async_trait;
use hrx_domain::chain::{ChainContext, ChainHead, Prior};
use hrx_domain::{Envelope, EventId};
use hrx_ports::{
    Append, ChainKey, EventLog, LogChainContext, LogEntry, LogPosition, PortError, PortResult,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::SqliteNode;
use crate::codec::{self, Cols};
use crate::error::{EmbeddedError, Result};

/// The embedded log's only partition.
const PARTITION: u32 = 0;

/// The offset the next append will get.
pub(crate) fn end_offset(conn: &Connection) -> Result<u64> {
    let end: i64 = conn.query_row(
        "SELECT COALESCE(MAX(log_offset) + 1, 0) FROM log_entries",
        [],
        |r| r.get(0),
    )?;
    u64::try_from(end).map_err(|_| EmbeddedError::Corrupt("negative log offset".into()))
}

/// A chain index table and how its rows name their log position.
#[derive(Clone, Copy)]
pub(crate) enum ChainTable {
    /// `log_chain_index`: what is in the log.
    Log,
    /// `chain_links`: what the projector has taken into its chains.
    Projected,
}

impl ChainTable {
    /// `SELECT` lists and `FROM` per table. The names are static: no user text is ever
    /// formatted into SQL.
    fn sql(self) -> (&'static str, &'static str) {
        match self {
            ChainTable::Log => ("0, log_offset", "log_chain_index"),
            ChainTable::Projected => ("log_partition, log_offset", "chain_links"),
        }
    }
}

/// Head of `chain` in `table`, and the entries with `event_id` and at `seq`, with the
/// position of the prior the caller should report (the one with the same id first: it is
/// the one `chain::check` consults first). Run inside one read transaction so that the
/// three lookups see one snapshot.
pub(crate) fn chain_context(
    conn: &mut Connection,
    table: ChainTable,
    chain: &ChainKey,
    event_id: EventId,
    seq: u64,
) -> Result<(ChainContext, Option<LogPosition>)> {
    let (position, from) = table.sql();
    let tx = conn.transaction()?;
    let key = chain.as_key();
    let key: &str = &key;

    let head = codec::first(
        &mut *tx.prepare_cached(&format!(
            "SELECT seq, event_hash, event_id, recorded_s, recorded_ns FROM {from} \
             WHERE chain = ?1 ORDER BY seq DESC LIMIT 1"
        ))?,
        [key],
        |c| {
            Ok(ChainHead {
                seq: c.u64()?,
                event_hash: c.sha256()?,
                event_id: Some(c.event_id()?),
                recorded_at: c.opt_ts()?,
            })
        },
    )?
    .unwrap_or(ChainHead::EMPTY);

    let prior = |c: &mut Cols<'_, '_>| -> Result<(Prior, LogPosition)> {
        Ok((
            Prior {
                event_id: c.event_id()?,
                seq: c.u64()?,
                event_hash: c.sha256()?,
            },
            c.position()?,
        ))
    };
    let by_id = codec::first(
        &mut *tx.prepare_cached(&format!(
            "SELECT event_id, seq, event_hash, {position} FROM {from} \
             WHERE chain = ?1 AND event_id = ?2"
        ))?,
        params![key, codec::id(&event_id)],
        prior,
    )?;
    // A seq past i64::MAX cannot be stored, so nothing can be at it.
    let by_seq = match i64::try_from(seq) {
        Ok(seq) => codec::first(
            &mut *tx.prepare_cached(&format!(
                "SELECT event_id, seq, event_hash, {position} FROM {from} \
                 WHERE chain = ?1 AND seq = ?2"
            ))?,
            params![key, seq],
            prior,
        )?,
        Err(_) => None,
    };
    tx.finish()?;

    let prior_position = by_id.or(by_seq).map(|(_, p)| p);
    Ok((
        ChainContext {
            head,
            same_event_id: by_id.map(|(p, _)| p),
            same_seq: by_seq.map(|(p, _)| p),
        },
        prior_position,
    ))
}

/// Whether another chain than `chain` holds `event_id` in the log.
fn id_in_other_chain(conn: &Connection, chain: &str, event_id: &EventId) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM log_chain_index WHERE event_id = ?1 AND chain <> ?2)",
        )?
        .query_row(params![codec::id(event_id), chain], |r| r.get(0))?)
}

/// The error for a partition this log does not have. `PortError` has no "invalid
/// argument" kind; asking for one is a caller bug, reported as unavailable storage.
fn no_partition(partition: u32) -> PortError {
    PortError::Unavailable(format!(
        "log partition {partition} does not exist (the embedded log has one, 0)"
    ))
}

/// Appends `batch` in one transaction; the positions, in order.
fn append(conn: &mut Connection, batch: &[Append]) -> Result<(Vec<LogPosition>, u64)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut next = codec::int(end_offset(&tx)?, "log offset")?;
    let mut positions = Vec::with_capacity(batch.len());
    {
        let mut entry = tx.prepare_cached(
            "INSERT INTO log_entries \
             (log_offset, payload_type, key_id, signature, appended_s, appended_ns, payload, \
             registry_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut index = tx.prepare_cached(
            "INSERT INTO log_chain_index (chain, seq, event_id, event_hash, log_offset, \
             recorded_s, recorded_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for a in batch {
            let env = &a.envelope;
            // The port's contract, as every log keeps it (Kafka timestamps are
            // milliseconds): a receive time with a finer part is a caller's bug.
            if a.received_at != a.received_at.truncated_to_millis() {
                return Err(EmbeddedError::Corrupt(
                    "an append's received_at must be whole milliseconds".into(),
                ));
            }
            let (appended_s, appended_ns) = codec::ts(a.received_at);
            entry.execute(params![
                next,
                env.payload_type,
                env.key_id,
                env.signature,
                appended_s,
                appended_ns,
                env.payload,
                a.registry_seq
                    .map(|s| codec::int(s, "registry seq"))
                    .transpose()?,
            ])?;
            if id_in_other_chain(&tx, &a.chain.as_key(), &a.event_id)? {
                return Err(EmbeddedError::Conflict(format!(
                    "event {} is already held by another chain in the log",
                    a.event_id
                )));
            }
            let seq = codec::int(a.seq, "seq")?;
            let (recorded_s, recorded_ns) = codec::opt_ts(a.recorded_at);
            index
                .execute(params![
                    a.chain.as_key(),
                    seq,
                    codec::id(&a.event_id),
                    a.event_hash.as_bytes(),
                    next,
                    recorded_s,
                    recorded_ns,
                ])
                .map_err(EmbeddedError::from)
                .map_err(|e| {
                    if e.is_constraint() {
                        EmbeddedError::Conflict(format!(
                            "chain {} already holds seq {} or event {} in the log",
                            a.chain, a.seq, a.event_id
                        ))
                    } else {
                        e
                    }
                })?;
            positions.push(LogPosition {
                partition: PARTITION,
                offset: next as u64,
            });
            next += 1;
        }
    }
    tx.commit()?;
    Ok((positions, next as u64))
}

fn read(conn: &mut Connection, offset: u64, max: usize) -> Result<Vec<LogEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT log_offset, payload_type, key_id, signature, appended_s, appended_ns, payload, \
         registry_seq FROM log_entries WHERE log_offset >= ?1 ORDER BY log_offset LIMIT ?2",
    )?;
    codec::collect(
        &mut stmt,
        params![codec::bound(offset), codec::limit(max)],
        |c| {
            let offset = c.u64()?;
            let payload_type = c.text()?;
            let key_id = c.text()?;
            let signature = c.blob()?;
            let appended_at = c.ts()?;
            let payload = c.blob()?;
            let registry_seq = c.opt_u64()?;
            Ok(LogEntry {
                position: LogPosition {
                    partition: PARTITION,
                    offset,
                },
                envelope: Envelope {
                    payload_type,
                    payload,
                    key_id,
                    signature,
                },
                appended_at,
                registry_seq,
            })
        },
    )
}

/// The log's envelope at `offset`, for `TimelineStore::record`.
pub(crate) fn envelope_at(conn: &Connection, offset: u64) -> Result<Option<Envelope>> {
    conn.query_row(
        "SELECT payload_type, key_id, signature, payload FROM log_entries WHERE log_offset = ?1",
        [codec::bound(offset)],
        |r| {
            Ok(Envelope {
                payload_type: r.get(0)?,
                key_id: r.get(1)?,
                signature: r.get(2)?,
                payload: r.get(3)?,
            })
        },
    )
    .optional()
    .map_err(EmbeddedError::from)
}

#[async_trait]
impl EventLog for SqliteNode {
    fn partitions(&self) -> u32 {
        1
    }

    fn partition_of(&self, _chain: &ChainKey) -> u32 {
        0
    }

    async fn join(&self, _group: &str) -> PortResult<tokio::sync::watch::Receiver<Vec<u32>>> {
        // One partition, one projector: the assignment never changes (a receiver whose
        // sender is gone keeps its value).
        Ok(tokio::sync::watch::channel(vec![0]).1)
    }

    /// All lookups on one reader connection, in one blocking call.
    async fn chain_contexts(
        &self,
        chain: &ChainKey,
        links: &[(EventId, u64)],
    ) -> PortResult<Vec<LogChainContext>> {
        let chain = chain.clone();
        let links = links.to_vec();
        Ok(self
            .inner
            .db
            .read(move |conn| {
                links
                    .into_iter()
                    .map(|(event_id, seq)| {
                        let (context, prior_position) =
                            chain_context(conn, ChainTable::Log, &chain, event_id, seq)?;
                        Ok(LogChainContext {
                            context,
                            prior_position,
                            id_in_other_chain: id_in_other_chain(conn, &chain.as_key(), &event_id)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .await?)
    }

    async fn chain_context(
        &self,
        chain: &ChainKey,
        event_id: EventId,
        seq: u64,
    ) -> PortResult<LogChainContext> {
        let chain = chain.clone();
        Ok(self
            .inner
            .db
            .read(move |conn| {
                let (context, prior_position) =
                    chain_context(conn, ChainTable::Log, &chain, event_id, seq)?;
                Ok(LogChainContext {
                    context,
                    prior_position,
                    id_in_other_chain: id_in_other_chain(conn, &chain.as_key(), &event_id)?,
                })
            })
            .await?)
    }

    async fn append(&self, batch: Vec<Append>) -> PortResult<Vec<LogPosition>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        let positions = self
            .inner
            .db
            .write(move |conn| {
                let (positions, end) = append(conn, &batch)?;
                // Published while the writer is still held, so the value never goes
                // backwards, and from the blocking task, so it happens even if the
                // caller has stopped waiting.
                inner.log_end.send_modify(|e| *e = (*e).max(end));
                Ok(positions)
            })
            .await?;
        Ok(positions)
    }

    async fn read(&self, partition: u32, offset: u64, max: usize) -> PortResult<Vec<LogEntry>> {
        if partition != PARTITION {
            return Err(no_partition(partition));
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .inner
            .db
            .read(move |conn| read(conn, offset, max))
            .await?)
    }

    async fn end_offset(&self, partition: u32) -> PortResult<u64> {
        if partition != PARTITION {
            return Err(no_partition(partition));
        }
        // The watch holds the committed end: no need to ask SQLite.
        Ok(*self.inner.log_end.borrow())
    }

    async fn wait_for(&self, partition: u32, offset: u64, timeout: Duration) {
        if partition != PARTITION {
            // Nothing will ever arrive there: honour the timeout, as for an idle log.
            tokio::time::sleep(timeout).await;
            return;
        }
        let mut end = self.inner.log_end.subscribe();
        // `wait_for` checks the current value first, so an append that landed before we
        // subscribed is not missed. The sender lives as long as `self`.
        let _ = tokio::time::timeout(timeout, end.wait_for(|end| *end > offset)).await;
    }
}
