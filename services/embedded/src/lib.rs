//! Embedded adapters (skeleton; being written).
