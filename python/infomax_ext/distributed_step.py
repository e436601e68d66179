"""The agreement of a data-parallel :func:`~infomax_ext.train_step`: same settings, same weights.

Before a step the processes exchange a few integers (:func:`agree_on_step`, one fixed-length
all_gather of :mod:`.distributed`): the settings that decide which collectives the step runs
and what they send, the parameters' layout and dtypes, and whether the weights need comparing.
The weights are compared by a digest of each parameter's bytes on the first step of a model and
whenever something other than train_step changed them since (their version counters moved).
"""
from __future__ import annotations

import hashlib
import json
import numbers
import weakref
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

from .distributed import (_EXCHANGES, _all_gather_rows, _dtype_code, _dtype_name, _dtype_set,
                          _dtype_set_names, _exchange, _hex, _layout, broadcast_module,
                          DistributedMismatchError, rank_and_size)

__all__ = ["agree_on_step", "loss_settings", "optimizer_settings", "plain_settings", "stepped"]

# model -> {id(group): ((id(p), p._version) for every parameter)} after the last step on which
# every rank held the same weights: while those versions stand, nothing changed the weights
# outside train_step and they need no new check.
_AGREED_WEIGHTS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[int, Any]]" = (
    weakref.WeakKeyDictionary())


def _json_digest(value: object) -> int:
    """A 62-bit digest of ``value``'s JSON form (the same on every rank and run)."""
    text = json.dumps(value, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 2


def _versions(model: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    return tuple((id(p), p._version) for p in model.parameters())


def plain_settings(value: object) -> object:
    """``value`` as plain JSON values, the same on every rank for the same setting: strings,
    bools and None as they are, every other real number (numpy's and one-element tensors
    included) as a float (``alpha=10`` and ``alpha=10.0`` are one setting), lists and tuples
    entry by entry, dicts by sorted key, anything else by its type's name (a function, a
    process group: never an address, which differs between processes)."""
    if value is None or isinstance(value, (bool, str, np.bool_)):
        return value if not isinstance(value, np.bool_) else bool(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item()) if not value.dtype == torch.bool else bool(value.item())
    if isinstance(value, (list, tuple)):
        return [plain_settings(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_settings(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return type(value).__qualname__


def loss_settings(kwargs: dict[str, Any]) -> list[object]:
    """What a loss's keyword arguments decide of a step, as plain values: its MI bound (with
    the bound's own settings), how it pairs negatives, and every other setting (weights such as
    ``alpha``, ``beta`` and ``reg_strength``, ``n_samples``, ...); not the process group, the
    shuffle seed (drawn per process, then agreed) or a data-half cache, which may differ."""
    from .bounds import resolve_bound

    rest = {k: v for k, v in kwargs.items()
            if k not in ("bound", "negatives", "process_group", "seed", "data_half_cache")}
    return [resolve_bound(kwargs.get("bound", "nwj")).config(), kwargs.get("negatives", "shuffle"),
            plain_settings(rest)]


def optimizer_settings(optimizers: Sequence[torch.optim.Optimizer]) -> list[object]:
    """What each optimizer's step does with a gradient, as plain values: its class and each
    parameter group's settings (lr, momentum, betas, weight decay, ...; not the parameters)."""
    return [[type(o).__qualname__, [plain_settings({k: v for k, v in g.items() if k != "params"})
                                    for g in o.param_groups]] for o in optimizers]


def agree_on_step(group: ProcessGroup | None, model: torch.nn.Module, x: torch.Tensor, *,
                  reuse_forward: bool, negatives_scope: str, shuffled_grad: bool, n_samples: object,
                  default_losses: tuple[bool, ...], x_out_given: bool,
                  objective: object = None,
                  optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
    """The agreement of a data-parallel :func:`~infomax_ext.train_step`: every rank runs the
    step with the same settings (those that decide which collectives run and what they send:
    ``reuse_forward``, ``negatives_scope``, ``shuffled_grad``, ``n_samples``, whether the loss
    functions are the defaults, ``x_out``, the dtype of x, the parameters' names, shapes, dtypes
    and requires_grad flags; and those that decide what the step does to the weights:
    ``objective`` (the losses' settings: their MI bounds, how they pair negatives, their
    weights; any value :func:`plain_settings` takes, compared by digest) and the
    ``optimizers``' classes and settings (:func:`optimizer_settings`, by digest)) and the same
    weights; one all_gather of a few integers, else the same :class:`DistributedMismatchError`
    on every rank. Equal weights stay equal only when every rank takes the same step: a rank
    with another learning rate or loss weight would drift apart unseen.

    The weights are compared (a digest of every parameter's bytes, one more small exchange) on
    the first step of ``model`` in ``group`` and whenever something other than train_step changed
    them on some rank since its last step (the parameters' version counters moved). On the
    first step, weights that differ are set to rank 0's (broadcast), as DistributedDataParallel
    does when it wraps a model: starting from different initialisations is normal. Later,
    weights that differ are refused, naming the first parameter that differs: one process
    changed them alone (``load_state_dict``, an edit, a step outside train_step) and its
    optimizer state may differ too, so no choice of weights would be right. A change through
    ``p.data`` escapes the version counters (as it escapes autograd) and is not seen."""
    agreed = _AGREED_WEIGHTS.get(model, {}).get(id(group))
    flags = _exchange(group, x.device, "train_step's settings", {
        "reuse_forward": int(bool(reuse_forward)),
        "negatives_scope": int(negatives_scope == "local"),
        "shuffled_grad": int(bool(shuffled_grad)),
        "n_samples": n_samples if isinstance(n_samples, int) else -1,
        "loss functions": sum(int(bool(d)) << k for k, d in enumerate(default_losses)),
        "x_out given": int(bool(x_out_given)),
        "the losses' settings: MI bounds, negatives, weights (digest)": _json_digest(
            plain_settings(objective)),
        "the optimizers' classes and settings (digest)": _json_digest(
            optimizer_settings(optimizers)),
        "dtype of x": _dtype_code(x.dtype),
        "number of parameters": sum(1 for _ in model.parameters()),
        "dtypes of the parameters": _dtype_set(p.dtype for p in model.parameters()),
        "parameters (names, shapes, dtypes, requires_grad)": _layout(
            list(model.named_parameters())),
    }, [int(agreed is None), int(agreed != _versions(model))], {
        "reuse_forward": lambda v: str(bool(v)),
        "negatives_scope": lambda v: "local" if v else "global",
        "shuffled_grad": lambda v: str(bool(v)),
        "loss functions": lambda v: ", ".join(
            f"{'the default' if v >> k & 1 else 'a custom'} {name}"
            for k, name in enumerate(("infomaxloss", "miloss"))),
        "x_out given": lambda v: "x_out" if v else "none",
        "the losses' settings: MI bounds, negatives, weights (digest)": _hex,
        "the optimizers' classes and settings (digest)": _hex,
        "dtype of x": _dtype_name,
        "dtypes of the parameters": _dtype_set_names,
        "parameters (names, shapes, dtypes, requires_grad)": _hex,
    })
    if any(stale for _, stale in flags):
        _agree_on_weights(group, model, first=all(first for first, _ in flags))
    _AGREED_WEIGHTS.setdefault(model, {})[id(group)] = _versions(model)


def stepped(group: ProcessGroup | None, model: torch.nn.Module) -> None:
    """Record that a train_step of ``model`` in ``group`` ended: its weights are equal on every
    rank (same start, same averaged gradients)."""
    _AGREED_WEIGHTS.setdefault(model, {})[id(group)] = _versions(model)


def _tensor_digest(t: torch.Tensor) -> int:
    """A 64-bit digest (signed) of the bytes of ``t``: equal exactly when the values are
    bit-identical (up to the digest's collisions, 2**-64)."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    data = t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


@torch.no_grad()
def _agree_on_weights(group: ProcessGroup | None, model: torch.nn.Module, first: bool) -> None:
    """Compare every parameter of ``model`` over the ranks (an all_gather of one digest per
    parameter; the ranks agreed on the parameters already); on a difference set them to rank
    0's when ``first``, else raise naming the first parameter that differs."""
    _, world = rank_and_size(group)
    named = list(model.named_parameters())
    if not named:
        return
    device = named[0][1].device
    mine = torch.tensor([_EXCHANGES.index("train_step's weight check") + 1]
                        + [_tensor_digest(p) for _, p in named], dtype=torch.int64, device=device)
    everyone = mine.new_empty(world * mine.numel())
    _all_gather_rows(everyone, mine, group=group)
    rows = everyone.view(world, -1).tolist()
    differ = [k for k in range(len(named)) if len({row[k + 1] for row in rows}) > 1]
    if not differ:
        return
    if first:
        broadcast_module(model, group)
        return
    name = named[differ[0]][0]
    ranks = [r for r in range(1, world) if rows[r][differ[0] + 1] != rows[0][differ[0] + 1]]
    raise DistributedMismatchError(
        f"train_step: the weights differ between the processes at parameter {name!r} "
        f"({len(differ)} of {len(named)} parameters differ; rank {', '.join(map(str, ranks))} "
        f"{'differs' if len(ranks) == 1 else 'differ'} from rank 0) after earlier steps on equal "
        "weights: something other than train_step changed them on some processes only "
        "(load_state_dict, an edit, another optimizer); give every process the same weights")
