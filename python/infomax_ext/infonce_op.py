"""The compiled InfoNCE reduction, ``torch.ops.infomax_ext.infonce_rows``: its Python wrapper,
fake kernels and autograd formula.

``infonce_rows(rows, joint)`` takes rows (R, C) of an all-pairs score matrix,
``rows[i, j] = T(x_i, z_j)``, and the joint scores ``joint`` (R,) (one float dtype and device,
float32 or float64) and returns

- ``value`` (0-dim): ``mean_i [joint_i - logsumexp_j rows[i, j]] + log C``, InfoNCE's estimate
  (van den Oord et al. 2018) on these rows;
- ``row_lse`` (R,): ``logsumexp_j rows[i, j]``, not differentiable (the backward reuses it).

Its backward ``infonce_rows_backward(grad, rows, joint, row_lse)`` returns
``grad_rows = -(grad / R) softmax_j(rows[i, j])`` (as ``exp(rows - row_lse)``) and
``grad_joint = grad / R``. Each row's log-sum-exp is shifted by its largest entry (0 when that
is not finite, as :func:`torch.logsumexp`), so non-finite entries give torch's answer: a row of
-inf has row_lse -inf, a row holding +inf has +inf, a NaN makes its row NaN. The CPU kernel sums
each row's exponentials in double, then the rows in a fixed order (the same bits whatever the
thread count). :meth:`infomax_ext.bounds.InfoNCE.from_rows` calls :func:`infonce_rows` where
:func:`kernel_applies` and its plain-PyTorch formula (the twin and the tests' oracle) otherwise.
"""
from __future__ import annotations

from typing import Any

import torch

from . import _ops
from ._op_autograd import refuse_double_backward
from .bound_op import not_applied_error

__all__ = ["infonce_rows", "kernel_applies", "check_rows"]

_OPS = torch.ops.infomax_ext

_APPLIES = _ops.full_precision_test("infonce_rows")


def kernel_applies(rows: torch.Tensor, joint: torch.Tensor) -> bool:
    """True when the compiled ``infonce_rows`` runs on these scores (see
    :func:`~infomax_ext._ops.kernels_apply`; both of one dtype, float32 or float64, on a device
    with its kernel)."""
    return _APPLIES(rows, joint)


def check_rows(rows: object, joint: object) -> None:
    """Before any work: tensors on one device, rows (R, C) with R, C >= 1 and joint (R,)
    (TypeError / ValueError naming the problem)."""
    _ops._check_args("infonce_rows", rows=rows, joint=joint)
    assert isinstance(rows, torch.Tensor) and isinstance(joint, torch.Tensor)
    if rows.dim() != 2 or rows.shape[0] < 1 or rows.shape[1] < 1:
        raise ValueError(f"infonce_rows: rows must be a non-empty (R, C) matrix of scores, got "
                         f"shape {tuple(rows.shape)}")
    if tuple(joint.shape) != (rows.shape[0],):
        raise ValueError(f"infonce_rows: joint must hold one score per row of rows, shape "
                         f"({rows.shape[0]},), got {tuple(joint.shape)}")


def infonce_rows(rows: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
    """InfoNCE's ``mean_i [joint_i - logsumexp_j rows[i, j]] + log C`` (0-dim) from ``rows``
    (R, C) and ``joint`` (R,), by the compiled op (see the module docstring). Where it does not
    apply (:func:`kernel_applies`) a RuntimeError says so:
    ``infomax_ext.BOUNDS['infonce'].from_rows(rows, joint)`` evaluates it on every path."""
    check_rows(rows, joint)
    if not kernel_applies(rows, joint):
        raise not_applied_error("infonce_rows", rows, joint,
                                "infomax_ext.BOUNDS['infonce'].from_rows(rows, joint) evaluates "
                                "it on every path")
    return infonce_rows_checked(rows, joint)


def infonce_rows_checked(rows: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
    """:func:`infonce_rows` on arguments that :func:`check_rows` has passed and
    :func:`kernel_applies` accepts (``InfoNCE.from_rows`` checks them once, for either path)."""
    value: torch.Tensor
    if torch.compiler.is_compiling() or not torch.is_grad_enabled() or not (
            rows.requires_grad or joint.requires_grad):
        value, _ = _OPS.infonce_rows.default(rows, joint)
    else:
        value, _ = _InfoNceRows.apply(rows, joint)  # type: ignore[no-untyped-call]
    return value


if _ops.extension_available():

    def _fake_infonce_rows(rows: torch.Tensor,
                           joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _ops._fake_same_device("infonce_rows", rows=rows, joint=joint)
        torch._check(rows.dim() == 2 and joint.dim() == 1,
                     lambda: "infonce_rows: rows must be 2-D and joint 1-D")
        return rows.new_empty(()), rows.new_empty((rows.shape[0],))

    def _fake_infonce_rows_backward(
            grad: torch.Tensor, rows: torch.Tensor, joint: torch.Tensor,
            row_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _ops._fake_same_device("infonce_rows_backward", grad=grad, rows=rows, joint=joint,
                               row_lse=row_lse)
        # contiguous, as the kernels allocate them (empty_like would keep a transposed rows'
        # strides)
        return rows.new_empty(rows.shape), joint.new_empty(joint.shape)

    torch.library.register_fake("infomax_ext::infonce_rows", _fake_infonce_rows)
    torch.library.register_fake("infomax_ext::infonce_rows_backward",
                                _fake_infonce_rows_backward)

    def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        rows, joint = inputs
        ctx.save_for_backward(rows, joint, output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # an unused value sends no gradient (None)

    def _backward(ctx: Any, grad_value: torch.Tensor | None,
                  _grad_row_lse: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        rows, joint, row_lse = ctx.saved_tensors
        if grad_value is None:
            return None, None
        refuse_double_backward("infonce_rows", grad_value, rows, joint)
        grad_rows, grad_joint = _OPS.infonce_rows_backward.default(grad_value, rows, joint,
                                                                   row_lse)
        need = ctx.needs_input_grad
        return grad_rows if need[0] else None, grad_joint if need[1] else None

    torch.library.register_autograd("infomax_ext::infonce_rows", _backward,
                                    setup_context=_setup_context)

    class _InfoNceRows(torch.autograd.Function):
        """The op with the autograd formula above as an autograd.Function: what
        :func:`infonce_rows` calls in eager mode with gradients to compute (torch.compile
        traces the op)."""

        @staticmethod
        def forward(ctx: Any, rows: torch.Tensor,
                    joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out: tuple[torch.Tensor, torch.Tensor] = _OPS.infonce_rows.default(rows, joint)
            _setup_context(ctx, (rows, joint), out)
            return out

        @staticmethod
        def backward(ctx: Any, grad_value: torch.Tensor | None,
                     _grad_row_lse: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
            return _backward(ctx, grad_value, _grad_row_lse)
