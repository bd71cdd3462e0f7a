//! PostgreSQL store adapter (being written).
