//! Running the worker's own checks, `python -m mlx_worker doctor --json`, and reading its
//! report (schema 1; the contract is the module doc of `sidecar/mlx_worker/doctor.py`).
//!
//! The environment probe and `mlx-sidecar doctor` both go through [`run`]: exit status 0 (no
//! check failed) and 1 (one did) carry a report; anything else is an error showing the end
//! of the worker's stderr.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::EnvError;
use super::probe::RuntimeInfo;
use super::python;

/// The report schema this build reads.
const SCHEMA: u64 = 1;

/// How many stderr lines an error about a doctor without a report keeps.
const STDERR_LINES: usize = 5;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Nothing to do.
    Ok,
    /// The worker runs, but something is worse than it could be.
    Warn,
    /// The worker cannot run (or cannot use the model) until this is fixed.
    Fail,
}

/// One of the worker's checks: `python`, `mlx`, `packages`, then at full depth `cpu blas`
/// (Linux with the CPU backend) and `model`, in that order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorCheck {
    /// The check's name, e.g. "mlx".
    pub name: String,
    /// How it came out.
    pub status: CheckStatus,
    /// What was found, one sentence.
    pub detail: String,
    /// What to do about a warning or failure; `None` when ok.
    pub fix: Option<String>,
}

/// The worker's report on an interpreter, as much of it as this library reads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DoctorReport {
    /// No check failed.
    pub ok: bool,
    /// What the interpreter runs (Python, MLX, device, packages, default model).
    pub runtime: RuntimeInfo,
    /// The checks, in the worker's order.
    pub checks: Vec<DoctorCheck>,
}

impl DoctorReport {
    /// The check named `name`, if the worker made it.
    pub fn check(&self, name: &str) -> Option<&DoctorCheck> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// The report as the worker prints it; keys this library does not read are skipped.
#[derive(Deserialize)]
struct Wire {
    ok: bool,
    runtime: RuntimeInfo,
    checks: Vec<DoctorCheck>,
}

/// What the worker's doctor should look at besides the interpreter (the full depth: every
/// package imported, the CPU BLAS chosen as the worker does, the model and its cache).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DoctorOptions {
    /// The model to check (default: the default model package's GGUF).
    pub model: Option<PathBuf>,
    /// The conversion cache to look in (default: the worker's, `MLX_SIDECAR_CACHE_DIR` or
    /// the user's cache directory).
    pub cache_dir: Option<PathBuf>,
    /// Make a CPU-only MLX a warning (for the GPU variants).
    pub expect_gpu: bool,
}

impl DoctorOptions {
    /// Sets [`model`](Self::model).
    pub fn with_model(mut self, model: impl Into<PathBuf>) -> Self {
        self.model = Some(model.into());
        self
    }
    /// Sets [`cache_dir`](Self::cache_dir).
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }
    /// Sets [`expect_gpu`](Self::expect_gpu).
    pub fn with_expect_gpu(mut self, expect_gpu: bool) -> Self {
        self.expect_gpu = expect_gpu;
        self
    }

    /// The doctor's options for these settings.
    pub(crate) fn args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(model) = &self.model {
            args.extend([OsString::from("--model"), model.into()]);
        }
        if let Some(dir) = &self.cache_dir {
            args.extend([OsString::from("--cache-dir"), dir.into()]);
        }
        if self.expect_gpu {
            args.push("--expect-gpu".into());
        }
        args
    }
}

/// Runs `python -m mlx_worker doctor --json ARGS` with `worker_dir` on `PYTHONPATH` and
/// reads its report.
pub(crate) async fn run(
    python: &Path,
    worker_dir: &Path,
    args: &[OsString],
) -> Result<DoctorReport, EnvError> {
    let not_runnable = |reason: String| EnvError::PythonNotRunnable {
        python: python.to_path_buf(),
        reason,
    };
    // Bytecode may be cached, as the worker itself does: the doctor's modules are not among
    // the worker's, and compiling them at every start cost about 5 ms of the quick probe.
    let out = python::command(python)
        .env_remove("PYTHONDONTWRITEBYTECODE")
        .env("PYTHONPATH", worker_dir)
        .args(["-m", "mlx_worker", "doctor", "--json"])
        .args(args)
        .output()
        .await
        .map_err(|e| not_runnable(e.to_string()))?;
    if !matches!(out.status.code(), Some(0 | 1)) {
        return Err(not_runnable(format!(
            "the worker's doctor ended with {}: {}",
            out.status,
            python::last_lines(&out.stderr, STDERR_LINES)
        )));
    }
    parse(&out.stdout).map_err(|why| {
        not_runnable(format!(
            "the worker's doctor printed no report ({why}): {}",
            python::last_lines(&out.stderr, STDERR_LINES)
        ))
    })
}

/// Reads a report, refusing another schema before looking at the keys it would change.
fn parse(stdout: &[u8]) -> Result<DoctorReport, String> {
    let value: serde_json::Value = serde_json::from_slice(stdout).map_err(|e| e.to_string())?;
    match value.get("schema").and_then(serde_json::Value::as_u64) {
        Some(SCHEMA) => {}
        Some(other) => {
            return Err(format!(
                "it speaks schema {other}, this build reads {SCHEMA}"
            ));
        }
        None => return Err("it has no schema number".to_owned()),
    }
    let wire: Wire = serde_json::from_value(value).map_err(|e| e.to_string())?;
    Ok(DoctorReport {
        ok: wire.ok,
        runtime: wire.runtime,
        checks: wire.checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_schema_1_and_skips_keys_it_does_not_use() {
        let report = parse(
            br#"{"schema": 1, "ok": false, "depth": "quick", "worker_version": "0.1.0",
                "runtime": {"python_version": "3.11.7", "python_executable": "/p",
                  "mlx_version": "", "mlx_lm_version": "", "device": "", "backend": "",
                  "cpu_blas": [], "default_model": null, "missing": [], "future": 1},
                "blas": null, "model": null,
                "checks": [{"name": "mlx", "status": "fail",
                  "detail": "import mlx.core: ModuleNotFoundError: no", "fix": "f"}]}"#,
        )
        .expect("schema 1");
        assert!(!report.ok);
        assert_eq!(report.runtime.python_version, "3.11.7");
        let mlx = report.check("mlx").expect("mlx check");
        assert_eq!(mlx.status, CheckStatus::Fail);
        assert!(mlx.detail.starts_with("import mlx.core: "));
        assert!(report.check("model").is_none());
    }

    #[test]
    fn refuses_other_schemas_and_non_reports() {
        let err = parse(br#"{"schema": 2, "checks": "changed"}"#).expect_err("schema 2");
        assert!(err.contains("schema 2"), "{err}");
        assert!(parse(br#"{"ok": true}"#).is_err());
        assert!(parse(b"Traceback (most recent call last):").is_err());
    }

    #[test]
    fn options_become_the_doctors_flags() {
        let args = DoctorOptions::default()
            .with_model("/m.gguf")
            .with_cache_dir("/c")
            .with_expect_gpu(true)
            .args();
        assert_eq!(
            args,
            ["--model", "/m.gguf", "--cache-dir", "/c", "--expect-gpu"].map(OsString::from)
        );
        assert!(DoctorOptions::default().args().is_empty());
    }
}
