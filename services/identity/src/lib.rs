//! Who is calling the exchange, and how they prove it.
//!
//! Every gRPC call to hrx is made over mutual TLS. The caller's identity, a [`Principal`]
//! (a facility, or the National Center for Medical Information), is carried in its client
//! certificate as a SAN URI (`urn:hrx:facility:26012`, `urn:hrx:national-center`), and
//! the server reads it back with [`caller`] once rustls has verified the chain.
//!
//! - [`principal`]: the principal and its certificate encoding.
//! - [`ca`]: a certificate authority that issues server and client certificates.
//! - [`tls`]: tonic TLS configurations (client authentication is mandatory) and [`caller`].
//! - [`backend`]: the rustls client configuration for the backends (PostgreSQL).
//! - [`dir`]: the `tls/` directory of a node's data directory. On first use it creates a
//!   development CA and certificates, so that the embedded node is secure by default and
//!   still needs no configuration.

pub mod backend;
pub mod ca;
pub mod dir;
pub mod error;
pub mod principal;
pub mod tls;

pub use backend::BackendTls;
pub use ca::{CertificateAuthority, CertifiedKey};
pub use dir::{ServerIdentity, TlsDir};
pub use error::IdentityError;
pub use principal::{
    CertificateFacts, Principal, certificate_facts, certificate_from_pem, principal_from_der,
};
pub use tls::{
    anonymous_client_tls, caller, client_tls, server_tls, server_tls_without_client_auth,
};
