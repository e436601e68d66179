"""The VAE parts the InfoMax VAE uses: encoders, decoders, sampling and the likelihood terms.

Batch-first throughout: data ``x`` is ``(N, *data_shape)``, latent codes ``z`` are ``(N, d)``,
per-sample scores are ``(N,)``. Encoders and decoders return named tuples; each class has a
``from_sizes`` builder (the AutoEncoderToolkit.jl constructors) and ``from_config`` to rebuild a
module from the ``config`` dict a builder stores.

Sampling with ``n_samples = S > 1`` gives codes ``(S, N, d)``; decoded, they are laid out as ``S``
blocks of ``N`` rows (``M = S * N`` rows, row ``r`` belonging to input ``r % N``), the layout
:func:`decoder_loglikelihood` accepts.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import torch
from torch import nn

from . import bernoulli_op, widths
from ._builders import Built, builder_config, check_layers, check_size, head, mlp, output_pair, \
    parse_size
from .decoders import (BernoulliDecoder, JointGaussianDecoder, JointGaussianLogDecoder,
                       SimpleGaussianDecoder, SplitGaussianDecoder, SplitGaussianLogDecoder)
from .activations import ActivationLike, identity
from .validation import as_count
from .vae_outputs import (BernoulliOutput, DecoderOutput, EncoderOutput, GaussianLogOutput,
                          GaussianOutput, SimpleGaussianOutput, VAEOutput)
from .vae_outputs import Init as Init  # re-exported: the chain builders take one too

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

__all__ = [
    "GaussianLogOutput",
    "GaussianOutput",
    "BernoulliOutput",
    "SimpleGaussianOutput",
    "VAEOutput",
    "JointGaussianLogEncoder",
    "JointGaussianEncoder",
    "BernoulliDecoder",
    "SimpleGaussianDecoder",
    "JointGaussianLogDecoder",
    "SplitGaussianLogDecoder",
    "JointGaussianDecoder",
    "SplitGaussianDecoder",
    "VAE",
    "module_from_config",
    "reparameterize",
    "decoder_loglikelihood",
    "encoder_kl",
    "spherical_logprior",
    "encoder_logposterior",
]

_LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------------- encoders

class _Encoder(Built):
    """Shared trunk ``encoder``, then two heads on its output."""

    widths_through = (("encoder", "mu"), ("mu", "encoder"))  # see widths.py
    @classmethod
    def _build(cls, size_input: int | Sequence[int], n_latent: int, encoder_neurons: Sequence[int],
               encoder_activation: Sequence[ActivationLike],
               latent_activation: ActivationLike | Sequence[ActivationLike], init: Init,
               second_default: ActivationLike) -> Self:
        n_in, shape = parse_size("size_input", size_input)
        check_size("n_latent", n_latent)
        neurons = check_layers("encoder_neurons", encoder_neurons,
                                "encoder_activation", encoder_activation)
        first_act, second_act = output_pair("latent_activation", latent_activation, second_default)
        trunk: list[nn.Module] = [nn.Flatten()] if shape is not None else []
        trunk += mlp(n_in, neurons, encoder_activation, init)
        n_hidden = neurons[-1] if neurons else n_in
        module = cls(
            nn.Sequential(*trunk),
            head(n_hidden, n_latent, first_act, init, None),
            head(n_hidden, n_latent, second_act, init, None),
        )
        module.config = builder_config(
            cls.__name__, size_input=size_input, n_latent=n_latent,
            encoder_neurons=list(encoder_neurons), encoder_activation=list(encoder_activation),
            latent_activation=latent_activation,
        )
        return module


class JointGaussianLogEncoder(_Encoder):
    """``x (N, *data_shape) -> GaussianLogOutput(mu, logsigma)``, each ``(N, d)``:
    ``h = encoder(x)``, ``mu = mu(h)``, ``logsigma = logsigma(h)`` (log standard deviation)."""

    def __init__(self, encoder: nn.Module, mu: nn.Module, logsigma: nn.Module):
        super().__init__()
        self.encoder, self.mu, self.logsigma = encoder, mu, logsigma

    def forward(self, x: torch.Tensor) -> GaussianLogOutput:
        h = self.encoder(x)
        return GaussianLogOutput(self.mu(h), self.logsigma(h))

    @classmethod
    def from_sizes(cls, size_input: int | Sequence[int], n_latent: int,
                   encoder_neurons: Sequence[int], encoder_activation: Sequence[ActivationLike],
                   latent_activation: ActivationLike | Sequence[ActivationLike] = identity, *,
                   init: Init = nn.init.xavier_uniform_) -> Self:
        """MLP encoder: ``[Flatten,] Linear(n_in -> h1), act1, ..., Linear(.. -> hk), actk`` as
        the trunk, then ``Linear(hk -> n_latent), latent_activation`` for each of ``mu`` and
        ``logsigma``.

        ``size_input`` is an int or a data shape (then the trunk flattens first and ``n_in`` is
        the product). ``latent_activation`` is one activation for both heads (as in Julia) or a
        pair ``(mu, logsigma)``. ``init`` fills each weight in place (xavier uniform, i.e. Flux's
        glorot uniform, by default); biases start at zero.
        """
        return cls._build(size_input, n_latent, encoder_neurons, encoder_activation,
                          latent_activation, init, None)


class JointGaussianEncoder(_Encoder):
    """``x (N, *data_shape) -> GaussianOutput(mu, sigma)``, each ``(N, d)``: ``h = encoder(x)``,
    ``mu = mu(h)``, ``sigma = sigma(h)`` used as is (it must be positive: the builder ends the
    ``sigma`` head in softplus)."""

    def __init__(self, encoder: nn.Module, mu: nn.Module, sigma: nn.Module):
        super().__init__()
        self.encoder, self.mu, self.sigma = encoder, mu, sigma

    def forward(self, x: torch.Tensor) -> GaussianOutput:
        h = self.encoder(x)
        return GaussianOutput(self.mu(h), self.sigma(h))

    @classmethod
    def from_sizes(cls, size_input: int | Sequence[int], n_latent: int,
                   encoder_neurons: Sequence[int], encoder_activation: Sequence[ActivationLike],
                   latent_activation: ActivationLike | Sequence[ActivationLike] = identity, *,
                   init: Init = nn.init.xavier_uniform_) -> Self:
        """As :meth:`JointGaussianLogEncoder.from_sizes`, but one ``latent_activation`` applies
        to ``mu`` only and the ``sigma`` head ends in softplus; a pair ``(mu, sigma)`` sets both."""
        return cls._build(size_input, n_latent, encoder_neurons, encoder_activation,
                          latent_activation, init, "softplus")

_BUILT_CLASSES = {
    cls.__name__: cls
    for cls in (JointGaussianLogEncoder, JointGaussianEncoder, BernoulliDecoder,
                SimpleGaussianDecoder, JointGaussianLogDecoder, SplitGaussianLogDecoder,
                JointGaussianDecoder, SplitGaussianDecoder)
}


# ----------------------------------------------------------------------------- sampling

def reparameterize(mu: torch.Tensor, sigma: torch.Tensor, log: bool = True,
                   n_samples: int = 1) -> torch.Tensor:
    """``mu + eps * exp(sigma)`` (``log=True``: ``sigma`` is the log standard deviation) or
    ``mu + eps * sigma`` (``log=False``), ``eps ~ N(0, I)``.

    ``n_samples == 1``: the shape of ``mu``, one ``torch.randn_like(mu)`` draw.
    ``n_samples == S > 1``: shape ``(S, *mu.shape)``, one ``torch.randn((S, *mu.shape))`` draw.
    """
    n_samples = as_count("n_samples", n_samples)
    scale = torch.exp(sigma) if log else sigma
    if n_samples == 1:
        eps = torch.randn_like(mu)
    else:
        eps = torch.randn((n_samples, *mu.shape), dtype=mu.dtype, device=mu.device)
    return mu + eps * scale


class VAE(nn.Module):
    """``encoder`` then one reparameterized sample then ``decoder``.

    ``vae(x)`` returns the decoder output; ``vae(x, latent=True)`` returns
    ``VAEOutput(encoder, z, decoder)``. With ``n_samples = S > 1``, ``z`` is ``(S, N, d)`` and the
    decoder sees it as ``(S * N, d)``: ``S`` blocks of ``N`` rows.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        widths.check_vae(encoder, decoder)
        self.encoder, self.decoder = encoder, decoder

    def sample_latent(self, encoder_output: EncoderOutput, n_samples: int = 1) -> torch.Tensor:
        """One :func:`reparameterize` call on the encoder output: ``(N, d)``, or ``(S, N, d)``."""
        if isinstance(encoder_output, GaussianLogOutput):
            return reparameterize(*encoder_output, log=True, n_samples=n_samples)
        if isinstance(encoder_output, GaussianOutput):
            return reparameterize(*encoder_output, log=False, n_samples=n_samples)
        raise TypeError(
            "encoder output must be a GaussianLogOutput or a GaussianOutput to sample from, "
            f"got {type(encoder_output).__name__}"
        )

    def forward(self, x: torch.Tensor, latent: bool = False, n_samples: int = 1) -> Any:
        rows = None
        try:
            encoder_output = self.encoder(x)
            z = self.sample_latent(encoder_output, n_samples)
            rows = z.reshape(-1, z.shape[-1]) if n_samples > 1 else z
            decoder_output = self.decoder(rows)
        except RuntimeError as exc:
            widths.explain(exc, {"vae.encoder": (self.encoder, x), "vae.decoder": (self.decoder, rows)})
            raise
        if latent:
            return VAEOutput(encoder_output, z, decoder_output)
        return decoder_output

    @property
    def config(self) -> dict[str, Any] | None:
        """``{"class": "VAE", "encoder": ..., "decoder": ...}``; ``None`` if a part has none."""
        enc, dec = getattr(self.encoder, "config", None), getattr(self.decoder, "config", None)
        if enc is None or dec is None:
            return None
        return {"class": "VAE", "encoder": enc, "decoder": dec}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "VAE":
        """Rebuild a VAE from :attr:`config` (fresh weights)."""
        if not isinstance(config, dict) or config.get("class") != "VAE":
            raise ValueError(f"config is not a VAE config: {config!r}")
        return cls(module_from_config(config["encoder"]), module_from_config(config["decoder"]))


def module_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild any encoder, decoder or ``VAE`` from its ``config``, found by ``config["class"]``."""
    name = config.get("class") if isinstance(config, dict) else None
    if name == "VAE":
        return VAE.from_config(config)
    if name not in _BUILT_CLASSES:
        raise ValueError(f"config names no known encoder, decoder or VAE class: {name!r}")
    return _BUILT_CLASSES[name].from_config(config)


# ----------------------------------------------------------------------------- likelihoods

_DECODER_OUTPUT_TYPES = (
    (BernoulliDecoder, BernoulliOutput),
    (SimpleGaussianDecoder, SimpleGaussianOutput),
    (JointGaussianLogDecoder, GaussianLogOutput),
    (SplitGaussianLogDecoder, GaussianLogOutput),
    (JointGaussianDecoder, GaussianOutput),
    (SplitGaussianDecoder, GaussianOutput),
)

_ENCODER_OUTPUT_TYPES = (
    (JointGaussianLogEncoder, GaussianLogOutput),
    (JointGaussianEncoder, GaussianOutput),
)


def _expected_output(kind: str, module: nn.Module, table: Sequence[tuple[type, type]],
                     output: object) -> type:
    for cls, out_type in table:
        if isinstance(module, cls):
            if not isinstance(output, out_type):
                raise TypeError(
                    f"{type(module).__name__} outputs a {out_type.__name__}, but the "
                    f"{kind} output given is a {type(output).__name__}"
                )
            return out_type
    known = ", ".join(cls.__name__ for cls, _ in table)
    raise TypeError(f"unsupported {kind} {type(module).__name__}; known: {known}")


def _blocks(t: torch.Tensor, field: str, n: int, d: int) -> torch.Tensor:
    """View ``t`` of shape ``(M, ...)`` with ``d`` features per row as ``(M // n, n, d)``."""
    if t.dim() == 0:
        raise ValueError(f"decoder output {field!r} must have a batch dimension")
    m, features = t.shape[0], t[0].numel()
    if features != d:
        raise ValueError(
            f"decoder output {field!r} has {features} features per sample but x has {d}"
        )
    if m % n != 0:
        raise ValueError(
            f"decoder output {field!r} has {m} rows, not a multiple of the {n} rows of x"
        )
    return t.reshape(m // n, n, d)


def decoder_loglikelihood(x: torch.Tensor, z: torch.Tensor, decoder: nn.Module,
                          decoder_output: DecoderOutput, *, sigma: float = 1.0) -> torch.Tensor:
    """Log-likelihood of ``x`` under the decoder output, summed over the ``D`` features: ``(M,)``.

    ``x`` is ``(N, *data_shape)``; each output field is ``(M, *data_shape)`` with ``M = S * N``,
    row ``r`` scored against ``x[r % N]`` (``S`` blocks of ``N``; ``x`` is broadcast, not copied).
    ``z`` is unused (kept for the Julia signature).

    - Bernoulli: ``sum(x log p + (1 - x) log(1 - p))`` with ``p`` clamped to
      ``[eps, 1 - eps]``, ``eps = torch.finfo(p.dtype).eps``: finite at ``p = 0`` or ``1``
      (one pass of the compiled op where it applies: :mod:`infomax_ext.bernoulli_op`).
    - SimpleGaussian (std ``sigma``, 1 by default):
      ``-1/2 sum((x - mu)^2) / sigma^2 - D/2 (2 log sigma + log 2 pi)``.
    - Gaussian with logsigma:
      ``-1/2 sum((x - mu)^2 exp(-2 logsigma)) - sum(logsigma) - D/2 log 2 pi``.
    - Gaussian with sigma: ``-1/2 sum(((x - mu) / sigma)^2) - sum(log sigma) - D/2 log 2 pi``.
    """
    out_type = _expected_output("decoder", decoder, _DECODER_OUTPUT_TYPES, decoder_output)
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty batch dimension, got shape {tuple(x.shape)}")
    n, d = x.shape[0], x[0].numel()
    xb = x.reshape(1, n, d)
    fields = [_blocks(t, name, n, d) for name, t in zip(decoder_output._fields, decoder_output)]
    if out_type is BernoulliOutput:
        # one pass over p (the compiled bernoulli_loglik) where it applies, else the formula
        loglik = bernoulli_op.bernoulli_loglik(fields[0].reshape(-1, d), x.reshape(n, d))
    elif out_type is SimpleGaussianOutput:
        sigma_t = torch.as_tensor(sigma, dtype=fields[0].dtype, device=fields[0].device)
        loglik = (-0.5 * ((xb - fields[0]) ** 2).sum(-1) / sigma_t**2
                  - d / 2 * (2 * torch.log(sigma_t) + _LOG_2PI))
    elif out_type is GaussianLogOutput:
        mu, logsigma = fields
        loglik = (-0.5 * ((xb - mu) ** 2 * torch.exp(-2 * logsigma)).sum(-1)
                  - logsigma.sum(-1) - d / 2 * _LOG_2PI)
    else:
        mu, std = fields
        loglik = (-0.5 * (((xb - mu) / std) ** 2).sum(-1)
                  - torch.log(std).sum(-1) - d / 2 * _LOG_2PI)
    return loglik.reshape(-1)


def _mu_logsigma(encoder: nn.Module,
                 encoder_output: EncoderOutput) -> tuple[torch.Tensor, torch.Tensor]:
    out_type = _expected_output("encoder", encoder, _ENCODER_OUTPUT_TYPES, encoder_output)
    mu, scale = encoder_output
    return mu, (scale if out_type is GaussianLogOutput else torch.log(scale))


def encoder_kl(encoder: nn.Module, encoder_output: EncoderOutput) -> torch.Tensor:
    """``KL(q(z | x) || N(0, I))`` per sample, ``(N,)``:
    ``1/2 sum(exp(2 logsigma) + mu^2 - 1 - 2 logsigma)`` over the ``d`` latent dimensions
    (``logsigma = log(sigma)`` for a :class:`JointGaussianEncoder`)."""
    mu, logsigma = _mu_logsigma(encoder, encoder_output)
    return 0.5 * (torch.exp(2 * logsigma) + mu**2 - 1 - 2 * logsigma).sum(-1)


def spherical_logprior(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I) = -1/2 sum(z^2) - d/2 log 2 pi`` over the last dimension:
    ``(..., d) -> (...)``."""
    return -0.5 * (z**2).sum(-1) - z.shape[-1] / 2 * _LOG_2PI


def encoder_logposterior(z: torch.Tensor, encoder: nn.Module,
                         encoder_output: EncoderOutput) -> torch.Tensor:
    """``log q(z | x) = -1/2 sum((z - mu)^2 exp(-2 logsigma)) - sum(logsigma) - d/2 log 2 pi``.

    ``z`` is ``(N, d)`` or ``(S, N, d)`` against ``mu``, ``logsigma`` of shape ``(N, d)``;
    returns ``(N,)`` or ``(S, N)``.
    """
    mu, logsigma = _mu_logsigma(encoder, encoder_output)
    return (-0.5 * ((z - mu) ** 2 * torch.exp(-2 * logsigma)).sum(-1)
            - logsigma.sum(-1) - z.shape[-1] / 2 * _LOG_2PI)
