"""Typed Python entry points of the compiled ops, their fake kernels and autograd formulas.

``import infomax_ext`` imports this module, which loads ``infomax_ext._C`` (running the
``STABLE_TORCH_LIBRARY`` registrations) and :mod:`infomax_ext._autograd` (the ops' autograd
formulas). When the compiled module cannot load, every function here runs its plain-PyTorch
twin from :mod:`infomax_ext.reference` instead and a warning says why and what to install, once
(``INFOMAX_EXT_REQUIRE_COMPILED=1`` makes it an ImportError). :func:`extension_available` and
:func:`backend` tell which path is active.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import torch

from . import reference
from .build_info import load_failure_message

__all__ = [
    "extension_available",
    "extension_error",
    "backend",
    "has_kernel",
    "kernels_apply",
    "use_reference_path",
    "seed_to_int64",
    "permutation_keys",
    "seeded_permutation",
    "inverse_permutation",
    "paired_first_layer",
    "paired_linear",
    "nwj_head",
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

_FLOAT_TYPES = (torch.float32, torch.float64)


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
    """'compiled' when the fused kernels serve ``device``, else 'reference' (plain PyTorch)."""
    device_type = torch.device(device).type
    return "compiled" if has_kernel("paired_first_layer", device_type) else "reference"


def _kernel_devices() -> frozenset:
    return frozenset(d for d in ("cpu", "cuda") if has_kernel("paired_first_layer", d))


# Computed once: a plain set lookup is all torch.compile has to trace in kernels_apply.
_KERNEL_DEVICES = _kernel_devices()


@contextlib.contextmanager
def use_reference_path():
    """Inside: every op runs its plain-PyTorch twin (:mod:`infomax_ext.reference`), as when the
    extension is not built. For second derivatives (the fused ops' backward has none of its own)
    and for debugging. Not thread-safe: it switches the module-wide choice."""
    global _KERNEL_DEVICES
    saved = _KERNEL_DEVICES
    _KERNEL_DEVICES = frozenset()
    try:
        yield
    finally:
        _KERNEL_DEVICES = saved


def kernels_apply(*tensors: torch.Tensor | None) -> bool:
    """True when the compiled kernels can run on these tensors (loaded, float32/64, a device
    with kernels). Otherwise callers take the reference path."""
    present = [t for t in tensors if t is not None]
    if not present or present[0].device.type not in _KERNEL_DEVICES:
        return False
    return all(t.dtype in _FLOAT_TYPES for t in present if t.is_floating_point())


def seed_to_int64(seed: int) -> int:
    """A seed reduced modulo 2**64 and stored as a signed 64-bit integer (the op's ``int``)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        try:
            seed = int(seed)  # numpy integers, 0-dim tensors
        except (TypeError, ValueError):
            raise TypeError(f"seed must be an integer or None, got {type(seed).__name__}") from None
    seed &= (1 << 64) - 1
    return seed - (1 << 64) if seed >= (1 << 63) else seed


# ----------------------------------------------------------------------------------------------
# Permutation
# ----------------------------------------------------------------------------------------------


def permutation_keys(index: torch.Tensor, seed: int) -> torch.Tensor:
    """63-bit counter-based keys of the int64 ``index`` under ``seed`` (same shape as ``index``)."""
    if index.device.type in _KERNEL_DEVICES:
        return torch.ops.infomax_ext.permutation_keys.default(index, seed_to_int64(seed))
    return reference.permutation_keys(index, seed_to_int64(seed))


def seeded_permutation(n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The permutation of ``range(n)`` (int64, shape (n,)) for ``seed``: a stable argsort of
    counter-based keys, so every device gives the same permutation for the same seed."""
    if n < 1:
        raise ValueError(f"cannot permute {n} rows")
    keys = permutation_keys(torch.arange(n, device=device), seed)
    return torch.argsort(keys, stable=True)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[perm[i]] = i``; raises when ``perm`` is not a permutation of range(n)."""
    if perm.device.type in _KERNEL_DEVICES:
        return torch.ops.infomax_ext.inverse_permutation.default(perm)
    return reference.inverse_permutation(perm)


if extension_available():

    @torch.library.register_fake("infomax_ext::permutation_keys")
    def _(index, seed):
        return torch.empty_like(index)

    @torch.library.register_fake("infomax_ext::inverse_permutation")
    def _(perm):
        torch._check(perm.dim() == 1, lambda: "perm must be 1-D")
        return torch.empty_like(perm)


# ----------------------------------------------------------------------------------------------
# Paired first layer
# ----------------------------------------------------------------------------------------------


def paired_first_layer(
    data_half: torch.Tensor,
    latent_half: torch.Tensor,
    shuffled_source: torch.Tensor | None,
    bias: torch.Tensor,
    perm: torch.Tensor,
    activation: str = "identity",
    param: float = 0.0,
) -> torch.Tensor:
    """First MLP layer of the MI chain for joint and shuffled pairs in one pass.

    ``data_half`` (N, H) is ``data(x) @ Wx.T``, ``latent_half`` (M, H) with M = S N is
    ``latent(z) @ Wz.T``, ``bias`` (H,), ``perm`` (M,) int64. Returns (2M, H): rows ``r < M`` are
    ``act(data_half[r % N] + latent_half[r] + bias)`` and rows ``M + r`` are
    ``act(data_half[r % N] + source[perm[r]] + bias)``, where ``source`` is ``shuffled_source``
    or, when None, ``latent_half`` (then the shuffled rows' gradient flows back into
    ``latent_half`` through the inverse permutation). The shuffled rows are never copied.
    """
    if kernels_apply(data_half, latent_half, shuffled_source, bias):
        return _autograd.differentiable["paired_first_layer"](
            data_half, latent_half, shuffled_source, bias, perm, activation, float(param)
        )
    return reference.paired_first_layer(
        data_half, latent_half, shuffled_source, bias, perm, activation, param
    )


def paired_linear(
    hx: torch.Tensor,
    hz: torch.Tensor,
    hz_source: torch.Tensor | None,
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
    with ``src = hz_source`` or, when None, ``hz``. The weight is split into its data and latent
    columns: ``hx Wx^T`` is computed once for both halves, the shuffled rows are never copied, and
    the backward writes the weight gradient into one buffer. ``data_half`` (N, H), when given, is
    ``hx @ weight[:, :Dx].T`` computed earlier (a constant that saves that product; gradients are
    unchanged).
    """
    if kernels_apply(hx, hz, hz_source, weight, bias, data_half):
        return _autograd.differentiable["paired_linear"](
            hx, hz, hz_source, weight, bias, perm, activation, float(param), data_half
        )
    return reference.paired_linear(hx, hz, hz_source, weight, bias, perm, activation, param,
                                   data_half)


if extension_available():

    @torch.library.register_fake("infomax_ext::paired_first_layer")
    def _(data_half, latent_half, shuffled_source, bias, perm, activation, param):
        torch._check(data_half.dim() == 2 and latent_half.dim() == 2, lambda: "halves must be 2-D")
        torch._check(data_half.shape[1] == latent_half.shape[1], lambda: "half widths differ")
        return data_half.new_empty((2 * latent_half.shape[0], data_half.shape[1]))

    @torch.library.register_fake("infomax_ext::paired_first_layer_backward")
    def _(grad_out, data_half, latent_half, shuffled_source, bias, perm, inverse_perm,
          activation, param, output_mask):
        has_source = shuffled_source is not None

        def grad(wanted, like):
            return like.new_empty(like.shape) if wanted else data_half.new_empty((0,))

        return (
            grad(output_mask[0], data_half),
            grad(output_mask[1], latent_half),
            grad(output_mask[2] and has_source, latent_half),
            grad(output_mask[3], bias),
        )

    @torch.library.register_fake("infomax_ext::paired_linear")
    def _(hx, hz, hz_source, weight, bias, perm, activation, param, data_half=None):
        torch._check(hx.dim() == 2 and hz.dim() == 2 and weight.dim() == 2,
                     lambda: "hx, hz and weight must be 2-D")
        torch._check(weight.shape[1] == hx.shape[1] + hz.shape[1],
                     lambda: "the weight's width is not hx's plus hz's")
        return hx.new_empty((2 * hz.shape[0], weight.shape[0]))


# ----------------------------------------------------------------------------------------------
# NWJ bound, alone and fused with the last layer
# ----------------------------------------------------------------------------------------------


def nwj_bound(t_joint: torch.Tensor, t_marg: torch.Tensor) -> torch.Tensor:
    """NWJ lower bound ``mean(t_joint) - mean(exp(t_marg - 1))`` (a 0-dim tensor).

    ``t_joint`` (N,) are a critic's scores on joint pairs, ``t_marg`` (M,) on shuffled pairs.
    For users who bring their own critic."""
    if t_joint.dim() != 1 or t_marg.dim() != 1:
        raise ValueError(
            f"nwj_bound takes 1-D score tensors, got shapes {tuple(t_joint.shape)} and "
            f"{tuple(t_marg.shape)}"
        )
    if t_joint.numel() < 1 or t_marg.numel() < 1:
        raise ValueError("nwj_bound needs at least one joint and one shuffled score")
    if kernels_apply(t_joint, t_marg) and t_joint.dtype == t_marg.dtype:
        return _autograd.differentiable["nwj_bound"](t_joint, t_marg)
    return reference.nwj_bound(t_joint, t_marg)


def nwj_head(
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
    if kernels_apply(hidden, weight, bias):
        bound, scores, _pre = _autograd.differentiable["nwj_head"](
            hidden, weight, bias, n_joint, activation, float(param)
        )
        return bound, scores
    return reference.nwj_head(hidden, weight, bias, n_joint, activation, param)


if extension_available():

    @torch.library.register_fake("infomax_ext::nwj_bound")
    def _(t_joint, t_marg):
        return t_joint.new_empty(())

    @torch.library.register_fake("infomax_ext::nwj_bound_backward")
    def _(grad, t_joint, t_marg):
        return torch.empty_like(t_joint), torch.empty_like(t_marg)

    @torch.library.register_fake("infomax_ext::nwj_head")
    def _(hidden, weight, bias, n_joint, activation, param):
        rows = hidden.shape[0]
        return hidden.new_empty(()), hidden.new_empty((rows,)), hidden.new_empty((rows,))

    @torch.library.register_fake("infomax_ext::nwj_head_backward")
    def _(grad_bound, grad_scores, hidden, weight, scores, pre, n_joint, activation, param,
          output_mask):
        return (
            hidden.new_empty(hidden.shape) if output_mask[0] else hidden.new_empty((0,)),
            weight.new_empty(weight.shape) if output_mask[1] else hidden.new_empty((0,)),
            hidden.new_empty((1,)) if output_mask[2] else hidden.new_empty((0,)),
        )
