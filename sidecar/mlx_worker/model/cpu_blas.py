"""Makes MLX's CPU matrix products use OpenBLAS instead of the reference BLAS of mlx-cpu.

The ``mlx-cpu`` wheel links a reference BLAS (about 5 GFLOP/s for a 1024x1024 sgemm) and calls
``cblas_sgemm`` through the dynamic linker. A library loaded with ``RTLD_GLOBAL`` before
``libmlx`` comes first in symbol lookup, so an OpenBLAS loaded that way serves every float32
matrix product (over 100 GFLOP/s on two cores). With the 4-bit weights expanded to float32
(see ``dequantize``), decoding on a CPU is then about twice as fast as MLX's quantized kernels,
and batches gain much more.

The OpenBLAS comes from the ``ngsolve-openblas`` wheel (plain ``cblas_*`` symbol names; a
DYNAMIC_ARCH build). It needs ``libgfortran.so.5``, which a bare system may lack; the
libgfortran that ``mlx-cpu`` ships (under a hashed name) serves instead: the library is
loaded through symbolic links in a private temporary directory, where its ``$ORIGIN`` run
path finds the link named ``libgfortran.so.5``. The links are removed once loaded.

Call :func:`prepare_cpu_blas` before anything imports ``mlx.core`` (the engine's start-up
does, first thing). The first use of a name of :mod:`mlx_worker.model` (such as
``load_model``) calls it too, which helps only if ``mlx.core`` is not imported yet.
Environment variable ``MLX_SIDECAR_CPU_BLAS``: ``auto`` (default) loads OpenBLAS where
available, ``bundled`` never does. OpenBLAS runs on one thread unless
``OPENBLAS_NUM_THREADS`` says otherwise.

This module imports nothing of MLX.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ENV_VAR = "MLX_SIDECAR_CPU_BLAS"
OPENBLAS_PACKAGE = "ngsolve_openblas"

_active: str | None = None  # "openblas" once loaded here, "bundled" once given up


def find_openblas() -> Path | None:
    """The OpenBLAS shared library of the ``ngsolve-openblas`` package, if installed."""
    try:
        spec = importlib.util.find_spec(OPENBLAS_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if libs := sorted(Path(folder).glob("libopenblas*.so*")):
            return libs[0]
    return None


def _mlx_fortran_runtime() -> tuple[Path, list[Path]] | None:
    """mlx-cpu's own libgfortran and the libraries it needs (libquadmath), if present."""
    try:
        # Finding (not loading) the extension imports only the namespace package "mlx".
        spec = importlib.util.find_spec("mlx.core")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    libs = Path(spec.origin).parent.parent / "mlx_cpu.libs"
    gfortran = sorted(libs.glob("libgfortran*.so*"))
    if not gfortran:
        return None
    return gfortran[0], sorted(libs.glob("libquadmath*.so*"))


def _load(openblas: Path) -> None:
    runtime = _mlx_fortran_runtime()
    if runtime is None:  # rely on a system libgfortran.so.5
        ctypes.CDLL(str(openblas), mode=ctypes.RTLD_GLOBAL)
        return
    gfortran, others = runtime
    with tempfile.TemporaryDirectory(prefix="mlx-sidecar-blas-") as tmp:
        links = Path(tmp)
        (links / "libgfortran.so.5").symlink_to(gfortran)
        for lib in others:  # libgfortran's own needs, found through its $ORIGIN
            (links / lib.name).symlink_to(lib)
        (links / "libopenblas.so.0").symlink_to(openblas)
        ctypes.CDLL(str(links / "libopenblas.so.0"), mode=ctypes.RTLD_GLOBAL)


def _preloaded_openblas() -> bool:
    """Whether OpenBLAS came through LD_PRELOAD (set by a parent process)."""
    return "openblas" in os.environ.get("LD_PRELOAD", "").lower()


def prepare_cpu_blas(enable: bool = True) -> str:
    """Loads OpenBLAS for MLX's CPU backend if possible; returns the BLAS now in force.

    Must run before ``mlx.core`` is imported (afterwards it changes nothing and only
    reports). Returns "openblas" or "bundled". Safe to call more than once.
    """
    global _active
    if _active is not None:
        return _active
    if _preloaded_openblas():
        _active = "openblas"
        return _active
    choice = os.environ.get(ENV_VAR, "auto").strip().lower()
    if not enable or choice == "bundled" or not sys.platform.startswith("linux"):
        _active = "bundled"
        return _active
    if "mlx.core" in sys.modules:
        log.warning("mlx.core was imported before prepare_cpu_blas(); keeping its BLAS")
        _active = "bundled"
        return _active
    openblas = find_openblas()
    if openblas is None:
        log.info("package %s not installed; MLX keeps its bundled BLAS", OPENBLAS_PACKAGE)
        _active = "bundled"
        return _active
    # One thread unless the user says otherwise: with OpenBLAS's threads competing for a
    # small machine's cores (MLX's own thread, gRPC, other processes), a second thread made
    # decoding 20x slower when a core was busy; one thread is steady.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        _load(openblas)
    except OSError as e:
        log.warning("cannot load OpenBLAS %s: %s; MLX keeps its bundled BLAS", openblas, e)
        _active = "bundled"
        return _active
    _active = "openblas"
    return _active


def active_cpu_blas() -> str:
    """The BLAS serving MLX's CPU float32 matrix products: "openblas" or "bundled"."""
    if _active == "openblas" or _preloaded_openblas():
        return "openblas"
    return "bundled"
