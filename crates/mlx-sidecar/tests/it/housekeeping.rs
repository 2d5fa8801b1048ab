//! Disk housekeeping, for real: the worker sources of other versions are removed when the
//! environment is checked, but never one a running worker was started from.

use std::path::Path;

use mlx_sidecar::WorkerCommand;
use mlx_sidecar::env::{self, EnvOptions, NoProgress};

use crate::support;

/// Copies a directory tree (plain files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

#[tokio::test]
async fn other_versions_sources_are_pruned_unless_a_worker_runs_from_them() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let root = scratch.path().join("env");
    let opts = EnvOptions::default()
        .with_python(support::python())
        .with_root(&root);
    let current = env::ensure(&opts, &NoProgress).await.expect("ensure");
    assert!(current.worker_dir.join(".in-use").is_file());
    // The extracted source has the test model (the managed environment's workers serve it).
    for file in ["served_model.py", "tiny_model.py"] {
        let path = current.worker_dir.join("mlx_worker/testing").join(file);
        assert!(path.is_file(), "{}", path.display());
    }

    // Another version's source (marked, as this version extracts them) and one of a version
    // that did not mark its use.
    let other = root.join("worker").join("00000000000000aa");
    copy_tree(&current.worker_dir, &other);
    let unmarked = root.join("worker").join("00000000000000bb");
    std::fs::create_dir_all(&unmarked).expect("mkdir");

    // A real worker started from the other version's source holds it.
    let worker = WorkerCommand::test_worker(&current.python, &other).with_args([
        "--cache-dir".to_owned(),
        scratch.path().join("cache").display().to_string(),
    ]);
    let supervisor = mlx_sidecar::Supervisor::spawn(support::config(worker, scratch.path()))
        .await
        .expect("spawn");
    supervisor.wait_ready(support::READY).await.expect("ready");

    let again = env::ensure(&opts, &NoProgress).await.expect("ensure");
    assert_eq!(again.worker_dir, current.worker_dir);
    assert!(other.is_dir(), "a running worker's source was removed");
    assert!(unmarked.is_dir());

    supervisor.shutdown().await.expect("shutdown");
    // Unused, but its worker started within the hour (a supervisor may be between workers).
    env::ensure(&opts, &NoProgress).await.expect("ensure");
    assert!(other.is_dir(), "a source used within the hour was removed");
    // Its last worker started two hours ago: it goes.
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(other.join(".in-use"))
        .and_then(|f| f.set_modified(two_hours_ago))
        .expect("age the in-use mark");
    env::ensure(&opts, &NoProgress).await.expect("ensure");
    assert!(!other.exists(), "an unused old source was kept");
    assert!(unmarked.is_dir(), "an unmarked source was removed");
    assert!(current.worker_dir.is_dir());
}
