"""The CPU fast path: OpenBLAS really serves MLX's sgemm, and float32 weights give the same
greedy tokens as the stock quantized path. Each case runs in a fresh process, because the BLAS
is chosen before MLX is first imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_worker.model.cpu_blas import find_openblas

SIDECAR_DIR = Path(__file__).resolve().parents[1]

needs_openblas = pytest.mark.skipif(
    find_openblas() is None or not sys.platform.startswith("linux"),
    reason="ngsolve-openblas is not installed (Linux x86-64 only)",
)


def _python(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    full_env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_DEBUG")}
    full_env |= {"PYTHONPATH": str(SIDECAR_DIR), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@needs_openblas
def test_openblas_serves_mlx_sgemm(tmp_path: Path) -> None:
    """The dynamic linker binds libmlx's cblas_sgemm to OpenBLAS (its own debug log says so)."""
    log = tmp_path / "ld"
    code = (
        "from mlx_worker.model.cpu_blas import prepare_cpu_blas\n"
        "print(prepare_cpu_blas())\n"
        "import mlx.core as mx\n"
        "a = mx.ones((64, 64)); mx.eval(a @ a)\n"
    )
    out = _python(code, {"LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": str(log)})
    assert out.strip() == "openblas"
    bindings = "".join(p.read_text(errors="replace") for p in tmp_path.glob("ld*"))
    sgemm = [line for line in bindings.splitlines() if "`cblas_sgemm'" in line]
    assert sgemm, "no binding of cblas_sgemm logged"
    assert all("libmlx" in line and "openblas" in line for line in sgemm), sgemm


def test_bundled_when_disabled() -> None:
    code = (
        "from mlx_worker.model.cpu_blas import prepare_cpu_blas, active_cpu_blas\n"
        "a = prepare_cpu_blas(enable=False)\n"
        "import sys; print('mlx.core' in sys.modules)\n"  # cpu_blas imports no MLX
        "from mlx_worker.model import load_model\n"  # must not load it behind our back
        "print(a, prepare_cpu_blas(), active_cpu_blas())\n"
    )
    assert _python(code).split() == ["False", "bundled", "bundled", "bundled"]
    code = "from mlx_worker.model.cpu_blas import prepare_cpu_blas\nprint(prepare_cpu_blas())\n"
    assert _python(code, {"MLX_SIDECAR_CPU_BLAS": "bundled"}).strip() == "bundled"


def test_too_late_after_mlx_import() -> None:
    code = (
        "import mlx.core\n"
        "from mlx_worker.model.cpu_blas import prepare_cpu_blas\n"
        "print(prepare_cpu_blas())\n"
    )
    assert _python(code).strip() == "bundled"


@needs_openblas
@pytest.mark.default_model
def test_fast_path_gives_the_same_greedy_tokens(tmp_path: Path) -> None:
    """Default model: stock (quantized, bundled BLAS) vs fast (float32 on OpenBLAS)."""
    code = f"""
import json
from mlx_worker.model import load_model  # first: picks the BLAS before MLX loads
import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache
m = load_model(None, cache_dir={str(tmp_path)!r})
tok = m.tokenizer
out = {{"blas": m.description.cpu_blas, "dequantized": m.description.dequantized, "tokens": []}}
for q in ["What is the capital of France?", "Write a haiku about the sea."]:
    ids = tok.encode(tok.apply_chat_template([{{"role": "user", "content": q}}]), False)
    cache = make_prompt_cache(m.model)
    x, got = mx.array([ids]), []
    for _ in range(12):
        got.append(int(mx.argmax(m.model(x, cache=cache)[0, -1]).item()))
        x = mx.array([[got[-1]]])
    out["tokens"].append(got)
print(json.dumps(out))
"""
    stock = json.loads(_python(code, {"MLX_SIDECAR_CPU_BLAS": "bundled"}))
    fast = json.loads(_python(code))
    assert (stock["blas"], stock["dequantized"]) == ("bundled", False)
    assert (fast["blas"], fast["dequantized"]) == ("openblas", True)
    assert fast["tokens"] == stock["tokens"]
