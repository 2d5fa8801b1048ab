"""Which BLAS serves MLX's CPU matrix products (filled in by the CPU speed work)."""

from __future__ import annotations


def active_cpu_blas() -> str:
    """ "openblas" when OpenBLAS serves cblas_sgemm, else "bundled"."""
    return "bundled"
