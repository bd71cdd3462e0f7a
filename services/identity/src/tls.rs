//! Mutual TLS for tonic, and the principal of an incoming call.
//!
//! The server demands a client certificate signed by the exchange's CA: a connection
//! without one fails in the TLS handshake, before any request is read. rustls checks the
//! chain, validity and extended key usage; [`caller`] then only has to read the principal
//! out of the already-verified leaf certificate.

use std::sync::Once;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::ca::CertifiedKey;
use crate::error::IdentityError;
use crate::principal::{Principal, principal_from_der};

/// The TLS configuration of a server that accepts only clients with a certificate issued
/// by the CA in `ca_cert_pem`, and presents `server` as its own identity.
///
/// The certificates are parsed when the config is given to
/// `tonic::transport::Server::tls_config`, which reports any error.
pub fn server_tls(ca_cert_pem: &str, server: &CertifiedKey) -> ServerTlsConfig {
    ensure_crypto_provider();
    ServerTlsConfig::new()
        .identity(Identity::from_pem(&server.cert_pem, &server.key_pem))
        .client_ca_root(Certificate::from_pem(ca_cert_pem))
        // The default, but stated: identity is the point, so anonymous clients are refused
        // in the handshake rather than left for each service to notice.
        .client_auth_optional(false)
}

/// The TLS configuration of the patient port: the server proves who it is, the client
/// presents no certificate. Only `PatientService` is served there, and every one of its
/// calls carries the patient's own signature: the patient is identified by their key,
/// not by the connection.
pub fn server_tls_without_client_auth(server: &CertifiedKey) -> ServerTlsConfig {
    ensure_crypto_provider();
    ServerTlsConfig::new().identity(Identity::from_pem(&server.cert_pem, &server.key_pem))
}

/// The TLS configuration of a client without a certificate of its own (the patient's
/// app) that trusts only the CA in `ca_cert_pem` and expects `server_name`.
pub fn anonymous_client_tls(ca_cert_pem: &str, server_name: &str) -> ClientTlsConfig {
    ensure_crypto_provider();
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_cert_pem))
        .domain_name(server_name)
}

/// The TLS configuration of a client that presents `client` as its identity, trusts only
/// the CA in `ca_cert_pem` (no system roots), and expects the server's certificate to name
/// `server_name`.
pub fn client_tls(ca_cert_pem: &str, client: &CertifiedKey, server_name: &str) -> ClientTlsConfig {
    ensure_crypto_provider();
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_cert_pem))
        .identity(Identity::from_pem(&client.cert_pem, &client.key_pem))
        .domain_name(server_name)
}

/// The principal making `request`, from the first (leaf) certificate of its TLS
/// connection.
///
/// Fails with `Unauthenticated` when the connection has no client certificate (a plaintext
/// server, say) or the certificate names no principal. The message says which, and never
/// echoes the certificate.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    principal_of(request).map_err(|e| tonic::Status::unauthenticated(e.to_string()))
}

fn principal_of<T>(request: &tonic::Request<T>) -> Result<Principal, IdentityError> {
    let certs = request
        .peer_certs()
        .ok_or(IdentityError::NoClientCertificate)?;
    let leaf = certs.first().ok_or(IdentityError::NoClientCertificate)?;
    principal_from_der(leaf)
}

/// Makes sure rustls has a process-wide crypto provider.
///
/// tonic's server side builds its rustls config with `ServerConfig::builder()`, which uses
/// the process default provider. rustls picks that default by itself only when exactly one
/// of its `ring` / `aws-lc-rs` features is compiled in, and panics when both are (as
/// happens as soon as any crate in the build enables rustls' default features). So ring,
/// the provider this workspace names, is installed once here, before tonic needs it. If
/// the application has already installed a provider, that one stays.
pub(crate) fn ensure_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means a provider is already installed, which is all that is needed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
