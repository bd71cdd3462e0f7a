//! The data directory's `tls/` layout: created once, never regenerated, keys private.

use std::fs;
use std::path::Path;

use hrx_domain::FacilityId;
use hrx_identity::{CertificateAuthority, IdentityError, Principal, TlsDir, principal_from_der};

fn der(cert_pem: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
    pem.contents
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn open_or_init_is_idempotent() {
    let data = tempfile::tempdir().unwrap();
    let first = TlsDir::open_or_init(data.path()).unwrap();
    let facility = FacilityId::parse("26012").unwrap();
    let f1 = first.facility(&facility).unwrap();
    let nc1 = first.national_center().unwrap();

    let second = TlsDir::open_or_init(data.path()).unwrap();
    assert_eq!(second.ca_cert_pem(), first.ca_cert_pem());
    assert_eq!(second.ca().key_pem(), first.ca().key_pem());
    assert_eq!(second.server(), first.server());
    assert_eq!(second.national_center().unwrap(), nc1);
    assert_eq!(second.facility(&facility).unwrap(), f1);

    let tls = data.path().join("tls");
    for file in [
        "ca.pem",
        "ca.key.pem",
        "server.pem",
        "server.key.pem",
        "national-center.pem",
        "national-center.key.pem",
        "facilities/26012.pem",
        "facilities/26012.key.pem",
    ] {
        assert!(tls.join(file).is_file(), "{file}");
    }
    let (cert, key) = second.facility_paths(&facility);
    assert_eq!(cert, tls.join("facilities/26012.pem"));
    assert_eq!(key, tls.join("facilities/26012.key.pem"));
    assert_eq!(fs::read_to_string(cert).unwrap(), f1.cert_pem);
}

#[cfg(unix)]
#[test]
fn key_files_are_private() {
    let data = tempfile::tempdir().unwrap();
    let tls = TlsDir::open_or_init(data.path()).unwrap();
    tls.facility(&FacilityId::parse("26012").unwrap()).unwrap();
    let dir = data.path().join("tls");
    assert_eq!(mode(&dir), 0o700);
    for key in [
        "ca.key.pem",
        "server.key.pem",
        "national-center.key.pem",
        "facilities/26012.key.pem",
    ] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&dir.join("facilities")), 0o700);
}

#[test]
fn issued_certificates_name_their_principals() {
    let data = tempfile::tempdir().unwrap();
    let tls = TlsDir::open_or_init(data.path()).unwrap();
    let id = FacilityId::parse("26012").unwrap();
    let f = tls.facility(&id).unwrap();
    assert_eq!(
        principal_from_der(&der(&f.cert_pem)).unwrap(),
        Principal::Facility(id)
    );
    let nc = tls.national_center().unwrap();
    assert_eq!(
        principal_from_der(&der(&nc.cert_pem)).unwrap(),
        Principal::NationalCenter
    );
}

#[test]
fn deleted_leaf_is_reissued_but_the_ca_is_kept() {
    let data = tempfile::tempdir().unwrap();
    let first = TlsDir::open_or_init(data.path()).unwrap();
    let nc = first.national_center().unwrap();
    let (cert, key) = first.national_center_paths();
    fs::remove_file(&cert).unwrap();
    fs::remove_file(&key).unwrap();
    let second = TlsDir::open_or_init(data.path()).unwrap();
    assert_eq!(second.ca_cert_pem(), first.ca_cert_pem());
    assert_ne!(second.national_center().unwrap(), nc);
}

#[test]
fn certificate_without_key_is_an_error_not_a_regeneration() {
    let data = tempfile::tempdir().unwrap();
    let first = TlsDir::open_or_init(data.path()).unwrap();
    let ca_pem = first.ca_cert_pem().to_owned();
    fs::remove_file(data.path().join("tls/ca.key.pem")).unwrap();
    let err = TlsDir::open_or_init(data.path()).unwrap_err();
    assert!(matches!(err, IdentityError::MissingKey { .. }), "{err}");
    assert_eq!(
        fs::read_to_string(data.path().join("tls/ca.pem")).unwrap(),
        ca_pem
    );
}

#[test]
fn ca_round_trips_through_pem_and_checks_its_key() {
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let loaded = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(loaded.cert_pem(), ca.cert_pem());

    let other = CertificateAuthority::generate("test CA").unwrap();
    assert!(matches!(
        CertificateAuthority::from_pem(ca.cert_pem(), &other.key_pem()),
        Err(IdentityError::KeyMismatch)
    ));
    // A leaf certificate is not a CA.
    let leaf = ca.issue_client(&Principal::NationalCenter).unwrap();
    assert!(matches!(
        CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem),
        Err(IdentityError::NotACa)
    ));
    assert!(matches!(
        CertificateAuthority::from_pem("not a certificate", &ca.key_pem()),
        Err(IdentityError::Invalid { .. })
    ));
}

#[test]
fn debug_output_hides_private_keys() {
    let data = tempfile::tempdir().unwrap();
    let tls = TlsDir::open_or_init(data.path()).unwrap();
    let nc = tls.national_center().unwrap();
    let shown = format!("{tls:?} {nc:?} {:?}", tls.ca());
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(
        !shown.contains(nc.key_pem.lines().nth(1).unwrap()),
        "{shown}"
    );
}

#[test]
fn principal_from_der_rejects_certificates_without_an_hrx_principal() {
    // No SAN at all.
    let key = rcgen::KeyPair::generate().unwrap();
    let bare = rcgen::CertificateParams::default()
        .self_signed(&key)
        .unwrap();
    assert!(matches!(
        principal_from_der(bare.der()),
        Err(IdentityError::NoPrincipal)
    ));

    // SANs, but none of them hrx's (a DNS name and a foreign URI), even with an
    // hrx-looking CN: the CN is never consulted.
    let mut params = rcgen::CertificateParams::new(vec!["example.org".to_owned()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "urn:example:facility:26012".try_into().unwrap(),
    ));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "urn:hrx:facility:26012");
    let foreign = params.self_signed(&key).unwrap();
    assert!(matches!(
        principal_from_der(foreign.der()),
        Err(IdentityError::NoPrincipal)
    ));

    // The server certificate names hosts, not a principal.
    let ca = CertificateAuthority::generate("test CA").unwrap();
    let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    assert!(matches!(
        principal_from_der(&der(&server.cert_pem)),
        Err(IdentityError::NoPrincipal)
    ));

    // A malformed hrx URI, and two principals in one certificate.
    let uri_cert = |uris: &[&str]| {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.self_signed(&key).unwrap()
    };
    assert!(matches!(
        principal_from_der(uri_cert(&["urn:hrx:facility:2601"]).der()),
        Err(IdentityError::UnknownPrincipal)
    ));
    assert!(matches!(
        principal_from_der(uri_cert(&["urn:hrx:facility:26012", "urn:hrx:national-center"]).der()),
        Err(IdentityError::AmbiguousPrincipal)
    ));
    assert!(matches!(
        principal_from_der(b"not DER"),
        Err(IdentityError::Invalid { .. })
    ));
}

#[test]
fn client_certificates_are_short_lived_and_renewed_when_a_third_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsDir::open_or_init(dir.path()).unwrap();
    let id = FacilityId::parse("26012").unwrap();
    let first = tls.facility(&id).unwrap();
    let (facts, _) = hrx_identity::certificate_from_pem(&first.cert_pem).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let days_left = (facts.not_after_unix - now) / 86_400;
    assert!((29..=30).contains(&days_left), "{days_left} days");
    // Plenty left: handed out as it is.
    assert_eq!(tls.facility(&id).unwrap(), first);

    // A certificate with a few seconds left is replaced when next handed out.
    let short = tls
        .ca()
        .issue_client_valid_for(
            &Principal::Facility(id.clone()),
            std::time::Duration::from_secs(5),
        )
        .unwrap();
    let (cert, key) = tls.facility_paths(&id);
    fs::write(&key, &short.key_pem).unwrap();
    fs::write(&cert, &short.cert_pem).unwrap();
    let renewed = tls.facility(&id).unwrap();
    assert_ne!(renewed, short);
    let (renewed_facts, _) = hrx_identity::certificate_from_pem(&renewed.cert_pem).unwrap();
    assert!(renewed_facts.not_after_unix > now + 29 * 86_400);

    // Renewing on demand: a new key and a new serial.
    let again = tls.renew_facility(&id).unwrap();
    let (again_facts, principal) = hrx_identity::certificate_from_pem(&again.cert_pem).unwrap();
    assert_ne!(again_facts.serial, renewed_facts.serial);
    assert_ne!(again.key_pem, renewed.key_pem);
    assert_eq!(principal.unwrap(), Principal::Facility(id));
}
