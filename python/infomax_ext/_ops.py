"""Typed Python entry points of the compiled ops, their fake kernels and autograd formulas.

``import infomax_ext`` imports this module, which loads ``infomax_ext._C`` (running the
``STABLE_TORCH_LIBRARY`` registrations) and :mod:`infomax_ext._autograd` (the ops' autograd
formulas). When the compiled module cannot load, every function here runs its plain-PyTorch
twin from :mod:`infomax_ext.reference` instead and a warning says why and what to install, once
(``INFOMAX_EXT_REQUIRE_COMPILED=1`` makes it an ImportError). :func:`extension_available` and
:func:`backend` tell which path is active. :func:`use_path` is the one switch that chooses
how the MI bound is evaluated (fused kernels, joint graph, two calls, reference ops).
"""
from __future__ import annotations

import contextlib
import contextvars
import operator
import os
import threading
import warnings
from typing import Any, Iterable, Iterator, Sequence

import torch

from . import precision, reference
from .activations import OUTPUT_DERIVATIVE_ACTIVATIONS
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
    "paired_first_layer",
    "paired_linear",
    "critic_head",
    "critic_mlp",
    "nwj_bound",
]

_LOAD_ERROR: str | None = None
try:
    from . import _C  # noqa: F401  (registers torch.ops.infomax_ext.*)
    from . import _autograd  # their autograd formulas and paired_linear
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


# ----------------------------------------------------------------------------------------------
# Paired first layer
# ----------------------------------------------------------------------------------------------


def paired_first_layer(
    data_half: torch.Tensor,
    latent_half: torch.Tensor,
    shuffled_half: torch.Tensor | None,
    bias: torch.Tensor,
    perm: torch.Tensor,
    activation: str = "identity",
    param: float = 0.0,
) -> torch.Tensor:
    """First MLP layer of the MI chain for joint and shuffled pairs in one pass.

    ``data_half`` (N, H) is ``data(x) @ Wx.T``, ``latent_half`` (M, H) with M = S N is
    ``latent(z) @ Wz.T``, ``bias`` (H,), ``perm`` (M,) int64. Returns (2M, H): rows ``r < M`` are
    ``act(data_half[r % N] + latent_half[r] + bias)`` and rows ``M + r`` are
    ``act(data_half[r % N] + source[perm[r]] + bias)``, where ``source`` is ``shuffled_half``
    or, when None, ``latent_half`` (then the shuffled rows' gradient flows back into
    ``latent_half`` through the inverse permutation). The shuffled rows are never copied.
    """
    _check_args("paired_first_layer", data_half=data_half, latent_half=latent_half,
                shuffled_half=shuffled_half, bias=bias, perm=perm)
    if kernels_apply(data_half, latent_half, shuffled_half, bias):
        return _autograd.differentiable["paired_first_layer"](*precision.autocast_inputs(
            data_half.device.type, data_half, latent_half, shuffled_half, bias), perm,
            activation, float(param))
    return reference.paired_first_layer(
        data_half, latent_half, shuffled_half, bias, perm, activation, param
    )


def paired_linear(
    hx: torch.Tensor,
    hz: torch.Tensor,
    hz_shuffled: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    perm: torch.Tensor,
    activation: str = "identity",
    param: float = 0.0,
    data_half: torch.Tensor | None = None,
) -> torch.Tensor:
    """The MI chain's first Linear layer on joint and shuffled pairs, one op and one autograd node.

    ``hx`` (N, Dx) = data(x), ``hz`` (M, Dz) = latent(z) with M = S N, ``weight`` (H, Dx + Dz),
    ``bias`` (H,) or None, ``perm`` (M,) int64. Returns (2M, H): joint row r is
    ``act(W [hx[r % N]; hz[r]] + b)``, shuffled row r is ``act(W [hx[r % N]; src[perm[r]]] + b)``
    with ``src = hz_shuffled`` or, when None, ``hz``. The weight is split into its data and latent
    columns: ``hx Wx^T`` is computed once for both halves, the shuffled rows are never copied, and
    the backward writes the weight gradient into one buffer. ``data_half`` (N, H), when given, is
    ``hx @ weight[:, :Dx].T`` computed earlier (a constant that saves that product; gradients are
    unchanged).
    """
    _check_args("paired_linear", hx=hx, hz=hz, hz_shuffled=hz_shuffled, weight=weight, bias=bias,
                perm=perm, data_half=data_half)
    if kernels_apply(hx, hz, hz_shuffled, weight, bias, data_half):
        hx, hz, hz_shuffled, weight, bias, data_half = precision.autocast_inputs(
            hx.device.type, hx, hz, hz_shuffled, weight, bias, data_half)
        if data_half is not None and data_half.dtype != hx.dtype:
            data_half = None  # kept from a call in another precision: computed again instead
        return _autograd.differentiable["paired_linear"](
            hx, hz, hz_shuffled, weight, bias, perm, activation, float(param), data_half
        )
    return reference.paired_linear(hx, hz, hz_shuffled, weight, bias, perm, activation, param,
                                   data_half)


if extension_available():

    @torch.library.register_fake("infomax_ext::paired_first_layer")
    def _(data_half: torch.Tensor, latent_half: torch.Tensor, shuffled_half: torch.Tensor | None,
          bias: torch.Tensor, perm: torch.Tensor, activation: str, param: float) -> torch.Tensor:
        _fake_same_device("paired_first_layer", data_half=data_half, latent_half=latent_half,
                          shuffled_half=shuffled_half, bias=bias, perm=perm)
        torch._check(data_half.dim() == 2 and latent_half.dim() == 2, lambda: "halves must be 2-D")
        torch._check(data_half.shape[1] == latent_half.shape[1], lambda: "half widths differ")
        return data_half.new_empty((2 * latent_half.shape[0], data_half.shape[1]))

    @torch.library.register_fake("infomax_ext::paired_first_layer_backward")
    def _(grad_out: torch.Tensor, data_half: torch.Tensor, latent_half: torch.Tensor,
          shuffled_half: torch.Tensor | None, bias: torch.Tensor, perm: torch.Tensor,
          inverse_perm: torch.Tensor, activation: str, param: float,
          output_mask: Sequence[bool]) -> tuple[torch.Tensor, ...]:
        _fake_same_device("paired_first_layer_backward", data_half=data_half, grad_out=grad_out,
                          latent_half=latent_half, shuffled_half=shuffled_half, bias=bias,
                          perm=perm, inverse_perm=inverse_perm)
        has_source = shuffled_half is not None

        def grad(wanted: bool, like: torch.Tensor) -> torch.Tensor:
            return like.new_empty(like.shape) if wanted else data_half.new_empty((0,))

        return (
            grad(output_mask[0], data_half),
            grad(output_mask[1], latent_half),
            grad(output_mask[2] and has_source, latent_half),
            grad(output_mask[3], bias),
        )

    @torch.library.register_fake("infomax_ext::paired_linear")
    def _(hx: torch.Tensor, hz: torch.Tensor, hz_shuffled: torch.Tensor | None, weight: torch.Tensor,
          bias: torch.Tensor | None, perm: torch.Tensor, activation: str, param: float,
          data_half: torch.Tensor | None = None) -> Any:
        _fake_same_device("paired_linear", hx=hx, hz=hz, hz_shuffled=hz_shuffled, weight=weight,
                          bias=bias, perm=perm, data_half=data_half)
        torch._check(hx.dim() == 2 and hz.dim() == 2 and weight.dim() == 2,
                     lambda: "hx, hz and weight must be 2-D")
        torch._check(weight.shape[1] == hx.shape[1] + hz.shape[1],
                     lambda: "the weight's width is not hx's plus hz's")
        return hx.new_empty((2 * hz.shape[0], weight.shape[0]))

    @torch.library.register_fake("infomax_ext::paired_linear_forward")
    def _(hx: torch.Tensor, hz: torch.Tensor, hz_shuffled: torch.Tensor | None, weight: torch.Tensor,
          bias: torch.Tensor | None, perm: torch.Tensor, activation: str, param: float,
          data_half: torch.Tensor | None = None) -> Any:
        out = torch.ops.infomax_ext.paired_linear.default(
            hx, hz, hz_shuffled, weight, bias, perm, activation, param, data_half)
        units = weight.shape[0]
        return (
            out,
            hx.new_empty((0,) if data_half is not None else (hx.shape[0], units)),
            hx.new_empty((hz.shape[0], units)),
            hx.new_empty((0,) if hz_shuffled is None else (hz.shape[0], units)),
        )

    @torch.library.register_fake("infomax_ext::paired_linear_backward")
    def _(grad_out: torch.Tensor, hx: torch.Tensor, hz: torch.Tensor,
          hz_shuffled: torch.Tensor | None, weight: torch.Tensor, data_half: torch.Tensor | None,
          latent_half: torch.Tensor | None, shuffled_half: torch.Tensor | None,
          bias: torch.Tensor | None, perm: torch.Tensor, activation: str, param: float,
          output_mask: Sequence[bool],
          out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        _fake_same_device("paired_linear_backward", grad_out=grad_out, hx=hx, hz=hz,
                          hz_shuffled=hz_shuffled, weight=weight, bias=bias, perm=perm, out=out)

        def grad(wanted: bool, like: torch.Tensor) -> torch.Tensor:
            return like.new_empty(like.shape) if wanted else hx.new_empty((0,))

        # the kernel's (M, Dz) gradients are transposed (Dz, M) products
        def narrow_grad(wanted: bool) -> torch.Tensor:
            return hz.new_empty((hz.shape[1], hz.shape[0])).t() if wanted else hx.new_empty((0,))

        return (grad(output_mask[0], hx), narrow_grad(output_mask[1]),
                narrow_grad(output_mask[2] and hz_shuffled is not None), grad(output_mask[3], weight),
                grad(output_mask[4], weight.new_empty((weight.shape[0],))))


# ----------------------------------------------------------------------------------------------
# NWJ bound, alone and fused with the last layer
# ----------------------------------------------------------------------------------------------


def nwj_bound(t_joint: torch.Tensor, t_shuffled: torch.Tensor) -> torch.Tensor:
    """NWJ lower bound ``mean(t_joint) - mean(exp(t_shuffled - 1))`` (a 0-dim tensor; float32 for
    bfloat16 and float16 scores: :mod:`infomax_ext.precision`).

    ``t_joint`` (N,) are a critic's scores on joint pairs, ``t_shuffled`` (M,) on shuffled pairs.
    For users who bring their own critic."""
    _check_args("nwj_bound", t_joint=t_joint, t_shuffled=t_shuffled)
    if t_joint.dim() != 1 or t_shuffled.dim() != 1:
        raise ValueError(
            f"nwj_bound takes 1-D score tensors, got shapes {tuple(t_joint.shape)} and "
            f"{tuple(t_shuffled.shape)}"
        )
    if t_joint.numel() < 1 or t_shuffled.numel() < 1:
        raise ValueError("nwj_bound needs at least one joint and one shuffled score")
    if kernels_apply(t_joint, t_shuffled):  # two dtypes: both cast to the wider, as torch promotes
        return _autograd.differentiable["nwj_bound"](
            *precision.promoted_inputs(t_joint.device.type, t_joint, t_shuffled))
    return reference.nwj_bound(t_joint, t_shuffled)


def critic_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    n_joint: int,
    activation: str = "identity",
    param: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MI chain's last layer ``t = act(hidden @ weight + bias)`` fused with the NWJ bound.

    ``hidden`` (R, h) holds joint rows ``[0, n_joint)`` then shuffled rows; ``weight`` (h,);
    ``bias`` (1,) or None. Returns ``(bound, scores)``: the 0-dim bound
    ``mean(t[:n_joint]) - mean(exp(t[n_joint:] - 1))`` and the (R,) scores."""
    _check_args("critic_head", hidden=hidden, weight=weight, bias=bias)
    if kernels_apply(hidden, weight, bias):
        bound, scores, _pre = _autograd.differentiable["critic_head"](*precision.autocast_inputs(
            hidden.device.type, hidden, weight, bias), n_joint, activation, float(param))
        return bound, scores
    return reference.critic_head(hidden, weight, bias, n_joint, activation, param)


if extension_available():

    @torch.library.register_fake("infomax_ext::nwj_bound")
    def _(t_joint: torch.Tensor, t_shuffled: torch.Tensor) -> torch.Tensor:
        _fake_same_device("nwj_bound", t_joint=t_joint, t_shuffled=t_shuffled)
        return t_joint.new_empty((), dtype=precision.bound_dtype(t_joint.dtype))

    @torch.library.register_fake("infomax_ext::nwj_bound_backward")
    def _(grad: torch.Tensor, t_joint: torch.Tensor,
          t_shuffled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _fake_same_device("nwj_bound_backward", t_joint=t_joint, t_shuffled=t_shuffled, grad=grad)
        return torch.empty_like(t_joint), torch.empty_like(t_shuffled)

    @torch.library.register_fake("infomax_ext::critic_head")
    def _(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, n_joint: int,
          activation: str, param: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _fake_same_device("critic_head", hidden=hidden, weight=weight, bias=bias)
        rows = hidden.shape[0]
        return (hidden.new_empty((), dtype=precision.bound_dtype(hidden.dtype)),
                hidden.new_empty((rows,)), hidden.new_empty((rows,)))

    @torch.library.register_fake("infomax_ext::critic_head_backward")
    def _(grad_bound: torch.Tensor, grad_scores: torch.Tensor | None, hidden: torch.Tensor,
          weight: torch.Tensor, scores: torch.Tensor, pre: torch.Tensor, n_joint: int,
          activation: str, param: float,
          output_mask: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _fake_same_device("critic_head_backward", hidden=hidden, weight=weight, scores=scores,
                          pre=pre, grad_bound=grad_bound, grad_scores=grad_scores)
        return (
            hidden.new_empty(hidden.shape) if output_mask[0] else hidden.new_empty((0,)),
            weight.new_empty(weight.shape) if output_mask[1] else hidden.new_empty((0,)),
            hidden.new_empty((1,)) if output_mask[2] else hidden.new_empty((0,)),
        )


# ----------------------------------------------------------------------------------------------
# The chain after its first layer, with the NWJ head
# ----------------------------------------------------------------------------------------------


def critic_mlp(
    hidden: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    activations: Sequence[str],
    params: Sequence[float],
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    n_joint: int,
    head_activation: str = "identity",
    head_param: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MI chain after its paired first layer, one op and one autograd node: the hidden
    Linear layers and the last layer fused with the NWJ bound.

    ``hidden`` (R, H_0) holds joint rows ``[0, n_joint)`` then as many shuffled rows; layer l is
    ``h = act_l(h @ weights[l].T + biases[l])`` with ``weights[l]`` (H_{l+1}, H_l), ``biases[l]``
    (H_{l+1},) or None, ``activations[l]`` (a name of :data:`~infomax_ext.activations.ACTIVATIONS`)
    and ``params[l]``; then ``t = head_act(h @ head_weight + head_bias)`` with ``head_weight``
    (H_L,), ``head_bias`` (1,) or None. Returns ``(bound, scores)``: the 0-dim bound
    ``mean(t[:n_joint]) - mean(exp(t[n_joint:] - 1))`` and the (R,) scores. The backward computes
    every gradient in one call (the activation derivative applied in the pass that sums each bias
    gradient); on the CPU in float32 the products run on oneDNN with bias and ReLU fused.
    """
    weights, biases = list(weights), list(biases)
    activations, params = [str(a) for a in activations], [float(p) for p in params]
    named = {"hidden": hidden, "head_weight": head_weight, "head_bias": head_bias}
    named.update({f"weights[{i}]": w for i, w in enumerate(weights)})
    named.update({f"biases[{i}]": b for i, b in enumerate(biases)})
    _check_args("critic_mlp", **named)
    if not len(weights) == len(biases) == len(activations) == len(params):
        raise ValueError(
            f"critic_mlp takes one bias, activation and parameter per weight: got {len(weights)} "
            f"weights, {len(biases)} biases, {len(activations)} activations and {len(params)} "
            "parameters")
    if kernels_apply(hidden, head_weight, head_bias, *weights, *biases):
        hidden, weights, biases, head_weight, head_bias = precision.autocast_inputs(
            hidden.device.type, hidden, weights, biases, head_weight, head_bias)
        return _autograd.critic_mlp(hidden, weights, biases, activations, params, head_weight,
                                 head_bias, n_joint, head_activation, float(head_param))
    return reference.critic_mlp(hidden, weights, biases, activations, params, head_weight, head_bias,
                             n_joint, head_activation, head_param)


def _listed(name: str, tensors: Iterable[torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    """``{"name[i]": tensor}`` for the fake kernels' device check of a list argument."""
    return {f"{name}[{i}]": t for i, t in enumerate(tensors)}


if extension_available():

    @torch.library.register_fake("infomax_ext::critic_mlp")
    def _(hidden: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor | None],
          activations: list[str], params: list[float], head_weight: torch.Tensor,
          head_bias: torch.Tensor | None, n_joint: int, head_activation: str,
          head_param: float) -> Any:
        _fake_same_device("critic_mlp", hidden=hidden, head_weight=head_weight, head_bias=head_bias,
                          **_listed("weights", weights), **_listed("biases", biases))
        torch._check(hidden.dim() == 2, lambda: "hidden must be 2-D")
        return (hidden.new_empty((), dtype=precision.bound_dtype(hidden.dtype)),
                hidden.new_empty((hidden.shape[0],)))

    @torch.library.register_fake("infomax_ext::critic_mlp_forward")
    def _(hidden: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor | None],
          activations: list[str], params: list[float], head_weight: torch.Tensor,
          head_bias: torch.Tensor | None, n_joint: int, head_activation: str,
          head_param: float) -> Any:
        bound, scores = torch.ops.infomax_ext.critic_mlp.default(
            hidden, weights, biases, activations, params, head_weight, head_bias, n_joint,
            head_activation, head_param)
        rows = hidden.shape[0]
        outputs = [hidden.new_empty((rows, w.shape[0])) for w in weights]
        pres = [hidden.new_empty((0,)) if a in OUTPUT_DERIVATIVE_ACTIVATIONS else hidden.new_empty(o.shape)
                for a, o in zip(activations, outputs)]
        return bound, scores, outputs, pres + [hidden.new_empty((rows,))]

    @torch.library.register_fake("infomax_ext::critic_mlp_backward")
    def _(grad_bound: torch.Tensor, grad_scores: torch.Tensor | None, hidden: torch.Tensor,
          weights: list[torch.Tensor], biases: list[torch.Tensor | None], activations: list[str],
          params: list[float], head_weight: torch.Tensor, head_bias: torch.Tensor | None,
          scores: torch.Tensor, outputs: list[torch.Tensor], pres: list[torch.Tensor], n_joint: int,
          head_activation: str, head_param: float, output_mask: Sequence[bool]) -> Any:
        _fake_same_device("critic_mlp_backward", hidden=hidden, head_weight=head_weight,
                          head_bias=head_bias, scores=scores, grad_bound=grad_bound,
                          grad_scores=grad_scores, **_listed("weights", weights),
                          **_listed("biases", biases), **_listed("outputs", outputs),
                          **_listed("pres", pres))
        layers = len(weights)

        def grad(wanted: bool, shape: Sequence[int]) -> torch.Tensor:
            return hidden.new_empty(shape) if wanted else hidden.new_empty((0,))

        return (
            grad(output_mask[0], hidden.shape),
            [grad(output_mask[1 + i], w.shape) for i, w in enumerate(weights)],
            [grad(output_mask[1 + layers + i], (w.shape[0],)) for i, w in enumerate(weights)],
            grad(output_mask[1 + 2 * layers], head_weight.shape),
            grad(output_mask[2 + 2 * layers], (1,)),
        )
