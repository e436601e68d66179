"""Every MI bound reduces in float32 for bfloat16 and float16 scores (bounds.as_reduction_dtype).

Under CPU bfloat16 autocast the bound of each bound and each way of drawing negatives is float32
and within bfloat16 tolerance of the float32 run; float16 scores whose exponentials overflow
float16 give the float32 answer; torch.compile(fullgraph=True) traces each bound under autocast.
"""
from __future__ import annotations

import math

import pytest
import torch

import infomax_ext as im
from infomax_ext.bounds import off_diagonal

# (bound, negatives): infonce needs every pair.
CASES = [(name, negatives) for name in im.BOUNDS for negatives in ("shuffle", "all")
         if not (name == "infonce" and negatives == "shuffle")]
RTOL, ATOL = 5e-2, 5e-3  # bfloat16 keeps 8 significant bits; atol relative to the magnitude


def small_chain(seed: int = 0) -> im.MutualInfoChain:
    torch.manual_seed(seed)
    return im.MutualInfoChain.from_sizes(8, 2, [16, 16], [torch.relu, torch.tanh])


def correlated_batch(n: int = 32, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    z = x[:, :2] + 0.5 * torch.randn(n, 2, generator=g)
    return x, z


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, factor: float = 1.0) -> None:
    scale = max(1.0, float(want.detach().abs().max()))
    torch.testing.assert_close(got.double(), want.double(), rtol=RTOL * factor,
                               atol=ATOL * factor * scale)


@pytest.mark.parametrize("name,negatives", CASES)
def test_bound_under_bfloat16_autocast_is_float32_and_tracks_float32(name, negatives):
    mi = small_chain()
    x, z = correlated_batch()
    want = im.variational_mutual_info(mi, x, z, seed=5, bound=name, negatives=negatives)
    want_grads = torch.autograd.grad(want, list(mi.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = im.variational_mutual_info(mi, x, z, seed=5, bound=name, negatives=negatives)
    assert got.dtype == torch.float32, f"{name}/{negatives}: bound is {got.dtype}"
    assert want.dtype == torch.float32
    assert_close_scaled(got, want)
    got_grads = torch.autograd.grad(got, list(mi.parameters()))
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == torch.float32  # the parameters' dtype
        assert_close_scaled(g, w, factor=2.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", [n for n in im.BOUNDS if n != "infonce"])
def test_reduced_precision_scores_reduce_in_float32(name, dtype):
    """On scores already rounded to ``dtype`` the bound equals the float64 evaluation of the
    same numbers (float32 accuracy), is float32, and the gradient comes back in ``dtype``."""
    g = torch.Generator().manual_seed(1)
    joint = (torch.randn(40, generator=g) + 1).to(dtype).requires_grad_()
    negatives = torch.randn(90, generator=g).to(dtype).requires_grad_()
    bound = im.BOUNDS[name]
    got = bound(joint, negatives)
    assert got.dtype == torch.float32
    want = bound(joint.detach().double(), negatives.detach().double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    gj, gm = torch.autograd.grad(got, [joint, negatives])
    assert gj.dtype == dtype and gm.dtype == dtype
    j64 = joint.detach().double().requires_grad_()
    m64 = negatives.detach().double().requires_grad_()
    wj, wm = torch.autograd.grad(bound(j64, m64), [j64, m64])
    # the gradient is rounded to dtype once on its way back
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
    torch.testing.assert_close(gj.double(), wj, rtol=tol, atol=tol * float(wj.abs().max()))
    torch.testing.assert_close(gm.double(), wm, rtol=tol, atol=tol * float(wm.abs().max()))


@pytest.mark.parametrize("name", list(im.BOUNDS))
def test_infonce_and_all_pairs_on_a_reduced_precision_matrix_are_float32(name):
    g = torch.Generator().manual_seed(2)
    scores = (torch.randn(12, 12, generator=g) * 2).to(torch.bfloat16)
    got = im.BOUNDS[name].from_matrix(scores)
    assert got.dtype == torch.float32
    s64 = scores.double()
    if name == "infonce":
        want = (torch.diagonal(s64) - torch.logsumexp(s64, 1)).mean() + math.log(12)
    else:
        want = im.BOUNDS[name](torch.diagonal(s64), off_diagonal(s64))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def brute_force_value(name: str, joint: torch.Tensor, negatives: torch.Tensor) -> float:
    """The value of each bound in float64, written out."""
    j, m = joint.double(), negatives.double()
    if name == "nwj":
        return float(j.mean() - torch.exp(m - 1).mean())
    if name == "js":
        return float(j.mean() + 1 - torch.exp(m).mean())
    if name == "dv":
        return float(j.mean() - torch.log(torch.exp(m).mean()))
    assert name == "smile"
    return float(j.mean() - torch.log(torch.exp(m.clamp(-5, 5)).mean()))


@pytest.mark.parametrize("path", ["auto", "reference"])  # the kernels and their twins
@pytest.mark.parametrize("name", [n for n in im.BOUNDS if n != "infonce"])
def test_float16_scores_near_15_give_the_float32_answer(name, path):
    """exp(15) = 3.3e6 overflows float16 (max 65504): the bound must still be finite and equal
    the float32 one wherever that is finite (JS: about -3.27e6)."""
    joint = torch.full((16,), 15.0, dtype=torch.float16)
    negatives = torch.linspace(14.0, 15.5, 48).to(torch.float16)
    with im.use_path(path):
        got = im.BOUNDS[name](joint, negatives)
    want = im.BOUNDS[name](joint.float(), negatives.float())
    assert torch.isfinite(want)
    assert torch.isfinite(got), f"{name}: {got}"
    assert got.dtype == torch.float32
    ref = brute_force_value(name, joint, negatives)
    assert float(got) == pytest.approx(ref, rel=1e-5, abs=1e-4)
    if name == "js":  # every score at 15: 16 - exp(15), about -3.27e6
        at_15 = im.BOUNDS[name](joint, torch.full((8,), 15.0, dtype=torch.float16))
        assert float(at_15) == pytest.approx(16 - math.exp(15), rel=1e-6)


def test_infonce_float16_rows_near_15_are_finite():
    scores = (torch.full((8, 8), 15.0) + torch.eye(8)).to(torch.float16)
    got = im.BOUNDS["infonce"].from_matrix(scores)
    s = scores.double()
    want = (torch.diagonal(s) - torch.logsumexp(s, 1)).mean() + math.log(8)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert float(got) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("name,negatives", CASES)
def test_torch_compile_fullgraph_under_autocast(name, negatives):
    mi = small_chain(1)
    x, z = correlated_batch(16, seed=4)

    def value_of(chain: torch.nn.Module, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return im.variational_mutual_info(chain, x, z, seed=5, bound=name,
                                              negatives=negatives)

    eager = value_of(mi, x, z)
    torch._dynamo.reset()
    compiled = torch.compile(value_of, fullgraph=True)(mi, x, z)
    assert compiled.dtype == torch.float32
    torch.testing.assert_close(compiled, eager, rtol=1e-2, atol=1e-2)
    eager_grads = torch.autograd.grad(eager, list(mi.parameters()))
    compiled_grads = torch.autograd.grad(compiled, list(mi.parameters()))
    for g, w in zip(compiled_grads, eager_grads):
        assert g.dtype == torch.float32
        assert_close_scaled(g, w)


@pytest.mark.parametrize("r,c,offset", [(5, 5, 0), (3, 9, 0), (3, 9, 4), (3, 9, 6), (1, 4, 3),
                                        (2, 2, 0)])
def test_off_diagonal_rows_without_a_mask_equal_the_masked_entries(r, c, offset):
    """The static-shape extraction (views and a pad, fit for fullgraph compile) picks exactly
    the entries a boolean mask keeps, in row order, with the identity gradient."""
    from infomax_ext.bounds import _off_diagonal_at

    rows = torch.randn(r, c, dtype=torch.float64, requires_grad=True)
    keep = torch.ones(r, c, dtype=torch.bool)
    keep[torch.arange(r), torch.arange(r) + offset] = False
    assert torch.equal(_off_diagonal_at(rows, offset), rows[keep])
    assert torch.autograd.gradcheck(lambda t: _off_diagonal_at(t, offset), (rows,))


@pytest.mark.parametrize("path", im.PATHS)
def test_a_float16_chain_with_large_scores_gives_a_finite_float32_bound_on_every_path(path):
    """The chain's own NWJ value (critic_head's, or its twin's on the reference path) reduces
    float16 scores in float32 too: shuffled scores near 13 would overflow exp in float16."""
    mi = small_chain().half()
    head = [m for m in mi.mlp if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias.fill_(13.0)
        head.weight.mul_(0.01)
    x, z = correlated_batch(8)
    perm = im.latent_permutation(8, 1, seed=1)
    with im.use_path(path):
        got = im.paired_mutual_info(mi, x.half(), z.half(), perm)
    assert got.bound.dtype == torch.float32 and torch.isfinite(got.bound)
    want = got.joint.double().mean() - torch.exp(got.shuffled.double() - 1).mean()
    assert float(got.bound) == pytest.approx(float(want), rel=1e-5)
