"""Activation functions by name: the bridge between user callables, ``nn`` modules and kernels.

The fused kernels know a fixed set of activations, each identified by a name and at most one
float parameter. This module maps callables (``torch.relu``, ``F.gelu``, ...) and ``nn`` modules
(``nn.ReLU()``, ``nn.LeakyReLU(0.2)``, ...) to that ``(name, parameter)`` pair, builds the
module for a callable, and gives the plain-PyTorch function for a name.
"""
from __future__ import annotations

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
