//! The hrx benchmark harness.
//!
//! - [`loadgen`]: a deterministic synthetic population from a seed — facilities of the
//!   three technical levels, patients, chronic patients with ≥ 1,000 records, FHIR R4
//!   bodies of 0.5–4 KB ([`fhir`]) — pre-signed per facility as hash chains (signing
//!   off the measured path) and submitted in batches, as fast as possible or at a rate.
//! - [`bench::run`]: one run that starts an embedded node in a temp directory, in this
//!   process, and measures, side by side with the machine's limits for the same work:
//!   1. ring Ed25519 verifications per second of the run's own envelopes (PAE bytes),
//!      on one core and on all cores;
//!   2. embedded ingest end to end: accepted events/s of the pre-signed stream
//!      submitted as fast as possible (batches, facilities concurrently), events/s
//!      until all are projected, submit → visible latency (a follower of the probe
//!      patient receives the record) under load and idle, and peak RSS (VmHWM of this
//!      process: node and harness share it);
//!   3. timeline reads of a chronic patient's first page of 50: the raw store query
//!      (`TimelineStore::timeline` on a second `SqliteNode` of the same directory) and
//!      `GetTimeline` over gRPC, both open-loop at 1,000 requests/s, and the highest
//!      offered rate whose p99 stays ≤ 10 ms;
//!   4. follow fan-out: N followers of one patient (1,000 in full mode), then M new
//!      records: delivered events/s and produce → deliver p50/p99.
//!   5. with Kafka and PostgreSQL ([`Options::distributed`]), after the phases above:
//!      their raw limits for the same messages and rows, and hrx on them — ingest,
//!      submit → visible, and the peak RSS of the projector as a process of its own
//!      ([`distributed`]). Without them those rows are "not measured", saying how.
//! - [`files`]: a pre-signed population on disk (manifest, per-facility chain files of
//!   length-delimited envelopes, keys) and idempotent registration of a population's
//!   facilities at a node — what `hrx loadgen` is made of.
//! - [`report`]: the table (Markdown, via `Display`) and its JSON.
//! - [`soak::run`]: the soak — every hrx role in child processes on Kafka + PostgreSQL
//!   under a steady mix (ingest, timeline reads, followers, consent churn) for minutes,
//!   sampling each process's RSS and the projector's lag, then reconciling what was
//!   accepted with what was projected and delivered (what `hrx soak` runs).
//!
//! Benchmarks are not tests: nothing here asserts a speed. `Options { smoke: true, .. }`
//! runs everything with tiny counts in seconds, so that CI keeps the harness working.

pub mod bench;
pub mod distributed;
pub mod fhir;
pub mod files;
pub mod limits;
pub mod loadgen;
pub mod report;
pub mod rng;
pub mod soak;
pub mod stats;

pub use bench::{BenchError, Options, run};
pub use distributed::Services;
pub use loadgen::{ChainSigner, Pace, Population, PopulationSpec};
pub use report::{Report, Row, Status};
pub use soak::{SoakOptions, SoakReport};
