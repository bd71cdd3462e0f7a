//! Keys and data at rest: every directory a node creates is owner-only, every private
//! key file is readable by its owner alone.

#![cfg(unix)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directories_and_key_files_are_owner_only() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("fresh").join("hrx-data");
    let env = Env {
        config: hrx_node::NodeConfig::ephemeral(&data),
        dir: parent,
    };
    let node = TestNode::start(&env).await;
    let w = World::register(&data, &node).await;
    drop(w);
    node.stop().await;
    let mut dirs = 0;
    let mut keys = 0;
    let mut stack = vec![data.clone()];
    while let Some(dir) = stack.pop() {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        dirs += 1;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".key.pem")
                || path.to_string_lossy().ends_with("key.pem")
            {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                // And OpenSSL reads every one of them.
                let out = std::process::Command::new("openssl")
                    .args(["pkey", "-noout", "-in"])
                    .arg(&path)
                    .output()
                    .expect("openssl runs");
                assert!(
                    out.status.success(),
                    "{}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                keys += 1;
            }
        }
    }
    assert!(dirs >= 3 && keys >= 3, "{dirs} directories, {keys} keys");
}

/// The root key can be passphrase-protected, in the encrypted PKCS#8 that OpenSSL reads
/// (and writes: an OpenSSL-encrypted Ed25519 key is read back); without the passphrase
/// hrx cannot use it, and a node on that data directory starts all the same: it needs
/// only the root public key kept beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passphrase_protected_root_key_is_openssl_compatible_and_not_needed_to_run() {
    use hrx_node::keys::{self, KeyFileError};
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("hrx-data");
    let pass = "correct horse battery staple";
    let (public, created) = keys::read_or_create_root(&data, Some(pass)).unwrap();
    assert!(created);
    let key_path = hrx_node::root_key_path(&data);
    let text = std::fs::read_to_string(&key_path).unwrap();
    assert!(
        text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{text}"
    );
    assert_eq!(mode(&key_path), 0o600);

    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs")
    };
    let key = key_path.to_str().unwrap();
    let out = openssl(&[
        "pkey",
        "-in",
        key,
        "-passin",
        &format!("pass:{pass}"),
        "-pubout",
        "-outform",
        "DER",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&out.stdout[out.stdout.len() - 32..], public.as_bytes());
    let wrong = openssl(&["pkey", "-in", key, "-passin", "pass:wrong", "-noout"]);
    assert!(
        !wrong.status.success(),
        "OpenSSL opens it only with the passphrase"
    );

    assert!(matches!(
        keys::read_private_key_with(&key_path, None),
        Err(KeyFileError::NeedsPassphrase { .. })
    ));
    assert!(matches!(
        keys::read_private_key_with(&key_path, Some("wrong")),
        Err(KeyFileError::WrongPassphrase { .. })
    ));
    let signing = keys::read_private_key_with(&key_path, Some(pass)).unwrap();
    assert_eq!(signing.public_key(), public);

    // An Ed25519 key OpenSSL encrypted (PBES2, PBKDF2, AES-256-CBC) reads back too.
    let theirs = parent.path().join("openssl.key.pem");
    let plain = parent.path().join("openssl.plain.pem");
    let generated = openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        plain.to_str().unwrap(),
    ]);
    assert!(generated.status.success());
    let enc = openssl(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-in",
        plain.to_str().unwrap(),
        "-out",
        theirs.to_str().unwrap(),
        "-passout",
        "pass:x",
    ]);
    assert!(
        enc.status.success(),
        "{}",
        String::from_utf8_lossy(&enc.stderr)
    );
    let from_openssl = keys::read_private_key_with(&theirs, Some("x")).unwrap();
    let plain_key = keys::read_private_key_with(&plain, None).unwrap();
    assert_eq!(from_openssl.public_key(), plain_key.public_key());

    // The node starts without the passphrase, on the public key alone.
    let node = hrx_node::Node::build(hrx_node::NodeConfig::ephemeral(&data))
        .await
        .expect("a node starts without the root key's passphrase");
    assert_eq!(node.root_key_id(), public.key_id());
    assert!(!node.root_key_created());
}
