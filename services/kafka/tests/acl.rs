//! Kafka's client authentication and ACLs as `deploy/testenv` sets them up: the broker
//! takes TLS connections with a client certificate only, the certificate's CN is the
//! principal, and each identity may do what its ACLs say and nothing else:
//!
//! - `hrx-reader` (Read and Describe on topics) is refused a produce to a
//!   facility-events topic with `TOPIC_AUTHORIZATION_FAILED`, and reads it;
//! - `hrx-ingest` (Write and Describe on topics named `hrx.facility-events.…`,
//!   IdempotentWrite on the cluster) produces to it, idempotently as hrx does, but is
//!   refused any other topic;
//! - a client without a certificate does not get past the TLS handshake.
//!
//! Plain rdkafka clients, not hrx's code: what is tested is the broker's configuration.
//! The topics are made for the test by the `hrx` identity (allowed everything).
//!
//! Services come from `HRX_TEST_KAFKA_BROKERS` and the identities' files (NAME.pem,
//! NAME.key, ca.pem) from `HRX_TEST_KAFKA_TLS_DIR` or `HRX_TEST_SERVICES_DIR/tls`, as
//! `tests/run.sh` exports them. Without them the test prints a notice and passes, unless
//! `HRX_TEST_REQUIRE_SERVICES=1`, when it fails.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hrx_domain::EventId;
use hrx_kafka::{FACILITY_EVENTS_TOPIC, KafkaTls};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

struct Services {
    brokers: String,
    tls_dir: PathBuf,
}

fn services() -> Option<Services> {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    let require = var("HRX_TEST_REQUIRE_SERVICES").as_deref() == Some("1");
    let tls_dir = var("HRX_TEST_KAFKA_TLS_DIR")
        .map(PathBuf::from)
        .or_else(|| var("HRX_TEST_SERVICES_DIR").map(|d| PathBuf::from(d).join("tls")));
    match (var("HRX_TEST_KAFKA_BROKERS"), tls_dir) {
        (Some(brokers), Some(tls_dir)) => Some(Services { brokers, tls_dir }),
        _ if require => panic!(
            "HRX_TEST_REQUIRE_SERVICES=1 but HRX_TEST_KAFKA_BROKERS and HRX_TEST_KAFKA_TLS_DIR \
             (or HRX_TEST_SERVICES_DIR) are not both set: start Kafka with \
             `deploy/testenv/testenv.sh up DIR` and export them as tests/run.sh does"
        ),
        _ => {
            eprintln!(
                "hrx-kafka acl: skipped (set HRX_TEST_KAFKA_BROKERS and HRX_TEST_KAFKA_TLS_DIR \
                 to run against the testenv's Kafka)"
            );
            None
        }
    }
}

impl Services {
    /// A client configuration over TLS with the identity `name` (`None`: no certificate).
    fn client(&self, name: Option<&str>) -> ClientConfig {
        let file = |f: String| {
            let path = self.tls_dir.join(f);
            assert!(path.is_file(), "{} is missing", path.display());
            path
        };
        let tls = KafkaTls {
            ca_file: Some(file("ca.pem".into())),
            client_identity: name.map(|n| (file(format!("{n}.pem")), file(format!("{n}.key")))),
        };
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("broker.address.family", "v4")
            // A refused produce is final; a few seconds are plenty on loopback.
            .set("message.timeout.ms", "8000")
            .set_log_level(RDKafkaLogLevel::Emerg);
        for (k, v) in tls.properties() {
            c.set(k, v);
        }
        c
    }
}

/// Every error librdkafka reports outside a request (connection failures among them).
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<(RDKafkaErrorCode, String)>>>);

impl ClientContext for Errors {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            self.0.lock().unwrap().push((code, reason.to_owned()));
        }
    }
    // Silence librdkafka's own logging of the expected failures.
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}
}

/// Produces one message and returns the delivery's error code, `None` if delivered.
async fn produce(
    producer: &FutureProducer<impl ClientContext + 'static>,
    topic: &str,
) -> Option<RDKafkaErrorCode> {
    let record = FutureRecord::to(topic)
        .key("26001")
        .payload("not an hrx envelope: the broker only");
    match producer.send(record, Duration::from_secs(5)).await {
        Ok(_) => None,
        Err((e, _)) => Some(
            e.rdkafka_error_code()
                .unwrap_or_else(|| panic!("a delivery error without a code: {e}")),
        ),
    }
}

#[tokio::test]
async fn kafka_authenticates_clients_by_certificate_and_authorizes_them_by_acl() {
    let Some(s) = services() else { return };
    let id = EventId::new_v7().to_string().replace('-', "");
    // Inside the prefix hrx-ingest may write (testenv's INGEST_TOPIC_PREFIX,
    // "hrx.facility-events."), as the production topic is.
    let facility_topic = format!("{FACILITY_EVENTS_TOPIC}.acl{id}");
    // Outside it.
    let other_topic = format!("acl{id}.{FACILITY_EVENTS_TOPIC}");

    // The topics, made by `hrx` (All on topics and the cluster).
    let admin: AdminClient<DefaultClientContext> =
        s.client(Some("hrx")).create().expect("an admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let topics =
        [&facility_topic, &other_topic].map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)));
    let created = admin
        .create_topics(&topics, &options)
        .await
        .expect("create the test topics");
    for r in created {
        r.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }

    // hrx-reader: Describe lets it see the topic, so the produce reaches the broker and is
    // refused there, for the topic.
    let reader: FutureProducer = s
        .client(Some("hrx-reader"))
        .set("acks", "all")
        .create()
        .expect("a producer");
    assert_eq!(
        produce(&reader, &facility_topic).await,
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        "hrx-reader must not write the facility-events topic"
    );

    // hrx-ingest: an idempotent producer, as hrx's (needs IdempotentWrite on the cluster).
    let ingest: FutureProducer = s
        .client(Some("hrx-ingest"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("a producer");
    assert_eq!(
        produce(&ingest, &facility_topic).await,
        None,
        "hrx-ingest writes the facility-events topic"
    );
    assert_eq!(
        produce(&ingest, &other_topic).await,
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        "hrx-ingest writes no topic outside hrx.facility-events.*"
    );

    // hrx-reader reads what hrx-ingest wrote (Read on the topic; assigned, no group
    // membership).
    let consumer: BaseConsumer = s
        .client(Some("hrx-reader"))
        .set("group.id", format!("acl{id}"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&facility_topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let message = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => return m.key().map(<[u8]>::to_vec),
                Some(Err(e)) => panic!("hrx-reader cannot read the facility-events topic: {e}"),
                None if std::time::Instant::now() > deadline => {
                    panic!("hrx-reader read nothing in 20 s")
                }
                None => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(message.as_deref(), Some(&b"26001"[..]));

    // No certificate: the broker (ssl.client.auth=required) ends the handshake with a
    // bad_certificate alert; nothing is delivered.
    let errors = Errors::default();
    let anonymous: FutureProducer<Errors> = s
        .client(None)
        .create_with_context(errors.clone())
        .expect("a producer");
    let refused = produce(&anonymous, &facility_topic).await;
    assert_eq!(
        refused,
        Some(RDKafkaErrorCode::MessageTimedOut),
        "a client without a certificate must not deliver"
    );
    let seen = errors.0.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(code, reason)| matches!(
            code,
            RDKafkaErrorCode::SSL | RDKafkaErrorCode::BrokerTransportFailure
        ) && reason.contains("certificate")),
        "expected an SSL or transport error naming the certificate, got {seen:?}"
    );

    // Best effort: the topics are the test's own.
    let _ = admin
        .delete_topics(&[&facility_topic, &other_topic], &options)
        .await;
}
