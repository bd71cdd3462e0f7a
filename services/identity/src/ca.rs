//! A certificate authority that issues the exchange's server certificate and the client
//! certificates that identify callers.
//!
//! Keys are ECDSA P-256: rustls with ring verifies it everywhere (as a CA signature, and
//! as a TLS 1.2 and 1.3 handshake signature), which Ed25519 does not guarantee across
//! clients. The development CA made by [`CertificateAuthority::generate`] is the embedded
//! node's default; a production deployment brings its own CA through
//! [`CertificateAuthority::from_pem`], or issues certificates elsewhere entirely.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, string::Ia5String,
};
use time::{Duration, OffsetDateTime};
use tonic::transport::CertificateDer;

use crate::error::IdentityError;
use crate::principal::Principal;

/// How long a generated CA is valid. Long, because the embedded node never regenerates
/// its CA (doing so would invalidate every certificate handed out).
const CA_VALIDITY: Duration = Duration::days(20 * 365);
/// How long a client certificate is valid (never beyond the CA's own expiry). Short, so
/// that a certificate lost without anyone noticing stops working by itself; holders
/// renew it when a third of its life is left ([`crate::dir::TlsDir`] does so when it
/// hands one out), and a revocation (`CertificateRevoked`) takes one back at once.
pub const CLIENT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// How long a server certificate is valid: renewed at start-up when a third is left.
pub const SERVER_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);
/// Certificates start to be valid a little in the past, so that a peer whose clock is
/// slightly behind does not reject a certificate issued a moment ago.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertifiedKey {
    // The private key must never reach a log; the certificate is public but long, so
    // only its size is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

/// The exchange's certificate authority: its certificate and signing key.
pub struct CertificateAuthority {
    cert_pem: String,
    /// The CA's subject name and key, as rcgen needs them to sign.
    issuer: Issuer<'static, KeyPair>,
    /// Issued certificates do not outlive the CA.
    not_after: OffsetDateTime,
}

impl fmt::Debug for CertificateAuthority {
    // rcgen's `Issuer` already elides its key; `cert_pem` is public but long.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("not_after", &self.not_after)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl CertificateAuthority {
    /// Generates a self-signed CA with a new ECDSA P-256 key.
    pub fn generate(common_name: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        // pathlen 0: this CA issues end-entity certificates only, never other CAs.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let not_after = params.not_after;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            not_after,
        })
    }

    /// Loads a CA from its PEM certificate and PEM (PKCS#8) private key, checking that the
    /// certificate is a CA and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let invalid_pem = || IdentityError::Invalid {
            what: "CA certificate PEM",
        };
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|_| invalid_pem())?;
        if pem.label != "CERTIFICATE" {
            return Err(invalid_pem());
        }
        let cert = pem.parse_x509().map_err(|_| IdentityError::Invalid {
            what: "CA certificate",
        })?;
        if !cert.is_ca() {
            return Err(IdentityError::NotACa);
        }
        let key = KeyPair::from_pem(key_pem).map_err(|_| IdentityError::Invalid {
            what: "CA private key",
        })?;
        // Compare the raw public keys rather than the SubjectPublicKeyInfo encodings, which
        // may legitimately differ in how algorithm parameters are written.
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(IdentityError::KeyMismatch);
        }
        let not_after = cert.validity().not_after.to_datetime();
        // rcgen takes the issuer name from the certificate as encoded, so issued
        // certificates' issuer field matches the CA's subject byte for byte, which is how
        // verifiers link a certificate to its CA.
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(pem.contents.as_slice()), key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            issuer,
            not_after,
        })
    }

    /// The CA certificate, PEM. This is what servers and clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (PKCS#8). A secret: store it with owner-only permissions.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a server certificate for the given host names and IP addresses (each entry
    /// that parses as an IP address becomes an IP SAN, any other a DNS SAN).
    pub fn issue_server(&self, hosts: &[&str]) -> Result<CertifiedKey, IdentityError> {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name = common_name_dn("hrx exchange");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, SERVER_VALIDITY)
    }

    /// Issues a client certificate that identifies `principal`. Its only extended key usage
    /// is client authentication, so it cannot pose as a server.
    pub fn issue_client(&self, principal: &Principal) -> Result<CertifiedKey, IdentityError> {
        self.issue_client_valid_for(principal, CLIENT_VALIDITY)
    }

    /// [`Self::issue_client`] with another validity (tests of expiry; a deployment's own
    /// policy).
    pub fn issue_client_valid_for(
        &self,
        principal: &Principal,
        validity: std::time::Duration,
    ) -> Result<CertifiedKey, IdentityError> {
        let uri = principal.uri();
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(&uri);
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(uri)?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, validity)
    }

    /// Signs an end-entity certificate for a new key, valid from a little before now
    /// (clock skew) for `validity`. Every certificate gets a new key, and rcgen derives
    /// the serial from it (20 bytes of its SHA-256), so a renewed certificate has a new
    /// serial and revoking one serial takes back one certificate.
    fn issue(
        &self,
        mut params: CertificateParams,
        validity: std::time::Duration,
    ) -> Result<CertifiedKey, IdentityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let validity = Duration::try_from(validity).unwrap_or(CA_VALIDITY);
        params.not_before = now - CLOCK_SKEW;
        params.not_after = (now + validity).min(self.not_after);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}
