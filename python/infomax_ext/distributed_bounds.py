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
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from . import distributed
from .bounds import Bound

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["global_log_mean_exp", "bound_over_group", "gathered_codes", "check_bound_for_group"]


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


def check_bound_for_group(bound: Bound) -> None:
    """Bounds whose state cannot be shared across processes are refused before any work."""
    if getattr(bound, "moving_average", None) is not None:
        raise ValueError("bound 'dv' with a moving_average keeps a per-process average of "
                         "mean exp(T_m); it is not supported with a process_group (use dv without "
                         "it, or smile)")


def bound_over_group(bound: Bound, joint: torch.Tensor, negatives: torch.Tensor,
                     group: ProcessGroup | None) -> torch.Tensor:
    """``bound`` on this process's joint scores (M,) and negatives (K,) as a share of the whole
    batch's (see the module docstring)."""
    check_bound_for_group(bound)
    if bound.reduction == "log_mean_exp":
        return bound(joint, negatives, lme=lambda t: global_log_mean_exp(t, group))
    return bound(joint, negatives)


def rows_over_group(bound: Bound, rows: torch.Tensor, joint: torch.Tensor, offset: int,
                    group: ProcessGroup | None) -> torch.Tensor:
    """``bound`` on this process's rows (N, P N) of the whole batch's all-pairs matrix."""
    check_bound_for_group(bound)
    if bound.reduction == "log_mean_exp":
        return bound.from_rows(rows, joint, offset, lme=lambda t: global_log_mean_exp(t, group))
    return bound.from_rows(rows, joint, offset)


def gathered_codes(z: torch.Tensor, group: ProcessGroup | None,
                   with_grad: bool) -> tuple[torch.Tensor, int]:
    """Every process's codes in rank order (P N, d) and this process's first row in them;
    ``with_grad``: the gradient of the gathered codes returns to the processes that own them."""
    rank, world = distributed.rank_and_size(group)
    gathered: torch.Tensor = distributed._GatherRows.apply(  # type: ignore[no-untyped-call]
        z if with_grad else z.detach(), group)
    return gathered, rank * z.shape[0]
