//! The ports of hrx: what the services need from an event log and a store, as traits.
//!
//! - [`log`]: the append-only event log (embedded SQLite, or Kafka) and ingest's chain
//!   index over it.
//! - [`store`]: the projections (embedded SQLite, or PostgreSQL): written by the
//!   projector in batches that commit together with the log positions they came from,
//!   read by the timeline, consent, registry and monitor services.
//! - [`changed`]: which patients a batch touched, so that a follower re-reads only
//!   when its patient may have changed.
//! - [`testkit`] (feature `testkit`): the behaviour suite every adapter must pass.
//!
//! Boundary: services depend on these traits only; adapters depend on these traits and
//! their engine; nothing here knows SQL, Kafka or protobuf.

pub mod changed;
pub mod log;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use log::{Append, ChainKey, EventLog, LogChainContext, LogEntry, LogPosition};
pub use store::*;

/// Infrastructure failures. Messages carry ids and counts only, never patient data.
/// Clone: one failed group commit is reported to every request in the group.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PortError {
    /// The engine cannot be reached or is overloaded: the caller may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data breaks an invariant (e.g. an unknown enum code): a bug or corruption.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// A concurrent writer got there first (e.g. two appends at one chain position).
    #[error("conflict: {0}")]
    Conflict(String),
    /// What a request would have to load is beyond a configured bound: refused whole
    /// rather than decided on a part (a patient's consent history, …).
    #[error("more than {limit} {what}; refused rather than decided on a part")]
    TooMany { what: &'static str, limit: usize },
}

pub type PortResult<T> = Result<T, PortError>;
