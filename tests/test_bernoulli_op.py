"""The compiled Bernoulli log-likelihood ``torch.ops.infomax_ext.bernoulli_loglik``
(csrc/bernoulli.h, csrc/cpu/bernoulli_cpu.cpp, csrc/cuda/bernoulli_cuda.cu,
python/infomax_ext/bernoulli_op.py): values and both gradients against the plain formula in
float64 and float32 (a tolerance scaled with the terms), the vectorised logs within 2 ulp over the
clamp's range, hand-derived numbers, the clamp's ends and NaN as torch.clamp's gradient gives
them, gradcheck, opcheck, the same bits at any thread count, errors before any kernel, and
decoder_loglikelihood taking the op."""
import math

import pytest
import torch
from torch import nn

import infomax_ext as im
from infomax_ext import bernoulli_op, reference
from infomax_ext.vae_outputs import BernoulliOutput

OPS = torch.ops.infomax_ext
F64 = torch.float64
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])]
# (S, N, D): one entry; S = 3 blocks; rows longer than one block of 512 terms; many short rows
SIZES = [(1, 1, 1), (3, 4, 7), (2, 3, 1100), (1, 300, 5)]


def sample(device, dtype=F64, requires_grad=False, seed=5):
    """(p, x) per size: p in (0, 1) with some entries at and beyond the clamp's ends."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s, n, d in SIZES:
        p = torch.rand(s * n, d, generator=g, dtype=F64)
        x = torch.rand(n, d, generator=g, dtype=F64)
        if p.numel() > 8:
            p.view(-1)[:4] = torch.tensor([0.0, 1.0, 1e-30, 1 - 1e-30], dtype=F64)
        out.append((p.to(device, dtype).requires_grad_(requires_grad),
                    x.to(device, dtype).requires_grad_(requires_grad)))
    return out


def part_scale(p, x, seed=0):
    """|w| (|x| / pc + |1 - x| / (1 - pc)) per entry of p: the size of the gradient's two parts
    (w: value_and_grads' weights)."""
    eps = torch.finfo(p.dtype).eps
    pc = p.detach().double().clamp(eps, 1 - eps)
    xb = x.detach().double().repeat(p.shape[0] // x.shape[0], 1)
    w = torch.randn(p.shape[0], generator=torch.Generator().manual_seed(seed), dtype=F64)
    return (w.abs().unsqueeze(1) * (xb.abs() / pc + (1 - xb).abs() / (1 - pc))).to(p.device)


def value_and_grads(fn, p, x, seed=0):
    p, x = p.detach().requires_grad_(), x.detach().requires_grad_()
    value = fn(p, x)
    weights = torch.randn(value.shape, generator=torch.Generator().manual_seed(seed),
                          dtype=F64).to(value)
    return (value.detach(), *torch.autograd.grad((weights * value).sum(), (p, x)))


@pytest.mark.parametrize("device", DEVICES)
def test_equals_the_formula_in_float64(device):
    for p, x in sample(device):
        got, g_p, g_x = value_and_grads(bernoulli_op.bernoulli_loglik, p, x)
        want, w_p, w_x = value_and_grads(reference.bernoulli_loglik, p, x)
        assert torch.equal(got, OPS.bernoulli_loglik.default(p, x))
        scale = p.shape[1] * 40.0  # |terms| <= -log(eps) = 36 each
        assert ((got - want).abs() <= 1e-14 * scale).all(), (got, want)
        # the formula's x / pc - (1 - x) / (1 - pc) cancels where x is near pc: compare at the
        # scale of its two parts
        assert ((g_p - w_p).abs() <= 1e-14 * part_scale(p, x)).all()
        assert torch.allclose(g_x, w_x, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_within_a_scaled_tolerance(device):
    eps = torch.finfo(torch.float32).eps
    for p, x in sample(device, torch.float32):
        got, g_p, g_x = value_and_grads(bernoulli_op.bernoulli_loglik, p, x)
        # the float64 formula on the same (float32) inputs, its clamp at float32's eps
        p64, x64 = p.double(), x.double()
        pc = p64.clamp(eps, 1 - eps)
        n, d = x.shape
        xb = x64.repeat(p.shape[0] // n, 1)
        terms = xb * torch.log(pc) + (1 - xb) * torch.log1p(-pc)
        want = terms.sum(-1)
        # each term within a few ulp of its parts' size; the row summed in double
        scale = (xb.abs() * torch.log(pc).abs() + (1 - xb).abs() * torch.log1p(-pc).abs()).sum(-1)
        assert ((got.double() - want).abs() <= 8 * eps * scale).all()
        w = torch.randn(got.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
        inside = (p64 >= eps) & (p64 <= 1 - eps)
        w_p = torch.where(inside, w.unsqueeze(1) * (xb - pc) / (pc * (1 - pc)), 0.0)
        assert ((g_p.double() - w_p).abs() <= 8 * eps * part_scale(p, x).cpu()).all()
        w_x = (w.unsqueeze(1) * (torch.log(pc) - torch.log1p(-pc))).reshape(-1, n, d).sum(0)
        assert torch.allclose(g_x.double(), w_x, rtol=16 * eps, atol=16 * eps * 40 * p.shape[0] / n)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_logs_are_within_two_ulp_over_the_clamps_range(dtype):
    """x = 1 leaves log(pc), x = 0 log(1 - pc): one feature per row, every decade of p."""
    eps = torch.finfo(dtype).eps
    lo = torch.logspace(math.log10(eps), 0, 20000, dtype=F64)
    p = torch.cat([lo, 1 - lo, torch.rand(20000, dtype=F64, generator=torch.Generator()
                                          .manual_seed(1))]).to(dtype).clamp(eps, 1 - eps)
    p = p.reshape(-1, 1)
    ones = torch.ones_like(p)
    ref = p.double().reshape(-1)
    for x, want in ((ones, torch.log(ref)), (torch.zeros_like(p), torch.log1p(-ref))):
        got = OPS.bernoulli_loglik.default(p, x).double()
        rel = (got - want).abs() / want.abs().clamp_min(torch.finfo(F64).tiny)
        assert rel.max().item() <= 2 * eps, rel.max().item() / eps


def test_hand_derived_value_and_gradients():
    p = torch.tensor([[0.5, 0.25]], dtype=F64, requires_grad=True)
    x = torch.tensor([[1.0, 0.0]], dtype=F64, requires_grad=True)
    value = bernoulli_op.bernoulli_loglik(p, x)
    assert value.item() == pytest.approx(math.log(0.5) + math.log(0.75), abs=1e-15)
    g_p, g_x = torch.autograd.grad(value.sum(), (p, x))
    # (x - p) / (p (1 - p)): (1 - 1/2) / (1/4) = 2 and (0 - 1/4) / (3/16) = -4/3
    assert g_p.tolist() == [pytest.approx([2.0, -4.0 / 3.0], abs=1e-15)]
    # log p - log(1 - p): 0 and log(1/3)
    assert g_x.tolist() == [pytest.approx([0.0, -math.log(3.0)], abs=1e-15)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_clamps_ends_and_nan_as_torch_clamp(device, dtype):
    eps = torch.finfo(dtype).eps
    p = torch.tensor([[0.0, 1.0, eps, 1 - eps, eps / 2, 2.0, -1.0, math.inf, -math.inf, 0.3],
                      [math.nan, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]],
                     dtype=dtype, device=device)
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.7]], dtype=dtype,
                     device=device).expand(2, -1).contiguous()
    got, g_p, g_x = value_and_grads(bernoulli_op.bernoulli_loglik, p, x)
    want, w_p, w_x = value_and_grads(reference.bernoulli_loglik, p, x)
    assert torch.isfinite(got[0]) and torch.isnan(got[1])
    assert torch.allclose(got[0], want[0], rtol=4 * eps, atol=0)
    # zero gradient where the clamp is active (below eps, above 1 - eps, NaN); at its ends
    # (p = eps, 1 - eps) the gradient passes, as torch.clamp's did up to torch 2.13 (2.14 stops
    # it there): those two entries are compared with the formula's value, not torch's
    ends = torch.zeros_like(p, dtype=torch.bool)
    ends[0, 2:4] = True
    assert torch.equal((g_p == 0)[~ends], (w_p == 0)[~ends])
    assert g_p[0, 2] != 0 and g_p[0, 3] != 0 and g_p[1, 0] == 0
    w = torch.randn(2, generator=torch.Generator().manual_seed(0), dtype=F64).to(p)
    pe = p[0, 2:4]
    want_ends = w[0] * (x[0, 2:4] - pe) / (pe * (1 - pe))
    assert torch.allclose(g_p[0, 2:4], want_ends, rtol=8 * eps, atol=0)
    assert ((g_p - w_p).abs()[~ends] <= 8 * eps * part_scale(p, x).nan_to_num(0.0)[~ends]).all()
    assert torch.equal(torch.isnan(g_x), torch.isnan(w_x))


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    p = (0.05 + 0.9 * torch.rand(6, 5, generator=g, dtype=F64)).requires_grad_()
    x = torch.rand(2, 5, generator=g, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(bernoulli_op.bernoulli_loglik, (p, x))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for dtype in (F64, torch.float32):
        for p, x in sample(device, dtype, requires_grad=True):
            torch.library.opcheck(OPS.bernoulli_loglik.default, (p, x))
        p, x = sample(device, dtype)[1]
        grad = torch.randn(p.shape[0], dtype=dtype, device=device)
        for mask in ([True, True], [True, False], [False, True]):
            torch.library.opcheck(OPS.bernoulli_loglik_backward.default, (grad, p, x, mask))
        # a transposed p: the kernels copy it; the fake gives the same (contiguous) result
        torch.library.opcheck(OPS.bernoulli_loglik.default, (p.t().contiguous().t(), x))


def test_the_gradient_not_asked_for_is_empty():
    p, x = sample("cpu")[1]
    grad = torch.ones(p.shape[0], dtype=F64)
    g_p, g_x = OPS.bernoulli_loglik_backward.default(grad, p, x, [True, False])
    assert g_p.shape == p.shape and g_x.shape == (0,)
    g_p, g_x = OPS.bernoulli_loglik_backward.default(grad, p, x, [False, True])
    assert g_p.shape == (0,) and g_x.shape == x.shape


def test_same_bits_whatever_the_thread_count():
    p, x = sample("cpu", torch.float32)[2]
    p, x = p.repeat(40, 1), x  # 240 rows of 1100 terms: several tasks
    grad = torch.randn(p.shape[0])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (OPS.bernoulli_loglik.default(p, x),
               *OPS.bernoulli_loglik_backward.default(grad, p, x, [True, True]))
        torch.set_num_threads(2)
        two = (OPS.bernoulli_loglik.default(p, x),
               *OPS.bernoulli_loglik_backward.default(grad, p, x, [True, True]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_double_backward_is_refused_and_the_reference_path_has_it():
    p = torch.tensor([[0.3, 0.6]], dtype=F64, requires_grad=True)
    x = torch.tensor([[1.0, 0.0]], dtype=F64)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(bernoulli_op.bernoulli_loglik(p, x).sum(), p, create_graph=True)
    with im.use_reference_path():
        g, = torch.autograd.grad(bernoulli_op.bernoulli_loglik(p, x).sum(), p, create_graph=True)
        gg, = torch.autograd.grad(g.sum(), p)
    # d/dp of x/p - (1 - x)/(1 - p): -x/p^2 - (1 - x)/(1 - p)^2
    assert gg.tolist() == [pytest.approx([-1 / 0.09, -1 / 0.16], rel=1e-14)]


def test_errors_before_any_kernel():
    p, x = torch.rand(6, 4), torch.rand(3, 4)
    with pytest.raises(ValueError, match="multiple"):
        bernoulli_op.bernoulli_loglik(torch.rand(5, 4), x)
    with pytest.raises(ValueError, match="one D"):
        bernoulli_op.bernoulli_loglik(torch.rand(6, 5), x)
    with pytest.raises(ValueError, match="one D"):
        bernoulli_op.bernoulli_loglik(torch.rand(6), x)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        bernoulli_op.bernoulli_loglik(p, [[0.0]])
    with pytest.raises(ValueError, match="device mismatch"):
        bernoulli_op.bernoulli_loglik(p, x.to("meta"))
    # the op itself names the problem
    with pytest.raises(RuntimeError, match="dtype mismatch"):
        OPS.bernoulli_loglik.default(p, x.double())
    with pytest.raises(RuntimeError, match="not a positive multiple"):
        OPS.bernoulli_loglik.default(torch.rand(5, 4), x)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        OPS.bernoulli_loglik.default(p.half(), x.half())
    with pytest.raises(RuntimeError, match="grad has 2 entries"):
        OPS.bernoulli_loglik_backward.default(torch.ones(2), p, x, [True, True])


def test_other_dtypes_take_the_formula():
    """bfloat16, float16 and two dtypes: the plain formula (torch's promotion), no error."""
    g = torch.Generator().manual_seed(4)
    p, x = torch.rand(4, 3, generator=g), torch.rand(2, 3, generator=g)
    for pp, xx in ((p.bfloat16(), x.bfloat16()), (p.half(), x.half()), (p, x.double())):
        assert not bernoulli_op.kernel_applies(pp, xx)
        assert torch.equal(bernoulli_op.bernoulli_loglik(pp, xx),
                           reference.bernoulli_loglik(pp, xx))


def test_decoder_loglikelihood_takes_the_op(monkeypatch):
    g = torch.Generator().manual_seed(6)
    x = torch.rand(5, 2, 3, generator=g)  # a data shape of two dimensions: D = 6
    p = torch.rand(10, 2, 3, generator=g, requires_grad=True)  # S = 2 samples
    calls = []
    real = OPS.bernoulli_loglik.default

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    want = reference.bernoulli_loglik(p.reshape(10, 6), x.reshape(5, 6))
    with torch.no_grad():
        assert bernoulli_op.kernel_applies(p, x)
    got = im.decoder_loglikelihood(x, None, im.BernoulliDecoder(nn.Identity()), BernoulliOutput(p))
    assert got.shape == (10,) and got.requires_grad
    assert torch.allclose(got, want, rtol=1e-6, atol=0)
    monkeypatch.setattr(bernoulli_op, "_differentiable", lambda *a: counting(*a))
    im.decoder_loglikelihood(x, None, im.BernoulliDecoder(nn.Identity()), BernoulliOutput(p))
    assert calls == [(10, 6)]


def test_torch_compile_fullgraph():
    """decoder_loglikelihood with the compiled op traces in one graph (the fake kernel, the
    registered autograd) and gives the eager value and gradients."""
    g = torch.Generator().manual_seed(8)
    x = torch.rand(4, 6, generator=g, dtype=F64)
    p = torch.rand(8, 6, generator=g, dtype=F64, requires_grad=True)
    dec = im.BernoulliDecoder(nn.Identity())

    def loss(p, x):
        return im.decoder_loglikelihood(x, None, dec, BernoulliOutput(p)).mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got, want = compiled(p, x), loss(p, x)
    assert torch.equal(got, want)
    (gp,), (wp,) = torch.autograd.grad(got, p), torch.autograd.grad(want, p)
    assert torch.equal(gp, wp)
