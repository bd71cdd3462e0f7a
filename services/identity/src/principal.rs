//! The principal (who is calling) and its encoding in a certificate.
//!
//! The principal is a SAN URI rather than the subject CN because SANs are structured and
//! typed (a URI cannot be confused with a DNS name), and because the CN is free text that
//! CAs routinely fill in for humans. The CN carries the same text, but only for people
//! reading certificates: it is never consulted.

use std::fmt;

use hrx_domain::FacilityId;
use hrx_domain::event::CertificateSerial;
use x509_parser::extensions::GeneralName;

use crate::error::IdentityError;

/// Every hrx principal URI starts with this; other URIs in a certificate are ignored.
pub const URI_PREFIX: &str = "urn:hrx:";
/// A facility's URI is this prefix followed by its 5-digit code.
pub const FACILITY_URI_PREFIX: &str = "urn:hrx:facility:";
/// The National Center for Medical Information.
pub const NATIONAL_CENTER_URI: &str = "urn:hrx:national-center";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A health facility, by its 5-digit code.
    Facility(FacilityId),
    /// The National Center for Medical Information.
    NationalCenter,
}

impl Principal {
    /// The SAN URI that names this principal in a certificate.
    pub fn uri(&self) -> String {
        match self {
            Principal::Facility(id) => format!("{FACILITY_URI_PREFIX}{id}"),
            Principal::NationalCenter => NATIONAL_CENTER_URI.to_owned(),
        }
    }

    /// Parses a principal URI. Anything that is not exactly one of the two forms is
    /// [`IdentityError::UnknownPrincipal`] (case and surrounding text matter: an
    /// identity is compared, not interpreted).
    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        if uri == NATIONAL_CENTER_URI {
            return Ok(Principal::NationalCenter);
        }
        uri.strip_prefix(FACILITY_URI_PREFIX)
            .and_then(|code| FacilityId::parse(code).ok())
            .map(Principal::Facility)
            .ok_or(IdentityError::UnknownPrincipal)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Facility(id) => write!(f, "facility {id}"),
            Principal::NationalCenter => f.write_str("national center"),
        }
    }
}

/// Reads the principal from a DER certificate: its single `urn:hrx:` SAN URI.
///
/// This does not verify the certificate; it is meant for a certificate that rustls has
/// already verified against the exchange's CA.
pub fn principal_from_der(cert_der: &[u8]) -> Result<Principal, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|_| IdentityError::Invalid {
            what: "certificate",
        })?;
    // A malformed or duplicated SAN extension is an invalid certificate, not "no SAN".
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Invalid {
            what: "certificate subject alternative names",
        })?
        .ok_or(IdentityError::NoPrincipal)?;
    let mut hrx_uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some(*uri),
            _ => None,
        });
    let uri = hrx_uris.next().ok_or(IdentityError::NoPrincipal)?;
    if hrx_uris.next().is_some() {
        return Err(IdentityError::AmbiguousPrincipal);
    }
    Principal::from_uri(uri)
}

/// What the exchange checks of a client certificate on every call, beyond what rustls
/// checked at the handshake: its serial (against the revoked ones) and its end of
/// validity (a connection opened before it may outlive it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    pub serial: CertificateSerial,
    /// `notAfter`, in Unix seconds.
    pub not_after_unix: i64,
}

/// Reads [`CertificateFacts`] from a DER certificate (not verified here: see
/// [`principal_from_der`]).
pub fn certificate_facts(cert_der: &[u8]) -> Result<CertificateFacts, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|_| IdentityError::Invalid {
            what: "certificate",
        })?;
    let serial =
        CertificateSerial::from_bytes(cert.raw_serial()).ok_or(IdentityError::Invalid {
            what: "certificate serial number",
        })?;
    Ok(CertificateFacts {
        serial,
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// The facts and the principal of the first certificate of a PEM file's text (what
/// `hrx registry cert revoke --cert` reads).
pub fn certificate_from_pem(
    pem: &str,
) -> Result<(CertificateFacts, Result<Principal, IdentityError>), IdentityError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| IdentityError::Invalid {
            what: "certificate PEM",
        })?;
    if pem.label != "CERTIFICATE" {
        return Err(IdentityError::Invalid {
            what: "certificate PEM",
        });
    }
    Ok((
        certificate_facts(&pem.contents)?,
        principal_from_der(&pem.contents),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facility(code: &str) -> Principal {
        Principal::Facility(FacilityId::parse(code).unwrap())
    }

    #[test]
    fn uri_round_trip() {
        for p in [facility("26012"), Principal::NationalCenter] {
            assert_eq!(Principal::from_uri(&p.uri()).unwrap(), p);
        }
        assert_eq!(facility("26012").uri(), "urn:hrx:facility:26012");
        assert_eq!(Principal::NationalCenter.uri(), "urn:hrx:national-center");
    }

    #[test]
    fn display() {
        assert_eq!(facility("26012").to_string(), "facility 26012");
        assert_eq!(Principal::NationalCenter.to_string(), "national center");
    }

    #[test]
    fn rejects_malformed_uris() {
        for uri in [
            "urn:hrx:facility:2601",
            "urn:hrx:facility:260123",
            "urn:hrx:facility:2601a",
            "urn:hrx:facility:",
            "urn:hrx:facility:26012/x",
            "URN:HRX:FACILITY:26012",
            "urn:hrx:national-center ",
            "urn:hrx:national-centre",
            "urn:hrx:",
        ] {
            assert!(
                matches!(
                    Principal::from_uri(uri),
                    Err(IdentityError::UnknownPrincipal)
                ),
                "{uri}"
            );
        }
    }
}
