//! Consent: the patient is the authority (BRIEF section 5).
//!
//! - [`core`]: the decisions — who may see what of a patient's consent, patient
//!   statements submitted to the log, the patient's own signed view — independent of
//!   any transport, every call audited (refusals too).
//! - [`state`]: a patient's consent state loaded from the store and folded by the
//!   domain, and the facts a facility's consent events are judged against (shared by
//!   ingest and the projector).
//! - [`audit`]: group commit of access events, used by every reading service.
//! - [`grpc`]: `hrx.v1.ConsentService` (facilities and the national center, mutual
//!   TLS) and `hrx.v1.PatientService` (authenticated by the patient's signature).

pub mod audit;
pub mod core;
pub mod grpc;
pub mod state;

pub use crate::core::{Consent, ConsentError};
pub use grpc::{ConsentGrpc, PatientGrpc};
