"""Which evaluation the MI bound takes for a chain and a batch, and why:
:func:`explain_path` (``im.explain_path(mi, x, z)``) names the path and lists every reason a
faster one was not taken, instead of a silent fallback."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from . import _ops, precision
from .activations import kernel_spec
from .all_pairs import split_reasons
from .bounds import NWJ, Bound, resolve_bound
from .chain_plan import plain_linear
from .mutual_info import FusedPlan, _shuffled_half_needs_graph, fused_plan

__all__ = ["PathExplanation", "explain_path", "kernel_reasons"]


class PathExplanation(NamedTuple):
    """``path``: ``"fused"`` (the shared evaluation with the fused ops), ``"joint_graph"`` (the
    shared evaluation, only the joint rows with a graph), ``"two_call"`` (two calls of the
    chain), ``"all_pairs"`` (every pair, a_i + b_j in row chunks) or ``"all_pairs_calls"`` (every
    pair, chunks of calls of the chain); ``notes``: why, one sentence each."""

    path: str
    notes: tuple[str, ...]

    def __str__(self) -> str:
        return "\n".join([f"path: {self.path}", *(f"  - {note}" for note in self.notes)])


def kernel_reasons(*tensors: torch.Tensor | None) -> list[str]:
    """Why the compiled kernels do not run on these tensors (empty when they do): the reasons
    behind :func:`infomax_ext._ops.kernels_apply`."""
    present = [t for t in tensors if t is not None]
    if not _ops.extension_available():
        return [f"the compiled extension is not loaded: {_ops.extension_error()}"]
    reasons = []
    if _ops.current_path() == "reference":
        reasons.append("use_path('reference') is active: every op runs its plain-PyTorch twin")
    if present:
        device = present[0].device.type
        if not _ops.has_kernel("paired_first_layer", device):
            reasons.append(f"no compiled kernels for device {device!r} in this build")
        dtypes = sorted({str(t.dtype) for t in present
                         if t.is_floating_point() and t.dtype not in precision.KERNEL_DTYPES})
        if dtypes:
            reasons.append(f"dtype {', '.join(dtypes)}: the kernels take float32, float64, "
                           "bfloat16 and float16")
    return reasons


def _stack_reason(middle: list[nn.Module]) -> str | None:
    """Why critic_mlp cannot run the hidden layers ``middle`` (None when it can)."""
    i = 0
    while i < len(middle):
        if not plain_linear(middle[i]):
            return (f"the hidden layers hold {middle[i]!r} where critic_mlp takes an nn.Linear "
                    "with nn.Linear's forward")
        if i + 1 < len(middle) and not isinstance(middle[i + 1], nn.Linear):
            if kernel_spec(middle[i + 1]) is None:
                return f"the activation {middle[i + 1]!r} is not one the kernels run"
            i += 1
        i += 1
    return None


def explain_path(mi: nn.Module, x: torch.Tensor, z: torch.Tensor, *, shuffled_grad: bool = False,
                 bound: str | Bound = "nwj", negatives: str = "shuffle") -> PathExplanation:
    """The evaluation :func:`~infomax_ext.mutual_info.shuffled_bound` takes for ``mi`` on x (N,
    ...) and z (N, d) with these settings in the current context (:func:`~infomax_ext.use_path`,
    autocast, gradient mode), with the reasons. ``print(im.explain_path(mi, x, z))`` shows it."""
    bound = resolve_bound(bound)
    if negatives == "all" or bound.needs_all_pairs:
        why = ["bound 'infonce' takes every pair" if bound.needs_all_pairs
               else "negatives='all': every x_i with every z_j, j != i"]
        reasons = split_reasons(mi)
        if reasons:
            return PathExplanation("all_pairs_calls", tuple(
                why + reasons + ["the chain runs on row chunks of repeated pairs, recomputed in "
                                 "the backward pass"]))
        return PathExplanation("all_pairs", tuple(
            why + ["first layer a_i + b_j (two products of N rows); the rest in row chunks "
                   "recomputed in the backward pass"]))
    path = _ops.current_path()
    if path == "two_call":
        return PathExplanation("two_call", ("use_path('two_call') is active",))
    plan = fused_plan(mi)
    if not isinstance(plan, FusedPlan):
        return PathExplanation("two_call", (
            *plan.reasons, "the chain runs twice: T(x, z) and T(x, z_shuffle)"))
    notes = []
    params = [p for p in mi.parameters()]
    notes += [f"the fused ops run their plain-PyTorch twins: {r}"
              for r in kernel_reasons(x, z, *params)]
    if path != "fused" and not _shuffled_half_needs_graph(mi, x, z, shuffled_grad):
        notes.insert(0, "no gradient can flow from the shuffled scores (chain frozen, x and the "
                        "shuffled codes constant): only the joint rows build a graph")
        return PathExplanation("joint_graph", tuple(notes))
    if plan.head is None:
        notes.append("the MLP does not end with Linear(., 1) (optionally followed by an activation "
                     "the kernels run): after the fused first layer its modules run one by one")
    elif plan.stack is None:
        notes.append(f"{_stack_reason(plan.middle)}: after the fused first layer the hidden "
                     "layers run one by one, then the fused last layer (critic_head)")
    else:
        notes.append("fused first layer (paired_linear), then the hidden layers and the last "
                     "layer in one op (critic_mlp)")
        if plan.ends is not None:
            notes.append(
                "data and latent (one Linear each) run inside the chain's autograd node when "
                "data(x) needs gradient" if plan.ends.runs_as_modules() else
                "data and latent run as module calls with their own autograd nodes: a hook or an "
                "instance forward on them, or a global module hook, must see the calls")
    if type(bound) is not NWJ:
        notes.append(f"bound {bound.name!r}: reduced from the fused ops' scores "
                     "(infomax_ext.bounds)")
    return PathExplanation("fused", tuple(notes))
