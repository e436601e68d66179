"""Every bound over a batch split across processes (torch.distributed).

Each process holds N rows. The value a process returns is such that its average over the
processes is the whole batch's bound, and the gradients averaged over the processes equal one
process's gradient on the whole batch:

- ``"mean"`` bounds (nwj, js): means of per-pair terms over equal numbers of pairs per process,
  so each process's own value serves;
- ``"log_mean_exp"`` bounds (dv, smile): the log-mean-exp over all processes' negatives, from each
  process's maximum (all-reduce MAX, no gradient) and sum of exponentials (all-reduce SUM, whose
  backward sums the processes' gradients);
- ``"rows"`` (infonce): each process's rows against the gathered codes of all processes.

DV with a moving average (MINE), with shuffled or all-pairs negatives: the average takes in the
whole batch's mean of exp(T_m) (all-reduced) once per evaluation, so every process keeps the
same average and the averaged gradients are the whole batch's (the shuffled path evaluates this
process's pairs with :meth:`~infomax_ext.bounds.Bound.without_state_update` first).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from . import distributed
from .bounds import DV, Bound, _off_diagonal_at

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


def global_log_mean_exp(t: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """``log mean exp`` of the 1-D ``t`` over every process's entries (equal counts per process),
    a 0-dim tensor, the same on every process: ``M + log(sum_p sum exp(t_p - M)) - log(P K)``
    with M the global maximum."""
    world = dist.get_world_size(group)
    with torch.no_grad():
        top = t.max().clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        if not torch.isfinite(top):
            top = torch.zeros_like(top)
    total: torch.Tensor = _SumOverGroup.apply(  # type: ignore[no-untyped-call]
        torch.exp(t - top).sum(), group)
    return top + torch.log(total) - math.log(world * t.numel())


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
    return bound(joint, negatives, **_group_keywords(bound, group))


def rows_over_group(bound: Bound, rows: torch.Tensor, joint: torch.Tensor, offset: int,
                    group: ProcessGroup | None) -> torch.Tensor:
    """``bound`` on this process's rows (N, P N) of the whole batch's all-pairs matrix."""
    check_bound_for_group(bound)
    keywords = _group_keywords(bound, group)
    if "mean_over_group" in keywords:  # DV's moving average: the call takes it
        return bound(joint, _off_diagonal_at(rows, offset), **keywords)
    return bound.from_rows(rows, joint, offset, **keywords)


def gathered_codes(z: torch.Tensor, group: ProcessGroup | None,
                   with_grad: bool) -> tuple[torch.Tensor, int]:
    """Every process's codes in rank order (P N, d) and this process's first row in them;
    ``with_grad``: the gradient of the gathered codes returns to the processes that own them."""
    rank, world = distributed.rank_and_size(group)
    gathered: torch.Tensor = distributed._GatherRows.apply(  # type: ignore[no-untyped-call]
        z if with_grad else z.detach(), group)
    return gathered, rank * z.shape[0]
