"""How a model's training data was prepared, saved with the model so new data is prepared alike.

A :class:`Preprocessing` holds the normalisation (``kind``, ``shift``, ``scale``: the model sees
``(raw - shift) / scale``), the shape of one sample, how to draw one (``image_shape``) and the
fingerprint of the training data. :meth:`InfoMaxVAE.save <infomax_ext.InfoMaxVAE.save>` writes it
to ``preprocessing.json`` beside the weights, training checkpoints hold it too, and
:meth:`InfoMaxVAE.load <infomax_ext.InfoMaxVAE.load>` restores it as ``model.preprocessing``
(a model directory without the file: the identity, no shape known)::

    model = InfoMaxVAE.load("runs/mine/model")
    x = model.preprocessing.apply(raw)        # raw: (N, *sample_shape) in the data's units
    codes = model.vae.encoder(x)[0]
    raw_again = model.preprocessing.invert(model.vae.decoder(codes).mu)

:meth:`Preprocessing.apply` computes exactly what training computed (float32 data rescaled in
float64, rounded to float32), so the training file run through it gives the training tensor.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data_checks import NORMALIZATIONS, DataError, _rescaled

if TYPE_CHECKING:
    from .data import ArrayDataset

__all__ = ["Preprocessing", "PREPROCESSING_FILE"]

PREPROCESSING_FILE = "preprocessing.json"


@dataclass(frozen=True)
class Preprocessing:
    """The preparation of a model's input: ``x = (raw - shift) / scale`` (zeros when ``scale``
    is 0, constant training data), for samples of ``sample_shape`` (``None``: not known; any
    shape passes). ``kind`` is ``"none"``, ``"unit"`` or ``"standardize"`` (how shift and scale
    were measured on the training data); ``image_shape`` ``(H, W)`` (or ``None``) says how to draw
    one sample; ``fingerprint`` is the SHA-256 of the training data
    (:meth:`~infomax_ext.data.ArrayDataset.fingerprint`), ``None`` when unknown."""

    kind: str = "none"
    shift: float = 0.0
    scale: float = 1.0
    sample_shape: tuple[int, ...] | None = None
    image_shape: tuple[int, int] | None = None
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in NORMALIZATIONS:
            raise ValueError(f"preprocessing kind must be one of {list(NORMALIZATIONS)}, got "
                             f"{self.kind!r}")
        for name in ("shift", "scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"preprocessing {name} must be a finite number, got {value!r}")
        if self.scale < 0:
            raise ValueError(f"preprocessing scale must be >= 0, got {self.scale}")
        if self.kind == "none" and (self.shift, self.scale) != (0.0, 1.0):
            raise ValueError("preprocessing kind 'none' has shift 0 and scale 1")
        for name in ("sample_shape", "image_shape"):
            shape = getattr(self, name)
            if shape is not None:
                shape = tuple(shape)
                if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                    for s in shape):
                    raise ValueError(f"preprocessing {name} must be positive integers, got {shape}")
                object.__setattr__(self, name, shape)
        object.__setattr__(self, "shift", float(self.shift))
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def is_identity(self) -> bool:
        """Whether :meth:`apply` leaves the values as they are."""
        return self.kind == "none"

    def check_shape(self, x: np.ndarray | torch.Tensor, source: str = "data") -> None:
        """A :class:`~infomax_ext.data.DataError` unless ``x`` is ``(N, *sample_shape)``."""
        shape = tuple(x.shape[1:])
        if self.sample_shape is not None and shape != self.sample_shape:
            raise DataError(f"{source}: samples of shape {shape}, but the model was trained on "
                            f"samples of shape {self.sample_shape}")

    def apply(self, raw: np.ndarray | torch.Tensor, source: str = "data") -> torch.Tensor:
        """``raw`` (N, *sample_shape), a tensor or array in the training data's units, as the
        model's input: float32 ``(raw - shift) / scale``, on the CPU (a tensor's device kept).
        A :class:`~infomax_ext.data.DataError` for values that are not finite in float32 (NaN,
        inf, or beyond float32's range), as the training data's loader refuses them."""
        device = raw.device if isinstance(raw, torch.Tensor) else torch.device("cpu")
        if isinstance(raw, torch.Tensor) and raw.dtype in (torch.float16, torch.bfloat16):
            raw = raw.float()  # exactly; numpy has no bfloat16
        a = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        if a.dtype.kind not in "biuf":
            raise DataError(f"{source}: samples must be numeric, found dtype {a.dtype}")
        self.check_shape(a, source)
        a = a.astype(np.float32, copy=False)
        if not self.is_identity:
            a = _rescaled(a, self.shift, self.scale)
        finite = np.isfinite(a)
        if not finite.all():
            bad = int(a.size - np.count_nonzero(finite))
            raise DataError(f"{source}: {bad} of {a.size} values are NaN, inf or beyond "
                            "float32's range in the model's units; give finite samples")
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    __call__ = apply

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space values ``x`` (decoder means, reconstructions) in the training data's units:
        ``x * scale + shift`` (computed in float64, returned in ``x``'s dtype, or float32 for a
        16-bit ``x``: the data's units may lie beyond float16's range or bfloat16's precision)."""
        if self.is_identity:
            return x
        dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        return (x.double() * self.scale + self.shift).to(dtype)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, shapes as lists."""
        d = asdict(self)
        for name in ("sample_shape", "image_shape"):
            d[name] = None if d[name] is None else list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        """The inverse of :meth:`to_dict`; a ``ValueError`` naming a wrong or unknown entry."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocessing must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {"kind", "shift", "scale", "sample_shape", "image_shape",
                            "fingerprint"}
        if unknown:
            raise ValueError(f"unknown preprocessing entries {sorted(unknown)}")
        fingerprint = d.get("fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise ValueError(f"preprocessing fingerprint must be a string, got {fingerprint!r}")
        return cls(**d)

    @classmethod
    def of_dataset(cls, dataset: ArrayDataset, fingerprint: str | None = None) -> "Preprocessing":
        """The preprocessing of an :class:`~infomax_ext.data.ArrayDataset` as loaded (its
        ``normalization``, sample and image shapes, and ``fingerprint``, computed when not
        given)."""
        kind, shift, scale = dataset.normalization
        return cls(kind, shift, scale, tuple(dataset.sample_shape), dataset.image_shape,
                   dataset.fingerprint() if fingerprint is None else fingerprint)
