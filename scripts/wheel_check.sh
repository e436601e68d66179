#!/usr/bin/env bash
# Proves "pip install from a wheel": builds the wheel with the dev venv, installs it into a fresh
# venv with torch 2.13.0 only, and checks the compiled ops load and compute.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf wheelhouse /tmp/infomax-wheel-venv
.venv/bin/python -m pip wheel -q --no-build-isolation --no-deps -w wheelhouse .
python3 -m venv /tmp/infomax-wheel-venv
/tmp/infomax-wheel-venv/bin/pip install -q torch==2.13.0 numpy
/tmp/infomax-wheel-venv/bin/pip install -q --no-deps wheelhouse/infomax_ext-*.whl
unzip -l wheelhouse/infomax_ext-*.whl | grep -q "infomax_ext/_C" || { echo "wheel lacks infomax_ext/_C"; exit 1; }
cd /tmp && /tmp/infomax-wheel-venv/bin/python - <<'PY'
import warnings
warnings.simplefilter("error", RuntimeWarning)  # a failed load of _C warns: make it fatal here
import torch
import infomax_ext as im
assert im.extension_available(), im.extension_error()
assert im.backend("cpu") == "compiled"
torch.manual_seed(0)
mi = im.MutualInfoChain.from_sizes(8, 2, [16], [torch.relu])
x, z = torch.randn(32, 8), torch.randn(32, 2)
fused = im.variational_mutual_info(mi, x, z, seed=3)
z_shuffle = im.shuffle_latent(z, seed=3)
plain = mi(x, z).mean() - torch.exp(mi(x, z_shuffle) - 1).mean()
assert torch.allclose(fused, plain, atol=1e-5), (fused, plain)
print("wheel OK:", im.__file__, float(fused.detach()))
PY
