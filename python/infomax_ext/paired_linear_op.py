"""The MI chain's first Linear layer on joint and shuffled pairs, one op and one autograd node,
``torch.ops.infomax_ext.paired_linear``: its Python wrapper, fake kernels and autograd formula.

``paired_linear(hx, hz, hz_shuffled, weight, bias, perm, activation, param, data_half)`` takes
``hx`` (N, Dx) = data(x), ``hz`` (M, Dz) = latent(z) with M = S N, ``hz_shuffled`` (M, Dz) or
None, ``weight`` (H, Dx + Dz), ``bias`` (H,) or None, ``perm`` (M,) int64 and ``data_half``
(N, H) or None, and returns (2M, H): the joint rows, then the shuffled rows
(csrc/paired_linear.cpp).
The autograd node runs ``paired_linear_forward`` (the output and the halves) and
``paired_linear_backward`` (every gradient in one call).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from . import precision, reference
from ._op_autograd import (OPS, autograd_kernel, below_autograd, grad_if, refuse_double_backward,
                           register_autograd)
from ._ops import _check_args, _fake_same_device, extension_available, kernels_apply
from .activations import OUTPUT_DERIVATIVE_ACTIVATIONS

__all__ = ["paired_linear"]


def paired_linear(
    hx: torch.Tensor,
    hz: torch.Tensor,
    hz_shuffled: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    perm: torch.Tensor,
    activation: str = "identity",
    param: float = 0.0,
    data_half: torch.Tensor | None = None,
) -> torch.Tensor:
    """The MI chain's first Linear layer on joint and shuffled pairs, one op and one autograd node.

    ``hx`` (N, Dx) = data(x), ``hz`` (M, Dz) = latent(z) with M = S N, ``weight`` (H, Dx + Dz),
    ``bias`` (H,) or None, ``perm`` (M,) int64. Returns (2M, H): joint row r is
    ``act(W [hx[r % N]; hz[r]] + b)``, shuffled row r is ``act(W [hx[r % N]; src[perm[r]]] + b)``
    with ``src = hz_shuffled`` or, when None, ``hz``. The weight is split into its data and latent
    columns: ``hx Wx^T`` is computed once for both halves, the shuffled rows are never copied, and
    the backward writes the weight gradient into one buffer. ``data_half`` (N, H), when given, is
    ``hx @ weight[:, :Dx].T`` computed earlier (a constant that saves that product; gradients are
    unchanged).
    """
    _check_args("paired_linear", hx=hx, hz=hz, hz_shuffled=hz_shuffled, weight=weight, bias=bias,
                perm=perm, data_half=data_half)
    if kernels_apply(hx, hz, hz_shuffled, weight, bias, data_half):
        hx, hz, hz_shuffled, weight, bias, data_half = precision.autocast_inputs(
            hx.device.type, hx, hz, hz_shuffled, weight, bias, data_half)
        if data_half is not None and data_half.dtype != hx.dtype:
            data_half = None  # kept from a call in another precision: computed again instead
        return _differentiable(
            hx, hz, hz_shuffled, weight, bias, perm, activation, float(param), data_half
        )
    return reference.paired_linear(hx, hz, hz_shuffled, weight, bias, perm, activation, param,
                                   data_half)


def refuse_grad_of_data_half(data_half: torch.Tensor | None) -> None:
    """``data_half`` is a constant computed earlier: a gradient through it is refused."""
    if data_half is not None and data_half.requires_grad:
        raise RuntimeError(
            "infomax_ext: data_half is a precomputed constant (hx @ weight[:, :Dx].T); it "
            "must not require grad")


class _PairedLinear(torch.autograd.Function):
    """paired_linear as one node: paired_linear_forward computes the halves,
    paired_linear_backward every gradient (csrc/paired_linear.cpp). For identity and ReLU the
    derivative is read from the output, so the node keeps the output (which the next layer keeps
    anyway) instead of the three halves (N, M and M rows of H)."""

    @staticmethod
    def forward(ctx: Any, hx: torch.Tensor, hz: torch.Tensor, hz_shuffled: torch.Tensor | None,
                weight: torch.Tensor, bias: torch.Tensor | None, perm: torch.Tensor,
                activation: str, param: float, data_half: torch.Tensor | None = None) -> Any:
        refuse_grad_of_data_half(data_half)
        with below_autograd():
            out, computed_data, latent, source = OPS.paired_linear_forward.default(
                hx, hz, hz_shuffled, weight, bias, perm, activation, param, data_half
            )
        ctx.from_output = activation in OUTPUT_DERIVATIVE_ACTIVATIONS
        if ctx.from_output:
            ctx.save_for_backward(hx, hz, hz_shuffled, weight, bias, perm, out)
        else:
            ctx.save_for_backward(hx, hz, hz_shuffled, weight, bias, perm,
                                  computed_data if data_half is None else data_half, latent,
                                  source if hz_shuffled is not None else None)
        ctx.activation, ctx.param = activation, param
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Any:
        if ctx.from_output:
            hx, hz, hz_shuffled, weight, bias, perm, out = ctx.saved_tensors
            unused = hx.new_empty((0,))
            data, latent, source = unused, unused, (unused if hz_shuffled is not None else None)
        else:
            hx, hz, hz_shuffled, weight, bias, perm, data, latent, source = ctx.saved_tensors
            out = None
        refuse_double_backward("paired_linear", grad_out, hx, hz, hz_shuffled, weight, bias)
        need = list(ctx.needs_input_grad[:5])
        if not any(need):
            return (None,) * 9
        grads = OPS.paired_linear_backward.default(
            grad_out, hx, hz, hz_shuffled, weight, data, latent, source, bias, perm,
            ctx.activation, ctx.param, need, out
        )
        return tuple(grad_if(wanted, g) for wanted, g in zip(need, grads)) + (None,) * 4


if extension_available():

    @torch.library.register_fake("infomax_ext::paired_linear")
    def _(hx: torch.Tensor, hz: torch.Tensor, hz_shuffled: torch.Tensor | None, weight: torch.Tensor,
          bias: torch.Tensor | None, perm: torch.Tensor, activation: str, param: float,
          data_half: torch.Tensor | None = None) -> Any:
        _fake_same_device("paired_linear", hx=hx, hz=hz, hz_shuffled=hz_shuffled, weight=weight,
                          bias=bias, perm=perm, data_half=data_half)
        torch._check(hx.dim() == 2 and hz.dim() == 2 and weight.dim() == 2,
                     lambda: "hx, hz and weight must be 2-D")
        torch._check(weight.shape[1] == hx.shape[1] + hz.shape[1],
                     lambda: "the weight's width is not hx's plus hz's")
        return hx.new_empty((2 * hz.shape[0], weight.shape[0]))

    @torch.library.register_fake("infomax_ext::paired_linear_forward")
    def _(hx: torch.Tensor, hz: torch.Tensor, hz_shuffled: torch.Tensor | None, weight: torch.Tensor,
          bias: torch.Tensor | None, perm: torch.Tensor, activation: str, param: float,
          data_half: torch.Tensor | None = None) -> Any:
        out = torch.ops.infomax_ext.paired_linear.default(
            hx, hz, hz_shuffled, weight, bias, perm, activation, param, data_half)
        units = weight.shape[0]
        return (
            out,
            hx.new_empty((0,) if data_half is not None else (hx.shape[0], units)),
            hx.new_empty((hz.shape[0], units)),
            hx.new_empty((0,) if hz_shuffled is None else (hz.shape[0], units)),
        )

    @torch.library.register_fake("infomax_ext::paired_linear_backward")
    def _(grad_out: torch.Tensor, hx: torch.Tensor, hz: torch.Tensor,
          hz_shuffled: torch.Tensor | None, weight: torch.Tensor, data_half: torch.Tensor | None,
          latent_half: torch.Tensor | None, shuffled_half: torch.Tensor | None,
          bias: torch.Tensor | None, perm: torch.Tensor, activation: str, param: float,
          output_mask: Sequence[bool],
          out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        _fake_same_device("paired_linear_backward", grad_out=grad_out, hx=hx, hz=hz,
                          hz_shuffled=hz_shuffled, weight=weight, bias=bias, perm=perm, out=out)

        def grad(wanted: bool, like: torch.Tensor) -> torch.Tensor:
            return like.new_empty(like.shape) if wanted else hx.new_empty((0,))

        # the kernel's (M, Dz) gradients are transposed (Dz, M) products
        def narrow_grad(wanted: bool) -> torch.Tensor:
            return hz.new_empty((hz.shape[1], hz.shape[0])).t() if wanted else hx.new_empty((0,))

        return (grad(output_mask[0], hx), narrow_grad(output_mask[1]),
                narrow_grad(output_mask[2] and hz_shuffled is not None), grad(output_mask[3], weight),
                grad(output_mask[4], weight.new_empty((weight.shape[0],))))

    _differentiable = register_autograd(
        "paired_linear", autograd_kernel(_PairedLinear, OPS.paired_linear.default))
