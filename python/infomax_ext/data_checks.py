"""The checks every sample array passes before training: layout, finite values, the range the
likelihood needs, float32 overflow; and the rescaling (``normalize``) they are measured after.

Samples are ``(N, *sample_shape)``; problems raise :class:`DataError` naming ``source`` (a file,
an argument) and the problem. :mod:`.data` loads files and applies these; memory-mapped samples
are checked there too, streaming, with the same pieces.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["DataError", "DataWarning", "LIKELIHOODS", "NORMALIZATIONS", "MIN_SAMPLES",
           "LARGE_INPUT", "check_samples", "check_values", "normalize_samples",
           "normalization_parameters"]

LIKELIHOODS = ("bernoulli", "gaussian")
NORMALIZATIONS = ("none", "unit", "standardize")
MIN_SAMPLES = 8
# Beyond this magnitude, unnormalised inputs make the freshly initialised encoder's log-sigma and
# the MI chain's scores so large that exp overflows at the first step (the MI bound is -inf).
LARGE_INPUT = 10.0


class DataError(ValueError):
    """The data cannot be used: missing or unreadable file, wrong shape, bad values (see message)."""


class DataWarning(UserWarning):
    """The data was usable after a change worth knowing about (e.g. half precision to float32)."""


# Floating dtypes numpy lacks (or, float16, holds but the model does not compute in): each value
# is a float32 value too, so converting is exact.
_NARROW_FLOATS = tuple(getattr(torch, name) for name in (
    "float16", "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
    "float8_e8m0fnu") if hasattr(torch, name))


def _tensor_to_numpy(t: torch.Tensor, what: str) -> np.ndarray:
    """``t`` as a numpy array. Half precision and the float8 formats (numpy has no bfloat16 or
    float8) become float32, exactly, with a :class:`DataWarning`; a :class:`DataError` for a
    tensor that is not a plain dense one (sparse, quantized, ...) or whose dtype numpy cannot
    hold (complex32, packed sub-byte types, ...)."""
    dtype = str(t.dtype).removeprefix("torch.")
    if t.layout != torch.strided:
        raise DataError(f"{what} holds a {str(t.layout).removeprefix('torch.')} tensor; save a "
                        "dense one (tensor.to_dense())")
    if t.is_quantized:
        raise DataError(f"{what} holds a quantized tensor ({dtype}); save its values "
                        "(tensor.dequantize())")
    if t.dtype in _NARROW_FLOATS:
        warnings.warn(f"{what} holds {dtype} values; converted to float32 (exactly)",
                      DataWarning, stacklevel=3)
        t = t.float()
    try:
        return t.detach().cpu().numpy()
    except (TypeError, RuntimeError):
        raise DataError(f"{what} holds {dtype} values, which cannot be read as numbers here; "
                        "save float32, float64 or integer values") from None


def _check_normalization(mode: str) -> None:
    if mode not in NORMALIZATIONS:
        raise DataError(f"unknown normalization {mode!r}; choose one of {list(NORMALIZATIONS)}")


def _rescaled(x: np.ndarray, shift: float, scale: float) -> np.ndarray:
    """``(x - shift) / scale`` computed in float64, as float32; zeros when ``scale`` is 0."""
    x = x.astype(np.float64, copy=False)
    return ((x - shift) / scale if scale > 0 else np.zeros_like(x)).astype(np.float32)


def normalization_parameters(x: np.ndarray, mode: str) -> tuple[float, float]:
    """``(shift, scale)`` of :func:`normalize_samples` for ``x`` (computed in float64):
    ``(min, max - min)`` for ``"unit"``, ``(mean, std)`` for ``"standardize"``, ``(0, 1)`` for
    ``"none"``."""
    _check_normalization(mode)
    if mode == "none":
        return 0.0, 1.0
    x = x.astype(np.float64)
    shift, scale = (x.min(), x.max() - x.min()) if mode == "unit" else (x.mean(), x.std())
    return float(shift), float(scale)


def normalize_samples(x: np.ndarray, mode: str) -> np.ndarray:
    """``x`` (N, *sample_shape), finite, shifted and scaled as float32, by one shift and one scale
    computed over every value of every sample (so an image keeps its contrasts; constant data
    becomes 0).

    ``"unit"``: ``(x - min) / (max - min)``, values in [0, 1]; ``"standardize"``:
    ``(x - mean) / std``, values of mean 0 and variance 1; ``"none"``: ``x`` unchanged."""
    shift, scale = normalization_parameters(x, mode)
    return x if mode == "none" else _rescaled(x, shift, scale)


def _check_likelihood(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise DataError(f"unknown likelihood {likelihood!r}; choose one of {list(LIKELIHOODS)}")


def _check_layout(x: np.ndarray, source: str, min_samples: int = MIN_SAMPLES) -> None:
    """A numeric array (N, features...) of ``min_samples`` or more non-empty samples."""
    if x.dtype == object or x.dtype.kind not in "biuf":
        raise DataError(f"{source}: samples must be numeric, found dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(
            f"{source}: samples must be an array of shape (N, features...) with one sample per "
            f"row, found shape {x.shape}; a single feature per sample is (N, 1)"
        )
    if x.shape[0] < min_samples:
        raise DataError(f"{source}: {x.shape[0]} samples; need at least {min_samples}" + (
            " (training and held-out batches of 2 or more)" if min_samples == MIN_SAMPLES else ""))
    if math.prod(x.shape[1:]) == 0:
        raise DataError(f"{source}: samples are empty (shape {x.shape})")


def _check_finite(bad: int, source: str) -> None:
    if bad:
        raise DataError(f"{source}: {bad} values are NaN or infinite; clean the data first")


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_float32(over: int, largest: float, dtype: np.dtype[Any], source: str) -> None:
    """``over`` finite values of ``dtype`` became infinite as float32: say so."""
    if over:
        raise DataError(
            f"{source}: {over} values overflow float32 (finite {dtype} values up to magnitude "
            f"{largest:g}; float32 holds up to {_FLOAT32_MAX:.4g}) and the model computes in "
            "float32; rescale the data before saving it")


def _is_wide_float(dtype: np.dtype[Any]) -> bool:
    """Whether values of ``dtype`` can be finite yet beyond float32's range."""
    return bool(dtype.kind == "f" and dtype.itemsize > 4)


def _largest(x: np.ndarray) -> float:
    return float(np.abs(x).max())


def _check_range(lo: float, hi: float, likelihood: str, source: str) -> None:
    """The (rescaled) samples' range ``[lo, hi]`` suits the decoder ``likelihood``."""
    if likelihood == "bernoulli" and (lo < 0.0 or hi > 1.0):
        raise DataError(
            f"{source}: values range over [{lo:g}, {hi:g}] but the Bernoulli decoder needs them "
            "in [0, 1]; rescale them with --normalize unit (or yourself: 8-bit images divide by "
            "255), or use --likelihood gaussian --normalize standardize"
        )
    if likelihood == "gaussian" and max(-lo, hi) > LARGE_INPUT:
        warnings.warn(f"{source}: values range over [{lo:g}, {hi:g}]; inputs this large make the "
                      "first training step overflow: rescale them with --normalize standardize",
                      DataWarning, stacklevel=3)


def check_samples(x: np.ndarray | torch.Tensor, likelihood: str = "bernoulli", source: str = "data",
                  normalize: str = "none") -> torch.Tensor:
    """The samples as float32 ``(N, *sample_shape)`` after checking them, rescaled as
    ``normalize`` says (:func:`normalize_samples`), for ``likelihood``.

    Raises :class:`DataError` for: non-numeric dtypes, fewer than 2 dimensions, fewer than
    ``MIN_SAMPLES`` samples, empty samples, NaN or infinite values, and (Bernoulli decoder) values
    outside [0, 1]. Warns (:class:`DataWarning`) when a Gaussian decoder gets values beyond
    ``LARGE_INPUT`` in magnitude: such a run diverges at its first step."""
    return _checked(x, likelihood, source, normalize)[0]


def _checked(x: np.ndarray | torch.Tensor, likelihood: str, source: str, normalize: str,
             min_samples: int = MIN_SAMPLES) -> tuple[torch.Tensor, float, float]:
    """:func:`check_samples` and the ``(shift, scale)`` it rescaled by."""
    _check_likelihood(likelihood)
    if isinstance(x, torch.Tensor):
        x = _tensor_to_numpy(x, source)
    x = np.asarray(x)
    _check_layout(x, source, min_samples)
    wide = _is_wide_float(x.dtype)
    if wide:
        _check_finite(int((~np.isfinite(x)).sum()), source)
        largest, dtype = _largest(x), x.dtype
    with np.errstate(over="ignore"):  # an overflow is reported below, by name
        x = x.astype(np.float32, copy=False)
    bad = int((~np.isfinite(x)).sum())
    if wide:
        _check_float32(bad, largest, dtype, source)
    _check_finite(bad, source)
    shift, scale = normalization_parameters(x, normalize)
    if normalize != "none":
        x = _rescaled(x, shift, scale)
    _check_range(float(x.min()), float(x.max()), likelihood, source)
    return torch.from_numpy(np.ascontiguousarray(x)), shift, scale


def check_values(x: object, likelihood: str = "bernoulli", source: str = "data") -> None:
    """The value checks of :func:`check_samples` on samples already in a tensor (nothing
    converted or copied): a :class:`DataError` naming ``source`` for NaN or infinite values and,
    for the Bernoulli decoder, values outside [0, 1]; the Gaussian decoder's warning for large
    values. :class:`MappedSamples` were checked as they were loaded (:func:`check_mapped`) and
    are not read again."""
    _check_likelihood(likelihood)
    if not isinstance(x, torch.Tensor) or x.numel() == 0 or not (
            x.is_floating_point() or likelihood == "bernoulli"):
        return
    values = x.detach()
    if values.is_floating_point():
        _check_finite(int((~torch.isfinite(values)).sum()), source)
    _check_range(float(values.min()), float(values.max()), likelihood, source)
