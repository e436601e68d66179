"""Activation functions by name: the bridge between user callables, ``nn`` modules and kernels.

The fused kernels know a fixed set of activations, each identified by a name and at most one
float parameter. This module maps callables (``torch.relu``, ``F.gelu``, ...) and ``nn`` modules
(``nn.ReLU()``, ``nn.LeakyReLU(0.2)``, ...) to that ``(name, parameter)`` pair, builds the
module for a callable, gives the plain-PyTorch function for a name, and writes and reads an
activation's JSON form in a builder's config.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "KERNEL_ACTIVATIONS",
    "ActivationSpec",
    "Activation",
    "identity",
    "as_module",
    "spec_of_module",
    "apply_activation",
    "activation_config",
    "activation_from_config",
]


def identity(x: torch.Tensor) -> torch.Tensor:
    """The identity activation, ``f(x) = x``."""
    return x


class ActivationSpec(NamedTuple):
    """An activation the kernels can run: its ``name`` and its one ``param`` (slope or alpha)."""

    name: str
    param: float = 0.0


# Names in the order of the C++ enum in csrc/activations.h.
KERNEL_ACTIVATIONS = (
    "identity", "relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus", "gelu", "silu",
)

_DEFAULT_PARAM = {"leaky_relu": 0.01, "elu": 1.0}

_CALLABLE_NAMES: dict[Callable, str] = {
    identity: "identity",
    torch.relu: "relu", F.relu: "relu",
    F.leaky_relu: "leaky_relu",
    F.elu: "elu",
    torch.tanh: "tanh", F.tanh: "tanh",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.softplus: "softplus",
    F.gelu: "gelu",
    F.silu: "silu",
}

_MODULE_FOR_NAME = {
    "identity": lambda p: nn.Identity(),
    "relu": lambda p: nn.ReLU(),
    "leaky_relu": lambda p: nn.LeakyReLU(p),
    "elu": lambda p: nn.ELU(p),
    "tanh": lambda p: nn.Tanh(),
    "sigmoid": lambda p: nn.Sigmoid(),
    "softplus": lambda p: nn.Softplus(),
    "gelu": lambda p: nn.GELU(),
    "silu": lambda p: nn.SiLU(),
}


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


def as_module(activation) -> nn.Module:
    """Module for an activation given as a module, a known callable, a name, or ``None`` (identity)."""
    if activation is None:
        return nn.Identity()
    if isinstance(activation, nn.Module):
        return activation
    if isinstance(activation, str):
        if activation not in _MODULE_FOR_NAME:
            raise ValueError(
                f"unknown activation name {activation!r}; known: {', '.join(KERNEL_ACTIVATIONS)}"
            )
        return _MODULE_FOR_NAME[activation](_DEFAULT_PARAM.get(activation, 0.0))
    if callable(activation):
        try:
            name = _CALLABLE_NAMES.get(activation)
        except TypeError:  # unhashable callable
            name = None
        if name is not None:
            return _MODULE_FOR_NAME[name](_DEFAULT_PARAM.get(name, 0.0))
        return Activation(activation)
    raise TypeError(f"activation must be a module, a callable or a name, got {activation!r}")


def spec_of_module(module: nn.Module) -> ActivationSpec | None:
    """The kernel activation equal to ``module``, or ``None`` when the kernels cannot run it exactly."""
    if isinstance(module, nn.Identity):
        return ActivationSpec("identity")
    if isinstance(module, nn.ReLU):
        return ActivationSpec("relu")
    if isinstance(module, nn.LeakyReLU):
        return ActivationSpec("leaky_relu", float(module.negative_slope))
    if isinstance(module, nn.ELU):
        return ActivationSpec("elu", float(module.alpha))
    if isinstance(module, nn.Tanh):
        return ActivationSpec("tanh")
    if isinstance(module, nn.Sigmoid):
        return ActivationSpec("sigmoid")
    if isinstance(module, nn.Softplus) and module.beta == 1 and module.threshold == 20:
        return ActivationSpec("softplus")
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return ActivationSpec("gelu")
    if isinstance(module, nn.SiLU):
        return ActivationSpec("silu")
    if isinstance(module, Activation):
        name = _CALLABLE_NAMES.get(module.fn) if _hashable(module.fn) else None
        if name is not None:
            return ActivationSpec(name, _DEFAULT_PARAM.get(name, 0.0))
    return None


def activation_config(activation):
    """JSON form of an activation in a builder's config: its name, ``{"name": ..., "param": ...}``
    for a leaky ReLU slope or an ELU alpha other than the default, or ``None`` when it has no name
    (a custom callable or module: a config cannot rebuild it). A list or tuple of activations
    gives the list of their entries."""
    if isinstance(activation, (list, tuple)):
        return [activation_config(a) for a in activation]
    spec = spec_of_module(as_module(activation))
    if spec is None:
        return None
    if spec.name in _DEFAULT_PARAM and spec.param != _DEFAULT_PARAM[spec.name]:
        return {"name": spec.name, "param": spec.param}
    return spec.name


def activation_from_config(entry, key: str):
    """The module for an activation entry written by :func:`activation_config`, or a list of
    modules for a list of entries; ``key`` names the entry in errors.

    Strict: a name must be a known activation; a dict must be exactly ``{"name", "param"}`` with
    ``name`` one of the activations that take a parameter (leaky_relu, elu) and a finite real
    ``param``. Anything else, ``None`` included, raises a ValueError."""
    if isinstance(entry, list):
        return [_one_activation_from_config(e, f"{key}[{i}]") for i, e in enumerate(entry)]
    return _one_activation_from_config(entry, key)


def _one_activation_from_config(entry, key: str) -> nn.Module:
    where = f"config entry {key!r}"
    known = ", ".join(KERNEL_ACTIVATIONS)
    if isinstance(entry, str):
        if entry not in _MODULE_FOR_NAME:
            raise ValueError(f"{where}: unknown activation {entry!r}; known: {known}")
        return as_module(entry)
    if isinstance(entry, dict):
        name, param = entry.get("name"), entry.get("param")
        if set(entry) != {"name", "param"} or not isinstance(name, str):
            raise ValueError(
                f"{where}: an activation with a parameter must be a dict with exactly the keys "
                f"'name' (a string) and 'param', got {entry!r}"
            )
        if name not in _DEFAULT_PARAM:
            kind = "takes no parameter" if name in _MODULE_FOR_NAME else "is not a known activation"
            raise ValueError(
                f"{where}: {name!r} {kind} (activations with a parameter: "
                f"{', '.join(_DEFAULT_PARAM)}), got {entry!r}"
            )
        if isinstance(param, bool) or not isinstance(param, (int, float)) or not math.isfinite(param):
            raise ValueError(f"{where}: the {name} parameter must be a finite number, got {param!r}")
        return _MODULE_FOR_NAME[name](float(param))
    if entry is None:
        raise ValueError(
            f"{where} holds an activation that has no name (a custom callable or module), so "
            "the module cannot be rebuilt from its config"
        )
    raise ValueError(
        f"{where}: an activation must be a name or a dict with 'name' and 'param', got "
        f"{type(entry).__name__} {entry!r}"
    )


def _hashable(obj) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def apply_activation(x: torch.Tensor, name: str, param: float = 0.0) -> torch.Tensor:
    """Plain-PyTorch value of the kernel activation ``name`` at ``x`` (the reference)."""
    if name == "identity":
        return x
    if name == "relu":
        return torch.relu(x)
    if name == "leaky_relu":
        return F.leaky_relu(x, param)
    if name == "elu":
        return F.elu(x, param)
    if name == "tanh":
        return torch.tanh(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "softplus":
        return F.softplus(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {name!r}; known: {', '.join(KERNEL_ACTIVATIONS)}")
