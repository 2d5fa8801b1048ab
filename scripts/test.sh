#!/usr/bin/env bash
# Runs every test and check of mlx-sidecar, from a fresh clone: it installs what the tests need
# (the worker's Python environment in .venv with the default model, and the Rust dependencies).
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    skip the slow end-to-end tests on the default model
#
# Steps: Python env → proto stubs in sync → ruff → pytest (real worker, real MLX) →
#        cargo fmt → clippy → cargo doc → cargo test (real supervisor, real worker, real MLX) →
#        the daemon (`mlx-sidecar serve`) with third-party clients (openai, curl, prometheus-client,
#        grpcio-reflection).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1

step() { printf '\n==> %s\n' "$*"; }
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step "worker environment (.venv)"
scripts/install-worker.sh --dev .venv
export MLX_SIDECAR_PYTHON="$PWD/.venv/bin/python"
# Model conversions made by the tests land here, not in the user's cache.
export MLX_SIDECAR_CACHE_DIR="${MLX_SIDECAR_CACHE_DIR:-$PWD/target/test-cache}"
mkdir -p "$MLX_SIDECAR_CACHE_DIR"

step "python stubs match proto/"
PYTHON=.venv/bin/python scripts/gen-proto.sh --check

step "ruff"
.venv/bin/ruff check sidecar scripts tests/daemon
.venv/bin/ruff format --check sidecar scripts tests/daemon

step "pytest"
pytest_args=()
[ "$quick" = 1 ] && pytest_args+=(-m "not default_model")
(cd sidecar && ../.venv/bin/python -m pytest -q "${pytest_args[@]}")

step "cargo fmt"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "cargo test"
test_env=()
[ "$quick" = 1 ] && test_env+=(MLX_SIDECAR_SKIP_DEFAULT_MODEL=1)
env "${test_env[@]}" cargo test --workspace --locked -- --test-threads=2

step "daemon, with third-party clients"
# The real `mlx-sidecar serve` on the tiny model; curl comes with Debian and macOS.
cargo build -p mlx-sidecar-cli --locked
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
(MLX_SIDECAR_BIN="$target_dir/debug/mlx-sidecar" .venv/bin/python -m pytest -q tests/daemon)

step "all tests passed"
