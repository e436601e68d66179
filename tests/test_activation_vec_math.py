"""The CPU kernels' vectorised activation math (csrc/cpu/vec_math.h: expm1, tanh, erf for float)
seen through the paired first layer, against float64 (float) and extended-precision (double)
references over dense grids and at inf, -inf and NaN.

paired_first_layer(x, 0, None, 0, identity perm, act) computes act(x + 0 + 0) = act(x) exactly
(x + 0 is x), so its first N output rows are the activation itself: tanh gives tanh (expm1 for
positive arguments inside), elu with alpha = 1 gives expm1(x) for x < 0, gelu gives
x (1 + erf(x / sqrt 2)) / 2.

Stated bounds, asserted: tanh within 3 ulp (float and double), expm1 within 2 ulp (float and
double), float gelu within 1 eps x (|x| + |gelu(x)|) (erf within about 2 eps absolute; libm's erf
gives the same bound here), and within 2 ulp where erf is near x (small x)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infomax_ext import _ops

OPS = torch.ops.infomax_ext
pytestmark = pytest.mark.skipif(not _ops.extension_available(),
                                reason="the compiled extension is not built")


def kernel_activation(x: torch.Tensor, activation: str, param: float = 1.0) -> torch.Tensor:
    """activation(x) (1-D) as the paired first layer's CPU kernel computes it."""
    n = x.numel()
    a = x.reshape(n, 1)
    zero = torch.zeros_like(a)
    bias = torch.zeros(1, dtype=x.dtype)
    return OPS.paired_first_layer(a, zero, None, bias, torch.arange(n), activation,
                                  param)[:n].reshape(-1)


def ulps(got: torch.Tensor, want: np.ndarray, dtype: torch.dtype) -> float:
    """max |got - want| / (eps |want|) over entries with a normal reference."""
    got64 = got.numpy().astype(np.longdouble)
    tiny = torch.finfo(dtype).tiny
    keep = np.abs(want) >= tiny
    rel = np.abs(got64 - want)[keep] / np.abs(want)[keep]
    return float(rel.max() / torch.finfo(dtype).eps)


def extended(fn, x: torch.Tensor) -> np.ndarray:
    """fn on x in numpy's longdouble (x86's 80-bit format: 11 more bits than double)."""
    if np.finfo(np.longdouble).eps > 1e-18:
        pytest.skip("numpy's longdouble is no wider than double here: no reference")
    return fn(x.double().numpy().astype(np.longdouble))


def grid(lo: float, hi: float, dtype: torch.dtype) -> torch.Tensor:
    """A dense grid on [lo, hi] and the logarithmic one of each sign near 0, in dtype."""
    near0 = torch.logspace(-30, 0, 3001, dtype=torch.float64)
    return torch.cat([torch.linspace(lo, hi, 1_000_001, dtype=torch.float64), near0,
                      -near0]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_on_a_dense_grid(dtype):
    x = grid(-25.0, 25.0, dtype)
    got = kernel_activation(x, "tanh")
    assert ulps(got, extended(np.tanh, x), dtype) <= 3.0
    # saturation: exactly +-1 where tanh rounds to it
    big = torch.tensor([30.0, -30.0, 1e30, -1e30], dtype=dtype)
    assert kernel_activation(big, "tanh").tolist() == [1.0, -1.0, 1.0, -1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expm1_through_elu_on_a_dense_grid(dtype):
    x = grid(-60.0, -1e-30, dtype)
    x = x[x < 0]
    got = kernel_activation(x, "elu", 1.0)
    assert ulps(got, extended(np.expm1, x), dtype) <= 2.0
    # -1 exactly where expm1 rounds to it
    assert kernel_activation(torch.tensor([-60.0, -1e30], dtype=dtype), "elu").tolist() == [-1.0, -1.0]


def test_float_gelu_on_a_dense_grid():
    x = grid(-12.0, 12.0, torch.float32)
    got = kernel_activation(x, "gelu").double()
    want = F.gelu(x.double())
    eps = torch.finfo(torch.float32).eps
    scaled = (got - want).abs() / (eps * (x.double().abs() + want.abs()))
    assert scaled.max().item() <= 1.0
    small = x.abs() < 1e-2
    rel = ((got - want).abs() / want.abs())[small & (want != 0)]
    assert rel.max().item() <= 2 * eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_special_values(dtype):
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([inf, -inf, nan], dtype=dtype)
    tanh = kernel_activation(x, "tanh")
    assert tanh[:2].tolist() == [1.0, -1.0] and tanh[2].isnan()
    elu = kernel_activation(x, "elu")
    assert elu[:2].tolist() == [inf, -1.0] and elu[2].isnan()
    gelu = kernel_activation(x, "gelu")
    assert gelu[0].item() == inf and gelu[1:].isnan().all()  # -inf * 0 at -inf, as the formula
