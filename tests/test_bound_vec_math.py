"""The CPU kernels' vectorised math (csrc/cpu/vec_math.h) seen through mi_bound, against float64
(float scores) and extended-precision (double scores) references over dense grids, the
subnormal range, and inf, -inf and NaN.

exp: mi_bound_backward of dv given log_sum_exp = (0, 0) and grad_value = -1 returns exp(t_k)
itself for every negative (-g exp((t - 0) - 0) * 1, exact operations around the exp), through
the vectorised loop (many scores). sigmoid: the JS objective's gradient with grad = -K (K a
power of 2) is K sigmoid(t) / K, exact. softplus: the JS objective of one joint score of 1e30
and one negative is -softplus(t) (the joint term is -0).

Stated bounds, asserted: exp within 1.2e-7 relative (float, about 1 ulp; measured 0.71 ulp) and
2.3e-16 (double, about 1 ulp; measured 0.67 ulp) for normal results, within one subnormal ulp
below, inf / 0 exactly where the exact value overflows / rounds to 0, NaN for NaN."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infomax_ext import _ops

OPS = torch.ops.infomax_ext
pytestmark = pytest.mark.skipif(not _ops.extension_available(),
                                reason="the compiled extension is not built")
FLOAT_EXP_REL = 1.2e-7
DOUBLE_EXP_REL = 2.3e-16


def kernel_exp(t):
    """exp(t) (1-D) as the CPU kernels compute it."""
    g = torch.tensor(-1.0, dtype=t.dtype)
    zero = torch.zeros(2, dtype=t.dtype)
    return OPS.mi_bound_backward.default(g, None, t[:1], t, "dv", 0.0, zero)[1]


def test_float_exp_on_a_dense_grid():
    t = torch.cat([torch.linspace(-104.0, 89.0, 1_000_001, dtype=torch.float64),
                   torch.linspace(-1e-3, 1e-3, 10_001, dtype=torch.float64)]).float()
    got, want = kernel_exp(t).double(), torch.exp(t.double())
    tiny = torch.finfo(torch.float32).tiny
    normal = (want >= tiny) & (want <= torch.finfo(torch.float32).max)
    rel = ((got - want).abs() / want)[normal]
    assert rel.max().item() <= FLOAT_EXP_REL
    sub = want < tiny
    assert sub.any() and ((got - want).abs()[sub] <= 2.0 ** -149).all()
    # overflow and underflow exactly where float's exp has them
    ref = torch.exp(t)
    assert torch.equal(torch.isinf(kernel_exp(t)), torch.isinf(ref))
    assert torch.equal(kernel_exp(t) == 0, ref == 0)


def test_double_exp_on_a_dense_grid():
    if np.finfo(np.longdouble).eps > 1e-18:
        pytest.skip("numpy's longdouble is no wider than double here: no reference")
    t = torch.cat([torch.linspace(-746.0, 710.0, 1_000_001, dtype=torch.float64),
                   torch.linspace(-1e-3, 1e-3, 10_001, dtype=torch.float64)])
    got = kernel_exp(t).numpy().astype(np.longdouble)
    with np.errstate(over="ignore"):
        want = np.exp(t.numpy().astype(np.longdouble))
    tiny, top = np.finfo(np.float64).tiny, np.finfo(np.float64).max
    normal = (want >= tiny) & (want <= top)
    assert (np.abs(got - want)[normal] / want[normal]).max() <= DOUBLE_EXP_REL
    sub = want < tiny
    assert sub.any() and (np.abs(got - want)[sub] <= np.longdouble(2.0) ** -1074).all()
    with np.errstate(over="ignore"):
        ref = torch.exp(t)
    assert torch.equal(torch.isinf(kernel_exp(t)), torch.isinf(ref))
    assert torch.equal(kernel_exp(t) == 0, ref == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_of_special_values(dtype):
    info = torch.finfo(dtype)
    t = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, info.tiny, -info.tiny, 1.0, -1.0,
                      88.72283172607421875, 88.72283935546875, -103.97, -103.98, -87.3, 709.78,
                      709.79, -745.1, -745.2, -708.4, 1e6, -1e6], dtype=dtype)
    got, want = kernel_exp(t), torch.exp(t)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.equal(got == 0, want == 0)
    finite = torch.isfinite(want) & (want > 0)
    rel = ((got - want).abs() / want)[finite & (want >= info.tiny)]
    assert rel.max().item() <= (FLOAT_EXP_REL if dtype == torch.float32 else 3e-16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigmoid_of_the_js_gradient(dtype):
    """softplus' = sigmoid (1 above 20, torch's threshold), within 2 roundings."""
    k = 2 ** 17
    t = torch.linspace(-120.0, 120.0, k, dtype=torch.float64).to(dtype)
    t[:4] = torch.tensor([20.0, 20.5, -math.inf, math.inf])
    g = torch.tensor(-float(k), dtype=dtype)
    gn = OPS.mi_bound_backward.default(None, g, t[:1], t, "js", 0.0, None)[1].double()
    td = t.double()
    want = torch.where(td > 20, torch.ones_like(td), torch.sigmoid(td))
    eps = torch.finfo(dtype).eps
    assert ((gn - want).abs() <= 2 * eps * want + torch.finfo(dtype).tiny).all()
    nan = torch.tensor([math.nan, 0.0], dtype=dtype)
    assert torch.isnan(OPS.mi_bound_backward.default(None, g, nan, nan, "js", 0.0, None)[1][0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softplus_of_the_js_objective(dtype):
    """softplus within 2 roundings (log1p's precision for small values), x itself above 20,
    NaN for NaN."""
    values = torch.cat([torch.linspace(-90.0, 30.0, 601, dtype=torch.float64),
                        torch.tensor([-1e-8, 0.0, 1e-8, 20.0, 20.25, -math.inf, math.inf])])
    joint = torch.tensor([1e30], dtype=dtype)
    got = torch.stack([-OPS.mi_bound.default(joint, v.reshape(1).to(dtype), "js", 0.0)[1]
                       for v in values]).double()
    td = values.to(dtype).double()
    want = F.softplus(td)  # float64: x itself above 20 as the kernels
    eps = torch.finfo(dtype).eps
    finite = torch.isfinite(want)
    tol = 2 * eps * want.abs()[finite] + torch.finfo(dtype).tiny
    assert ((got - want).abs()[finite] <= tol).all()
    assert torch.equal(got[~finite], want[~finite])  # softplus(inf) = inf
    nan = OPS.mi_bound.default(joint, torch.tensor([math.nan], dtype=dtype), "js", 0.0)[1]
    assert torch.isnan(nan)
