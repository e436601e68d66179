"""The training step of the InfoMax VAE: :func:`train_step` updates the VAE on its loss and the
MI chain on its own (alternating, or from one shared forward pass with ``reuse_forward``), after
checking the optimizers and, with a process group, that every process runs the same step."""
from __future__ import annotations

import contextlib
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Mapping, cast,
                    overload)

import torch
from torch import nn

from . import distributed, distributed_step
from .bounds import BOUNDS, Bound, resolve_bound
from .infomax import InfoMaxVAE, infomax_terms, infomaxloss, miloss
from .mutual_info import NEGATIVES, DataHalfCache
from .validation import check_weights

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["train_step"]


def _optimizers(opt: Any) -> tuple[Any, Any, tuple[str, str]]:
    """``(vae optimizer, mi optimizer, (their names as the caller wrote them))``."""
    if isinstance(opt, dict) or hasattr(opt, "keys"):
        try:
            return opt["vae"], opt["mi"], ("opt['vae']", "opt['mi']")
        except KeyError:
            pass
    elif hasattr(opt, "vae") and hasattr(opt, "mi"):
        return opt.vae, opt.mi, ("opt.vae", "opt.mi")
    raise TypeError(
        "opt must hold a 'vae' and an 'mi' optimizer: a mapping {'vae': ..., 'mi': ...} or an "
        f"object with attributes vae and mi, got {type(opt).__name__}"
    )


# Per optimizer, the layout that passed _check_optimizers: (model parts, the param lists and
# their lengths). A step whose layout matches skips the check.
_CHECKED_LAYOUTS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _check_optimizers(model: InfoMaxVAE, optimizers: tuple[Any, Any], names: tuple[str, str],
                      param_counts: Any) -> None:
    """A ValueError naming the optimizer when the ``vae`` optimizer holds a parameter that is not
    ``model.vae``'s or the ``mi`` optimizer one that is not ``model.mi``'s (the optimizers
    swapped, or built for another model): its step would change what this step does not train.
    Checked once per layout of the optimizer's parameter groups (cached). Optimizers that are not
    torch optimizers (no ``param_groups`` list) are not checked."""
    parts = {"model.vae": model.vae, "model.mi": model.mi}
    for (own, module), opt, name in zip(parts.items(), optimizers, names):
        groups = getattr(opt, "param_groups", None)
        if not isinstance(groups, list):
            continue
        layout = (id(model.vae), id(model.mi), param_counts,
                  tuple((id(g.get("params")), len(g.get("params", ()))) for g in groups))
        try:
            if _CHECKED_LAYOUTS.get(opt) == layout:
                continue
        except TypeError:  # not weak-referenceable: checked every step
            pass
        owners = {id(p): part for part, m in parts.items() for p in m.parameters()}
        held = [p for g in groups for p in g.get("params", ())]
        foreign = [p for p in held if owners.get(id(p)) != own]
        if foreign:
            others = sorted({owners.get(id(p), "no part of this model") for p in foreign})
            swapped = " (are the two optimizers swapped?)" if "model.mi" in others or \
                "model.vae" in others else ""
            raise ValueError(
                f"train_step: {name} holds {len(foreign)} of its {len(held)} parameters from "
                f"{' and '.join(others)}, not {own}{swapped}; build it over "
                f"{own}.parameters()")
        if not any(owners.get(id(p)) == own and p.requires_grad for p in held):
            raise ValueError(f"train_step: {name} holds no trainable parameter of {own}")
        try:
            _CHECKED_LAYOUTS[opt] = layout
        except TypeError:
            pass


@contextlib.contextmanager
def _frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Parameters temporarily set to requires_grad=False, so no graph is built for them."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _set_grads(loss: torch.Tensor, params: list[nn.Parameter], retain_graph: bool = False) -> None:
    """``p.grad = d loss / d p`` for exactly these parameters (others' .grad untouched)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = g


@overload
def train_step(
    model: InfoMaxVAE,
    x: torch.Tensor,
    opt: Mapping[str, torch.optim.Optimizer] | Any,
    x_out: torch.Tensor | None = None,
    *,
    infomaxloss_function: Callable[..., torch.Tensor] = infomaxloss,
    infomaxloss_kwargs: dict[str, Any] | None = None,
    miloss_function: Callable[..., torch.Tensor] = miloss,
    miloss_kwargs: dict[str, Any] | None = None,
    loss_return: Literal[True],
    verbose: bool = False,
    reuse_forward: bool = False,
    shuffled_grad: bool | None = None,
    process_group: ProcessGroup | None = None,
    negatives_scope: str = "global",
    bound: str | Bound | None = None,
    negatives: str | None = None,
) -> tuple[float, float]: ...


@overload
def train_step(
    model: InfoMaxVAE,
    x: torch.Tensor,
    opt: Mapping[str, torch.optim.Optimizer] | Any,
    x_out: torch.Tensor | None = None,
    *,
    infomaxloss_function: Callable[..., torch.Tensor] = infomaxloss,
    infomaxloss_kwargs: dict[str, Any] | None = None,
    miloss_function: Callable[..., torch.Tensor] = miloss,
    miloss_kwargs: dict[str, Any] | None = None,
    loss_return: Literal[False] = False,
    verbose: bool = False,
    reuse_forward: bool = False,
    shuffled_grad: bool | None = None,
    process_group: ProcessGroup | None = None,
    negatives_scope: str = "global",
    bound: str | Bound | None = None,
    negatives: str | None = None,
) -> None: ...


def train_step(
    model: InfoMaxVAE,
    x: torch.Tensor,
    opt: Mapping[str, torch.optim.Optimizer] | Any,
    x_out: torch.Tensor | None = None,
    *,
    infomaxloss_function: Callable[..., torch.Tensor] = infomaxloss,
    infomaxloss_kwargs: dict[str, Any] | None = None,
    miloss_function: Callable[..., torch.Tensor] = miloss,
    miloss_kwargs: dict[str, Any] | None = None,
    loss_return: bool = False,
    verbose: bool = False,
    reuse_forward: bool = False,
    shuffled_grad: bool | None = None,
    process_group: ProcessGroup | None = None,
    negatives_scope: str = "global",
    bound: str | Bound | None = None,
    negatives: str | None = None,
) -> tuple[float, float] | None:
    """One training step of the InfoMax VAE (Julia's ``train!``).

    ``opt`` holds a ``vae`` and an ``mi`` optimizer. (1) The gradient of the InfoMax loss with
    respect to the VAE's parameters only, then the VAE step; (2) a fresh forward pass through the
    updated VAE, the gradient of the MI loss with respect to the MI chain only, then the MI step.
    Neither loss writes the other network's ``.grad``. ``reuse_forward=True`` is the paper's
    cheaper scheme: one forward pass feeds both updates (the MI step uses the pre-update codes and
    the same permutation); it needs the default loss functions. ``shuffled_grad`` (True or False)
    is passed on to the VAE loss, as in ``infomaxloss(..., shuffled_grad=...)``; None leaves it to
    ``infomaxloss_kwargs`` or the loss's default (False: the shuffled codes are constants).
    Returns ``(vae_loss, mi_loss)`` as floats when ``loss_return``.

    ``process_group`` (torch.distributed) makes the step data-parallel: every process passes its
    own rows x and both networks' gradients are averaged over the group before each optimizer
    step (:class:`~infomax_ext.distributed.AveragingOptimizer`), so every process takes the same
    step. ``negatives_scope="global"`` passes the group on to both losses (unless their kwargs
    name a ``process_group``): the negatives come from all processes' rows and the rank average
    of the gradients is the whole-batch gradient. ``"local"``: each process draws its negatives
    from its own rows and no codes travel. The losses returned are this process's. Before the
    step the processes check that they run it with the same settings and weights
    (:func:`~infomax_ext.distributed_step.agree_on_step`): on the first step of a model,
    weights that differ are set to rank 0's; a later difference raises
    :class:`~infomax_ext.distributed.DistributedMismatchError` naming the parameter.

    ``bound`` (a name of :data:`~infomax_ext.BOUNDS` or a :class:`~infomax_ext.bounds.Bound`) is
    passed on to both losses; None takes the model's ``bound`` (:class:`InfoMaxVAE`) when the
    losses are the default functions. ``negatives`` (``"shuffle"`` or ``"all"``, how the bound
    pairs the negatives) likewise: given, it is passed on to both losses; None takes the
    model's ``negatives`` for the default loss functions.
    """
    opt_vae, opt_mi, opt_names = _optimizers(opt)
    vae_kwargs = dict(infomaxloss_kwargs or {})
    mi_kwargs = dict(miloss_kwargs or {})
    # Before any step: a bad weight found by the MI loss would come after the VAE step.
    if infomaxloss_function is infomaxloss:
        check_weights(vae_kwargs, "train_step", "infomaxloss_kwargs")
    if miloss_function is miloss or reuse_forward:
        check_weights({k: v for k, v in mi_kwargs.items() if k == "reg_strength"}, "train_step",
                      "miloss_kwargs")
    if shuffled_grad is not None:
        if not isinstance(shuffled_grad, bool):
            raise TypeError(f"shuffled_grad must be True, False or None, got {shuffled_grad!r}")
        if vae_kwargs.setdefault("shuffled_grad", shuffled_grad) != shuffled_grad:
            raise ValueError(
                f"shuffled_grad={shuffled_grad} contradicts infomaxloss_kwargs['shuffled_grad']="
                f"{vae_kwargs['shuffled_grad']!r}; give it once"
            )
    _pass_bound(model, bound, infomaxloss_function, vae_kwargs, miloss_function, mi_kwargs)
    _pass_negatives(model, negatives, infomaxloss_function, vae_kwargs, miloss_function,
                    mi_kwargs)
    vae_params = [p for p in model.vae.parameters() if p.requires_grad]
    mi_params = [p for p in model.mi.parameters() if p.requires_grad]
    frozen = [name for name, params in (("model.vae", vae_params), ("model.mi", mi_params))
              if not params]
    if frozen:
        raise ValueError(
            f"train_step: {' and '.join(frozen)} {'has' if len(frozen) == 1 else 'have'} no "
            "trainable parameters (every parameter has requires_grad=False), so there is nothing "
            "to step; unfreeze some parameters"
        )
    if negatives_scope not in ("global", "local"):
        raise ValueError(f"negatives_scope must be 'global' or 'local', got {negatives_scope!r}")
    _check_optimizers(model, (opt_vae, opt_mi), opt_names, (len(vae_params), len(mi_params)))
    if process_group is not None:
        distributed_step.agree_on_step(
            process_group, model, x, reuse_forward=reuse_forward,
            negatives_scope=negatives_scope,
            shuffled_grad=vae_kwargs.get("shuffled_grad", False),
            n_samples=vae_kwargs.get("n_samples", 1), x_out_given=x_out is not None,
            default_losses=(infomaxloss_function is infomaxloss, miloss_function is miloss),
            objective=[(resolve_bound(kw.get("bound", "nwj")).config(),
                        kw.get("negatives", "shuffle")) for kw in (vae_kwargs, mi_kwargs)])
        for kwargs in (vae_kwargs, mi_kwargs):
            kwargs.setdefault("process_group",
                              process_group if negatives_scope == "global" else None)
        opt_vae = distributed.AveragingOptimizer(opt_vae, process_group)
        opt_mi = distributed.AveragingOptimizer(opt_mi, process_group)
    args = (x,) if x_out is None else (x, x_out)
    if reuse_forward:
        if infomaxloss_function is not infomaxloss or miloss_function is not miloss:
            raise ValueError("reuse_forward=True needs the default infomaxloss and miloss functions")
        vae_loss, mi_loss = _reuse_forward_step(model, args, opt_vae, opt_mi, vae_params,
                                                mi_params, vae_kwargs, mi_kwargs)
    else:
        vae_loss, mi_loss = _alternating_step(model, args, opt_vae, opt_mi, vae_params,
                                              mi_params, infomaxloss_function, vae_kwargs,
                                              miloss_function, mi_kwargs)

    if process_group is not None:
        distributed_step.stepped(process_group, model)
    if verbose:
        print(f"vae_loss = {vae_loss.item():.6g}, mi_loss = {mi_loss.item():.6g}")
    if loss_return:
        return float(vae_loss.detach()), float(mi_loss.detach())
    return None


def _pass_bound(model: InfoMaxVAE, bound: str | Bound | None,
                vae_function: Callable[..., torch.Tensor], vae_kwargs: dict[str, Any],
                mi_function: Callable[..., torch.Tensor], mi_kwargs: dict[str, Any]) -> None:
    """Put train_step's ``bound`` (or, when None, the model's for the default loss functions)
    into both losses' kwargs; a different bound already there is an error."""
    explicit = bound is not None
    if not explicit:
        bound = getattr(model, "bound", None)
        if bound is None or bound == BOUNDS["nwj"]:
            return
    bound = resolve_bound(cast("str | Bound", bound))  # not None: explicit, or returned above
    for name, function, default, kwargs in (("infomaxloss", vae_function, infomaxloss, vae_kwargs),
                                            ("miloss", mi_function, miloss, mi_kwargs)):
        if not explicit and function is not default:
            continue
        if resolve_bound(kwargs.setdefault("bound", bound)) != bound:
            raise ValueError(f"bound={bound!r} contradicts {name}_kwargs['bound']="
                             f"{kwargs['bound']!r}; give it once")


def _pass_negatives(model: InfoMaxVAE, negatives: str | None,
                    vae_function: Callable[..., torch.Tensor], vae_kwargs: dict[str, Any],
                    mi_function: Callable[..., torch.Tensor], mi_kwargs: dict[str, Any]) -> None:
    """Put train_step's ``negatives`` (or, when None, the model's for the default loss
    functions) into both losses' kwargs; a different value already there is an error."""
    explicit = negatives is not None
    if explicit:
        if negatives not in NEGATIVES:
            scope = (" (the data-parallel scope 'global'/'local' is negatives_scope)"
                     if negatives in ("global", "local") else "")
            raise ValueError(f"train_step: negatives must be one of "
                             f"{', '.join(map(repr, NEGATIVES))} or None, got {negatives!r}{scope}")
        given = f"negatives={negatives!r}"
    else:
        negatives = getattr(model, "negatives", "shuffle")
        if negatives == "shuffle":
            return
        given = f"the model's negatives={negatives!r}"
    for name, function, default, kwargs in (("infomaxloss", vae_function, infomaxloss, vae_kwargs),
                                            ("miloss", mi_function, miloss, mi_kwargs)):
        if not explicit and function is not default:
            continue
        if kwargs.setdefault("negatives", negatives) != negatives:
            raise ValueError(f"train_step: {given} contradicts {name}_kwargs['negatives']="
                             f"{kwargs['negatives']!r}; give it once (train_step's negatives= "
                             "overrides the model's)")


def _alternating_step(model: InfoMaxVAE, args: tuple[torch.Tensor, ...], opt_vae: Any,
                      opt_mi: Any, vae_params: list[nn.Parameter], mi_params: list[nn.Parameter],
                      infomaxloss_function: Callable[..., torch.Tensor], vae_kwargs: dict[str, Any],
                      miloss_function: Callable[..., torch.Tensor], mi_kwargs: dict[str, Any]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_step`'s default strategy: (1) the InfoMax loss with the MI chain frozen, its
    gradient for the VAE's parameters, the VAE step; (2) a fresh forward pass through the updated
    VAE, the MI loss with the VAE frozen, its gradient for the MI chain, the MI step. The two
    losses share a :class:`DataHalfCache` when they are the default functions and the VAE step
    leaves the MI weights alone. ``args`` is ``(x,)`` or ``(x, x_out)``. Returns
    ``(vae_loss, mi_loss)``."""
    x = args[0]
    # Both losses see the same x and MI weights: a data half without gradient is computed once.
    cache = _step_cache(model, opt_vae)
    if cache is not None and infomaxloss_function is infomaxloss:
        vae_kwargs = {"data_half_cache": cache, **vae_kwargs}
    if cache is not None and miloss_function is miloss:
        mi_kwargs = {"data_half_cache": cache, **mi_kwargs}
    with _frozen(mi_params):
        vae_loss = infomaxloss_function(model.vae, model.mi, *args, **vae_kwargs)
    _set_grads(vae_loss, vae_params)
    opt_vae.step()
    with _frozen(vae_params):
        mi_loss = miloss_function(model.vae, model.mi, x, **mi_kwargs)
    _set_grads(mi_loss, mi_params)
    opt_mi.step()
    return vae_loss, mi_loss


def _step_cache(model: InfoMaxVAE, opt_vae: Any) -> DataHalfCache | None:
    """A :class:`DataHalfCache` for one alternating step, or None when the VAE step could change
    the MI chain's weights (the VAE optimizer holds some of them, or is not a torch optimizer, so
    what it holds is unknown)."""
    groups = getattr(opt_vae, "param_groups", None)
    if not isinstance(groups, list):
        return None
    stepped = {id(p) for group in groups for p in group.get("params", ())}
    if any(id(p) in stepped for p in model.mi.parameters()):
        return None
    return DataHalfCache()


def _reuse_forward_step(model: InfoMaxVAE, args: tuple[torch.Tensor, ...], opt_vae: Any,
                        opt_mi: Any, vae_params: list[nn.Parameter],
                        mi_params: list[nn.Parameter], vae_kwargs: dict[str, Any],
                        mi_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_step` with ``reuse_forward=True`` (the paper's scheme): one forward pass of
    :func:`infomax_terms` feeds both updates; the MI loss uses the pre-update codes and the same
    permutation. ``args`` is ``(x,)`` or ``(x, x_out)``. Returns ``(vae_loss, mi_loss)``."""
    if "seed" not in vae_kwargs:
        vae_kwargs["seed"] = mi_kwargs.get("seed")
    terms = infomax_terms(model.vae, model.mi, *args, **vae_kwargs)
    vae_loss = terms.loss
    mi_loss = -terms.mi
    if mi_kwargs.get("regularization") is not None:
        mi_loss = mi_loss + mi_kwargs.get("reg_strength", 1.0) * mi_kwargs["regularization"](terms.scores)
    alpha = float(vae_kwargs.get("alpha", 1.0))
    if alpha != 0.0 and mi_kwargs.get("regularization") is None:
        # d vae_loss / d theta_mi = -alpha dI / d theta_mi = alpha * d mi_loss / d theta_mi:
        # one backward pass gives both gradients.
        grads = torch.autograd.grad(vae_loss, vae_params + mi_params, allow_unused=True)
        for p, g in zip(vae_params, grads[: len(vae_params)]):
            p.grad = g
        for p, g in zip(mi_params, grads[len(vae_params):]):
            p.grad = None if g is None else g / alpha
    else:
        _set_grads(vae_loss, vae_params, retain_graph=True)
        _set_grads(mi_loss, mi_params)
    opt_vae.step()
    opt_mi.step()
    return vae_loss, mi_loss
