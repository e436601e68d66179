"""The critic on every pair (x_i, z_j) of a batch without the N x N x (Dx + Dz) tile.

For a chain ``mlp(cat([data(x), latent(z)]))`` whose MLP starts with a Linear layer, the first
layer on pair (i, j) is ``a_i + b_j`` with ``a = data(x) @ Wx.T + bias`` (N, H) and
``b = latent(z) @ Wz.T`` (C, H): two products of N and C rows instead of one of N C rows. The
rest of the MLP runs on row chunks ``a[i0:i1, None] + b[None]`` whose activations are not kept:
each chunk is recomputed in the backward pass (activation checkpointing), so peak memory grows
with one chunk, never with the N C pairs; only the (N, C) score matrix is kept. A chain that does
not split (see :func:`split_reasons`) runs the same chunks through ``mi(x, z)`` on repeated rows.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .chain_plan import split_reasons

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

    from .bounds import Bound

__all__ = ["all_pairs_scores", "all_pairs_scores_tile", "all_pairs_bound", "split_reasons",
           "chunk_rows_for"]

# Pairs (rows of the MLP) per chunk times the widest layer: about 8 MiB of float32 per layer.
CHUNK_ELEMENTS = 1 << 21


def chunk_rows_for(n_codes: int, width: int, budget: int = CHUNK_ELEMENTS) -> int:
    """Rows of x per chunk: ``budget`` elements of the widest layer (``width`` units) over the
    ``n_codes`` pairs of each row, at least 1."""
    return max(1, budget // max(1, n_codes * width))


def _widest(mlp: nn.Sequential) -> int:
    return max([m.out_features for m in mlp if isinstance(m, nn.Linear)] or [1])


def _rest(mlp: nn.Sequential, pre: torch.Tensor) -> torch.Tensor:
    """The MLP after its first Linear layer's product: (R, H) -> (R,)."""
    h = pre
    for module in list(mlp)[1:]:
        h = module(h)
    if h.dim() != 2 or h.shape[1] != 1:
        raise ValueError(f"the MI chain must end with one output unit, got shape {tuple(h.shape)}")
    return h.reshape(-1)


def _run(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """``fn(*args)``; when a graph is built, its activations are recomputed in the backward."""
    if torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return cast(torch.Tensor, checkpoint(fn, *args, use_reentrant=False))
    return fn(*args)


def all_pairs_scores(mi: nn.Module, x: torch.Tensor, z: torch.Tensor,
                     codes: torch.Tensor | None = None, offset: int = 0, *,
                     negatives_grad: bool = True, chunk_rows: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(joint, scores)`` for x (N, ...) and its codes z (N, d): ``joint[i] = T(x_i, z_i)``
    (N,) and ``scores[i, j] = T(x_i, codes_j)`` (N, C), ``codes`` (C, d) defaulting to z.

    Entries (i, offset + i) of ``scores`` are the joint scores (``codes[offset:offset + N]`` are
    z: the whole batch's codes, this process's at ``offset``). ``negatives_grad=False`` treats
    the codes as constants in the matrix (the gradient reaches z only through the joint
    scores). ``chunk_rows``: rows of x per chunk (default: about 2^21 elements of the widest
    layer per chunk)."""
    n = x.shape[0]
    if z.shape[0] != n:
        raise ValueError(f"all pairs: x has {n} samples but z has {z.shape[0]} codes")
    if codes is None:
        codes = z
    c = codes.shape[0]
    if not 0 <= offset <= c - n:
        raise ValueError(f"all pairs: offset {offset} does not place {n} codes within {c}")
    if split_reasons(mi):
        return _unsplit_scores(mi, x, z, codes, offset, negatives_grad, chunk_rows)
    mlp = cast(nn.Sequential, mi.mlp)  # split_reasons found a Sequential starting with a Linear
    first = cast(nn.Linear, mlp[0])
    hx = cast(nn.Module, mi.data)(x).reshape(n, -1)
    hz = cast(nn.Module, mi.latent)(z)
    dx = hx.shape[1]
    if dx + hz.shape[1] != first.in_features:
        raise ValueError(f"the MI chain's first layer takes {first.in_features} features but "
                         f"data(x) gives {dx} and latent(z) gives {hz.shape[1]}")
    w_latent = first.weight[:, dx:]
    a = torch.nn.functional.linear(hx, first.weight[:, :dx], first.bias)
    joint = _rest(mlp, a + hz @ w_latent.t())
    source = codes if negatives_grad else codes.detach()
    b_pairs = cast(nn.Module, mi.latent)(source) @ w_latent.t()
    rows = chunk_rows or chunk_rows_for(c, _widest(mlp))

    def chunk(a_rows: torch.Tensor, b_all: torch.Tensor) -> torch.Tensor:
        pre = (a_rows[:, None, :] + b_all[None, :, :]).reshape(-1, b_all.shape[1])
        return _rest(mlp, pre).view(a_rows.shape[0], -1)

    scores = torch.cat([_run(chunk, a[i:i + rows], b_pairs) for i in range(0, n, rows)])
    return joint, _with_joint_diagonal(scores, joint, offset)


def _with_joint_diagonal(scores: torch.Tensor, joint: torch.Tensor, offset: int) -> torch.Tensor:
    """``scores`` with entries (i, offset + i) taken from ``joint`` (the same numbers up to
    rounding; their gradient is the joint scores')."""
    n, c = scores.shape
    index = torch.arange(n, device=scores.device)
    return scores.index_put((index, index + offset), joint)


def _unsplit_scores(mi: nn.Module, x: torch.Tensor, z: torch.Tensor, codes: torch.Tensor,
                    offset: int, negatives_grad: bool, chunk_rows: int | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs for a chain that does not split: ``mi`` on chunks of repeated rows."""
    n, c = x.shape[0], codes.shape[0]
    joint: torch.Tensor = mi(x, z)
    z_pairs = codes if negatives_grad else codes.detach()
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // max(1, c * max(z.shape[1], x[0].numel())))

    def chunk(x_rows: torch.Tensor, z_all: torch.Tensor) -> torch.Tensor:
        k = x_rows.shape[0]
        return cast(torch.Tensor, mi(x_rows.repeat_interleave(c, 0), z_all.repeat(k, 1)).view(k, c))

    scores = torch.cat([_run(chunk, x[i:i + rows], z_pairs) for i in range(0, n, rows)])
    return joint, _with_joint_diagonal(scores, joint, offset)


def all_pairs_bound(mi: nn.Module, x: torch.Tensor, z: torch.Tensor, bound: Bound, *,
                    shuffled_grad: bool = False, process_group: ProcessGroup | None = None,
                    chunk_rows: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``bound`` (a :class:`~infomax_ext.bounds.Bound`) on every pair: x (N, ...), z (N, d).
    Returns ``(value, joint (N,), negatives (N (C - 1),))`` with C = N, or the whole batch's
    P N codes with a ``process_group`` (then the value is this process's share: see
    :mod:`infomax_ext.distributed_bounds`). ``shuffled_grad`` lets the gradient reach z through
    the negatives too."""
    from .bounds import _off_diagonal_at

    if process_group is None:
        joint, scores = all_pairs_scores(mi, x, z, negatives_grad=shuffled_grad,
                                         chunk_rows=chunk_rows)
        value = bound.from_rows(scores, joint)
        return value, joint, _off_diagonal_at(scores, 0)
    from . import distributed_bounds

    distributed_bounds.check_bound_for_group(bound)
    codes, offset = distributed_bounds.gathered_codes(z, process_group, shuffled_grad)
    joint, scores = all_pairs_scores(mi, x, z, codes, offset, negatives_grad=shuffled_grad,
                                     chunk_rows=chunk_rows)
    value = distributed_bounds.rows_over_group(bound, scores, joint, offset, process_group)
    return value, joint, _off_diagonal_at(scores, offset)


def all_pairs_scores_tile(mi: nn.Module, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The brute-force all-pairs evaluation: ``mi`` on the N C concatenated pairs at once
    (the N C x (Dx + Dz) tile), (N, C). The oracle of the tests and the benchmark's baseline."""
    n, c = x.shape[0], z.shape[0]
    return cast(torch.Tensor, mi(x.repeat_interleave(c, 0), z.repeat(n, 1)).view(n, c))
