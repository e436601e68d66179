"""Every bound over a batch split across processes (torch.distributed).

Each process holds N rows. The value a process returns is such that its average over the
processes is the whole batch's bound, and the gradients averaged over the processes equal one
process's gradient on the whole batch:

- ``"mean"`` bounds (nwj, js): means of per-pair terms over equal numbers of pairs per process,
  so each process's own value serves;
- ``"log_mean_exp"`` bounds (dv, smile): the log-mean-exp over all processes' negatives, from each
  process's maximum and sum of exponentials. Where the compiled ``mi_bound`` applies
  (:func:`~infomax_ext.bound_op.kernel_applies`) it gives each process's (shift, log sum) and one
  all-gather combines them (:class:`_MiBoundOverGroup`); otherwise :func:`global_log_mean_exp`
  in plain PyTorch (all-reduce MAX, no gradient, then an all-reduce SUM whose backward sums the
  processes' gradients);
- ``"rows"`` (infonce): each process's rows against the gathered codes of all processes.

DV with a moving average (MINE), with shuffled or all-pairs negatives: the average takes in the
whole batch's mean of exp(T_m) (all-reduced) once per evaluation, so every process keeps the
same average and the averaged gradients are the whole batch's (the shuffled path evaluates this
process's pairs with :meth:`~infomax_ext.bounds.Bound.without_state_update` first).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist

from . import bound_op, distributed
from ._op_autograd import refuse_double_backward
from .bounds import (DV, Bound, _check_scores, _off_diagonal_at, _with_gradient_of,
                     as_reduction_dtype)

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["global_log_mean_exp", "bound_over_group", "gathered_codes", "check_bound_for_group",
           "mean_over_group"]


class _SumOverGroup(torch.autograd.Function):
    """All-reduce SUM; the backward all-reduces the gradient (every process's value depends on
    every process's summand)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def _check_equal_counts(what: str, counts: dict[str, torch.Tensor]) -> None:
    """Every process gave the same count (``counts[name]``: each process's, gathered)."""
    distributed.check_agreement(what, {name: [int(v) for v in values.tolist()]
                                       for name, values in counts.items()})


def global_log_mean_exp(t: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """``log mean exp`` of the 1-D ``t`` over every process's entries (equal counts per process),
    a 0-dim tensor, the same on every process: ``M + log(sum_p sum exp(t_p - M)) - log(P K)``
    with M the global maximum."""
    world = dist.get_world_size(group)
    with torch.no_grad():
        # each process's (max, count): the counts checked equal, the largest max taken
        mine = torch.stack([t.max(), t.new_tensor(float(t.numel()))])
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine, group=group)
        every = torch.stack(gathered)
        _check_equal_counts("the global log-mean-exp", {"number of negatives": every[:, 1]})
        top = every[:, 0].max()
        if not torch.isfinite(top):
            top = torch.zeros_like(top)
    total: torch.Tensor = _SumOverGroup.apply(  # type: ignore[no-untyped-call]
        torch.exp(t - top).sum(), group)
    return top + torch.log(total) - math.log(world * t.numel())


class _MiBoundOverGroup(torch.autograd.Function):
    """``mi_bound`` of a ``"log_mean_exp"`` bound (dv, smile) on this process's scores, its
    log-mean-exp made the whole batch's: ``(value, objective)``. Each process's
    ``log_sum_exp`` = (shift_p, log_sum_p) is all-gathered and combined into the batch's
    (top, log_sum) = (max_p shift_p, log sum_p exp(shift_p - top + log_sum_p)); the value is the
    local one with its log-mean-exp replaced (``+ (shift_p - top) + (log_sum_p - log_sum) +
    log P``, equal counts per process). The objective is the value for a bound that trains on it
    (dv); for one that trains on the JS objective (smile) it is this process's own (a mean of
    per-pair terms). Backward: the value's gradient reaches every process's negatives, so its
    incoming gradients are all-reduced and ``mi_bound_backward`` takes the batch's (top,
    log_sum): ``-G exp(n(t) - lse) n'(t)``; the joint scores get this process's own ``g / M``."""

    @staticmethod
    def forward(ctx: Any, joint: torch.Tensor, negatives: torch.Tensor, name: str, param: float,
                js: bool, group: ProcessGroup | None) -> tuple[torch.Tensor, torch.Tensor]:
        value, objective, parts = torch.ops.infomax_ext.mi_bound.default(joint, negatives, name,
                                                                         param)
        world = dist.get_world_size(group)
        mine = torch.cat([parts, parts.new_tensor([joint.shape[0], negatives.shape[0]])])
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine, group=group)
        # (P, 4): each process's (shift, log_sum, number of joint scores, of negatives)
        every = torch.stack(gathered)
        _check_equal_counts(f"{name} over processes", {"number of joint scores": every[:, 2],
                                                      "number of negatives": every[:, 3]})
        top = every[:, 0].max()
        log_sum = torch.log(torch.exp((every[:, 0] - top) + every[:, 1]).sum())
        # An infinite or NaN batch log_sum (a score of +inf or NaN somewhere) makes every
        # process's value -inf or NaN, as the formula's.
        value = torch.where(torch.isfinite(log_sum),
                            value + ((parts[0] - top) + (parts[1] - log_sum)) + math.log(world),
                            value - log_sum)
        ctx.save_for_backward(joint, negatives, torch.stack([top, log_sum]))
        ctx.name, ctx.param, ctx.js, ctx.group = name, param, js, group
        ctx.set_materialize_grads(False)
        return value, (objective if js else value.clone())

    @staticmethod
    def backward(ctx: Any, grad_value: torch.Tensor | None, grad_objective: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, ...]:
        joint, negatives, batch_parts = ctx.saved_tensors
        backward_op = torch.ops.infomax_ext.mi_bound_backward.default
        if not ctx.js:  # the objective is the value
            if grad_value is None or grad_objective is None:
                grad_value = grad_objective if grad_value is None else grad_value
            else:
                grad_value = grad_value + grad_objective
            grad_objective = None
        refuse_double_backward("mi_bound", grad_value, grad_objective, joint, negatives)
        grad_joint = grad_negatives = None
        if grad_value is not None:
            total = grad_value.clone()
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
            _, grad_negatives = backward_op(total, None, joint, negatives, ctx.name, ctx.param,
                                            batch_parts)
            grad_joint = (grad_value * (1.0 / joint.shape[0])).expand_as(joint).clone()
        if grad_objective is not None:  # js: this process's own objective
            g_joint, g_negatives = backward_op(None, grad_objective, joint, negatives, ctx.name,
                                               ctx.param, None)
            grad_joint = g_joint if grad_joint is None else grad_joint + g_joint
            grad_negatives = g_negatives if grad_negatives is None else grad_negatives + g_negatives
        return grad_joint, grad_negatives, None, None, None, None


def _compiled_over_group(bound: Bound, joint: torch.Tensor, negatives: torch.Tensor,
                         group: ProcessGroup | None) -> torch.Tensor | None:
    """``bound`` (a ``"log_mean_exp"`` bound) over ``group`` by :class:`_MiBoundOverGroup`, as
    :meth:`Bound.__call__` returns it (the value with the training gradient); None where the
    compiled op does not apply (a setting it lacks, such as DV's moving average; the reference
    path; another dtype; while torch.compile traces)."""
    param = bound.op_param()
    if param is None or torch.compiler.is_compiling():
        return None
    _check_scores(bound.name, joint, negatives)
    joint, negatives = as_reduction_dtype(joint), as_reduction_dtype(negatives)
    if not bound_op.kernel_applies(joint, negatives):
        return None
    value, objective = _MiBoundOverGroup.apply(  # type: ignore[no-untyped-call]
        joint, negatives, bound.name, param, bound.trains_on_js, group)
    if bound.trains_on_js and torch.is_grad_enabled():
        return _with_gradient_of(value, objective)
    return cast(torch.Tensor, value)


def mean_over_group(t: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """The mean of the 0-dim ``t`` over the processes (all-reduce SUM over the world size; no
    gradient: DV's moving average takes it in)."""
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out / dist.get_world_size(group)


def check_bound_for_group(bound: Bound) -> None:
    """Before any work: ``bound`` is a :class:`Bound` (a TypeError otherwise). Every bound runs
    over processes with either negatives; DV with a moving average keeps the whole batch's
    average on every process (see the module docstring)."""
    if not isinstance(bound, Bound):
        raise TypeError(f"bound must be an infomax_ext Bound, got {type(bound).__name__}")


def _group_keywords(bound: Bound, group: ProcessGroup | None) -> dict[str, Any]:
    """The keywords of ``bound``'s call that reduce over ``group``."""
    keywords: dict[str, Any] = {}
    if bound.reduction == "log_mean_exp":
        keywords["lme"] = lambda t: global_log_mean_exp(t, group)
    if isinstance(bound, DV) and bound.moving_average is not None:
        keywords["mean_over_group"] = lambda t: mean_over_group(t, group)
    return keywords


def bound_over_group(bound: Bound, joint: torch.Tensor, negatives: torch.Tensor,
                     group: ProcessGroup | None) -> torch.Tensor:
    """``bound`` on this process's joint scores (M,) and negatives (K,) as a share of the whole
    batch's (see the module docstring)."""
    check_bound_for_group(bound)
    if bound.reduction == "log_mean_exp":
        compiled = _compiled_over_group(bound, joint, negatives, group)
        if compiled is not None:
            return compiled
    return bound(joint, negatives, **_group_keywords(bound, group))


def rows_over_group(bound: Bound, rows: torch.Tensor, joint: torch.Tensor, offset: int,
                    group: ProcessGroup | None) -> torch.Tensor:
    """``bound`` on this process's rows (N, P N) of the whole batch's all-pairs matrix."""
    check_bound_for_group(bound)
    if bound.reduction == "log_mean_exp":  # dv, smile: the negatives' log-mean-exp
        return bound_over_group(bound, joint, _off_diagonal_at(rows, offset), group)
    return bound.from_rows(rows, joint, offset, **_group_keywords(bound, group))


def gathered_codes(z: torch.Tensor, group: ProcessGroup | None,
                   with_grad: bool) -> tuple[torch.Tensor, int]:
    """Every process's codes in rank order (P N, d) and this process's first row in them;
    ``with_grad``: the gradient of the gathered codes returns to the processes that own them."""
    rank, world = distributed.rank_and_size(group)
    gathered: torch.Tensor = distributed._GatherRows.apply(  # type: ignore[no-untyped-call]
        z if with_grad else z.detach(), group)
    return gathered, rank * z.shape[0]
