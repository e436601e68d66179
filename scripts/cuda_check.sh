#!/usr/bin/env bash
# Proves the CUDA build on a machine without a GPU: builds this package with its CUDA kernels
# against torch 2.14.1 (CUDA 13.0) in .venv-cuda, checks that every op has a CUDA kernel, and runs
# the test suite against that build (tests that need a GPU skip). On a machine with a GPU the
# same script runs the GPU tests too. Fixes this needs are in cmake/cuda.cmake and docs/cuda.md.
#
# Environment: TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), CMAKE_BUILD_PARALLEL_LEVEL (default: all
# cores), VENV (default .venv-cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
VENV=${VENV:-.venv-cuda}  # relative to the repository root
PY=$PWD/$VENV/bin/python
TORCH=torch==2.14.1

if [ ! -x "$PY" ] || ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.14.1')" 2>/dev/null; then
  echo "== creating $VENV with $TORCH (CUDA 13.0 build, about 1.5 min and 5.4 GB)"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q "$TORCH" "scikit-build-core>=0.10" pybind11 ninja pytest numpy \
    scikit-learn matplotlib tqdm
fi
"$PY" -c "import torch; assert torch.version.cuda, 'torch in $VENV is a CPU build'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

echo "== building infomax_ext with CUDA kernels (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0})"
export INFOMAX_EXT_CUDA=ON
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0}
export CMAKE_GENERATOR=Ninja
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
build_start=$SECONDS
# A build dir of its own: the CPU build (.venv, torch 2.13.0) keeps build/{wheel_tag}.
"$PY" -m pip install -q --no-build-isolation --no-deps \
  --config-settings=build-dir=build/cuda-{wheel_tag} .
echo "   built and installed in $((SECONDS - build_start)) s"

echo "== checking that every op has a CUDA kernel"
(cd /tmp && "$PY" - <<'PY'
import torch
import infomax_ext
assert infomax_ext.extension_available(), infomax_ext.extension_error()
ops = ["permutation_keys", "inverse_permutation", "paired_first_layer",
       "paired_first_layer_backward", "nwj_head", "nwj_head_backward", "nwj_bound",
       "nwj_bound_backward"]
has = torch._C._dispatch_has_kernel_for_dispatch_key
missing = [op for op in ops if not has(f"infomax_ext::{op}", "CUDA")]
assert not missing, f"no CUDA kernel for: {missing}"
# paired_linear is device-agnostic (ATen GEMMs + the ops above), with its autograd in C++.
assert has("infomax_ext::paired_linear", "CompositeExplicitAutograd")
for op in ["paired_first_layer", "paired_linear", "nwj_head", "nwj_bound"]:
    assert has(f"infomax_ext::{op}", "Autograd"), f"no C++ autograd for {op}"
print(f"   CUDA kernels registered for all {len(ops)} kernel ops, paired_linear composite; "
      f"GPU present: {torch.cuda.is_available()}")
PY
)

echo "== test suite against the CUDA build"
"$PY" -m pytest -q tests
echo "== cuda_check OK in $((SECONDS - start)) s"
