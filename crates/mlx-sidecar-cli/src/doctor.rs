//! `mlx-sidecar doctor`: checks what the worker needs, one line each (ok / warn / fail) with
//! a concrete fix for what is wrong. Changes nothing.
//!
//! The checks outside Python are made here: the base interpreter, the managed environment's
//! manifest, the socket directory. What the interpreter can do (MLX, the worker's packages,
//! the CPU BLAS, the model and its cache) is the worker's own doctor, run through
//! [`env::doctor`] with the worker source extracted to a temporary directory.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use mlx_sidecar::env::{self, CheckStatus, DoctorCheck, DoctorOptions, EnvError, EnvOptions};
use serde::Serialize;

use mlx_sidecar::cache;

use super::args::{DoctorArgs, GlobalArgs};
use super::models::{self, human_bytes};
use super::session::env_options;

/// The fix for MLX or the worker's packages missing from an interpreter given with --python.
const GIVEN_PYTHON_FIX: &str =
    "install the worker's requirements into that interpreter, or leave out --python";

/// One check's result.
#[derive(Debug, Serialize)]
struct Check {
    name: String,
    status: CheckStatus,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn ok(name: &str, message: impl Into<String>) -> Self {
        Check {
            name: name.to_owned(),
            status: CheckStatus::Ok,
            message: message.into(),
            fix: None,
        }
    }
    fn warn(name: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.to_owned(),
            status: CheckStatus::Warn,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(name: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.to_owned(),
            status: CheckStatus::Fail,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

impl From<DoctorCheck> for Check {
    fn from(c: DoctorCheck) -> Self {
        Check {
            name: c.name,
            status: c.status,
            message: c.detail,
            fix: c.fix,
        }
    }
}

/// Runs `doctor`.
pub(crate) async fn run(global: &GlobalArgs, args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let opts = env_options(global);
    let mut checks = Vec::new();
    let env_state = check_environment(&opts, &mut checks).await;
    match &env_state.python {
        Some(py) => check_worker(py, global, &opts, &mut checks).await,
        None => {
            checks.push(Check::warn(
                "mlx",
                format!("not checked: {}", env_state.why_not),
                "fix the checks above first",
            ));
            checks.push(Check::warn(
                "model",
                "not checked: no working Python environment",
                "fix the checks above first",
            ));
        }
    }
    checks.push(check_cache(global, &opts));
    checks.push(check_socket_dir(global.socket_dir.as_deref()));

    let failed = checks.iter().any(|c| c.status == CheckStatus::Fail);
    if args.json {
        let out = serde_json::json!({ "ok": !failed, "checks": checks });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for c in &checks {
            let tag = match c.status {
                CheckStatus::Ok => "ok  ",
                CheckStatus::Warn => "warn",
                CheckStatus::Fail => "FAIL",
            };
            println!("{tag}  {:<12} {}", c.name, c.message);
            if let Some(fix) = &c.fix {
                println!("      {:<12} fix: {fix}", "");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What the environment checks found: the interpreter to look into, if any, and if not,
/// why not.
struct EnvState {
    python: Option<PathBuf>,
    why_not: &'static str,
}

impl EnvState {
    fn found(python: PathBuf) -> Self {
        EnvState {
            python: Some(python),
            why_not: "",
        }
    }
    fn none(why_not: &'static str) -> Self {
        EnvState {
            python: None,
            why_not,
        }
    }
}

async fn check_environment(opts: &EnvOptions, checks: &mut Vec<Check>) -> EnvState {
    if let Some(given) = &opts.python {
        match env::check_python(given).await {
            Ok(i) => checks.push(Check::ok(
                "python",
                format!(
                    "Python {} at {} (given with --python)",
                    i.version,
                    given.display()
                ),
            )),
            Err(e) => {
                checks.push(Check::fail(
                    "python",
                    e.to_string(),
                    "pass --python (or MLX_SIDECAR_PYTHON) an interpreter of Python 3.10 or \
                     newer that exists, or leave it out to use the managed environment",
                ));
                return EnvState::none("the given interpreter does not run");
            }
        }
        checks.push(Check::ok(
            "environment",
            "not used: --python names the interpreter",
        ));
        return EnvState::found(given.clone());
    }

    let inspection = match env::inspect(opts) {
        Ok(i) => i,
        Err(e) => {
            checks.push(Check::fail(
                "environment",
                e.to_string(),
                "pass --env-dir DIR",
            ));
            return EnvState::none("no environment directory");
        }
    };
    let complete = inspection.manifest.is_some() && inspection.mismatch.is_none();
    match env::find_base_python().await {
        Ok(i) => checks.push(Check::ok(
            "python",
            format!(
                "Python {} at {} (makes the environment)",
                i.version,
                i.path.display()
            ),
        )),
        Err(e @ EnvError::NoPython { .. }) if complete => checks.push(Check::warn(
            "python",
            format!("{e}"),
            "the environment is complete, but rebuilding it will need Python 3.10+ on PATH",
        )),
        Err(e) => checks.push(Check::fail(
            "python",
            e.to_string(),
            "install Python 3.10 or newer with its venv module (Debian/Ubuntu: `apt install \
             python3 python3-venv`; macOS: `brew install python@3.12`)",
        )),
    }

    let root = inspection.root.display().to_string();
    let py = inspection.python.clone();
    match (&inspection.manifest, &inspection.mismatch) {
        (None, _) if !inspection.venv_exists => {
            checks.push(Check::warn(
                "environment",
                format!("not created yet at {root}"),
                "run `mlx-sidecar setup` (any command also creates it on first use, ~1 minute)",
            ));
            EnvState::none("there is no environment yet")
        }
        (None, _) => {
            checks.push(Check::fail(
                "environment",
                format!("{root} is incomplete (no manifest: its creation was interrupted)"),
                "run `mlx-sidecar setup` to rebuild it",
            ));
            EnvState::none("the environment is incomplete")
        }
        (Some(_), _) if !inspection.python_exists => {
            checks.push(Check::fail(
                "environment",
                format!(
                    "{root} is broken: its interpreter {} is missing",
                    py.display()
                ),
                "run `mlx-sidecar setup` to rebuild it",
            ));
            EnvState::none("the environment is broken")
        }
        (Some(m), Some(mismatch)) => {
            checks.push(Check::warn(
                "environment",
                format!("{root} is outdated: {mismatch}"),
                "run `mlx-sidecar setup` (the next run would rebuild it anyway)",
            ));
            let _ = m;
            EnvState::found(py)
        }
        (Some(m), None) => {
            checks.push(Check::ok(
                "environment",
                format!(
                    "{root}: variant {}{}, complete (manifest of {})",
                    m.variant,
                    if m.dev { " with dev tools" } else { "" },
                    m.written_by
                ),
            ));
            EnvState::found(py)
        }
    }
}

/// What the cache directory takes on disk: the converted models and (when it is elsewhere)
/// the managed environment.
fn check_cache(global: &GlobalArgs, opts: &EnvOptions) -> Check {
    let dir = match models::cache_dir(global) {
        Ok(dir) => dir,
        Err(e) => {
            return Check::warn(
                "cache",
                format!("{e:#}"),
                "set MLX_SIDECAR_CACHE_DIR or --cache-dir",
            );
        }
    };
    let count = cache::list_models(&dir).map(|m| m.len()).unwrap_or(0);
    let models = cache::disk_usage(&dir.join("models"));
    let mut message = format!(
        "{}: {} ({count} converted models: {}",
        dir.display(),
        human_bytes(cache::disk_usage(&dir)),
        human_bytes(models)
    );
    if let Ok(root) = opts.resolved_root() {
        let inside = root.starts_with(&dir);
        message.push_str(&format!(
            "; Python environment{}: {}",
            if inside { "" } else { " elsewhere" },
            human_bytes(cache::disk_usage(&root))
        ));
    }
    message.push(')');
    if count > 0 {
        message.push_str("; `mlx-sidecar models prune` removes the unused models");
    }
    Check::ok("cache", message)
}

/// Adds the worker's own checks of `py` (MLX, packages, CPU BLAS, model). Its `python` check
/// is left out when ok: [`check_environment`] has covered the interpreter already.
async fn check_worker(py: &Path, global: &GlobalArgs, opts: &EnvOptions, checks: &mut Vec<Check>) {
    let given = opts.python.is_some();
    let report = match worker_doctor(py, global, opts).await {
        Ok(report) => report,
        Err(e) => {
            let fix = if given {
                GIVEN_PYTHON_FIX
            } else {
                "run `mlx-sidecar setup --force` to rebuild the environment"
            };
            checks.push(Check::fail("mlx", format!("{e:#}"), fix));
            checks.push(Check::warn(
                "model",
                "not checked: the worker's doctor did not run",
                "fix the checks above first",
            ));
            return;
        }
    };
    for check in report.checks {
        if check.name == "python" && check.status == CheckStatus::Ok {
            continue;
        }
        let mut check = Check::from(check);
        if given && check.status != CheckStatus::Ok && ["mlx", "packages"].contains(&&*check.name) {
            check.fix = Some(GIVEN_PYTHON_FIX.to_owned());
        }
        checks.push(check);
    }
}

/// Runs the worker's doctor with the worker source extracted to a temporary directory (the
/// doctor must not write the environment), for the model and cache the command line names.
async fn worker_doctor(
    py: &Path,
    global: &GlobalArgs,
    opts: &EnvOptions,
) -> anyhow::Result<env::DoctorReport> {
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let worker_dir = env::extract_worker_source(scratch.path())?;
    let wants_gpu = matches!(
        opts.resolved_variant(),
        env::Variant::Cuda12 | env::Variant::Cuda13 | env::Variant::Metal
    );
    let doctor_opts = DoctorOptions {
        model: global.model.clone(),
        cache_dir: global.cache_dir.clone(),
        expect_gpu: opts.python.is_none() && wants_gpu,
    };
    Ok(env::doctor(py, &worker_dir, &doctor_opts).await?)
}

/// The longest socket path the supervisor makes under `base`.
fn worst_socket_path(base: &Path) -> PathBuf {
    base.join(format!("mlx-sidecar-{}-{:016x}", 4_194_304, u64::MAX))
        .join("worker.sock")
}

fn check_socket_dir(dir: Option<&Path>) -> Check {
    const NAME: &str = "socket dir";
    let base = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let shown = base.display().to_string();
    let fix_dir =
        "pass --socket-dir (or MLX_SIDECAR_SOCKET_DIR) a short directory you own, such as /tmp";
    let meta = match std::fs::metadata(&base) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => return Check::fail(NAME, format!("{shown} is not a directory"), fix_dir),
        Err(e) => return Check::fail(NAME, format!("{shown}: {e}"), fix_dir),
    };
    let worst = worst_socket_path(&base);
    let len = worst.as_os_str().len();
    if std::os::unix::net::SocketAddr::from_pathname(&worst).is_err() {
        return Check::fail(
            NAME,
            format!(
                "{shown} is too long: the socket path would be {len} bytes, more than a Unix socket address holds"
            ),
            fix_dir,
        );
    }
    // Make a private directory like the supervisor does, and bind a socket in it.
    let probe_dir = base.join(format!(".mlx-sidecar-doctor-{}", std::process::id()));
    let result = (|| -> std::io::Result<u32> {
        std::fs::DirBuilder::new().mode(0o700).create(&probe_dir)?;
        let mode = std::fs::metadata(&probe_dir)?.permissions().mode();
        let listener = std::os::unix::net::UnixListener::bind(probe_dir.join("worker.sock"))?;
        drop(listener);
        Ok(mode)
    })();
    let _ = std::fs::remove_dir_all(&probe_dir);
    match result {
        Err(e) => Check::fail(
            NAME,
            format!("cannot make a socket in {shown}: {e}"),
            fix_dir,
        ),
        Ok(mode) if mode & 0o077 != 0 => Check::fail(
            NAME,
            format!(
                "a private directory made in {shown} is not private (mode {:o})",
                mode & 0o777
            ),
            "use a local file system that honours permissions for --socket-dir",
        ),
        Ok(_) => {
            let world_writable = meta.permissions().mode() & 0o002 != 0;
            let sticky = meta.permissions().mode() & 0o1000 != 0;
            let ours = meta.uid() == nix::unistd::geteuid().as_raw();
            if world_writable && !sticky && !ours {
                Check::warn(
                    NAME,
                    format!(
                        "{shown} is writable by everyone without the sticky bit: others could replace the socket directory"
                    ),
                    fix_dir,
                )
            } else {
                Check::ok(
                    NAME,
                    format!(
                        "{shown}: writable, private socket directories work, socket paths up to {len} bytes fit"
                    ),
                )
            }
        }
    }
}
