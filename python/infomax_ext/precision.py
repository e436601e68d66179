"""The precision policy of the compiled ops and their rules under ``torch.autocast``
(docs/precision.md).

dtypes: the ops take float32, float64, bfloat16 and float16 tensors, all of one dtype per call.
bfloat16 and float16 tensors are stored in their dtype and computed on in float32: the products
run in the input dtype as torch's own ``linear`` does (the BLAS accumulates in float32); the sums
of the first layer, the activations and their derivatives, ``exp`` and every reduction run in
float32, each result rounded to the input dtype once. Outputs (hidden activations, scores,
gradients) have the input dtype; the bound is float32 (:func:`bound_dtype`), so that
``exp(t - 1)`` of a float16 score near 15 (above float16's largest value 65504) stays finite,
and its incoming gradient is float32 too.

autocast: inside ``torch.autocast(device_type, dtype)`` (CPU: bfloat16 or float16; CUDA:
bfloat16 or float16) the ops that hold a product or a Linear layer (:data:`CAST_OPS`) cast their
float32 and reduced-precision inputs to the autocast dtype, as torch's autocast does for
``linear`` (float64 inputs are left alone, as torch leaves them); ``nwj_bound`` (a reduction)
casts its two score vectors to their common dtype only; the backward ops take their inputs as
they are. Each then runs with autocast off, so the products it calls inside use the dtypes it
was given. Registered once per op (:func:`register_autocast_rules`) at the ``AutocastCPU`` and
``AutocastCUDA`` dispatch keys, as ``torch.library.register_autocast`` does but with the autocast
dtype read at call time (which that function fixes per device); the Python wrappers of
the op modules (``*_op``), which call the autograd kernels directly in eager mode, cast the same
way first (:func:`autocast_inputs`), so the autograd nodes see the cast tensors and the
gradients reach the parameters in their own dtype through the casts.
"""
from __future__ import annotations

import collections.abc
from typing import Any, Callable

import torch

__all__ = [
    "KERNEL_DTYPES",
    "REDUCED_DTYPES",
    "CAST_OPS",
    "PROMOTE_OPS",
    "KEEP_OPS",
    "bound_dtype",
    "autocast_dtype",
    "autocast_inputs",
    "promoted_inputs",
    "register_autocast_rules",
]

KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
"""The dtypes the compiled kernels take."""

REDUCED_DTYPES = (torch.bfloat16, torch.float16)
"""Stored in 16 bits, computed on in float32."""

CAST_OPS = ("paired_first_layer", "paired_linear", "paired_linear_forward", "critic_head",
            "critic_mlp", "critic_mlp_forward")
"""Under autocast: float32, bfloat16 and float16 inputs cast to the autocast dtype."""

PROMOTE_OPS = ("nwj_bound",)
"""Under autocast: the floating inputs cast to their common (widest) dtype."""

KEEP_OPS = ("nwj_bound_backward", "paired_first_layer_backward", "paired_linear_backward",
            "critic_head_backward", "critic_mlp_backward", "linear_grads", "mm_pair")
"""Under autocast: inputs as they are (the forward fixed their dtypes), autocast off inside."""

_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


def bound_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the bound the ops return for scores of ``dtype``: float32 for bfloat16 and
    float16, ``dtype`` itself for float32 and float64."""
    return torch.float32 if dtype in REDUCED_DTYPES else dtype


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs products in on ``device_type`` now, None when autocast
    is off there."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _cast(value: Any, device_type: str, dtype: torch.dtype, keep_float64: bool = True) -> Any:
    """``value`` with each floating tensor on ``device_type`` cast to ``dtype`` (inside lists and
    tuples too); float64 ones kept with ``keep_float64``, as torch's autocast keeps them."""
    if isinstance(value, torch.Tensor):
        eligible = (value.is_floating_point() and value.device.type == device_type
                    and value.dtype is not dtype
                    and not (keep_float64 and value.dtype is torch.float64))
        return value.to(dtype) if eligible else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, device_type, dtype, keep_float64) for v in value)
    return value


def autocast_inputs(device_type: str, *values: Any) -> tuple[Any, ...]:
    """``values`` cast for a :data:`CAST_OPS` op under the autocast of ``device_type`` (as they
    are when autocast is off there)."""
    dtype = autocast_dtype(device_type)
    if dtype is None:
        return values
    return tuple(_cast(v, device_type, dtype) for v in values)


def _tensors(values: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for v in values:
        if isinstance(v, torch.Tensor):
            found.append(v)
        elif isinstance(v, collections.abc.Sequence) and not isinstance(v, (str, bytes)):
            found.extend(_tensors(v))
    return found


def promoted_inputs(device_type: str, *values: Any) -> tuple[Any, ...]:
    """``values`` with their floating tensors cast to the widest dtype among them (a
    :data:`PROMOTE_OPS` op under autocast)."""
    floats = [t for t in _tensors(values) if t.is_floating_point()]
    if not floats:
        return values
    widest = floats[0].dtype
    for t in floats[1:]:
        widest = torch.promote_types(widest, t.dtype)
    return tuple(_cast(v, device_type, widest, keep_float64=False) for v in values)


# Kept alive for as long as the module: dropping a Library removes its registrations.
_LIBRARY: torch.library.Library | None = None


def _rule(op: Any, device_type: str, key: Any, policy: str) -> Callable[..., Any]:
    """The autocast kernel of ``op``: inputs cast by ``policy``, then the op with autocast off
    on this device."""

    def run(*args: Any) -> Any:
        if policy == "cast":
            args = autocast_inputs(device_type, *args)
        elif policy == "promote":
            args = promoted_inputs(device_type, *args)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args)

    return run


def register_autocast_rules() -> None:
    """Registers the autocast kernels of every op of :data:`CAST_OPS`, :data:`PROMOTE_OPS` and
    :data:`KEEP_OPS`, on the CPU and CUDA autocast keys (once; the compiled module must be
    loaded). Both as a dispatcher kernel (eager calls of ``torch.ops.infomax_ext.*``) and as a
    Python-dispatcher kernel (the tracing of ``torch.compile``), as
    ``torch.library.register_autocast`` does."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    library = torch.library.Library("infomax_ext", "IMPL")
    policies = ([(name, "cast") for name in CAST_OPS] + [(name, "promote") for name in PROMOTE_OPS]
                + [(name, "keep") for name in KEEP_OPS])
    for name, policy in policies:
        op = getattr(torch.ops.infomax_ext, name).default
        for device_type, key_name in _AUTOCAST_KEYS.items():
            key = getattr(torch._C.DispatchKey, key_name)
            run = _rule(op, device_type, key, policy)
            if op.has_kernel_for_dispatch_key(key) and key in op.py_kernels:
                op.py_kernels.pop(key)
            op.py_impl(key)(run)
            library.impl(name, _with_keyset(run), key_name, with_keyset=True)
    _LIBRARY = library


def _with_keyset(run: Callable[..., Any]) -> Callable[..., Any]:
    def kernel(_keyset: Any, *args: Any) -> Any:
        return run(*args)

    return kernel
