//! Private keys on disk: PKCS#8 in PEM, created once with mode 0600, never overwritten.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use hrx_domain::SigningKey;

const PEM_TAG: &str = "PRIVATE KEY";

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

/// Writes a PKCS#8 document as PEM, readable by its owner only.
pub fn write_private_key(path: &Path, pkcs8: &[u8]) -> Result<(), KeyFileError> {
    write_new(
        path,
        pem::encode(&pem::Pem::new(PEM_TAG, pkcs8)).as_bytes(),
        0o600,
    )
}

pub fn read_private_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let not_a_key = || KeyFileError::NotAKey {
        path: path.to_owned(),
    };
    let pem = pem::parse(text).map_err(|_| not_a_key())?;
    if pem.tag() != PEM_TAG {
        return Err(not_a_key());
    }
    SigningKey::from_pkcs8(pem.contents()).map_err(|_| not_a_key())
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
