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
                keys += 1;
            }
        }
    }
    assert!(dirs >= 3 && keys >= 3, "{dirs} directories, {keys} keys");
}
