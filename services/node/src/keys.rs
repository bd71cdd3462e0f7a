//! Private keys on disk: PKCS#8 in PEM, created once with mode 0600, never overwritten.
//!
//! The national root key may be passphrase-protected (encrypted PKCS#8, PBES2 with
//! PBKDF2-HMAC-SHA256 and AES-256-CBC, as `openssl pkey` reads it): it is created so when
//! [`ROOT_PASSPHRASE_VAR`] is set, and only the tools that sign registry changes (the
//! CLI) need the passphrase. A running node needs only the root *public* key, which is
//! kept beside it (`registry/root.pub`, hex) or configured (`HRX_ROOT_PUBLIC_KEY`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use hrx_domain::SigningKey;

const PEM_TAG: &str = "PRIVATE KEY";
const ENCRYPTED_PEM_TAG: &str = "ENCRYPTED PRIVATE KEY";

/// PBKDF2-HMAC-SHA256 iterations for a passphrase-protected key (OWASP's 2023 figure).
const PBKDF2_ITERATIONS: u32 = 600_000;

/// The environment variable holding the national root key's passphrase.
pub use hrx_config::ROOT_PASSPHRASE_VAR;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot create {path} (does it exist already?): {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a PKCS#8 PEM private key")]
    NotAKey { path: PathBuf },
    #[error("{path} is passphrase-protected: set {ROOT_PASSPHRASE_VAR}")]
    NeedsPassphrase { path: PathBuf },
    #[error("{path}: the passphrase does not open it")]
    WrongPassphrase { path: PathBuf },
    #[error("cannot encode the key: {0}")]
    Encrypt(String),
    #[error("{path} does not hold a public key (64 hex digits)")]
    NotAPublicKey { path: PathBuf },
    #[error("cannot generate a key: {0}")]
    Generate(#[from] hrx_domain::dsse::KeyError),
}

/// Creates `dir` and its missing parents, owner-only (0700) on Unix.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates a file that must not exist yet, with `mode` on Unix.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
    let create = |source| KeyFileError::Create {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options.open(path).map_err(create)?;
    f.write_all(bytes).map_err(create)?;
    f.sync_all().map_err(create)
}

/// Writes a PKCS#8 document as PEM, readable by its owner only, in PKCS#8 v1 (the
/// seed alone): ring generates v2 documents, whose public-key field OpenSSL does not
/// read, and every tool reads v1 (ring derives the public key).
pub fn write_private_key(path: &Path, pkcs8: &[u8]) -> Result<(), KeyFileError> {
    let v1 = pkcs8_v1(pkcs8)?;
    write_new(
        path,
        pem::encode(&pem::Pem::new(PEM_TAG, v1)).as_bytes(),
        0o600,
    )
}

/// A PKCS#8 document without its optional public key: version 1.
fn pkcs8_v1(pkcs8: &[u8]) -> Result<Vec<u8>, KeyFileError> {
    use pkcs8::der::Encode as _;
    let mut info =
        pkcs8::PrivateKeyInfo::try_from(pkcs8).map_err(|e| KeyFileError::Encrypt(e.to_string()))?;
    info.public_key = None;
    info.to_der()
        .map_err(|e| KeyFileError::Encrypt(e.to_string()))
}

/// Writes a PKCS#8 document as encrypted PKCS#8 PEM (PBES2: scrypt, AES-256-CBC),
/// readable by its owner only.
pub fn write_encrypted_private_key(
    path: &Path,
    pkcs8: &[u8],
    passphrase: &str,
) -> Result<(), KeyFileError> {
    use rand_core::RngCore as _;
    let mut info =
        pkcs8::PrivateKeyInfo::try_from(pkcs8).map_err(|e| KeyFileError::Encrypt(e.to_string()))?;
    // As PKCS#8 v1 (the seed alone): what every tool reads; ring derives the public key.
    info.public_key = None;
    // PBKDF2-HMAC-SHA256 and AES-256-CBC, OpenSSL's own default for `pkcs8 -topk8 -v2`:
    // the pkcs8 crate's default (scrypt at 32 MiB) exceeds the memory OpenSSL allows
    // scrypt by default, so OpenSSL could not open it.
    let (mut salt, mut iv) = ([0u8; 16], [0u8; 16]);
    rand_core::OsRng.fill_bytes(&mut salt);
    rand_core::OsRng.fill_bytes(&mut iv);
    let params =
        pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, &iv)
            .map_err(|e| KeyFileError::Encrypt(e.to_string()))?;
    let encrypted = info
        .encrypt_with_params(params, passphrase.as_bytes())
        .map_err(|e| KeyFileError::Encrypt(e.to_string()))?;
    write_new(
        path,
        pem::encode(&pem::Pem::new(ENCRYPTED_PEM_TAG, encrypted.as_bytes())).as_bytes(),
        0o600,
    )
}

/// Reads a private key; a passphrase-protected one with the passphrase in
/// [`ROOT_PASSPHRASE_VAR`].
pub fn read_private_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let passphrase = std::env::var(ROOT_PASSPHRASE_VAR).ok();
    read_private_key_with(path, passphrase.as_deref())
}

/// Reads a private key, plain or passphrase-protected.
pub fn read_private_key_with(
    path: &Path,
    passphrase: Option<&str>,
) -> Result<SigningKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let not_a_key = || KeyFileError::NotAKey {
        path: path.to_owned(),
    };
    let pem = pem::parse(text).map_err(|_| not_a_key())?;
    match pem.tag() {
        PEM_TAG => SigningKey::from_pkcs8(pem.contents()).map_err(|_| not_a_key()),
        ENCRYPTED_PEM_TAG => {
            let passphrase = passphrase.ok_or_else(|| KeyFileError::NeedsPassphrase {
                path: path.to_owned(),
            })?;
            let encrypted = pkcs8::EncryptedPrivateKeyInfo::try_from(pem.contents())
                .map_err(|_| not_a_key())?;
            let plain = encrypted.decrypt(passphrase.as_bytes()).map_err(|_| {
                KeyFileError::WrongPassphrase {
                    path: path.to_owned(),
                }
            })?;
            SigningKey::from_pkcs8(plain.as_bytes()).map_err(|_| not_a_key())
        }
        _ => Err(not_a_key()),
    }
}

/// The national root public key of an embedded node's data directory, created with its
/// private key on first use (passphrase-protected when `passphrase` is given). Returns
/// whether it was created. The private key is read only for a data directory from
/// before the public key was kept beside it.
pub fn read_or_create_root(
    data_dir: &Path,
    passphrase: Option<&str>,
) -> Result<(hrx_domain::PublicKey, bool), KeyFileError> {
    let public_path = crate::root_public_key_path(data_dir);
    let private_path = crate::root_key_path(data_dir);
    if public_path.exists() {
        let text = std::fs::read_to_string(&public_path).map_err(|source| KeyFileError::Read {
            path: public_path.clone(),
            source,
        })?;
        let bytes = hex::decode(text.trim()).ok();
        return bytes
            .as_deref()
            .and_then(hrx_domain::PublicKey::from_slice)
            .map(|k| (k, false))
            .ok_or(KeyFileError::NotAPublicKey { path: public_path });
    }
    let created = !private_path.exists();
    if created {
        if let Some(dir) = private_path.parent() {
            create_private_dir(dir).map_err(|source| KeyFileError::Create {
                path: dir.to_owned(),
                source,
            })?;
        }
        let pkcs8 = SigningKey::generate_pkcs8()?;
        match passphrase {
            Some(p) => write_encrypted_private_key(&private_path, &pkcs8, p)?,
            None => write_private_key(&private_path, &pkcs8)?,
        }
    }
    let public = read_private_key_with(&private_path, passphrase)?.public_key();
    let hex_key: String = public
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    write_new(&public_path, format!("{hex_key}\n").as_bytes(), 0o644)?;
    Ok((public, created))
}

/// Reads the key at `path`, creating it first if there is none. Returns whether it
/// was created.
pub fn read_or_create(path: &Path) -> Result<(SigningKey, bool), KeyFileError> {
    if path.exists() {
        return Ok((read_private_key(path)?, false));
    }
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(|source| KeyFileError::Create {
            path: dir.to_owned(),
            source,
        })?;
    }
    write_private_key(path, &SigningKey::generate_pkcs8()?)?;
    Ok((read_private_key(path)?, true))
}
