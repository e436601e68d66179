"""The compiled reduction of an MI bound, ``torch.ops.infomax_ext.mi_bound``: its Python wrapper,
fake kernels and autograd formula.

``mi_bound(t_joint, t_negatives, bound, param)`` takes the M joint scores and the K scores on
negatives (1-D, one float dtype and device) and returns two 0-dim tensors and the state its
backward reuses, for the bounds of the C++ table ``csrc/bounds.h`` (nwj, dv, js, smile; ``param``
is SMILE's clip, 0 for the others):

- ``value``: the bound, ``mean t_j + offset - R`` with R = ``mean n(t_k)`` (nwj: n = exp(t - 1);
  js: n = exp(t), offset 1) or ``log mean exp n(t_k)`` (dv: n = t; smile: n = clip(t, -tau, tau));
- ``objective``: what trains the critic: the value (nwj, dv), or the Jensen-Shannon f-GAN bound
  ``-mean softplus(-t_j) - mean softplus(t_k)`` (js, smile);
- ``log_sum_exp`` (2,): ``(shift, log sum_k exp(n(t_k) - shift))`` with shift the largest n(t_k)
  (0 when not finite) for dv and smile, zeros for nwj and js; not differentiable.

Each output has its own exact gradient (``mi_bound_backward`` takes the incoming gradient of
either or both). :class:`~infomax_ext.bounds.Bound` returns the value with the objective's
gradient, and is the op's plain-PyTorch twin: it calls :func:`mi_bound` where
:func:`kernel_applies` and its own formulas otherwise. The sums run in double on the CPU, the
log-mean-exp shifted by the largest term.
"""
from __future__ import annotations

from typing import Any

import torch

from . import _ops
from ._op_autograd import refuse_double_backward

__all__ = ["mi_bound", "kernel_applies"]

_OPS = torch.ops.infomax_ext


_APPLIES = _ops.full_precision_test("mi_bound")


def kernel_applies(t_joint: torch.Tensor, t_negatives: torch.Tensor) -> bool:
    """True when the compiled ``mi_bound`` runs on these scores (see
    :func:`~infomax_ext._ops.kernels_apply`; both of one dtype, on a device with its kernel)."""
    return _APPLIES(t_joint, t_negatives)


def _check(t_joint: object, t_negatives: object, param: object) -> None:
    """Before any work: tensors on one device, 1-D and non-empty, a number for ``param``
    (TypeError / ValueError naming the problem; the op checks the bound's name and parameter)."""
    _ops._check_args("mi_bound", t_joint=t_joint, t_negatives=t_negatives)
    assert isinstance(t_joint, torch.Tensor) and isinstance(t_negatives, torch.Tensor)
    for name, t in (("t_joint", t_joint), ("t_negatives", t_negatives)):
        if t.dim() != 1 or t.numel() < 1:
            raise ValueError(f"mi_bound: {name} must be a non-empty 1-D tensor of scores, got "
                             f"shape {tuple(t.shape)}")
    if isinstance(param, bool) or not isinstance(param, (int, float)):
        raise TypeError(f"mi_bound: param must be a number, got {type(param).__name__}")


def mi_bound(t_joint: torch.Tensor, t_negatives: torch.Tensor, bound: str = "nwj",
             param: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(value, objective)`` of ``bound`` (see the module docstring), 0-dim each, from the joint
    scores ``t_joint`` (M,) and the negatives' scores ``t_negatives`` (K,), by the compiled op.
    Where it does not apply (:func:`kernel_applies`: no extension, the reference path, another
    dtype) a RuntimeError says so: ``infomax_ext.BOUNDS[bound](t_joint, t_negatives)`` evaluates
    the bound on every path."""
    _check(t_joint, t_negatives, param)
    if not kernel_applies(t_joint, t_negatives):
        raise not_applied_error("mi_bound", t_joint, t_negatives,
                                f"infomax_ext.BOUNDS[{bound!r}](t_joint, t_negatives) evaluates "
                                "the bound on every path")
    if torch.compiler.is_compiling() or not torch.is_grad_enabled() or not (
            t_joint.requires_grad or t_negatives.requires_grad):
        value, objective, _ = _OPS.mi_bound.default(t_joint, t_negatives, bound, float(param))
    else:
        value, objective, _ = _MiBound.apply(  # type: ignore[no-untyped-call]
            t_joint, t_negatives, bound, float(param))
    return value, objective


def not_applied_error(op: str, a: torch.Tensor, b: torch.Tensor, fallback: str) -> RuntimeError:
    """The error of a compiled reduction ``op`` called where its kernel does not apply to ``a``
    and ``b``: why (no extension, the reference path, their dtypes or device), then ``fallback``
    (what evaluates it on every path)."""
    reason = _ops.extension_error() or (
        "the plain-PyTorch path is chosen (use_path)" if _ops.current_path() == "reference"
        else f"the kernels do not run {a.dtype} and {b.dtype} scores on {a.device} here")
    return RuntimeError(f"{op}: the compiled op does not apply: {reason}; {fallback}")


if _ops.extension_available():

    def _fake_mi_bound(t_joint: torch.Tensor, t_negatives: torch.Tensor, bound: str,
                       param: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _ops._fake_same_device("mi_bound", t_joint=t_joint, t_negatives=t_negatives)
        torch._check(t_joint.dim() == 1 and t_negatives.dim() == 1,
                     lambda: "mi_bound: the scores must be 1-D")
        return t_joint.new_empty(()), t_joint.new_empty(()), t_joint.new_empty((2,))

    def _fake_mi_bound_backward(
            grad_value: torch.Tensor | None, grad_objective: torch.Tensor | None,
            t_joint: torch.Tensor, t_negatives: torch.Tensor, bound: str, param: float,
            log_sum_exp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        _ops._fake_same_device("mi_bound_backward", t_joint=t_joint, t_negatives=t_negatives,
                               grad_value=grad_value, grad_objective=grad_objective,
                               log_sum_exp=log_sum_exp)
        return torch.empty_like(t_joint), torch.empty_like(t_negatives)

    torch.library.register_fake("infomax_ext::mi_bound", _fake_mi_bound)
    torch.library.register_fake("infomax_ext::mi_bound_backward", _fake_mi_bound_backward)

    def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        t_joint, t_negatives, bound, param = inputs
        ctx.save_for_backward(t_joint, t_negatives, output[2])
        ctx.bound, ctx.param = bound, param
        ctx.mark_non_differentiable(output[2])
        ctx.set_materialize_grads(False)  # an unused output sends no gradient (None)

    def _backward(ctx: Any, grad_value: torch.Tensor | None, grad_objective: torch.Tensor | None,
                  _grad_log_sum_exp: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        t_joint, t_negatives, log_sum_exp = ctx.saved_tensors
        if grad_value is None and grad_objective is None:
            return None, None, None, None
        refuse_double_backward("mi_bound", grad_value, grad_objective, t_joint, t_negatives)
        g_joint, g_negatives = _OPS.mi_bound_backward.default(
            grad_value, grad_objective, t_joint, t_negatives, ctx.bound, ctx.param, log_sum_exp)
        need = ctx.needs_input_grad
        return (g_joint if need[0] else None, g_negatives if need[1] else None, None, None)

    torch.library.register_autograd("infomax_ext::mi_bound", _backward,
                                    setup_context=_setup_context)

    class _MiBound(torch.autograd.Function):
        """The op with the autograd formula above as an autograd.Function: what
        :func:`mi_bound` calls in eager mode with gradients to compute (about 10 µs less per
        forward and backward than the op's registered autograd; torch.compile traces the op)."""

        @staticmethod
        def forward(ctx: Any, t_joint: torch.Tensor, t_negatives: torch.Tensor, bound: str,
                    param: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = _OPS.mi_bound.default(
                t_joint, t_negatives, bound, param)
            _setup_context(ctx, (t_joint, t_negatives, bound, param), out)
            return out

        @staticmethod
        def backward(ctx: Any, grad_value: torch.Tensor | None,
                     grad_objective: torch.Tensor | None,
                     _grad_log_sum_exp: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
            return _backward(ctx, grad_value, grad_objective, _grad_log_sum_exp)
