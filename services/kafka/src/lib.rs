//! Kafka event-log adapter (being written).
