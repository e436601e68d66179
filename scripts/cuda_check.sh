#!/usr/bin/env bash
# Proves the CUDA wheel on a machine without a GPU: installs the +cu130 wheel of dist/ (built
# against torch 2.14.1, CUDA 13.0, by `make wheel-cuda`) into .venv-cuda, checks that it uses only
# the stable ABI and that every op of the namespace has a CUDA kernel, and runs the op tests on
# it (tests that need a GPU skip; on a machine with a GPU they run).
set -euo pipefail
# The op tests (every kernel, its checks, opcheck, autocast, the package's loading; the CUDA cases
# run where a GPU is present): the Python layer above the ops is the same as the +cpu wheel's,
# whose whole suite wheel-check runs on torch 2.14.1.
cd "$(dirname "$0")/.."
source scripts/op_tests.sh
OP_TESTS="$OP_TESTS tests/test_cuda.py"
start=$SECONDS
py=$PWD/.venv-cuda/bin/python
wheel=$(ls dist/infomax_ext-*+cu130-*.whl)
bash scripts/abi_check.sh "$wheel"
bash scripts/manylinux_check.sh "$wheel" manylinux_2_28_x86_64 "$py"
"$py" -m pip install -q --no-deps --force-reinstall "$wheel"

echo "== every op has a CUDA kernel"
(cd "$(mktemp -d)" && INFOMAX_EXT_REQUIRE_COMPILED=1 "$py" - <<'PY'
import torch
import infomax_ext as im

info = im.build_info()
assert info["cuda"] == torch.version.cuda and info["cuda_archs"], info
has = torch._C._dispatch_has_kernel_for_dispatch_key
ops = sorted(name for name in torch._C._dispatch_get_all_op_names()
             if name.startswith("infomax_ext::"))
composite = [op for op in ops if has(op, "CompositeExplicitAutograd")]
missing = [op for op in ops if op not in composite and not has(op, "CUDA")]
assert ops and not missing, f"no CUDA kernel for: {missing}"
no_autograd = [op for op in ["infomax_ext::paired_first_layer", "infomax_ext::paired_linear",
                             "infomax_ext::critic_head", "infomax_ext::nwj_bound"]
               if not has(op, "Autograd")]
assert not no_autograd, f"no autograd formula for: {no_autograd}"
print(f"   {len(ops) - len(composite)} ops with CUDA kernels, composite: {composite}; "
      f"architectures {info['cuda_archs']}; GPU present: {torch.cuda.is_available()}")
PY
)

echo "== op tests against the CUDA wheel"
INFOMAX_EXT_REQUIRE_COMPILED=1 "$py" -m pytest -q -p no:cacheprovider $OP_TESTS
echo "== cuda_check OK in $((SECONDS - start)) s"
