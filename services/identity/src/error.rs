//! Identity errors.
//!
//! Messages name files and what was wrong, never key material or certificate contents:
//! they end up in logs and in `Status` messages sent to callers.

use std::path::PathBuf;

/// Why an identity operation failed.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading, writing or locking a file failed.
    #[error("I/O error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Generating or signing a certificate or key failed (for example a host name that is
    /// not a valid DNS name).
    #[error("certificate generation failed")]
    Certificate(#[source] rcgen::Error),
    /// A certificate or key could not be parsed; `what` says which one.
    #[error("invalid {what}")]
    Invalid { what: &'static str },
    /// The CA certificate is not a CA (no `basicConstraints` with `cA` set).
    #[error("the CA certificate is not a certificate authority")]
    NotACa,
    /// The CA private key does not belong to the CA certificate.
    #[error("the CA private key does not match the CA certificate")]
    KeyMismatch,
    /// A certificate file exists without its key file. Nothing is regenerated: replacing a
    /// certificate silently would break every party that trusts or holds the old one.
    #[error("{} exists but its key {} is missing", cert.display(), key.display())]
    MissingKey { cert: PathBuf, key: PathBuf },
    /// The TLS connection carries no client certificate.
    #[error("no client certificate")]
    NoClientCertificate,
    /// The certificate has no `urn:hrx:` SAN URI, so it names no principal.
    #[error("the certificate names no hrx principal")]
    NoPrincipal,
    /// The certificate has an `urn:hrx:` SAN URI that is not a known principal form.
    #[error("the certificate names an unknown hrx principal")]
    UnknownPrincipal,
    /// The certificate names more than one hrx principal; refusing to guess which.
    #[error("the certificate names more than one hrx principal")]
    AmbiguousPrincipal,
    /// A PEM file that should hold certificates (or a key) holds none that parse.
    #[error("no certificate or key could be read from {}", .0.display())]
    NoCertificateIn(PathBuf),
    /// No backend CA file is configured and the platform has no trusted roots.
    #[error("no CA file configured and the platform has no trusted root certificates")]
    NoTrustedRoots,
}

impl From<rcgen::Error> for IdentityError {
    fn from(e: rcgen::Error) -> Self {
        IdentityError::Certificate(e)
    }
}
