"""The doctor's runtime checks: Python, MLX and its device, the worker's packages, the CPU BLAS.

The ``*_facts`` functions gather raw facts and never raise; each ``check_*`` function turns
facts into one :class:`Check`. ``doctor.gather`` keeps the order that matters: the CPU BLAS
is chosen before ``mlx.core`` is first imported, as in the worker. Only the standard library
is imported at module level.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

MIN_PYTHON = (3, 10)
# What the worker imports besides mlx.core (its requirements' import names).
WORKER_PACKAGES = (
    "mlx_lm",
    "grpc",
    "grpc_health.v1.health",
    "google.protobuf",
    "tokenizers",
    "jinja2",
)
REBUILD_FIX = (
    "run `mlx-sidecar setup --force` to rebuild the environment, or install the worker's "
    "requirements into this interpreter"
)
WORKER_LOG_FIX = "run `mlx-sidecar -v generate hi` and read the worker's log"


class Check:
    """One check's outcome: ``status`` is "ok", "warn" or "fail"; ``fix`` is None when ok.

    A plain class: ``dataclasses`` would add ~10 ms of imports to every quick check.
    """

    __slots__ = ("detail", "fix", "name", "status")

    def __init__(self, name: str, status: str, detail: str, fix: str | None = None) -> None:
        self.name, self.status, self.detail, self.fix = name, status, detail, fix

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def python_facts() -> dict[str, Any]:
    """The start of the ``runtime`` object: every key present, MLX ones empty until known."""
    return {
        "python_version": ".".join(str(n) for n in sys.version_info[:3]),
        "python_executable": sys.executable,
        "mlx_version": "",
        "mlx_lm_version": "",
        "device": "",
        "backend": "",
        "cpu_blas": [],
        "default_model": None,
        "missing": [],
    }


def check_python(runtime: dict[str, Any]) -> Check:
    detail = f"Python {runtime['python_version']} at {runtime['python_executable']}"
    if sys.version_info[:2] < MIN_PYTHON:
        return Check("python", "fail", f"{detail}: 3.10 or newer is needed", "use Python 3.10+")
    return Check("python", "ok", detail)


def blas_facts() -> dict[str, Any]:
    """Chooses the CPU BLAS the way the worker does; call before ``mlx.core`` is imported."""
    facts: dict[str, Any] = {"active": None, "choice": None, "openblas": None, "error": None}
    try:
        from .model import cpu_blas  # imports no MLX

        facts["active"] = cpu_blas.prepare_cpu_blas()
        found = cpu_blas.find_openblas()
        facts["openblas"] = str(found) if found else None
        facts["choice"] = os.environ.get(cpu_blas.ENV_VAR, "auto").strip().lower()
    except Exception as e:
        facts["error"] = error_text(e)
    return facts


def mlx_facts(runtime: dict[str, Any]) -> str | None:
    """Imports ``mlx.core`` and fills the runtime's MLX facts; returns the error, if any."""
    try:
        import mlx.core as mx
    except BaseException as e:  # a broken extension can raise anything, SystemExit included
        if isinstance(e, KeyboardInterrupt):
            raise
        return f"import mlx.core: {error_text(e)}"
    runtime["mlx_version"] = getattr(mx, "__version__", "") or _version("mlx")
    runtime["mlx_lm_version"] = _version("mlx-lm")
    runtime["device"] = str(mx.default_device())
    runtime["backend"] = _backend(mx)
    runtime["cpu_blas"] = _loaded_blas_libraries(mx)
    return None


def _version(distribution: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except Exception:
        return ""


def _backend(mx: Any) -> str:
    try:
        if mx.metal.is_available():
            return "metal"
        if hasattr(mx, "cuda") and mx.cuda.is_available():
            return "cuda"
    except Exception:
        pass
    return "cpu"


def _loaded_blas_libraries(mx: Any) -> list[str]:
    """Shared BLAS libraries mapped after one CPU matrix product (Linux; empty elsewhere)."""
    if not sys.platform.startswith("linux"):
        return []
    names: list[str] = []
    try:
        a = mx.ones((32, 32), stream=mx.cpu)
        mx.eval(mx.matmul(a, a, stream=mx.cpu))
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                name = os.path.basename(fields[-1]) if len(fields) >= 6 else ""
                low = name.lower()
                if ("blas" in low or "mkl" in low) and name not in names:
                    names.append(name)
    except Exception:
        pass
    return names


def check_mlx(runtime: dict[str, Any], error: str | None, expect_gpu: bool) -> Check:
    if error is not None:
        return Check("mlx", "fail", error, REBUILD_FIX)
    detail = (
        f"mlx {runtime['mlx_version']} (mlx-lm {runtime['mlx_lm_version'] or 'missing'}), "
        f"default device {runtime['device']}, backend {runtime['backend']}"
    )
    if expect_gpu and runtime["backend"] == "cpu":
        return Check(
            "mlx",
            "warn",
            f"{detail}: a GPU was expected but MLX found none",
            "check the GPU driver (nvidia-smi for CUDA), or use --variant cpu",
        )
    return Check("mlx", "ok", detail)


def missing_packages(full: bool) -> list[str]:
    """Worker packages that are missing (quick: looked up) or fail to import (full)."""
    missing = []
    for name in WORKER_PACKAGES:
        try:
            if full:
                importlib.import_module(name)
            elif importlib.util.find_spec(name.split(".")[0]) is None:
                missing.append(f"{name}: not installed")
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            missing.append(f"{name}: {error_text(e)}")
    return missing


def check_packages(missing: list[str], full: bool) -> Check:
    if missing:
        return Check("packages", "fail", "cannot import: " + "; ".join(missing), REBUILD_FIX)
    how = "import" if full else "are installed"
    return Check("packages", "ok", f"the worker's {len(WORKER_PACKAGES)} packages {how}")


def check_cpu_blas(blas: dict[str, Any], runtime: dict[str, Any]) -> Check:
    name = "cpu blas"
    if blas["error"] is not None:
        return Check(name, "warn", f"cannot tell: {blas['error']}", WORKER_LOG_FIX)
    if blas["active"] == "openblas":
        where = blas["openblas"] or "preloaded"
        return Check(name, "ok", f"OpenBLAS, fast float matrix products ({where})")
    bundled = f"mlx-cpu's bundled reference BLAS ({', '.join(runtime['cpu_blas']) or '?'})"
    if blas["choice"] == "bundled":
        return Check(name, "ok", f"{bundled}, as MLX_SIDECAR_CPU_BLAS=bundled asks")
    if blas["openblas"] is not None:
        return Check(
            name,
            "warn",
            f"OpenBLAS is installed ({blas['openblas']}) but could not be loaded; using {bundled}",
            WORKER_LOG_FIX,
        )
    return Check(name, "ok", f"{bundled}; MLX's quantized kernels are used")
