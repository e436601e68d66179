"""The fused ops against their plain-PyTorch twins: values, gradients, opcheck, bad input."""
import itertools

import pytest
import torch

import infomax_ext as im
from infomax_ext import _ops, reference
from infomax_ext.activations import KERNEL_ACTIVATIONS

pytestmark = pytest.mark.skipif(not im.extension_available(), reason="compiled ops not loaded")

ops = torch.ops.infomax_ext
PARAM = {"leaky_relu": 0.2, "elu": 0.7}


def paired_inputs(n, h, s=1, dtype=torch.float64, source=False, requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires_grad)
    m = s * n
    a, b, bias = make(n, h), make(m, h), make(h)
    c = make(m, h) if source else None
    perm = im.latent_permutation(n, s, seed=seed + 11)
    return a, b, c, bias, perm


# ---------------------------------------------------------------------------- permutation

def test_permutation_keys_match_reference_bit_for_bit():
    index = torch.arange(5000)
    for seed in (0, 1, 2**63 - 1, 2**64 - 1, -3, 987654321):
        s = _ops.seed_to_int64(seed)
        assert torch.equal(ops.permutation_keys(index, s), reference.permutation_keys(index, s))


def test_permutation_key_hand_value():
    # splitmix64(0) = 0xE220A8397B1DCDAF; key(0, 0) = splitmix64(splitmix64(0) ^ 0) >> 1, by hand
    # from the published splitmix64 constants (Python integers, independent of the kernels).
    def splitmix(x):
        x = (x + 0x9E3779B97F4A7C15) % 2**64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
        return x ^ (x >> 31)

    assert splitmix(0) == 0xE220A8397B1DCDAF
    expected = splitmix(splitmix(7) ^ 5) >> 1
    assert ops.permutation_keys(torch.tensor([5]), 7).item() == expected


def test_seeded_permutation_is_a_permutation_and_reproducible():
    for n in (2, 3, 64, 1000):
        p = im.seeded_permutation(n, 42)
        assert torch.equal(torch.sort(p).values, torch.arange(n))
        assert torch.equal(p, im.seeded_permutation(n, 42))
    assert not torch.equal(im.seeded_permutation(1000, 1), im.seeded_permutation(1000, 2))


def test_seeded_permutation_is_roughly_uniform():
    # Position of element 0 over many seeds: each of n slots about equally often.
    n, trials = 5, 4000
    counts = torch.zeros(n)
    for seed in range(trials):
        counts[int((im.seeded_permutation(n, seed) == 0).nonzero())] += 1
    expected = trials / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.0  # 4 degrees of freedom: p < 0.001 above 18.5


def test_inverse_permutation():
    p = im.seeded_permutation(300, 5)
    inv = im.inverse_permutation(p)
    assert torch.equal(p[inv], torch.arange(300))
    assert torch.equal(inv, reference.inverse_permutation(p))
    with pytest.raises(RuntimeError, match="appears twice"):
        ops.inverse_permutation(torch.tensor([0, 0, 1]))
    with pytest.raises(RuntimeError, match="outside"):
        ops.inverse_permutation(torch.tensor([0, 3, 1]))


# ---------------------------------------------------------------------------- paired first layer

@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
@pytest.mark.parametrize("source", [False, True])
def test_paired_first_layer_gradcheck(activation, source):
    a, b, c, bias, perm = paired_inputs(5, 4, s=2, source=source)
    p = PARAM.get(activation, 0.0)
    inputs = [a, b, bias] + ([c] if source else [])

    def f(a, b, bias, *rest):
        return _ops.paired_first_layer(a, b, rest[0] if rest else None, bias, perm, activation, p)

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,h,s", [(2, 1, 1), (7, 33, 1), (64, 130, 3), (100, 17, 2)])
def test_paired_first_layer_matches_reference(activation, dtype, n, h, s):
    for source in (False, True):
        a, b, c, bias, perm = paired_inputs(n, h, s, dtype=dtype, source=source)
        p = PARAM.get(activation, 0.0)
        out = _ops.paired_first_layer(a, b, c, bias, perm, activation, p)
        ref = reference.paired_first_layer(a, b, c, bias, perm, activation, p)
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out, ref, **tol)
        grad = torch.randn_like(out)
        inputs = [t for t in (a, b, c, bias) if t is not None]
        got = torch.autograd.grad(out, inputs, grad)
        want = torch.autograd.grad(ref, inputs, grad)
        tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
        for g1, g2 in zip(got, want):
            torch.testing.assert_close(g1, g2, **tol)


def test_paired_first_layer_noncontiguous_inputs():
    a, b, _, bias, perm = paired_inputs(12, 9)
    a_t = a.detach().t().contiguous().t()  # transposed storage
    b_wide = torch.randn(12, 18, dtype=torch.float64)[:, ::2]  # strided view
    out = _ops.paired_first_layer(a_t, b_wide, None, bias, perm, "tanh", 0.0)
    ref = reference.paired_first_layer(a_t.contiguous(), b_wide.contiguous(), None, bias, perm, "tanh")
    torch.testing.assert_close(out, ref)


def test_paired_first_layer_only_requested_grads():
    a, b, c, bias, perm = paired_inputs(6, 5, source=True)
    a.requires_grad_(False)
    c.requires_grad_(False)
    out = _ops.paired_first_layer(a, b, c, bias, perm, "relu", 0.0)
    gb, gbias = torch.autograd.grad(out.sum(), [b, bias])
    rb, rbias = torch.autograd.grad(reference.paired_first_layer(a, b, c, bias, perm, "relu").sum(), [b, bias])
    torch.testing.assert_close(gb, rb)
    torch.testing.assert_close(gbias, rbias)


def test_paired_first_layer_backward_is_deterministic():
    a, b, c, bias, perm = paired_inputs(257, 64, s=2, dtype=torch.float32)
    out = _ops.paired_first_layer(a, b, c, bias, perm, "gelu", 0.0)
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, [a, b, bias], grad, retain_graph=True)
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            again = torch.autograd.grad(out, [a, b, bias], grad, retain_graph=True)
        finally:
            torch.set_num_threads(old)
        for g1, g2 in zip(first, again):
            assert torch.equal(g1, g2)


@pytest.mark.parametrize("source", [False, True])
def test_paired_first_layer_opcheck(source):
    a, b, c, bias, perm = paired_inputs(4, 3, s=2, source=source)
    torch.library.opcheck(ops.paired_first_layer.default, (a, b, c, bias, perm, "silu", 0.0))


def test_paired_first_layer_bad_input():
    a, b, c, bias, perm = paired_inputs(4, 3, requires_grad=False)
    with pytest.raises(RuntimeError, match="dtype mismatch"):
        ops.paired_first_layer(a, b.float(), None, bias, perm, "relu", 0.0)
    with pytest.raises(RuntimeError, match="2 dimension"):
        ops.paired_first_layer(a[0], b, None, bias, perm, "relu", 0.0)
    with pytest.raises(RuntimeError, match="perm has length 3"):
        ops.paired_first_layer(a, b, None, bias, perm[:3], "relu", 0.0)
    with pytest.raises(RuntimeError, match="at least 2 samples"):
        ops.paired_first_layer(a[:1], b[:1], None, bias, perm[:1], "relu", 0.0)
    with pytest.raises(RuntimeError, match="unknown activation 'swish'"):
        ops.paired_first_layer(a, b, None, bias, perm, "swish", 0.0)
    with pytest.raises(RuntimeError, match="must be int64"):
        ops.paired_first_layer(a, b, None, bias, perm.int(), "relu", 0.0)
    with pytest.raises(RuntimeError, match="outside"):
        ops.paired_first_layer(a, b, None, bias, perm + 1, "relu", 0.0)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.paired_first_layer(a.half(), b.half(), None, bias.half(), perm, "relu", 0.0)
    with pytest.raises(RuntimeError, match="not a positive multiple"):
        ops.paired_first_layer(a, b[:3], None, bias, perm[:3], "relu", 0.0)


# ---------------------------------------------------------------------------- paired linear


def linear_inputs(n, dx, dz, h, s=1, dtype=torch.float64, source=False, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(True)
    hx, hz, weight = make(n, dx), make(s * n, dz), make(h, dx + dz)
    return (hx, hz, make(s * n, dz) if source else None, weight, make(h) if bias else None,
            im.latent_permutation(n, s, seed=seed + 5))


@pytest.mark.parametrize("source,bias", [(False, True), (True, True), (False, False), (True, False)])
@pytest.mark.parametrize("activation", ["relu", "softplus"])
def test_paired_linear_gradcheck(source, bias, activation):
    hx, hz, src, weight, b, perm = linear_inputs(4, 3, 2, 5, s=2, source=source, bias=bias)
    inputs = [t for t in (hx, hz, src, weight, b) if t is not None]

    def f(*args):
        it = iter(args)
        hx, hz = next(it), next(it)
        src_ = next(it) if source else None
        weight = next(it)
        b_ = next(it) if bias else None
        return _ops.paired_linear(hx, hz, src_, weight, b_, perm, activation)

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,dx,dz,h,s", [(2, 1, 1, 1, 1), (9, 20, 3, 17, 2), (600, 12, 4, 9, 1)])
def test_paired_linear_matches_reference(dtype, n, dx, dz, h, s):
    # n = 600 takes the transposed data-half weight gradient (from 512 rows on).
    for source, bias in itertools.product((False, True), (False, True)):
        args = linear_inputs(n, dx, dz, h, s, dtype=dtype, source=source, bias=bias)
        perm = args[-1]
        out = _ops.paired_linear(*args, "gelu")
        ref = reference.paired_linear(*args, "gelu")
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out, ref, **tol)
        grad = torch.randn_like(out)
        inputs = [t for t in args[:-1] if t is not None]
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
        for got, want in zip(torch.autograd.grad(out, inputs, grad),
                             torch.autograd.grad(ref, inputs, grad)):
            torch.testing.assert_close(got, want, **tol)
        assert perm.shape == (s * n,)


@pytest.mark.parametrize("source,bias", [(False, True), (True, False), (True, True)])
def test_paired_linear_returns_exactly_the_requested_gradients(source, bias):
    # Absent optional tensors have no needs_input_grad slot: each subset of the present inputs
    # must get its own gradients, equal to the reference's.
    hx, hz, src, weight, b, perm = linear_inputs(5, 4, 2, 3, s=2, source=source, bias=bias)
    present = [t for t in (hx, hz, src, weight, b) if t is not None]
    out = _ops.paired_linear(hx, hz, src, weight, b, perm, "tanh")
    ref = reference.paired_linear(hx, hz, src, weight, b, perm, "tanh")
    grad = torch.randn_like(out)
    for k in range(1, len(present) + 1):
        for subset in itertools.combinations(present, k):
            got = torch.autograd.grad(out, subset, grad, retain_graph=True)
            want = torch.autograd.grad(ref, subset, grad, retain_graph=True)
            for g1, g2 in zip(got, want):
                torch.testing.assert_close(g1, g2)


def test_paired_linear_without_any_gradient_is_the_forward_only():
    hx, hz, _, weight, b, perm = linear_inputs(4, 3, 2, 5)
    with torch.no_grad():
        out = _ops.paired_linear(hx, hz, None, weight, b, perm, "relu")
    assert not out.requires_grad
    torch.testing.assert_close(out, reference.paired_linear(hx, hz, None, weight, b, perm, "relu").detach())


@pytest.mark.parametrize("source,bias", [(False, True), (True, False)])
def test_paired_linear_opcheck(source, bias):
    args = linear_inputs(4, 3, 2, 5, s=2, source=source, bias=bias)
    torch.library.opcheck(ops.paired_linear.default, (*args, "elu", 0.7))


@pytest.mark.parametrize("source", [False, True])
def test_paired_linear_with_a_precomputed_data_half(source):
    # The given data half stands for hx @ Wx.T: same output, same gradients (hx and W included).
    hx, hz, src, weight, b, perm = linear_inputs(6, 4, 2, 5, s=2, source=source)
    data_half = (hx @ weight[:, :4].t()).detach()
    present = [t for t in (hx, hz, src, weight, b) if t is not None]
    for op in (_ops.paired_linear, reference.paired_linear):
        out = op(hx, hz, src, weight, b, perm, "silu", 0.0, data_half)
        ref = reference.paired_linear(hx, hz, src, weight, b, perm, "silu")
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        grad = torch.randn_like(out)
        for g1, g2 in zip(torch.autograd.grad(out, present, grad), torch.autograd.grad(ref, present, grad)):
            torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    torch.library.opcheck(ops.paired_linear.default,
                          (hx, hz, src, weight, b, perm, "silu", 0.0, data_half))


def test_paired_linear_bad_input():
    hx, hz, src, weight, b, perm = (t.detach() if t is not None else None
                                    for t in linear_inputs(4, 3, 2, 5, source=True))
    with pytest.raises(RuntimeError, match="weight takes 5 features but hx has 3 and hz has 3"):
        ops.paired_linear(hx, torch.randn(4, 3, dtype=torch.float64), None, weight, b, perm, "relu", 0.0)
    with pytest.raises(RuntimeError, match="dtype mismatch"):
        ops.paired_linear(hx, hz.float(), None, weight, b, perm, "relu", 0.0)
    with pytest.raises(RuntimeError, match="hz_source has shape"):
        ops.paired_linear(hx, hz, src[:3], weight, b, perm, "relu", 0.0)
    with pytest.raises(RuntimeError, match="bias has 4 entries but the layer has 5 units"):
        ops.paired_linear(hx, hz, None, weight, b[:4], perm, "relu", 0.0)
    with pytest.raises(RuntimeError, match="perm has length 3"):
        ops.paired_linear(hx, hz, None, weight, b, perm[:3], "relu", 0.0)
    with pytest.raises(RuntimeError, match="hx must have 2 dimension"):
        ops.paired_linear(hx[0], hz, None, weight, b, perm, "relu", 0.0)
    with pytest.raises(RuntimeError, match=r"data_half has shape \[4, 4\], expected \[4, 5\]"):
        ops.paired_linear(hx, hz, None, weight, b, perm, "relu", 0.0, torch.zeros(4, 4, dtype=hx.dtype))
    with pytest.raises(RuntimeError, match="must not require grad"):
        ops.paired_linear(hx, hz, None, weight, b, perm, "relu", 0.0,
                          torch.zeros(4, 5, dtype=hx.dtype, requires_grad=True))


# ---------------------------------------------------------------------------- NWJ bound and head

def test_nwj_bound_against_direct_float64():
    tj = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    tm = torch.tensor([0.0, 1.0], dtype=torch.float64)
    # mean(tj) = 0.5; mean(exp(tm - 1)) = (e^-1 + 1) / 2
    expected = 0.5 - (torch.exp(torch.tensor(-1.0, dtype=torch.float64)) + 1) / 2
    torch.testing.assert_close(im.nwj_bound(tj, tm), expected, rtol=1e-15, atol=1e-15)


def test_nwj_bound_gradcheck_and_opcheck():
    tj = torch.randn(7, dtype=torch.float64, requires_grad=True)
    tm = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(im.nwj_bound, (tj, tm))
    torch.library.opcheck(ops.nwj_bound.default, (tj, tm))


def test_nwj_bound_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        im.nwj_bound(torch.randn(3, 1), torch.randn(3))
    with pytest.raises(RuntimeError, match="dtype mismatch"):
        ops.nwj_bound(torch.randn(3), torch.randn(3, dtype=torch.float64))


@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
def test_nwj_head_gradcheck(activation):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, generator=g, dtype=torch.float64, requires_grad=True)
    p = PARAM.get(activation, 0.0)
    # Gradient of bound and of scores together (miloss regularizers use the scores).
    f = lambda h, w, b: (lambda out: out[0] + 0.3 * out[1].pow(2).sum())(
        _ops.nwj_head(h, w, b, 4, activation, p))
    assert torch.autograd.gradcheck(f, (hidden, w, b))


@pytest.mark.parametrize("with_bias", [False, True])
def test_nwj_head_gradients_of_each_input_alone(with_bias):
    # Without a bias the op has one tensor input fewer: the gradient slots must still line up.
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    bound, _ = _ops.nwj_head(hidden, w, b, 5, "sigmoid")
    ref, _ = reference.nwj_head(hidden, w, b, 5, "sigmoid")
    for t in [hidden, w] + ([b] if with_bias else []):
        got, = torch.autograd.grad(bound, [t], retain_graph=True)
        want, = torch.autograd.grad(ref, [t], retain_graph=True)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,h,n_joint", [(4, 1, 2), (130, 100, 65), (2048, 37, 1024)])
def test_nwj_head_matches_reference(dtype, rows, h, n_joint):
    hidden = torch.randn(rows, h, dtype=dtype, requires_grad=True)
    w = (torch.randn(h, dtype=dtype) / h**0.5).requires_grad_()
    b = torch.randn(1, dtype=dtype, requires_grad=True)
    for bias in (b, None):
        got = _ops.nwj_head(hidden, w, bias, n_joint, "softplus")
        want = reference.nwj_head(hidden, w, bias, n_joint, "softplus")
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[0], want[0], **tol)
        torch.testing.assert_close(got[1], want[1], **tol)
        inputs = [hidden, w] + ([bias] if bias is not None else [])
        for g1, g2 in zip(torch.autograd.grad(got[0], inputs), torch.autograd.grad(want[0], inputs)):
            torch.testing.assert_close(g1, g2, **tol)


def test_nwj_head_opcheck():
    hidden = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.nwj_head.default, (hidden, w, b, 3, "identity", 0.0))


def test_nwj_head_bad_input():
    hidden, w = torch.randn(6, 3), torch.randn(3)
    with pytest.raises(RuntimeError, match="weight has 4 entries"):
        ops.nwj_head(hidden, torch.randn(4), None, 3, "identity", 0.0)
    with pytest.raises(RuntimeError, match="n_joint"):
        ops.nwj_head(hidden, w, None, 6, "identity", 0.0)
    with pytest.raises(RuntimeError, match="device|dtype"):
        ops.nwj_head(hidden, w.double(), None, 3, "identity", 0.0)


def test_reductions_do_not_depend_on_thread_count():
    hidden = torch.randn(3000, 50, requires_grad=True)
    w = torch.randn(50, requires_grad=True)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            bound, _ = _ops.nwj_head(hidden, w, None, 1500, "identity")
            results.append((bound.detach(), *torch.autograd.grad(bound, [hidden, w])))
    finally:
        torch.set_num_threads(old)
    for x, y in zip(*results):
        assert torch.equal(x, y)
