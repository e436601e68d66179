"""The checks of :func:`~infomax_ext.train_step`: the optimizers against the model,
``miloss_kwargs`` (all paths, and what ``reuse_forward`` can honour), the dtype of ``x``, a loss
made non-finite by ``x`` (before its step), and whether ``reuse_forward`` may recover the
critic's gradient from the VAE loss's. Each raises before any parameter changes, naming what is
wrong."""
from __future__ import annotations

import difflib
import inspect
import math
import operator
import weakref
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .bounds import resolve_bound
from .infomax import InfoMaxVAE, miloss
from .losses import mi_loss_settings
from .validation import is_integer_scalar

__all__ = ["check_optimizers", "check_miloss_kwargs", "check_reuse_kwargs", "check_x_dtype",
           "finite_loss", "reuse_gradient_is_exact", "MILOSS_KEYWORDS"]

# The keywords miloss takes (its signature is the one list of them).
MILOSS_KEYWORDS: tuple[str, ...] = tuple(
    name for name, p in inspect.signature(miloss).parameters.items() if p.kind is p.KEYWORD_ONLY)

# Per optimizer, the layout that passed check_optimizers: the ids of its part's parameters, their
# requires_grad flags and the ids of the parameters it holds. The held parameters stay alive
# while the optimizer holds them, so no other parameter can take one of their ids: a held
# parameter that left the model (its submodule replaced) changes the part's ids, and a step whose
# layout matches needs no new check.
_CHECKED_LAYOUTS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def check_optimizers(model: InfoMaxVAE, optimizers: tuple[Any, Any], names: tuple[str, str],
                     parts: tuple[list[nn.Parameter], list[nn.Parameter]]) -> None:
    """A ValueError naming the optimizer when the ``vae`` optimizer holds a parameter that is not
    ``model.vae``'s or the ``mi`` optimizer one that is not ``model.mi``'s (the optimizers
    swapped, built for another model, or over a submodule replaced since): its step would change
    what this step does not train, and the new submodule would never move. ``parts`` are all
    parameters of ``model.vae`` and of ``model.mi``. Checked again whenever the layout changes
    (cached by the parameters' ids: a tuple per step). Optimizers that are not torch optimizers
    (no ``param_groups`` list) are not checked."""
    labels = ("model.vae", "model.mi")
    for own, own_params, opt, name in zip(labels, parts, optimizers, names):
        groups = getattr(opt, "param_groups", None)
        if not isinstance(groups, list):
            continue
        held = [p for g in groups for p in g.get("params", ())]
        layout = (tuple(map(id, own_params)), tuple(p.requires_grad for p in own_params),
                  tuple(map(id, held)))
        try:
            if _CHECKED_LAYOUTS.get(opt) == layout:
                continue
        except TypeError:  # not weak-referenceable: checked every step
            pass
        owners = {id(p): part for part, ps in zip(labels, parts) for p in ps}
        foreign = [p for p in held if owners.get(id(p)) != own]
        if foreign:
            others = sorted({owners.get(id(p), "no part of this model") for p in foreign})
            swapped = " (are the two optimizers swapped?)" if "model.mi" in others or \
                "model.vae" in others else ""
            raise ValueError(
                f"train_step: {name} holds {len(foreign)} of its {len(held)} parameters from "
                f"{' and '.join(others)}, not {own}{swapped}; build it over "
                f"{own}.parameters()")
        if not any(p.requires_grad for p in held):
            raise ValueError(f"train_step: {name} holds no trainable parameter of {own}")
        try:
            _CHECKED_LAYOUTS[opt] = layout
        except TypeError:
            pass


def _key(key: str) -> str:
    return f"miloss_kwargs[{key!r}]"


def check_miloss_kwargs(kwargs: Mapping[str, Any]) -> None:
    """``miloss_kwargs`` of the default MI loss, checked before any step: every key a keyword of
    :func:`~infomax_ext.miloss` (:data:`MILOSS_KEYWORDS`) and every value one it takes
    (:func:`~infomax_ext.losses.mi_loss_settings`, the check of the MI loss modules); a
    ValueError or TypeError naming the key."""
    for key in kwargs:
        if key not in MILOSS_KEYWORDS:
            close = difflib.get_close_matches(str(key), MILOSS_KEYWORDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"train_step: {_key(key)} is not a keyword of miloss{hint}; it "
                             f"takes {', '.join(MILOSS_KEYWORDS)}")
    mi_loss_settings(**{k: v for k, v in kwargs.items() if k != "data_half_cache"},
                     where="train_step", name=_key)


_VAE_DEFAULTS = {"bound": "nwj", "negatives": "shuffle", "process_group": None}


def check_reuse_kwargs(mi_kwargs: Mapping[str, Any], vae_kwargs: Mapping[str, Any]) -> None:
    """``reuse_forward=True``: one forward pass of the VAE loss feeds both losses, so the MI loss
    uses ``regularization`` and ``reg_strength`` of ``miloss_kwargs`` and can honour ``seed``,
    ``bound``, ``negatives`` and ``process_group`` only where they agree with the VAE loss's (a
    ``seed`` the VAE loss does not set is the shared draw's); ``data_half_cache`` is not used.
    A ValueError naming the key for anything else (keys already checked by
    :func:`check_miloss_kwargs`)."""
    for key, value in mi_kwargs.items():
        if key in ("regularization", "reg_strength"):
            continue
        if key == "data_half_cache":
            raise ValueError(f"train_step: reuse_forward=True does not use {_key(key)} (the MI "
                             "loss reuses the VAE loss's forward pass); remove it")
        theirs = vae_kwargs.get(key, _VAE_DEFAULTS.get(key))
        if _agree(key, value, theirs):
            continue
        where = "train_step's bound= or infomaxloss_kwargs" if key == "bound" else \
            "train_step's negatives= or infomaxloss_kwargs" if key == "negatives" else \
            "infomaxloss_kwargs"
        raise ValueError(
            f"train_step: reuse_forward=True feeds both losses from one forward pass, so "
            f"{_key(key)}={value!r} cannot differ from the VAE loss's {key} ({theirs!r}); give "
            f"it once, in {where}")


def _agree(key: str, mine: Any, theirs: Any) -> bool:
    """Whether the MI loss's ``key`` agrees with the VAE loss's (or the VAE loss will refuse its
    own value itself, before any step)."""
    if key == "seed":  # a seed the VAE loss does not set is the shared draw's
        return mine is None or theirs is None or not is_integer_scalar(theirs) or \
            operator.index(mine) == operator.index(theirs)
    if key == "bound":
        try:
            return bool(resolve_bound(mine) == resolve_bound(theirs))
        except ValueError:
            return True
    return bool(mine == theirs) if key == "negatives" else mine is theirs


def check_x_dtype(x: object, dtypes: set[torch.dtype]) -> None:
    """A TypeError naming both dtypes when ``x`` is a floating tensor whose dtype is not the
    model's (its parameters share one dtype; outside ``torch.autocast``, which converts the
    inputs itself). An integer or bool ``x`` (token ids for an embedding, an input the model
    casts itself) is left to the model."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or len(dtypes) != 1 or \
            torch.is_autocast_enabled(x.device.type):
        return
    (dtype,) = dtypes
    if x.dtype != dtype:
        raise TypeError(f"train_step: x has dtype {x.dtype} but the model's parameters are "
                        f"{dtype}; convert the batch (x.to({dtype})) or the model "
                        f"(model.to({x.dtype}))")


def finite_loss(loss: torch.Tensor, what: str, x: torch.Tensor,
                changed: str = "no parameter changed") -> float | None:
    """``float(loss)`` before its step on the CPU (no device sync there); None elsewhere (a
    read before the step would stall a GPU on a device sync). When the
    value is not finite because ``x`` is not (x is looked at only then), a ValueError naming the
    loss (``what``), the count of non-finite values in x and what the step has ``changed`` so
    far. A non-finite loss of a finite x (weights or settings that overflow) is returned: the
    step goes on and the caller sees it (the Trainer names the network that diverged)."""
    if loss.device.type != "cpu":
        return None
    value = float(loss.detach())
    if math.isfinite(value) or not (x.is_floating_point() or x.is_complex()):
        return value
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"train_step: {what} is {value}: x holds {bad} non-finite values "
                         f"(NaN or inf) of its {x.numel()}, so the step is refused ({changed})")
    return value


def reuse_gradient_is_exact(alpha: float, dtypes: Iterable[torch.dtype]) -> bool:
    """Whether ``reuse_forward`` may take the critic's gradient as ``grad(vae_loss) / alpha``.
    The backward pass through the critic then carries ``alpha`` times each gradient: a product
    under ``finfo.tiny`` loses bits (subnormal) or becomes 0, one over ``finfo.max`` becomes inf.
    With ``sqrt(tiny) <= alpha <= 1 / sqrt(tiny)`` in every dtype the backward runs in, each
    gradient entry of magnitude in ``[sqrt(tiny), max sqrt(tiny)]`` keeps its precision (the
    division differs from the separate gradient by a rounding or two) and a smaller one is off
    by at most ``sqrt(tiny) eps`` (about 1e-26 in float32). Otherwise (alpha 0 included) the
    critic's gradient is computed separately."""
    for dtype in dtypes:
        limit = math.sqrt(torch.finfo(dtype).tiny)
        if not limit <= alpha <= 1.0 / limit:
            return False
    return alpha > 0.0
