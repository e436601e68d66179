"""NaN and inf through every fused op and every kernel activation, on the fused path and on the
reference path (``use_reference_path``), against plain torch written out here: the same NaN
positions, the same infinities, the same finite values (up to rounding, tests/tolerances.py).

torch is not consistent with itself in two places, and the kernels follow the behaviour torch
shows for nearly every element of a CPU tensor (csrc/activations.h):

- ATen's elu backward gives NaN at a NaN input in its vectorised loop but passes the gradient in
  the scalar loop that finishes a tensor (and on CUDA). For the fused path ``torch_activation``
  below evaluates torch with every element inside the vectorised loop. The reference path is
  torch itself, so its expectation is torch on a tensor of the same shape, and the gradients of
  its paired layers with elu, which activate the joint and the shuffled rows in two calls, are
  left unchecked: whether a NaN there is kept is up to torch's loop.
- torch's float32 F.gelu on contiguous CPU tensors runs oneDNN's kernel, which gives NaN at +inf
  where ATen's own formula (float64, CUDA, one-element or strided float32) gives +inf. The
  expectations here are computed with oneDNN off; every other activation is the same either way.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import infomax_ext as im
from infomax_ext import (critic_head_op, critic_mlp_op, nwj_bound_op, paired_first_layer_op,
                         paired_linear_op)
from infomax_ext.activations import KERNEL_ACTIVATIONS, apply_activation
from activation_cases import param_of
from tolerances import activation_slope, assert_close_scaled, critic_head_scales, paired_scales

pytestmark = pytest.mark.skipif(not im.extension_available(), reason="compiled ops not loaded")

NAN, INF = math.nan, math.inf
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
PATHS = ["fused", "reference"]


@pytest.fixture(autouse=True)
def _aten_kernels():
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def torch_activation(pre, activation, p, path="fused"):
    """``apply_activation`` (torch's functions) on ``pre``. For the fused path, every element is
    evaluated by ATen's vectorised loop: the values go first in a buffer whose length is a
    multiple of any vector loop's step, so none falls into the scalar loop that finishes it."""
    if path == "reference":
        return apply_activation(pre, activation, p)
    flat = pre.reshape(-1)
    pad = -flat.numel() % 256
    padded = torch.cat([flat, flat.new_zeros(pad)])
    return apply_activation(padded, activation, p)[:flat.numel()].view(pre.shape)


def on_path(path, fn, *args):
    if path == "reference":
        with im.use_reference_path():
            return fn(*args)
    return fn(*args)


def finite(t):
    return None if t is None else torch.nan_to_num(t.detach(), nan=0.0, posinf=0.0, neginf=0.0)


def assert_same(got, want, scale, what):
    """Same NaN positions, same infinities (exactly), finite values to k = 8 eps x scale."""
    got, want = got.detach(), want.detach()
    assert got.shape == want.shape, what
    nan_got, nan_want = torch.isnan(got), torch.isnan(want)
    assert torch.equal(nan_got, nan_want), (
        f"{what}: NaN at {nan_got.nonzero().tolist()}, "
        f"torch has NaN at {nan_want.nonzero().tolist()}")
    special = ~torch.isfinite(got) | ~torch.isfinite(want)
    torch.testing.assert_close(got[special], want[special], rtol=0, atol=0, equal_nan=True,
                               msg=lambda m: f"{what}: non-finite values differ: {m}")
    keep = ~special
    assert_close_scaled(got[keep], want[keep], scale.expand(want.shape)[keep], k=8, what=what)


# ------------------------------------------------------------------------------- activations

X_VALUES = [NAN, INF, -INF, 0.0, -0.0, 1.0, -1.0, 30.0, -30.0, 1e-30]
G_VALUES = [1.0, -2.0, NAN, INF]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
def test_activation_forward_and_backward_at_nan_inf_and_zero(activation, dtype, path):
    """Each activation at NaN, +-inf, +-0 and ordinary values, with incoming gradients 1, -2,
    NaN and inf: value and gradient as torch's function and its autograd give them."""
    p = param_of(activation)
    x = torch.tensor(X_VALUES, dtype=dtype).repeat_interleave(len(G_VALUES))
    g = torch.tensor(G_VALUES, dtype=dtype).repeat(len(X_VALUES))
    n = x.numel()
    # The pre-activation is data_half + latent_half + bias = x + 0 + 0 (-0.0 becomes +0.0, as in
    # torch's own sum): the joint rows are act(x); the shuffled rows read a zero source.
    a = x[:, None].clone().requires_grad_()
    b = torch.zeros(n, 1, dtype=dtype, requires_grad=True)
    source = torch.zeros(n, 1, dtype=dtype)
    bias = torch.zeros(1, dtype=dtype)
    out = on_path(path, paired_first_layer_op.paired_first_layer, a, b, source, bias, torch.arange(n), activation, p)
    grad_out = torch.cat([g[:, None], torch.zeros(n, 1, dtype=dtype)])
    grad_b, = torch.autograd.grad(out, [b], grad_out)  # the joint rows' gradient alone

    pre = ((a.detach() + torch.zeros(n, 1, dtype=dtype)) + bias)[:, 0].requires_grad_()
    want = torch_activation(pre, activation, p, path)
    want_grad, = torch.autograd.grad(want, [pre], g)
    value_scale = pre.detach().abs() + want.detach().abs()
    grad_scale = finite(g).abs() * (activation_slope(finite(pre), activation, p) + 1
                                    + finite(value_scale))
    assert_same(out[:n, 0], want, finite(value_scale), f"{activation}(x)")
    assert_same(grad_b[:, 0], want_grad, grad_scale, f"gradient of {activation}")


def test_relu_keeps_nan_and_passes_its_gradient():
    # The bug this file was written for: the fused ReLU turned NaN into 0.
    x = torch.tensor([[NAN], [1.0]], requires_grad=True)
    out = paired_first_layer_op.paired_first_layer(x, torch.zeros(2, 1), None, torch.zeros(1), torch.tensor([1, 0]),
                                  "relu", 0.0)
    assert torch.isnan(out[0, 0]) and torch.isnan(out[2, 0])  # joint and shuffled row 0
    assert out[1, 0] == 1.0 and out[3, 0] == 1.0
    grad, = torch.autograd.grad(out.sum(), [x])
    assert grad.tolist() == [[2.0], [2.0]]  # torch.relu's backward passes the gradient at NaN


# ------------------------------------------------------------------------------------- the ops


def poison(t, entries):
    """A copy of ``t`` with ``entries`` {index: value} written in, as a fresh leaf."""
    t = t.detach().clone()
    for index, value in entries.items():
        t[index] = value
    return t.requires_grad_()


PAIRED_CASES = {
    "nan in the data half": dict(a={(1, 2): NAN}),
    "+inf in the latent half": dict(b={(3, 0): INF}),
    "-inf in the source": dict(c={(0, 1): -INF}),
    "inf - inf": dict(a={(0, 0): INF}, b={(0, 0): -INF}),
    "nan in the bias": dict(bias={2: NAN}),
    "everything at once": dict(a={(2, 1): -INF}, b={(5, 3): NAN}, c={(4, 2): INF}, bias={0: INF}),
}


def paired_plain(a, b, c, bias, perm, activation, p, path):
    """paired_first_layer written out: joint row r = act(a[r % N] + b[r] + bias), shuffled row
    r = act(a[r % N] + src[perm[r]] + bias)."""
    rows = torch.arange(b.shape[0]) % a.shape[0]
    src = b if c is None else c
    pre = torch.cat([(a[rows] + b) + bias, (a[rows] + src[perm]) + bias])
    return torch_activation(pre, activation, p, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_source", [False, True])
@pytest.mark.parametrize("case", list(PAIRED_CASES))
@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
def test_paired_first_layer_with_nan_and_inf(activation, case, with_source, dtype, path):
    g = torch.Generator().manual_seed(0)
    n, s, h = 3, 2, 4
    base = dict(a=torch.randn(n, h, generator=g, dtype=dtype),
                b=torch.randn(s * n, h, generator=g, dtype=dtype),
                c=torch.randn(s * n, h, generator=g, dtype=dtype),
                bias=torch.randn(h, generator=g, dtype=dtype))
    entries = PAIRED_CASES[case]
    if not with_source and "c" in entries:
        entries = dict(entries, b={**entries.get("b", {}), **entries["c"]})
    t = {k: poison(v, entries.get(k, {})) for k, v in base.items()}
    if not with_source:
        t["c"] = None
    perm = im.latent_permutation(n, s, seed=3)
    p = param_of(activation)
    args = (t["a"], t["b"], t["c"], t["bias"])
    out = on_path(path, paired_first_layer_op.paired_first_layer, *args, perm, activation, p)
    want = paired_plain(*args, perm, activation, p, path)
    grad_out = torch.randn(out.shape, generator=g, dtype=dtype)
    forward, grad_scales = paired_scales(im.reference.paired_first_layer, [finite(v) for v in args],
                                         perm, activation, p, grad_out)
    assert_same(out, want, forward, "output")
    if path == "reference" and activation == "elu":
        return  # torch's elu'(NaN) depends on where the element falls in ATen's loop (above)
    leaves = [v for v in args if v is not None]
    got = torch.autograd.grad(out, leaves, grad_out)
    expected = torch.autograd.grad(want, leaves, grad_out)
    for k, (g1, g2, scale) in enumerate(zip(got, expected, grad_scales)):
        assert_same(g1, g2, scale, f"gradient {k}")


LINEAR_CASES = {
    "nan in hx": dict(hx={(1, 0): NAN}),
    "+inf in hz": dict(hz={(2, 1): INF}),
    "-inf in the source": dict(src={(0, 0): -INF}),
    "nan in the weight": dict(weight={(3, 4): NAN}),
    "inf in the bias": dict(bias={1: INF}),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_source", [False, True])
@pytest.mark.parametrize("case", list(LINEAR_CASES))
@pytest.mark.parametrize("activation", ["relu", "elu", "gelu"])
def test_paired_linear_with_nan_and_inf(activation, case, with_source, dtype, path):
    g = torch.Generator().manual_seed(1)
    n, s, dx, dz, h = 3, 2, 3, 2, 5
    base = dict(hx=torch.randn(n, dx, generator=g, dtype=dtype),
                hz=torch.randn(s * n, dz, generator=g, dtype=dtype),
                src=torch.randn(s * n, dz, generator=g, dtype=dtype),
                weight=torch.randn(h, dx + dz, generator=g, dtype=dtype),
                bias=torch.randn(h, generator=g, dtype=dtype))
    entries = LINEAR_CASES[case]
    if not with_source and "src" in entries:
        entries = {"hz": entries["src"]}
    t = {k: poison(v, entries.get(k, {})) for k, v in base.items()}
    if not with_source:
        t["src"] = None
    perm = im.latent_permutation(n, s, seed=4)
    p = param_of(activation)
    args = (t["hx"], t["hz"], t["src"], t["weight"], t["bias"])
    out = on_path(path, paired_linear_op.paired_linear, *args, perm, activation, p)
    # Plain torch: the op's definition, the weight split into its data and latent columns (a
    # Linear layer on the concatenated pairs sums the same products in another grouping, where
    # 0 * inf terms can give NaN in one grouping and inf in the other).
    rows = torch.arange(s * n) % n
    w_data, w_latent = t["weight"][:, :dx], t["weight"][:, dx:]
    data_half = (t["hx"] @ w_data.t())[rows]
    latent_half = t["hz"] @ w_latent.t()
    shuffled_half = latent_half if t["src"] is None else t["src"] @ w_latent.t()
    pre = torch.cat([data_half + latent_half + t["bias"],
                     data_half + shuffled_half[perm] + t["bias"]])
    want = torch_activation(pre, activation, p, path)
    grad_out = torch.randn(out.shape, generator=g, dtype=dtype)
    forward, grad_scales = paired_scales(im.reference.paired_linear, [finite(v) for v in args],
                                         perm, activation, p, grad_out)
    assert_same(out, want, forward, "output")
    if path == "reference" and activation == "elu":
        return  # torch's elu'(NaN) depends on where the element falls in ATen's loop (above)
    leaves = [v for v in args if v is not None]
    for k, (g1, g2, scale) in enumerate(zip(torch.autograd.grad(out, leaves, grad_out),
                                            torch.autograd.grad(want, leaves, grad_out),
                                            grad_scales)):
        assert_same(g1, g2, scale, f"gradient {k}")


HEAD_CASES = {
    "nan in a joint row": dict(hidden={(1, 2): NAN}),
    "nan in a shuffled row": dict(hidden={(6, 0): NAN}),
    "+inf in a joint row": dict(hidden={(0, 1): INF}),
    "-inf in a shuffled row": dict(hidden={(5, 3): -INF}),
    "+inf in a shuffled row": dict(hidden={(4, 3): INF}),
    "nan in the weight": dict(weight={2: NAN}),
    "inf in the bias": dict(bias={0: INF}),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(HEAD_CASES))
@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
def test_critic_head_with_nan_and_inf(activation, case, dtype, path):
    g = torch.Generator().manual_seed(2)
    rows, h, n_joint = 8, 4, 4
    base = dict(hidden=torch.randn(rows, h, generator=g, dtype=dtype),
                weight=torch.randn(h, generator=g, dtype=dtype) / 2,
                bias=torch.randn(1, generator=g, dtype=dtype))
    t = {k: poison(v, HEAD_CASES[case].get(k, {})) for k, v in base.items()}
    p = param_of(activation)
    bound, scores = on_path(path, critic_head_op.critic_head, t["hidden"], t["weight"], t["bias"], n_joint,
                            activation, p)
    want_scores = torch_activation(t["hidden"] @ t["weight"] + t["bias"], activation, p, path)
    want = want_scores[:n_joint].mean() - torch.exp(want_scores[n_joint:] - 1).mean()
    score_scale, bound_scale, grad_scales = critic_head_scales(
        finite(t["hidden"]), finite(t["weight"]), finite(t["bias"]), n_joint, activation, p)
    assert_same(scores, want_scores, score_scale, "scores")
    assert_same(bound, want, bound_scale, "bound")
    leaves = [t["hidden"], t["weight"], t["bias"]]
    for k, (g1, g2, scale) in enumerate(zip(torch.autograd.grad(bound, leaves),
                                            torch.autograd.grad(want, leaves), grad_scales)):
        assert_same(g1, g2, scale, f"gradient {k}")


NWJ_CASES = {
    "nan joint": ({3: NAN}, {}),
    "nan shuffled": ({}, {0: NAN}),
    "+inf joint": ({1: INF}, {}),
    "-inf joint": ({1: -INF}, {}),
    "+inf shuffled": ({}, {2: INF}),
    "-inf shuffled": ({}, {2: -INF}),
    "+inf both: inf - inf": ({0: INF}, {1: INF}),
    "+inf and -inf joint": ({0: INF, 2: -INF}, {}),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(NWJ_CASES))
def test_nwj_bound_with_nan_and_inf(case, dtype, path):
    g = torch.Generator().manual_seed(3)
    joint_entries, marg_entries = NWJ_CASES[case]
    tj = poison(torch.randn(5, generator=g, dtype=dtype), joint_entries)
    tm = poison(torch.randn(4, generator=g, dtype=dtype), marg_entries)
    bound = on_path(path, nwj_bound_op.nwj_bound, tj, tm)
    want = tj.mean() - torch.exp(tm - 1).mean()
    growth = torch.exp(finite(tm) - 1)
    scale = finite(tj).abs().mean() + growth.mean() * (1 + finite(tm).abs().max())
    assert_same(bound, want, scale, "bound")
    for name, g1, g2 in zip(("t_joint", "t_shuffled"), torch.autograd.grad(bound, [tj, tm]),
                            torch.autograd.grad(want, [tj, tm])):
        assert_same(g1, g2, finite(g2).abs() + 1 / tj.numel(), f"gradient of {name}")


@pytest.mark.parametrize("rows", [130, 5000])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_the_chunked_reductions_keep_a_single_nan(rows, where):
    """nwj_bound and critic_head sum their rows in chunks, across threads: one NaN row anywhere,
    in the joint or the shuffled half, makes the bound NaN, as torch's mean does."""
    g = torch.Generator().manual_seed(4)
    n_joint = rows // 2
    index = {"first": 0, "middle": rows // 2 + 7, "last": rows - 1}[where]
    scores = torch.randn(rows, generator=g)
    scores[index] = NAN
    assert torch.isnan(im.nwj_bound(scores[:n_joint], scores[n_joint:]))
    hidden = torch.randn(rows, 16, generator=g)
    hidden[index, 5] = NAN
    for activation in ("relu", "identity", "sigmoid"):
        bound, out = im.critic_head_op.critic_head(hidden, torch.randn(16, generator=g), None, n_joint,
                                      activation)
        assert torch.isnan(bound) and torch.isnan(out[index]) and torch.isnan(out).sum() == 1


# ----------------------------------------------------------------------------- public losses


def relu_chain(first_activation):
    torch.manual_seed(0)
    return im.MutualInfoChain.from_sizes(6, 2, [8, 4], [first_activation, torch.relu],
                                         torch.relu).double()


MI_CASES = {
    "nan in x": ("x", (2, 3), NAN),
    "+inf in x": ("x", (0, 0), INF),
    "nan in z": ("z", (4, 1), NAN),
    "-inf in z": ("z", (1, 0), -INF),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", list(MI_CASES))
@pytest.mark.parametrize("first_activation", [torch.relu, F.elu, F.gelu, torch.tanh])
def test_variational_mutual_info_with_nan_and_inf(first_activation, case, path):
    """The public loss on the fused path and on the reference path gives what the chain's own
    two calls give: NaN for NaN, the same infinities, the same parameter gradients."""
    mi = relu_chain(first_activation)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 6, generator=g, dtype=torch.float64)
    z = torch.randn(6, 2, generator=g, dtype=torch.float64)
    name, index, value = MI_CASES[case]
    (x if name == "x" else z)[index] = value
    params = list(mi.parameters())
    got = on_path(path, lambda: im.variational_mutual_info(mi, x, z, seed=9))
    got_grads = torch.autograd.grad(got, params)
    z_shuffle = im.shuffle_latent(z, seed=9)
    want = mi(x, z).mean() - torch.exp(mi(x, z_shuffle) - 1).mean()
    want_grads = torch.autograd.grad(want, params)
    assert torch.isnan(want) == torch.isnan(got)
    torch.testing.assert_close(got, want, equal_nan=True)
    for g1, g2 in zip(got_grads, want_grads):
        assert torch.equal(torch.isnan(g1), torch.isnan(g2))
        torch.testing.assert_close(g1, g2, equal_nan=True)


@pytest.mark.parametrize("path", PATHS)
def test_miloss_with_a_nan_input_is_nan(path):
    torch.manual_seed(0)
    vae = im.VAE(im.JointGaussianLogEncoder.from_sizes(6, 2, [8], [torch.relu]),
                 im.BernoulliDecoder.from_sizes(6, 2, [8], [torch.relu]))
    mi = im.MutualInfoChain.from_sizes(6, 2, [8, 4], [torch.relu, torch.relu], torch.relu)
    vae, mi = vae.double(), mi.double()
    x = torch.rand(8, 6, dtype=torch.float64)
    x[3, 2] = NAN
    torch.manual_seed(1)
    loss = on_path(path, lambda: im.miloss(vae, mi, x, seed=2))
    torch.manual_seed(1)
    with torch.no_grad():
        z = vae.sample_latent(vae.encoder(x))
    want = -(mi(x, z).mean() - torch.exp(mi(x, im.shuffle_latent(z, seed=2)) - 1).mean())
    assert torch.isnan(want) and torch.isnan(loss)
    grads = torch.autograd.grad(loss, list(mi.parameters()))
    want_grads = torch.autograd.grad(want, list(mi.parameters()))
    for g1, g2 in zip(grads, want_grads):
        assert torch.equal(torch.isnan(g1), torch.isnan(g2))
        torch.testing.assert_close(g1, g2, equal_nan=True)


# ---------------------------------------------------------------------------------- critic_mlp


MLP_CASES = {
    "nan in a joint row": dict(hidden={(1, 2): NAN}),
    "nan in a shuffled row": dict(hidden={(6, 0): NAN}),
    "+inf in a joint row": dict(hidden={(0, 1): INF}),
    "-inf in a shuffled row": dict(hidden={(5, 3): -INF}),
    "inf and nan in two rows": dict(hidden={(2, 0): -INF, (7, 3): NAN}),
    "nan in a weight": dict(w1={(1, 4): NAN}),
}


def mlp_plain(hidden, weights, biases, activations, params, head_weight, head_bias, n_joint,
              head_activation, head_param, path):
    """critic_mlp written out: h = act(h W^T + b) per layer, then the head and the bound."""
    h = hidden
    for w, b, act, p in zip(weights, biases, activations, params):
        pre = h @ w.t()
        h = torch_activation(pre + b if b is not None else pre, act, p, path)
    pre = h @ head_weight
    scores = torch_activation(pre + head_bias if head_bias is not None else pre,
                              head_activation, head_param, path)
    return scores[:n_joint].mean() - torch.exp(scores[n_joint:] - 1).mean(), scores


def _mlp_params():
    for activation in ["relu", "tanh", "gelu"]:
        for dtype in (torch.float32, torch.float64):
            for path in PATHS:
                for case in MLP_CASES:
                    yield pytest.param(activation, dtype, path, case,
                                       id=f"{activation}-{str(dtype)[6:]}-{path}-{case}")


@pytest.mark.parametrize("activation,dtype,path,case", list(_mlp_params()))
def test_critic_mlp_with_nan_and_inf(activation, dtype, path, case):
    """NaN and inf in hidden (or a weight) through two hidden layers and the head: the same NaN
    positions and infinities as torch written out, in the scores, the bound and every
    gradient; the finite values to the scaled tolerance of tests/test_critic_mlp.py."""
    from test_critic_mlp import make_mlp, mlp_scales

    mlp = make_mlp(8, [4, 5, 3], [activation, activation], [True, False], "identity", True,
                   dtype, seed=6, requires_grad=False)
    entries = MLP_CASES[case]
    hidden = poison(mlp.hidden, entries.get("hidden", {}))
    w1 = poison(mlp.weights[1], entries.get("w1", {}))
    mlp = mlp.with_tensors([hidden, poison(mlp.weights[0], {}), w1,
                            *[poison(t, {}) for t in mlp.tensors()[3:]]])
    bound, scores = on_path(path, critic_mlp_op.critic_mlp, *mlp.args())
    want_bound, want_scores = mlp_plain(*mlp.args(), path)
    finite_mlp = mlp.with_tensors([finite(t) for t in mlp.tensors()])
    score_scale, bound_scale, grad_scales = mlp_scales(finite_mlp, dtype, 1.0,
                                                       torch.ones(8, dtype=dtype))
    assert_same(scores, want_scores, score_scale, "scores")
    assert_same(bound, want_bound, bound_scale, "bound")
    leaves = mlp.tensors()
    got = torch.autograd.grad(bound + scores.sum(), leaves)
    expected = torch.autograd.grad(want_bound + want_scores.sum(), leaves)
    for name, g1, g2, scale in zip(mlp.names(), got, expected, grad_scales):
        assert_same(g1, g2, _at_least_the_value(scale, g2), f"gradient of {name}")


def _at_least_the_value(scale, want):
    # The scales come from finite stand-ins of the inputs (NaN and inf as 0), which can take
    # another branch than the real row (a stand-in 0 gives relu' = 0, scale 0) while the real,
    # finite result still carries rounding of its own size: never below |want|.
    value = want.detach().to(torch.float64).abs().nan_to_num(0.0, 0.0, 0.0)
    return torch.maximum(scale.to(torch.float64).expand(want.shape), value)


@pytest.mark.parametrize("dtype", [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.float64, id="float64")])
def test_critic_mlp_relu_keeps_nan_and_passes_its_gradient(dtype):
    # The smallest case: one relu layer, W = [[1]], head weight [1], no biases. Row 0 is NaN:
    # torch.relu(NaN) = NaN, so score 0 and the bound are NaN; relu'(NaN) passes the gradient.
    hidden = torch.tensor([[NAN], [1.0]], dtype=dtype, requires_grad=True)
    one = torch.ones(1, 1, dtype=dtype)
    bound, scores = critic_mlp_op.critic_mlp(hidden, [one], [None], ["relu"], [0.0], one[0], None, 1,
                                 "identity", 0.0)
    assert torch.isnan(scores[0]) and scores[1] == 1.0 and torch.isnan(bound)
    grad, = torch.autograd.grad(scores.sum(), [hidden])
    assert grad.tolist() == [[1.0], [1.0]]
