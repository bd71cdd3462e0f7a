//! Talking to a node: as the national center (registering facilities and keys) or as a
//! facility (signing and submitting events, reading timelines). Used by the CLI, the
//! demo and the end-to-end tests, always over mutual TLS with the certificates of the
//! node's data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hrx_domain::dsse::PayloadType;
use hrx_domain::{
    Envelope, EventId, FacilityId, FacilityLevel, KeyId, Sha256, SigningKey, Timestamp,
};
use hrx_identity::{CertifiedKey, TlsDir};
use hrx_proto::codec;
use hrx_proto::v1;
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};

use crate::keys::{self, KeyFileError};
use crate::root_key_path;

/// How long a client keeps retrying a call the node answered UNAVAILABLE (a store or
/// log restarting, a node being replaced) before it gives up.
pub const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Identity(#[from] hrx_identity::IdentityError),
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("the node refused registry event {index}: {message}")]
    Refused { index: usize, message: String },
}

impl ClientError {
    /// Whether the same call may succeed later: the node or what it depends on is
    /// unavailable for a moment, or a concurrent writer won. Rejections are answers,
    /// never errors, so a retried submission cannot be double-counted: the node
    /// answers what it already has as duplicates.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Rpc(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Aborted
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
            ),
            ClientError::Connect { .. } => true,
            _ => false,
        }
    }
}

/// Runs `call` until it succeeds, fails for good, or [`RETRY_FOR`] has passed, waiting
/// with exponential backoff and full jitter between attempts (so that many clients
/// coming back together do not retry in step).
pub async fn retrying<T, F, Fut>(what: &str, call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    use backon::{ExponentialBuilder, Retryable as _};
    call.retry(
        ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(100))
            .with_max_delay(std::time::Duration::from_secs(5))
            .with_total_delay(Some(RETRY_FOR))
            .without_max_times()
            .with_jitter(),
    )
    .when(ClientError::is_retryable)
    .notify(|e, wait| tracing::warn!(error = %e, ?wait, "{what} failed; retrying"))
    .await
}

/// A mutually authenticated channel to a node.
pub async fn connect(
    addr: SocketAddr,
    ca_pem: &str,
    identity: &CertifiedKey,
) -> Result<Channel, ClientError> {
    let connect_error = |source| ClientError::Connect { addr, source };
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(connect_error)?
        .tls_config(hrx_identity::client_tls(ca_pem, identity, "localhost"))
        .map_err(connect_error)?
        .connect()
        .await
        .map_err(connect_error)
}

/// Where a facility's current signing key lives in a node's data directory.
pub fn facility_key_path(data_dir: &Path, id: &FacilityId) -> PathBuf {
    data_dir
        .join("facilities")
        .join(id.as_str())
        .join("signing.key.pem")
}

/// The national center's client: signs registry events with the root key.
pub struct NationalCenter {
    data_dir: PathBuf,
    tls: TlsDir,
    root: SigningKey,
    channel: Channel,
}

impl std::fmt::Debug for NationalCenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NationalCenter")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// A facility's registration as the node stored it.
#[derive(Clone, Debug)]
pub struct Registered {
    pub facility_id: FacilityId,
    pub key_id: KeyId,
    pub signing_key_path: PathBuf,
    pub certificate_path: PathBuf,
    pub certificate_key_path: PathBuf,
}

impl NationalCenter {
    pub async fn open(data_dir: &Path, addr: SocketAddr) -> Result<Self, ClientError> {
        let tls = TlsDir::open_or_init(data_dir)?;
        let root = keys::read_private_key(&root_key_path(data_dir))?;
        let channel = connect(addr, tls.ca_cert_pem(), &tls.national_center()?).await?;
        Ok(Self {
            data_dir: data_dir.to_owned(),
            tls,
            root,
            channel,
        })
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn registry(&self) -> v1::registry_service_client::RegistryServiceClient<Channel> {
        v1::registry_service_client::RegistryServiceClient::new(self.channel.clone())
    }

    /// Signs `bodies` as the next registry events and submits them; any event not
    /// accepted is an error naming the first such and its reason.
    pub async fn submit(
        &self,
        bodies: Vec<v1::registry_event::Body>,
    ) -> Result<Vec<v1::SubmitResult>, ClientError> {
        let results = self.submit_unchecked(bodies).await?;
        for (index, r) in results.iter().enumerate() {
            if r.status != v1::SubmitStatus::Accepted as i32 {
                let message = r
                    .rejection
                    .as_ref()
                    .map(|r| {
                        let reason = hrx_domain::Reason::from_code(r.reason)
                            .map(|x| x.name())
                            .unwrap_or("UNKNOWN");
                        format!("{reason}: {}", r.message)
                    })
                    .unwrap_or_default();
                return Err(ClientError::Refused { index, message });
            }
        }
        Ok(results)
    }

    /// Signs `bodies` as the next registry events and submits them; the results as
    /// the node answered them.
    pub async fn submit_unchecked(
        &self,
        bodies: Vec<v1::registry_event::Body>,
    ) -> Result<Vec<v1::SubmitResult>, ClientError> {
        let head = self
            .registry()
            .get_registry_head(v1::GetRegistryHeadRequest {})
            .await?
            .into_inner();
        let (mut seq, mut prev) = (head.seq, head.event_hash);
        if seq == 0 {
            prev = Sha256::ZERO.as_bytes().to_vec();
        }
        let mut envelopes = Vec::new();
        for body in bodies {
            seq += 1;
            let event = v1::RegistryEvent {
                header: Some(v1::RegistryEventHeader {
                    event_id: EventId::new_v7().to_string(),
                    seq,
                    prev_hash: prev.clone(),
                    recorded_at: Some(codec::timestamp(Timestamp::now())),
                }),
                body: Some(body),
            };
            let envelope = self
                .root
                .sign(PayloadType::RegistryEvent, event.encode_to_vec());
            prev = envelope.event_hash().as_bytes().to_vec();
            envelopes.push(v1::SignedEnvelope::from(envelope));
        }
        Ok(self
            .registry()
            .submit_registry_events(v1::SubmitRegistryEventsRequest { envelopes })
            .await?
            .into_inner()
            .results)
    }

    /// Waits until the projector has caught up with the log (as the monitor sees it),
    /// or `timeout` passes; returns whether it caught up. A retryable error (the log or
    /// the store restarting) is waited out like lag, until `timeout`.
    pub async fn settle(&self, timeout: std::time::Duration) -> Result<bool, ClientError> {
        let mut monitor =
            v1::monitor_service_client::MonitorServiceClient::new(self.channel.clone());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let lag = match monitor
                .get_projector_lag(v1::GetProjectorLagRequest {})
                .await
                .map_err(ClientError::from)
            {
                Ok(lag) => lag.into_inner(),
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "projector lag unavailable; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if lag.partitions.iter().all(|p| p.projected >= p.log_end) {
                return Ok(true);
            }
            if tokio::time::Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Registers a facility: issues its client certificate, creates its signing key in
    /// the data directory (if it has none), and submits "facility registered" and "key
    /// added" to the registry.
    pub async fn register_facility(
        &self,
        id: &FacilityId,
        name: &str,
        province: &str,
        level: FacilityLevel,
    ) -> Result<Registered, ClientError> {
        self.tls.facility(id)?;
        let path = facility_key_path(&self.data_dir, id);
        let (key, _) = keys::read_or_create(&path)?;
        self.submit(vec![
            v1::registry_event::Body::FacilityRegistered(v1::FacilityRegistered {
                facility_id: id.to_string(),
                name: name.to_owned(),
                province: province.to_owned(),
                level: level.code(),
            }),
            v1::registry_event::Body::KeyAdded(v1::KeyAdded {
                facility_id: id.to_string(),
                public_key: key.public_key().as_bytes().to_vec(),
                valid_from: Some(codec::timestamp(Timestamp::now())),
            }),
        ])
        .await?;
        let (certificate_path, certificate_key_path) = self.tls.facility_paths(id);
        Ok(Registered {
            facility_id: id.clone(),
            key_id: key.key_id(),
            signing_key_path: path,
            certificate_path,
            certificate_key_path,
        })
    }

    /// Revokes a key from `revoked_at` on.
    pub async fn revoke_key(
        &self,
        key_id: &KeyId,
        revoked_at: Timestamp,
        reason: &str,
    ) -> Result<(), ClientError> {
        self.submit(vec![v1::registry_event::Body::KeyRevoked(v1::KeyRevoked {
            key_id: key_id.to_string(),
            revoked_at: Some(codec::timestamp(revoked_at)),
            reason: reason.to_owned(),
        })])
        .await
        .map(|_| ())
    }

    /// Takes a client certificate back: every hrx process refuses it from the moment
    /// it has projected this (new calls, and open streams within seconds).
    pub async fn revoke_certificate(
        &self,
        serial: &hrx_domain::event::CertificateSerial,
        principal: &str,
        reason: &str,
    ) -> Result<(), ClientError> {
        self.submit(vec![v1::registry_event::Body::CertificateRevoked(
            v1::CertificateRevoked {
                serial: serial.to_string(),
                principal: principal.to_owned(),
                revoked_at: Some(codec::timestamp(Timestamp::now())),
                reason: reason.to_owned(),
            },
        )])
        .await
        .map(|_| ())
    }

    /// Rotates a facility's signing key: a new key becomes its current key and is
    /// registered; the old key stays valid until revoked.
    pub async fn add_key(&self, id: &FacilityId) -> Result<KeyId, ClientError> {
        let path = facility_key_path(&self.data_dir, id);
        if path.exists() {
            let old = keys::read_private_key(&path)?;
            let archived =
                path.with_file_name(format!("signing.{}.key.pem", &old.key_id().as_str()[..16]));
            std::fs::rename(&path, &archived).map_err(|source| KeyFileError::Create {
                path: archived,
                source,
            })?;
        }
        let (key, _) = keys::read_or_create(&path)?;
        self.submit(vec![v1::registry_event::Body::KeyAdded(v1::KeyAdded {
            facility_id: id.to_string(),
            public_key: key.public_key().as_bytes().to_vec(),
            valid_from: Some(codec::timestamp(Timestamp::now())),
        })])
        .await?;
        Ok(key.key_id())
    }
}

/// A facility's client: keeps its chain (seq, prev hash) and signs with its key.
pub struct FacilityClient {
    pub id: FacilityId,
    key: SigningKey,
    channel: Channel,
    seq: u64,
    prev: Sha256,
}

impl std::fmt::Debug for FacilityClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FacilityClient")
            .field("id", &self.id)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl FacilityClient {
    /// Connects as facility `id` with its certificate and signing key from the data
    /// directory, and learns its head from the node.
    pub async fn open(
        data_dir: &Path,
        addr: SocketAddr,
        id: &FacilityId,
    ) -> Result<Self, ClientError> {
        let tls = TlsDir::open_or_init(data_dir)?;
        let key = keys::read_private_key(&facility_key_path(data_dir, id))?;
        let channel = connect(addr, tls.ca_cert_pem(), &tls.facility(id)?).await?;
        let mut client = Self {
            id: id.clone(),
            key,
            channel,
            seq: 0,
            prev: Sha256::ZERO,
        };
        client.sync_head().await?;
        Ok(client)
    }

    /// A client with explicit credentials (tests use it to present one facility's
    /// certificate with another's events).
    pub fn with(id: FacilityId, key: SigningKey, channel: Channel) -> Self {
        Self {
            id,
            key,
            channel,
            seq: 0,
            prev: Sha256::ZERO,
        }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn head(&self) -> (u64, Sha256) {
        (self.seq, self.prev)
    }

    /// Sets the local head (to resume from a known point, or, in tests, to produce
    /// gaps and forks on purpose).
    pub fn set_head(&mut self, seq: u64, prev: Sha256) {
        self.seq = seq;
        self.prev = prev;
    }

    /// Asks the node for this facility's head (after a gap, or at start).
    pub async fn sync_head(&mut self) -> Result<(), ClientError> {
        let head = v1::ingest_service_client::IngestServiceClient::new(self.channel.clone())
            .get_facility_head(v1::GetFacilityHeadRequest {
                facility_id: self.id.to_string(),
            })
            .await?
            .into_inner()
            .head
            .unwrap_or_default();
        self.seq = head.seq;
        self.prev = Sha256::from_slice(&head.event_hash).unwrap_or(Sha256::ZERO);
        Ok(())
    }

    /// Signs `body` as this facility's next event (advancing the local head).
    pub fn sign(&mut self, body: v1::facility_event::Body) -> (EventId, Envelope) {
        self.sign_with_id(EventId::new_v7(), body)
    }

    /// Signs `body` as the next event with a given event id.
    pub fn sign_with_id(
        &mut self,
        event_id: EventId,
        body: v1::facility_event::Body,
    ) -> (EventId, Envelope) {
        self.sign_full(event_id, body, Timestamp::now())
    }

    /// Signs `body` as the next event claiming `recorded_at` (tests of the exchange's
    /// clock rules).
    pub fn sign_at(
        &mut self,
        body: v1::facility_event::Body,
        recorded_at: Timestamp,
    ) -> (EventId, Envelope) {
        self.sign_full(EventId::new_v7(), body, recorded_at)
    }

    fn sign_full(
        &mut self,
        event_id: EventId,
        body: v1::facility_event::Body,
        recorded_at: Timestamp,
    ) -> (EventId, Envelope) {
        self.seq += 1;
        let event = v1::FacilityEvent {
            header: Some(v1::FacilityEventHeader {
                event_id: event_id.to_string(),
                facility_id: self.id.to_string(),
                seq: self.seq,
                prev_hash: self.prev.as_bytes().to_vec(),
                recorded_at: Some(codec::timestamp(recorded_at)),
            }),
            body: Some(body),
        };
        let envelope = self
            .key
            .sign(PayloadType::FacilityEvent, event.encode_to_vec());
        self.prev = envelope.event_hash();
        (event_id, envelope)
    }

    /// Submits envelopes as they are.
    pub async fn submit(
        &self,
        envelopes: Vec<Envelope>,
    ) -> Result<Vec<v1::SubmitResult>, ClientError> {
        Ok(
            v1::ingest_service_client::IngestServiceClient::new(self.channel.clone())
                .submit_events(v1::SubmitEventsRequest {
                    envelopes: envelopes.into_iter().map(Into::into).collect(),
                })
                .await?
                .into_inner()
                .results,
        )
    }

    /// Submits envelopes, retrying while the node is unavailable (see [`retrying`]).
    pub async fn submit_retrying(
        &self,
        envelopes: Vec<Envelope>,
    ) -> Result<Vec<v1::SubmitResult>, ClientError> {
        retrying("SubmitEvents", || self.submit(envelopes.clone())).await
    }

    /// Signs and submits one body; returns its event id and result.
    pub async fn emit(
        &mut self,
        body: v1::facility_event::Body,
    ) -> Result<(EventId, v1::SubmitResult), ClientError> {
        let (id, envelope) = self.sign(body);
        let result = self.submit(vec![envelope]).await?.remove(0);
        Ok((id, result))
    }

    pub fn timeline(&self) -> v1::timeline_service_client::TimelineServiceClient<Channel> {
        v1::timeline_service_client::TimelineServiceClient::new(self.channel.clone())
    }

    pub fn consent(&self) -> v1::consent_service_client::ConsentServiceClient<Channel> {
        v1::consent_service_client::ConsentServiceClient::new(self.channel.clone())
    }
}

/// A channel to a node's patient port: TLS that trusts the node's CA, no client
/// certificate (the patient's app has none; its requests are signed instead).
pub async fn connect_patient_port(addr: SocketAddr, ca_pem: &str) -> Result<Channel, ClientError> {
    let connect_error = |source| ClientError::Connect { addr, source };
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(connect_error)?
        .tls_config(hrx_identity::anonymous_client_tls(ca_pem, "localhost"))
        .map_err(connect_error)?
        .connect()
        .await
        .map_err(connect_error)
}

/// A proof that the holder of `key` is `patient`, made for `facility` (an enrollment)
/// or for no facility (a rotation), at `at`.
pub fn key_proof(
    key: &SigningKey,
    patient: &hrx_domain::PatientId,
    facility: Option<&FacilityId>,
    at: Timestamp,
) -> v1::SignedEnvelope {
    let proof = v1::PatientKeyProof {
        patient_id: patient.to_string(),
        public_key: key.public_key().as_bytes().to_vec(),
        facility_id: facility.map(|f| f.to_string()).unwrap_or_default(),
        proved_at: Some(codec::timestamp(at)),
    };
    key.sign(PayloadType::PatientKeyProof, proof.encode_to_vec())
        .into()
}

/// The body of a facility event enrolling `patient_key` for `patient`, with its proof
/// of possession (the patient's app signs it at the desk; here the caller holds both).
pub fn enrollment(
    patient: &hrx_domain::PatientId,
    patient_key: &SigningKey,
    facility: &FacilityId,
    at: Timestamp,
) -> v1::facility_event::Body {
    v1::facility_event::Body::PatientKeyEnrollment(v1::PatientKeyEnrollment {
        patient_id: patient.to_string(),
        public_key: patient_key.public_key().as_bytes().to_vec(),
        proof: Some(key_proof(patient_key, patient, Some(facility), at)),
    })
}

/// The patient's side, in CLI form: signs statements and requests with the patient's
/// own key and sends them to the patient service, on the patient port or carried over a
/// facility's connection.
pub struct PatientClient {
    pub patient: hrx_domain::PatientId,
    key: SigningKey,
    channel: Channel,
}

impl std::fmt::Debug for PatientClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientClient")
            .field("key_id", &self.key.key_id())
            .finish_non_exhaustive()
    }
}

impl PatientClient {
    pub fn new(patient: hrx_domain::PatientId, key: SigningKey, channel: Channel) -> Self {
        Self {
            patient,
            key,
            channel,
        }
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Uses another key from now on (after a rotation).
    pub fn set_key(&mut self, key: SigningKey) {
        self.key = key;
    }

    fn service(&self) -> v1::patient_service_client::PatientServiceClient<Channel> {
        v1::patient_service_client::PatientServiceClient::new(self.channel.clone())
    }

    /// Signs `body` as a statement of this patient, with a fresh statement id.
    pub fn statement(&self, body: v1::patient_statement::Body) -> (EventId, Envelope) {
        let id = EventId::new_v7();
        let statement = v1::PatientStatement {
            header: Some(v1::PatientStatementHeader {
                statement_id: id.to_string(),
                patient_id: self.patient.to_string(),
                public_key: self.key.public_key().as_bytes().to_vec(),
                signed_at: Some(codec::timestamp(Timestamp::now())),
            }),
            body: Some(body),
        };
        let envelope = self
            .key
            .sign(PayloadType::PatientStatement, statement.encode_to_vec());
        (id, envelope)
    }

    /// Submits signed statements as they are.
    pub async fn submit(
        &self,
        statements: Vec<Envelope>,
    ) -> Result<Vec<v1::SubmitResult>, ClientError> {
        Ok(self
            .service()
            .submit_statements(v1::SubmitStatementsRequest {
                statements: statements.into_iter().map(Into::into).collect(),
            })
            .await?
            .into_inner()
            .results)
    }

    /// Signs and submits one statement; returns its id and result.
    pub async fn state(
        &self,
        body: v1::patient_statement::Body,
    ) -> Result<(EventId, v1::SubmitResult), ClientError> {
        let (id, envelope) = self.statement(body);
        let result = self.submit(vec![envelope]).await?.remove(0);
        Ok((id, result))
    }

    /// A signed, single-use request for this patient's view.
    pub fn view_request(&self, page_size: u32, cursor: &str) -> v1::SignedEnvelope {
        let request = v1::PatientRequest {
            request_id: EventId::new_v7().to_string(),
            patient_id: self.patient.to_string(),
            public_key: self.key.public_key().as_bytes().to_vec(),
            issued_at: Some(codec::timestamp(Timestamp::now())),
            query: Some(v1::patient_request::Query::View(v1::PatientViewQuery {
                accesses_page_size: page_size,
                accesses_cursor: cursor.to_owned(),
            })),
        };
        self.key
            .sign(PayloadType::PatientRequest, request.encode_to_vec())
            .into()
    }

    /// Sends a signed view request.
    pub async fn send_view_request(
        &self,
        request: v1::SignedEnvelope,
    ) -> Result<v1::PatientView, ClientError> {
        Ok(self
            .service()
            .get_patient_view(v1::GetPatientViewRequest {
                request: Some(request),
            })
            .await?
            .into_inner())
    }

    /// The patient's view, with one page of the access list.
    pub async fn view(&self, page_size: u32, cursor: &str) -> Result<v1::PatientView, ClientError> {
        self.send_view_request(self.view_request(page_size, cursor))
            .await
    }

    /// The patient's view with every access (all pages).
    pub async fn view_all(&self) -> Result<v1::PatientView, ClientError> {
        let mut view = self.view(1000, "").await?;
        while !view.accesses_next_cursor.is_empty() {
            let next = self.view(1000, &view.accesses_next_cursor).await?;
            view.accesses.extend(next.accesses);
            view.accesses_next_cursor = next.accesses_next_cursor;
        }
        Ok(view)
    }

    /// Approves a consent request: a patient-signed grant of what it asked, to the
    /// requesting facility, naming the request.
    pub async fn approve(
        &self,
        request: &v1::ConsentRequestView,
    ) -> Result<(EventId, v1::SubmitResult), ClientError> {
        let asked = request.request.clone().unwrap_or_default();
        let seconds = asked.duration.map(|d| d.seconds).unwrap_or(0);
        let expires = Timestamp::now()
            .checked_add(
                hrx_domain::Duration::from_secs(seconds)
                    .unwrap_or(hrx_domain::Duration::from_secs(0).expect("zero is a duration")),
            )
            .unwrap_or_else(Timestamp::now);
        self.state(v1::patient_statement::Body::ConsentGrant(
            v1::ConsentGrant {
                patient_id: self.patient.to_string(),
                purposes: asked.purposes,
                kinds: asked.kinds,
                include_sensitive: asked.include_sensitive,
                data_from: asked.data_from,
                data_until: asked.data_until,
                expires_at: Some(codec::timestamp(expires)),
                evidence: None,
                request_event_id: request.request_event_id.clone(),
                grantee: Some(v1::consent_grant::Grantee::GranteeFacilityId(
                    request.facility_id.clone(),
                )),
            },
        ))
        .await
    }

    /// Declines a consent request.
    pub async fn decline(
        &self,
        request_event_id: &str,
    ) -> Result<(EventId, v1::SubmitResult), ClientError> {
        self.state(v1::patient_statement::Body::ConsentDecline(
            v1::ConsentDecline {
                request_event_id: request_event_id.to_owned(),
            },
        ))
        .await
    }

    /// Revokes a grant (patient-signed or attested).
    pub async fn revoke(&self, grant_id: &str) -> Result<(EventId, v1::SubmitResult), ClientError> {
        self.state(v1::patient_statement::Body::ConsentRevocation(
            v1::ConsentRevocation {
                patient_id: self.patient.to_string(),
                grant_event_id: grant_id.to_owned(),
                evidence: None,
            },
        ))
        .await
    }

    /// Replaces the patient's key with `new` (signed by the current key, with a proof
    /// of possession by the new one); this client signs with `new` afterwards.
    pub async fn rotate(&mut self, new: SigningKey) -> Result<v1::SubmitResult, ClientError> {
        let proof = key_proof(&new, &self.patient, None, Timestamp::now());
        let (_, result) = self
            .state(v1::patient_statement::Body::KeyRotation(
                v1::PatientKeyRotation {
                    new_public_key: new.public_key().as_bytes().to_vec(),
                    proof: Some(proof),
                },
            ))
            .await?;
        if result.status == v1::SubmitStatus::Accepted as i32 {
            self.key = new;
        }
        Ok(result)
    }
}
