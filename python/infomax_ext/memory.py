"""How much memory a model needs, and whether this machine has it: checked before allocating.

A model is first built on torch's ``meta`` device (:func:`on_meta`: shapes and dtypes, no
memory), its parameter bytes summed (:func:`parameter_bytes`) and compared with what the machine
has (:func:`machine_memory`: the smaller of the physical memory and the process's cgroup limit;
a CUDA device's total memory). Sizes that cannot fit are refused with a message naming the
config entry or option instead of dying in the allocator.

Training needs about :data:`TRAINING_COPIES` copies of the parameters (the weights, their
gradients and Adam's two moments) of the model and, for the held-out MI estimate, of a fresh
MI chain of the same widths; :func:`training_bytes` is that estimate.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
from torch import nn

__all__ = ["on_meta", "parameter_bytes", "largest_layer", "machine_memory", "training_bytes",
           "shortfall", "check_training", "gib", "count_list_entries", "TRAINING_COPIES",
           "MAX_CONFIG_ENTRIES"]

TRAINING_COPIES = 4  # weights, gradients, Adam's exp_avg and exp_avg_sq
MAX_CONFIG_ENTRIES = 10_000  # list entries of a model config: far beyond any real model


_M = TypeVar("_M", bound=nn.Module)


def on_meta(build: Callable[[], _M]) -> _M:
    """``build()`` run with torch's default device set to ``meta``: the module's shapes and
    dtypes without allocating its memory."""
    with torch.device("meta"):
        return build()


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``module`` (meta tensors included)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def largest_layer(module: nn.Module) -> str:
    """``"NAME (IN -> OUT)"`` of the ``nn.Linear`` of ``module`` with the most weights."""
    best = max(((name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)),
               key=lambda item: item[1].in_features * item[1].out_features, default=None)
    if best is None:
        return "none"
    name, layer = best
    return f"{name} ({layer.in_features} -> {layer.out_features})"


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2 or v1), or None when there is none."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def machine_memory(device: str | torch.device = "cpu") -> int | None:
    """Total memory in bytes that ``device`` can use: for the CPU the physical memory, lowered
    to the cgroup limit when there is one; for a CUDA device its total memory. None when it
    cannot be found out."""
    device = torch.device("cuda" if str(device) == "auto" and torch.cuda.is_available()
                          else "cpu" if str(device) == "auto" else device)
    if device.type == "cuda":
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            return int(torch.cuda.get_device_properties(index).total_memory)
        except (RuntimeError, AssertionError, ValueError):
            return None
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = None
    limits = [v for v in (physical, _cgroup_limit()) if v is not None and v > 0]
    return min(limits) if limits else None


def training_bytes(model: nn.Module, mi_chain: nn.Module | None = None) -> int:
    """Estimated bytes to train ``model`` with Adam (:data:`TRAINING_COPIES` copies of its
    parameters), plus as much for a fresh ``mi_chain`` trained for evaluation."""
    total = parameter_bytes(model) + (0 if mi_chain is None else parameter_bytes(mi_chain))
    return TRAINING_COPIES * total


def gib(nbytes: float) -> str:
    """``nbytes`` as ``"12.3 GiB"`` (``"4.0 MiB"`` under 1 GiB)."""
    return f"{nbytes / 2 ** 30:.1f} GiB" if nbytes >= 2 ** 30 else f"{nbytes / 2 ** 20:.1f} MiB"


def shortfall(nbytes: int, device: str | torch.device = "cpu") -> str | None:
    """``"needs X GiB, more than the Y GiB of memory of this machine"`` when ``nbytes`` exceed
    :func:`machine_memory` of ``device``, else None."""
    have = machine_memory(device)
    if have is None or nbytes <= have:
        return None
    where = "this machine" if torch.device(
        "cpu" if str(device) == "auto" else device).type == "cpu" else f"device {device}"
    return f"needs {gib(nbytes)}, more than the {gib(have)} of memory of {where}"


def count_list_entries(obj: object) -> int:
    """The number of list entries in a nested JSON value (layer widths, activations, ...)."""
    if isinstance(obj, dict):
        return sum(count_list_entries(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return len(obj) + sum(count_list_entries(v) for v in obj if isinstance(v, (dict, list)))
    return 0


SIZE_FIELDS = ("latent_dim", "encoder_neurons", "decoder_neurons", "mi_neurons")


def check_training(config: Any, sample_shape: Sequence[int],
                   build: Callable[[Any, Sequence[int]], Any],
                   names: Mapping[str, str] | None = None) -> None:
    """A ValueError when training the model ``build(config, sample_shape)`` (``config`` a
    TrainConfig dataclass, ``build`` e.g. :func:`~infomax_ext.trainer.build_model`) needs more
    memory than its device has (:func:`training_bytes`, estimated on the meta device: nothing
    is allocated). The message starts with the size field to blame, as ``names`` calls it
    (e.g. ``{"mi_neurons": "--mi-neurons"}``; default the field name) with its value: the one
    whose default value would save the most, or the data's sample size when none would halve
    the estimate."""
    import dataclasses
    import math

    def need(cfg: Any) -> tuple[int, int]:
        model = on_meta(lambda: build(cfg, sample_shape))
        return training_bytes(model, model.mi), sum(p.numel() for p in model.parameters())

    total, n_params = need(config)
    short = shortfall(total, config.device)
    if short is None:
        return
    defaults, culprits = type(config)(), []
    for field in SIZE_FIELDS:
        value, default = getattr(config, field), getattr(defaults, field)
        if value != default:
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            name = (names or {}).get(field, field)
            culprits.append((need(dataclasses.replace(config, **{field: default}))[0],
                             f"{name} {shown}"))
    culprits.sort()
    what = culprits[0][1] if culprits and culprits[0][0] <= total / 2 else \
        f"the data's samples of {math.prod(sample_shape)} values"
    raise ValueError(f"{what}: training this model (about {n_params:,} parameters, with their "
                     f"gradients and Adam's two moments) {short}; choose smaller sizes")
