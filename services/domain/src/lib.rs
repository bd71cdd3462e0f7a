//! The hrx domain core: everything the exchange decides, with no I/O.
//!
//! - [`ids`]: patient, facility, event and key identifiers, validated by parsing.
//! - [`time`]: UTC instants and durations in the wire's range.
//! - [`kinds`]: record kinds (and their FHIR resource types), sensitivity labels,
//!   purposes, facility levels.
//! - [`dsse`]: the DSSE v1 envelope — PAE, Ed25519 signing and verification, key ids,
//!   event hashes.
//! - [`event`]: facility and registry events, unchecked (as decoded) and parsed.
//! - [`rejection`]: the typed reason every refusal carries.
//! - [`chain`]: per-facility hash-chain rules (next, duplicate, gap, mismatch, fork).
//! - [`content`]: content rules, including the FHIR body checks.
//! - [`verify`]: the verification pipeline that strings them together.
//! - [`patient`]: the patient's own key, the statements they sign with it, key
//!   proofs and signed requests.
//! - [`consent`]: the consent policy, a patient's consent state folded from the log,
//!   and per-record access decisions (author, grant, break-glass).
//! - [`audit`]: access events and their hash chain.
//! - [`report`]: the exchange's own log entries counting what ingest refused before
//!   the log.
//!
//! Invariant: this crate depends on no async runtime, network, database or wire
//! format; adapters convert their types into these, and only by parsing.

pub mod audit;
pub mod chain;
pub mod consent;
pub mod content;
pub mod dsse;
pub mod event;
pub mod ids;
pub mod kinds;
pub mod patient;
pub mod rejection;
pub mod report;
pub mod time;
pub mod verify;

pub use chain::{ChainContext, ChainHead, ChainStep};
pub use dsse::{Envelope, PayloadType, PublicKey, SigningKey};
pub use ids::{EventId, FacilityId, KeyId, PatientId, Sha256};
pub use kinds::{FacilityLevel, Purpose, RecordKind, SensitivityLabel};
pub use rejection::{Reason, Rejection};
pub use time::{Duration, Timestamp};
pub use verify::{KeyOwner, KeyRecord, Keyring, Verdict};
