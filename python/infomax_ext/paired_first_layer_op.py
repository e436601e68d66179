"""The MI chain's first MLP layer on joint and shuffled pairs from precomputed halves,
``torch.ops.infomax_ext.paired_first_layer``: its Python wrapper, fake kernels and autograd
formula.

``paired_first_layer(data_half, latent_half, shuffled_half, bias, perm, activation, param)``
takes ``data_half`` (N, H) = ``data(x) @ Wx.T``, ``latent_half`` (M, H) with M = S N =
``latent(z) @ Wz.T``, ``shuffled_half`` (M, H) or None, ``bias`` (H,) and ``perm`` (M,) int64,
and returns (2M, H): joint rows ``act(data_half[r % N] + latent_half[r] + bias)``, then shuffled
rows ``act(data_half[r % N] + source[perm[r]] + bias)``. The backward is one op,
``paired_first_layer_backward``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from . import precision, reference
from ._op_autograd import (OPS, autograd_kernel, below_autograd, grad_if, refuse_double_backward,
                           register_autograd)
from ._ops import _check_args, _fake_same_device, extension_available, kernels_apply

__all__ = ["paired_first_layer"]


def paired_first_layer(
    data_half: torch.Tensor,
    latent_half: torch.Tensor,
    shuffled_half: torch.Tensor | None,
    bias: torch.Tensor,
    perm: torch.Tensor,
    activation: str = "identity",
    param: float = 0.0,
) -> torch.Tensor:
    """First MLP layer of the MI chain for joint and shuffled pairs in one pass.

    ``data_half`` (N, H) is ``data(x) @ Wx.T``, ``latent_half`` (M, H) with M = S N is
    ``latent(z) @ Wz.T``, ``bias`` (H,), ``perm`` (M,) int64. Returns (2M, H): rows ``r < M`` are
    ``act(data_half[r % N] + latent_half[r] + bias)`` and rows ``M + r`` are
    ``act(data_half[r % N] + source[perm[r]] + bias)``, where ``source`` is ``shuffled_half``
    or, when None, ``latent_half`` (then the shuffled rows' gradient flows back into
    ``latent_half`` through the inverse permutation). The shuffled rows are never copied.
    """
    _check_args("paired_first_layer", data_half=data_half, latent_half=latent_half,
                shuffled_half=shuffled_half, bias=bias, perm=perm)
    if kernels_apply(data_half, latent_half, shuffled_half, bias):
        return _differentiable(*precision.autocast_inputs(
            data_half.device.type, data_half, latent_half, shuffled_half, bias), perm,
            activation, float(param))
    return reference.paired_first_layer(
        data_half, latent_half, shuffled_half, bias, perm, activation, param
    )


def _paired_backward(grad_out: torch.Tensor, data_half: torch.Tensor, latent_half: torch.Tensor,
                     source: torch.Tensor | None, bias: torch.Tensor, perm: torch.Tensor,
                     activation: str, param: float, want: Sequence[bool]) -> Any:
    """paired_first_layer_backward, with the inverse permutation computed when the shuffled
    rows' gradient returns to latent_half or goes to the source (computing it checks that perm
    is a permutation: the source gradient is written, not summed, at perm[r])."""
    needs_inverse = (want[1] and source is None) or want[2]
    inverse = OPS.inverse_permutation.default(perm) if needs_inverse else perm
    return OPS.paired_first_layer_backward.default(
        grad_out, data_half, latent_half, source, bias, perm, inverse, activation, param, want
    )


class _PairedFirstLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, data_half: torch.Tensor, latent_half: torch.Tensor,
                shuffled_half: torch.Tensor | None, bias: torch.Tensor, perm: torch.Tensor,
                activation: str, param: float) -> Any:
        with below_autograd():
            out = OPS.paired_first_layer.default(
                data_half, latent_half, shuffled_half, bias, perm, activation, param
            )
        ctx.save_for_backward(data_half, latent_half, shuffled_half, bias, perm)
        ctx.activation, ctx.param = activation, param
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Any:
        data_half, latent_half, source, bias, perm = ctx.saved_tensors
        refuse_double_backward("paired_first_layer", grad_out, data_half, latent_half, source,
                                bias)
        need = ctx.needs_input_grad
        want = [need[0], need[1], source is not None and need[2], need[3]]
        if not any(want):
            return (None,) * 7
        g_data, g_latent, g_source, g_bias = _paired_backward(
            grad_out, data_half, latent_half, source, bias, perm, ctx.activation, ctx.param, want
        )
        return (grad_if(want[0], g_data), grad_if(want[1], g_latent),
                grad_if(want[2], g_source), grad_if(want[3], g_bias), None, None, None)


if extension_available():

    @torch.library.register_fake("infomax_ext::paired_first_layer")
    def _(data_half: torch.Tensor, latent_half: torch.Tensor, shuffled_half: torch.Tensor | None,
          bias: torch.Tensor, perm: torch.Tensor, activation: str, param: float) -> torch.Tensor:
        _fake_same_device("paired_first_layer", data_half=data_half, latent_half=latent_half,
                          shuffled_half=shuffled_half, bias=bias, perm=perm)
        torch._check(data_half.dim() == 2 and latent_half.dim() == 2, lambda: "halves must be 2-D")
        torch._check(data_half.shape[1] == latent_half.shape[1], lambda: "half widths differ")
        return data_half.new_empty((2 * latent_half.shape[0], data_half.shape[1]))

    @torch.library.register_fake("infomax_ext::paired_first_layer_backward")
    def _(grad_out: torch.Tensor, data_half: torch.Tensor, latent_half: torch.Tensor,
          shuffled_half: torch.Tensor | None, bias: torch.Tensor, perm: torch.Tensor,
          inverse_perm: torch.Tensor, activation: str, param: float,
          output_mask: Sequence[bool]) -> tuple[torch.Tensor, ...]:
        _fake_same_device("paired_first_layer_backward", data_half=data_half, grad_out=grad_out,
                          latent_half=latent_half, shuffled_half=shuffled_half, bias=bias,
                          perm=perm, inverse_perm=inverse_perm)
        has_source = shuffled_half is not None

        def grad(wanted: bool, like: torch.Tensor) -> torch.Tensor:
            return like.new_empty(like.shape) if wanted else data_half.new_empty((0,))

        return (
            grad(output_mask[0], data_half),
            grad(output_mask[1], latent_half),
            grad(output_mask[2] and has_source, latent_half),
            grad(output_mask[3], bias),
        )

    _differentiable = register_autograd(
        "paired_first_layer",
        autograd_kernel(_PairedFirstLayer, OPS.paired_first_layer.default))
