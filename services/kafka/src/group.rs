//! Consumer-group membership of projector replicas: which partitions this process
//! projects.
//!
//! The group consumer is used for its assignment only. It never reads records (every
//! assigned partition is paused at once) and never commits offsets: projectors read
//! through the log's own readers, from the offsets stored in PostgreSQL with the
//! projections, so a rebalance can move a partition without moving any progress. Two
//! replicas that briefly both think they own a partition are harmless: the store
//! refuses a batch whose start offset is no longer current.

use std::sync::Arc;
use std::time::Duration;

use hrx_ports::{PortError, PortResult};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::watch;

use crate::partition::Layout;

/// Publishes the assignment as trait partitions.
struct GroupContext {
    layout: Layout,
    assignment: watch::Sender<Vec<u32>>,
}

impl GroupContext {
    fn partitions(&self, list: &TopicPartitionList) -> Vec<u32> {
        let mut parts: Vec<u32> = list
            .elements()
            .iter()
            .filter_map(|e| self.layout.trait_partition(e.topic(), e.partition()))
            .collect();
        parts.sort_unstable();
        parts.dedup();
        parts
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                // Never fetch: the projector reads through the log's readers.
                if let Err(e) = consumer.pause(list) {
                    tracing::warn!(error = %e, "pausing the group consumer's partitions failed");
                }
                let parts = self.partitions(list);
                tracing::info!(partitions = ?parts, "projector partitions assigned");
                self.assignment.send_replace(parts);
            }
            Rebalance::Revoke(_) => {
                tracing::info!("projector partitions revoked");
                self.assignment.send_replace(Vec::new());
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed"),
        }
    }
}

/// How this replica is a member of its group.
#[derive(Clone, Debug)]
pub(crate) struct Membership {
    /// Static membership's `group.instance.id`, when configured.
    pub instance: Option<String>,
    pub session_timeout: Duration,
}

/// Joins `group` on both topics and returns the assignment as it changes. A thread
/// polls the membership (heartbeats, rebalances) until every receiver is dropped.
pub(crate) fn join(
    mut config: ClientConfig,
    layout: Layout,
    group: &str,
    membership: Membership,
) -> PortResult<watch::Receiver<Vec<u32>>> {
    let session = membership.session_timeout.as_millis().max(1);
    // Heartbeats three times per session, so one lost heartbeat never expels a member.
    let heartbeat = (session / 3).max(1);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "latest")
        // A replica that dies is replaced within seconds, not the 45 s default.
        .set("session.timeout.ms", session.to_string())
        .set("heartbeat.interval.ms", heartbeat.to_string());
    if let Some(instance) = &membership.instance {
        // A replica restarted under its name takes its partitions back at once.
        config.set("group.instance.id", instance);
    }
    let (tx, rx) = watch::channel(Vec::new());
    let topics = [layout.facility_topic.clone(), layout.registry_topic.clone()];
    let context = GroupContext {
        layout,
        assignment: tx,
    };
    let consumer: BaseConsumer<GroupContext> = config
        .create_with_context(context)
        .map_err(|e| PortError::Unavailable(format!("Kafka group consumer: {e}")))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|e| PortError::Unavailable(format!("joining the projector group: {e}")))?;
    let consumer = Arc::new(consumer);
    std::thread::Builder::new()
        .name("hrx-projector-group".into())
        .spawn(move || {
            while !consumer.context().assignment.is_closed() {
                // Paused partitions yield nothing; a message could only come from the
                // moment between an assignment and its pause, and is ignored.
                let _ = consumer.poll(Duration::from_millis(200));
            }
            consumer.unsubscribe();
        })
        .map_err(|e| PortError::Unavailable(format!("starting the group thread: {e}")))?;
    Ok(rx)
}
