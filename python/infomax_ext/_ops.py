"""The core every op module imports: loading the compiled ops, the evaluation path switch, the
checks shared by the op wrappers and their fake kernels, and the seeded permutation ops.

``import infomax_ext`` imports this module, which loads ``infomax_ext._C`` (running the
``STABLE_TORCH_LIBRARY`` registrations). Each op's Python wrapper, fake kernels and autograd
formula live in one module of their own (``paired_first_layer_op``, ``paired_linear_op``,
``critic_head_op``, ``nwj_bound_op``, ``critic_mlp_op``, ``bound_op``; the one-node chain in
``critic_chain_op``), which ``import infomax_ext`` imports. When the compiled module cannot
load, every op wrapper runs its plain-PyTorch twin from :mod:`infomax_ext.reference` instead and
a warning says why and what to install, once (``INFOMAX_EXT_REQUIRE_COMPILED=1`` makes it an
ImportError). :func:`extension_available` and :func:`backend` tell which path is active.
:func:`use_path` is the one switch that chooses how the MI bound is evaluated (fused kernels,
joint graph, two calls, reference ops).
"""
from __future__ import annotations

import contextlib
import contextvars
import operator
import os
import threading
import warnings
from typing import Any, Callable, Iterable, Iterator

import torch

from . import precision, reference
from .build_info import load_failure_message

__all__ = [
    "extension_available",
    "extension_error",
    "backend",
    "has_kernel",
    "kernels_apply",
    "PATHS",
    "use_path",
    "current_path",
    "use_reference_path",
    "seed_to_int64",
    "permutation_keys",
    "seeded_permutation",
    "inverse_permutation",
]

COMPILED_OPS = (
    "permutation_keys", "inverse_permutation",
    "paired_first_layer", "paired_first_layer_backward",
    "paired_linear", "paired_linear_forward", "paired_linear_backward",
    "critic_head", "critic_head_backward",
    "critic_mlp", "critic_mlp_forward", "critic_mlp_backward",
    "critic_chain_forward", "critic_chain_backward", "linear_grads", "mm_pair",
    "nwj_bound", "nwj_bound_backward",
    "mi_bound", "mi_bound_backward",
    "infonce_rows", "infonce_rows_backward",
    "bernoulli_loglik", "bernoulli_loglik_backward",
)
"""Every op ``infomax_ext._C`` defines (csrc/ops.cpp): a build that lacks one (stale) counts as
not loaded, before the op modules register their formulas on it."""


def _check_compiled_ops() -> None:
    missing = [op for op in COMPILED_OPS if not hasattr(torch.ops.infomax_ext, op)]
    if missing:
        raise ImportError(f"infomax_ext._C lacks the ops {', '.join(missing)} (a build older "
                          "than this Python package: rebuild or reinstall it)")


_LOAD_ERROR: str | None = None
try:
    from . import _C  # noqa: F401  (registers torch.ops.infomax_ext.*)
    _check_compiled_ops()
except Exception as exc:  # ImportError, or an OSError from a missing libtorch symbol
    _LOAD_ERROR = load_failure_message(exc)
    if os.environ.get("INFOMAX_EXT_REQUIRE_COMPILED", "") not in ("", "0"):
        raise ImportError(
            f"infomax_ext: INFOMAX_EXT_REQUIRE_COMPILED is set and {_LOAD_ERROR}"
        ) from exc
    warnings.warn(
        "infomax_ext: the compiled extension could not be loaded, so the pure-PyTorch path is "
        f"used (correct, but slower). {_LOAD_ERROR} Set INFOMAX_EXT_REQUIRE_COMPILED=1 to make "
        "this an error.",
        RuntimeWarning,
        stacklevel=2,
    )

_FLOAT_TYPES = precision.KERNEL_DTYPES
if _LOAD_ERROR is None:
    precision.register_autocast_rules()


def extension_available() -> bool:
    """True when the compiled ops of ``infomax_ext._C`` are loaded."""
    return _LOAD_ERROR is None


def extension_error() -> str | None:
    """Why the compiled module did not load, or None when it did."""
    return _LOAD_ERROR


def has_kernel(op: str, device_type: str) -> bool:
    """True when ``torch.ops.infomax_ext.<op>`` has a kernel for ``device_type`` ('cpu', 'cuda')."""
    if not extension_available():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"infomax_ext::{op}", device_type.upper())


def backend(device: torch.device | str = "cpu") -> str:
    """'compiled' when the fused kernels serve ``device`` here, else 'reference' (plain PyTorch):
    'reference' also inside :func:`use_reference_path`."""
    device_type = torch.device(device).type
    if _reference_path_active() or not has_kernel("paired_first_layer", device_type):
        return "reference"
    return "compiled"


def _kernel_devices() -> frozenset[str]:
    return frozenset(d for d in ("cpu", "cuda") if has_kernel("paired_first_layer", d))


# Computed once: a plain set lookup is all torch.compile has to trace in kernels_apply.
_KERNEL_DEVICES = _kernel_devices()

PATHS = ("auto", "fused", "two_call", "reference")
"""The evaluation paths :func:`use_path` chooses among (see there)."""

# use_path() sets this in the current context only: other threads (and asyncio tasks) keep their
# own choice.
_PATH: contextvars.ContextVar[str] = contextvars.ContextVar("infomax_ext_path", default="auto")
# The choice as torch.compile sees it: dynamo cannot trace ContextVar.get, but it traces an
# attribute of a threading.local and guards on it per thread, so a function compiled outside any
# context recompiles inside one (and back). ``path`` is present only while a context is open in
# this thread (code compiled outside keeps its guards), the innermost still open; ``entries``
# holds the open ones. Per thread, not per asyncio task: compiled code in a task follows the
# choice of another task of its thread that is inside a context (every path computes the same
# values; only speed and double backward differ).
_TRACED_CHOICE = threading.local()


def current_path() -> str:
    """The evaluation path chosen in this context: the innermost :func:`use_path`, else 'auto'."""
    if torch.compiler.is_compiling():
        return getattr(_TRACED_CHOICE, "path", "auto")
    return _PATH.get()


def _reference_path_active() -> bool:
    return current_path() == "reference"


@contextlib.contextmanager
def use_path(path: str) -> Iterator[None]:
    """Inside: the MI bound (:func:`~infomax_ext.paired_mutual_info` and everything built on it:
    the losses, ``train_step``, ``variational_mutual_info``) is evaluated on ``path``:

    - ``"auto"`` (the default): the shared evaluation with the fused kernels; when no gradient
      can flow from the shuffled scores (the VAE step of ``train_step``), the joint-graph
      evaluation (only the joint rows build a graph); two calls for a chain that cannot be split
      (first MLP layer not a Linear, an activation the kernels do not run, batch-coupled layers);
    - ``"fused"``: as ``"auto"`` but never the joint-graph evaluation: both halves through the
      fused ops;
    - ``"two_call"``: every chain as two plain calls ``T(x, z)``, ``T(x, z_shuffle)``;
    - ``"reference"``: as ``"auto"``, with every op on its plain-PyTorch twin
      (:mod:`infomax_ext.reference`), as when the extension is not built; :func:`backend` says
      'reference'. For second derivatives (the fused ops' backward has none of its own) and for
      debugging. :func:`use_reference_path` is this path.

    All give the same values and gradients up to rounding. Context-local: other threads and
    asyncio tasks are unaffected; nested contexts work (the innermost applies). Code compiled by
    torch.compile follows the choice per thread."""
    if path not in PATHS:
        raise ValueError(f"unknown evaluation path {path!r}; known: {', '.join(PATHS)}")
    token = _PATH.set(path)
    entry = (path, object())  # this context's own entry, removed on exit whatever the order
    entries = _TRACED_CHOICE.__dict__.setdefault("entries", [])
    entries.append(entry)
    _TRACED_CHOICE.path = path
    try:
        yield
    finally:
        _close_traced_entry(entry)
        _PATH.reset(token)


def _close_traced_entry(entry: tuple[str, object]) -> None:
    entries = _TRACED_CHOICE.__dict__.setdefault("entries", [])
    if entry in entries:  # not when the context is left in another thread than it was entered
        entries.remove(entry)
    if entries:
        _TRACED_CHOICE.path = entries[-1][0]
    elif hasattr(_TRACED_CHOICE, "path"):  # absent again: code compiled outside keeps its guards
        del _TRACED_CHOICE.path


def use_reference_path() -> contextlib.AbstractContextManager[None]:
    """``use_path("reference")``: inside, every op runs its plain-PyTorch twin
    (:mod:`infomax_ext.reference`), as when the extension is not built, and :func:`backend` says
    'reference'. For second derivatives (the fused ops' backward has none of its own) and for
    debugging. Context-local; nesting works (see :func:`use_path`)."""
    return use_path("reference")


def _kernels_serve(device_type: str) -> bool:
    return device_type in _KERNEL_DEVICES and not _reference_path_active()


def kernels_apply(*tensors: torch.Tensor | None) -> bool:
    """True when the compiled kernels can run on these tensors (loaded, float32/64, bfloat16 or
    float16, a device with kernels, not inside :func:`use_reference_path`; ``torch.autocast`` is
    served: :mod:`infomax_ext.precision`; no ``torch.func`` transform (grad, vmap, jacrev, ...)
    and no ``torch.jit.trace`` active: the kernels' autograd has no rules for the transforms and
    a trace cannot record their arguments). Otherwise callers take the reference path."""
    present = [t for t in tensors if t is not None]
    if not present or (not torch.compiler.is_compiling() and (
            torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]
            or torch._C._functorch.peek_interpreter_stack() is not None)):
        return False
    device_type = present[0].device.type
    if not _kernels_serve(device_type):
        return False
    return all(t.dtype in _FLOAT_TYPES for t in present if t.is_floating_point())


def full_precision_test(op: str) -> Callable[[torch.Tensor, torch.Tensor], bool]:
    """The ``kernel_applies`` test of ``torch.ops.infomax_ext.<op>`` for the ops whose kernels
    take two score tensors of float32 or float64 (``mi_bound``, ``infonce_rows``): both of one
    dtype, on a device with the op's kernel, and :func:`kernels_apply`. The devices are found
    once, here: a set lookup is all torch.compile has to trace."""
    devices = frozenset(d for d in ("cpu", "cuda") if has_kernel(op, d))

    def applies(a: torch.Tensor, b: torch.Tensor) -> bool:
        return (a.device.type in devices and a.dtype == b.dtype
                and a.dtype in (torch.float32, torch.float64)  # not bfloat16, float16
                and kernels_apply(a, b))

    return applies


def _check_args(op: str, **named: object) -> None:
    """Before any work: every named argument is a tensor (or None) and all are on one device
    (TypeError / ValueError naming the argument)."""
    first = None
    for name, value in named.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
        if first is None:
            first = name, value.device
        elif value.device != first[1]:
            raise ValueError(f"{op}: device mismatch: {name} is on {value.device} but {first[0]} "
                             f"is on {first[1]}")


def _fake_same_device(op: str, **named: torch.Tensor | None) -> None:
    """The fake kernels' device check. A call whose tensors mix devices, one of them ``meta``,
    dispatches to the fake kernel: without this check it would return uninitialised memory."""
    present = [(name, t) for name, t in named.items() if t is not None]
    first_name, first = present[0]
    for name, t in present[1:]:
        torch._check(t.device == first.device, lambda: (
            f"infomax_ext: device mismatch in {op}: {name} is on {t.device} but {first_name} is "
            f"on {first.device}"))


def _listed(name: str, tensors: Iterable[torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    """``{"name[i]": tensor}`` for the fake kernels' device check of a list argument."""
    return {f"{name}[{i}]": t for i, t in enumerate(tensors)}


def _as_integer(value: Any, name: str) -> int:
    """``value`` as a Python int (ints, numpy integers, integer 0-dim tensors); a TypeError
    naming ``name`` for anything else, floats and bools included (never truncated)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool ({value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer, got {type(value).__name__} ({value!r})") from None


def seed_to_int64(seed: int) -> int:
    """A seed reduced modulo 2**64 and stored as a signed 64-bit integer (the op's ``int``).
    Integers only: a float such as 1.5 is refused (TypeError), never truncated."""
    seed = _as_integer(seed, "seed") & ((1 << 64) - 1)
    return seed - (1 << 64) if seed >= (1 << 63) else seed


# ----------------------------------------------------------------------------------------------
# Permutation
# ----------------------------------------------------------------------------------------------


def permutation_keys(index: torch.Tensor, seed: int) -> torch.Tensor:
    """63-bit counter-based keys of the int64 ``index`` under ``seed`` (same shape as ``index``)."""
    _check_args("permutation_keys", index=index)
    if _kernels_serve(index.device.type):
        return torch.ops.infomax_ext.permutation_keys.default(index, seed_to_int64(seed))
    return reference.permutation_keys(index, seed_to_int64(seed))


def seeded_permutation(n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The permutation of ``range(n)`` (int64, shape (n,)) for ``seed``: a stable argsort of
    counter-based keys, so every device gives the same permutation for the same seed."""
    n = _as_integer(n, "n")
    if n < 1:
        raise ValueError(f"cannot permute {n} rows")
    keys = permutation_keys(torch.arange(n, device=device), seed)
    return torch.argsort(keys, stable=True)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[perm[i]] = i``; raises when ``perm`` is not a permutation of range(n)."""
    _check_args("inverse_permutation", perm=perm)
    if _kernels_serve(perm.device.type):
        return torch.ops.infomax_ext.inverse_permutation.default(perm)
    return reference.inverse_permutation(perm)


if extension_available():

    @torch.library.register_fake("infomax_ext::permutation_keys")
    def _(index: torch.Tensor, seed: int) -> torch.Tensor:
        return torch.empty_like(index)

    @torch.library.register_fake("infomax_ext::inverse_permutation")
    def _(perm: torch.Tensor) -> torch.Tensor:
        torch._check(perm.dim() == 1, lambda: "perm must be 1-D")
        return torch.empty_like(perm)

