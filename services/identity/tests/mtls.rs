//! Mutual TLS end to end: a real tonic server on a loopback port, real clients.
//!
//! The server is the standard gRPC health service behind an interceptor that does what
//! every hrx service does first, `caller(&request)?`, and records the principal, so each
//! test can see who the server believes is calling (and that a refused client never got
//! as far as a request).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hrx_domain::FacilityId;
use hrx_identity::{CertificateAuthority, CertifiedKey, Principal, TlsDir, caller, client_tls};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Server};
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

type Seen = Arc<Mutex<Vec<Principal>>>;

/// Starts the server with the node's CA and server certificate; returns its port and the
/// principals it has seen.
async fn start_server(tls: &TlsDir) -> (u16, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let interceptor = move |request: Request<()>| {
        let principal = caller(&request)?;
        record.lock().unwrap().push(principal);
        Ok(request)
    };
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = Server::builder()
        .tls_config(hrx_identity::server_tls(tls.ca_cert_pem(), tls.server()))
        .unwrap()
        .add_service(InterceptedService::new(health, interceptor))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    (port, seen)
}

/// Connects with `config` and makes one health check. Err carries a description of where
/// it failed (connect or call) and the status code if the call got that far.
async fn call(port: u16, config: ClientTlsConfig) -> Result<(), (String, Option<Code>)> {
    let attempt = async {
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(config)
            .map_err(|e| (format!("tls config: {e}"), None))?
            .connect()
            .await
            .map_err(|e| (format!("connect: {e:?}"), None))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
            .map_err(|s| (format!("call: {s}"), Some(s.code())))
    };
    tokio::time::timeout(Duration::from_secs(20), attempt)
        .await
        .expect("the call neither succeeded nor failed in time")
}

fn facility(code: &str) -> FacilityId {
    FacilityId::parse(code).unwrap()
}

#[tokio::test]
async fn facility_and_national_center_are_identified() {
    let data = tempfile::tempdir().unwrap();
    let tls = TlsDir::open_or_init(data.path()).unwrap();
    let (port, seen) = start_server(&tls).await;

    let f = tls.facility(&facility("26012")).unwrap();
    call(port, client_tls(tls.ca_cert_pem(), &f, "localhost"))
        .await
        .unwrap();
    let nc = tls.national_center().unwrap();
    call(port, client_tls(tls.ca_cert_pem(), &nc, "localhost"))
        .await
        .unwrap();

    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            Principal::Facility(facility("26012")),
            Principal::NationalCenter
        ]
    );
}

#[tokio::test]
async fn server_certificate_covers_ip_addresses() {
    let data = tempfile::tempdir().unwrap();
    let tls = TlsDir::open_or_init(data.path()).unwrap();
    let (port, seen) = start_server(&tls).await;
    let nc = tls.national_center().unwrap();
    call(port, client_tls(tls.ca_cert_pem(), &nc, "127.0.0.1"))
        .await
        .unwrap();
    // A name the certificate does not cover is refused by the client.
    let err = call(port, client_tls(tls.ca_cert_pem(), &nc, "example.org"))
        .await
        .unwrap_err();
    assert!(err.0.contains("NotValidForName"), "{err:?}");
    assert_eq!(*seen.lock().unwrap(), vec![Principal::NationalCenter]);
}

#[tokio::test]
async fn certificates_issued_after_reopening_are_trusted() {
    // The reopened directory signs with the CA loaded from disk; the server runs with the
    // first instance. Trust only works if the loaded issuer name matches byte for byte.
    let data = tempfile::tempdir().unwrap();
    let first = TlsDir::open_or_init(data.path()).unwrap();
    let (port, seen) = start_server(&first).await;
    let reopened = TlsDir::open_or_init(data.path()).unwrap();
    let f = reopened.facility(&facility("01001")).unwrap();
    call(port, client_tls(reopened.ca_cert_pem(), &f, "localhost"))
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Principal::Facility(facility("01001"))]
    );
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let tls = TlsDir::open_or_init(data.path()).unwrap();
    let (port, seen) = start_server(&tls).await;
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(tls.ca_cert_pem()))
        .domain_name("localhost");
    let err = call(port, anonymous).await.unwrap_err();
    // Refused by the server in the TLS handshake (with TLS 1.3 the client learns it on
    // its first request): no request reached the service.
    assert!(err.0.contains("CertificateRequired"), "{err:?}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let tls = TlsDir::open_or_init(data.path()).unwrap();
    let (port, seen) = start_server(&tls).await;
    let other_ca = CertificateAuthority::generate("hrx development CA").unwrap();
    let forged = other_ca
        .issue_client(&Principal::Facility(facility("26012")))
        .unwrap();
    // The client trusts the real server, but presents a certificate the server's CA did
    // not issue (even though the CA's name is the same).
    let err = call(port, client_tls(tls.ca_cert_pem(), &forged, "localhost"))
        .await
        .unwrap_err();
    // The issuer name matches the trusted CA's, so the server checks the signature with
    // the real CA's key, which fails (rustls reports a bad signature as DecryptError).
    assert!(err.0.contains("DecryptError"), "{err:?}");
    assert!(seen.lock().unwrap().is_empty());

    // Same refusal with a differently named foreign CA (rustls: UnknownCA).
    let stranger = CertificateAuthority::generate("somebody else's CA").unwrap();
    let forged = stranger.issue_client(&Principal::NationalCenter).unwrap();
    let err = call(port, client_tls(tls.ca_cert_pem(), &forged, "localhost"))
        .await
        .unwrap_err();
    assert!(err.0.contains("UnknownCA"), "{err:?}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn server_certificate_cannot_be_used_as_a_client_identity() {
    // Issued by the right CA, but for server authentication only.
    let data = tempfile::tempdir().unwrap();
    let tls = TlsDir::open_or_init(data.path()).unwrap();
    let (port, seen) = start_server(&tls).await;
    let server_cert = tls.server().clone();
    let err = call(
        port,
        client_tls(tls.ca_cert_pem(), &server_cert, "localhost"),
    )
    .await
    .unwrap_err();
    // Its extended key usage is serverAuth only.
    assert!(err.0.contains("UnsupportedCertificate"), "{err:?}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn valid_client_certificate_naming_no_principal_is_unauthenticated() {
    // A certificate the CA did sign for client use, but with no hrx principal: TLS
    // accepts it, `caller` does not.
    let data = tempfile::tempdir().unwrap();
    let tls = TlsDir::open_or_init(data.path()).unwrap();
    let (port, seen) = start_server(&tls).await;

    let ca_key = KeyPair::from_pem(&tls.ca().key_pem()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(tls.ca_cert_pem(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["client.example".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let nameless = CertifiedKey {
        cert_pem: params.signed_by(&key, &issuer).unwrap().pem(),
        key_pem: key.serialize_pem(),
    };

    let err = call(port, client_tls(tls.ca_cert_pem(), &nameless, "localhost"))
        .await
        .unwrap_err();
    assert_eq!(err.1, Some(Code::Unauthenticated), "{err:?}");
    assert!(err.0.contains("names no hrx principal"), "{err:?}");
    assert!(seen.lock().unwrap().is_empty());
}
