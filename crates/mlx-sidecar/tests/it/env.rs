//! The managed Python environment, for real: the embedded worker source is extracted, a given
//! interpreter is checked, and one test builds a whole venv with pip, reuses it without pip,
//! and rebuilds it after it was broken.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mlx_sidecar::env::{self, EnvError, EnvOptions, Progress, Step};

/// The repository's development interpreter (or `MLX_SIDECAR_PYTHON`).
fn repo_python() -> PathBuf {
    crate::support::python()
}

/// Records the steps `ensure` reports.
#[derive(Default)]
struct Recorder {
    steps: Mutex<Vec<Step>>,
    output_lines: Mutex<usize>,
}

impl Recorder {
    fn steps(&self) -> Vec<Step> {
        self.steps.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Progress for Recorder {
    fn started(&self, step: Step, _detail: &str) {
        if let Ok(mut steps) = self.steps.lock() {
            steps.push(step);
        }
    }
    fn output(&self, _step: Step, _line: &str) {
        if let Ok(mut n) = self.output_lines.lock() {
            *n += 1;
        }
    }
}

#[test]
fn worker_source_extracts_once_even_when_raced() {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| env::extract_worker_source(root.path()).expect("extract")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    assert!(dirs.windows(2).all(|w| w[0] == w[1]), "{dirs:?}");
    let dir = &dirs[0];
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert!(
        name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit()),
        "named by the source hash: {name}"
    );
    for f in [
        "mlx_worker/__init__.py",
        "mlx_sidecar/v1/inference_pb2.py",
        "requirements/cpu.txt",
        "requirements/base.txt",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    // Only the final directory is left: the racers' temporary copies are gone.
    let entries: Vec<_> = std::fs::read_dir(root.path().join("worker"))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    // No caches or tests are embedded.
    let mut pending = vec![dir.clone()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("read_dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                name != "__pycache__" && name != "tests" && !name.ends_with(".pyc"),
                "{} was extracted",
                entry.path().display()
            );
            if entry.path().is_dir() {
                pending.push(entry.path());
            }
        }
    }
}

#[tokio::test]
async fn given_interpreter_is_checked_and_used_as_is() {
    let root = tempfile::tempdir().expect("tempdir");
    let python = repo_python();
    let rec = Recorder::default();
    let opts = EnvOptions::default()
        .with_root(root.path())
        .with_python(&python);
    let started = Instant::now();
    let found = env::ensure(&opts, &rec)
        .await
        .expect("ensure with the repo's python");
    eprintln!("ensure with --python took {:?}", started.elapsed());
    assert_eq!(found.python, python);
    assert!(found.manifest.is_none());
    assert!(found.worker_dir.join("mlx_worker/__init__.py").is_file());
    assert!(found.worker_dir.starts_with(root.path()));
    assert_eq!(found.runtime.mlx_version, "0.32.4");
    assert!(
        found.runtime.missing.is_empty(),
        "{:?}",
        found.runtime.missing
    );
    assert!(
        found.default_model().is_some_and(|m| m.is_file()),
        "{:?}",
        found.runtime.default_model
    );
    assert!(
        !root.path().join("venv").exists(),
        "no venv is made for a given interpreter"
    );
    assert_eq!(rec.steps(), vec![Step::ExtractWorker, Step::Verify]);
}

#[tokio::test]
async fn interpreter_without_mlx_is_refused_with_a_fix() {
    let root = tempfile::tempdir().expect("tempdir");
    let Ok(bare) = env::find_base_python().await else {
        eprintln!("no base python on PATH; skipping");
        return;
    };
    let worker_dir = env::extract_worker_source(root.path()).expect("extract");
    if env::runtime_info(&bare.path, &worker_dir).await.is_ok() {
        eprintln!(
            "{} has mlx installed; cannot test a missing mlx",
            bare.path.display()
        );
        return;
    }
    let opts = EnvOptions::default()
        .with_root(root.path())
        .with_python(&bare.path);
    let err = env::ensure(&opts, &env::NoProgress)
        .await
        .expect_err("no mlx there");
    assert!(matches!(err, EnvError::MissingPackages { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("mlx.core") && text.contains("pip install -r"),
        "{text}"
    );

    let missing = root.path().join("no-such-python");
    let opts = EnvOptions::default()
        .with_root(root.path())
        .with_python(&missing);
    let err = env::ensure(&opts, &env::NoProgress)
        .await
        .expect_err("missing interpreter");
    assert!(matches!(err, EnvError::PythonNotRunnable { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-python"), "{err}");
}

/// Builds a managed environment with pip (two racing processes' worth of callers), checks
/// the manifest, starts again without pip, then breaks it and sees it rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_env_is_built_once_reused_and_repaired() {
    if std::env::var_os("MLX_SIDECAR_SKIP_ENV_BUILD").is_some() {
        eprintln!("MLX_SIDECAR_SKIP_ENV_BUILD is set: not building a venv");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let opts = EnvOptions::default().with_root(root.path());

    // Two callers at once: one builds, the other waits on the lock and then reuses it.
    let (a, b) = (Recorder::default(), Recorder::default());
    let started = Instant::now();
    let (ra, rb) = tokio::join!(env::ensure(&opts, &a), env::ensure(&opts, &b));
    let built_in = started.elapsed();
    let (ea, eb) = (ra.expect("first caller"), rb.expect("second caller"));
    eprintln!("environment built in {built_in:?}");
    let builds = [&a, &b]
        .iter()
        .filter(|r| r.steps().contains(&Step::InstallRequirements))
        .count();
    assert_eq!(
        builds,
        1,
        "exactly one caller runs pip: {:?} / {:?}",
        a.steps(),
        b.steps()
    );
    assert_eq!(ea.python, eb.python);
    let builder = if ea.built { &a } else { &b };
    assert_eq!(
        builder.steps(),
        vec![
            Step::ExtractWorker,
            Step::CreateVenv,
            Step::InstallRequirements,
            Step::InstallModel,
            Step::Verify
        ]
    );
    assert!(
        *builder.output_lines.lock().expect("lock") > 0,
        "pip's output reaches progress"
    );

    let manifest_path = root.path().join("manifest.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).expect("json");
    assert_eq!(manifest["variant"], env::Variant::platform_default().name());
    assert_eq!(manifest["runtime"]["mlx_version"], "0.32.4");
    assert_eq!(
        ea.worker_dir.file_name().and_then(|n| n.to_str()),
        manifest["worker_source_hash"].as_str()
    );
    assert!(
        manifest["requirements_hash"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    let inspection = env::inspect(&opts).expect("inspect");
    assert_eq!(inspection.python, ea.python);
    assert_eq!(inspection.mismatch, None, "the manifest fits this build");
    assert!(inspection.worker_extracted);
    assert!(
        ea.default_model().is_some_and(|m| m.is_file()),
        "default model installed"
    );

    // Second start: no steps at all, no pip; fast.
    let again = Recorder::default();
    let started = Instant::now();
    let reused = env::ensure(&opts, &again).await.expect("reuse");
    let reuse_time = started.elapsed();
    eprintln!("second ensure took {reuse_time:?}");
    assert!(again.steps().is_empty(), "{:?}", again.steps());
    assert!(!reused.built);
    assert!(reuse_time < Duration::from_secs(5), "{reuse_time:?}");

    // Break it: the interpreter is gone. The next ensure rebuilds from scratch.
    std::fs::remove_file(&ea.python).expect("remove python");
    let repair = Recorder::default();
    let repaired = env::ensure(&opts, &repair).await.expect("repair");
    assert!(repaired.built);
    let steps = repair.steps();
    assert_eq!(steps.first(), Some(&Step::RemoveBroken), "{steps:?}");
    assert!(steps.contains(&Step::InstallRequirements), "{steps:?}");
    assert!(ea.python.exists());
    assert!(manifest_path.is_file());

    // A half-made environment (no manifest) is never used: it is rebuilt too.
    std::fs::remove_file(&manifest_path).expect("remove manifest");
    let inspection = env::inspect(&opts).expect("inspect");
    assert!(inspection.manifest.is_none() && inspection.venv_exists);
}
