#!/usr/bin/env bash
# One prepared session on a lent GPU machine (H100/H200, the image's python3 with its own torch):
# build with the CUDA kernels (sm_90 only), GPU tests, compute-sanitizer, the CUDA benchmark
# (reduced sizes), then the CPU test suite with the time left (SKIP=cpu_tests: CI runs it). Logs and JSON go to $OUT
# (default ./gpu-out; at most 8 files come back). Each step is time-boxed; the whole script
# stays under $BUDGET seconds. SKIP="test_cuda memcheck" skips steps; BENCH_SIZES sets the N list.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
BUDGET=${BUDGET:-540}
DEADLINE=$((SECONDS + BUDGET))
export PYTHONUNBUFFERED=1
left() { echo $((DEADLINE - SECONDS)); }
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local rest; rest=$(left)
  (( limit > rest )) && limit=$rest
  if (( limit < 10 )); then echo "== $name: skipped (no time left)"; return 0; fi
  if [[ " ${SKIP:-} " == *" $name "* ]]; then echo "== $name: skipped (SKIP)"; return 0; fi
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  echo "   $name: rc=$rc in $((SECONDS - t0)) s"; tail -n 4 "$OUT/$name.log" | sed 's/^/   | /'
  return $rc
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, sys; print(sys.version); print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
  command -v nvcc cmake ninja compute-sanitizer; nvcc --version | tail -1; cmake --version | head -1
} >"$OUT/env.log" 2>&1
cat "$OUT/env.log"

# The kernels: a wheel carried in .gpu/ (built here by `INFOMAX_EXT_CUDA_ARCHS=90-real bash
# scripts/build_wheel.sh cu130`, the release build) if it loads, else a source build (sm_90 only).
check_kernels() {  # every non-composite op of the namespace has a CUDA kernel
  (cd /tmp && INFOMAX_EXT_REQUIRE_COMPILED=1 python3 -c "
import torch, infomax_ext as im
has = torch._C._dispatch_has_kernel_for_dispatch_key
ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith('infomax_ext::'))
composite = [o for o in ops if has(o, 'CompositeExplicitAutograd')]
missing = [o for o in ops if o not in composite and not has(o, 'CUDA')]
assert ops and not missing, missing
print(len(ops) - len(composite), 'ops with CUDA kernels; build_info', im.build_info())
")
}
export -f check_kernels
wheel=$(ls .gpu/infomax_ext-*+cu130-*.whl 2>/dev/null | head -1)
if [ -n "$wheel" ] && step env 60 python3 -m pip install --no-deps --no-index --force-reinstall "$wheel" \
   && step env 30 bash -c check_kernels; then
  echo "   using the carried wheel $wheel"
else
  # Python headers: the image's may lack Python.h; a carried copy (.gpu/python-include) stands in.
  extra=()
  inc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  if [ ! -f "$inc/Python.h" ] && [ -f .gpu/python-include/Python.h ]; then
    extra=(-C "cmake.define.Python_INCLUDE_DIR=$PWD/.gpu/python-include")
    echo "   using carried Python headers"
  fi
  export INFOMAX_EXT_CUDA=ON INFOMAX_EXT_CUDA_ARCHS=90-real CMAKE_BUILD_PARALLEL_LEVEL=16 CMAKE_GENERATOR=Ninja
  export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
  step build 300 python3 -m pip install -v --no-build-isolation --no-deps "${extra[@]}" . || {
    grep -n "error" "$OUT/build.log" | head -20; exit 1; }
  step env 30 bash -c check_kernels || exit 1
fi

# Every test that runs on CUDA: tests/test_cuda.py and the "cuda" cases of the op, precision and
# transform tests (-k cuda: the marker or the parameter id), in parallel (pytest-xdist).
step test_cuda 200 python3 -m pytest -q -k cuda -n ${XDIST:-8} -p no:cacheprovider tests/test_cuda.py \
  tests/test_bound_op.py tests/test_infonce_op.py tests/test_bernoulli_op.py tests/test_mixed_precision.py \
  tests/test_transforms.py -rfEs --durations=8

# The training command end to end on the GPU (digits, a few epochs, beside a plain VAE).
step train 90 bash -c 'cd /tmp && python3 -m infomax_ext train --device cuda --epochs 10 \
  --out /tmp/gpu-run --no-plots --compare-vae --quiet && ls /tmp/gpu-run'

# compute-sanitizer: no caching allocator, so out-of-bounds accesses hit real allocation edges.
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
step memcheck 100 "$SANITIZER" --tool memcheck --error-exitcode 9 \
  python3 -m pytest -q -x -p no:cacheprovider tests/test_mixed_precision.py tests/test_bound_op.py \
  tests/test_infonce_op.py tests/test_bernoulli_op.py tests/test_cuda.py \
  -k "(shapes and float32) or (float32_within and cuda) or (cuda and matches_float32 and bfloat16)"
step racecheck 45 "$SANITIZER" --tool racecheck --error-exitcode 9 \
  python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py -k "nwj_bound_matches_cpu or (critic_head_shapes and 12000 and float32)"
unset PYTORCH_NO_CUDA_MEMORY_CACHING

step bench 240 python3 bench/bench_cuda.py --sizes "${BENCH_SIZES:-64,1024,16384}" --chains P,T \
  --roofline-sizes 1024,16384 --autocast-sizes "${AUTOCAST_SIZES:-1024,16384}" --rounds 30 \
  --out "$OUT/cuda.json"

# A C++ error raised by a CPU op must come back as a RuntimeError (seen: a segfault in one image).
step env 30 bash -c 'cd /tmp && python3 -X faulthandler -c "
import torch, infomax_ext
ops = torch.ops.infomax_ext
for name, call in [(\"nwj_bound (checks.h)\", lambda: ops.nwj_bound(torch.ones(2, 2), torch.ones(2))),
                   (\"inverse_permutation (cpu)\", lambda: ops.inverse_permutation(torch.tensor([0, 0, 1])))]:
    try:
        call()
    except RuntimeError as e:
        print(name, \"raised RuntimeError:\", str(e).splitlines()[0])
"'

step cpu_tests 400 python3 -m pytest -q -p no:cacheprovider tests --ignore=tests/test_cuda.py
echo "== done in $SECONDS s"
cat "$OUT/bench.log" 2>/dev/null | tail -40
