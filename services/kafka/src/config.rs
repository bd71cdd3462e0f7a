//! What a [`KafkaLog`](crate::KafkaLog) is configured with: brokers, topic names and
//! partition count, timeouts, and the size of its PostgreSQL pool.

use std::path::PathBuf;
use std::time::Duration;

/// The facility-events topic: every facility's signed events, keyed by facility id.
pub const FACILITY_EVENTS_TOPIC: &str = "hrx.facility-events.v1";
/// The registry topic: the national center's registry chain, one partition.
pub const REGISTRY_TOPIC: &str = "hrx.registry.v1";
/// Partitions of the facility-events topic when none are configured.
pub const DEFAULT_PARTITIONS: u32 = 12;

/// Configuration of the Kafka event log.
///
/// The partition count is part of the log's identity: a facility's partition is
/// `murmur2(facility id) mod partitions`, so changing it on an existing topic would move
/// chains between partitions. [`KafkaLog::connect`](crate::KafkaLog::connect) therefore
/// refuses a topic whose partition count differs from this one.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Partitions of the facility-events topic (default 12).
    pub partitions: u32,
    /// Name of the facility-events topic (default [`FACILITY_EVENTS_TOPIC`]).
    pub facility_topic: String,
    /// Name of the registry topic (default [`REGISTRY_TOPIC`]).
    pub registry_topic: String,
    /// Replication factor of topics hrx creates; `None` uses the broker's
    /// `default.replication.factor`.
    pub replication_factor: Option<i32>,
    /// How long start-up waits for the brokers (metadata, topic creation) before giving
    /// up with [`KafkaError::Unreachable`](crate::KafkaError::Unreachable).
    pub connect_timeout: Duration,
    /// How long a produce may take, retries included, before `append` fails with
    /// `Unavailable` (librdkafka's `message.timeout.ms`).
    pub produce_timeout: Duration,
    /// Timeout of one request to a broker or a read that should find data (watermark
    /// queries, reads below the high watermark).
    pub request_timeout: Duration,
    /// Connections in the chain index's PostgreSQL pool (appends and lookups). Catch-up
    /// scans use two more connections of their own.
    pub database_pool_size: usize,
    /// Most Kafka consumers kept for reads and waits; `None`: one per partition plus four.
    pub max_readers: Option<usize>,
    /// TLS to the brokers; `None`: plaintext.
    pub tls: Option<KafkaTls>,
    /// Extra librdkafka properties applied to every client (producer, consumers, admin),
    /// after hrx's own and the TLS ones: e.g. `sasl.mechanism`, `sasl.username`.
    pub client_properties: Vec<(String, String)>,
    /// librdkafka's `sasl.password`, kept apart from the properties so that it never
    /// shows in a `Debug` print or a log.
    pub sasl_password: Option<SaslPassword>,
    /// The projector replica's stable name in its consumer group (static membership,
    /// Kafka's `group.instance.id`): a replica restarted under the same name gets its
    /// partitions back at once, without waiting for the session timeout or a rebalance.
    /// `None`: dynamic membership.
    pub group_instance_id: Option<String>,
    /// How long the group waits for a silent member before moving its partitions
    /// (`session.timeout.ms`; the brokers' `group.min.session.timeout.ms` bounds it).
    pub session_timeout: Duration,
}

impl KafkaConfig {
    /// Defaults for everything but the brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            partitions: DEFAULT_PARTITIONS,
            facility_topic: FACILITY_EVENTS_TOPIC.to_owned(),
            registry_topic: REGISTRY_TOPIC.to_owned(),
            replication_factor: None,
            connect_timeout: Duration::from_secs(10),
            produce_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(5),
            database_pool_size: 8,
            max_readers: None,
            tls: None,
            client_properties: Vec::new(),
            sasl_password: None,
            group_instance_id: None,
            session_timeout: Duration::from_secs(6),
        }
    }

    /// Prefixes both topic names (the node's `kafka_topic_prefix`), to keep several
    /// exchanges or test runs apart on one cluster.
    pub fn with_topic_prefix(mut self, prefix: &str) -> Self {
        self.facility_topic = format!("{prefix}{FACILITY_EVENTS_TOPIC}");
        self.registry_topic = format!("{prefix}{REGISTRY_TOPIC}");
        self
    }
}

/// TLS to the brokers (librdkafka's `security.protocol=ssl`): the CA that signed the
/// brokers' certificates and, for brokers that authenticate clients by certificate (and
/// authorize them by it, through ACLs), this process's certificate and key. librdkafka
/// verifies each broker's certificate and host name.
///
/// Over SASL instead of client certificates, set `security.protocol=sasl_ssl` and the
/// `sasl.*` properties in [`KafkaConfig::client_properties`]; the CA file still applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaTls {
    /// PEM CA certificate(s); `None`: the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and its PEM private key.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

impl KafkaTls {
    /// The librdkafka properties that say this.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let mut p = vec![("security.protocol", "ssl".to_owned())];
        if let Some(ca) = &self.ca_file {
            p.push(("ssl.ca.location", ca.display().to_string()));
        }
        if let Some((cert, key)) = &self.client_identity {
            p.push(("ssl.certificate.location", cert.display().to_string()));
            p.push(("ssl.key.location", key.display().to_string()));
        }
        p
    }

    /// The test environment's TLS files (`HRX_TEST_KAFKA_CA_FILE`,
    /// `HRX_TEST_KAFKA_CERT_FILE`, `HRX_TEST_KAFKA_KEY_FILE`, as `tests/run.sh` exports
    /// them from `deploy/testenv`); `None` when no CA file is set.
    #[doc(hidden)]
    pub fn from_test_env() -> Option<KafkaTls> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let ca_file = var("HRX_TEST_KAFKA_CA_FILE")?;
        Some(KafkaTls {
            ca_file: Some(ca_file),
            client_identity: var("HRX_TEST_KAFKA_CERT_FILE").zip(var("HRX_TEST_KAFKA_KEY_FILE")),
        })
    }
}

/// A SASL password: `Debug` shows that there is one, never what it is.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslPassword(pub String);

impl std::fmt::Debug for SaslPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaslPassword(<redacted>)")
    }
}
