"""Checks of the scalar arguments of the public API: loss weights, counts and seeds.

Each raises before any work is done, with a message that names the argument:

- :func:`check_weight`: a loss weight (``beta``, ``alpha``, ``reg_strength``) is a finite,
  non-negative real number (an int, a float, a numpy scalar or a 0-dim real tensor);
- :func:`as_count`: a count (``n_samples``) is a positive integer; Python, numpy and 0-dim
  integer torch scalars are accepted, floats and bools refused;
- :func:`is_integer_scalar`: whether a value is such an integer scalar (a seed given by position).
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import torch

__all__ = ["check_weight", "check_weights", "as_count", "is_integer_scalar", "LOSS_WEIGHTS"]

# The keyword arguments of infomaxloss / miloss that weigh a term of the loss.
LOSS_WEIGHTS = ("beta", "alpha", "reg_strength")


def check_weight(name: str, value: Any, where: str = "") -> Any:
    """``value`` unchanged when it is a finite real number >= 0; a TypeError naming ``name`` for a
    non-number (a string, a bool, a tensor of more than one element), a ValueError for NaN,
    infinity or a negative number. ``where`` (e.g. ``"infomaxloss"``) prefixes the message.

    A 0-dim tensor is checked by its value (one host read; skipped while torch.compile traces,
    where reading it would break the graph)."""
    prefix = f"{where}: " if where else ""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{prefix}{name} must be a non-negative finite number, got a tensor "
                            f"of dtype {value.dtype} and shape {tuple(value.shape)}")
        if torch.compiler.is_compiling():
            return value
        number = float(value.detach())
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    else:
        raise TypeError(f"{prefix}{name} must be a non-negative finite number, got "
                        f"{type(value).__name__} {value!r}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{prefix}{name} must be a non-negative finite number, got {number!r}")
    return value


def check_weights(kwargs: dict[str, Any], where: str = "", kwargs_name: str = "") -> None:
    """:func:`check_weight` for each of :data:`LOSS_WEIGHTS` present in ``kwargs``, named
    ``kwargs_name['alpha']`` when ``kwargs_name`` is given (else ``alpha``)."""
    for name in LOSS_WEIGHTS:
        if name in kwargs:
            check_weight(f"{kwargs_name}[{name!r}]" if kwargs_name else name, kwargs[name], where)


def is_integer_scalar(value: Any) -> bool:
    """True for a Python int, a numpy integer or a 0-dim integer tensor (bools excluded)."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and not value.is_complex() \
            and value.dtype != torch.bool
    if isinstance(value, bool):  # numpy's bool has no __index__: refused below
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def as_count(name: str, value: Any, where: str = "") -> int:
    """``value`` as a Python int when it is a positive integer scalar (:func:`is_integer_scalar`);
    a TypeError naming ``name`` for floats, bools and anything else, a ValueError under 1."""
    prefix = f"{where}: " if where else ""
    if not is_integer_scalar(value):
        raise TypeError(f"{prefix}{name} must be a positive integer, got {type(value).__name__} "
                        f"{value!r}")
    count = int(value.item()) if isinstance(value, torch.Tensor) else operator.index(value)
    if count < 1:
        raise ValueError(f"{prefix}{name} must be a positive integer, got {count}")
    return count
