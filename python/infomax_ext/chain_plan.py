"""The plan of an MI chain for the shared (fused) evaluation of the bound: how the chain
``mlp`` splits into its first Linear layer, the hidden layers (as critic_mlp's stack when it can run
them) and the head Linear(., 1), or why it cannot (:class:`NoFusedPlan`). :func:`fused_plan`
builds a chain's plan once and keeps it while the chain's structure is unchanged;
:mod:`infomax_ext.mutual_info` evaluates it."""
from __future__ import annotations

import weakref
from typing import Any, NamedTuple, Sequence, TypeGuard, cast

import torch
from torch import nn

from .activations import ActivationSpec, kernel_spec

__all__ = ["FusedPlan", "LinearEnds", "NoFusedPlan", "calls_are_plain", "fused_plan",
           "fused_plan_reasons", "plain_linear", "skipped_call_reasons", "split_reasons"]


class LinearEnds(NamedTuple):
    """The chain's ``data`` and ``latent`` networks when each is one plain ``nn.Linear`` (alone or
    the only layer of an ``nn.Sequential``; data may start with ``nn.Flatten()``): the chain of
    ``MutualInfoChain.from_sizes``. The chain node then runs them itself
    (:func:`~infomax_ext.critic_chain_op.critic_chain_with_linear_ends`) while
    :meth:`runs_as_modules` holds. ``modules``: every module of the two networks (containers
    included), whose hooks would be skipped."""

    data: nn.Linear
    flatten: bool
    latent: nn.Linear
    modules: tuple[nn.Module, ...]

    def runs_as_modules(self) -> bool:
        """True when calling the modules would do nothing but their ``forward``
        (:func:`calls_are_plain`)."""
        return calls_are_plain(self.modules)


_module_hooks = nn.modules.module
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")  # read directly in calls_are_plain
_HOOKS = (("_forward_hooks", "a forward hook"), ("_forward_pre_hooks", "a forward pre-hook"),
          ("_backward_hooks", "a backward hook"), ("_backward_pre_hooks", "a backward pre-hook"))


def calls_are_plain(modules: Sequence[nn.Module]) -> bool:
    """True when calling each of ``modules`` would do nothing but its class's ``forward``: no
    hook on any of them or registered globally, and no instance ``forward`` replacing the
    class's. A shared evaluation that computes what ``modules`` compute without calling them is
    exact only then. Checked on every call (hooks come and go without changing a plan), so
    written as a plain loop (a few microseconds for a chain's ten modules)."""
    hooks = _module_hooks
    if (hooks._global_forward_hooks or hooks._global_forward_pre_hooks
            or hooks._global_backward_hooks or hooks._global_backward_pre_hooks):
        return False
    for m in modules:
        if (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or m._backward_pre_hooks or "forward" in m.__dict__):
            return False
    return True


def skipped_call_reasons(named: Sequence[tuple[str, nn.Module]]) -> list[str]:
    """Why calling the ``named`` modules does more than their forward (:func:`calls_are_plain`),
    one sentence per module (and one for global hooks); empty when it does not."""
    reasons = [f"a module {what} is registered globally (nn.modules.module): the shared "
               "evaluation would skip it" for attr, what in
               zip(_GLOBAL_HOOKS, ("forward hook", "forward pre-hook", "backward hook",
                                   "backward pre-hook")) if getattr(_module_hooks, attr, None)]
    for name, module in named:
        found = [what for attr, what in _HOOKS if getattr(module, attr)]
        if "forward" in module.__dict__:
            found.append("an instance forward")
        if found:
            reasons.append(f"{name} has {' and '.join(found)}: the shared evaluation computes it "
                           "without calling it")
    return reasons


def plain_linear(module: nn.Module | None) -> TypeGuard[nn.Linear]:
    """Whether ``module`` is an nn.Linear that computes nn.Linear's forward: the class itself, or
    a subclass that keeps the forward (``torch.nn.utils.parametrize`` makes one, whose weight is
    computed on each read); a subclass with a forward of its own may compute otherwise."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def _one_linear(network: nn.Module, may_flatten: bool) -> tuple[nn.Linear, bool] | None:
    """(the Linear, whether an nn.Flatten() comes first) when ``network`` is one plain Linear
    (:func:`plain_linear`), alone or in an nn.Sequential; else None."""
    if plain_linear(network):
        return network, False
    if type(network) is not nn.Sequential:
        return None
    parts = list(network)
    flatten = (may_flatten and len(parts) == 2 and type(parts[0]) is nn.Flatten
               and parts[0].start_dim == 1 and parts[0].end_dim == -1)
    if flatten:
        parts = parts[1:]
    if len(parts) == 1 and plain_linear(parts[0]):
        return parts[0], flatten
    return None


def _linear_ends(mi: nn.Module) -> LinearEnds | None:
    data, latent = getattr(mi, "data", None), getattr(mi, "latent", None)
    if not isinstance(data, nn.Module) or not isinstance(latent, nn.Module):
        return None
    data_end, latent_end = _one_linear(data, True), _one_linear(latent, False)
    if data_end is None or latent_end is None:
        return None
    return LinearEnds(data_end[0], data_end[1], latent_end[0],
                      (*data.modules(), *latent.modules()))


class FusedPlan(NamedTuple):
    """How a chain splits for the shared (fused) evaluation: the first Linear and its activation,
    the modules between it and the head, the head Linear(., 1) and its activation (None when the
    MLP does not end with one), and ``stack``: the middle as (Linear, activation) pairs when
    critic_mlp runs it, else None. A plan holds modules, never their tensors: every call reads the
    current weights. Truthy; :class:`NoFusedPlan` is its falsy counterpart."""

    first: nn.Linear
    first_act: ActivationSpec
    middle: list[nn.Module]
    head: nn.Linear | None
    head_act: ActivationSpec | None
    stack: list[tuple[nn.Linear, ActivationSpec]] | None
    # critic_mlp's activation names and parameters of the stack, built once with the plan
    stack_activations: tuple[list[str], list[float]] | None = None
    # the data and latent networks when each is one Linear (run inside the chain node)
    ends: LinearEnds | None = None
    # the modules the shared evaluation computes without calling them (the chain's mlp and the
    # layers the ops run; the chain itself too, which the plan does not hold: it keys the plan),
    # checked on every call, and their names in messages
    replaced: tuple[nn.Module, ...] = ()
    replaced_names: tuple[str, ...] = ()


_FusedPlan = FusedPlan


class NoFusedPlan(NamedTuple):
    """Why a chain cannot take the shared (fused) evaluation: ``reasons``, one sentence per
    obstacle. Falsy, so ``if fused_plan(mi):`` reads as "the chain takes the fused path"."""

    reasons: tuple[str, ...]

    def __bool__(self) -> bool:
        return False


def _linear_stack(middle: list[nn.Module]) -> list[tuple[nn.Linear, ActivationSpec]] | None:
    """``middle`` as (Linear, activation) pairs (identity where a Linear follows a Linear), or
    None when it holds anything else (then its modules run one by one)."""
    stack, i = [], 0
    while i < len(middle):
        layer = middle[i]
        if not plain_linear(layer):  # it may compute otherwise: runs as a module
            return None
        act: ActivationSpec | None = ActivationSpec("identity")
        if i + 1 < len(middle) and not isinstance(middle[i + 1], nn.Linear):
            act = kernel_spec(middle[i + 1])
            if act is None:
                return None
            i += 1
        stack.append((layer, act))
        i += 1
    return stack  # type: ignore[return-value]  # each act is a spec here


_BATCH_COUPLED = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def fused_plan(mi: nn.Module) -> FusedPlan | NoFusedPlan:
    """How the chain splits for the shared evaluation (a :class:`FusedPlan`), or a
    :class:`NoFusedPlan` (falsy) with the reasons it must take two calls.

    Built once per chain and kept while the chain's structure is unchanged: the key is every
    submodule's identity and type with its plain settings (a replaced layer, an activation
    swapped or its slope changed, a module inserted give a new plan). The plan holds modules,
    not tensors, so optimizer steps, ``load_state_dict`` and ``.to()`` need no new plan. While
    torch.compile traces, the plan is built without the cache."""
    if torch.compiler.is_compiling():
        return _with_plain_calls(mi, _build_plan(mi))
    key = _structure_key(mi)
    entry = _PLANS.get(mi)
    if entry is not None and entry[0] == key:
        return _with_plain_calls(mi, entry[1])
    plan = _build_plan(mi)
    _PLANS[mi] = (key, plan)
    return _with_plain_calls(mi, plan)


def _with_plain_calls(mi: nn.Module, plan: FusedPlan | NoFusedPlan) -> FusedPlan | NoFusedPlan:
    """``plan``, or why not while ``mi`` or a module the plan replaces has a hook or an instance
    forward."""
    if not isinstance(plan, FusedPlan):
        return plan
    inner = _compiled_inner(mi)
    if calls_are_plain((mi, *plan.replaced)) if inner is None else (
            not _wrapper_reasons(mi) and calls_are_plain((inner, *plan.replaced))):
        return plan
    return NoFusedPlan(tuple(_wrapper_reasons(mi) + skipped_call_reasons(
        (*_chain_itself(mi), *zip(plan.replaced_names, plan.replaced)))))


def fused_plan_reasons(mi: nn.Module) -> list[str]:
    """Why ``mi`` cannot take the shared (fused) evaluation: one sentence per obstacle, an
    empty list when it can (see :func:`~infomax_ext.explain.explain_path` for a whole call)."""
    plan = fused_plan(mi)
    return [] if isinstance(plan, FusedPlan) else list(plan.reasons)


# The plan of each chain, with the structure key it was built for; an entry goes with its chain.
_PLANS: weakref.WeakKeyDictionary[nn.Module, tuple[list[Any], FusedPlan | NoFusedPlan]] = (
    weakref.WeakKeyDictionary())
_PLAIN_SETTINGS = (bool, int, float, str, type(None))


def _structure_key(mi: nn.Module) -> list[Any]:
    """What the plan of ``mi`` depends on: each submodule's identity and type, and the public
    settings of each leaf other than a Linear (an activation's slope; plain values as they are,
    anything else by identity; ``training`` left out). The plan keeps the Linear layers it names
    alive, so their identities cannot be reused while it is kept."""
    key: list[Any] = []
    pending: list[nn.Module | None] = [mi]
    while pending:
        module = pending.pop()
        if module is None:  # a registered None child
            continue
        key.append(id(module))
        key.append(type(module))
        children = module._modules
        if children:
            pending.extend(children.values())
        elif type(module) is not nn.Linear:
            settings = module.__dict__
            # The names nn.Module itself sets are set apart in C: a leaf adds a few of its own.
            names = settings.keys() - _MODULE_NAMES
            key.append(tuple((name, _setting(settings[name])) for name in sorted(names)
                             if name[0] != "_") if names else ())
    return key


def _setting(value: Any) -> Any:
    return value if type(value) in _PLAIN_SETTINGS else id(value)


# What nn.Module.__init__ sets: "training" and private names, none of them a leaf's settings.
_MODULE_NAMES = frozenset(nn.Module().__dict__)


def _build_plan(mi: nn.Module) -> FusedPlan | NoFusedPlan:
    plan, reasons = _plan_and_reasons(mi)
    return NoFusedPlan(tuple(reasons)) if plan is None else plan


def split_reasons(mi: nn.Module) -> list[str]:
    """Why the first layer of ``mi`` cannot be split into a data half and a latent half, the
    step every shared evaluation starts with (an empty list when it can): ``mi`` computes
    ``mlp(cat([data(x), latent(z)]))`` (MutualInfoChain's forward, not a subclass's own), its
    ``mlp`` is an nn.Sequential starting with a plain nn.Linear, no layer couples the batch's
    samples, and no hook or instance forward on the chain, its mlp or that Linear would be
    skipped (:func:`skipped_call_reasons`; hooks come and go, so ask on every call)."""
    reasons = _split_structure_reasons(mi)
    if not reasons:
        mlp = cast(nn.Sequential, mi.mlp)  # as found
        reasons = _wrapper_reasons(mi) + skipped_call_reasons(
            (*_chain_itself(mi), ("mi.mlp", mlp), ("mi.mlp[0]", mlp[0])))
    return reasons


def _split_structure_reasons(mi: nn.Module) -> list[str]:
    """:func:`split_reasons` without the hooks: what a plan may keep."""
    reasons = [f"the chain has no module {attr!r} (expected data, latent and mlp, as "
               "MutualInfoChain)" for attr in ("data", "latent", "mlp")
               if not isinstance(getattr(mi, attr, None), nn.Module)]
    if reasons:
        return reasons
    forward = getattr(type(_compiled_inner(mi) or mi), "forward", None)
    if forward not in CHAIN_FORWARDS:
        reasons.append(f"{type(mi).__name__} has its own forward (not MutualInfoChain's "
                       "mlp(cat([data(x), latent(z)]))): the shared evaluation would skip it")
    mlp = mi.mlp
    if not isinstance(mlp, nn.Sequential) or len(mlp) == 0:
        reasons.append(f"mi.mlp is a {type(mlp).__name__}, not a non-empty nn.Sequential")
    elif not plain_linear(mlp[0]):
        reasons.append(f"the MLP's first layer is a {type(mlp[0]).__name__}, not an nn.Linear "
                       "with nn.Linear's forward (its weight cannot be split into data and "
                       "latent columns)")
    coupled = sorted({type(m).__name__ for m in mi.modules() if isinstance(m, _BATCH_COUPLED)})
    if coupled:
        reasons.append(f"batch-coupled layers ({', '.join(coupled)}): a sample's score depends "
                       "on the rest of the batch")
    return reasons


# The forward methods that compute mlp(cat([data(x), latent(z)])): MutualInfoChain's, added by
# infomax_ext.mutual_info (which imports this module).
CHAIN_FORWARDS: set[Any] = set()


def _compiled_inner(mi: nn.Module) -> nn.Module | None:
    """The module a ``torch.compile``-wrapped chain (an ``OptimizedModule``) calls, which its
    attributes (data, latent, mlp) come from; None for any other module."""
    if type(mi).__name__ != "OptimizedModule":
        return None
    inner = mi._modules.get("_orig_mod")
    return inner if isinstance(inner, nn.Module) else None


def _chain_itself(mi: nn.Module) -> tuple[tuple[str, nn.Module], ...]:
    """The chain's own module whose call a shared evaluation skips, named: ``mi``, or the module
    a ``torch.compile``-wrapped chain calls (the wrapper's own forward is that module's,
    compiled; its hooks are :func:`_wrapper_reasons`')."""
    inner = _compiled_inner(mi)
    return (("the chain", mi),) if inner is None else (("the compiled chain's module", inner),)


def _wrapper_reasons(mi: nn.Module) -> list[str]:
    """The hooks on a ``torch.compile``-wrapped chain itself (none for any other module)."""
    if _compiled_inner(mi) is None:
        return []
    found = [what for attr, what in _HOOKS if getattr(mi, attr)]
    return [f"the compiled chain has {' and '.join(found)}: the shared evaluation would skip "
            "it"] if found else []


def _plan_and_reasons(mi: nn.Module) -> tuple[FusedPlan | None, list[str]]:
    reasons = _split_structure_reasons(mi)
    if reasons:
        return None, reasons
    mlp = cast(nn.Sequential, mi.mlp)  # as split_reasons found
    layers = list(mlp)
    k = 1
    first_act: ActivationSpec | None = ActivationSpec("identity")
    if len(layers) > 1 and not isinstance(layers[1], nn.Linear):
        first_act = kernel_spec(layers[1])
        if first_act is None:
            return None, [f"the first layer's activation {layers[1]!r} is not one the kernels run "
                          "(activations.ACTIVATIONS entries with kernel=True)"]
        k = 2
    head, head_act, end = None, None, len(layers)
    last = layers[-1]
    if plain_linear(last) and last.out_features == 1 and len(layers) - 1 >= k:
        head, head_act, end = last, ActivationSpec("identity"), len(layers) - 1
    elif (len(layers) - 2 >= k and plain_linear(layers[-2])
          and layers[-2].out_features == 1 and kernel_spec(last) is not None):
        head, head_act, end = layers[-2], kernel_spec(last), len(layers) - 2
    middle = layers[k:end]
    stack = _linear_stack(middle) if head is not None else None
    stack_activations = None if stack is None else (
        [act.name for _, act in stack], [float(act.param) for _, act in stack])
    # The modules the ops compute without calling them: the chain, its mlp, the first layer and
    # its activation, and with a head the head and what follows it, with a stack the hidden
    # layers (without one they run as module calls).
    replaced_at = [*range(k), *(range(end, len(layers)) if head is not None else ()),
                   *(range(k, end) if stack is not None else ())]
    replaced_at = sorted(replaced_at)
    replaced = (mlp, *(layers[i] for i in replaced_at))
    names = ("mi.mlp", *(f"mi.mlp[{i}]" for i in replaced_at))
    # layers[0] is a Linear (checked above); first_act is not None (returned above when it was)
    return FusedPlan(cast(nn.Linear, layers[0]), cast(ActivationSpec, first_act), middle, head,
                     head_act, stack, stack_activations,
                     # the compiled path never runs the ends in the node: no guards on them
                     None if stack is None or torch.compiler.is_compiling() else _linear_ends(mi),
                     replaced, names), []
