//! The distributed backends: Apache Kafka for the log (with ingest's chain index in
//! PostgreSQL) and PostgreSQL for the store. Both apply their schema migrations on
//! connect (advisory-locked, so processes starting together don't race).

use std::sync::Arc;

use crate::{Backends, NodeConfig, NodeError};

pub(crate) async fn backends(config: &NodeConfig) -> Result<Backends, NodeError> {
    let url = config.database_url.as_deref().ok_or_else(|| {
        NodeError::Config("the distributed backend needs HRX_DATABASE_URL".into())
    })?;
    let brokers = config.kafka_brokers.as_deref().ok_or_else(|| {
        NodeError::Config("the distributed backend needs HRX_KAFKA_BROKERS".into())
    })?;
    let store = hrx_postgres::PgStore::connect(url, config.database_pool_size)
        .await
        .map_err(|e| NodeError::Backend(format!("PostgreSQL: {e}")))?;
    let mut kafka =
        hrx_kafka::KafkaConfig::new(brokers).with_topic_prefix(&config.kafka_topic_prefix);
    kafka.partitions = config.kafka_partitions;
    kafka.tls = config
        .kafka_tls_files()
        .map_err(NodeError::Config)?
        .map(|f| hrx_kafka::KafkaTls {
            ca_file: f.ca_file,
            client_identity: f.client_identity,
        });
    kafka.client_properties = config
        .kafka_properties
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(password) = std::env::var_os(crate::config::KAFKA_SASL_PASSWORD_VAR) {
        let password = password.into_string().map_err(|_| {
            NodeError::Config(format!(
                "{} is not UTF-8",
                crate::config::KAFKA_SASL_PASSWORD_VAR
            ))
        })?;
        kafka.sasl_password = Some(hrx_kafka::SaslPassword(password));
    }
    kafka.group_instance_id = config.projector_instance.clone();
    kafka.session_timeout =
        std::time::Duration::from_millis(u64::from(config.kafka_session_timeout_ms.max(1)));
    let log = hrx_kafka::KafkaLog::connect(kafka, url)
        .await
        .map_err(|e| NodeError::Backend(format!("Kafka: {e}")))?;
    Ok(Backends {
        log: Arc::new(log),
        store: Arc::new(store),
    })
}
