"""``python -m mlx_worker doctor [--json] [--quick] [--model PATH] [--cache-dir DIR]``.

Checks what the worker needs in this interpreter, with the worker's own code: Python, MLX
and its device, the worker's packages, and (full depth) the CPU BLAS on Linux and the model
with its conversion cache. Changes nothing. ``doctor_runtime`` and ``doctor_model`` gather
the facts and make the checks; this module parses the options, runs them in order and prints
the report.

Depths: ``--quick`` imports ``mlx.core`` only and looks the other packages up without importing
them (about 0.1 s: the managed environment's check at every start); the default full
depth imports every worker package (about a second, mostly mlx-lm), chooses the CPU BLAS as
the worker does before importing MLX, and checks the model (``--model``, else the default
model) against the conversion cache (``--cache-dir``, else the worker's default).
``--expect-gpu`` turns a CPU-only MLX into a warning.

Exit status: 0 when no check failed (warnings allowed), 1 when one did, 2 on bad usage. The
report is printed either way; an import that fails is a failed check, never a traceback.
Anything a package prints while being imported goes to stderr, so stdout holds only the report.

The JSON (``--json``), schema 1. Keys are always present; what was not looked at is null
(or, in ``runtime``, an empty string or list, so that it reads straight into a struct)::

    {
      "schema": 1,                     # bumped when a key changes meaning or goes away
      "ok": true,                      # no check has status "fail"
      "depth": "full",                 # or "quick"
      "worker_version": "0.1.0",       # mlx_worker.__version__
      "runtime": {
        "python_version": "3.11.7",    # sys.version_info, "X.Y.Z"
        "python_executable": "/.../python",
        "mlx_version": "0.32.4",       # "" when mlx.core does not import
        "mlx_lm_version": "0.32.2",    # "" when mlx-lm is not installed
        "device": "Device(cpu, 0)",    # str(mx.default_device()), or ""
        "backend": "cpu",              # "cpu" | "metal" | "cuda" | "" (no MLX)
        "cpu_blas": ["libblas-bd8a282c.so.3.10.0"],  # BLAS libraries mapped after a CPU
                                       # matrix product (Linux; [] elsewhere)
        "default_model": "/.../SmolLM2-135M-Instruct.Q4_1.gguf",  # or null
        "missing": ["mlx_lm: not installed"]  # worker packages missing or failing to import
      },
      "blas": {                        # full depth; null with --quick
        "active": "openblas",          # "openblas" | "bundled" | null (error)
        "choice": "auto",              # $MLX_SIDECAR_CPU_BLAS ("auto" | "bundled" | ...)
        "openblas": "/.../libopenblas.so",  # the installed OpenBLAS, or null
        "error": null                  # "Type: message" if the choice failed
      },
      "model": {                       # full depth; null with --quick
        "path": "/abs/model.gguf",     # resolved when it exists; null: no default model
        "kind": "gguf",                # "gguf" | "directory" | null (neither, or missing)
        "exists": true,
        "cache_dir": "/.../mlx-sidecar",
        "entry": "/.../models/<name>-<digest>",  # the GGUF's cache entry, else null
        "converted": false,            # whether that entry is complete; null if no entry
        "error": null                  # "Type: message" if inspecting failed
      },
      "checks": [                      # in this order; "cpu blas" only on Linux with
        {"name": "python", "status": "ok", "detail": "...", "fix": null},  # backend cpu,
        {"name": "mlx", ...},          # "cpu blas" and "model" only at full depth
        {"name": "packages", ...},
        {"name": "cpu blas", ...},
        {"name": "model", ...}
      ]
    }

``status`` is "ok", "warn" or "fail"; ``fix`` is a sentence for warn and fail, else null. A
failing ``mlx`` check's detail starts with "import mlx.core: ". Should the doctor itself
break, a last check named "doctor" fails with the error and the report is still printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from . import __version__, doctor_model, doctor_runtime
from .doctor_runtime import Check, error_text

SCHEMA = 1
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_TAGS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlx_worker doctor",
        description="Check what the worker needs in this interpreter; change nothing.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--quick", action="store_true", help="import mlx.core only; no model or BLAS checks"
    )
    parser.add_argument("--model", metavar="PATH", help="GGUF file or mlx-lm directory")
    parser.add_argument("--cache-dir", metavar="DIR", help="the conversion cache to look in")
    parser.add_argument("--expect-gpu", action="store_true", help="warn when MLX finds no GPU")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The options; exits with status 2 (argparse's usage error) when they make no sense."""
    parser = _parser()
    options = parser.parse_args(argv)
    if options.quick and (options.model is not None or options.cache_dir is not None):
        parser.error("--model and --cache-dir are checked at full depth only (drop --quick)")
    for flag, value in (("--model", options.model), ("--cache-dir", options.cache_dir)):
        if value is not None and not value.strip():
            parser.error(f"{flag} needs a path")
    return options


def gather(options: argparse.Namespace) -> dict[str, Any]:
    """Runs the checks in order and returns the report (see the module doc)."""
    full = not options.quick
    runtime = doctor_runtime.python_facts()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "ok": False,
        "depth": "full" if full else "quick",
        "worker_version": __version__,
        "runtime": runtime,
        "blas": None,
        "model": None,
        "checks": [],
    }
    checks: list[Check] = []
    try:
        checks.append(doctor_runtime.check_python(runtime))
        if full:  # before mlx.core is imported, as in the worker
            report["blas"] = doctor_runtime.blas_facts()
        mlx_error = doctor_runtime.mlx_facts(runtime)
        checks.append(doctor_runtime.check_mlx(runtime, mlx_error, options.expect_gpu))
        runtime["missing"] = doctor_runtime.missing_packages(full)
        checks.append(doctor_runtime.check_packages(runtime["missing"], full))
        runtime["default_model"] = doctor_model.default_model()
        if full:
            if sys.platform.startswith("linux") and runtime["backend"] == "cpu":
                checks.append(doctor_runtime.check_cpu_blas(report["blas"], runtime))
            report["model"] = doctor_model.model_facts(options.model, options.cache_dir)
            checks.append(doctor_model.check_model(report["model"]))
    except Exception as e:  # a bug here must still leave a readable report
        checks.append(Check("doctor", "fail", f"internal error: {error_text(e)}", None))
    report["checks"] = [c.to_json() for c in checks]
    report["ok"] = all(c.status != "fail" for c in checks)
    return report


def render_text(report: dict[str, Any]) -> str:
    """One line per check (``ok  ``, ``warn`` or ``FAIL``, name, detail), then its fix."""
    lines = []
    for check in report["checks"]:
        lines.append(f"{_TAGS[check['status']]}  {check['name']:<12} {check['detail']}")
        if check["fix"]:
            lines.append(f"{'':<6}{'':<12} fix: {check['fix']}")
    return "\n".join(lines)


def _claim_stdout() -> TextIO:
    """Keeps the real stdout for the report and points file descriptor 1 at stderr, so that
    whatever an imported package prints (from Python or C) cannot spoil the report."""
    sys.stdout.flush()
    report_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(report_fd, "w", encoding="utf-8")


def main(argv: Sequence[str]) -> int:
    """Runs the doctor; returns the exit status (0 ok, 1 a check failed, 2 bad usage)."""
    try:
        options = parse_args(argv)
    except SystemExit as e:  # argparse: 2 for bad usage, 0 after --help
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    out = _claim_stdout()
    report = gather(options)
    text = json.dumps(report, indent=2) if options.json else render_text(report)
    out.write(text + "\n")
    out.flush()
    return EXIT_OK if report["ok"] else EXIT_FAILED
