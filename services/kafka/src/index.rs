//! Ingest's chain index over the Kafka log, in PostgreSQL: one row per event that
//! entered its chain in the log, and per partition the offset up to which the log has
//! been scanned contiguously. Kafka holds the events; the index is rebuilt from the
//! message headers (see [`crate`] for how and when), but only for messages an append
//! claimed here before producing them, with the event hash their payload has: the
//! claims, not the headers, are what the index trusts.
//!
//! Schema (versioned migrations in `hrx_log_migrations`, applied under an advisory lock
//! so that concurrent start-ups do not race; the store adapter keeps its own migrations
//! table in the same database):
//!
//! - `log_chain_index(chain, seq, event_id, event_hash, partition, offset, recorded_s,
//!   recorded_ns)`, primary key `(chain, seq)`, unique `(chain, event_id)`, indexed by
//!   `(partition, offset)`; `recorded_s`/`recorded_ns` are the event's recorded_at
//!   (Unix seconds and nanoseconds, as the stores keep timestamps), NULL for events
//!   without one and for rows indexed before version 2;
//! - `log_index_offsets(partition, next_offset)`;
//! - `log_event_ids(event_id, chain)`: which chain each event id belongs to, claimed
//!   before the append produces it (see [`claim`]);
//! - `log_event_hashes(event_id, event_hash, seq)`: the event hashes and seqs claimed
//!   with each id (version 4; ids claimed before have none, and are bound by the id
//!   alone). Catch-up indexes a message only if [`claimed`] finds its (chain, id, hash,
//!   seq) here.
//!
//! Advisory locks use the two-integer form, whose key space is separate from the
//! one-bigint form, with a class id per purpose (`LOCK_*`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use hrx_domain::chain::{ChainContext, ChainHead, Prior};
use hrx_domain::{EventId, Sha256, Timestamp};
use hrx_ports::{Append, ChainKey, LogPosition, PortError, PortResult};

use crate::KafkaConfig;
use crate::error::{KafkaError, pg, pool};

/// Advisory lock class: schema migrations.
const LOCK_MIGRATE: i32 = 0x6872_7801;
/// Advisory lock class: appends to one chain (object id: `hashtext(chain)`).
const LOCK_CHAIN: i32 = 0x6872_7802;
/// Advisory lock class: catch-up scans of one partition (object id: the partition).
const LOCK_SCAN: i32 = 0x6872_7803;

/// Forward-only migrations: (version, name, SQL). Never edit one that has shipped.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "chain index",
        r#"
    CREATE TABLE log_chain_index (
        chain        text    NOT NULL,
        seq          bigint  NOT NULL CHECK (seq >= 0),
        event_id     uuid    NOT NULL,
        event_hash   bytea   NOT NULL CHECK (octet_length(event_hash) = 32),
        "partition"  integer NOT NULL CHECK ("partition" >= 0),
        "offset"     bigint  NOT NULL CHECK ("offset" >= 0),
        PRIMARY KEY (chain, seq),
        UNIQUE (chain, event_id)
    );
    CREATE INDEX log_chain_index_position ON log_chain_index ("partition", "offset");
    CREATE TABLE log_index_offsets (
        "partition"  integer PRIMARY KEY CHECK ("partition" >= 0),
        next_offset  bigint  NOT NULL CHECK (next_offset >= 0)
    );
    "#,
    ),
    (
        2,
        "recorded_at",
        // Each event's recorded_at, so that the next one of the chain cannot claim an
        // earlier one; NULL in the rows already there (heads without a time). Nullable
        // columns, and a check NOT VALID (the existing rows are all NULL, which it
        // allows): no rewrite and no scan of a table with a row per event.
        r#"
    ALTER TABLE log_chain_index
        ADD COLUMN recorded_s  bigint,
        ADD COLUMN recorded_ns integer;
    ALTER TABLE log_chain_index
        ADD CONSTRAINT log_chain_index_recorded_at CHECK (
            (recorded_s IS NULL) = (recorded_ns IS NULL)
            AND recorded_ns BETWEEN 0 AND 999999999
        ) NOT VALID;
    "#,
    ),
    (
        3,
        "event id claims",
        // Event ids are unique across chains. An append claims its ids here, committed,
        // before it produces to Kafka: a concurrent append of the same id by another
        // chain then sees the claim and is refused, whichever partitions the two chains
        // live in. The rows already indexed are claimed by their earliest entry.
        r#"
    CREATE TABLE log_event_ids (
        event_id  uuid  PRIMARY KEY,
        chain     text  NOT NULL
    );
    INSERT INTO log_event_ids (event_id, chain)
        SELECT DISTINCT ON (event_id) event_id, chain FROM log_chain_index
         ORDER BY event_id, "partition", "offset";
    "#,
    ),
    (
        4,
        "claimed event hashes",
        // The event hash and seq an append claimed with each id, so that catch-up
        // indexes a message only if an append meant to write exactly that envelope at
        // exactly that seq (see `claim`).
        // A table rather than a column of `log_event_ids`: one chain may claim an id
        // more than once with different envelopes (a submission refused before it was
        // produced, then re-signed and retried), and each of those may be in Kafka. An
        // id without rows here was claimed by an hrx that did not record hashes. New
        // and empty: no rewrite, no scan.
        r#"
    CREATE TABLE log_event_hashes (
        event_id    uuid    NOT NULL,
        event_hash  bytea   NOT NULL CHECK (octet_length(event_hash) = 32),
        seq         bigint  NOT NULL CHECK (seq >= 0),
        PRIMARY KEY (event_id, event_hash, seq)
    );
    "#,
    ),
];

/// The two connection pools. Catch-up scans use their own small pool: an append holds a
/// connection (its transaction and chain lock) while it waits for a scan, so if both
/// drew from one pool, enough concurrent appends could take every connection and wait
/// forever for one more.
#[derive(Debug)]
pub(crate) struct Index {
    pub pool: Pool,
    pub scan: Pool,
}

impl Index {
    /// Connects, migrates, and makes sure every partition has its offsets row.
    pub async fn open(
        database_url: &str,
        config: &KafkaConfig,
        partitions: u32,
    ) -> Result<Self, KafkaError> {
        let (mut pg, tls) = hrx_identity::backend::postgres(database_url)
            .map_err(|e| KafkaError::Config(e.to_string()))?;
        // An append keeps its transaction open while Kafka acknowledges (up to the
        // produce timeout). Waiting for a chain's lock longer than a full append can
        // take means something is stuck: fail (retryably) instead of queueing forever.
        // A session that dies mid-append without PostgreSQL noticing (a host crash) is
        // ended by the idle-in-transaction timeout, which frees its chain locks.
        let append_bound = config.produce_timeout + config.request_timeout * 2;
        let lock_timeout = append_bound + Duration::from_secs(10);
        let idle_timeout = append_bound * 2 + Duration::from_secs(30);
        let options = format!(
            "{} -c lock_timeout={}ms -c idle_in_transaction_session_timeout={}ms",
            pg.get_options().unwrap_or_default(),
            lock_timeout.as_millis(),
            idle_timeout.as_millis()
        );
        pg.options(options.trim());
        if pg.get_application_name().is_none() {
            pg.application_name("hrx-kafka-log");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(config.connect_timeout);
        }
        let make = |size: usize| {
            let manager = Manager::from_config(
                pg.clone(),
                tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                // Warm connections first (see the store's pool in hrx-postgres).
                .queue_mode(deadpool_postgres::QueueMode::Lifo)
                .wait_timeout(Some(lock_timeout))
                .create_timeout(Some(config.connect_timeout))
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| KafkaError::Config(format!("database pool: {e}")))
        };
        let index = Self {
            pool: make(config.database_pool_size.max(1))?,
            scan: make(2)?,
        };
        index.migrate(partitions).await?;
        Ok(index)
    }

    async fn migrate(&self, partitions: u32) -> Result<(), KafkaError> {
        let db = |e: tokio_postgres::Error| KafkaError::Database(e.to_string());
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| KafkaError::Database(e.to_string()))?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_MIGRATE])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS hrx_log_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(db)?;
        let applied: HashSet<i32> = tx
            .query("SELECT version FROM hrx_log_migrations", &[])
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
        if let Some(newer) = applied.iter().copied().filter(|v| *v > known).max() {
            return Err(KafkaError::Database(format!(
                "the chain index schema is at version {newer}, newer than this hrx knows \
                 ({known}): upgrade hrx"
            )));
        }
        for (version, name, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(db)?;
            tx.execute(
                "INSERT INTO hrx_log_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(db)?;
            tracing::info!(version, name, "applied chain index migration");
        }
        // Every partition has a row, so that appends can advance it by compare-and-set.
        let all: Vec<i32> = (0..partitions as i32).collect();
        tx.execute(
            r#"INSERT INTO log_index_offsets ("partition", next_offset)
               SELECT p, 0 FROM UNNEST($1::int4[]) AS p ON CONFLICT DO NOTHING"#,
            &[&all],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    pub async fn client(&self) -> PortResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool)
    }

    pub async fn scan_client(&self) -> PortResult<deadpool_postgres::Object> {
        self.scan.get().await.map_err(pool)
    }
}

/// One row of `log_chain_index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IndexRow {
    pub chain: String,
    pub seq: u64,
    pub event_id: EventId,
    pub event_hash: Sha256,
    pub position: LogPosition,
    pub recorded_at: Option<Timestamp>,
}

impl IndexRow {
    pub fn of(a: &Append, position: LogPosition) -> Self {
        Self {
            chain: a.chain.as_key().into_owned(),
            seq: a.seq,
            event_id: a.event_id,
            event_hash: a.event_hash,
            position,
            recorded_at: a.recorded_at,
        }
    }
}

/// A head's recorded_at from its two columns (both NULL: none).
fn recorded_at(s: Option<i64>, ns: Option<i32>) -> PortResult<Option<Timestamp>> {
    match (s, ns) {
        (None, None) => Ok(None),
        (Some(s), Some(ns)) => Timestamp::new(s, ns)
            .map(Some)
            .map_err(|_| corrupt("recorded_at out of range")),
        _ => Err(corrupt("half a recorded_at")),
    }
}

fn corrupt(what: &str) -> PortError {
    PortError::Corrupt(format!("chain index: {what}"))
}

/// A u64 the index stores as bigint.
pub(crate) fn big(v: u64, what: &str) -> PortResult<i64> {
    i64::try_from(v).map_err(|_| corrupt(&format!("{what} {v} beyond the index's range")))
}

fn unsigned(v: i64, what: &str) -> PortResult<u64> {
    u64::try_from(v).map_err(|_| corrupt(&format!("negative {what}")))
}

/// Takes the chain's append lock until the transaction ends.
pub(crate) async fn lock_chain<C: GenericClient>(c: &C, chain: &ChainKey) -> PortResult<()> {
    let stmt = c
        .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .await
        .map_err(pg)?;
    c.execute(&stmt, &[&LOCK_CHAIN, &&*chain.as_key()])
        .await
        .map_err(pg)?;
    Ok(())
}

/// Takes the partition's scan lock until the transaction ends.
pub(crate) async fn lock_scan<C: GenericClient>(c: &C, partition: u32) -> PortResult<()> {
    let stmt = c
        .prepare_cached("SELECT pg_advisory_xact_lock($1, $2)")
        .await
        .map_err(pg)?;
    c.execute(&stmt, &[&LOCK_SCAN, &(partition as i32)])
        .await
        .map_err(pg)?;
    Ok(())
}

/// The offset up to which `partition` has been indexed contiguously.
pub(crate) async fn next_offset<C: GenericClient>(c: &C, partition: u32) -> PortResult<u64> {
    let stmt = c
        .prepare_cached(r#"SELECT next_offset FROM log_index_offsets WHERE "partition" = $1"#)
        .await
        .map_err(pg)?;
    match c
        .query_opt(&stmt, &[&(partition as i32)])
        .await
        .map_err(pg)?
    {
        Some(row) => unsigned(row.get(0), "next offset"),
        None => Ok(0),
    }
}

/// Head of `chain`, and the rows with `event_id` and at `seq`, with the position of the
/// prior to report (the one with the same id first, as `chain::check` consults it
/// first). One statement, so one snapshot.
/// [`context`] for several links of one chain in one query (one round trip for a
/// submitted batch), in the order given.
pub(crate) async fn contexts<C: GenericClient>(
    c: &C,
    chain: &ChainKey,
    links: &[(EventId, u64)],
) -> PortResult<Vec<(ChainContext, Option<LogPosition>)>> {
    if links.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = c
        .prepare_cached(
            r#"WITH q AS (SELECT * FROM unnest($2::text[]::uuid[], $3::int8[])
                            WITH ORDINALITY AS q(event_id, seq, i))
               (SELECT 0::int2, 0::int8, seq, event_id::text, event_hash, "partition", "offset",
                       recorded_s, recorded_ns
                  FROM log_chain_index WHERE chain = $1 ORDER BY seq DESC LIMIT 1)
               UNION ALL
               SELECT 1::int2, q.i, l.seq, l.event_id::text, l.event_hash, l."partition", l."offset",
                      NULL, NULL
                 FROM q JOIN log_chain_index l ON l.chain = $1 AND l.event_id = q.event_id
               UNION ALL
               SELECT 2::int2, q.i, l.seq, l.event_id::text, l.event_hash, l."partition", l."offset",
                      NULL, NULL
                 FROM q JOIN log_chain_index l ON l.chain = $1 AND l.seq = q.seq"#,
        )
        .await
        .map_err(pg)?;
    let ids: Vec<String> = links.iter().map(|(id, _)| id.to_string()).collect();
    // A seq past i64::MAX cannot be stored, so nothing is at it (-1 matches no row).
    let seqs: Vec<i64> = links
        .iter()
        .map(|(_, s)| i64::try_from(*s).unwrap_or(-1))
        .collect();
    let rows = c
        .query(&stmt, &[&chain.as_key(), &ids, &seqs])
        .await
        .map_err(pg)?;
    let mut head = ChainHead::EMPTY;
    type Found = (Prior, LogPosition);
    let mut by_id: Vec<Option<Found>> = vec![None; links.len()];
    let mut by_seq: Vec<Option<Found>> = vec![None; links.len()];
    for row in rows {
        let prior = Prior {
            seq: unsigned(row.get(2), "seq")?,
            event_id: EventId::parse(row.get(3)).map_err(|_| corrupt("event id"))?,
            event_hash: Sha256::from_slice(row.get(4)).map_err(|_| corrupt("event hash"))?,
        };
        let position = LogPosition {
            partition: u32::try_from(row.get::<_, i32>(5)).map_err(|_| corrupt("partition"))?,
            offset: unsigned(row.get(6), "offset")?,
        };
        // WITH ORDINALITY counts from 1.
        let i = usize::try_from(row.get::<_, i64>(1) - 1);
        match (row.get::<_, i16>(0), i) {
            (0, _) => {
                head = ChainHead {
                    seq: prior.seq,
                    event_hash: prior.event_hash,
                    event_id: Some(prior.event_id),
                    recorded_at: recorded_at(row.get(7), row.get(8))?,
                }
            }
            (1, Ok(i)) if i < links.len() => by_id[i] = Some((prior, position)),
            (2, Ok(i)) if i < links.len() => by_seq[i] = Some((prior, position)),
            _ => return Err(corrupt("link ordinal")),
        }
    }
    Ok(by_id
        .into_iter()
        .zip(by_seq)
        .map(|(by_id, by_seq)| {
            (
                ChainContext {
                    head,
                    same_event_id: by_id.map(|(p, _)| p),
                    same_seq: by_seq.map(|(p, _)| p),
                },
                by_id.or(by_seq).map(|(_, p)| p),
            )
        })
        .collect())
}

pub(crate) async fn context<C: GenericClient>(
    c: &C,
    chain: &ChainKey,
    event_id: EventId,
    seq: u64,
) -> PortResult<(ChainContext, Option<LogPosition>)> {
    let stmt = c
        .prepare_cached(
            r#"(SELECT 0::int2, seq, event_id::text, event_hash, "partition", "offset",
                       recorded_s, recorded_ns
                  FROM log_chain_index WHERE chain = $1 ORDER BY seq DESC LIMIT 1)
               UNION ALL
               (SELECT 1::int2, seq, event_id::text, event_hash, "partition", "offset",
                       NULL, NULL
                  FROM log_chain_index WHERE chain = $1 AND event_id = $2::text::uuid)
               UNION ALL
               (SELECT 2::int2, seq, event_id::text, event_hash, "partition", "offset",
                       NULL, NULL
                  FROM log_chain_index WHERE chain = $1 AND seq = $3)"#,
        )
        .await
        .map_err(pg)?;
    // A seq past i64::MAX cannot be stored, so nothing is at it (-1 matches no row).
    let seq = i64::try_from(seq).unwrap_or(-1);
    let rows = c
        .query(&stmt, &[&chain.as_key(), &event_id.to_string(), &seq])
        .await
        .map_err(pg)?;
    let mut head = ChainHead::EMPTY;
    let mut by_id = None;
    let mut by_seq = None;
    for row in rows {
        let prior = Prior {
            seq: unsigned(row.get(1), "seq")?,
            event_id: EventId::parse(row.get(2)).map_err(|_| corrupt("event id"))?,
            event_hash: Sha256::from_slice(row.get(3)).map_err(|_| corrupt("event hash"))?,
        };
        let position = LogPosition {
            partition: u32::try_from(row.get::<_, i32>(4)).map_err(|_| corrupt("partition"))?,
            offset: unsigned(row.get(5), "offset")?,
        };
        match row.get::<_, i16>(0) {
            0 => {
                head = ChainHead {
                    seq: prior.seq,
                    event_hash: prior.event_hash,
                    event_id: Some(prior.event_id),
                    recorded_at: recorded_at(row.get(6), row.get(7))?,
                }
            }
            1 => by_id = Some((prior, position)),
            _ => by_seq = Some((prior, position)),
        }
    }
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

/// The head seq of each chain (absent: empty chain).
pub(crate) async fn heads<C: GenericClient>(
    c: &C,
    chains: &[String],
) -> PortResult<HashMap<String, u64>> {
    let stmt = c
        .prepare_cached(
            "SELECT b.chain, (SELECT seq FROM log_chain_index i WHERE i.chain = b.chain \
                              ORDER BY seq DESC LIMIT 1) \
             FROM UNNEST($1::text[]) AS b(chain)",
        )
        .await
        .map_err(pg)?;
    let mut out = HashMap::new();
    for row in c.query(&stmt, &[&chains]).await.map_err(pg)? {
        if let Some(seq) = row.get::<_, Option<i64>>(1) {
            out.insert(row.get(0), unsigned(seq, "seq")?);
        }
    }
    Ok(out)
}

/// Which of these (chain, event id) pairs the index already holds.
pub(crate) async fn existing_ids<C: GenericClient>(
    c: &C,
    pairs: &[(String, EventId)],
) -> PortResult<HashSet<(String, EventId)>> {
    let stmt = c
        .prepare_cached(
            "SELECT i.chain, i.event_id::text \
             FROM UNNEST($1::text[], $2::text[]) AS b(chain, event_id) \
             JOIN log_chain_index i ON i.chain = b.chain AND i.event_id = b.event_id::uuid",
        )
        .await
        .map_err(pg)?;
    let chains: Vec<&str> = pairs.iter().map(|(c, _)| c.as_str()).collect();
    let ids: Vec<String> = pairs.iter().map(|(_, id)| id.to_string()).collect();
    let mut out = HashSet::new();
    for row in c.query(&stmt, &[&chains, &ids]).await.map_err(pg)? {
        let id = EventId::parse(row.get(1)).map_err(|_| corrupt("event id"))?;
        out.insert((row.get(0), id));
    }
    Ok(out)
}

/// Those of `ids` that a chain other than `chain` holds.
pub(crate) async fn in_other_chains<C: GenericClient>(
    c: &C,
    chain: &str,
    ids: &[EventId],
) -> PortResult<HashSet<EventId>> {
    let stmt = c
        .prepare_cached(
            "SELECT event_id::text FROM log_event_ids \
             WHERE event_id = ANY($2::text[]::uuid[]) AND chain <> $1",
        )
        .await
        .map_err(pg)?;
    let ids: Vec<String> = ids.iter().map(EventId::to_string).collect();
    c.query(&stmt, &[&chain, &ids])
        .await
        .map_err(pg)?
        .iter()
        .map(|row| EventId::parse(row.get(0)).map_err(|_| corrupt("event id")))
        .collect()
}

/// One event an append is about to produce: its chain (key), id, event hash and seq.
pub(crate) type Claim = (String, EventId, Sha256, u64);

/// Claims each event's id for its chain, unless some chain already holds it (or two
/// chains of the batch want it), and records the event hash and seq with the claim;
/// returns an
/// id of the batch that another chain holds, if any (then no hash is recorded).
///
/// Run outside the append's transaction (each statement commits at once), before the
/// append produces: the claim must be visible to every other append, and to every
/// catch-up, before the event can be in Kafka. `INSERT … ON CONFLICT DO NOTHING` waits
/// for a concurrent claim of the same id to commit, and the second statement's fresh
/// snapshot then sees it. A claim whose append then fails stays with its chain, whose
/// retry reuses it; a retry with another envelope under the same id adds its hash (the
/// earlier one may be in Kafka already, from an append that failed after producing).
///
/// Catch-up indexes a message only if [`claimed`] finds its claim: what nobody claimed
/// was not written by an append of this crate.
pub(crate) async fn claim<C: GenericClient>(
    c: &C,
    claims: &[Claim],
) -> PortResult<Option<EventId>> {
    let mut chain_of: HashMap<EventId, &str> = HashMap::new();
    for (chain, id, _, _) in claims {
        if let Some(other) = chain_of.insert(*id, chain)
            && other != chain
        {
            return Ok(Some(*id)); // one id for two chains of the batch
        }
    }
    let pairs: Vec<(String, EventId)> = chain_of
        .iter()
        .map(|(id, chain)| ((*chain).to_owned(), *id))
        .collect();
    if insert_claims(c, &pairs).await? != pairs.len() as u64 {
        // Some id was claimed already: by this chain (a retry) or by another.
        let stmt = c
            .prepare_cached(
                "SELECT b.event_id FROM UNNEST($1::text[], $2::text[]) AS b(chain, event_id) \
                 JOIN log_event_ids i ON i.event_id = b.event_id::uuid AND i.chain <> b.chain \
                 LIMIT 1",
            )
            .await
            .map_err(pg)?;
        let (chains, ids) = columns(&pairs);
        if let Some(row) = c.query_opt(&stmt, &[&chains, &ids]).await.map_err(pg)? {
            return Ok(Some(
                EventId::parse(row.get(0)).map_err(|_| corrupt("event id"))?,
            ));
        }
    }
    insert_hashes(c, claims).await?;
    Ok(None)
}

/// Records the claims' event hashes and seqs, in key order (no lock cycles between
/// concurrent claims).
async fn insert_hashes<C: GenericClient>(c: &C, claims: &[Claim]) -> PortResult<()> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO log_event_hashes (event_id, event_hash, seq) \
             SELECT event_id::uuid, event_hash, seq \
               FROM UNNEST($1::text[], $2::bytea[], $3::int8[]) AS b(event_id, event_hash, seq) \
              ORDER BY 1, 2, 3 ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(pg)?;
    let (_, ids, hashes, seqs) = claim_columns(claims)?;
    c.execute(&stmt, &[&ids, &hashes, &seqs])
        .await
        .map_err(pg)?;
    Ok(())
}

type ClaimColumns<'a> = (Vec<&'a str>, Vec<String>, Vec<&'a [u8]>, Vec<i64>);

fn claim_columns(claims: &[Claim]) -> PortResult<ClaimColumns<'_>> {
    let mut out: ClaimColumns<'_> = Default::default();
    for (chain, id, hash, seq) in claims {
        out.0.push(chain);
        out.1.push(id.to_string());
        out.2.push(&hash.as_bytes()[..]);
        out.3.push(big(*seq, "seq")?);
    }
    Ok(out)
}

/// For each of `claims`, in order, whether an append claimed it before producing: its
/// id is held by its chain, and the hash and seq are recorded with the claim — or
/// nothing is (a claim of an hrx before hashes were: the id alone binds it).
pub(crate) async fn claimed<C: GenericClient>(c: &C, claims: &[Claim]) -> PortResult<Vec<bool>> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = c
        .prepare_cached(
            "SELECT b.i FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::int8[]) \
                    WITH ORDINALITY AS b(chain, event_id, event_hash, seq, i) \
               JOIN log_event_ids e ON e.event_id = b.event_id::uuid AND e.chain = b.chain \
              WHERE EXISTS (SELECT 1 FROM log_event_hashes h \
                             WHERE h.event_id = e.event_id AND h.event_hash = b.event_hash \
                               AND h.seq = b.seq) \
                 OR NOT EXISTS (SELECT 1 FROM log_event_hashes h WHERE h.event_id = e.event_id)",
        )
        .await
        .map_err(pg)?;
    let (chains, ids, hashes, seqs) = claim_columns(claims)?;
    let mut out = vec![false; claims.len()];
    for row in c
        .query(&stmt, &[&chains, &ids, &hashes, &seqs])
        .await
        .map_err(pg)?
    {
        // WITH ORDINALITY counts from 1.
        let i = usize::try_from(row.get::<_, i64>(0) - 1).map_err(|_| corrupt("ordinal"))?;
        *out.get_mut(i).ok_or_else(|| corrupt("ordinal"))? = true;
    }
    Ok(out)
}

/// Inserts the claims that are not there yet, in id order (so that two concurrent
/// claims of overlapping ids wait for each other in one order, never in a cycle).
/// Returns how many were inserted.
async fn insert_claims<C: GenericClient>(c: &C, pairs: &[(String, EventId)]) -> PortResult<u64> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO log_event_ids (event_id, chain) \
             SELECT event_id::uuid, chain FROM UNNEST($1::text[], $2::text[]) AS b(chain, event_id) \
              ORDER BY 1 ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(pg)?;
    let (chains, ids) = columns(pairs);
    c.execute(&stmt, &[&chains, &ids]).await.map_err(pg)
}

fn columns(pairs: &[(String, EventId)]) -> (Vec<&str>, Vec<String>) {
    pairs
        .iter()
        .map(|(chain, id)| (chain.as_str(), id.to_string()))
        .unzip()
}

/// Inserts rows in offset order; a row whose (chain, seq) or (chain, event id) is
/// already there is skipped (the same event indexed by a concurrent scan or append).
pub(crate) async fn insert<C: GenericClient>(c: &C, rows: &[IndexRow]) -> PortResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let stmt = c
        .prepare_cached(
            r#"INSERT INTO log_chain_index (chain, seq, event_id, event_hash, "partition", "offset",
                                           recorded_s, recorded_ns)
               SELECT chain, seq, event_id::uuid, event_hash, p, o, rs, rns
                 FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::bytea[], $5::int4[], $6::int8[],
                             $7::int8[], $8::int4[])
                      AS t(chain, seq, event_id, event_hash, p, o, rs, rns)
                ORDER BY p, o
               ON CONFLICT DO NOTHING"#,
        )
        .await
        .map_err(pg)?;
    let chains: Vec<&str> = rows.iter().map(|r| r.chain.as_str()).collect();
    let seqs = rows
        .iter()
        .map(|r| big(r.seq, "seq"))
        .collect::<PortResult<Vec<_>>>()?;
    let ids: Vec<String> = rows.iter().map(|r| r.event_id.to_string()).collect();
    let hashes: Vec<&[u8]> = rows.iter().map(|r| &r.event_hash.as_bytes()[..]).collect();
    let partitions: Vec<i32> = rows.iter().map(|r| r.position.partition as i32).collect();
    let offsets = rows
        .iter()
        .map(|r| big(r.position.offset, "offset"))
        .collect::<PortResult<Vec<_>>>()?;
    let recorded_s: Vec<Option<i64>> = rows
        .iter()
        .map(|r| r.recorded_at.map(|t| t.seconds()))
        .collect();
    let recorded_ns: Vec<Option<i32>> = rows
        .iter()
        .map(|r| r.recorded_at.map(|t| t.nanos()))
        .collect();
    c.execute(
        &stmt,
        &[
            &chains,
            &seqs,
            &ids,
            &hashes,
            &partitions,
            &offsets,
            &recorded_s,
            &recorded_ns,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Moves `partition`'s scanned-up-to offset from `first` to `end`, only if it is at
/// `first`: the caller has just indexed `[first, end)` itself, and everything below
/// `first` is indexed exactly when the offset stands there.
pub(crate) async fn advance_from<C: GenericClient>(
    c: &C,
    partition: u32,
    first: u64,
    end: u64,
) -> PortResult<()> {
    let stmt = c
        .prepare_cached(
            r#"UPDATE log_index_offsets SET next_offset = $3
                WHERE "partition" = $1 AND next_offset = $2"#,
        )
        .await
        .map_err(pg)?;
    c.execute(
        &stmt,
        &[
            &(partition as i32),
            &big(first, "offset")?,
            &big(end, "offset")?,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Moves `partition`'s scanned-up-to offset forward to `end` (never back).
pub(crate) async fn advance_to<C: GenericClient>(
    c: &C,
    partition: u32,
    end: u64,
) -> PortResult<()> {
    let stmt = c
        .prepare_cached(
            r#"INSERT INTO log_index_offsets ("partition", next_offset) VALUES ($1, $2)
               ON CONFLICT ("partition") DO UPDATE
                  SET next_offset = GREATEST(log_index_offsets.next_offset, EXCLUDED.next_offset)"#,
        )
        .await
        .map_err(pg)?;
    c.execute(&stmt, &[&(partition as i32), &big(end, "offset")?])
        .await
        .map_err(pg)?;
    Ok(())
}

/// Offsets of `partition` in `[from, until)` the index has rows for, ascending, at most
/// `limit` of them.
pub(crate) async fn indexed_offsets<C: GenericClient>(
    c: &C,
    partition: u32,
    from: u64,
    until: u64,
    limit: i64,
) -> PortResult<Vec<u64>> {
    let stmt = c
        .prepare_cached(
            r#"SELECT "offset" FROM log_chain_index
                WHERE "partition" = $1 AND "offset" >= $2 AND "offset" < $3
                ORDER BY "offset" LIMIT $4"#,
        )
        .await
        .map_err(pg)?;
    c.query(
        &stmt,
        &[
            &(partition as i32),
            &big(from, "offset")?,
            &big(until, "offset")?,
            &limit,
        ],
    )
    .await
    .map_err(pg)?
    .iter()
    .map(|r| unsigned(r.get(0), "offset"))
    .collect()
}

#[cfg(test)]
mod tests {
    //! Upgrading an index that holds rows, against the PostgreSQL server named by
    //! `HRX_TEST_DATABASE_URL` (as in `tests/behaviour.rs`): skipped without one, unless
    //! `HRX_TEST_REQUIRE_SERVICES=1`.

    use super::*;

    /// A version 1 index with rows upgrades to version 2 in place: its heads read back
    /// without a recorded_at, rows indexed after have one, and half a recorded_at is
    /// refused by the table itself.
    #[tokio::test]
    async fn a_version_1_index_upgrades_and_its_heads_have_no_recorded_at() {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let Some(admin_url) = var("HRX_TEST_DATABASE_URL") else {
            assert!(
                var("HRX_TEST_REQUIRE_SERVICES").as_deref() != Some("1"),
                "HRX_TEST_REQUIRE_SERVICES=1 but HRX_TEST_DATABASE_URL is not set"
            );
            eprintln!("hrx-kafka: skipped (no PostgreSQL configured)");
            return;
        };
        let connect = |url: String| async move {
            let (client, connection) = hrx_identity::backend::connect_postgres(&url)
                .await
                .expect("PostgreSQL");
            tokio::spawn(connection);
            client
        };
        let name = format!(
            "hrx_test_index_{}",
            EventId::new_v7().to_string().replace('-', "")
        );
        let admin = connect(admin_url.clone()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let url = hrx_identity::backend::postgres_url_with_dbname(&admin_url, &name);

        // Version 1, as the previous hrx left it, with one indexed event.
        let sql = connect(url.clone()).await;
        let (version, migration_name, v1) = MIGRATIONS[0];
        sql.batch_execute(&format!(
            "CREATE TABLE hrx_log_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );
             {v1}"
        ))
        .await
        .expect("version 1");
        sql.execute(
            "INSERT INTO hrx_log_migrations (version, name) VALUES ($1, $2)",
            &[&version, &migration_name],
        )
        .await
        .expect("record version 1");
        let chain = ChainKey::parse("26001").expect("a facility");
        let (id1, hash1) = (EventId::from_bytes([1; 16]), Sha256::digest(b"one"));
        sql.execute(
            r#"INSERT INTO log_chain_index VALUES ($1, 1, $2::text::uuid, $3, 0, 7)"#,
            &[&&*chain.as_key(), &id1.to_string(), &&hash1.as_bytes()[..]],
        )
        .await
        .expect("an old row");

        let index = Index::open(&url, &KafkaConfig::new("unused:9092"), 2)
            .await
            .expect("open and migrate");
        let client = index.client().await.expect("a connection");
        let (ctx, _) = context(&client, &chain, EventId::from_bytes([2; 16]), 2)
            .await
            .expect("context");
        assert_eq!(
            ctx.head,
            ChainHead {
                seq: 1,
                event_hash: hash1,
                event_id: Some(id1),
                recorded_at: None,
            }
        );

        // Version 3 claimed the old row's id for its chain.
        let other = ChainKey::parse("26002")
            .expect("a facility")
            .as_key()
            .into_owned();
        assert_eq!(
            in_other_chains(&client, &other, &[id1])
                .await
                .expect("claims"),
            HashSet::from([id1]),
            "the old row's id is its chain's"
        );
        let key = chain.as_key().into_owned();
        let (h, h2) = (Sha256::digest(b"h"), Sha256::digest(b"h2"));
        assert_eq!(
            claim(&client, &[(other.clone(), id1, h, 1)])
                .await
                .expect("claim"),
            Some(id1),
            "another chain cannot claim it"
        );
        // Claimed before hashes were recorded: its chain's by the id alone, whatever the
        // hash; nobody else's, and the refused claim above recorded no hash.
        assert_eq!(
            claimed(
                &client,
                &[
                    (key.clone(), id1, hash1, 1),
                    (key.clone(), id1, h, 1),
                    (other.clone(), id1, h, 1)
                ]
            )
            .await
            .expect("claimed"),
            vec![true, true, false]
        );
        let fresh = EventId::from_bytes([9; 16]);
        let unclaimed = EventId::from_bytes([10; 16]);
        assert_eq!(
            claim(&client, &[(other.clone(), fresh, h, 1)])
                .await
                .expect("claim"),
            None
        );
        assert_eq!(
            claimed(
                &client,
                &[
                    (other.clone(), fresh, h, 1),
                    (other.clone(), fresh, h2, 1),
                    (other.clone(), fresh, h, 2),
                    (key.clone(), fresh, h, 1),
                    (other.clone(), unclaimed, h, 1),
                ]
            )
            .await
            .expect("claimed"),
            vec![true, false, false, false, false],
            "a new claim binds its chain, hash and seq"
        );
        assert_eq!(
            claim(&client, &[(other.clone(), fresh, h2, 1)])
                .await
                .expect("claim"),
            None,
            "a chain's claim again is no conflict"
        );
        assert_eq!(
            claimed(
                &client,
                &[(other.clone(), fresh, h, 1), (other.clone(), fresh, h2, 1)]
            )
            .await
            .expect("claimed"),
            vec![true, true],
            "a retry with another envelope adds its hash; the first stays claimed"
        );
        let both = EventId::from_bytes([11; 16]);
        assert_eq!(
            claim(
                &client,
                &[(other.clone(), both, h, 1), (key.clone(), both, h, 1)]
            )
            .await
            .expect("claim"),
            Some(both),
            "one id for two chains of one batch"
        );
        assert_eq!(
            claimed(&client, &[(other, both, h, 1), (key, both, h, 1)])
                .await
                .expect("claimed"),
            vec![false, false]
        );

        let t = Timestamp::new(-1, 999_999_999).expect("in range");
        insert(
            &client,
            &[IndexRow {
                chain: chain.as_key().into_owned(),
                seq: 2,
                event_id: EventId::from_bytes([2; 16]),
                event_hash: Sha256::digest(b"two"),
                position: LogPosition {
                    partition: 0,
                    offset: 8,
                },
                recorded_at: Some(t),
            }],
        )
        .await
        .expect("a new row");
        let links = [(EventId::from_bytes([3; 16]), 3)];
        let (ctx, _) = contexts(&client, &chain, &links)
            .await
            .expect("contexts")
            .pop()
            .expect("one");
        assert_eq!((ctx.head.seq, ctx.head.recorded_at), (2, Some(t)));

        for (s, ns) in [("1", "NULL"), ("NULL", "1"), ("1", "1000000000")] {
            let refused = sql
                .batch_execute(&format!(
                    "INSERT INTO log_chain_index VALUES \
                     ('26012', 1, gen_random_uuid(), decode(repeat('00', 32), 'hex'), 0, 9, \
                      {s}, {ns})"
                ))
                .await;
            assert!(refused.is_err(), "recorded_at ({s}, {ns}) must be refused");
        }
        drop((client, index, sql));
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}
