//! Start-up errors of the Kafka log, and how engine errors become [`PortError`]s once
//! it runs.

use std::time::Duration;

use hrx_ports::PortError;

/// Why [`KafkaLog::connect`](crate::KafkaLog::connect) failed. Each is one clear
/// message an operator can act on; none is retried by `connect` itself.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The configuration cannot work (no brokers, zero partitions, one topic named twice…).
    #[error("invalid Kafka log configuration: {0}")]
    Config(String),
    /// No broker answered a metadata request in time.
    #[error("Kafka brokers {brokers} unreachable within {timeout:?}: {detail}")]
    Unreachable {
        brokers: String,
        timeout: Duration,
        detail: String,
    },
    /// A topic exists with a shape hrx cannot use (partition count, compaction).
    #[error("Kafka topic {topic} is misconfigured: {detail}")]
    TopicMisconfigured { topic: String, detail: String },
    /// The brokers answered but refused or failed an admin operation (ACLs, quotas…).
    #[error("Kafka admin operation failed: {0}")]
    Admin(String),
    /// The chain index's database cannot be reached or migrated.
    #[error("PostgreSQL (the log's chain index) unavailable: {0}")]
    Database(String),
}

/// A PostgreSQL error as a port error. A unique violation means a concurrent writer got
/// there first; everything else (connection lost, lock timeout, deadlock victim) is
/// worth retrying. The message names the SQLSTATE only, never row data.
pub(crate) fn pg(e: tokio_postgres::Error) -> PortError {
    match e.code() {
        Some(code) if *code == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
            PortError::Conflict(format!("chain index: {e}"))
        }
        _ => PortError::Unavailable(format!("chain index (PostgreSQL): {e}")),
    }
}

/// A pool error (no connection within the wait timeout, or the server is down).
pub(crate) fn pool(e: deadpool_postgres::PoolError) -> PortError {
    PortError::Unavailable(format!("chain index (PostgreSQL pool): {e}"))
}

/// A Kafka client error while running: retryable from the caller's point of view.
pub(crate) fn kafka(what: &str, e: rdkafka::error::KafkaError) -> PortError {
    PortError::Unavailable(format!("Kafka {what}: {e}"))
}

/// A blocking task that panicked or was cancelled at shutdown.
pub(crate) fn join(e: tokio::task::JoinError) -> PortError {
    PortError::Unavailable(format!("Kafka worker task failed: {e}"))
}
