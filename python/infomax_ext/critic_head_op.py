"""The MI chain's last layer fused with the NWJ bound, ``torch.ops.infomax_ext.critic_head``:
its Python wrapper, fake kernels and autograd formula.

``critic_head(hidden, weight, bias, n_joint, activation, param)`` takes ``hidden`` (R, h) (joint
rows ``[0, n_joint)``, then shuffled rows), ``weight`` (h,) and ``bias`` (1,) or None, and
returns ``(bound, scores)``: the 0-dim NWJ bound of the scores ``t = act(hidden @ weight + bias)``
(R,). The op also returns the pre-activations (R,), which its backward
(``critic_head_backward``) reuses.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from . import precision, reference
from ._op_autograd import (OPS, autograd_kernel, below_autograd, grad_if, refuse_double_backward,
                           register_autograd)
from ._ops import _check_args, _fake_same_device, extension_available, kernels_apply

__all__ = ["critic_head"]


def critic_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    n_joint: int,
    activation: str = "identity",
    param: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MI chain's last layer ``t = act(hidden @ weight + bias)`` fused with the NWJ bound.

    ``hidden`` (R, h) holds joint rows ``[0, n_joint)`` then shuffled rows; ``weight`` (h,);
    ``bias`` (1,) or None. Returns ``(bound, scores)``: the 0-dim bound
    ``mean(t[:n_joint]) - mean(exp(t[n_joint:] - 1))`` and the (R,) scores."""
    _check_args("critic_head", hidden=hidden, weight=weight, bias=bias)
    if kernels_apply(hidden, weight, bias):
        bound, scores, _pre = _differentiable(*precision.autocast_inputs(
            hidden.device.type, hidden, weight, bias), n_joint, activation, float(param))
        return bound, scores
    return reference.critic_head(hidden, weight, bias, n_joint, activation, param)


class _CriticHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                n_joint: int, activation: str, param: float) -> Any:
        with below_autograd():
            bound, scores, pre = OPS.critic_head.default(hidden, weight, bias, n_joint, activation,
                                                         param)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(pre)
        ctx.save_for_backward(hidden, weight, bias, scores, pre)
        ctx.n_joint, ctx.activation, ctx.param = n_joint, activation, param
        return bound, scores, pre

    @staticmethod
    def backward(ctx: Any, grad_bound: torch.Tensor, grad_scores: torch.Tensor | None,
                 _grad_pre: torch.Tensor | None) -> Any:
        hidden, weight, bias, scores, pre = ctx.saved_tensors
        refuse_double_backward("critic_head", grad_bound, grad_scores, hidden, weight, bias)
        need = ctx.needs_input_grad
        want = [need[0], need[1], need[2]]
        if not any(want) or (grad_bound is None and grad_scores is None):
            return (None,) * 6
        if grad_bound is None:
            grad_bound = hidden.new_zeros((), dtype=precision.bound_dtype(hidden.dtype))
        g_hidden, g_weight, g_bias = OPS.critic_head_backward.default(
            grad_bound, grad_scores, hidden, weight, scores, pre, ctx.n_joint, ctx.activation,
            ctx.param, want
        )
        return (grad_if(want[0], g_hidden), grad_if(want[1], g_weight),
                grad_if(want[2], g_bias), None, None, None)


if extension_available():

    @torch.library.register_fake("infomax_ext::critic_head")
    def _(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, n_joint: int,
          activation: str, param: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _fake_same_device("critic_head", hidden=hidden, weight=weight, bias=bias)
        rows = hidden.shape[0]
        return (hidden.new_empty((), dtype=precision.bound_dtype(hidden.dtype)),
                hidden.new_empty((rows,)), hidden.new_empty((rows,)))

    @torch.library.register_fake("infomax_ext::critic_head_backward")
    def _(grad_bound: torch.Tensor, grad_scores: torch.Tensor | None, hidden: torch.Tensor,
          weight: torch.Tensor, scores: torch.Tensor, pre: torch.Tensor, n_joint: int,
          activation: str, param: float,
          output_mask: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _fake_same_device("critic_head_backward", hidden=hidden, weight=weight, scores=scores,
                          pre=pre, grad_bound=grad_bound, grad_scores=grad_scores)
        return (
            hidden.new_empty(hidden.shape) if output_mask[0] else hidden.new_empty((0,)),
            weight.new_empty(weight.shape) if output_mask[1] else hidden.new_empty((0,)),
            hidden.new_empty((1,)) if output_mask[2] else hidden.new_empty((0,)),
        )

    _differentiable = register_autograd(
        "critic_head", autograd_kernel(_CriticHead, OPS.critic_head.default))
