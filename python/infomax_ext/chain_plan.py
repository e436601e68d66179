"""The plan of an MI chain for the shared (fused) evaluation of the bound: how the chain
``mlp`` splits into its first Linear layer, the hidden layers (as critic_mlp's stack when it can run
them) and the head Linear(., 1), or why it cannot (:class:`NoFusedPlan`). :func:`fused_plan`
builds a chain's plan once and keeps it while the chain's structure is unchanged;
:mod:`infomax_ext.mutual_info` evaluates it."""
from __future__ import annotations

import weakref
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from .activations import ActivationSpec, kernel_spec

__all__ = ["FusedPlan", "LinearEnds", "NoFusedPlan", "fused_plan", "fused_plan_reasons"]


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
        """True when calling the modules would do nothing but their ``forward``: no hook on any of
        them or registered globally, and no instance ``forward`` replacing the class's."""
        if any(getattr(_module_hooks, name, None) for name in _GLOBAL_HOOKS):
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                       or m._backward_pre_hooks or "forward" in m.__dict__ for m in self.modules)


_module_hooks = nn.modules.module
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _one_linear(network: nn.Module, may_flatten: bool) -> tuple[nn.Linear, bool] | None:
    """(the Linear, whether an nn.Flatten() comes first) when ``network`` is one plain Linear,
    alone or in an nn.Sequential; else None. Exact types: a subclass may compute otherwise."""
    if type(network) is nn.Linear:
        return network, False
    if type(network) is not nn.Sequential:
        return None
    parts = list(network)
    flatten = (may_flatten and len(parts) == 2 and type(parts[0]) is nn.Flatten
               and parts[0].start_dim == 1 and parts[0].end_dim == -1)
    if flatten:
        parts = parts[1:]
    if len(parts) == 1 and type(parts[0]) is nn.Linear:
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
        if not isinstance(layer, nn.Linear):
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
        return _build_plan(mi)
    key = _structure_key(mi)
    entry = _PLANS.get(mi)
    if entry is not None and entry[0] == key:
        return entry[1]
    plan = _build_plan(mi)
    _PLANS[mi] = (key, plan)
    return plan


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


def _plan_and_reasons(mi: nn.Module) -> tuple[FusedPlan | None, list[str]]:
    mlp = getattr(mi, "mlp", None)
    if not isinstance(mlp, nn.Sequential) or len(mlp) == 0:
        return None, [f"mi.mlp is {type(mlp).__name__}, not a non-empty nn.Sequential"]
    if not isinstance(mlp[0], nn.Linear):
        return None, [f"the MLP's first layer is {type(mlp[0]).__name__}, not an nn.Linear "
                      "(its weight cannot be split into data and latent columns)"]
    coupled = sorted({type(m).__name__ for m in mi.modules() if isinstance(m, _BATCH_COUPLED)})
    if coupled:
        return None, [f"batch-coupled layers ({', '.join(coupled)}): a sample's score depends "
                      "on the rest of the batch"]
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
    if isinstance(last, nn.Linear) and last.out_features == 1 and len(layers) - 1 >= k:
        head, head_act, end = last, ActivationSpec("identity"), len(layers) - 1
    elif (len(layers) - 2 >= k and isinstance(layers[-2], nn.Linear)
          and layers[-2].out_features == 1 and kernel_spec(last) is not None):
        head, head_act, end = layers[-2], kernel_spec(last), len(layers) - 2
    middle = layers[k:end]
    stack = _linear_stack(middle) if head is not None else None
    stack_activations = None if stack is None else (
        [act.name for _, act in stack], [float(act.param) for _, act in stack])
    # layers[0] is a Linear (checked above); first_act is not None (returned above when it was)
    return FusedPlan(cast(nn.Linear, layers[0]), cast(ActivationSpec, first_act), middle, head,
                     head_act, stack, stack_activations,
                     # the compiled path never runs the ends in the node: no guards on them
                     None if stack is None or torch.compiler.is_compiling() else _linear_ends(mi)), []
