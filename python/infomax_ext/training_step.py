"""The training step of the InfoMax VAE: :func:`train_step` updates the VAE on its loss and the
MI chain on its own (alternating, or from one shared forward pass with ``reuse_forward``), after
checking the optimizers, ``miloss_kwargs`` and ``x`` (:mod:`~infomax_ext.training_checks`) and,
with a process group, that every process runs the same step."""
from __future__ import annotations

import contextlib
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Mapping,
                    NamedTuple, cast, overload)

import torch
from torch import nn

from . import distributed, distributed_step, training_checks
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


class _Parts(NamedTuple):
    """The parameters of one step: the trainable ones of ``model.vae`` and ``model.mi``, and
    their frozen ones (requires_grad=False)."""

    vae: list[nn.Parameter]
    mi: list[nn.Parameter]
    vae_frozen: list[nn.Parameter]
    mi_frozen: list[nn.Parameter]


def _set_grads(loss: torch.Tensor, params: list[nn.Parameter], frozen: list[nn.Parameter],
               retain_graph: bool = False) -> None:
    """``p.grad = d loss / d p`` for these parameters and ``p.grad = None`` for the ``frozen``
    ones of the same network, so that no optimizer applies a gradient of an earlier step to a
    parameter frozen since (others' .grad untouched)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = g
    for p in frozen:
        p.grad = None


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
    Neither loss writes the other network's ``.grad``; a parameter with ``requires_grad=False``
    gets ``.grad = None``, so no optimizer moves it with a gradient of an earlier step.
    ``reuse_forward=True`` is the paper's cheaper scheme: one forward pass feeds both updates (the
    MI step uses the pre-update codes and the same permutation); it needs the default loss
    functions, and of ``miloss_kwargs`` it uses ``regularization`` and ``reg_strength`` and takes
    ``seed``, ``bound``, ``negatives`` and ``process_group`` only where they agree with the VAE
    loss's (a ValueError naming the key otherwise, and for ``data_half_cache``). The critic's
    gradient comes from the VAE loss's backward pass divided by ``alpha`` when that is exact in
    the parameters' dtype, else from a backward pass of its own
    (:func:`~infomax_ext.training_checks.reuse_gradient_is_exact`). ``shuffled_grad`` (True or
    False) is passed on to the VAE loss, as in ``infomaxloss(..., shuffled_grad=...)``; None leaves it to
    ``infomaxloss_kwargs`` or the loss's default (False: the shuffled codes are constants).
    Returns ``(vae_loss, mi_loss)`` as floats when ``loss_return``.

    ``process_group`` (torch.distributed) makes the step data-parallel: every process passes its
    own rows x and both networks' gradients are averaged over the group before each optimizer
    step (:class:`~infomax_ext.distributed.AveragingOptimizer`), so every process takes the same
    step. ``negatives_scope="global"`` passes the group on to both losses (unless their kwargs
    name a ``process_group``): the negatives come from all processes' rows and the rank average
    of the gradients is the whole-batch gradient. ``"local"``: each process draws its negatives
    from its own rows and no codes travel. The losses returned are this process's. Before the
    step the processes check that they run it with the same settings (the losses' bounds,
    negatives and weights, the optimizers' classes and settings among them) and weights
    (:func:`~infomax_ext.distributed_step.agree_on_step`): on the first step of a model,
    weights that differ are set to rank 0's; a later difference raises
    :class:`~infomax_ext.distributed.DistributedMismatchError` naming the parameter.

    ``bound`` (a name of :data:`~infomax_ext.BOUNDS` or a :class:`~infomax_ext.bounds.Bound`) is
    passed on to both losses; None takes the model's ``bound`` (:class:`InfoMaxVAE`) when the
    losses are the default functions. ``negatives`` (``"shuffle"`` or ``"all"``, how the bound
    pairs the negatives) likewise: given, it is passed on to both losses; None takes the
    model's ``negatives`` for the default loss functions.

    Refused before any parameter changes, naming the problem: optimizers that hold parameters
    other than their network's (a submodule replaced since they were built included), a
    ``miloss_kwargs`` key :func:`miloss` does not take or a value it refuses (with the default
    ``miloss``), an ``x`` whose dtype is not the model's, and a loss that is not finite because
    ``x`` holds NaN or inf: each loss is checked before its own step (the alternating step's MI
    loss after the VAE's step; the error says so). The check reads the loss's value, so it runs
    on the CPU only, where that costs nothing (on a GPU it would stall the step on a device
    sync), and not with a ``process_group`` (a refusal on one process would leave the others
    waiting in the gradient average). A non-finite loss of a finite ``x``
    (weights or settings that overflow) is stepped and returned, as before: the Trainer names
    the network that diverged.
    """
    opt_vae, opt_mi, opt_names = _optimizers(opt)
    vae_kwargs = dict(infomaxloss_kwargs or {})
    mi_kwargs = dict(miloss_kwargs or {})
    # Before any step: a bad weight or setting found by the MI loss would come after the VAE step.
    if infomaxloss_function is infomaxloss:
        check_weights(vae_kwargs, "train_step", "infomaxloss_kwargs")
    if miloss_function is miloss or reuse_forward:
        training_checks.check_miloss_kwargs(mi_kwargs)
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
    vae_all, mi_all = list(model.vae.parameters()), list(model.mi.parameters())
    parts = _Parts([p for p in vae_all if p.requires_grad], [p for p in mi_all if p.requires_grad],
                   [p for p in vae_all if not p.requires_grad],
                   [p for p in mi_all if not p.requires_grad])
    frozen = [name for name, params in (("model.vae", parts.vae), ("model.mi", parts.mi))
              if not params]
    if frozen:
        raise ValueError(
            f"train_step: {' and '.join(frozen)} {'has' if len(frozen) == 1 else 'have'} no "
            "trainable parameters (every parameter has requires_grad=False), so there is nothing "
            "to step; unfreeze some parameters"
        )
    if negatives_scope not in ("global", "local"):
        raise ValueError(f"negatives_scope must be 'global' or 'local', got {negatives_scope!r}")
    training_checks.check_optimizers(model, (opt_vae, opt_mi), opt_names, (vae_all, mi_all))
    if process_group is not None:
        for kwargs in (vae_kwargs, mi_kwargs):
            kwargs.setdefault("process_group",
                              process_group if negatives_scope == "global" else None)
    if reuse_forward:
        if infomaxloss_function is not infomaxloss or miloss_function is not miloss:
            raise ValueError("reuse_forward=True needs the default infomaxloss and miloss functions")
        training_checks.check_reuse_kwargs(mi_kwargs, vae_kwargs)
    if process_group is not None:
        distributed_step.agree_on_step(
            process_group, model, x, reuse_forward=reuse_forward,
            negatives_scope=negatives_scope,
            shuffled_grad=vae_kwargs.get("shuffled_grad", False),
            n_samples=vae_kwargs.get("n_samples", 1), x_out_given=x_out is not None,
            default_losses=(infomaxloss_function is infomaxloss, miloss_function is miloss),
            objective=[distributed_step.loss_settings(kw) for kw in (vae_kwargs, mi_kwargs)],
            optimizers=(opt_vae, opt_mi))
        opt_vae = distributed.AveragingOptimizer(opt_vae, process_group)
        opt_mi = distributed.AveragingOptimizer(opt_mi, process_group)
    # After the processes' agreement (on the model's dtypes among others): a process that does
    # not take part in it would leave the others waiting.
    training_checks.check_x_dtype(x, {p.dtype for p in vae_all + mi_all})
    # The finiteness check of each loss before its step (see the docstring).
    check = _LossCheck(x, process_group is None)
    args = (x,) if x_out is None else (x, x_out)
    if reuse_forward:
        vae_loss, mi_loss = _reuse_forward_step(model, args, opt_vae, opt_mi, parts, vae_kwargs,
                                                mi_kwargs, check)
    else:
        vae_loss, mi_loss = _alternating_step(model, args, opt_vae, opt_mi, parts,
                                              infomaxloss_function, vae_kwargs,
                                              miloss_function, mi_kwargs, check)

    if process_group is not None:
        distributed_step.stepped(process_group, model)
    if not (verbose or loss_return):
        return None
    values = (check.read(vae_loss, 0), check.read(mi_loss, 1))
    if verbose:
        print(f"vae_loss = {values[0]:.6g}, mi_loss = {values[1]:.6g}")
    return values if loss_return else None


class _LossCheck:
    """The finiteness check of train_step's losses before their steps, on the CPU
    (:func:`~infomax_ext.training_checks.finite_loss`), keeping the values it read for the
    return value. ``enabled``: without a process group."""

    def __init__(self, x: torch.Tensor, enabled: bool) -> None:
        self.x, self.enabled = x, enabled
        self.values: list[float | None] = [None, None]

    def __call__(self, loss: torch.Tensor, index: int, what: str,
                 changed: str = "no parameter changed") -> None:
        """Check ``loss`` (``index`` 0: the VAE's, 1: the MI chain's)."""
        if self.enabled:
            self.values[index] = training_checks.finite_loss(loss, what, self.x, changed)

    def read(self, loss: torch.Tensor, index: int) -> float:
        value = self.values[index]
        return float(loss.detach()) if value is None else value


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
                      opt_mi: Any, parts: _Parts,
                      infomaxloss_function: Callable[..., torch.Tensor], vae_kwargs: dict[str, Any],
                      miloss_function: Callable[..., torch.Tensor], mi_kwargs: dict[str, Any],
                      check: _LossCheck) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_step`'s default strategy: (1) the InfoMax loss with the MI chain frozen, its
    gradient for the VAE's parameters, the VAE step; (2) a fresh forward pass through the updated
    VAE, the MI loss with the VAE frozen, its gradient for the MI chain, the MI step. Each loss is
    checked (``check``) before its step. The two losses share a :class:`DataHalfCache` when they
    are the default functions and the VAE step leaves the MI weights alone. ``args`` is ``(x,)``
    or ``(x, x_out)``. Returns ``(vae_loss, mi_loss)``."""
    x = args[0]
    # Both losses see the same x and MI weights: a data half without gradient is computed once.
    cache = _step_cache(model, opt_vae)
    if cache is not None and infomaxloss_function is infomaxloss:
        vae_kwargs = {"data_half_cache": cache, **vae_kwargs}
    if cache is not None and miloss_function is miloss:
        mi_kwargs = {"data_half_cache": cache, **mi_kwargs}
    with _frozen(parts.mi):
        vae_loss = infomaxloss_function(model.vae, model.mi, *args, **vae_kwargs)
    check(vae_loss, 0, "the VAE loss")
    _set_grads(vae_loss, parts.vae, parts.vae_frozen)
    opt_vae.step()
    with _frozen(parts.vae):
        mi_loss = miloss_function(model.vae, model.mi, x, **mi_kwargs)
    # Off the CPU, reading the MI loss here would add a device sync: a non-finite x made the
    # VAE loss non-finite already.
    check(mi_loss, 1, "the MI loss (after the VAE's step)",
          "model.vae has taken this step's update, model.mi is unchanged")
    _set_grads(mi_loss, parts.mi, parts.mi_frozen)
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
                        opt_mi: Any, parts: _Parts, vae_kwargs: dict[str, Any],
                        mi_kwargs: dict[str, Any], check: _LossCheck
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`train_step` with ``reuse_forward=True`` (the paper's scheme): one forward pass of
    :func:`infomax_terms` feeds both updates; the MI loss uses the pre-update codes and the same
    permutation. Both losses are checked (``check``) before either step. ``args`` is ``(x,)`` or
    ``(x, x_out)``. Returns ``(vae_loss, mi_loss)``."""
    if vae_kwargs.get("seed") is None:  # the MI loss's seed, if any, draws for both
        vae_kwargs["seed"] = mi_kwargs.get("seed")
    terms = infomax_terms(model.vae, model.mi, *args, **vae_kwargs)
    vae_loss = terms.loss
    mi_loss = -terms.mi
    if mi_kwargs.get("regularization") is not None:
        mi_loss = mi_loss + mi_kwargs.get("reg_strength", 1.0) * mi_kwargs["regularization"](terms.scores)
    check(vae_loss, 0, "the VAE loss")
    check(mi_loss, 1, "the MI loss")
    alpha = float(vae_kwargs.get("alpha", 1.0))
    if mi_kwargs.get("regularization") is None and \
            training_checks.reuse_gradient_is_exact(alpha, _backward_dtypes(parts.mi, args[0])):
        # d vae_loss / d theta_mi = -alpha dI / d theta_mi = alpha * d mi_loss / d theta_mi:
        # one backward pass gives both gradients.
        n_vae = len(parts.vae)
        grads = torch.autograd.grad(vae_loss, parts.vae + parts.mi, allow_unused=True)
        for p, g in zip(parts.vae, grads[:n_vae]):
            p.grad = g
        for p, g in zip(parts.mi, grads[n_vae:]):
            p.grad = None if g is None else g / alpha
        for p in parts.vae_frozen + parts.mi_frozen:
            p.grad = None
    else:
        _set_grads(vae_loss, parts.vae, parts.vae_frozen, retain_graph=True)
        _set_grads(mi_loss, parts.mi, parts.mi_frozen)
    opt_vae.step()
    opt_mi.step()
    return vae_loss, mi_loss


def _backward_dtypes(params: list[nn.Parameter], x: torch.Tensor) -> set[torch.dtype]:
    """The dtypes the critic's backward pass runs in: its parameters', and torch.autocast's
    on x's device when it is on."""
    dtypes = {p.dtype for p in params}
    if torch.is_autocast_enabled(x.device.type):
        dtypes.add(torch.get_autocast_dtype(x.device.type))
    return dtypes
