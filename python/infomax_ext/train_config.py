"""The configuration of a training run: :class:`TrainConfig` (every setting, validated and
JSON-serialisable) and :func:`build_model`, the InfoMax VAE of MLPs it describes."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .activations import HIDDEN_ACTIVATIONS
from .bounds import BOUNDS, Bound, resolve_bound
from .data import LIKELIHOODS
from .infomax import InfoMaxVAE
from .mutual_info import NEGATIVES, MutualInfoChain
from .validation import check_weight, is_integer_scalar
from .vae import VAE, BernoulliDecoder, JointGaussianLogEncoder, SimpleGaussianDecoder

__all__ = ["TrainConfig", "build_model", "derived_seed", "upgrade_options", "SEED_LIMIT",
           "NEGATIVES", "NEGATIVES_SCOPES"]

SEED_LIMIT = 2 ** 63  # seeds are 0 <= seed < 2**63; every consumer's seed is derived from it
NEGATIVES_SCOPES = ("global", "local")
"""Where a data-parallel run draws the MI bound's negatives: the whole batch of all processes
(``"global"``) or each process's own share (``"local"``)."""


@dataclass
class TrainConfig:
    """Everything that decides a training run (JSON-serialisable through :meth:`to_dict`).

    Model: ``latent_dim`` d, hidden layer widths of the encoder, decoder and MI chain (MLPs with
    ``activation``), ``likelihood`` of the decoder (``"bernoulli"``: data in [0, 1];
    ``"gaussian"``: unit-variance Gaussian). Loss: ``-loglik + beta KL - alpha I`` (``alpha = 0``
    is a plain beta-VAE; the MI chain is still trained, so its estimate stays comparable).
    Optimisation: Adam with ``lr`` (VAE) and ``mi_lr`` (MI chain), ``epochs`` passes over the
    training split in batches of ``batch_size`` (over all processes when data-parallel);
    ``reuse_forward``, ``shuffled_grad`` and ``negatives_scope`` (data-parallel only: ``"global"``
    draws the negatives from the whole batch, ``"local"`` within each process's share) as in
    :func:`~infomax_ext.train_step`; ``bound`` the MI bound of both losses (a name of
    :data:`~infomax_ext.BOUNDS`; ``smile_clip`` is smile's tau, ``dv_moving_average`` dv's
    MINE moving-average rate, None: off) and ``negatives`` how it pairs the negatives
    (``"shuffle"``: each x_i with one shuffled code; ``"all"``: with every z_j, j != i;
    ``"infonce"`` always takes all pairs), both kept in the model's config
    (:class:`~infomax_ext.InfoMaxVAE`). Evaluation: ``val_fraction`` of the data held out,
    ``active_threshold`` for active units, ``eval_mi_steps`` training steps of the fresh MI chain.

    The defaults are the settings of ``make demo``, chosen on the digits: about 30 s of training
    per model on one CPU thread; with ``beta = 2`` a plain VAE (``alpha = 0``) keeps 3 or 4 of its
    8 units active (seeds 0-2), the InfoMax VAE with ``alpha = 10`` all 8 (or 7).
    """

    latent_dim: int = 8
    encoder_neurons: list[int] = field(default_factory=lambda: [256, 128])
    decoder_neurons: list[int] = field(default_factory=lambda: [128, 256])
    mi_neurons: list[int] = field(default_factory=lambda: [128, 128])
    activation: str = "relu"
    likelihood: str = "bernoulli"
    beta: float = 2.0
    alpha: float = 10.0
    epochs: int = 150
    batch_size: int = 128
    lr: float = 5e-4
    mi_lr: float = 5e-4
    seed: int = 0
    device: str = "cpu"
    reuse_forward: bool = False
    shuffled_grad: bool = False
    negatives_scope: str = "global"
    bound: str = "nwj"
    smile_clip: float = 5.0
    dv_moving_average: float | None = None
    negatives: str = "shuffle"
    val_fraction: float = 0.2
    checkpoint_every: int = 1
    active_threshold: float = 0.01
    eval_mi_steps: int = 1500

    def validate(self) -> "TrainConfig":
        """``self``, after checking every field; ``ValueError`` naming the first bad one.
        Numpy and 0-dim torch scalars (and numpy strings) become the plain Python values
        (:meth:`_plain_values`) first: checkpoints and config.json hold plain values only."""
        self._plain_values()

        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

        def nonneg(name: str, strict: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0 or (strict and v == 0):
                raise ValueError(f"{name} must be a {'positive' if strict else 'non-negative'} "
                                 f"finite number, got {v!r}")

        for name in ("latent_dim", "epochs", "batch_size", "checkpoint_every"):
            positive_int(name)
        if self.batch_size < 2:
            raise ValueError(
                "batch_size must be at least 2 (the MI bound shuffles codes across a batch)")
        positive_int("eval_mi_steps")
        for name in ("encoder_neurons", "decoder_neurons", "mi_neurons"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or any(
                    isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in v):
                raise ValueError(f"{name} must be a list of positive integers, got {v!r}")
            setattr(self, name, list(v))
        if not self.mi_neurons:
            raise ValueError("mi_neurons needs at least one hidden layer")
        if self.activation not in HIDDEN_ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {list(HIDDEN_ACTIVATIONS)}, got {self.activation!r}")
        for name in ("reuse_forward", "shuffled_grad"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string such as 'cpu', got {self.device!r}")
        if self.negatives_scope not in NEGATIVES_SCOPES:
            raise ValueError(f"negatives_scope must be one of {list(NEGATIVES_SCOPES)}, got "
                             f"{self.negatives_scope!r}")
        if self.negatives not in NEGATIVES:
            scope = (" (the data-parallel scope 'global'/'local' is negatives_scope)"
                     if self.negatives in NEGATIVES_SCOPES else "")
            raise ValueError(f"negatives must be one of {list(NEGATIVES)}, got "
                             f"{self.negatives!r}{scope}")
        if self.bound not in BOUNDS:
            raise ValueError(f"bound must be one of {list(BOUNDS)}, got {self.bound!r}")
        nonneg("smile_clip", strict=True)
        if self.dv_moving_average is not None:
            v = self.dv_moving_average
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"dv_moving_average must be a number in [0, 1) or None, got {v!r}")
            if self.bound != "dv":
                raise ValueError(f"dv_moving_average is a setting of bound 'dv', but bound is "
                                 f"{self.bound!r}")
            self.dv_moving_average = float(v)
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {list(LIKELIHOODS)}, got {self.likelihood!r}")
        for name in ("beta", "alpha"):
            try:
                check_weight(name, getattr(self, name))
            except TypeError as exc:
                raise ValueError(str(exc)) from None
        nonneg("active_threshold")
        for name in ("lr", "mi_lr"):
            nonneg(name, strict=True)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(
                f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        return self

    def _plain_values(self) -> None:
        """Replace each numpy scalar or 0-dim torch tensor of the right kind by the Python value
        (an int, float, bool or str; a neuron list's entries too); anything else is left for
        :meth:`validate` to refuse. A numpy float in a checkpoint would make it unreadable
        (``torch.load(weights_only=True)`` refuses numpy objects) and np.float32 is not JSON."""
        for name in _INT_FIELDS:
            if is_integer_scalar(getattr(self, name)):
                setattr(self, name, int(getattr(self, name)))
        for name in _FLOAT_FIELDS:
            setattr(self, name, _plain_real(getattr(self, name)))
        for name in _BOOL_FIELDS:
            v = getattr(self, name)
            if isinstance(v, np.bool_) or (isinstance(v, torch.Tensor) and v.dim() == 0
                                           and v.dtype == torch.bool):
                setattr(self, name, bool(v))
        for name in _STR_FIELDS:
            v = getattr(self, name)
            if isinstance(v, str) and type(v) is not str:  # np.str_
                setattr(self, name, str(v))
        for name in _NEURON_FIELDS:
            v = getattr(self, name)
            if isinstance(v, np.ndarray) and v.ndim == 1:
                v = v.tolist()
            if isinstance(v, (list, tuple)):
                setattr(self, name, [int(h) if is_integer_scalar(h) else h for h in v])

    def mi_bound(self) -> Bound:
        """The :class:`~infomax_ext.bounds.Bound` of ``bound`` (with ``smile_clip`` for smile,
        ``dv_moving_average`` for dv)."""
        if self.bound == "dv" and self.dv_moving_average is not None:
            return resolve_bound("dv", moving_average=self.dv_moving_average)
        return resolve_bound(self.bound, clip=self.smile_clip) if self.bound == "smile" \
            else resolve_bound(self.bound)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (numpy and 0-dim torch scalars as Python values)."""
        self._plain_values()
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """A validated config from :meth:`to_dict` output, of this version or an earlier one
        (:func:`upgrade_options`; unknown keys are an error)."""
        d = upgrade_options(d, defaults=False)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training options {unknown}")
        return cls(**d).validate()


_INT_FIELDS = ("latent_dim", "epochs", "batch_size", "checkpoint_every", "eval_mi_steps", "seed")
_FLOAT_FIELDS = ("beta", "alpha", "lr", "mi_lr", "smile_clip", "dv_moving_average",
                 "val_fraction", "active_threshold")
_BOOL_FIELDS = ("reuse_forward", "shuffled_grad")
_STR_FIELDS = ("activation", "likelihood", "device", "negatives_scope", "bound", "negatives")
_NEURON_FIELDS = ("encoder_neurons", "decoder_neurons", "mi_neurons")


def _plain_real(v: Any) -> Any:
    """``v`` as a Python float when it is a real number of another type than int or float (a
    numpy scalar, a 0-dim real torch tensor); bools and everything else unchanged."""
    if isinstance(v, bool) or type(v) in (int, float):
        return v
    if isinstance(v, torch.Tensor):
        if v.dim() == 0 and v.dtype != torch.bool and not v.is_complex():
            return float(v.item())
        return v
    if isinstance(v, numbers.Real) and not isinstance(v, np.bool_):
        return float(v)
    return v


def upgrade_options(d: Mapping[str, Any], defaults: bool = True) -> dict[str, Any]:
    """A copy of the training options ``d`` (:meth:`TrainConfig.to_dict` output, as a
    config.json or a checkpoint holds them) in today's keys: ``"negatives": "global"`` or
    ``"local"`` (files written when that key named the data-parallel scope) becomes
    ``"negatives_scope"`` (``"negatives"``, the pairing, then takes its default ``"shuffle"``,
    what those runs trained with). With ``defaults``, a field absent from ``d`` takes its
    default, as :meth:`TrainConfig.from_dict` reads it. Nothing is checked here."""
    out = dict(d)
    if "negatives_scope" not in out and out.get("negatives") in NEGATIVES_SCOPES:
        out["negatives_scope"] = out.pop("negatives")
    if defaults:
        out = {**TrainConfig().to_dict(), **out}
    return out


def derived_seed(seed: int, *stream: int) -> int:
    """A 63-bit seed for the sub-stream ``stream`` of ``seed`` (e.g. ``(seed, epoch)``)."""
    return int(np.random.SeedSequence([int(seed), *map(int, stream)]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def build_model(config: TrainConfig, sample_shape: Sequence[int]) -> InfoMaxVAE:
    """An :class:`InfoMaxVAE` of MLPs for samples of ``sample_shape`` (e.g. ``(64,)``, ``(28, 28)``).

    Encoder: JointGaussianLogEncoder (``encoder_neurons``) -> (mu, logsigma), each (N, d);
    decoder: BernoulliDecoder (sigmoid output) or SimpleGaussianDecoder (``decoder_neurons``);
    MI chain: ``MutualInfoChain.from_sizes`` with ``mi_neurons``. All built by ``from_sizes``, so
    the model saves and reloads with :meth:`InfoMaxVAE.save` / :meth:`InfoMaxVAE.load`. Weights
    come from torch's global generator."""
    config.validate()
    shape = [int(s) for s in sample_shape]
    size = shape[0] if len(shape) == 1 else shape
    d, act = config.latent_dim, config.activation
    encoder = JointGaussianLogEncoder.from_sizes(size, d, config.encoder_neurons,
                                                 [act] * len(config.encoder_neurons))
    decoder_cls = BernoulliDecoder if config.likelihood == "bernoulli" else SimpleGaussianDecoder
    decoder = decoder_cls.from_sizes(size, d, config.decoder_neurons,
                                     [act] * len(config.decoder_neurons))
    mi = MutualInfoChain.from_sizes(size, d, config.mi_neurons, [act] * len(config.mi_neurons))
    return InfoMaxVAE(VAE(encoder, decoder), mi, bound=config.mi_bound(),
                      negatives=config.negatives)
