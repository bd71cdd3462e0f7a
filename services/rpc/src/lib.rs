//! What every hrx gRPC service shares.
//!
//! - [`error`]: the one table from error codes to gRPC status codes; service errors
//!   implement [`error::ServiceError`] and become a `tonic::Status` only through it.
//! - [`wire`]: conversions between projected data (ports, domain) and wire messages,
//!   validating by parsing on the way in.
//! - [`auth`]: the calling principal, from the client certificate.
//! - [`chains`]: per-chain locks, so appends to one chain are serialised.
//! - [`observe`]: a span, a counter and a latency histogram per RPC method and outcome.
//! - [`limit`]: calls in flight per caller.
//! - [`revoke`]: revoked and expired client certificates refused on every call and
//!   ended on open streams.

pub mod auth;
pub mod chains;
pub mod error;
pub mod limit;
pub mod observe;
pub mod revoke;
pub mod wire;

pub use error::{ErrorCode, ServiceError};
