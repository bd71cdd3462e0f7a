//! The `tls/` directory of a node's data directory.
//!
//! ```text
//! tls/ca.pem                      development CA certificate (what clients trust)
//! tls/ca.key.pem                  its private key (0600)
//! tls/server.pem                  server certificate: localhost, 127.0.0.1, ::1
//! tls/server.key.pem              (0600)
//! tls/national-center.pem         client certificate of the national center
//! tls/national-center.key.pem     (0600)
//! tls/facilities/<id>.pem         client certificate of facility <id>, issued on demand
//! tls/facilities/<id>.key.pem     (0600)
//! ```
//!
//! Existing files are not regenerated, with one exception: a server or client
//! certificate with less than a third of its life left is renewed (a new key and
//! certificate) when it is next handed out, so short-lived certificates
//! ([`crate::ca::CLIENT_VALIDITY`]) keep working; the old one stays valid until it
//! expires or is revoked. The CA is never regenerated (that would invalidate every
//! certificate handed out). Every change happens under an exclusive lock on `tls/.lock` (so a CLI
//! issuing a facility certificate and a starting server cannot interleave), each file is
//! written to a temporary name and renamed into place (no torn files), and a key is
//! written before its certificate, so a certificate on disk always has its key. A key
//! without a certificate is what an interrupted run leaves behind; it was never used and
//! is replaced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use hrx_domain::FacilityId;

use crate::ca::{CertificateAuthority, CertifiedKey};
use crate::error::IdentityError;
use crate::principal::Principal;

/// Names the embedded node's server certificate covers: it listens locally by default.
const SERVER_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1"];
const CA_COMMON_NAME: &str = "hrx development CA";

/// A node's `tls/` directory, with its CA loaded.
#[derive(Debug)]
pub struct TlsDir {
    dir: PathBuf,
    ca: CertificateAuthority,
    server: CertifiedKey,
}

/// What a server process needs, and only that: the CA certificate to verify clients
/// with, and its own certificate and key. Production deployments mount these three files
/// (`ca.pem`, `server.pem`, `server.key.pem`) from a secret; the CA's private key never
/// reaches a server.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    pub ca_cert_pem: String,
    pub server: CertifiedKey,
}

impl ServerIdentity {
    /// Reads `ca.pem`, `server.pem` and `server.key.pem` from `tls_dir`.
    pub fn load(tls_dir: &Path) -> Result<Self, IdentityError> {
        let ca = tls_dir.join("ca.pem");
        let ca_cert_pem = fs::read_to_string(&ca).map_err(io_error(&ca))?;
        let server = load_pair(&tls_dir.join("server.pem"), &tls_dir.join("server.key.pem"))?
            .ok_or(IdentityError::Invalid {
                what: "server.pem is missing from the TLS directory",
            })?;
        Ok(Self {
            ca_cert_pem,
            server,
        })
    }
}

impl TlsDir {
    /// The server's part of this directory.
    pub fn server_identity(&self) -> ServerIdentity {
        ServerIdentity {
            ca_cert_pem: self.ca_cert_pem().to_owned(),
            server: self.server.clone(),
        }
    }

    /// Opens `<data_dir>/tls`. On first use it creates the development CA, a server
    /// certificate for `localhost`, `127.0.0.1` and `::1`, and the national center's client
    /// certificate; later calls load what is there and generate only what is missing.
    pub fn open_or_init(data_dir: &Path) -> Result<Self, IdentityError> {
        let dir = data_dir.join("tls");
        create_private_dir(&dir)?;
        let _lock = lock(&dir)?;

        let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key.pem"));
        let ca = match load_pair(&ca_cert, &ca_key)? {
            Some(pair) => CertificateAuthority::from_pem(&pair.cert_pem, &pair.key_pem)?,
            None => {
                let ca = CertificateAuthority::generate(CA_COMMON_NAME)?;
                store_pair(
                    &ca_cert,
                    &ca_key,
                    &CertifiedKey {
                        cert_pem: ca.cert_pem().to_owned(),
                        key_pem: ca.key_pem(),
                    },
                )?;
                ca
            }
        };

        let (server_cert, server_key) = (dir.join("server.pem"), dir.join("server.key.pem"));
        let server = load_or_issue(&server_cert, &server_key, Renew::WhenDue, || {
            ca.issue_server(SERVER_HOSTS)
        })?;

        let (nc_cert, nc_key) = national_center_paths(&dir);
        load_or_issue(&nc_cert, &nc_key, Renew::WhenDue, || {
            ca.issue_client(&Principal::NationalCenter)
        })?;

        Ok(Self { dir, ca, server })
    }

    /// The `tls/` directory itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate, PEM: what servers and clients of this node trust.
    pub fn ca_cert_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The CA, to issue further certificates.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The node's server certificate and key.
    pub fn server(&self) -> &CertifiedKey {
        &self.server
    }

    /// The national center's client certificate and key (reissued only if its files have
    /// been deleted).
    pub fn national_center(&self) -> Result<CertifiedKey, IdentityError> {
        let _lock = lock(&self.dir)?;
        let (cert, key) = national_center_paths(&self.dir);
        load_or_issue(&cert, &key, Renew::WhenDue, || {
            self.ca.issue_client(&Principal::NationalCenter)
        })
    }

    /// Where the national center's certificate and key are (certificate, key).
    pub fn national_center_paths(&self) -> (PathBuf, PathBuf) {
        national_center_paths(&self.dir)
    }

    /// The client certificate and key of facility `id`: the existing ones, or newly issued
    /// and stored under `tls/facilities/`.
    pub fn facility(&self, id: &FacilityId) -> Result<CertifiedKey, IdentityError> {
        let _lock = lock(&self.dir)?;
        create_private_dir(&self.dir.join("facilities"))?;
        let (cert, key) = self.facility_paths(id);
        load_or_issue(&cert, &key, Renew::WhenDue, || {
            self.ca.issue_client(&Principal::Facility(id.clone()))
        })
    }

    /// Issues facility `id` a new certificate and key now, replacing the files (`hrx
    /// registry cert renew`); the one it replaces stays valid until it expires or is
    /// revoked.
    pub fn renew_facility(&self, id: &FacilityId) -> Result<CertifiedKey, IdentityError> {
        let _lock = lock(&self.dir)?;
        create_private_dir(&self.dir.join("facilities"))?;
        let (cert, key) = self.facility_paths(id);
        load_or_issue(&cert, &key, Renew::Now, || {
            self.ca.issue_client(&Principal::Facility(id.clone()))
        })
    }

    /// Where facility `id`'s certificate and key are (certificate, key), whether or not
    /// they have been issued yet.
    pub fn facility_paths(&self, id: &FacilityId) -> (PathBuf, PathBuf) {
        let dir = self.dir.join("facilities");
        (
            dir.join(format!("{id}.pem")),
            dir.join(format!("{id}.key.pem")),
        )
    }
}

fn national_center_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (
        dir.join("national-center.pem"),
        dir.join("national-center.key.pem"),
    )
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and its parents) if missing; `dir` itself gets owner-only permissions
/// because it holds private keys. An existing directory's permissions are left alone.
fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other.map_err(io_error(dir)),
    }
}

/// Takes the directory's exclusive lock; it is released when the returned file is dropped
/// (or the process exits, so a crash cannot leave a stale lock).
fn lock(dir: &Path) -> Result<File, IdentityError> {
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    file.lock().map_err(io_error(&path))?;
    Ok(file)
}

/// Reads a certificate and its key. `None` if the certificate does not exist.
fn load_pair(cert: &Path, key: &Path) -> Result<Option<CertifiedKey>, IdentityError> {
    let cert_pem = match fs::read_to_string(cert) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(cert)(e)),
    };
    let key_pem = match fs::read_to_string(key) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(IdentityError::MissingKey {
                cert: cert.to_owned(),
                key: key.to_owned(),
            });
        }
        Err(e) => return Err(io_error(key)(e)),
    };
    Ok(Some(CertifiedKey { cert_pem, key_pem }))
}

/// Whether [`load_or_issue`] replaces a certificate that exists.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Renew {
    /// When less than a third of its validity is left.
    WhenDue,
    Now,
}

/// Whether less than a third of the certificate's validity is left. A certificate that
/// does not parse is left for its user to fail on, loudly.
fn renewal_due(cert_pem: &str) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let (from, until) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    until - now < (until - from) / 3
}

/// Loads a certificate and key, or issues and stores them if the certificate is missing
/// (or `renew` says it is to be replaced). Call with the directory lock held.
fn load_or_issue(
    cert: &Path,
    key: &Path,
    renew: Renew,
    issue: impl FnOnce() -> Result<CertifiedKey, IdentityError>,
) -> Result<CertifiedKey, IdentityError> {
    if let Some(pair) = load_pair(cert, key)?
        && renew == Renew::WhenDue
        && !renewal_due(&pair.cert_pem)
    {
        return Ok(pair);
    }
    let pair = issue()?;
    store_pair(cert, key, &pair)?;
    Ok(pair)
}

/// Writes the key (owner-only) and then the certificate, so that a certificate on disk
/// always has its key.
fn store_pair(cert: &Path, key: &Path, pair: &CertifiedKey) -> Result<(), IdentityError> {
    write_file(key, &pair.key_pem, true)?;
    write_file(cert, &pair.cert_pem, false)?;
    // Make the renames durable, so that a crash cannot lose a certificate that has
    // already been handed out.
    #[cfg(unix)]
    if let Some(dir) = cert.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))?;
    }
    Ok(())
}

/// Writes `contents` to `path` via a temporary file and a rename. A secret file is
/// created with mode 0600 from the start, never world-readable even for a moment.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), IdentityError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    // A leftover from an interrupted run may have other permissions; `create_new` below
    // sets them only on creation, so start from nothing.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error(&tmp)(e)),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if secret { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&tmp).map_err(io_error(&tmp))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_error(path))
}
