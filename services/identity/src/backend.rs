//! TLS to the backends hrx connects to (PostgreSQL): the rustls client configuration of
//! a process, and the PostgreSQL connection settings read from a database URL.
//!
//! A database URL takes libpq's TLS parameters, so that the URL an operator gives psql
//! works for hrx too: `postgres://hrx@db:5432/hrx?sslmode=verify-full&sslrootcert=/etc/hrx/db-ca.pem`
//! (`sslcert`/`sslkey` add a client certificate). tokio-postgres knows only `sslmode`
//! `disable|prefer|require`, so [`postgres`] takes these parameters out of the URL first.
//! `sslmode=require`, `verify-ca` and `verify-full` all mean TLS with the server's
//! certificate verified in full (libpq's `require` verifies nothing; hrx never sends a
//! patient's records to a server it has not authenticated). Without one of them, or with
//! `disable`, `allow` or `prefer`, the connection is plain TCP: a loopback or mesh-secured
//! database, as before.
//!
//! The server's certificate is always verified, chain and host name (what libpq calls
//! `sslmode=verify-full`): against the CA certificates in the configured file when one
//! is given (a private CA, as in the test environment), else against the platform's
//! trusted roots (a managed database whose certificate a public CA issued). A client
//! certificate is presented only when one is configured (PostgreSQL's `cert`
//! authentication); passwords over TLS need none.
//!
//! Kafka is not here: librdkafka has its own TLS stack (OpenSSL) and reads the same
//! files itself, through its `ssl.*` properties.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::IdentityError;

/// A parsed database URL and the TLS connector to reach it with.
///
/// When the URL asks for no TLS, the connector is never used: the configuration's
/// `ssl_mode` is `Disable`.
pub fn postgres(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), IdentityError> {
    let (rest, params) = take_tls_params(url)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|_| IdentityError::Invalid {
        what: "database URL",
    })?;
    let tls = BackendTls {
        ca_file: params
            .root_cert
            .filter(|p| p != "system")
            .map(PathBuf::from),
        client_identity: match (params.cert, params.key) {
            (Some(c), Some(k)) => Some((c.into(), k.into())),
            (None, None) => None,
            _ => {
                return Err(IdentityError::Invalid {
                    what: "database URL: sslcert and sslkey go together",
                });
            }
        },
    };
    let verify = match params.mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => false,
        Some("require" | "verify-ca" | "verify-full") => true,
        Some(_) => {
            return Err(IdentityError::Invalid {
                what: "database URL: sslmode (disable, prefer, require, verify-ca, verify-full)",
            });
        }
    };
    if !verify {
        if tls != BackendTls::default() {
            return Err(IdentityError::Invalid {
                what: "database URL: sslrootcert, sslcert and sslkey need sslmode=verify-full",
            });
        }
        config.ssl_mode(SslMode::Disable);
        // The connector exists for the type's sake; with `Disable` it is never asked.
        let unused = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        return Ok((config, MakeRustlsConnect::new(unused)));
    }
    config.ssl_mode(SslMode::Require);
    Ok((config, MakeRustlsConnect::new(tls.client_config()?)))
}

/// The stream of a PostgreSQL connection made with [`postgres`]'s connector.
pub type PostgresTlsStream =
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// Why [`connect_postgres`] failed.
#[derive(thiserror::Error, Debug)]
pub enum PostgresConnectError {
    #[error(transparent)]
    Url(#[from] IdentityError),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] tokio_postgres::Error),
}

/// One connection to the database at `url`, TLS as the URL says; the caller spawns the
/// returned connection. For tools and tests: services pool their connections.
pub async fn connect_postgres(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, PostgresTlsStream>,
    ),
    PostgresConnectError,
> {
    let (config, tls) = postgres(url)?;
    Ok(config.connect(tls).await?)
}

/// The database URL `url` with the database `name` instead of its own, in either form
/// (URL or key=value), its parameters kept: how tests and tools make a scratch
/// database's URL from a server's.
pub fn postgres_url_with_dbname(url: &str, name: &str) -> String {
    let scheme = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|s| url.starts_with(s));
    let Some(scheme) = scheme else {
        // Key-value form: a later key overrides an earlier one.
        return format!("{url} dbname={name}");
    };
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let host_end = base[scheme.len()..]
        .find('/')
        .map(|i| scheme.len() + i)
        .unwrap_or(base.len());
    format!("{}/{name}{query}", &base[..host_end])
}

/// libpq's TLS parameters of a URL.
#[derive(Default)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// Splits the TLS parameters off a `postgres://` URL; the key=value form is left to
/// tokio-postgres whole (which knows `sslmode` only).
fn take_tls_params(url: &str) -> Result<(String, TlsParams), IdentityError> {
    let mut params = TlsParams::default();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        if !is_url {
            // tokio-postgres refuses `sslmode=verify-full`; read it here too.
            let mut kept = Vec::new();
            for part in url.split_whitespace() {
                match part.split_once('=') {
                    Some(("sslmode", v)) => params.mode = Some(v.to_owned()),
                    _ => kept.push(part),
                }
            }
            if params.mode.is_some() {
                return Ok((kept.join(" "), params));
            }
        }
        return Ok((url.to_owned(), params));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| IdentityError::Invalid {
                    what: "database URL: a TLS parameter is not UTF-8",
                })
        };
        match k {
            "sslmode" => params.mode = Some(value()?),
            "sslrootcert" => params.root_cert = Some(value()?),
            "sslcert" => params.cert = Some(value()?),
            "sslkey" => params.key = Some(value()?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, params))
}

/// Where a backend client's trust and identity come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendTls {
    /// PEM file of the CA certificates that may sign the server's certificate; `None`:
    /// the platform's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain and PEM private key to present, if the server asks for one.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

impl BackendTls {
    /// The rustls client configuration: TLS 1.2 and 1.3 with ring, full verification of
    /// the server.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, IdentityError> {
        crate::tls::ensure_crypto_provider();
        let roots = match &self.ca_file {
            Some(path) => roots_from_file(path)?,
            None => native_roots()?,
        };
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        match &self.client_identity {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|_| IdentityError::Invalid {
                        what: "backend client certificate or key (do they belong together?)",
                    })
            }
        }
    }
}

fn roots_from_file(path: &Path) -> Result<rustls::RootCertStore, IdentityError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|_| IdentityError::Invalid {
            what: "CA certificate in the backend CA file",
        })?;
    }
    Ok(roots)
}

fn native_roots() -> Result<rustls::RootCertStore, IdentityError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    // Unparsable platform certificates are skipped, as every TLS client does.
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(IdentityError::NoTrustedRoots);
    }
    Ok(roots)
}

/// Every certificate of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(IdentityError::NoCertificateIn(path.to_owned()));
    }
    Ok(certs)
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> IdentityError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => IdentityError::Io {
            path: path.to_owned(),
            source,
        },
        _ => IdentityError::NoCertificateIn(path.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CertificateAuthority;

    #[test]
    fn scratch_database_urls_keep_their_parameters() {
        assert_eq!(
            postgres_url_with_dbname("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            postgres_url_with_dbname(
                "postgresql://u:p@h:1/db?sslmode=verify-full&sslrootcert=/tmp/a/ca.pem",
                "t"
            ),
            "postgresql://u:p@h:1/t?sslmode=verify-full&sslrootcert=/tmp/a/ca.pem"
        );
        assert_eq!(
            postgres_url_with_dbname("postgres://u@h", "t"),
            "postgres://u@h/t"
        );
        assert_eq!(
            postgres_url_with_dbname("host=h user=u dbname=postgres", "t"),
            "host=h user=u dbname=postgres dbname=t"
        );
    }

    #[test]
    fn database_urls_take_libpq_tls_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let ca_file = dir.path().join("c a.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let encoded = ca_file.display().to_string().replace(' ', "%20");

        let url = format!(
            "postgres://u@127.0.0.1:5433/db?application_name=x&sslmode=verify-full&sslrootcert={encoded}"
        );
        let (config, _) = postgres(&url).unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert_eq!(config.get_application_name(), Some("x"));
        assert_eq!(config.get_dbname(), Some("db"));

        let (plain, _) = postgres("postgres://u@127.0.0.1/db").unwrap();
        assert_eq!(plain.get_ssl_mode(), SslMode::Disable);
        let (kv, _) = postgres("host=127.0.0.1 dbname=db sslmode=prefer").unwrap();
        assert_eq!(kv.get_ssl_mode(), SslMode::Disable);

        for bad in [
            "postgres://u@h/db?sslmode=sometimes".to_owned(),
            format!("postgres://u@h/db?sslrootcert={encoded}"),
            format!("postgres://u@h/db?sslmode=require&sslcert={encoded}"),
            "postgres://u@h/db?sslmode=require&sslrootcert=/nonexistent.pem".to_owned(),
        ] {
            assert!(postgres(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_file_is_the_only_trust() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.cert_pem()).unwrap();
        let tls = BackendTls {
            ca_file: Some(path.clone()),
            client_identity: None,
        };
        tls.client_config().unwrap();

        std::fs::write(&path, "not a certificate").unwrap();
        assert!(matches!(
            tls.client_config(),
            Err(IdentityError::NoCertificateIn(_))
        ));
        let missing = BackendTls {
            ca_file: Some(dir.path().join("missing.pem")),
            client_identity: None,
        };
        assert!(matches!(
            missing.client_config(),
            Err(IdentityError::Io { .. })
        ));
    }

    #[test]
    fn a_client_identity_must_match_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let a = ca.issue_server(&["localhost"]).unwrap();
        let b = ca.issue_server(&["localhost"]).unwrap();
        let write = |name: &str, s: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, s).unwrap();
            p
        };
        let ca_file = Some(write("ca.pem", ca.cert_pem()));
        let good = BackendTls {
            ca_file: ca_file.clone(),
            client_identity: Some((write("a.pem", &a.cert_pem), write("a.key", &a.key_pem))),
        };
        good.client_config().unwrap();
        let crossed = BackendTls {
            ca_file,
            client_identity: Some((dir.path().join("a.pem"), write("b.key", &b.key_pem))),
        };
        assert!(matches!(
            crossed.client_config(),
            Err(IdentityError::Invalid { .. })
        ));
    }
}
