//! The distributed backends: Kafka for the log, PostgreSQL for the store.

use crate::{Backends, NodeConfig, NodeError};

pub(crate) async fn backends(_config: &NodeConfig) -> Result<Backends, NodeError> {
    Err(NodeError::Config(
        "the distributed backend is being wired".into(),
    ))
}
