"""What every ``from_sizes`` builder shares: size and layer-list checks, Linear layers and MLPs
with an ``init``, the JSON config a builder records (activations by name) and ``from_config``.

The encoders and decoders (:mod:`.vae`) and :class:`~infomax_ext.MutualInfoChain` are built with
these, so sizes, initialisation and configs mean the same in all of them.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence, TypeVar

import torch
from torch import nn

from .activations import ActivationLike, activation_config, activation_from_config, as_module

__all__ = ["check_size", "parse_size", "check_layers", "linear", "mlp", "head", "builder_config",
           "Built", "output_pair"]

# Config keys that hold an activation or a list of them.
_ACTIVATION_KEYS = ("activation", "activations")


def check_size(name: str, value: object) -> int:
    """``value`` when it is a positive int; a TypeError for any other type (bool included), a
    ValueError for an int under 1, each naming the argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def parse_size(name: str, size: int | Sequence[int]) -> tuple[int, list[int] | None]:
    """``(number of features, shape or None)`` of an int or a shape tuple/list."""
    if isinstance(size, (tuple, list, torch.Size)):
        if len(size) == 0:
            raise ValueError(f"{name} must be a positive int or a non-empty shape, got {size!r}")
        shape = [check_size(f"{name}[{i}]", s) for i, s in enumerate(size)]
        return math.prod(shape), shape
    return check_size(name, size), None


def check_layers(neurons_name: str, neurons: Sequence[int], activations_name: str,
                 activations: Sequence[ActivationLike]) -> list[int]:
    """The checked layer widths; one activation per layer."""
    if not isinstance(neurons, (list, tuple)):
        raise TypeError(f"{neurons_name} must be a list of ints, got {neurons!r}")
    if not isinstance(activations, (list, tuple)):
        raise TypeError(
            f"{activations_name} must be a list with one activation per layer, got {activations!r}"
        )
    if len(neurons) != len(activations):
        raise ValueError(
            f"{neurons_name} has {len(neurons)} layers but {activations_name} has "
            f"{len(activations)} activations; each layer needs exactly one activation"
        )
    return [check_size(f"{neurons_name}[{i}]", n) for i, n in enumerate(neurons)]


def linear(n_in: int, n_out: int, init: Callable[..., Any]) -> nn.Linear:
    """``nn.Linear(n_in, n_out)``, its weight filled in place by ``init``, its bias zero."""
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        init(layer.weight)
        layer.bias.zero_()
    return layer


def mlp(n_in: int, neurons: list[int], activations: Sequence[ActivationLike],
        init: Callable[..., Any]) -> list[nn.Module]:
    """``Linear(n_in -> neurons[0]), act[0], ..., Linear(... -> neurons[-1]), act[-1]``."""
    layers: list[nn.Module] = []
    for n_out, activation in zip(neurons, activations):
        layers += [linear(n_in, n_out, init), as_module(activation)]
        n_in = n_out
    return layers


def head(n_in: int, n_out: int, activation: ActivationLike, init: Callable[..., Any],
         shape: Sequence[int] | None = None) -> nn.Sequential:
    """``Linear(n_in -> n_out)``, the activation, then an unflatten to ``shape`` if given."""
    layers = [linear(n_in, n_out, init), as_module(activation)]
    if shape is not None:
        layers.append(nn.Unflatten(1, tuple(shape)))
    return nn.Sequential(*layers)


def builder_config(cls_name: str, **args: Any) -> dict[str, Any]:
    """The JSON-serialisable builder arguments under ``"class": cls_name``: activations (keys
    ending in ``activation`` or ``activations``) as their config entries, tuples as lists."""
    config = {"class": cls_name}
    for key, value in args.items():
        if key.endswith(_ACTIVATION_KEYS):
            value = activation_config(value)
        elif isinstance(value, tuple):
            value = list(value)
        config[key] = value
    return config


_BuiltT = TypeVar("_BuiltT", bound="Built")


class Built(nn.Module):
    """Base of the modules with a ``from_sizes`` builder (encoders, decoders, the MI chain): a
    ``config`` (``None`` unless made by ``from_sizes``) and :meth:`from_config`."""

    config: dict[str, Any] | None = None

    @classmethod
    def from_config(cls: type[_BuiltT], config: dict[str, Any]) -> _BuiltT:
        """Rebuild the architecture ``from_sizes`` recorded in ``config`` (fresh weights)."""
        if not isinstance(config, dict) or config.get("class") != cls.__name__:
            found = config.get("class") if isinstance(config, dict) else type(config).__name__
            raise ValueError(f"config is for {found!r}, not {cls.__name__!r}")
        kwargs = {
            key: activation_from_config(value, key) if key.endswith(_ACTIVATION_KEYS) else value
            for key, value in config.items()
            if key != "class"
        }
        built: _BuiltT = cls.from_sizes(**kwargs)  # type: ignore[attr-defined]  # each subclass has it
        return built


def output_pair(name: str, activation: ActivationLike | Sequence[ActivationLike],
          second_default: ActivationLike) -> tuple[Any, Any]:
    """An output activation given once or as a pair ``(first head, second head)``."""
    if isinstance(activation, (list, tuple)):
        if len(activation) != 2:
            raise ValueError(
                f"{name} must be one activation or a pair of two, got {len(activation)} items"
            )
        return tuple(activation)
    return activation, (activation if second_default is None else second_default)
