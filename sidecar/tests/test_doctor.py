"""``python -m mlx_worker doctor``: its JSON contract (schema 1), plain output, failures and
exit codes, run as a real subprocess with the project's .venv interpreter (real MLX)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

SIDECAR_DIR = Path(__file__).resolve().parents[1]
VENV_PYTHON = Path(os.environ.get("MLX_SIDECAR_TEST_PYTHON", "/work/main/.venv/bin/python"))
VENV_WAIT_S = 900.0  # the .venv may still be being built when the tests start
RUN_TIMEOUT_S = 300.0

TOP_KEYS = {"schema", "ok", "depth", "worker_version", "runtime", "blas", "model", "checks"}
RUNTIME_TYPES: dict[str, Any] = {
    "python_version": str,
    "python_executable": str,
    "mlx_version": str,
    "mlx_lm_version": str,
    "device": str,
    "backend": str,
    "cpu_blas": list,
    "default_model": (str, type(None)),
    "missing": list,
}
BLAS_KEYS = {"active", "choice", "openblas", "error"}
MODEL_KEYS = {"path", "kind", "exists", "cache_dir", "entry", "converted", "error"}
CHECK_KEYS = {"name", "status", "detail", "fix"}
# Variables that would change what the doctor finds; each test sets what it needs.
SCRUBBED = ("LD_PRELOAD", "MLX_SIDECAR_CPU_BLAS", "MLX_SIDECAR_CACHE_DIR", "PYTHONPATH")


def _wait_for_venv() -> Path:
    deadline = time.monotonic() + VENV_WAIT_S
    while not VENV_PYTHON.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{VENV_PYTHON} did not appear within {VENV_WAIT_S:.0f} s")
        time.sleep(2)
    return VENV_PYTHON


def _env(pythonpath: list[Path] | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    paths = [*(pythonpath or []), SIDECAR_DIR]
    return {**env, "PYTHONPATH": os.pathsep.join(map(str, paths)), **extra}


def run_doctor(
    python: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "mlx_worker", "doctor", *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def parse_report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The report, after checking its shape against the contract; stdout holds only it."""
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == TOP_KEYS
    assert report["schema"] == 1
    assert report["depth"] in ("quick", "full")
    assert isinstance(report["ok"], bool)
    assert set(report["runtime"]) == set(RUNTIME_TYPES)
    for key, kind in RUNTIME_TYPES.items():
        assert isinstance(report["runtime"][key], kind), (key, report["runtime"][key])
    assert all(isinstance(m, str) for m in report["runtime"]["missing"])
    assert all(isinstance(b, str) for b in report["runtime"]["cpu_blas"])
    if report["depth"] == "quick":
        assert report["blas"] is None and report["model"] is None
    else:
        assert set(report["blas"]) == BLAS_KEYS
        assert set(report["model"]) == MODEL_KEYS
    for check in report["checks"]:
        assert set(check) == CHECK_KEYS
        assert check["status"] in ("ok", "warn", "fail")
        assert isinstance(check["detail"], str) and check["detail"]
        assert (check["fix"] is None) == (check["status"] == "ok"), check
    assert report["ok"] == all(c["status"] != "fail" for c in report["checks"])
    assert result.returncode == (0 if report["ok"] else 1), result.stderr
    return report


def checks_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


@pytest.fixture(scope="module")
def python() -> Path:
    return _wait_for_venv()


@pytest.fixture(scope="module")
def truth(python: Path) -> dict[str, Any]:
    """What the interpreter itself says, asked directly (not through the doctor)."""
    code = (
        "import json, sys, importlib.metadata as md, mlx.core as mx\n"
        "print(json.dumps({'version': '.'.join(map(str, sys.version_info[:3])),\n"
        "  'executable': sys.executable, 'mlx': mx.__version__,\n"
        "  'mlx_lm': md.version('mlx-lm'), 'device': str(mx.default_device()),\n"
        "  'metal': mx.metal.is_available()}))\n"
    )
    out = subprocess.run(
        [str(python), "-c", code], env=_env(), capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def full_report(python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("cache")
    result = run_doctor(python, "--json", "--cache-dir", str(cache), cwd=cache)
    report = parse_report(result)
    report["_cache"] = str(cache)
    return report


def test_full_report_matches_the_interpreter(full_report: dict[str, Any], truth: dict) -> None:
    report = full_report
    assert report["ok"] is True and report["depth"] == "full"
    runtime = report["runtime"]
    assert runtime["python_version"] == truth["version"]
    assert runtime["python_executable"] == truth["executable"]
    assert runtime["mlx_version"] == truth["mlx"]
    assert runtime["mlx_lm_version"] == truth["mlx_lm"]
    assert runtime["device"] == truth["device"]
    expected_backend = "metal" if truth["metal"] else runtime["backend"]
    assert runtime["backend"] == expected_backend in ("cpu", "metal", "cuda")
    assert runtime["missing"] == []
    names = [c["name"] for c in report["checks"]]
    on_linux_cpu = sys.platform.startswith("linux") and runtime["backend"] == "cpu"
    blas = ["cpu blas"] if on_linux_cpu else []
    assert names == ["python", "mlx", "packages", *blas, "model"]
    assert all(c["status"] == "ok" for c in report["checks"]), report["checks"]
    assert checks_by_name(report)["mlx"]["detail"].startswith(f"mlx {truth['mlx']} ")


def test_full_report_finds_the_default_model_and_its_cache_entry(
    full_report: dict[str, Any],
) -> None:
    default = full_report["runtime"]["default_model"]
    assert default is not None and default.endswith(".gguf") and Path(default).is_file()
    model = full_report["model"]
    assert model["path"] == default and model["exists"] is True and model["kind"] == "gguf"
    assert model["cache_dir"] == full_report["_cache"]
    assert Path(model["entry"]).parent == Path(full_report["_cache"]) / "models"
    assert model["converted"] is False  # a fresh, empty cache
    assert "not converted yet" in checks_by_name(full_report)["model"]["detail"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU BLAS is Linux only")
def test_full_report_names_the_cpu_blas(full_report: dict[str, Any]) -> None:
    blas, runtime = full_report["blas"], full_report["runtime"]
    assert blas["error"] is None and blas["choice"] == "auto"
    assert blas["active"] in ("openblas", "bundled")
    if runtime["backend"] != "cpu":
        return
    assert runtime["cpu_blas"], "no BLAS library mapped after a CPU matrix product"
    if blas["active"] == "openblas":
        assert any("openblas" in name.lower() for name in runtime["cpu_blas"])
        assert "OpenBLAS" in checks_by_name(full_report)["cpu blas"]["detail"]


def test_a_complete_cache_entry_reads_as_converted(python: Path, tmp_path: Path) -> None:
    first = parse_report(run_doctor(python, "--json", "--cache-dir", str(tmp_path), cwd=tmp_path))
    entry = Path(first["model"]["entry"])
    entry.mkdir(parents=True)
    (entry / "mlx-sidecar-complete.json").write_text("{}")  # the cache's completion marker
    again = parse_report(run_doctor(python, "--json", "--cache-dir", str(tmp_path), cwd=tmp_path))
    assert again["model"]["converted"] is True
    assert checks_by_name(again)["model"]["detail"].endswith(f"converted copy in {entry}")


def test_quick_imports_mlx_core_but_not_mlx_lm(python: Path, tmp_path: Path, truth: dict) -> None:
    report = parse_report(run_doctor(python, "--json", "--quick", cwd=tmp_path))
    assert report["depth"] == "quick" and report["ok"] is True
    assert [c["name"] for c in report["checks"]] == ["python", "mlx", "packages"]
    assert report["runtime"]["mlx_version"] == truth["mlx"]
    assert report["runtime"]["device"] == truth["device"]
    assert report["runtime"]["default_model"] is not None
    # In-process, to see which modules the quick depth imported.
    code = (
        "import sys\nfrom mlx_worker.doctor import main\ncode = main(['--quick', '--json'])\n"
        "print('MODULES', 'mlx.core' in sys.modules, 'mlx_lm' in sys.modules, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [str(python), "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "MODULES True False" in result.stderr
    assert json.loads(result.stdout)["depth"] == "quick"


def test_plain_output_has_one_short_line_per_check(python: Path, tmp_path: Path) -> None:
    env = _env(MLX_SIDECAR_CPU_BLAS="bundled")
    result = run_doctor(python, "--cache-dir", str(tmp_path), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:3]] == [
        ["ok", "python"],
        ["ok", "mlx"],
        ["ok", "packages"],
    ]
    assert lines[-1].split()[:2] == ["ok", "model"]
    if sys.platform.startswith("linux") and " backend cpu" in lines[1]:
        blas = next(line for line in lines if line.split()[1:3] == ["cpu", "blas"])
        assert "bundled reference BLAS" in blas and "MLX_SIDECAR_CPU_BLAS=bundled" in blas


def test_a_missing_model_fails_that_check_with_exit_1(python: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    result = run_doctor(python, "--json", "--model", str(missing), cwd=tmp_path)
    report = parse_report(result)
    assert result.returncode == 1 and report["ok"] is False
    model = checks_by_name(report)["model"]
    assert model["status"] == "fail" and str(missing) in model["detail"] and model["fix"]
    assert report["model"]["exists"] is False and report["model"]["kind"] is None
    assert [c["name"] for c in report["checks"] if c["status"] == "fail"] == ["model"]
    plain = run_doctor(python, "--model", str(missing), cwd=tmp_path)
    assert plain.returncode == 1
    assert any(line.startswith("FAIL  model") for line in plain.stdout.splitlines())


def test_a_directory_without_config_is_not_a_model(python: Path, tmp_path: Path) -> None:
    report = parse_report(run_doctor(python, "--json", "--model", str(tmp_path), cwd=tmp_path))
    model = checks_by_name(report)["model"]
    assert model["status"] == "fail" and "config.json" in model["detail"]


def test_mlx_that_fails_to_import_is_a_failed_check(python: Path, tmp_path: Path) -> None:
    """A broken ``mlx`` package first on the path: reported, no traceback, exit 1."""
    broken = tmp_path / "shadow" / "mlx"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    env = _env([broken.parent])
    for depth in (["--quick"], []):
        result = run_doctor(python, "--json", *depth, cwd=tmp_path, env=env)
        report = parse_report(result)
        assert result.returncode == 1
        mlx = checks_by_name(report)["mlx"]
        assert mlx["status"] == "fail" and mlx["fix"]
        assert mlx["detail"] == "import mlx.core: ImportError: broken on purpose"
        assert report["runtime"]["mlx_version"] == "" and report["runtime"]["backend"] == ""
    assert any(m.startswith("mlx_lm: ") for m in report["runtime"]["missing"])


def test_what_an_import_prints_stays_off_the_report(python: Path, tmp_path: Path) -> None:
    """A package that writes to stdout (from Python and at the descriptor) while imported."""
    noisy = tmp_path / "shadow" / "jinja2"
    noisy.mkdir(parents=True)
    (noisy / "__init__.py").write_text(
        "import os\nprint('noise from print')\nos.write(1, b'noise from fd 1\\n')\n"
    )
    result = run_doctor(python, "--json", cwd=tmp_path, env=_env([noisy.parent]))
    parse_report(result)  # stdout is the report alone
    assert "noise from print" in result.stderr and "noise from fd 1" in result.stderr


def test_expect_gpu_warns_when_mlx_has_only_the_cpu(python: Path, tmp_path: Path) -> None:
    report = parse_report(run_doctor(python, "--json", "--quick", "--expect-gpu", cwd=tmp_path))
    mlx = checks_by_name(report)["mlx"]
    if report["runtime"]["backend"] == "cpu":
        assert mlx["status"] == "warn" and "GPU" in mlx["detail"] and mlx["fix"]
        assert report["ok"] is True  # a warning is not a failure: exit 0
    else:
        assert mlx["status"] == "ok"


@pytest.mark.parametrize(
    "args",
    [["--bogus"], ["--quick", "--model", "x.gguf"], ["--model", ""], ["--json", "extra"]],
)
def test_bad_usage_exits_2_without_a_report(python: Path, tmp_path: Path, args: list) -> None:
    result = run_doctor(python, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: python -m mlx_worker doctor" in result.stderr
    assert "Traceback" not in result.stderr
