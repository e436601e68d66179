"""Activation functions by name: the bridge between user callables, ``nn`` modules and kernels.

:data:`ACTIVATIONS` is the one table of the named activations: for each name, its plain-PyTorch
function, its ``nn`` module class, the module attribute holding its parameter and that
parameter's default, the callables (``torch.relu``, ``F.gelu``, ...) that stand for it, and
whether the fused kernels (csrc/activations.h) run it. Everything else here, the CLI's
``--activation`` choices, the builders' configs and the tests read it: adding an activation is
one entry here (plus its kernel formula when ``kernel=True``).

This module maps callables and ``nn`` modules (``nn.ReLU()``, ``nn.LeakyReLU(0.2)``, ...) to a
``(name, parameter)`` pair, builds the module for a callable or a name, gives the plain-PyTorch
function for a name, and writes and reads an activation's JSON form in a builder's config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "KERNEL_ACTIVATIONS",
    "OUTPUT_DERIVATIVE_ACTIVATIONS",
    "HIDDEN_ACTIVATIONS",
    "NamedActivation",
    "ActivationSpec",
    "Activation",
    "identity",
    "as_module",
    "spec_of_module",
    "kernel_spec",
    "apply_activation",
    "activation_config",
    "activation_from_config",
]


def identity(x: torch.Tensor) -> torch.Tensor:
    """The identity activation, ``f(x) = x``."""
    return x


ActivationLike = Union[str, nn.Module, Callable[[torch.Tensor], torch.Tensor], None]
"""An activation as the builders take it: a name of :data:`ACTIVATIONS`, an ``nn.Module``, an
elementwise callable, or ``None`` (identity)."""


class ActivationSpec(NamedTuple):
    """A named activation with its one parameter: ``name`` and ``param`` (0.0 when it has none)."""

    name: str
    param: float = 0.0


def _always(module: nn.Module) -> bool:
    return True


@dataclass(frozen=True)
class NamedActivation:
    """One row of :data:`ACTIVATIONS`.

    ``function(x, param)`` is the plain-PyTorch value (the kernels' reference); ``module`` the
    ``nn`` class, built as ``module()`` or, with a parameter, ``module(param)``; ``param`` the
    module attribute holding the parameter (None: the activation has none) and ``default`` its
    default; ``callables`` the functions that name it; ``exact(m)`` whether an instance ``m`` of
    ``module`` is exactly this activation (e.g. softplus only with beta 1 and threshold 20);
    ``kernel`` whether the fused kernels run it.
    """

    name: str
    function: Callable[[torch.Tensor, float], torch.Tensor]
    module: type[nn.Module]
    param: str | None = None
    default: float | None = None
    callables: tuple[Callable[..., torch.Tensor], ...] = ()
    exact: Callable[[nn.Module], bool] = _always
    kernel: bool = True

    def build(self, param: float | None = None) -> nn.Module:
        """The module, with ``param`` (its default when None) if the activation takes one."""
        if self.param is None:
            module: nn.Module = self.module()
            return module
        module = self.module(self.default if param is None else float(param))
        return module

    def spec(self, module: nn.Module) -> ActivationSpec:
        """``(name, parameter)`` of an instance of :attr:`module`."""
        if self.param is None:
            return ActivationSpec(self.name)
        return ActivationSpec(self.name, float(getattr(module, self.param)))


_TABLE = (
    NamedActivation("identity", lambda x, p: x, nn.Identity, callables=(identity,)),
    NamedActivation("relu", lambda x, p: torch.relu(x), nn.ReLU, callables=(torch.relu, F.relu)),
    NamedActivation("leaky_relu", F.leaky_relu, nn.LeakyReLU, "negative_slope", 0.01,
                    callables=(F.leaky_relu,)),
    NamedActivation("elu", F.elu, nn.ELU, "alpha", 1.0, callables=(F.elu,)),
    NamedActivation("tanh", lambda x, p: torch.tanh(x), nn.Tanh, callables=(torch.tanh, F.tanh)),
    NamedActivation("sigmoid", lambda x, p: torch.sigmoid(x), nn.Sigmoid,
                    callables=(torch.sigmoid, F.sigmoid)),
    # beta = 1, threshold = 20: the kernels' softplus
    NamedActivation("softplus", lambda x, p: F.softplus(x), nn.Softplus, callables=(F.softplus,),
                    exact=lambda m: bool(m.beta == 1 and m.threshold == 20)),
    # the exact (erf) form
    NamedActivation("gelu", lambda x, p: F.gelu(x), nn.GELU, callables=(F.gelu,),
                    exact=lambda m: m.approximate == "none"),
    NamedActivation("silu", lambda x, p: F.silu(x), nn.SiLU, callables=(F.silu,)),
    NamedActivation("mish", lambda x, p: F.mish(x), nn.Mish, callables=(F.mish,)),
)

ACTIVATIONS: dict[str, NamedActivation] = {a.name: a for a in _TABLE}
"""The named activations, by name (the table above)."""

KERNEL_ACTIVATIONS: tuple[str, ...] = tuple(a.name for a in _TABLE if a.kernel)
"""The names the fused kernels run."""

OUTPUT_DERIVATIVE_ACTIVATIONS: tuple[str, ...] = ("identity", "relu")
"""The kernel activations whose derivative the output gives (relu'(x) = [relu(x) > 0], a NaN
passing the gradient either way): the fused ops keep the output, not the pre-activation, for
their backward (csrc/activations.h, ``derivative_from_output``)."""

HIDDEN_ACTIVATIONS: tuple[str, ...] = tuple(name for name in ACTIVATIONS if name != "identity")
"""The choices for a hidden layer's activation (``TrainConfig.activation``, ``--activation``)."""

_PARAMETRISED = tuple(a.name for a in _TABLE if a.param is not None)

_CALLABLE_NAMES: dict[Callable[..., torch.Tensor], str] = {
    f: a.name for a in _TABLE for f in a.callables}


class Activation(nn.Module):
    """Wraps an arbitrary elementwise callable as a module (for callables with no ``nn`` twin)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"activation must be callable, got {type(fn).__name__}")
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def as_module(activation: ActivationLike) -> nn.Module:
    """Module for an activation given as a module, a known callable, a name, or ``None`` (identity)."""
    if activation is None:
        return nn.Identity()
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation name {activation!r}; known: {', '.join(ACTIVATIONS)}"
            )
        return ACTIVATIONS[activation].build()
    if callable(activation):
        name = _CALLABLE_NAMES.get(activation) if _hashable(activation) else None
        if name is not None:
            return ACTIVATIONS[name].build()
        return Activation(activation)
    raise TypeError(f"activation must be a module, a callable or a name, got {activation!r}")


def spec_of_module(module: nn.Module) -> ActivationSpec | None:
    """The named activation equal to ``module`` as ``(name, parameter)``, or ``None`` when it is
    none of :data:`ACTIVATIONS` exactly, its forward included (a subclass of ``nn.ReLU`` with a
    forward of its own is not ``"relu"``); the kernels run it when ``ACTIVATIONS[name].kernel``."""
    forward = type(module).forward  # a subclass with a forward of its own may compute otherwise
    for entry in _TABLE:
        if isinstance(module, entry.module) and forward is entry.module.forward \
                and entry.exact(module):
            return entry.spec(module)
    if isinstance(module, Activation) and forward is Activation.forward:
        name = _CALLABLE_NAMES.get(module.fn) if _hashable(module.fn) else None
        if name is not None:
            return ActivationSpec(name, ACTIVATIONS[name].default or 0.0)
    return None


def kernel_spec(module: nn.Module) -> ActivationSpec | None:
    """:func:`spec_of_module` when the fused kernels run that activation, else ``None``."""
    spec = spec_of_module(module)
    return spec if spec is not None and ACTIVATIONS[spec.name].kernel else None


def activation_config(activation: ActivationLike | Sequence[ActivationLike]) -> Any:
    """JSON form of an activation in a builder's config: its name, ``{"name": ..., "param": ...}``
    for a leaky ReLU slope or an ELU alpha other than the default, or ``None`` when it has no name
    (a custom callable or module: a config cannot rebuild it). A list or tuple of activations
    gives the list of their entries."""
    if isinstance(activation, (list, tuple)):
        return [activation_config(a) for a in activation]
    spec = spec_of_module(as_module(activation))  # type: ignore[arg-type]  # one activation here
    if spec is None:
        return None
    default = ACTIVATIONS[spec.name].default
    if default is not None and spec.param != default:
        return {"name": spec.name, "param": spec.param}
    return spec.name


def activation_from_config(entry: Any, key: str) -> nn.Module | list[nn.Module]:
    """The module for an activation entry written by :func:`activation_config`, or a list of
    modules for a list of entries; ``key`` names the entry in errors.

    Strict: a name must be a known activation; a dict must be exactly ``{"name", "param"}`` with
    ``name`` one of the activations that take a parameter (leaky_relu, elu, ...) and a finite real
    ``param``. Anything else, ``None`` included, raises a ValueError."""
    if isinstance(entry, list):
        return [_one_activation_from_config(e, f"{key}[{i}]") for i, e in enumerate(entry)]
    return _one_activation_from_config(entry, key)


def _one_activation_from_config(entry: Any, key: str) -> nn.Module:
    where = f"config entry {key!r}"
    known = ", ".join(ACTIVATIONS)
    if isinstance(entry, str):
        if entry not in ACTIVATIONS:
            raise ValueError(f"{where}: unknown activation {entry!r}; known: {known}")
        return as_module(entry)
    if isinstance(entry, dict):
        name, param = entry.get("name"), entry.get("param")
        if set(entry) != {"name", "param"} or not isinstance(name, str):
            raise ValueError(
                f"{where}: an activation with a parameter must be a dict with exactly the keys "
                f"'name' (a string) and 'param', got {entry!r}"
            )
        if name not in _PARAMETRISED:
            kind = "takes no parameter" if name in ACTIVATIONS else "is not a known activation"
            raise ValueError(
                f"{where}: {name!r} {kind} (activations with a parameter: "
                f"{', '.join(_PARAMETRISED)}), got {entry!r}"
            )
        if isinstance(param, bool) or not isinstance(param, (int, float)) or not math.isfinite(param):
            raise ValueError(f"{where}: the {name} parameter must be a finite number, got {param!r}")
        return ACTIVATIONS[name].build(param)
    if entry is None:
        raise ValueError(
            f"{where} holds an activation that has no name (a custom callable or module), so "
            "the module cannot be rebuilt from its config"
        )
    raise ValueError(
        f"{where}: an activation must be a name or a dict with 'name' and 'param', got "
        f"{type(entry).__name__} {entry!r}"
    )


def _hashable(obj: object) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def apply_activation(x: torch.Tensor, name: str, param: float = 0.0) -> torch.Tensor:
    """Plain-PyTorch value of the named activation ``name`` at ``x`` (the kernels' reference)."""
    entry = ACTIVATIONS.get(name)
    if entry is None:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return entry.function(x, param)
