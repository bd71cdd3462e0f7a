//! Test support: a real node on loopback port 0 in a temp directory, the three
//! facilities of the brief's workflows, and FHIR record builders.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use hrx_domain::event::FHIR_JSON;
use hrx_domain::{FacilityId, FacilityLevel, RecordKind, Timestamp};
use hrx_node::client::{FacilityClient, NationalCenter, PatientClient};
use hrx_node::{Node, NodeConfig, NodeError};
use hrx_proto::{codec, v1};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const DISTRICT: &str = "26012";
pub const PROVINCIAL: &str = "26001";
pub const CLINIC: &str = "26105";
pub const EMERGENCY: &str = "26002";
pub const AN: &str = "026062001234";
pub const BINH: &str = "026185004321";

pub fn fac(s: &str) -> FacilityId {
    FacilityId::parse(s).unwrap()
}

/// Where a test's node keeps its state: a temp directory, and for the distributed
/// backend a fresh PostgreSQL database and Kafka topics of its own.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: NodeConfig,
}

impl Env {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::ephemeral(dir.path());
        config.heartbeat_ms = 200;
        Self { dir, config }
    }

    /// Kafka + PostgreSQL from `HRX_TEST_KAFKA_BROKERS` and `HRX_TEST_DATABASE_URL`.
    /// Without them: `None` (the test is skipped with a notice), unless
    /// `HRX_TEST_REQUIRE_SERVICES=1`, which the project's test command sets.
    pub async fn distributed() -> Option<Self> {
        let (brokers, admin_url) = match (
            std::env::var("HRX_TEST_KAFKA_BROKERS"),
            std::env::var("HRX_TEST_DATABASE_URL"),
        ) {
            (Ok(b), Ok(u)) => (b, u),
            _ => {
                assert!(
                    std::env::var("HRX_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
                    "HRX_TEST_KAFKA_BROKERS and HRX_TEST_DATABASE_URL are required (run bash tests/run.sh)"
                );
                eprintln!(
                    "skipping a distributed test: no HRX_TEST_KAFKA_BROKERS / HRX_TEST_DATABASE_URL"
                );
                return None;
            }
        };
        let mut env = Self::embedded();
        let name = format!(
            "hrx_node_{}",
            hrx_domain::EventId::new_v7().to_string().replace('-', "")
        );
        let (client, conn) = hrx_identity::backend::connect_postgres(&admin_url)
            .await
            .expect("the test PostgreSQL answers");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = hrx_identity::backend::postgres_url_with_dbname(&admin_url, &name);
        let (root, _) =
            hrx_node::keys::read_or_create(&hrx_node::root_key_path(env.path())).unwrap();
        let c = &mut env.config;
        c.backend = hrx_node::Backend::Distributed;
        c.kafka_brokers = Some(brokers);
        if let Some(tls) = hrx_kafka::KafkaTls::from_test_env() {
            c.kafka_ca_file = tls.ca_file;
            (c.kafka_cert_file, c.kafka_key_file) = tls.client_identity.unzip();
        }
        c.kafka_partitions = 3;
        c.kafka_topic_prefix = format!("{name}.");
        c.database_url = Some(url);
        c.database_pool_size = 4;
        c.root_public_key = Some(
            root.public_key()
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        );
        Some(env)
    }
}

/// Runs a test body once per backend: `embedded` and `distributed` tests of one name.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn embedded() {
                    super::$name($crate::support::Env::embedded()).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn distributed() {
                    if let Some(env) = $crate::support::Env::distributed().await {
                        super::$name(env).await
                    }
                }
            }
        )*
    };
}

/// A node running on a directory until dropped or stopped.
pub struct TestNode {
    pub addr: std::net::SocketAddr,
    pub metrics: std::net::SocketAddr,
    /// The patient port (TLS, no client certificate).
    pub patient: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), NodeError>>>,
}

impl TestNode {
    pub async fn start(env: &Env) -> Self {
        Self::from_node(Node::build(env.config.clone()).await.expect("node builds"))
    }

    /// Runs a node built by the caller (another role set on the same backends).
    pub fn from_node(node: Node) -> Self {
        let (addr, metrics, patient) = (node.grpc_addr(), node.metrics_addr(), node.patient_addr());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(node.run(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics,
            patient,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the node and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await
                .expect("node task joins")
                .expect("node stops cleanly");
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The national center plus the facilities of the workflows, registered.
pub struct World {
    pub nc: NationalCenter,
    pub district: FacilityClient,
    pub provincial: FacilityClient,
    pub clinic: FacilityClient,
    pub emergency: FacilityClient,
}

impl World {
    pub async fn register(dir: &Path, node: &TestNode) -> Self {
        let nc = NationalCenter::open(dir, node.addr).await.unwrap();
        for (id, name, level) in [
            (
                DISTRICT,
                "Trung tâm Y tế khu vực Vĩnh Tường",
                FacilityLevel::Basic,
            ),
            (
                PROVINCIAL,
                "Bệnh viện Đa khoa tỉnh Vĩnh Phúc",
                FacilityLevel::Specialized,
            ),
            (
                CLINIC,
                "Phòng khám Nội tiết - Đái tháo đường",
                FacilityLevel::Initial,
            ),
            (
                EMERGENCY,
                "Bệnh viện Cấp cứu 115",
                FacilityLevel::Specialized,
            ),
        ] {
            nc.register_facility(&fac(id), name, "Phú Thọ", level)
                .await
                .unwrap();
        }
        Self {
            district: FacilityClient::open(dir, node.addr, &fac(DISTRICT))
                .await
                .unwrap(),
            provincial: FacilityClient::open(dir, node.addr, &fac(PROVINCIAL))
                .await
                .unwrap(),
            clinic: FacilityClient::open(dir, node.addr, &fac(CLINIC))
                .await
                .unwrap(),
            emergency: FacilityClient::open(dir, node.addr, &fac(EMERGENCY))
                .await
                .unwrap(),
            nc,
        }
    }
}

impl World {
    /// `facility` enrolls a new key for `patient` in person; waits until it is the
    /// patient's and returns the patient's app, on the patient port.
    pub async fn enroll(
        &self,
        dir: &Path,
        node: &TestNode,
        facility: &mut FacilityClient,
        patient: &str,
    ) -> PatientClient {
        let key =
            hrx_domain::SigningKey::from_pkcs8(&hrx_domain::SigningKey::generate_pkcs8().unwrap())
                .unwrap();
        let patient = hrx_domain::PatientId::parse(patient).unwrap();
        let body = hrx_node::client::enrollment(&patient, &key, &facility.id, Timestamp::now());
        let (_, r) = facility.emit(body).await.unwrap();
        assert!(accepted(&r), "{r:?}");
        settle(&self.nc).await;
        PatientClient::new(patient, key, patient_port(dir, node).await)
    }
}

/// A channel to the node's patient port (no client certificate).
pub async fn patient_port(dir: &Path, node: &TestNode) -> tonic::transport::Channel {
    let ca = std::fs::read_to_string(dir.join("tls").join("ca.pem")).unwrap();
    hrx_node::client::connect_patient_port(node.patient, &ca)
        .await
        .unwrap()
}

/// Days from now.
pub fn in_days(days: i64) -> Timestamp {
    Timestamp::now()
        .checked_add(hrx_domain::Duration::from_secs(days * 86_400).unwrap())
        .unwrap()
}

/// A patient-signed grant's body.
pub fn patient_grant(
    patient: &str,
    grantee: &str,
    purposes: &[hrx_domain::Purpose],
    expires: Timestamp,
) -> v1::patient_statement::Body {
    let v1::facility_event::Body::ConsentGrant(mut g) = grant(patient, grantee, purposes, expires)
    else {
        panic!("grant() builds a grant")
    };
    g.evidence = None;
    v1::patient_statement::Body::ConsentGrant(g)
}

pub fn ts(rfc3339: &str) -> Timestamp {
    Timestamp::parse_rfc3339(rfc3339).unwrap()
}

/// A record body of `kind` about `patient`, with a minimal valid FHIR resource.
pub fn record(
    patient: &str,
    kind: RecordKind,
    occurred: Timestamp,
    labels: &[hrx_domain::SensitivityLabel],
) -> v1::facility_event::Body {
    let element = kind.fhir_patient_element();
    let resource = json!({
        "resourceType": kind.fhir_resource_type(),
        element: {"reference": format!("Patient/{patient}")},
        "note": [{"text": "kết quả xét nghiệm"}],
    });
    v1::facility_event::Body::Record(v1::Record {
        patient_id: patient.to_owned(),
        kind: kind.code(),
        occurred_at: Some(codec::timestamp(occurred)),
        author: "CCHN-002614".into(),
        sensitivity: labels.iter().map(|l| l.code()).collect(),
        supersedes: String::new(),
        content_type: FHIR_JSON.into(),
        body: serde_json::to_vec(&resource).unwrap(),
    })
}

pub fn grant(
    patient: &str,
    grantee: &str,
    purposes: &[hrx_domain::Purpose],
    expires: Timestamp,
) -> v1::facility_event::Body {
    v1::facility_event::Body::ConsentGrant(v1::ConsentGrant {
        patient_id: patient.into(),
        purposes: purposes.iter().map(|p| p.code()).collect(),
        kinds: vec![],
        include_sensitive: vec![],
        data_from: None,
        data_until: None,
        expires_at: Some(codec::timestamp(expires)),
        evidence: Some(v1::ConsentEvidence {
            form_id: "PCT-2026-000871".into(),
            sha256: vec![7; 32],
        }),
        request_event_id: String::new(),
        grantee: Some(v1::consent_grant::Grantee::GranteeFacilityId(
            grantee.into(),
        )),
    })
}

pub fn accepted(r: &v1::SubmitResult) -> bool {
    r.status == v1::SubmitStatus::Accepted as i32
}

/// Polls `f` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A whole timeline for `reader`, page by page, and the withheld count (the same on
/// every page: it covers the whole timeline).
pub async fn read_all(
    reader: &FacilityClient,
    patient: &str,
    purpose: hrx_domain::Purpose,
    page_size: u32,
) -> (Vec<v1::TimelineEntry>, u64) {
    let mut cursor = String::new();
    let mut entries = Vec::new();
    let mut withheld = 0;
    loop {
        let page = reader
            .timeline()
            .get_timeline(v1::GetTimelineRequest {
                patient_id: patient.into(),
                purpose: purpose.code(),
                page_size,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        entries.extend(page.entries);
        if cursor.is_empty() {
            withheld = page.withheld_count;
        }
        assert_eq!(
            page.withheld_count, withheld,
            "withheld is the same on every page"
        );
        if page.next_cursor.is_empty() {
            return (entries, withheld);
        }
        cursor = page.next_cursor;
    }
}

/// Waits until the projector has caught up with the log.
pub async fn settle(nc: &NationalCenter) {
    let caught_up = nc.settle(Duration::from_secs(10)).await.unwrap();
    assert!(caught_up, "the projector did not catch up within 10 s");
}
