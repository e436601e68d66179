"""The fused ops against their plain-PyTorch twins: values, gradients, opcheck, bad input."""
import itertools

import pytest
import torch

import infomax_ext as im
from infomax_ext import (_ops, critic_head_op, nwj_bound_op, paired_first_layer_op,
                         paired_linear_op, reference)
from infomax_ext.activations import KERNEL_ACTIVATIONS
from activation_cases import param_of
from infomax_ext.cli.model_io import torch_threads
from op_counts import calling_thread_counts
from tolerances import assert_close_scaled, critic_head_scales, paired_scales

pytestmark = pytest.mark.skipif(not im.extension_available(), reason="compiled ops not loaded")

ops = torch.ops.infomax_ext


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


@pytest.mark.parametrize("perm", [[0, 0, 1], [0, 3, 1], [0, -1, 1], [2, 0, 2, 5], [5, 5, 0],
                                  [1, 0, 2, 1, 0], [[0, 1]]])
def test_reference_inverse_permutation_refuses_what_the_compiled_op_refuses(perm):
    # Repeated or out-of-range entries: the same RuntimeError, naming the same first bad entry
    # (not garbage for repeats, nor an IndexError).
    perm = torch.tensor(perm)
    with pytest.raises(RuntimeError) as compiled:
        ops.inverse_permutation(perm)
    with pytest.raises(RuntimeError) as plain:
        reference.inverse_permutation(perm)
    assert str(plain.value).split("\n")[0] == str(compiled.value).split("\n")[0].replace(
        "Long", "torch.int64")
    with im.use_reference_path(), pytest.raises(RuntimeError, match="not a permutation|1-D"):
        im.inverse_permutation(perm)


def test_reference_inverse_permutation_keeps_valid_and_meta_permutations():
    for n in (0, 1, 2, 257):
        p = im.seeded_permutation(n, 3) if n else torch.empty(0, dtype=torch.long)
        assert torch.equal(reference.inverse_permutation(p), ops.inverse_permutation(p))
    meta = reference.inverse_permutation(torch.empty(5, dtype=torch.long, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (5,)


# ---------------------------------------------------------------------------- paired first layer

@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
@pytest.mark.parametrize("source", [False, True])
def test_paired_first_layer_gradcheck(activation, source):
    a, b, c, bias, perm = paired_inputs(5, 4, s=2, source=source)
    p = param_of(activation)
    inputs = [a, b, bias] + ([c] if source else [])

    def f(a, b, bias, *rest):
        return paired_first_layer_op.paired_first_layer(a, b, rest[0] if rest else None, bias, perm, activation, p)

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,h,s", [(2, 1, 1), (7, 33, 1), (64, 130, 3), (100, 17, 2)])
def test_paired_first_layer_matches_reference(activation, dtype, n, h, s):
    # Tolerances: k = 8 eps x scale, scales from tests/tolerances.py (paired_scales). Forward:
    # the same sums in the same order, so only the activations' evaluation differs; the widest
    # is torch's float32 gelu (oneDNN's erf approximation), at most 2.9 eps (|x| + |gelu(x)|)
    # over [-12, 12] with oneDNN on AVX-512, AVX2 or SSE4.1 (2.5 on these inputs). Gradients:
    # sums of up to 2S terms per input row and of 2M rows for the bias, in another order (at
    # most 1.1 seen on ATen's default, AVX2 and AVX-512 kernels).
    for source in (False, True):
        a, b, c, bias, perm = paired_inputs(n, h, s, dtype=dtype, source=source)
        p = param_of(activation)
        out = paired_first_layer_op.paired_first_layer(a, b, c, bias, perm, activation, p)
        ref = reference.paired_first_layer(a, b, c, bias, perm, activation, p)
        grad = torch.randn_like(out)
        forward, grad_scales = paired_scales(reference.paired_first_layer, (a, b, c, bias), perm,
                                             activation, p, grad)
        assert_close_scaled(out, ref, forward, k=8, what="output")
        named = [(name, t) for name, t in zip(("data_half", "latent_half", "shuffled_half", "bias"),
                                               (a, b, c, bias)) if t is not None]
        inputs = [t for _, t in named]
        got = torch.autograd.grad(out, inputs, grad)
        want = torch.autograd.grad(ref, inputs, grad)
        for (name, _), g1, g2, scale in zip(named, got, want, grad_scales):
            assert_close_scaled(g1, g2, scale, k=8, what=f"gradient of {name}")


def test_paired_first_layer_noncontiguous_inputs():
    a, b, _, bias, perm = paired_inputs(12, 9)
    a_t = a.detach().t().contiguous().t()  # transposed storage
    b_wide = torch.randn(12, 18, dtype=torch.float64)[:, ::2]  # strided view
    out = paired_first_layer_op.paired_first_layer(a_t, b_wide, None, bias, perm, "tanh", 0.0)
    ref = reference.paired_first_layer(a_t.contiguous(), b_wide.contiguous(), None, bias, perm, "tanh")
    torch.testing.assert_close(out, ref)


def test_paired_first_layer_only_requested_grads():
    a, b, c, bias, perm = paired_inputs(6, 5, source=True)
    a.requires_grad_(False)
    c.requires_grad_(False)
    out = paired_first_layer_op.paired_first_layer(a, b, c, bias, perm, "relu", 0.0)
    gb, gbias = torch.autograd.grad(out.sum(), [b, bias])
    rb, rbias = torch.autograd.grad(reference.paired_first_layer(a, b, c, bias, perm, "relu").sum(), [b, bias])
    torch.testing.assert_close(gb, rb)
    torch.testing.assert_close(gbias, rbias)


def test_paired_first_layer_backward_is_deterministic():
    a, b, c, bias, perm = paired_inputs(257, 64, s=2, dtype=torch.float32)
    out = paired_first_layer_op.paired_first_layer(a, b, c, bias, perm, "gelu", 0.0)
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, [a, b, bias], grad, retain_graph=True)
    for threads in (1, 2):
        with torch_threads(threads):
            again = torch.autograd.grad(out, [a, b, bias], grad, retain_graph=True)
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
    with pytest.raises(RuntimeError, match="float32, float64, bfloat16 or float16, got Int"):
        ops.paired_first_layer(a.int(), b.int(), None, bias.int(), perm, "relu", 0.0)
    with pytest.raises(RuntimeError, match="not a positive multiple"):
        ops.paired_first_layer(a, b[:3], None, bias, perm[:3], "relu", 0.0)


def test_the_kernels_run_exactly_the_kernel_activations_of_the_python_table():
    # The C++ table (csrc/activations.h) writes the list into its error message: it must name
    # the activations the Python table marks as kernel activations, no more and no fewer.
    a, b, c, bias, perm = paired_inputs(4, 3, requires_grad=False)
    with pytest.raises(RuntimeError, match="supported: ") as error:
        ops.paired_first_layer(a, b, None, bias, perm, "swish", 0.0)
    listed = str(error.value).split("supported: ", 1)[1].splitlines()[0]
    assert sorted(name.strip(" .") for name in listed.split(",")) == sorted(KERNEL_ACTIVATIONS)
    for name in KERNEL_ACTIVATIONS:
        ops.paired_first_layer(a, b, None, bias, perm, name, param_of(name))


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
        return paired_linear_op.paired_linear(hx, hz, src_, weight, b_, perm, activation)

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,dx,dz,h,s", [(2, 1, 1, 1, 1), (9, 20, 3, 17, 2), (600, 12, 4, 9, 1),
                                         (7, 6, 2, 520, 2)])
def test_paired_linear_matches_reference(dtype, n, dx, dz, h, s):
    # Layers of up to 512 units take the transposed data-half weight gradient, h = 520 the
    # direct one (csrc/paired_linear.cpp).
    # Tolerances: tests/tolerances.py (paired_scales): the products hx Wx^T and hz Wz^T (Dx, Dz
    # terms) and the weight gradient (up to 2M terms) are summed in other orders by other GEMMs.
    for source, bias in itertools.product((False, True), (False, True)):
        args = linear_inputs(n, dx, dz, h, s, dtype=dtype, source=source, bias=bias)
        perm = args[-1]
        out = paired_linear_op.paired_linear(*args, "gelu")
        ref = reference.paired_linear(*args, "gelu")
        grad = torch.randn_like(out)
        forward, grad_scales = paired_scales(reference.paired_linear, args[:-1], perm, "gelu",
                                             0.0, grad)
        assert_close_scaled(out, ref, forward, k=8, what="output")
        inputs = [t for t in args[:-1] if t is not None]
        for got, want, scale in zip(torch.autograd.grad(out, inputs, grad),
                                    torch.autograd.grad(ref, inputs, grad), grad_scales):
            assert_close_scaled(got, want, scale, k=8, what="gradient")
        assert perm.shape == (s * n,)


@pytest.mark.parametrize("source,bias", [(False, True), (True, False), (True, True)])
def test_paired_linear_returns_exactly_the_requested_gradients(source, bias):
    # Absent optional tensors have no needs_input_grad slot: each subset of the present inputs
    # must get its own gradients, equal to the reference's.
    hx, hz, src, weight, b, perm = linear_inputs(5, 4, 2, 3, s=2, source=source, bias=bias)
    present = [t for t in (hx, hz, src, weight, b) if t is not None]
    out = paired_linear_op.paired_linear(hx, hz, src, weight, b, perm, "tanh")
    ref = reference.paired_linear(hx, hz, src, weight, b, perm, "tanh")
    grad = torch.randn_like(out)
    for k in range(1, len(present) + 1):
        for subset in itertools.combinations(present, k):
            got = torch.autograd.grad(out, subset, grad, retain_graph=True)
            want = torch.autograd.grad(ref, subset, grad, retain_graph=True)
            for g1, g2 in zip(got, want):
                torch.testing.assert_close(g1, g2)


def _strided_weight(weight, layout):
    """The same values as ``weight`` (H, D) in another memory layout: "transposed" (column-major
    storage), "offset" (a window into a larger buffer: storage offset and a row stride above D),
    "both" (a column-major window with an offset)."""
    h, d = weight.shape
    w = weight.detach()
    if layout == "transposed":
        out = w.t().contiguous().t()
    elif layout == "offset":
        out = torch.zeros(h + 2, d + 5, dtype=w.dtype)[1:h + 1, 3:d + 3]
        out.copy_(w)
    else:
        out = torch.zeros(d + 4, h + 3, dtype=w.dtype)[2:d + 2, 1:h + 1].t()
        out.copy_(w)
    assert not out.is_contiguous() and torch.equal(out, w)
    return out.requires_grad_(True)


@pytest.mark.parametrize("layout", ["transposed", "offset", "both"])
@pytest.mark.parametrize("source", [False, True])
def test_paired_linear_with_a_strided_weight_equals_the_reference(layout, source):
    # The op takes the weight's data and latent columns as views of it in place (its strides and
    # storage offset as they are): the values and every gradient equal the reference's, and the
    # weight's gradient has the weight's shape.
    hx, hz, src, weight, b, perm = linear_inputs(6, 5, 3, 4, s=2, source=source)
    strided = _strided_weight(weight, layout)
    out = paired_linear_op.paired_linear(hx, hz, src, strided, b, perm, "softplus")
    ref = reference.paired_linear(hx, hz, src, weight, b, perm, "softplus")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    inputs = [t for t in (hx, hz, src) if t is not None]
    got = torch.autograd.grad(out, [*inputs, strided, b], grad)
    want = torch.autograd.grad(ref, [*inputs, weight, b], grad)
    for g1, g2 in zip(got, want):
        assert g1.shape == g2.shape
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,dx,dz,h", [
    (torch.float64, 784, 16, 168), (torch.float64, 784, 10, 168),  # rows 6400 / 6352 bytes apart
    (torch.float32, 784, 16, 168), (torch.float32, 784, 10, 168),  # 3200 / 3176 bytes
    (torch.float64, 6, 3, 9),  # rows off the cache lines, a product too small to compute apart
    (torch.float32, 784, 10, 400),  # and one too large: its temporary would raise the peak
])
@pytest.mark.parametrize("hx_grad", [False, True])
def test_paired_linear_weight_gradient_whether_its_rows_fill_cache_lines(dtype, dx, dz, h, hx_grad):
    # The data columns' weight gradient (h x dx) is written into the gradient in place, or, where
    # the weight's rows lie no multiple of 64 bytes apart and it has 2^17 to 2^18 elements,
    # computed apart and copied in: each equals the float64 reference, with hx's gradient
    # computed beside it or not.
    hx, hz, src, weight, b, perm = linear_inputs(7, dx, dz, h, s=2, source=True, dtype=dtype)
    hx.requires_grad_(hx_grad)
    out = paired_linear_op.paired_linear(hx, hz, src, weight, b, perm, "relu")
    grad = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    inputs = [hx, hz, src, weight, b] if hx_grad else [hz, src, weight, b]
    got = torch.autograd.grad(out, inputs, grad.to(dtype))
    wide = [t.detach().double().requires_grad_(True) for t in (hx, hz, src, weight, b)]
    ref = reference.paired_linear(*wide[:4], wide[4], perm, "relu")
    want = torch.autograd.grad(ref, wide if hx_grad else wide[1:], grad)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for g1, g2 in zip(got, want):
        assert g1.shape == g2.shape and g1.dtype == dtype
        torch.testing.assert_close(g1.double(), g2, rtol=tol, atol=tol * float(g2.abs().max()))


def test_paired_linear_without_any_gradient_is_the_forward_only():
    hx, hz, _, weight, b, perm = linear_inputs(4, 3, 2, 5)
    with torch.no_grad():
        out = paired_linear_op.paired_linear(hx, hz, None, weight, b, perm, "relu")
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
    for op in (paired_linear_op.paired_linear, reference.paired_linear):
        out = op(hx, hz, src, weight, b, perm, "silu", 0.0, data_half)
        ref = reference.paired_linear(hx, hz, src, weight, b, perm, "silu")
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        grad = torch.randn_like(out)
        for g1, g2 in zip(torch.autograd.grad(out, present, grad), torch.autograd.grad(ref, present, grad)):
            torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    torch.library.opcheck(ops.paired_linear.default,
                          (hx, hz, src, weight, b, perm, "silu", 0.0, data_half))


@pytest.mark.parametrize("activation", ["relu", "identity"])
@pytest.mark.parametrize("source,bias,s", [(False, True, 1), (True, False, 2), (False, False, 2)])
def test_paired_linear_backward_from_the_output_equals_from_the_halves(activation, source, bias, s):
    # For identity and relu the derivative can be read from the output (what the autograd node
    # keeps): every gradient the same as from the halves, to the last bit (float64), including a
    # pre-activation at exactly 0 (relu'(0) = 0 either way).
    hx, hz, src, weight, b, perm = (t.detach() if t is not None else None
                                    for t in linear_inputs(6, 4, 3, 5, s=s, source=source, bias=bias))
    hx[0, :] = 0.0
    weight[0, :] = 0.0
    if b is not None:
        b[0] = 0.0
    out, data, latent, shuffled_half = ops.paired_linear_forward(hx, hz, src, weight, b, perm,
                                                               activation, 0.0)
    assert out[:, 0].eq(0).all()
    grad = torch.randn_like(out)
    mask = [True, True, source, True, bias]
    halves = ops.paired_linear_backward(grad, hx, hz, src, weight, data, latent,
                                        shuffled_half if source else None, b, perm, activation,
                                        0.0, mask)
    empty = hx.new_empty((0,))
    from_out = ops.paired_linear_backward(grad, hx, hz, src, weight, empty, empty,
                                          empty if source else None, b, perm, activation, 0.0,
                                          mask, out)
    for wanted, g1, g2 in zip(mask, halves, from_out):
        assert g1.shape == g2.shape
        if wanted:
            assert torch.equal(g1, g2)


def test_paired_linear_backward_reads_the_output_for_identity_and_relu_only():
    hx, hz, _, weight, b, perm = (t.detach() if t is not None else None
                                  for t in linear_inputs(4, 3, 2, 5))
    out = ops.paired_linear(hx, hz, None, weight, b, perm, "tanh", 0.0)
    empty = hx.new_empty((0,))
    args = (torch.ones_like(out), hx, hz, None, weight, empty, empty, None, b, perm)
    with pytest.raises(RuntimeError, match="derivative from out for identity and relu only, got 'tanh'"):
        ops.paired_linear_backward(*args, "tanh", 0.0, [True] * 5, out)
    with pytest.raises(RuntimeError, match=r"out has shape \[8, 4\], expected \[8, 5\]"):
        ops.paired_linear_backward(*args, "relu", 0.0, [True] * 5, out[:, :4])


def test_paired_linear_bad_input():
    hx, hz, src, weight, b, perm = (t.detach() if t is not None else None
                                    for t in linear_inputs(4, 3, 2, 5, source=True))
    with pytest.raises(RuntimeError, match="weight takes 5 features but hx has 3 and hz has 3"):
        ops.paired_linear(hx, torch.randn(4, 3, dtype=torch.float64), None, weight, b, perm, "relu", 0.0)
    with pytest.raises(RuntimeError, match="dtype mismatch"):
        ops.paired_linear(hx, hz.float(), None, weight, b, perm, "relu", 0.0)
    with pytest.raises(RuntimeError, match="hz_shuffled has shape"):
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
def test_critic_head_gradcheck(activation):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, generator=g, dtype=torch.float64, requires_grad=True)
    p = param_of(activation)
    # Gradient of bound and of scores together (miloss regularizers use the scores).
    f = lambda h, w, b: (lambda out: out[0] + 0.3 * out[1].pow(2).sum())(
        critic_head_op.critic_head(h, w, b, 4, activation, p))
    assert torch.autograd.gradcheck(f, (hidden, w, b))


@pytest.mark.parametrize("with_bias", [False, True])
def test_critic_head_gradients_of_each_input_alone(with_bias):
    # Without a bias the op has one tensor input fewer: the gradient slots must still line up.
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    bound, _ = critic_head_op.critic_head(hidden, w, b, 5, "sigmoid")
    ref, _ = reference.critic_head(hidden, w, b, 5, "sigmoid")
    for t in [hidden, w] + ([b] if with_bias else []):
        got, = torch.autograd.grad(bound, [t], retain_graph=True)
        want, = torch.autograd.grad(ref, [t], retain_graph=True)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,h,n_joint", [(4, 1, 2), (130, 100, 65), (2048, 37, 1024)])
def test_critic_head_matches_reference(dtype, rows, h, n_joint):
    hidden = torch.randn(rows, h, dtype=dtype, requires_grad=True)
    w = (torch.randn(h, dtype=dtype) / h**0.5).requires_grad_()
    b = torch.randn(1, dtype=dtype, requires_grad=True)
    # Tolerances: tests/tolerances.py (critic_head_scales): dot products of h terms, sums of up to
    # 1024 scores, both in other orders than torch's.
    for bias in (b, None):
        got = critic_head_op.critic_head(hidden, w, bias, n_joint, "softplus")
        want = reference.critic_head(hidden, w, bias, n_joint, "softplus")
        scores, bound, grad_scales = critic_head_scales(hidden, w, bias, n_joint, "softplus", 0.0)
        assert_close_scaled(got[0], want[0], bound, k=8, what="bound")
        assert_close_scaled(got[1], want[1], scores, k=8, what="scores")
        inputs = [hidden, w] + ([bias] if bias is not None else [])
        for g1, g2, scale in zip(torch.autograd.grad(got[0], inputs),
                                 torch.autograd.grad(want[0], inputs), grad_scales):
            assert_close_scaled(g1, g2, scale, k=8, what="gradient")


def test_critic_head_opcheck():
    hidden = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.critic_head.default, (hidden, w, b, 3, "identity", 0.0))


def test_critic_head_bad_input():
    hidden, w = torch.randn(6, 3), torch.randn(3)
    with pytest.raises(RuntimeError, match="weight has 4 entries"):
        ops.critic_head(hidden, torch.randn(4), None, 3, "identity", 0.0)
    with pytest.raises(RuntimeError, match="n_joint"):
        ops.critic_head(hidden, w, None, 6, "identity", 0.0)
    with pytest.raises(RuntimeError, match="device|dtype"):
        ops.critic_head(hidden, w.double(), None, 3, "identity", 0.0)


def test_reductions_do_not_depend_on_thread_count():
    hidden = torch.randn(3000, 50, requires_grad=True)
    w = torch.randn(50, requires_grad=True)
    results = []
    for threads in (1, 2):
        with torch_threads(threads):
            bound, _ = critic_head_op.critic_head(hidden, w, None, 1500, "identity")
            results.append((bound.detach(), *torch.autograd.grad(bound, [hidden, w])))
    for x, y in zip(*results):
        assert torch.equal(x, y)


# ---------------------------------------------------------------------------- bad arguments


def op_calls():
    """Each op with valid CPU arguments: (Python entry or None, torch.ops overload, args)."""
    a, b, c, bias, perm = paired_inputs(4, 3, s=2, source=True, requires_grad=False)
    hx, hz, src, weight, lbias, lperm = (t.detach()
                                         for t in linear_inputs(4, 3, 2, 5, s=2, source=True))
    data_half = hx @ weight[:, :3].t()
    hidden = torch.randn(6, 3, dtype=torch.float64)
    w, hbias = torch.randn(3, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    bound, scores, pre = ops.critic_head(hidden, w, hbias, 3, "relu", 0.0)
    tj, tm = torch.randn(3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    return {
        "paired_first_layer": (paired_first_layer_op.paired_first_layer, ops.paired_first_layer.default,
                               [a, b, c, bias, perm, "relu", 0.0]),
        "paired_first_layer_backward": (None, ops.paired_first_layer_backward.default,
                                        [torch.ones(16, 3, dtype=torch.float64), a, b, c, bias,
                                         perm, ops.inverse_permutation(perm), "relu", 0.0,
                                         [True] * 4]),
        "paired_linear": (paired_linear_op.paired_linear, ops.paired_linear.default,
                          [hx, hz, src, weight, lbias, lperm, "relu", 0.0, data_half]),
        "critic_head": (critic_head_op.critic_head, ops.critic_head.default, [hidden, w, hbias, 3, "relu", 0.0]),
        "critic_head_backward": (None, ops.critic_head_backward.default,
                              [torch.ones((), dtype=torch.float64), torch.ones_like(scores), hidden,
                               w, scores, pre, 3, "relu", 0.0, [True] * 3]),
        "nwj_bound": (nwj_bound_op.nwj_bound, ops.nwj_bound.default, [tj, tm]),
        "nwj_bound_backward": (None, ops.nwj_bound_backward.default,
                               [torch.ones((), dtype=torch.float64), tj, tm]),
    }


def meta_cases():
    for name, (_, _, args) in op_calls().items():
        for i, arg in enumerate(args):
            if isinstance(arg, torch.Tensor):
                yield pytest.param(name, i, id=f"{name}-arg{i}")


@pytest.mark.parametrize("name,index", list(meta_cases()))
def test_an_argument_on_another_device_is_refused(name, index):
    # A meta tensor among CPU tensors dispatches to the fake kernel, which would return
    # uninitialised memory: the Python entry (fused and reference path) names the argument
    # before any work; torch.ops.infomax_ext.* (fake kernel or C++ check) says "device mismatch".
    entry, op, args = op_calls()[name]
    args = list(args)
    args[index] = args[index].to("meta")
    with pytest.raises(RuntimeError, match="device mismatch"):
        op(*args)
    if entry is not None:
        with pytest.raises(ValueError, match="device mismatch: .* is on (meta|cpu) but"):
            entry(*args)
        with im.use_reference_path(), pytest.raises(ValueError, match="device mismatch"):
            entry(*args)


def test_a_meta_permutation_with_cpu_data_in_the_mi_bound():
    mi = im.MutualInfoChain.from_sizes(4, 2, [8], [torch.relu])
    x, z = torch.randn(6, 4), torch.randn(6, 2)
    perm = im.latent_permutation(6, 1, seed=1)
    with pytest.raises(ValueError, match="device mismatch: perm is on meta but hx is on cpu"):
        im.paired_mutual_info(mi, x, z, perm.to("meta"))
    # all on meta stays allowed: shapes only
    assert ops.paired_first_layer(*(t.to("meta") for t in paired_inputs(4, 3)[:2]), None,
                                  torch.zeros(3, device="meta", dtype=torch.float64),
                                  perm[:4].to("meta"), "relu", 0.0).shape == (8, 3)


def test_op_arguments_that_are_not_tensors_are_named():
    with pytest.raises(TypeError, match="nwj_bound: t_joint must be a torch.Tensor, got list"):
        im.nwj_bound([0.5, 1.0], torch.randn(3))
    with pytest.raises(TypeError, match="nwj_bound: t_shuffled must be a torch.Tensor, got float"):
        im.nwj_bound(torch.randn(3), 1.0)
    a, b, _, bias, perm = paired_inputs(4, 3, requires_grad=False)
    with pytest.raises(TypeError, match="paired_first_layer: perm must be a torch.Tensor"):
        im.paired_first_layer_op.paired_first_layer(a, b, None, bias, [0, 1, 2, 3], "relu")
    with pytest.raises(TypeError, match="critic_head: weight must be a torch.Tensor, got tuple"):
        im.critic_head_op.critic_head(torch.randn(4, 2), (1.0, 2.0), None, 2)
    with pytest.raises(TypeError, match="inverse_permutation: perm must be a torch.Tensor"):
        im.inverse_permutation([1, 0])


@pytest.mark.parametrize("n", [2.5, 3.0, "4", True, None, torch.tensor(3.0)])
def test_seeded_permutation_refuses_a_length_that_is_not_an_integer(n):
    with pytest.raises(TypeError, match="n must be an integer, got"):
        im.seeded_permutation(n, 1)


@pytest.mark.parametrize("seed", [1.5, 3.0, "7", True, torch.tensor(2.0), [1]])
def test_a_seed_that_is_not_an_integer_is_refused_not_truncated(seed):
    # seed=1.5 is never truncated to 1: floats are refused, even when integral (3.0).
    z = torch.randn(6, 2)
    mi = im.MutualInfoChain.from_sizes(4, 2, [8], [torch.relu])
    for call in (lambda: im.seeded_permutation(5, seed), lambda: _ops.seed_to_int64(seed),
                 lambda: im.latent_permutation(6, 1, seed=seed),
                 lambda: im.latent_permutation(6, 3, seed=seed),
                 lambda: im.shuffle_latent(z, seed=seed),
                 lambda: im.variational_mutual_info(mi, torch.randn(6, 4), z, seed=seed)):
        with pytest.raises(TypeError, match="seed must be an integer, got"):
            call()


def test_integer_seeds_of_every_kind_are_accepted():
    numpy = pytest.importorskip("numpy")
    want = im.seeded_permutation(50, 12)
    for seed in (numpy.int64(12), numpy.uint8(12), torch.tensor(12), 12 + 2**64):
        assert torch.equal(im.seeded_permutation(50, seed), want)
    assert _ops.seed_to_int64(2**64 - 1) == -1 and _ops.seed_to_int64(-1) == -1


@pytest.mark.parametrize("source", [False, True])
def test_paired_linear_backward_op_matches_its_fake_kernel(source):
    # The backward op on its own, every gradient wanted: opcheck compares the fake kernel's
    # shapes and strides with the real ones (torch.compile's graphs rely on them).
    hx, hz, src, weight, b, perm = (t.detach() if t is not None else None
                                    for t in linear_inputs(4, 3, 2, 5, s=2, source=source))
    out, data, latent, shuffled_half = ops.paired_linear_forward(hx, hz, src, weight, b, perm, "relu",
                                                               0.0)
    args = (torch.randn_like(out), hx, hz, src, weight, data, latent,
            shuffled_half if source else None, b, perm, "relu", 0.0, [True] * 5)
    grads = ops.paired_linear_backward(*args)
    want = torch.autograd.grad(
        reference.paired_linear(*(t.requires_grad_() if t is not None else None
                                  for t in (hx, hz, src, weight, b)), perm, "relu"),
        [t for t in (hx, hz, src, weight, b) if t is not None], args[0])
    for got, expected in zip([g for g in grads if g.numel()], want):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # An internal op with no autograd of its own: its schema and fake kernel are what opcheck tests.
    torch.library.opcheck(ops.paired_linear_backward.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("source", [False, True])
def test_a_perm_with_repeats_is_refused_in_backward_not_turned_into_gradients(source):
    hx, hz, src, weight, b, perm = linear_inputs(4, 3, 2, 5, s=1, source=source)
    repeated = perm.clone()
    repeated[1] = repeated[0]
    out = paired_linear_op.paired_linear(hx, hz, src, weight, b, repeated, "relu")
    leaves = [t for t in (hx, hz, src, weight, b) if t is not None]
    with pytest.raises(RuntimeError, match="not a permutation"):
        torch.autograd.grad(out.sum(), leaves)


def test_autocast_runs_the_fused_kernels_close_to_the_plain_path():
    # bfloat16 products on both paths; the fused bound is float32 (tests/test_mixed_precision.py
    # checks the values and gradients against float32 in detail).
    torch.manual_seed(0)
    mi = im.MutualInfoChain.from_sizes(8, 2, [16], [torch.relu])
    x, z = torch.randn(32, 8), torch.randn(32, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _ops.kernels_apply(x, z) == im.extension_available()
        under_autocast = im.variational_mutual_info(mi, x, z, seed=3)
        under_autocast.backward()
    with im.use_path("reference"), torch.autocast("cpu", dtype=torch.bfloat16):
        reference_value = im.variational_mutual_info(mi, x, z, seed=3)
    torch.testing.assert_close(under_autocast.float(), reference_value.float(), rtol=5e-2,
                               atol=5e-2)


@pytest.mark.parametrize("op", ["paired_linear", "critic_head"])
def test_double_backward_is_refused_when_only_the_bias_needs_it(op):
    if op == "paired_linear":
        hx, hz, _, weight, b, perm = (t.detach() if t is not None else None
                                      for t in linear_inputs(4, 3, 2, 5))
        b.requires_grad_()
        out = paired_linear_op.paired_linear(hx, hz, None, weight, b, perm, "softplus").sum()
    else:
        hidden, weight, b = torch.randn(6, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64), \
            torch.randn(1, dtype=torch.float64, requires_grad=True)
        out, _ = critic_head_op.critic_head(hidden, weight, b, 3, "softplus")
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out, [b], create_graph=True)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("activation", ["softplus", "relu"])
@pytest.mark.parametrize("source", [False, True])
@pytest.mark.parametrize("mask", [m for m in itertools.product([False, True], repeat=5) if any(m)])
def test_paired_linear_backward_every_gradient_subset(mask, source, activation, threads):
    # hx's gradient runs beside the data columns' weight gradient, and each side's narrow
    # products (the codes' input gradient, the latent columns' weight-gradient term) beside each
    # other when both are asked for (csrc/paired_linear.cpp, side_by_side and mm_pair; at once
    # with two threads); any subset of (hx, hz, hz_shuffled, weight, bias) must give the
    # reference's gradients, the others empty. softplus reads the halves, relu the layer's
    # output. float64, 2 samples per datum, 40 units.
    hx, hz, src, weight, b, perm = linear_inputs(9, 6, 3, 40, s=2, source=source)
    out, data, latent, shuffled_half = (t.detach() for t in ops.paired_linear_forward(
        hx, hz, src, weight, b, perm, activation, 0.0))
    grad = torch.randn_like(out)
    inputs = [hx, hz, src, weight, b]
    want = iter(torch.autograd.grad(
        reference.paired_linear(hx, hz, src, weight, b, perm, activation),
        [t for t in inputs if t is not None], grad))
    want = [next(want) if t is not None else None for t in inputs]
    with torch_threads(threads), torch.no_grad():
        got = ops.paired_linear_backward(grad, hx, hz, src, weight, data, latent,
                                         shuffled_half if source else None, b, perm, activation,
                                         0.0, list(mask), out if activation == "relu" else None)
    for asked, g, w, name in zip(mask, got, want, ["hx", "hz", "hz_shuffled", "weight", "bias"]):
        if asked and w is not None:
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
        else:
            assert g.numel() == 0, name


def _paired_linear_mm_calls(threads: int, source: bool) -> tuple[int, int]:
    """aten::mm calls on the calling thread in paired_linear_forward and paired_linear_backward
    (every gradient but hx's), float32, 40 units."""
    hx, hz, src, weight, b, perm = linear_inputs(9, 6, 3, 40, s=1, source=source,
                                                 dtype=torch.float32)
    with torch_threads(threads), torch.no_grad():
        out, data, latent, shuffled_half = ops.paired_linear_forward(
            hx, hz, src, weight, b, perm, "softplus", 0.0)
        forward = calling_thread_counts(lambda: ops.paired_linear_forward(
            hx, hz, src, weight, b, perm, "softplus", 0.0), ("aten::mm",))
        backward = calling_thread_counts(lambda: ops.paired_linear_backward(
            torch.ones_like(out), hx, hz, src, weight, data, latent,
            shuffled_half if source else None, b, perm, "softplus", 0.0,
            [False, True, source, True, True]), ("aten::mm",))
    return forward.get("aten::mm", 0), backward.get("aten::mm", 0)


def test_with_two_threads_the_narrow_products_run_in_pairs():
    # csrc/paired_linear.cpp: the shuffled codes' product beside the joint codes' in the
    # forward; in the backward each side's input-gradient product beside its weight-gradient
    # term, the second of each pair on the other thread (counted here: the calling thread's
    # products only). Forward: data product + 2 narrow (1 without a source); backward: data
    # columns' weight gradient + 2 per side.
    assert _paired_linear_mm_calls(1, source=True) == (3, 5)
    assert _paired_linear_mm_calls(2, source=True) == (2, 3)
    assert _paired_linear_mm_calls(1, source=False) == (2, 3)
    assert _paired_linear_mm_calls(2, source=False) == (2, 2)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("state", ["no_grad", "inference_mode"])
def test_paired_linear_forward_in_any_thread_state(state, threads):
    # With two intra-op threads the shuffled codes' narrow product runs on the other thread
    # (mm_pair), whose thread-local state is the default: under no_grad or inference mode the
    # forward must give the reference's output and halves, none part of a graph, and leave the
    # caller's modes as they were.
    hx, hz, src, weight, b, perm = linear_inputs(70, 30, 10, 40, s=1, source=True)
    want = reference.paired_linear(hx, hz, src, weight, b, perm, "relu")
    w_latent = weight[:, 30:]
    mode = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[state]
    with torch_threads(threads), mode():
        out, data, latent, shuffled_half = ops.paired_linear_forward(hx, hz, src, weight, b, perm,
                                                                     "relu", 0.0)
        assert not torch.is_grad_enabled()
        assert torch.is_inference_mode_enabled() == (state == "inference_mode")
    for got, w in ((out, want), (latent, hz @ w_latent.t()), (shuffled_half, src @ w_latent.t())):
        assert not got.requires_grad
        torch.testing.assert_close(got, w.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("state", ["no_grad", "inference_mode"])
def test_paired_linear_backward_in_any_thread_state(state, threads):
    # With two intra-op threads hx's gradient runs on the other thread (csrc/gemm.h,
    # side_by_side), whose thread-local state is the default (gradient mode on): called as
    # autograd calls it (gradient mode off), or under inference mode, on tensors that require
    # gradient, the op must give the reference's gradients, none of them part of a graph, and
    # leave the caller's modes as they were.
    hx, hz, src, weight, b, perm = linear_inputs(70, 30, 3, 40, s=1, source=True)
    out, data, latent, shuffled_half = (t.detach() for t in ops.paired_linear_forward(
        hx, hz, src, weight, b, perm, "relu", 0.0))
    grad = torch.randn_like(out)
    want = torch.autograd.grad(reference.paired_linear(hx, hz, src, weight, b, perm, "relu"),
                               [hx, hz, src, weight, b], grad)
    mode = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[state]
    with torch_threads(threads), mode():
        got = ops.paired_linear_backward(grad, hx, hz, src, weight, data, latent, shuffled_half, b,
                                         perm, "relu", 0.0, [True] * 5)
        assert not torch.is_grad_enabled()
        assert torch.is_inference_mode_enabled() == (state == "inference_mode")
    for g, w in zip(got, want):
        assert not g.requires_grad
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
