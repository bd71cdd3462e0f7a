//! Start-up: reach the brokers within a bound, then create the two topics or check the
//! ones that exist.
//!
//! Created topics get `retention.ms=-1` and `retention.bytes=-1` (the facility-events
//! topic is the source of truth: deleting old segments would lose events for good),
//! `cleanup.policy=delete` (compaction keeps only the newest message per key, i.e. one
//! event per facility) and `message.timestamp.type=CreateTime` (`appended_at`).
//!
//! An existing topic must have the configured partition count (the registry exactly
//! one): a facility's partition is `murmur2(id) mod N`, so any other count would move
//! chains. Compaction is refused outright, and so is `message.timestamp.type=
//! LogAppendTime` (the broker's clock would replace the receive time each message
//! carries as its timestamp); finite retention is logged as a warning,
//! since an operator may archive the topic deliberately (tiered storage keeps
//! `retention.ms=-1` and only shortens `local.retention.ms`).

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, Producer};

use crate::KafkaConfig;
use crate::error::KafkaError;

/// What a topic must look like.
struct Wanted<'a> {
    name: &'a str,
    partitions: u32,
    what: &'static str,
    /// Why the count cannot differ, for the error message.
    why: &'static str,
}

/// Checks the brokers answer within `connect_timeout`, then creates or checks both
/// topics. `probe` is any client of the cluster (the producer), used for metadata.
pub(crate) async fn ensure(
    config: &KafkaConfig,
    base: &ClientConfig,
    probe: &FutureProducer,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + config.connect_timeout;
    // The first metadata request is the reachability check: librdkafka connects lazily,
    // so this is where an unreachable or wrong address shows, as one bounded error.
    metadata(probe, &config.facility_topic, config.connect_timeout)
        .await
        .map_err(|e| KafkaError::Unreachable {
            brokers: config.brokers.clone(),
            timeout: config.connect_timeout,
            detail: e.to_string(),
        })?;

    let admin: AdminClient<DefaultClientContext> = base
        .create()
        .map_err(|e| KafkaError::Admin(format!("cannot create the admin client: {e}")))?;
    for wanted in [
        Wanted {
            name: &config.facility_topic,
            partitions: config.partitions,
            what: "facility-events",
            why: "a facility's partition is murmur2(id) mod the count, so the count cannot \
                  change under an existing log",
        },
        Wanted {
            name: &config.registry_topic,
            partitions: 1,
            what: "registry",
            why: "the registry chain is read in order from one partition",
        },
    ] {
        ensure_topic(config, &admin, probe, &wanted, deadline).await?;
    }
    Ok(())
}

async fn ensure_topic(
    config: &KafkaConfig,
    admin: &AdminClient<DefaultClientContext>,
    probe: &FutureProducer,
    wanted: &Wanted<'_>,
    deadline: Instant,
) -> Result<(), KafkaError> {
    let unreachable = |e: rdkafka::error::KafkaError| KafkaError::Unreachable {
        brokers: config.brokers.clone(),
        timeout: config.connect_timeout,
        detail: e.to_string(),
    };
    let remaining = || deadline.saturating_duration_since(Instant::now());

    let found = topic_shape(
        &metadata(probe, wanted.name, remaining())
            .await
            .map_err(unreachable)?,
    );
    if found.is_none() {
        create(config, admin, wanted, remaining()).await?;
    }

    // A new topic's partitions get leaders a moment after CreateTopics returns; wait for
    // them, so that the first watermark query or produce does not fail.
    loop {
        let shape = topic_shape(
            &metadata(probe, wanted.name, remaining())
                .await
                .map_err(unreachable)?,
        );
        match shape {
            Some(TopicShape { partitions, .. }) if partitions != wanted.partitions => {
                return Err(KafkaError::TopicMisconfigured {
                    topic: wanted.name.to_owned(),
                    detail: format!(
                        "it has {partitions} partition(s); the {} topic must have {} ({})",
                        wanted.what, wanted.partitions, wanted.why
                    ),
                });
            }
            Some(TopicShape { leaderless: 0, .. }) => break,
            _ if remaining().is_zero() => {
                return Err(KafkaError::Unreachable {
                    brokers: config.brokers.clone(),
                    timeout: config.connect_timeout,
                    detail: format!("topic {} has partitions without a leader", wanted.name),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    check_configs(admin, wanted, remaining()).await
}

async fn create(
    config: &KafkaConfig,
    admin: &AdminClient<DefaultClientContext>,
    wanted: &Wanted<'_>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let partitions = i32::try_from(wanted.partitions)
        .map_err(|_| KafkaError::Config(format!("{} partitions", wanted.partitions)))?;
    // -1: the broker's default.replication.factor (CreateTopics v4, Kafka ≥ 2.4).
    let replication = TopicReplication::Fixed(config.replication_factor.unwrap_or(-1));
    let topic = NewTopic::new(wanted.name, partitions, replication)
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("cleanup.policy", "delete")
        .set("message.timestamp.type", "CreateTime");
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .map_err(|e| KafkaError::Admin(format!("creating topic {}: {e}", wanted.name)))?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(
                topic = wanted.name,
                partitions = wanted.partitions,
                "created Kafka topic"
            ),
            // Another process created it between our metadata check and now: it is
            // checked like any existing topic.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::Admin(format!("creating topic {name}: {code}")));
            }
        }
    }
    Ok(())
}

/// Refuses compaction and broker-set timestamps; warns about finite retention (and when
/// it cannot tell).
async fn check_configs(
    admin: &AdminClient<DefaultClientContext>,
    wanted: &Wanted<'_>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let options = AdminOptions::new().request_timeout(Some(timeout));
    // Reading configurations needs DescribeConfigs rights, which a locked-down cluster
    // may not grant to hrx: then the partition count (from metadata) is all we check.
    let cannot = |e: String| {
        tracing::warn!(
            topic = wanted.name,
            error = %e,
            "cannot read the topic's configuration; compaction and retention not checked"
        );
        Ok(())
    };
    let results = match admin
        .describe_configs([&ResourceSpecifier::Topic(wanted.name)], &options)
        .await
    {
        Ok(results) => results,
        Err(e) => return cannot(e.to_string()),
    };
    for result in results {
        let resource = match result {
            Ok(resource) => resource,
            Err(code) => return cannot(code.to_string()),
        };
        let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
        if let Some(policy) = value("cleanup.policy")
            && policy.contains("compact")
        {
            return Err(KafkaError::TopicMisconfigured {
                topic: wanted.name.to_owned(),
                detail: format!(
                    "cleanup.policy={policy}: compaction keeps one message per facility and \
                     would delete events; the {} topic needs cleanup.policy=delete",
                    wanted.what
                ),
            });
        }
        if let Some(kind) = value("message.timestamp.type")
            && kind != "CreateTime"
        {
            return Err(KafkaError::TopicMisconfigured {
                topic: wanted.name.to_owned(),
                detail: format!(
                    "message.timestamp.type={kind}: the broker would replace each message's \
                     timestamp, the time the exchange received the event, with its own clock; \
                     the {} topic needs message.timestamp.type=CreateTime",
                    wanted.what
                ),
            });
        }
        for key in ["retention.ms", "retention.bytes"] {
            if let Some(v) = value(key)
                && v != "-1"
            {
                tracing::warn!(
                    topic = wanted.name,
                    setting = key,
                    value = %v,
                    "the log topic has finite retention: events older than this are deleted \
                     from Kafka and can no longer be replayed"
                );
            }
        }
    }
    Ok(())
}

/// A topic's partition count and how many of its partitions lack a leader.
struct TopicShape {
    partitions: u32,
    leaderless: usize,
}

/// `None` when the metadata says the topic does not exist.
fn topic_shape(metadata: &Metadata) -> Option<TopicShape> {
    let topic = metadata.topics().first()?;
    if topic.error().is_some() && topic.partitions().is_empty() {
        return None;
    }
    Some(TopicShape {
        partitions: topic.partitions().len() as u32,
        leaderless: topic
            .partitions()
            .iter()
            .filter(|p| p.leader() < 0 || p.error().is_some())
            .count(),
    })
}

/// Metadata of one topic, off the async runtime (librdkafka blocks until the answer).
async fn metadata(
    probe: &FutureProducer,
    topic: &str,
    timeout: Duration,
) -> Result<Metadata, rdkafka::error::KafkaError> {
    let probe = probe.clone();
    let topic = topic.to_owned();
    // At least a moment: a zero timeout would not even send the request.
    let timeout = timeout.max(Duration::from_millis(100));
    tokio::task::spawn_blocking(move || probe.client().fetch_metadata(Some(&topic), timeout))
        .await
        .unwrap_or_else(|e| {
            Err(rdkafka::error::KafkaError::MetadataFetch(
                if e.is_cancelled() {
                    RDKafkaErrorCode::OperationTimedOut
                } else {
                    RDKafkaErrorCode::Fail
                },
            ))
        })
}
