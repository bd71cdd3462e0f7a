//! Shared code of hrx's cross-crate tests: the test-vector schema
//! (`tests/vectors/README.md`), building an envelope from a vector's input, evaluating
//! a vector with the Rust implementation, and the deterministic vector generator.

pub mod generate;
pub mod vectors;
