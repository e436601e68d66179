#!/usr/bin/env bash
# Source builds as a new user meets them:
#  1. `pip install .` with pip's default build isolation (torch invisible to the build) fails
#     within seconds and says what to run;
#  2. a CUDA build of torch with INFOMAX_EXT_CUDA=OFF builds the CPU kernels (.venv-cuda, from
#     `make wheel-cuda`).
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "== pip install . with build isolation"
start=$SECONDS
if .venv/bin/python -m pip install --no-deps --config-settings=build-dir="$scratch/isolated" . \
    >"$scratch/isolated.log" 2>&1; then
  echo "an isolated build succeeded, but it cannot see torch" >&2; exit 1
fi
grep -q "pip install --no-build-isolation ." "$scratch/isolated.log" || {
  echo "the failed isolated build does not say what to run:" >&2; tail -30 "$scratch/isolated.log" >&2; exit 1; }
echo "   fails in $((SECONDS - start)) s with: $(grep -m1 'torch is not importable' "$scratch/isolated.log" | sed 's/^ *//')"

echo "== INFOMAX_EXT_CUDA=OFF with a CUDA build of torch"
start=$SECONDS
INFOMAX_EXT_CUDA=OFF .venv-cuda/bin/python -m pip wheel -q --no-build-isolation --no-deps \
  --config-settings=build-dir="$scratch/cpu-on-cuda-torch" -w "$scratch/wheel" . \
  >"$scratch/cpu-on-cuda-torch.log" 2>&1 || {
  echo "INFOMAX_EXT_CUDA=OFF did not build against the CUDA torch:" >&2
  tail -30 "$scratch/cpu-on-cuda-torch.log" >&2; exit 1; }
python3 -m zipfile -e "$scratch"/wheel/*.whl "$scratch/unpacked"
python3 - "$scratch/unpacked/infomax_ext/_build_info.json" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
assert info["cuda"] == "" and info["cuda_archs"] == "", info
print("   CPU kernels built against", info["torch"])
PY
ls "$scratch"/unpacked/infomax_ext/_C*.so >/dev/null
echo "   OK in $((SECONDS - start)) s"
