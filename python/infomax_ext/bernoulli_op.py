"""The Bernoulli log-likelihood of a decoder's probabilities,
``torch.ops.infomax_ext.bernoulli_loglik``: its Python wrapper, fake kernels and autograd formula.

``bernoulli_loglik(p, x)`` takes probabilities ``p`` (M, D) and data ``x`` (N, D), M = S N (S
blocks of N rows, row ``r`` scored against row ``r % N`` of ``x``), one dtype (float32 or
float64) and device, and returns (M,)::

    sum_j x log pc + (1 - x) log(1 - pc),   pc = clamp(p, eps, 1 - eps)

with ``eps = torch.finfo(p.dtype).eps`` (finite at p = 0 and 1): what
:func:`infomax_ext.decoder_loglikelihood` computes for a :class:`~infomax_ext.BernoulliDecoder`,
in one pass over ``p`` (csrc/bernoulli.h; the CPU's logs vectorised, within 2 ulp) instead of
nine elementwise torch ops, and a backward of one pass:
``grad_p = grad (x - pc) / (pc (1 - pc))`` inside the clamp's range, 0 outside and at NaN (the
ends included, as torch.clamp's gradient up to torch 2.13; torch 2.14's stops at them), and
``grad_x = sum over the blocks of grad (log pc - log(1 - pc))``. The CPU kernel sums each row
in double in a fixed order (the same bits whatever the thread count). Where it does not apply
(:func:`kernel_applies`: bfloat16, float16, two dtypes, a device without the kernel, a
``torch.func`` transform) the plain formula (:func:`infomax_ext.reference.bernoulli_loglik`)
runs. No double backward (create_graph=True raises; the plain formula has it:
``infomax_ext.use_reference_path()``).
"""
from __future__ import annotations

from typing import Any

import torch

from . import _ops, reference
from ._op_autograd import (OPS, autograd_kernel, below_autograd, grad_if, refuse_double_backward,
                           register_autograd)

__all__ = ["bernoulli_loglik", "kernel_applies"]

_APPLIES = _ops.full_precision_test("bernoulli_loglik")


def kernel_applies(p: torch.Tensor, x: torch.Tensor) -> bool:
    """True when the compiled ``bernoulli_loglik`` runs on these tensors (see
    :func:`~infomax_ext._ops.kernels_apply`; both of one dtype, float32 or float64, on a device
    with its kernel)."""
    return _APPLIES(p, x)


def bernoulli_loglik(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-row Bernoulli log-likelihood (M,) of ``p`` (M, D) against ``x`` (N, D), M a positive
    multiple of N (see the module docstring): the compiled op where :func:`kernel_applies`,
    else the plain formula."""
    _ops._check_args("bernoulli_loglik", p=p, x=x)
    if p.dim() != 2 or x.dim() != 2 or p.shape[1] != x.shape[1]:
        raise ValueError(f"bernoulli_loglik takes p (M, D) and x (N, D) with one D, got shapes "
                         f"{tuple(p.shape)} and {tuple(x.shape)}")
    m, n = p.shape[0], x.shape[0]
    if n < 1 or p.shape[1] < 1 or m < 1 or m % n != 0:
        raise ValueError(f"bernoulli_loglik: p's {m} rows must be a positive multiple of x's {n} "
                         f"rows, with at least one feature (shapes {tuple(p.shape)} and "
                         f"{tuple(x.shape)})")
    if kernel_applies(p, x):
        out: torch.Tensor = _differentiable(p, x)
        return out
    return reference.bernoulli_loglik(p, x)


class _BernoulliLoglik(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, p: torch.Tensor, x: torch.Tensor) -> Any:
        with below_autograd():
            out = OPS.bernoulli_loglik.default(p, x)
        ctx.save_for_backward(p, x)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        p, x = ctx.saved_tensors
        refuse_double_backward("bernoulli_loglik", grad, p, x)
        need = ctx.needs_input_grad
        grad_p, grad_x = OPS.bernoulli_loglik_backward.default(grad, p, x, [need[0], need[1]])
        return grad_if(need[0], grad_p), grad_if(need[1], grad_x)


if _ops.extension_available():

    def _fake_bernoulli_loglik(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _ops._fake_same_device("bernoulli_loglik", p=p, x=x)
        torch._check(p.dim() == 2 and x.dim() == 2,
                     lambda: "bernoulli_loglik: p and x must be 2-D")
        return p.new_empty((p.shape[0],))

    def _fake_bernoulli_loglik_backward(
            grad: torch.Tensor, p: torch.Tensor, x: torch.Tensor,
            output_mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        _ops._fake_same_device("bernoulli_loglik_backward", grad=grad, p=p, x=x)
        # contiguous, as the kernels allocate them; an empty tensor for a gradient not asked for
        return (p.new_empty(p.shape if output_mask[0] else (0,)),
                x.new_empty(x.shape if output_mask[1] else (0,)))

    torch.library.register_fake("infomax_ext::bernoulli_loglik", _fake_bernoulli_loglik)
    torch.library.register_fake("infomax_ext::bernoulli_loglik_backward",
                                _fake_bernoulli_loglik_backward)

    _differentiable = register_autograd(
        "bernoulli_loglik", autograd_kernel(_BernoulliLoglik, OPS.bernoulli_loglik.default))
