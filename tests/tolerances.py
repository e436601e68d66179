"""Tolerances that scale with what is computed, for the kernels against their references.

Two correct implementations of one float expression (a fused kernel and torch's reference ops,
or torch's own kernels on CPUs of different capabilities: ATEN_CPU_CAPABILITY, the ISA oneDNN and
MKL pick) differ by rounding, and rounding is relative: a few units of the dtype's epsilon times
the magnitude of the terms that were summed or evaluated, never a fixed absolute amount. So each
bound here is ``k * eps(dtype) * scale`` per element, with ``scale`` built in float64 from the
absolute values of every term that feeds that element (a sum of |terms|, |f(x)|, |f'(x)|, ...).
It holds on any x86-64 CPU and for inputs of any magnitude, while a real bug (an error of the
order of the value) still misses it by orders of magnitude. Each test states its ``k``.
"""
from __future__ import annotations

import torch

from infomax_ext import reference
from infomax_ext.activations import apply_activation

F64 = torch.float64


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _abs64(t):
    return None if t is None else t.detach().to(F64).abs()


def _f64(t):
    return None if t is None else t.detach().to(F64)


def assert_close_scaled(got, want, scale, k: float, what: str = "value") -> None:
    """``|got - want| <= k * eps(dtype) * scale`` element by element (finite values)."""
    got, want = got.detach(), want.detach()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert torch.isfinite(want).all(), f"{what}: the reference is not finite"
    assert torch.isfinite(got).all(), f"{what}: non-finite values where the reference has none"
    unit = eps(want.dtype) * scale.detach().to(F64).expand(want.shape)
    diff = (got.to(F64) - want.to(F64)).abs()
    ratio = torch.where(diff == 0, torch.zeros_like(diff), diff / unit)  # diff > 0 at scale 0: inf
    worst = float(ratio.max()) if ratio.numel() else 0.0
    if worst > k:
        i = int(ratio.argmax())
        idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), ratio.shape))
        raise AssertionError(
            f"{what}: |got - want| = {float(diff.flatten()[i]):.3e} at {idx} is {worst:.2f} x "
            f"eps x scale (scale {float(unit.flatten()[i] / eps(want.dtype)):.3e}: got "
            f"{float(got.flatten()[i])!r}, want {float(want.flatten()[i])!r}); allowed {k}")


def activation_slope(x: torch.Tensor, activation: str, param: float = 0.0) -> torch.Tensor:
    """|f'(x)| per element, in float64 (autograd of the reference activation)."""
    x = _f64(x).requires_grad_()
    slope, = torch.autograd.grad(apply_activation(x, activation, param).sum(), x)
    return slope.abs()


def _through_identity_layer(op, abs_inputs, perm, grad_scale):
    """The gradients of ``op`` with the identity activation, of ``grad_scale``, at the absolute
    inputs: each is the sum, over the very terms that make up that gradient, of
    ``grad_scale x |the factor multiplying it|`` (the op is linear in each input then)."""
    leaves = [None if t is None else t.clone().requires_grad_() for t in abs_inputs]
    out = op(*leaves, perm, "identity")
    return list(torch.autograd.grad(out, [t for t in leaves if t is not None], grad_scale))


def paired_scales(op, inputs, perm, activation, param, grad_out):
    """Scales of ``op`` (reference.paired_first_layer or reference.paired_linear) at ``inputs``
    (its tensor arguments before ``perm``, None for an absent one):

    - forward, per output element: sum of |terms| of its pre-activation (|a| + |b| + |bias|, or
      |W| |[hx; hz]| + |b|) plus |f(pre)|: the pre-activation's rounding, amplified by |f'| <= 1.13,
      and the activation's own evaluation error, a few ulp of its argument or value (gelu's
      1 + erf cancels for negative x);
    - each gradient: per output element ``tau = |g| (|f'(pre)| + 1 + forward scale)`` (f' to a few
      ulp of itself plus absolute ulps where it cancels, 1 - tanh^2 or 1 - sigmoid, and the
      pre-activation's error times |f''| <= 1), summed over exactly the terms of that gradient.
    """
    terms = op(*[_abs64(t) for t in inputs], perm, "identity").detach()
    pre = op(*[_f64(t) for t in inputs], perm, "identity").detach()
    forward = terms + apply_activation(pre, activation, param).abs()
    tau = grad_out.detach().to(F64).abs() * (activation_slope(pre, activation, param) + 1 + forward)
    return forward, _through_identity_layer(op, [_abs64(t) for t in inputs], perm, tau)


def critic_head_scales(hidden, weight, bias, n_joint, activation, param):
    """Scales of critic_head's scores, bound and bound gradients (hidden, weight[, bias]).

    Scores ``t = f(hidden . w + b)``: sum of |terms| of the dot product plus |t|, as above. The
    bound ``mean(t_j) - mean(exp(t_m - 1))``: the scores' errors through the means (times
    exp(t - 1) for the shuffled ones) plus the rounding of exp and of the sums. Its gradient per
    row ``dscore f'(pre)`` with ``dscore = 1/n_j`` or ``-exp(t - 1)/n_m``: ``tau = |dscore|
    (|f'| + 1)(1 + score scale)``, then summed over the terms of each gradient.
    """
    h, w = _f64(hidden), _f64(weight)
    b = _f64(bias) if bias is not None else torch.zeros(1, dtype=F64)
    pre = h @ w + b
    t = apply_activation(pre, activation, param)
    score = _abs64(hidden) @ _abs64(weight) + b.abs() + t.abs()
    growth = torch.exp(t[n_joint:] - 1)
    bound = score[:n_joint].mean() + (growth * (1 + score[n_joint:])).mean()
    dscore = torch.cat([torch.full((n_joint,), 1.0 / n_joint, dtype=F64),
                        growth / (t.numel() - n_joint)])
    tau = dscore * (activation_slope(pre, activation, param) + 1) * (1 + score)
    grads = [torch.outer(tau, _abs64(weight)), _abs64(hidden).t() @ tau]
    if bias is not None:
        grads.append(tau.sum().reshape(1))
    return score, bound, grads
