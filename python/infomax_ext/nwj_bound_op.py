"""The NWJ lower bound of a critic's scores, ``torch.ops.infomax_ext.nwj_bound``: its Python
wrapper, fake kernels and autograd formula.

``nwj_bound(t_joint, t_shuffled)`` takes the scores on joint pairs (N,) and on shuffled pairs
(M,) and returns the 0-dim ``mean(t_joint) - mean(exp(t_shuffled - 1))``; its backward
(``nwj_bound_backward``) returns both scores' gradients.
"""
from __future__ import annotations

from typing import Any

import torch

from . import precision, reference
from ._op_autograd import (OPS, autograd_kernel, below_autograd, grad_if, refuse_double_backward,
                           register_autograd)
from ._ops import _check_args, _fake_same_device, extension_available, kernels_apply

__all__ = ["nwj_bound"]


def nwj_bound(t_joint: torch.Tensor, t_shuffled: torch.Tensor) -> torch.Tensor:
    """NWJ lower bound ``mean(t_joint) - mean(exp(t_shuffled - 1))`` (a 0-dim tensor; float32 for
    bfloat16 and float16 scores: :mod:`infomax_ext.precision`).

    ``t_joint`` (N,) are a critic's scores on joint pairs, ``t_shuffled`` (M,) on shuffled pairs.
    For users who bring their own critic."""
    _check_args("nwj_bound", t_joint=t_joint, t_shuffled=t_shuffled)
    if t_joint.dim() != 1 or t_shuffled.dim() != 1:
        raise ValueError(
            f"nwj_bound takes 1-D score tensors, got shapes {tuple(t_joint.shape)} and "
            f"{tuple(t_shuffled.shape)}"
        )
    if t_joint.numel() < 1 or t_shuffled.numel() < 1:
        raise ValueError("nwj_bound needs at least one joint and one shuffled score")
    if kernels_apply(t_joint, t_shuffled):  # two dtypes: both cast to the wider, as torch promotes
        return _differentiable(
            *precision.promoted_inputs(t_joint.device.type, t_joint, t_shuffled))
    return reference.nwj_bound(t_joint, t_shuffled)


class _NwjBound(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, t_joint: torch.Tensor, t_shuffled: torch.Tensor) -> Any:
        with below_autograd():
            bound = OPS.nwj_bound.default(t_joint, t_shuffled)
        ctx.save_for_backward(t_joint, t_shuffled)
        return bound

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        t_joint, t_shuffled = ctx.saved_tensors
        refuse_double_backward("nwj_bound", grad, t_joint, t_shuffled)
        g_joint, g_marg = OPS.nwj_bound_backward.default(grad, t_joint, t_shuffled)
        need = ctx.needs_input_grad
        return grad_if(need[0], g_joint), grad_if(need[1], g_marg)


if extension_available():

    @torch.library.register_fake("infomax_ext::nwj_bound")
    def _(t_joint: torch.Tensor, t_shuffled: torch.Tensor) -> torch.Tensor:
        _fake_same_device("nwj_bound", t_joint=t_joint, t_shuffled=t_shuffled)
        return t_joint.new_empty((), dtype=precision.bound_dtype(t_joint.dtype))

    @torch.library.register_fake("infomax_ext::nwj_bound_backward")
    def _(grad: torch.Tensor, t_joint: torch.Tensor,
          t_shuffled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _fake_same_device("nwj_bound_backward", t_joint=t_joint, t_shuffled=t_shuffled, grad=grad)
        return torch.empty_like(t_joint), torch.empty_like(t_shuffled)

    _differentiable = register_autograd(
        "nwj_bound", autograd_kernel(_NwjBound, OPS.nwj_bound.default))
