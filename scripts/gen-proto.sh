#!/usr/bin/env bash
# Generates the Python gRPC stubs for proto/mlx_sidecar/v1 into sidecar/mlx_sidecar/v1.
# The Rust side generates its own code in crates/mlx-sidecar-proto/build.rs.
#   scripts/gen-proto.sh          regenerate
#   scripts/gen-proto.sh --check  fail if the committed stubs differ from the proto
# Needs grpcio-tools (in the worker's dev requirements). PYTHON selects the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=sidecar
check=0
if [ "${1:-}" = "--check" ]; then
  check=1
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out/mlx_sidecar/v1"
"$python" -m grpc_tools.protoc -I proto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/mlx_sidecar/v1/*.proto
for d in "$out/mlx_sidecar" "$out/mlx_sidecar/v1"; do
  [ -f "$d/__init__.py" ] || printf '"""Generated from proto/ by scripts/gen-proto.sh; do not edit."""\n' >"$d/__init__.py"
done
if [ "$check" = 1 ]; then
  for f in "$out"/mlx_sidecar/v1/*.py "$out"/mlx_sidecar/v1/*.pyi; do
    if ! cmp -s "$f" "sidecar/mlx_sidecar/v1/$(basename "$f")"; then
      echo "sidecar/mlx_sidecar/v1/$(basename "$f") is out of date: run scripts/gen-proto.sh" >&2
      exit 1
    fi
  done
  echo "python stubs match proto/"
fi
