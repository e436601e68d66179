#!/usr/bin/env bash
# The compiled module of a wheel imports torch only through its stable C ABI: no mangled C++
# symbol of at::, c10:: or torch:: (nm -D), so the binary does not depend on one torch release.
set -euo pipefail
wheel=${1:?usage: abi_check.sh WHEEL}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m zipfile -e "$wheel" "$scratch"
so=$(ls "$scratch"/infomax_ext/_C*.so)
undefined=$(nm -D --undefined-only "$so")
cxx=$(echo "$undefined" | awk '{print $2}' | c++filt | grep -E '^(at|c10|torch)::|[^a-z_](at|c10|torch)::' || true)
if [ -n "$cxx" ]; then
  echo "$so imports C++ symbols of torch (not the stable ABI):" >&2
  echo "$cxx" | head -20 >&2
  exit 1
fi
torch_c=$(echo "$undefined" | awk '{print $2}' | grep -cE '^(aoti_torch_|torch_)' || true)
echo "abi check OK: $(basename "$so") imports $torch_c torch C functions (aoti_torch_*/torch_*) and no torch C++ symbol"
echo "$undefined" | awk '{print $2}' | grep -E '^(aoti_torch_|torch_)' | sed 's/^/   /'
