"""critic_mlp, the MI chain after its paired first layer as one op (csrc/critic_mlp.cpp): values and
every gradient against its plain-PyTorch twin (reference.critic_mlp), gradcheck, opcheck and the
fake kernels, torch.compile, the gradients asked for, double backward, bad input, determinism,
and paired_mutual_info running it on the chains it applies to."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infomax_ext as im
from infomax_ext import critic_chain_op, critic_mlp_op, reference
from infomax_ext.activations import KERNEL_ACTIVATIONS, apply_activation
from infomax_ext.mutual_info import fused_plan
from activation_cases import param_of
from infomax_ext.cli.model_io import torch_threads
from op_counts import calling_thread_counts
from tolerances import assert_close_scaled, eps

pytestmark = pytest.mark.skipif(not im.extension_available(), reason="compiled ops not loaded")

ops = torch.ops.infomax_ext
F64 = torch.float64
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(F64, id="float64")]


# ------------------------------------------------------------------------------------ inputs


@dataclass
class Mlp:
    """The arguments of critic_mlp: hidden (R, H_0), per layer a weight (H_{l+1}, H_l), a bias or
    None, an activation and its parameter; the head's weight (H_L,), bias (1,) or None,
    activation and parameter; n_joint = R / 2."""

    hidden: torch.Tensor
    weights: list
    biases: list
    activations: list
    params: list
    head_weight: torch.Tensor
    head_bias: torch.Tensor | None
    n_joint: int
    head_activation: str
    head_param: float

    def args(self) -> tuple:
        return (self.hidden, self.weights, self.biases, self.activations, self.params,
                self.head_weight, self.head_bias, self.n_joint, self.head_activation,
                self.head_param)

    def tensors(self) -> list:
        """Every tensor argument present, in the order the gradient scales come in: hidden,
        the weights, the present biases, head_weight, head_bias."""
        return [self.hidden, *self.weights, *[b for b in self.biases if b is not None],
                self.head_weight, *([self.head_bias] if self.head_bias is not None else [])]

    def names(self) -> list:
        return (["hidden"] + [f"weights[{i}]" for i in range(len(self.weights))]
                + [f"biases[{i}]" for i, b in enumerate(self.biases) if b is not None]
                + ["head_weight"] + (["head_bias"] if self.head_bias is not None else []))

    def with_tensors(self, tensors) -> "Mlp":
        """The same layout with ``tensors`` (in the order of :meth:`tensors`)."""
        it = iter(tensors)
        hidden = next(it)
        weights = [next(it) for _ in self.weights]
        biases = [next(it) if b is not None else None for b in self.biases]
        head_weight = next(it)
        head_bias = next(it) if self.head_bias is not None else None
        return replace(self, hidden=hidden, weights=weights, biases=biases,
                       head_weight=head_weight, head_bias=head_bias)


def make_mlp(rows, widths, activations, biases, head_activation="identity", head_bias=True,
             dtype=F64, seed=0, requires_grad=True) -> Mlp:
    """Normal inputs drawn in float64 and rounded to ``dtype``; weights scaled by 1/sqrt(fan-in)
    (as a Linear layer's init), so that the scores stay of order 1."""
    g = torch.Generator().manual_seed(seed)

    def make(*shape, scale=1.0):
        t = (scale * torch.randn(*shape, generator=g, dtype=F64)).to(dtype)
        return t.requires_grad_(requires_grad)

    layers = len(widths) - 1
    assert len(activations) == len(biases) == layers
    return Mlp(
        hidden=make(rows, widths[0]),
        weights=[make(widths[i + 1], widths[i], scale=max(widths[i], 1) ** -0.5)
                 for i in range(layers)],
        biases=[make(widths[i + 1], scale=0.5) if present else None
                for i, present in enumerate(biases)],
        activations=list(activations),
        params=[param_of(a) for a in activations],
        head_weight=make(widths[-1], scale=max(widths[-1], 1) ** -0.5),
        head_bias=make(1, scale=0.5) if head_bias else None,
        n_joint=rows // 2,
        head_activation=head_activation,
        head_param=param_of(head_activation),
    )


# ----------------------------------------------------------------------------- tolerances


def _f64(t):
    return None if t is None else t.detach().to(F64)


def _derivatives(x, activation, param):
    """|f'(x)| and |f''(x)| per element (float64 autograd of the reference activation)."""
    x = x.detach().clone().requires_grad_()
    first, = torch.autograd.grad(apply_activation(x, activation, param).sum(), x,
                                 create_graph=True)
    if first.requires_grad:
        second, = torch.autograd.grad(first.sum(), x, allow_unused=True, materialize_grads=True)
    else:  # identity: f' is a constant
        second = torch.zeros_like(x)
    return first.detach().abs(), second.detach().abs()


def _jump_at_zero(activation, param) -> float:
    """|f'(0+) - f'(0-)|: 1 for relu, |1 - slope| for leaky_relu, |1 - alpha| for elu."""
    x = torch.tensor([1e-200, -1e-200], dtype=F64, requires_grad=True)
    d, = torch.autograd.grad(apply_activation(x, activation, param).sum(), x)
    return float((d[0] - d[1]).abs())


NEAR_ZERO = 16  # a pre-activation within 16 eps x its scale of 0 may fall on either side of a kink


def mlp_scales(mlp: Mlp, dtype, grad_bound=1.0, grad_scores=None):
    """Scales for ``assert_close_scaled`` (|got - want| <= k eps scale) of critic_mlp's scores,
    bound and gradients (order of Mlp.tensors), with ``grad_bound`` on the bound and
    ``grad_scores`` (or none) on the scores.

    A running error analysis in float64, the approach of tests/tolerances.py carried through
    the layers: with every error in units of eps, a layer's pre-activation is off by the sum of
    |terms| of its product and bias (rounding) plus |W| times its input's error; its output by
    |f'| times that plus |f(pre)| (the activation's own rounding). The backward propagates
    magnitudes (sums of |terms|) and errors alike: each product a gradient passes through adds
    the rounding of its sum of |terms| plus the error of each factor times the other's
    magnitude; f'(pre) is off by |f''| times the pre-activation's error, and where the
    pre-activation is within its error of a kink at 0 (relu, leaky_relu, elu) either side's
    derivative is right, so the jump in f' times the gradient is allowed there (1/eps, as the
    scale is in units of eps). The shuffled scores enter the bound through exp(t - 1), whose
    relative error is t's absolute error.
    """
    e = eps(dtype)
    x = _f64(mlp.hidden)
    ax, ex = x.abs(), torch.zeros_like(x)
    layers = []
    for w, b, act, p in zip(mlp.weights, mlp.biases, mlp.activations, mlp.params):
        w = _f64(w)
        aw = w.abs()
        pre = x @ w.t() + (_f64(b) if b is not None else 0.0)
        e_pre = ax @ aw.t() + (_f64(b).abs() if b is not None else 0.0) + ex @ aw.t()
        d1, d2 = _derivatives(pre, act, p)
        near = pre.abs() <= NEAR_ZERO * e * e_pre
        out = apply_activation(pre, act, p)
        slope = torch.where(near, d1.clamp(min=1.0), d1)
        layers.append((ax, ex, aw, e_pre, d1, d2, near.to(F64) * _jump_at_zero(act, p)))
        x, ax, ex = out, out.abs(), slope * e_pre + out.abs()
    hw, hb = _f64(mlp.head_weight), _f64(mlp.head_bias)
    aw = hw.abs()
    pre = x @ hw + (hb if hb is not None else 0.0)
    e_pre = ax @ aw + (hb.abs() if hb is not None else 0.0) + ex @ aw
    d1, d2 = _derivatives(pre, mlp.head_activation, mlp.head_param)
    near = pre.abs() <= NEAR_ZERO * e * e_pre
    t = apply_activation(pre, mlp.head_activation, mlp.head_param)
    e_t = torch.where(near, d1.clamp(min=1.0), d1) * e_pre + t.abs()
    n = mlp.n_joint
    m = t.numel() - n
    growth = torch.exp(t[n:] - 1)
    bound_scale = e_t[:n].mean() + (growth * (1 + e_t[n:])).mean()

    # Backward. dscore: grad_bound / n on joint rows, -grad_bound exp(t - 1) / m on shuffled ones,
    # plus grad_scores.
    gb = abs(float(grad_bound))
    from_bound = torch.cat([torch.full((n,), gb / n, dtype=F64), gb * growth / m])
    gs = _f64(grad_scores).abs() if grad_scores is not None else torch.zeros_like(t)
    mag = from_bound + gs
    err = from_bound * (2 + torch.cat([torch.zeros(n, dtype=F64), e_t[n:]])) + gs
    jump = near.to(F64) * _jump_at_zero(mlp.head_activation, mlp.head_param)
    p_mag = mag * d1
    p_err = err * d1 + mag * (d2 * e_pre + d1) + jump * mag / e
    head_grads = [p_err @ ax + p_mag @ (ex + ax)]
    if hb is not None:
        head_grads.append((p_err + p_mag).sum().reshape(1))
    g_mag, g_err = torch.outer(p_mag, aw), torch.outer(p_err + p_mag, aw)
    weight_grads, bias_grads = [], []
    for (ax, ex, aw, e_pre, d1, d2, jump), b in zip(reversed(layers), reversed(mlp.biases)):
        p_mag = g_mag * d1
        p_err = g_err * d1 + g_mag * (d2 * e_pre + d1) + jump * g_mag / e
        weight_grads.insert(0, p_err.t() @ ax + p_mag.t() @ (ex + ax))
        if b is not None:
            bias_grads.insert(0, (p_err + p_mag).sum(0))
        g_mag, g_err = p_mag @ aw, (p_err + p_mag) @ aw
    return e_t, bound_scale, [g_err, *weight_grads, *bias_grads, *head_grads]


# Each comparison allows 8 eps x scale, as tests/test_ops.py (the scales above are sums of
# |terms| and error bounds, so the rounding actually seen stays well under 1 of them).
K = 8


def check_against_reference(mlp: Mlp, dtype, seed=0):
    """Scores, bound and every gradient of the op equal the reference's: the bound's gradient
    alone, then bound and scores together (random grad_bound and grad_scores)."""
    got = critic_mlp_op.critic_mlp(*mlp.args())
    want = reference.critic_mlp(*mlp.args())
    assert got[0].grad_fn.name() == "_CriticMlpBackward"  # the op, not the reference
    score_scale, bound_scale, _ = mlp_scales(mlp, dtype)
    assert_close_scaled(got[1], want[1], score_scale, k=K, what="scores")
    assert_close_scaled(got[0], want[0], bound_scale, k=K, what="bound")
    leaves = mlp.tensors()
    g = torch.Generator().manual_seed(seed + 100)
    grad_bound = torch.randn((), generator=g, dtype=F64).to(dtype)
    grad_scores = torch.randn(got[1].shape, generator=g, dtype=F64).to(dtype)
    for outputs, grads in (((0,), (torch.ones((), dtype=dtype),)),
                           ((0, 1), (grad_bound, grad_scores))):
        *_, scales = mlp_scales(mlp, dtype, grads[0], grads[1] if len(grads) > 1 else None)
        got_grads = torch.autograd.grad([got[i] for i in outputs], leaves, grads,
                                        retain_graph=True)
        want_grads = torch.autograd.grad([want[i] for i in outputs], leaves, grads,
                                         retain_graph=True)
        assert len(scales) == len(got_grads) == len(want_grads) == len(leaves)
        for name, g1, g2, scale in zip(mlp.names(), got_grads, want_grads, scales):
            assert_close_scaled(g1, g2, scale, k=K, what=f"gradient of {name} (outputs {outputs})")


# -------------------------------------------------------------------- values and gradients


# (widths, activations, biases, head activation): 0 to 3 hidden layers, biases mixed, an
# identity between two Linears (a middle "Linear, Linear").
LAYER_CASES = {
    "0 layers": ([5], [], [], "softplus"),
    "1 layer": ([5, 7], ["gelu"], [True], "identity"),
    "2 layers, the first without bias": ([6, 9, 4], ["relu", "tanh"], [False, True], "sigmoid"),
    "3 layers, Linear Linear": ([5, 8, 6, 3], ["leaky_relu", "identity", "relu"],
                                [True, False, True], "identity"),
    "3 layers, no biases": ([4, 6, 5, 7], ["silu", "elu", "mish"], [False, False, False], "tanh"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [2, 6, 300])
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_matches_reference_for_each_layer_count(case, rows, dtype):
    # rows = 2: one joint and one shuffled row; 300: the bias gradients' column sums run over
    # ten 32-row chunks (csrc/cpu/activation_cpu.cpp), the head's likewise.
    widths, activations, biases, head_activation = LAYER_CASES[case]
    for head_bias in (True, False):
        mlp = make_mlp(rows, widths, activations, biases, head_activation, head_bias, dtype,
                       seed=rows)
        check_against_reference(mlp, dtype, seed=rows)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", KERNEL_ACTIVATIONS)
def test_matches_reference_for_each_activation(activation, dtype):
    # In both hidden layers and as the head's activation; then in one layer before an identity
    # head without bias. 40 rows: a full and a partial 32-row chunk.
    mlp = make_mlp(40, [6, 10, 7], [activation, activation], [True, False], activation, True,
                   dtype, seed=1)
    check_against_reference(mlp, dtype)
    mlp = make_mlp(40, [6, 5], [activation], [True], "identity", False, dtype, seed=2)
    check_against_reference(mlp, dtype)


def test_the_scaled_tolerance_catches_an_error_of_the_size_of_a_bug():
    # The scales must not be so loose that a wrong value passes: the op's own rounding passes
    # (at most 0.82 of k = 8 seen over LAYER_CASES in float32), a relative error of 1e-3 in a
    # weight gradient or of 1e-4 in the scores fails (float32, 300 rows, 3 layers).
    mlp = make_mlp(300, [5, 8, 6, 3], ["leaky_relu", "identity", "relu"], [True, False, True],
                   "sigmoid", True, torch.float32, seed=3)
    leaves = mlp.tensors()
    got, want = critic_mlp_op.critic_mlp(*mlp.args()), reference.critic_mlp(*mlp.args())
    got_grads = torch.autograd.grad(got[0], leaves)
    want_grads = torch.autograd.grad(want[0], leaves)
    score_scale, _, scales = mlp_scales(mlp, torch.float32)
    assert_close_scaled(got[1], want[1], score_scale, k=K)
    assert_close_scaled(got_grads[2], want_grads[2], scales[2], k=K)
    with pytest.raises(AssertionError, match="allowed 8"):
        assert_close_scaled(got[1] * (1 + 1e-4), want[1], score_scale, k=K)
    with pytest.raises(AssertionError, match="allowed 8"):
        assert_close_scaled(got_grads[2] * (1 + 1e-3), want_grads[2], scales[2], k=K)


def test_exact_hand_computed_values():
    # One layer: h = relu(x W^T + b) with W = [[1, -1]], b = [0.5]; head t = 2 h - 1.
    # Rows (joint, joint, shuffled, shuffled): x W^T = 1, -3, 2, 0 -> h = 1.5, 0, 2.5, 0.5
    # -> t = 2, -1, 4, 0; bound = (2 - 1) / 2 - (e^3 + e^-1) / 2.
    hidden = torch.tensor([[2.0, 1.0], [0.0, 3.0], [3.0, 1.0], [1.0, 1.0]], dtype=F64,
                          requires_grad=True)
    weight = torch.tensor([[1.0, -1.0]], dtype=F64, requires_grad=True)
    bias = torch.tensor([0.5], dtype=F64, requires_grad=True)
    head_weight = torch.tensor([2.0], dtype=F64, requires_grad=True)
    head_bias = torch.tensor([-1.0], dtype=F64, requires_grad=True)
    bound, scores = critic_mlp_op.critic_mlp(hidden, [weight], [bias], ["relu"], [0.0], head_weight,
                                 head_bias, 2, "identity", 0.0)
    e = torch.e
    assert scores.tolist() == [2.0, -1.0, 4.0, 0.0]
    assert bound.item() == pytest.approx(0.5 - (e ** 3 + e ** -1) / 2, rel=1e-15)
    # d bound / d t = (1/2, 1/2, -e^3/2, -e^-1/2); d t / d h = 2 on every row; relu passes rows
    # 0, 2 and 3 (h > 0) and stops row 1.
    dt = torch.tensor([0.5, 0.5, -e ** 3 / 2, -e ** -1 / 2], dtype=F64)
    dpre = 2 * dt * torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=F64)
    g_hidden, g_weight, g_bias, g_hw, g_hb = torch.autograd.grad(
        bound, [hidden, weight, bias, head_weight, head_bias])
    torch.testing.assert_close(g_hidden, dpre[:, None] * weight.detach(), rtol=1e-15, atol=0)
    torch.testing.assert_close(g_weight, (dpre @ hidden.detach())[None], rtol=1e-15, atol=0)
    torch.testing.assert_close(g_bias, dpre.sum().reshape(1), rtol=1e-15, atol=0)
    h = torch.tensor([1.5, 0.0, 2.5, 0.5], dtype=F64)
    torch.testing.assert_close(g_hw, (dt * h).sum().reshape(1), rtol=1e-15, atol=0)
    torch.testing.assert_close(g_hb, dt.sum().reshape(1), rtol=1e-15, atol=0)


def test_noncontiguous_inputs():
    # A transposed weight, a strided hidden, a strided head weight: bit for bit what the same
    # values give contiguous, in both dtypes (float32 hands oneDNN contiguous weights only).
    for dtype in (torch.float32, F64):
        mlp = make_mlp(8, [4, 5, 3], ["gelu", "relu"], [True, True], "identity", True, dtype,
                       requires_grad=False)
        strided = replace(
            mlp,
            hidden=torch.cat([mlp.hidden, mlp.hidden], 1)[:, ::2].requires_grad_(),
            weights=[mlp.weights[0].t().contiguous().t().requires_grad_(),
                     mlp.weights[1].requires_grad_()],
            biases=[b.requires_grad_() for b in mlp.biases],
            head_weight=torch.stack([mlp.head_weight, mlp.head_weight], 1)[:, 0].requires_grad_(),
            head_bias=mlp.head_bias.requires_grad_())
        assert not strided.hidden.is_contiguous() and not strided.weights[0].is_contiguous()
        assert not strided.head_weight.is_contiguous()
        contiguous = strided.with_tensors([t.detach().contiguous().requires_grad_()
                                           for t in strided.tensors()])
        got = critic_mlp_op.critic_mlp(*strided.args())
        want = critic_mlp_op.critic_mlp(*contiguous.args())
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        for g1, g2 in zip(torch.autograd.grad(got[0], strided.tensors()),
                          torch.autograd.grad(want[0], contiguous.tensors())):
            assert torch.equal(g1, g2)


def test_the_inputs_are_left_unchanged():
    # The op writes its activation passes and its gradient scaling in place, into buffers of
    # its own only: the caller's tensors (and the incoming score gradient) keep their bits.
    for dtype in (torch.float32, F64):
        for activations in (["identity", "identity"], ["relu", "tanh"]):
            mlp = make_mlp(6, [3, 4, 2], activations, [True, False], "identity", True, dtype)
            before = [t.detach().clone() for t in mlp.tensors()]
            bound, scores = critic_mlp_op.critic_mlp(*mlp.args())
            grad_scores = torch.randn_like(scores)
            kept = grad_scores.clone()
            torch.autograd.grad((bound, scores), mlp.tensors(), (torch.ones_like(bound),
                                                                 grad_scores))
            for t, b in zip(mlp.tensors(), before):
                assert torch.equal(t.detach(), b)
            assert torch.equal(grad_scores, kept)


# ------------------------------------------------------------------------------- gradcheck


GRADCHECK_CASES = {
    "relu": ([3, 4, 3], ["relu", "relu"], [True, False], "identity"),
    "tanh": ([3, 4, 3], ["tanh", "tanh"], [False, True], "tanh"),
    "gelu, Linear Linear": ([3, 4, 2, 3], ["gelu", "identity", "gelu"], [True, True, False],
                            "softplus"),
    "no hidden layer": ([4], [], [], "sigmoid"),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradcheck(case):
    # Both outputs: gradcheck differentiates the bound (no score gradient) and each score (no
    # bound gradient) w.r.t. hidden, every weight and bias, the head weight and the head bias.
    widths, activations, biases, head_activation = GRADCHECK_CASES[case]
    mlp = make_mlp(6, widths, activations, biases, head_activation, True, seed=7)

    def f(*tensors):
        return critic_mlp_op.critic_mlp(*mlp.with_tensors(tensors).args())

    assert torch.autograd.gradcheck(f, mlp.tensors())


def test_gradcheck_of_a_loss_of_bound_and_scores():
    # Both gradients into one backward call, as a loss with a score regularizer gives them.
    mlp = make_mlp(6, [3, 4, 3], ["elu", "silu"], [True, True], "mish", True, seed=8)

    def loss(*tensors):
        bound, scores = critic_mlp_op.critic_mlp(*mlp.with_tensors(tensors).args())
        return bound + 0.3 * scores.pow(2).sum()

    assert torch.autograd.gradcheck(loss, mlp.tensors())


# --------------------------------------------------------------- the products' backends


def product_ops(mlp: Mlp, threads: int = 1, wrt: list | None = None) -> dict:
    """How often each matrix-product op runs in one forward and backward of critic_mlp on the
    calling thread (with ``threads`` intra-op threads; with two, a layer's weight gradient runs
    on the other one, not counted)."""
    def call():
        bound, _ = critic_mlp_op.critic_mlp(*mlp.args())
        torch.autograd.grad(bound, mlp.tensors() if wrt is None else wrt)

    with torch_threads(threads):
        return calling_thread_counts(call, ("mkldnn::_linear_pointwise", "aten::mm",
                                            "aten::addmm", "aten::linear"))


# csrc/gemm.h: the fewest FLOPs (2 x rows x in x out) of a product oneDNN's linear serves.
ONEDNN_MIN_FLOPS = 2 ** 26


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch without oneDNN")
def test_float32_large_products_run_on_onednn_and_the_rest_on_mm():
    # csrc/gemm.h: in float32 a layer's forward and input gradient of at least 2^26 FLOPs run on
    # oneDNN's linear; smaller products, every weight gradient and float64 on mm. Layers
    # 512 -> 512 (at 128 rows 2^26 FLOPs: oneDNN) and 512 -> 3; every gradient asked for.
    large = make_mlp(128, [512, 512, 3], ["relu", "gelu"], [True, False], "identity", True,
                     torch.float32)
    assert 2 * 128 * large.weights[0].numel() == ONEDNN_MIN_FLOPS
    product_ops(large)  # the process's first float32 call also probes oneDNN (one more product)
    assert product_ops(large) == {"mkldnn::_linear_pointwise": 2, "aten::mm": 4}
    # 126 rows: 2^20 FLOPs short of the threshold, every product on mm.
    small = make_mlp(126, [512, 512, 3], ["relu", "gelu"], [True, False], "identity", True,
                     torch.float32)
    assert product_ops(small) == {"aten::mm": 6}
    assert product_ops(make_mlp(128, [512, 512, 3], ["relu", "gelu"], [True, False])) == {
        "aten::mm": 6}


def test_with_two_threads_each_layers_weight_gradient_runs_beside_its_input_gradient():
    # csrc/gemm.h (side_by_side): with exactly two intra-op threads a layer's weight and input
    # gradients run at once, the weight gradient on the other thread (which the calling thread's
    # profiler does not see); with one thread, or on the first layer when the hidden input needs
    # no gradient, one after the other. Layers 24 -> 16 -> 8, then the head.
    mlp = make_mlp(40, [24, 16, 8], ["relu", "tanh"], [True, True], "identity", True,
                   torch.float32)
    # 2 forward products; backward each layer's weight and input gradient
    assert product_ops(mlp, threads=1) == {"aten::mm": 6}
    assert product_ops(mlp, threads=2) == {"aten::mm": 4}  # both weight gradients unseen
    frozen_input = replace(mlp, hidden=mlp.hidden.detach())
    wrt = frozen_input.tensors()[1:]
    assert product_ops(frozen_input, threads=1, wrt=wrt) == {"aten::mm": 5}  # no input gradient
    assert product_ops(frozen_input, threads=2, wrt=wrt) == {"aten::mm": 4}  # of the first layer


ZERO_WIDTH = {  # (widths, activations): a layer with no units, a layer with no inputs
    "a layer of 0 units": ([4, 0, 3], ["relu", "tanh"]),
    "hidden of 0 columns": ([0, 3], ["gelu"]),
}

@pytest.mark.parametrize("dtype", [
    pytest.param(torch.float32, id="float32"),
    pytest.param(F64, id="float64")])
@pytest.mark.parametrize("case", list(ZERO_WIDTH))
def test_zero_width_layers_match_reference(case, dtype):
    # An ordinary call first, so that oneDNN serves the process's products when it has them.
    check_against_reference(make_mlp(6, [3, 4], ["relu"], [True], dtype=dtype), dtype)
    widths, activations = ZERO_WIDTH[case]
    mlp = make_mlp(6, widths, activations, [True] * len(activations), "identity", True, dtype)
    check_against_reference(mlp, dtype)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch without oneDNN")
def test_a_failing_first_onednn_call_does_not_switch_onednn_off():
    # A fresh interpreter whose first float32 critic_mlp has a layer of 0 inputs: its later
    # ordinary calls must still run their products on oneDNN.
    script = textwrap.dedent("""
        import torch
        import infomax_ext
        from torch.profiler import ProfilerActivity, profile
        ops = torch.ops.infomax_ext
        try:
            ops.critic_mlp(torch.randn(6, 0), [torch.randn(3, 0)], [None], ["relu"], [0.0],
                        torch.randn(3), None, 3, "identity", 0.0)
        except RuntimeError:
            pass
        with profile(activities=[ProfilerActivity.CPU]) as prof:  # 2^26 FLOPs: oneDNN's
            ops.critic_mlp(torch.randn(128, 512), [torch.randn(512, 512)], [None], ["relu"],
                        [0.0], torch.randn(512), None, 64, "identity", 0.0)
        print("products:", sorted(e.key for e in prof.key_averages()
                                  if e.key in ("mkldnn::_linear_pointwise", "aten::mm")))
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    products = [line for line in done.stdout.splitlines() if line.startswith("products:")]
    assert products == ["products: ['mkldnn::_linear_pointwise']"], done.stdout


# -------------------------------------------------------------------- the gradients asked for


class _BackwardSpy:
    """Stands for torch.ops.infomax_ext in critic_mlp_op: records each critic_mlp_backward call's
    output_mask and results."""

    def __init__(self):
        self.calls = []
        spy = self

        class Overload:
            @staticmethod
            def default(*args):
                result = ops.critic_mlp_backward.default(*args)
                spy.calls.append((list(args[-1]), result))
                return result

        self.critic_mlp_backward = Overload

    def __getattr__(self, name):
        return getattr(ops, name)


# Which tensors need gradient (names of Mlp.names()).
REQUESTED = {
    "only the head": ["head_weight", "head_bias"],
    "only the head bias": ["head_bias"],
    "only the first weight": ["weights[0]"],
    "only hidden": ["hidden"],
    "only the last bias": ["biases[2]"],
    "a middle weight and hidden": ["weights[1]", "hidden"],
}


@pytest.mark.parametrize("case", list(REQUESTED))
def test_only_the_requested_gradients_are_computed(case, monkeypatch):
    # The backward op is asked for exactly the gradients of the tensors that need one (its
    # output_mask: hidden, weights, biases, head_weight, head_bias) and returns the others empty;
    # the gradients returned equal the reference's, the values too.
    mlp = make_mlp(10, [4, 5, 6, 3], ["tanh", "relu", "gelu"], [True, False, True], "softplus",
                   True, requires_grad=False, seed=9)
    wanted = REQUESTED[case]
    leaves = [t.requires_grad_(name in wanted) for name, t in zip(mlp.names(), mlp.tensors())]
    requested = [t for t in leaves if t.requires_grad]
    spy = _BackwardSpy()
    monkeypatch.setattr(critic_mlp_op, "OPS", spy)
    got = critic_mlp_op.critic_mlp(*mlp.args())
    want = reference.critic_mlp(*mlp.args())
    torch.testing.assert_close(got[0], want[0], rtol=1e-13, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=1e-13, atol=1e-15)
    grads = (torch.tensor(0.7, dtype=F64), torch.linspace(-1, 1, 10, dtype=F64))
    got_grads = torch.autograd.grad(got, requested, grads)
    want_grads = torch.autograd.grad(want, requested, grads)
    for g1, g2 in zip(got_grads, want_grads):
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-14)
    # mask slots: hidden, weights[0..2], biases[0..2], head_weight, head_bias
    slots = (["hidden"] + [f"weights[{i}]" for i in range(3)]
             + [f"biases[{i}]" for i in range(3)] + ["head_weight", "head_bias"])
    (mask, result), = spy.calls
    assert mask == [name in wanted for name in slots]
    g_hidden, g_weights, g_biases, g_head_w, g_head_b = result
    returned = [g_hidden, *g_weights, *g_biases, g_head_w, g_head_b]
    assert [g.numel() > 0 for g in returned] == mask


def test_no_backward_call_when_no_gradient_flows(monkeypatch):
    # Under no_grad, or with no tensor needing gradient, the op runs without an autograd node
    # and no backward op is called.
    spy = _BackwardSpy()
    monkeypatch.setattr(critic_mlp_op, "OPS", spy)
    mlp = make_mlp(6, [3, 4], ["relu"], [True], "identity", True)
    with torch.no_grad():
        bound, scores = critic_mlp_op.critic_mlp(*mlp.args())
    assert bound.grad_fn is None and scores.grad_fn is None
    plain = make_mlp(6, [3, 4], ["relu"], [True], "identity", True, requires_grad=False)
    bound2, _ = critic_mlp_op.critic_mlp(*plain.args())
    assert bound2.grad_fn is None and torch.equal(bound, bound2)
    assert spy.calls == []


def test_a_gradient_through_the_scores_alone():
    # Only the scores are used: the bound's incoming gradient is None (zero) in the backward.
    mlp = make_mlp(8, [3, 5], ["sigmoid"], [True], "tanh", False, seed=10)
    got = torch.autograd.grad(critic_mlp_op.critic_mlp(*mlp.args())[1][::3].sum(), mlp.tensors())
    want = torch.autograd.grad(reference.critic_mlp(*mlp.args())[1][::3].sum(), mlp.tensors())
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------- opcheck, fake kernels


OPCHECK_CASES = {
    "biases": ([3, 4, 2], ["gelu", "relu"], [True, True], True),
    "no biases": ([3, 4, 2], ["leaky_relu", "tanh"], [False, False], False),
    "mixed, Linear Linear": ([3, 4, 2], ["identity", "elu"], [False, True], True),
    "no hidden layer": ([3], [], [], True),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck(case):
    # Schema, autograd registration, the fake kernel against the real one, AOT dispatch.
    widths, activations, biases, head_bias = OPCHECK_CASES[case]
    mlp = make_mlp(6, widths, activations, biases, "softplus", head_bias, seed=11)
    torch.library.opcheck(ops.critic_mlp.default, mlp.args())


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_forward_and_backward_ops_match_their_fake_kernels(case):
    # critic_mlp_forward (what it keeps: each layer's output, the pre-activations only where the
    # derivative needs them) and critic_mlp_backward, internal ops without autograd of their own:
    # opcheck compares their fake kernels' shapes, dtypes and strides with the real outputs.
    widths, activations, biases, head_bias = OPCHECK_CASES[case]
    mlp = make_mlp(6, widths, activations, biases, "softplus", head_bias, seed=11,
                   requires_grad=False)
    torch.library.opcheck(ops.critic_mlp_forward.default, mlp.args())
    bound, scores, outputs, pres = ops.critic_mlp_forward.default(*mlp.args())
    assert len(outputs) == len(activations) and len(pres) == len(activations) + 1
    for act, out, pre in zip(activations, outputs, pres):
        assert (pre.numel() == 0) == (act in ("identity", "relu"))
        if pre.numel():
            torch.testing.assert_close(apply_activation(pre, act, param_of(act)), out)
    layers = len(activations)
    mask = [True] * (1 + layers) + list(biases) + [True, head_bias]
    args = (torch.tensor(0.5, dtype=F64), torch.randn(6, dtype=F64), mlp.hidden, mlp.weights,
            mlp.biases, mlp.activations, mlp.params, mlp.head_weight, mlp.head_bias, scores,
            outputs, pres, mlp.n_joint, mlp.head_activation, mlp.head_param, mask)
    torch.library.opcheck(ops.critic_mlp_backward.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_fake_tensor_shapes_equal_the_real_ones():
    # Under FakeTensorMode (what torch.compile traces with) every output of the three ops has
    # the real output's shape, dtype and strides.
    from torch._subclasses.fake_tensor import FakeTensorMode

    mlp = make_mlp(8, [3, 5, 4], ["silu", "relu"], [True, False], "identity", True,
                   requires_grad=False)
    real_forward = ops.critic_mlp_forward.default(*mlp.args())
    mask = [True, True, True, True, False, True, True]
    back_args = lambda m, fwd: (torch.ones((), dtype=F64, device=m.hidden.device), None,
                                m.hidden, m.weights, m.biases, m.activations, m.params,
                                m.head_weight, m.head_bias, fwd[1], fwd[2], fwd[3], m.n_joint,
                                m.head_activation, m.head_param, mask)
    real_backward = ops.critic_mlp_backward.default(*back_args(mlp, real_forward))
    real_mlp = ops.critic_mlp.default(*mlp.args())
    with FakeTensorMode() as mode:
        fake = mlp.with_tensors([mode.from_tensor(t) for t in mlp.tensors()])
        fake_forward = ops.critic_mlp_forward.default(*fake.args())
        fake_backward = ops.critic_mlp_backward.default(
            *back_args(fake, [mode.from_tensor(t) if isinstance(t, torch.Tensor)
                              else [mode.from_tensor(x) for x in t] for t in real_forward]))
        fake_mlp = ops.critic_mlp.default(*fake.args())

    def flat(results):
        for r in results:
            yield from (r if isinstance(r, (list, tuple)) else [r])

    for real, fake_t in zip(flat([*real_forward, *real_backward, *real_mlp]),
                            flat([*fake_forward, *fake_backward, *fake_mlp])):
        assert (fake_t.shape, fake_t.dtype, fake_t.stride()) == (real.shape, real.dtype,
                                                                 real.stride())
    assert len(list(flat(real_forward))) == len(list(flat(fake_forward))) == 2 + 2 + 3


# ---------------------------------------------------------------------------- torch.compile


def test_torch_compile_fullgraph_gives_the_eager_values_and_gradients():
    # The op traced whole (fullgraph) through its fake kernels, its backward through the
    # backward op's: values and gradients equal eager's. aot_eager runs the traced forward and
    # backward graphs as they are (the inductor path over the op is tests/test_mutual_info.py's
    # fused MI loss), without a C++ compile.
    mlp = make_mlp(8, [3, 5, 4], ["gelu", "relu"], [True, False], "softplus", True, seed=12)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append([node.target for node in gm.graph.nodes])
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def loss(*tensors):
        bound, scores = critic_mlp_op.critic_mlp(*mlp.with_tensors(tensors).args())
        return bound + 0.1 * scores.square().sum()

    torch._dynamo.reset()
    try:
        compiled = torch.compile(loss, backend=backend, fullgraph=True)
        got = compiled(*mlp.tensors())
        got_grads = torch.autograd.grad(got, mlp.tensors())
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1 and ops.critic_mlp.default in graphs[0]
    want = loss(*mlp.tensors())
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    for g1, g2 in zip(got_grads, torch.autograd.grad(want, mlp.tensors())):
        torch.testing.assert_close(g1, g2, rtol=1e-14, atol=1e-16)


# --------------------------------------------------------------------------- double backward


@pytest.mark.parametrize("which", ["hidden", "head_bias", "biases[0]"])
def test_double_backward_is_refused(which):
    # A graph of the backward would give wrong second derivatives silently: refused, even when
    # only one bias needs gradient.
    mlp = make_mlp(6, [3, 4], ["tanh"], [True], "identity", True, requires_grad=False)
    leaf = dict(zip(mlp.names(), mlp.tensors()))[which].requires_grad_()
    bound, _ = critic_mlp_op.critic_mlp(*mlp.args())
    with pytest.raises(RuntimeError, match="critic_mlp does not support double backward .*"
                                           "use_reference_path"):
        torch.autograd.grad(bound, [leaf], create_graph=True)


def test_double_backward_on_the_reference_path():
    mlp = make_mlp(6, [3, 4], ["tanh"], [True], "softplus", True, seed=13)

    def bound(*tensors):
        return critic_mlp_op.critic_mlp(*mlp.with_tensors(tensors).args())[0]

    with im.use_reference_path():
        assert bound(*mlp.tensors()).grad_fn.name() != "_CriticMlpBackward"
        assert torch.autograd.gradgradcheck(bound, mlp.tensors())
        g, = torch.autograd.grad(bound(*mlp.tensors()), [mlp.hidden], create_graph=True)
        second, = torch.autograd.grad(g.square().sum(), [mlp.weights[0]])
    # the same second derivative from the reference op directly
    g, = torch.autograd.grad(reference.critic_mlp(*mlp.args())[0], [mlp.hidden], create_graph=True)
    want, = torch.autograd.grad(g.square().sum(), [mlp.weights[0]])
    torch.testing.assert_close(second, want, rtol=1e-14, atol=0)


# ------------------------------------------------------------------------------- bad input


def base_args(requires_grad=False):
    """Valid arguments: 6 rows, widths 4 -> 5 -> 3, relu then tanh, both biases, head bias."""
    return make_mlp(6, [4, 5, 3], ["relu", "tanh"], [True, True], "identity", True,
                    requires_grad=requires_grad)


def _set(mlp, **changes):
    return replace(mlp, **changes)


def _randn(*shape, dtype=F64):
    return torch.randn(*shape, dtype=dtype)


# name: (change to the valid arguments, the message, the Python entry's exception type or None
# when the Python entry takes the reference path instead)
BAD_INPUTS = {
    "one bias fewer": (
        lambda m: _set(m, biases=m.biases[:1]),
        "critic_mlp takes one bias, activation and parameter per weight: got 2 weights, 1 biases, "
        "2 activations and 2 parameters", ValueError),
    "one weight fewer": (
        lambda m: _set(m, weights=m.weights[:1]),
        "per weight: got 1 weights, 2 biases, 2 activations and 2 parameters", ValueError),
    "one activation more": (
        lambda m: _set(m, activations=m.activations + ["relu"]),
        "per weight: got 2 weights, 2 biases, 3 activations and 2 parameters", ValueError),
    "one parameter fewer": (
        lambda m: _set(m, params=m.params[:1]),
        "per weight: got 2 weights, 2 biases, 2 activations and 1 parameters", ValueError),
    "the first weight's input width": (
        lambda m: _set(m, weights=[_randn(5, 3), m.weights[1]]),
        r"weights\[0\] has shape \[5, 3\] but its layer's input has 4 features", RuntimeError),
    "the last weight's input width": (
        lambda m: _set(m, weights=[m.weights[0], _randn(3, 4)]),
        r"weights\[1\] has shape \[3, 4\] but its layer's input has 5 features", RuntimeError),
    "a 1-D weight": (
        lambda m: _set(m, weights=[_randn(5), m.weights[1]]),
        r"weights\[0\] must have 2 dimension\(s\), got shape \[5\]", RuntimeError),
    "a bias of the wrong length": (
        lambda m: _set(m, biases=[m.biases[0], _randn(4)]),
        r"biases\[1\] has 4 entries but its layer has 3 units", RuntimeError),
    "a 2-D bias": (
        lambda m: _set(m, biases=[_randn(5, 1), m.biases[1]]),
        r"biases\[0\] must have 1 dimension\(s\), got shape \[5, 1\]", RuntimeError),
    "head_weight of the wrong length": (
        lambda m: _set(m, head_weight=_randn(5)),
        "head_weight has 5 entries but the last hidden layer has 3 units", RuntimeError),
    "a 2-D head_weight (a Linear's weight, not reshaped)": (
        lambda m: _set(m, head_weight=_randn(1, 3)),
        r"head_weight must have 1 dimension\(s\), got shape \[1, 3\]", RuntimeError),
    "head_bias with 2 entries": (
        lambda m: _set(m, head_bias=_randn(2)),
        "head_bias must have 1 entry, got 2", RuntimeError),
    "an odd number of rows": (
        lambda m: _set(m, hidden=_randn(5, 4), n_joint=2),
        "hidden has 5 rows, which must be n_joint = 2 joint rows followed by as many shuffled "
        "rows", RuntimeError),
    "n_joint not half the rows": (
        lambda m: _set(m, n_joint=2),
        "hidden has 6 rows, which must be n_joint = 2 joint rows", RuntimeError),
    "n_joint 0 and no rows": (
        lambda m: _set(m, hidden=_randn(0, 4), n_joint=0),
        "hidden has 0 rows, which must be n_joint = 0 joint rows", RuntimeError),
    "an unknown activation": (
        lambda m: _set(m, activations=["relu", "swish"]),
        "unknown activation 'swish'; supported: identity, relu, ", RuntimeError),
    "an unknown head activation": (
        lambda m: _set(m, head_activation="Tanh"),
        "unknown activation 'Tanh'; supported: ", RuntimeError),
    "a float32 weight with float64 hidden": (
        lambda m: _set(m, weights=[m.weights[0].float(), m.weights[1]]),
        r"dtype mismatch: weights\[0\] is Float but hidden is Double", RuntimeError),
    "a float32 last bias": (
        lambda m: _set(m, biases=[m.biases[0], m.biases[1].float()]),
        r"dtype mismatch: biases\[1\] is Float but hidden is Double", RuntimeError),
    "a float32 head_bias": (
        lambda m: _set(m, head_bias=m.head_bias.float()),
        "dtype mismatch: head_bias is Float but hidden is Double", RuntimeError),
    "int64 hidden": (
        lambda m: _set(m, hidden=torch.ones(6, 4, dtype=torch.long)),
        "hidden must be float32, float64, bfloat16 or float16, got Long", RuntimeError),
    "an int32 weight": (
        lambda m: _set(m, weights=[m.weights[0], torch.ones(3, 5, dtype=torch.int32)]),
        r"weights\[1\] must be float32, float64, bfloat16 or float16, got Int", RuntimeError),
    "a float16 weight with float64 hidden": (
        lambda m: _set(m, weights=[m.weights[0].half(), m.weights[1]]),
        r"dtype mismatch: weights\[0\] is Half but hidden is Double", RuntimeError),
    "a 1-D hidden": (
        lambda m: _set(m, hidden=_randn(4)),
        r"hidden must have 2 dimension\(s\), got shape \[4\]", RuntimeError),
}


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no grad", "grad"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_a_message_naming_it(case, requires_grad):
    # Through the Python entry and through torch.ops.infomax_ext.critic_mlp, with and without
    # tensors needing gradient (then through the autograd node): the check's own message, raised
    # before any product runs (a product on such arguments would fail with torch's words, or
    # not at all).
    change, message, entry_error = BAD_INPUTS[case]
    mlp = change(base_args())
    if requires_grad:
        for t in mlp.tensors():
            if t.is_floating_point():
                t.requires_grad_()
    op_error = RuntimeError
    with pytest.raises(op_error, match=message):
        ops.critic_mlp.default(*mlp.args())
    if entry_error is not None:
        with pytest.raises(entry_error, match=message):
            critic_mlp_op.critic_mlp(*mlp.args())


def test_the_unknown_activation_message_lists_the_kernel_activations():
    mlp = _set(base_args(), activations=["relu", "swish"])
    with pytest.raises(RuntimeError, match="supported: ") as error:
        ops.critic_mlp.default(*mlp.args())
    listed = str(error.value).split("supported: ", 1)[1].splitlines()[0]
    assert sorted(name.strip(" .") for name in listed.split(",")) == sorted(KERNEL_ACTIVATIONS)


def test_arguments_that_are_not_tensors_are_named():
    mlp = base_args()
    with pytest.raises(TypeError, match=r"critic_mlp: weights\[1\] must be a torch.Tensor, got list"):
        critic_mlp_op.critic_mlp(*_set(mlp, weights=[mlp.weights[0], [[1.0]]]).args())
    with pytest.raises(TypeError, match="critic_mlp: head_bias must be a torch.Tensor, got float"):
        critic_mlp_op.critic_mlp(*_set(mlp, head_bias=0.5).args())


def _meta_cases():
    for name in base_args().names():
        yield pytest.param(name, id=name)


def _with_meta(mlp, name):
    return mlp.with_tensors([t.to("meta") if n == name else t
                             for n, t in zip(mlp.names(), mlp.tensors())])


@pytest.mark.parametrize("name", list(base_args().names()))
def test_an_argument_on_another_device_is_refused_by_the_python_entry(name):
    mlp = _with_meta(base_args(), name)
    other = "head_weight is on cpu but hidden is on meta" if name == "hidden" else \
        f"{name} is on meta but hidden is on cpu"
    with pytest.raises(ValueError, match=f"critic_mlp: device mismatch: {re.escape(other)}"):
        critic_mlp_op.critic_mlp(*mlp.args())
    with im.use_reference_path(), pytest.raises(ValueError, match="device mismatch"):
        critic_mlp_op.critic_mlp(*mlp.args())


@pytest.mark.parametrize("name", list(_meta_cases()))
def test_an_argument_on_another_device_is_refused_by_the_op(name):
    # A meta tensor among CPU tensors dispatches to the fake kernel, which would return
    # uninitialised memory: it must say "device mismatch".
    mlp = _with_meta(base_args(), name)
    try:
        ops.critic_mlp.default(*mlp.args())
    except RuntimeError as error:
        assert "device mismatch" in str(error)
    else:
        raise AssertionError(f"critic_mlp with {name} on meta and the rest on cpu raised nothing")
    with pytest.raises(RuntimeError, match="device mismatch"):
        ops.critic_mlp_forward.default(*mlp.args())


def _backward_meta_cases():
    for name in ["grad_bound", "grad_scores", "hidden", "weights[0]", "weights[1]", "biases[0]",
                 "biases[1]", "head_weight", "head_bias", "scores", "outputs[0]", "outputs[1]",
                 "pres[1]", "pres[2]"]:
        yield pytest.param(name, id=name)


@pytest.mark.parametrize("name", list(_backward_meta_cases()))
def test_an_argument_of_the_backward_op_on_another_device_is_refused(name):
    mlp = valid = base_args()
    _, scores, outputs, pres = ops.critic_mlp_forward.default(*mlp.args())
    named = dict(grad_bound=torch.ones((), dtype=F64), grad_scores=torch.ones(6, dtype=F64),
                 scores=scores, outputs=list(outputs), pres=list(pres))
    if name in mlp.names():
        mlp = _with_meta(mlp, name)
    elif "[" in name:
        field, index = name[:-1].split("[")
        named[field][int(index)] = named[field][int(index)].to("meta")
    else:
        named[name] = named[name].to("meta")
    try:
        ops.critic_mlp_backward.default(*_backward_args(mlp, forward_of=valid, **named))
    except RuntimeError as error:
        assert "device mismatch" in str(error)
    else:
        raise AssertionError(f"critic_mlp_backward with {name} on meta raised nothing")


def _backward_args(mlp, forward_of=None, **changes):
    """critic_mlp_backward's arguments for ``mlp`` (every gradient wanted) after critic_mlp_forward
    (of ``forward_of``, else of ``mlp``), with ``changes`` to its saved tensors or mask."""
    _, scores, outputs, pres = ops.critic_mlp_forward.default(*(forward_of or mlp).args())
    layers = len(mlp.weights)
    args = dict(grad_bound=torch.ones((), dtype=F64), grad_scores=None, scores=scores,
                outputs=list(outputs), pres=list(pres),
                mask=[True] * (1 + layers) + [b is not None for b in mlp.biases]
                + [True, mlp.head_bias is not None])
    args.update(changes)
    return (args["grad_bound"], args["grad_scores"], mlp.hidden, mlp.weights, mlp.biases,
            mlp.activations, mlp.params, mlp.head_weight, mlp.head_bias, args["scores"],
            args["outputs"], args["pres"], mlp.n_joint, mlp.head_activation, mlp.head_param,
            args["mask"])


def _saved(mlp):
    _, scores, outputs, pres = ops.critic_mlp_forward.default(*mlp.args())
    return scores, list(outputs), list(pres)


# base_args: layer 0 relu (no pre-activation kept), layer 1 tanh (kept); outputs (6, 5), (6, 3)
BAD_SAVED = {
    "one output fewer": (
        lambda s, o, p: dict(outputs=o[:1]),
        r"critic_mlp_backward needs 2 outputs and 3 pre-activations \(what critic_mlp_forward "
        r"returned\), got 1 and 3"),
    "one pre-activation fewer": (
        lambda s, o, p: dict(pres=p[:2]),
        "needs 2 outputs and 3 pre-activations .*, got 2 and 2"),
    "an output of the wrong width": (
        lambda s, o, p: dict(outputs=[o[0][:, :4].contiguous(), o[1]]),
        r"outputs\[0\] has shape \[6, 4\], expected \[6, 5\] contiguous"),
    "a non-contiguous output": (
        lambda s, o, p: dict(outputs=[o[0], o[1].t().contiguous().t()]),
        r"outputs\[1\] has shape \[6, 3\], expected \[6, 3\] contiguous"),
    "a missing pre-activation (tanh needs it)": (
        lambda s, o, p: dict(pres=[p[0], torch.empty(0, dtype=F64), p[2]]),
        r"pres\[1\] has shape \[0\], expected \[6, 3\] contiguous"),
    "the head's pre-activation too short": (
        lambda s, o, p: dict(pres=[p[0], p[1], p[2][:4]]),
        "scores and the head's pre-activation must have 6 entries"),
    "scores too long": (
        lambda s, o, p: dict(scores=torch.cat([s, s])),
        "scores and the head's pre-activation must have 6 entries"),
    "an output_mask one entry short": (
        lambda s, o, p: dict(mask=[True] * 6),
        "output_mask must have 7 entries, got 6"),
    "an output_mask one entry long": (
        lambda s, o, p: dict(mask=[True] * 8),
        "output_mask must have 7 entries, got 8"),
}


@pytest.mark.parametrize("case", list(BAD_SAVED))
def test_the_backward_op_refuses_saved_tensors_or_a_mask_that_do_not_fit(case):
    mlp = base_args()
    change, message = BAD_SAVED[case]
    with pytest.raises(RuntimeError, match=message):
        ops.critic_mlp_backward.default(*_backward_args(mlp, **change(*_saved(mlp))))


def test_the_backward_op_refuses_to_compute_the_gradient_of_an_absent_bias():
    mlp = _set(base_args(), biases=[base_args().biases[0], None], head_bias=None)
    with pytest.raises(RuntimeError, match="output_mask asks for the gradient of bias 1, "
                                           "which is absent"):
        ops.critic_mlp_backward.default(*_backward_args(mlp, mask=[True] * 7))
    with pytest.raises(RuntimeError, match="output_mask asks for the gradient of head_bias, "
                                           "which is absent"):
        # slots: hidden, weights[0..1], biases[0] (present), biases[1] (absent: False), head
        ops.critic_mlp_backward.default(*_backward_args(mlp, mask=[True] * 4 + [False, True, True]))
    # the same arguments with a mask that fits run, and give the reference's gradients
    grads = ops.critic_mlp_backward.default(*_backward_args(mlp))
    leaves = [t.requires_grad_() for t in mlp.tensors()]
    want = torch.autograd.grad(reference.critic_mlp(*mlp.args())[0], leaves)
    got = [grads[0], *grads[1], grads[2][0], grads[3]]
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-15)
    assert grads[2][1].numel() == 0 and grads[4].numel() == 0


# ----------------------------------------------------------------------------- determinism


def _gradients_with_threads(mlp, threads):
    with torch_threads(threads):
        bound, scores = critic_mlp_op.critic_mlp(*mlp.args())
        grads = torch.autograd.grad((bound, scores), mlp.tensors(),
                                    (torch.ones_like(bound), torch.ones_like(scores) / 7))
    return [bound.detach(), scores.detach(), *grads]


def test_backward_is_bit_identical_run_to_run_and_close_across_thread_counts():
    # float32, 300 rows (ten 32-row chunks in each bias sum), widths large enough for the
    # products to split across threads. With one thread count, two runs give the same bits
    # (the op's column sums run over fixed chunks, then over the chunks in order). Across
    # thread counts the GEMM backends (oneDNN, MKL) promise no bit equality, so the results
    # are compared with the scaled tolerance against each other.
    mlp = make_mlp(300, [48, 64, 40, 24], ["relu", "gelu", "tanh"], [True, True, False],
                   "identity", True, torch.float32, seed=14)
    runs = {threads: [_gradients_with_threads(mlp, threads) for _ in range(2)]
            for threads in (1, 2)}
    for threads, (first, second) in runs.items():
        for x, y in zip(first, second):
            assert torch.equal(x, y), f"{threads} thread(s): two runs differ"
    score_scale, bound_scale, grad_scales = mlp_scales(mlp, torch.float32, 1.0,
                                                       torch.full((300,), 1 / 7))
    one, two = runs[1][0], runs[2][0]
    assert_close_scaled(two[0], one[0], bound_scale, k=K, what="bound")
    assert_close_scaled(two[1], one[1], score_scale, k=K, what="scores")
    for name, g1, g2, scale in zip(mlp.names(), two[2:], one[2:], grad_scales):
        assert_close_scaled(g1, g2, scale, k=K, what=f"gradient of {name}")


# ---------------------------------------------------------------- paired_mutual_info runs it


def _chain(*mlp, data=None, latent=None):
    return im.MutualInfoChain(data or nn.Identity(), latent or nn.Identity(),
                              nn.Sequential(*mlp)).double()


# Chains whose middle (after the first Linear and its activation) is Linear + kernel-activation
# pairs and whose end is a Linear(..., 1), optionally with a kernel activation: fused_plan gives
# their middle as a stack and paired_mutual_info runs it through critic_mlp. n_x = 12, n_z = 3.
STACK_CHAINS = {
    # bench/common.py's paper chain (794-1000-400-100-1 with ReLU), narrower
    "paper chain": lambda: _chain(nn.Linear(15, 20), nn.ReLU(), nn.Linear(20, 12), nn.ReLU(),
                                  nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 1)),
    # bench/common.py's Julia default chain: data and latent Linear layers, from_sizes
    "from_sizes": lambda: im.MutualInfoChain.from_sizes(12, 3, [10, 8], [torch.relu, torch.relu]
                                                        ).double(),
    "from_sizes, gelu tanh leaky_relu, sigmoid head": lambda: im.MutualInfoChain.from_sizes(
        12, 3, [10, 8, 6], [F.gelu, torch.tanh, nn.LeakyReLU(0.2)], torch.sigmoid).double(),
    "Linear Linear in the middle": lambda: _chain(nn.Linear(15, 9), nn.ELU(0.7), nn.Linear(9, 7),
                                                  nn.Linear(7, 5), nn.Mish(), nn.Linear(5, 1)),
    "no middle layer": lambda: _chain(nn.Linear(15, 9), nn.Tanh(), nn.Linear(9, 1),
                                      nn.Softplus()),
    "no bias in the middle": lambda: _chain(nn.Linear(15, 9), nn.SiLU(),
                                            nn.Linear(9, 7, bias=False), nn.ReLU(),
                                            nn.Linear(7, 1, bias=False)),
}


# Chains paired_mutual_info evaluates without critic_mlp (their middle runs module by module, or
# two calls).
NO_STACK_CHAINS = {
    "a Dropout in the middle": lambda: _chain(nn.Linear(15, 9), nn.ReLU(), nn.Linear(9, 7),
                                              nn.ReLU(), nn.Dropout(0.5), nn.Linear(7, 1)),
    "a LayerNorm in the middle": lambda: _chain(nn.Linear(15, 9), nn.ReLU(), nn.Linear(9, 7),
                                                nn.LayerNorm(7), nn.ReLU(), nn.Linear(7, 1)),
    "an activation the kernels do not run": lambda: _chain(nn.Linear(15, 9), nn.ReLU(),
                                                           nn.Linear(9, 7), nn.Hardswish(),
                                                           nn.Linear(7, 1)),
    "two activations in a row": lambda: _chain(nn.Linear(15, 9), nn.ReLU(), nn.Linear(9, 7),
                                               nn.ReLU(), nn.Tanh(), nn.Linear(7, 1)),
    "no 1-unit head (an activation after it the kernels do not run)": lambda: _chain(
        nn.Linear(15, 9), nn.ReLU(), nn.Linear(9, 1), nn.Hardswish()),
    "no 1-unit Linear at the end (a Linear(.., 2) and a sum)": lambda: _chain(
        nn.Linear(15, 9), nn.ReLU(), nn.Linear(9, 2), _SumColumns()),
}


class _SumColumns(nn.Module):
    def forward(self, h):
        return h.sum(1, keepdim=True)


@pytest.mark.parametrize("name", list(STACK_CHAINS))
def test_fused_plan_gives_a_stack_for_linear_and_kernel_activation_middles(name):
    mi = STACK_CHAINS[name]()
    plan = fused_plan(mi)
    assert plan and plan.stack is not None
    linears = [m for m in plan.middle if isinstance(m, nn.Linear)]
    assert [layer for layer, _ in plan.stack] == linears
    assert plan.head.out_features == 1


def test_the_stack_of_a_linear_linear_middle_has_an_identity_between():
    plan = fused_plan(STACK_CHAINS["Linear Linear in the middle"]())
    assert [act for _, act in plan.stack] == [("identity", 0.0), ("mish", 0.0)]
    assert plan.first_act == ("elu", 0.7) and plan.head_act == ("identity", 0.0)


@pytest.mark.parametrize("name", list(NO_STACK_CHAINS))
def test_fused_plan_gives_no_stack_otherwise(name):
    plan = fused_plan(NO_STACK_CHAINS[name]())
    assert not plan or plan.stack is None


@pytest.fixture
def critic_mlp_calls(monkeypatch):
    """The number of hidden layers of each call of critic_mlp_op.critic_mlp or of the one-node chain
    critic_chain_op.critic_chain (paired_linear then critic_mlp) or critic_chain_with_linear_ends
    (with the data and latent Linear layers), what paired_mutual_info calls."""
    calls = []
    real, real_chain = critic_mlp_op.critic_mlp, critic_chain_op.critic_chain
    real_ends = critic_chain_op.critic_chain_with_linear_ends

    def counting_ends(*args, **kwargs):
        calls.append(len(args[12]))
        return real_ends(*args, **kwargs)

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    def counting_chain(*args, **kwargs):
        calls.append(len(args[9]))
        return real_chain(*args, **kwargs)

    monkeypatch.setattr(critic_mlp_op, "critic_mlp", counting)
    monkeypatch.setattr(critic_chain_op, "critic_chain", counting_chain)
    monkeypatch.setattr(critic_chain_op, "critic_chain_with_linear_ends", counting_ends)
    return calls


@pytest.mark.parametrize("n_samples", [1, 2])
@pytest.mark.parametrize("shuffled_grad", [False, True])
@pytest.mark.parametrize("name", list(STACK_CHAINS) + list(NO_STACK_CHAINS))
def test_paired_mutual_info_through_critic_mlp_equals_two_calls(name, shuffled_grad, n_samples,
                                                             critic_mlp_calls):
    # float64: bound, scores and the gradients of z and of every parameter equal the two-call
    # evaluation; critic_mlp runs (once, on the whole middle) exactly for the stack chains.
    torch.manual_seed(1)
    mi = {**STACK_CHAINS, **NO_STACK_CHAINS}[name]().eval()
    n = 6
    x = torch.randn(n, 12, dtype=F64)
    z = torch.randn(n_samples * n, 3, dtype=F64, requires_grad=True)
    perm = im.latent_permutation(n, n_samples, seed=3)
    params = [z, *mi.parameters()]
    fused = im.paired_mutual_info(mi, x, z, perm, shuffled_grad=shuffled_grad)
    plan = fused_plan(mi)
    stack = plan.stack if plan else None
    assert critic_mlp_calls == ([] if stack is None else [len(stack)])
    if stack is not None:  # from_sizes: data and latent are Linear layers, run inside the node
        assert fused.bound.grad_fn.name() == (
            "_CriticChainBackward" if plan.ends is None else "_LinearEndsChainBackward")
    with im.use_path("two_call"):
        plain = im.paired_mutual_info(mi, x, z, perm, shuffled_grad=shuffled_grad)
    assert critic_mlp_calls == ([] if stack is None else [len(stack)])  # two calls: the modules
    torch.testing.assert_close(fused.bound, plain.bound, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused.joint, plain.joint, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused.shuffled, plain.shuffled, rtol=1e-10, atol=1e-12)
    for p, g1, g2 in zip(["z", *[n for n, _ in mi.named_parameters()]],
                         torch.autograd.grad(fused.bound, params),
                         torch.autograd.grad(plain.bound, params)):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12, msg=lambda m: f"{p}: {m}")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("state", ["no_grad", "inference_mode"])
def test_critic_mlp_backward_in_any_thread_state(state, threads):
    # With two intra-op threads each layer's weight gradient runs on the other thread
    # (csrc/gemm.h, side_by_side), whose thread-local state is the default (gradient mode on):
    # called as autograd calls it (gradient mode off), or under inference mode, the op must give
    # the reference's gradients, none of them part of a graph, and leave the caller's modes as
    # they were.
    mlp = make_mlp(50, [24, 16, 8], ["relu", "tanh"], [True, False])
    args = _backward_args(mlp)
    want = torch.autograd.grad(reference.critic_mlp(*mlp.args())[0], mlp.tensors())
    mode = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[state]
    with torch_threads(threads), mode():
        grads = ops.critic_mlp_backward.default(*args)
        assert not torch.is_grad_enabled()
        assert torch.is_inference_mode_enabled() == (state == "inference_mode")
    got = [grads[0], *grads[1], grads[2][0], grads[3], grads[4]]
    for g, w in zip(got, want):
        assert not g.requires_grad
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------- linear_grads (csrc/gemm.h)

LINEAR_GRADS_CASES = {  # (rows, out, in, dtype, weight a column slice)
    "float64": (30, 7, 5, F64, False),
    "float32 over the oneDNN threshold": (128, 512, 512, torch.float32, False),
    "float32, weight a column slice": (64, 40, 33, torch.float32, True),
    "no rows": (0, 4, 3, torch.float32, False),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(LINEAR_GRADS_CASES))
def test_linear_grads_against_float64_products(case, threads):
    # (grad @ weight, grad^T @ input), with two threads computed at once on the two threads:
    # each entry within 4 eps of its float64 value times the sum of its terms' magnitudes.
    rows, n_out, n_in, dtype, sliced = LINEAR_GRADS_CASES[case]
    g = torch.Generator().manual_seed(rows + n_out)
    grad = torch.randn(rows, n_out, generator=g).to(dtype)
    x = torch.randn(rows, n_in, generator=g).to(dtype)
    weight = torch.randn(n_out, n_in + 3 * sliced, generator=g).to(dtype)[:, :n_in]
    with torch_threads(threads):
        got_x, got_w = ops.linear_grads(grad, x, weight)
    g64, x64, w64 = grad.to(F64), x.to(F64), weight.to(F64)
    assert_close_scaled(got_x, (g64 @ w64).to(dtype), g64.abs() @ w64.abs() + 1e-300, k=4,
                        what="input gradient")
    assert_close_scaled(got_w, (g64.t() @ x64).to(dtype), g64.abs().t() @ x64.abs() + 1e-300,
                        k=4, what="weight gradient")
    assert got_w.is_contiguous() and got_x.shape == x.shape and got_w.shape == weight.shape


def test_linear_grads_schema_and_fake_kernel():
    args = (torch.randn(6, 4, dtype=F64), torch.randn(6, 3, dtype=F64), torch.randn(4, 3, dtype=F64))
    torch.library.opcheck(ops.linear_grads.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    for got, want in zip(ops.linear_grads(*args), reference.linear_grads(*args)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("args,message", [
    ((torch.randn(6, 4), torch.randn(6, 3), torch.randn(4)), "weight must have 2 dimension"),
    ((torch.randn(6, 4), torch.randn(5, 3), torch.randn(4, 3)), "input has 5 rows but grad has 6"),
    ((torch.randn(6, 4), torch.randn(6, 3), torch.randn(3, 4)), r"weight has shape \[3, 4\]"),
    ((torch.randn(6, 4), torch.randn(6, 3, dtype=F64), torch.randn(4, 3)), "dtype mismatch"),
    ((torch.ones(6, 4, dtype=torch.long),) * 2 + (torch.ones(4, 4, dtype=torch.long),),
     "grad must be float32, float64"),
])
def test_linear_grads_names_a_bad_argument(args, message):
    with pytest.raises(RuntimeError, match=message):
        ops.linear_grads(*args)


# ------------------------------------------------------------------------ mm_pair (csrc/gemm.h)

MM_PAIR_CASES = {  # (a's shape, b's columns, c's shape, d's columns, dtype, transposed views)
    "float64": ((30, 7), 5, (4, 9), 3, F64, False),
    "float32, narrow as paired_linear's": ((256, 10), 300, (10, 256), 300, torch.float32, True),
    "no rows": ((0, 4), 3, (5, 2), 0, torch.float32, False),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(MM_PAIR_CASES))
def test_mm_pair_against_float64_products(case, threads):
    # (a @ b, c @ d), with two threads computed at once on the two threads (transposed views as
    # paired_linear passes them): each entry within 4 eps of its float64 value times the sum of
    # its terms' magnitudes.
    (ra, ka), nb, (rc, kc), nd, dtype, transposed = MM_PAIR_CASES[case]
    g = torch.Generator().manual_seed(ra + kc)
    make = lambda r, c: (torch.randn(c, r, generator=g).to(dtype).t() if transposed
                         else torch.randn(r, c, generator=g).to(dtype))
    a, b, c, d = make(ra, ka), make(ka, nb), make(rc, kc), make(kc, nd)
    with torch_threads(threads):
        ab, cd = ops.mm_pair(a, b, c, d)
    for got, x, y, what in ((ab, a, b, "a @ b"), (cd, c, d, "c @ d")):
        x64, y64 = x.to(F64), y.to(F64)
        assert got.shape == (x.shape[0], y.shape[1]) and got.dtype == dtype
        assert_close_scaled(got, (x64 @ y64).to(dtype), x64.abs() @ y64.abs() + 1e-300, k=4,
                            what=what)


def test_mm_pair_schema_and_fake_kernel():
    args = (torch.randn(6, 4, dtype=F64), torch.randn(4, 3, dtype=F64),
            torch.randn(2, 5, dtype=F64), torch.randn(5, 7, dtype=F64))
    torch.library.opcheck(ops.mm_pair.default, args, test_utils=("test_schema", "test_faketensor"))
    for got, want in zip(ops.mm_pair(*args), reference.mm_pair(*args)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("args,message", [
    ((torch.randn(6, 4), torch.randn(4), torch.randn(2, 5), torch.randn(5, 7)),
     "b must have 2 dimension"),
    ((torch.randn(6, 4), torch.randn(3, 3), torch.randn(2, 5), torch.randn(5, 7)),
     r"a has shape \[6, 4\] and b \[3, 3\]: a's columns must equal b's rows"),
    ((torch.randn(6, 4), torch.randn(4, 3), torch.randn(2, 5), torch.randn(4, 7)),
     r"c has shape \[2, 5\] and d \[4, 7\]"),
    ((torch.randn(6, 4), torch.randn(4, 3), torch.randn(2, 5, dtype=F64), torch.randn(5, 7)),
     "dtype mismatch: c is"),
    ((torch.ones(6, 4, dtype=torch.long),) * 4, "a must be float32, float64"),
])
def test_mm_pair_names_a_bad_argument(args, message):
    with pytest.raises(RuntimeError, match=message):
        ops.mm_pair(*args)


def test_mm_pair_fake_kernel_names_shapes_that_do_not_multiply():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a, b = torch.empty(6, 4), torch.empty(3, 3)
        with pytest.raises(RuntimeError, match=r"mm_pair: a and b have shapes \(6, 4\) and \(3, 3\)"):
            ops.mm_pair(a, b, a, torch.empty(4, 2))
        with pytest.raises(RuntimeError, match="one floating dtype, got torch.float32, "
                                                "torch.float32, torch.float64"):
            ops.mm_pair(a, torch.empty(4, 3), torch.empty(6, 4, dtype=F64), torch.empty(4, 2))
