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
from typing import Any, Callable, NamedTuple, Sequence, Union

import torch
from torch import nn

from . import widths
from ._builders import Built, builder_config, check_layers, check_size, head, mlp, parse_size
from .activations import ActivationLike, identity
from .validation import as_count

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

Init = Callable[[torch.Tensor], Any]
"""A weight initialiser that fills its tensor in place (``nn.init.xavier_uniform_``)."""


# ----------------------------------------------------------------------------- outputs

class GaussianLogOutput(NamedTuple):
    """A diagonal Gaussian: mean ``mu`` and log standard deviation ``logsigma``, same shape."""

    mu: torch.Tensor
    logsigma: torch.Tensor


class GaussianOutput(NamedTuple):
    """A diagonal Gaussian: mean ``mu`` and standard deviation ``sigma > 0``, same shape."""

    mu: torch.Tensor
    sigma: torch.Tensor


class BernoulliOutput(NamedTuple):
    """Independent Bernoulli probabilities ``p`` in ``(0, 1)``."""

    p: torch.Tensor


class SimpleGaussianOutput(NamedTuple):
    """A Gaussian mean ``mu`` with unit standard deviation."""

    mu: torch.Tensor


EncoderOutput = Union[GaussianLogOutput, GaussianOutput]
"""What an encoder returns: ``(mu, logsigma)`` or ``(mu, sigma)``, each (N, d)."""

DecoderOutput = Union[BernoulliOutput, SimpleGaussianOutput, GaussianLogOutput, GaussianOutput]
"""What a decoder returns (one of the four output tuples)."""


class VAEOutput(NamedTuple):
    """``vae(x, latent=True)``: the encoder output, the sampled codes ``z`` and their decoding."""

    encoder: GaussianLogOutput | GaussianOutput
    z: torch.Tensor
    decoder: NamedTuple


# ----------------------------------------------------------------------------- builder helpers

def _pair(name: str, activation: ActivationLike | Sequence[ActivationLike],
          second_default: ActivationLike) -> tuple[Any, Any]:
    """An output activation given once or as a pair ``(first head, second head)``."""
    if isinstance(activation, (list, tuple)):
        if len(activation) != 2:
            raise ValueError(
                f"{name} must be one activation or a pair of two, got {len(activation)} items"
            )
        return tuple(activation)
    return activation, (activation if second_default is None else second_default)


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
        first_act, second_act = _pair("latent_activation", latent_activation, second_default)
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


# ----------------------------------------------------------------------------- decoders

def _decoder_net(n_latent: int, n_out: int, shape: list[int] | None, neurons: list[int],
                 activations: Sequence[ActivationLike], output_activation: ActivationLike,
                 init: Init) -> nn.Sequential:
    """``Linear(n_latent -> h1), act1, ..., Linear(hk -> n_out), output_activation``, then an
    unflatten to ``shape`` if given."""
    n_hidden = neurons[-1] if neurons else n_latent
    return nn.Sequential(*mlp(n_latent, neurons, activations, init),
                         *head(n_hidden, n_out, output_activation, init, shape))


class _OneNetDecoder(Built):
    """One network ``decoder`` on ``z``; its output is the one field of ``_output``."""

    widths_through = (("decoder",), ("decoder",))
    _output: type = BernoulliOutput

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor) -> Any:
        return self._output(self.decoder(z))

    @classmethod
    def _build(cls, size_output: int | Sequence[int], n_latent: int, decoder_neurons: Sequence[int],
               decoder_activation: Sequence[ActivationLike], output_activation: ActivationLike,
               init: Init) -> Self:
        n_out, shape = parse_size("size_output", size_output)
        check_size("n_latent", n_latent)
        neurons = check_layers("decoder_neurons", decoder_neurons,
                                "decoder_activation", decoder_activation)
        module = cls(_decoder_net(n_latent, n_out, shape, neurons, decoder_activation,
                                  output_activation, init))
        module.config = builder_config(
            cls.__name__, size_output=size_output, n_latent=n_latent,
            decoder_neurons=list(decoder_neurons), decoder_activation=list(decoder_activation),
            output_activation=output_activation,
        )
        return module


class BernoulliDecoder(_OneNetDecoder):
    """``z (M, d) -> BernoulliOutput(p)``, ``p = decoder(z)`` of shape ``(M, *data_shape)``."""

    _output = BernoulliOutput

    @classmethod
    def from_sizes(cls, size_output: int | Sequence[int], n_latent: int,
                   decoder_neurons: Sequence[int], decoder_activation: Sequence[ActivationLike],
                   output_activation: ActivationLike = torch.sigmoid, *,
                   init: Init = nn.init.xavier_uniform_) -> Self:
        """MLP ``Linear(n_latent -> h1), act1, ..., Linear(hk -> n_out), output_activation``,
        reshaped to ``size_output`` when that is a shape (``n_out`` is then its product).
        Keep the sigmoid so that ``p`` is in (0, 1). ``init`` fills each weight in place
        (xavier uniform by default); biases start at zero."""
        return cls._build(size_output, n_latent, decoder_neurons, decoder_activation,
                          output_activation, init)


class SimpleGaussianDecoder(_OneNetDecoder):
    """``z (M, d) -> SimpleGaussianOutput(mu)``, ``mu = decoder(z)`` of shape
    ``(M, *data_shape)``; the standard deviation is 1."""

    _output = SimpleGaussianOutput

    @classmethod
    def from_sizes(cls, size_output: int | Sequence[int], n_latent: int,
                   decoder_neurons: Sequence[int], decoder_activation: Sequence[ActivationLike],
                   output_activation: ActivationLike = identity, *,
                   init: Init = nn.init.xavier_uniform_) -> Self:
        """As :meth:`BernoulliDecoder.from_sizes`, with an identity output by default."""
        return cls._build(size_output, n_latent, decoder_neurons, decoder_activation,
                          output_activation, init)


class _JointDecoder(Built):
    """Shared trunk ``decoder`` on ``z``, then two heads."""

    widths_through = (("decoder", "mu"), ("mu", "decoder"))
    @classmethod
    def _build(cls, size_output: int | Sequence[int], n_latent: int, decoder_neurons: Sequence[int],
               decoder_activation: Sequence[ActivationLike],
               output_activation: ActivationLike | Sequence[ActivationLike], init: Init,
               second_default: ActivationLike) -> Self:
        n_out, shape = parse_size("size_output", size_output)
        check_size("n_latent", n_latent)
        neurons = check_layers("decoder_neurons", decoder_neurons,
                                "decoder_activation", decoder_activation)
        first_act, second_act = _pair("output_activation", output_activation, second_default)
        n_hidden = neurons[-1] if neurons else n_latent
        module = cls(
            nn.Sequential(*mlp(n_latent, neurons, decoder_activation, init)),
            head(n_hidden, n_out, first_act, init, shape),
            head(n_hidden, n_out, second_act, init, shape),
        )
        module.config = builder_config(
            cls.__name__, size_output=size_output, n_latent=n_latent,
            decoder_neurons=list(decoder_neurons), decoder_activation=list(decoder_activation),
            output_activation=output_activation,
        )
        return module


class JointGaussianLogDecoder(_JointDecoder):
    """``z (M, d) -> GaussianLogOutput(mu, logsigma)``, each ``(M, *data_shape)``:
    ``h = decoder(z)``, ``mu = mu(h)``, ``logsigma = logsigma(h)``."""

    def __init__(self, decoder: nn.Module, mu: nn.Module, logsigma: nn.Module):
        super().__init__()
        self.decoder, self.mu, self.logsigma = decoder, mu, logsigma

    def forward(self, z: torch.Tensor) -> GaussianLogOutput:
        h = self.decoder(z)
        return GaussianLogOutput(self.mu(h), self.logsigma(h))

    @classmethod
    def from_sizes(cls, size_output: int | Sequence[int], n_latent: int,
                   decoder_neurons: Sequence[int], decoder_activation: Sequence[ActivationLike],
                   output_activation: ActivationLike | Sequence[ActivationLike] = identity, *,
                   init: Init = nn.init.xavier_uniform_) -> Self:
        """Trunk ``Linear(n_latent -> h1), act1, ..., Linear(.. -> hk), actk``, then
        ``Linear(hk -> n_out), output_activation`` for each of ``mu`` and ``logsigma`` (one
        activation for both, as in Julia, or a pair), reshaped to ``size_output`` if a shape."""
        return cls._build(size_output, n_latent, decoder_neurons, decoder_activation,
                          output_activation, init, None)


class JointGaussianDecoder(_JointDecoder):
    """``z (M, d) -> GaussianOutput(mu, sigma)``, each ``(M, *data_shape)``: ``h = decoder(z)``,
    ``mu = mu(h)``, ``sigma = sigma(h) > 0``."""

    def __init__(self, decoder: nn.Module, mu: nn.Module, sigma: nn.Module):
        super().__init__()
        self.decoder, self.mu, self.sigma = decoder, mu, sigma

    def forward(self, z: torch.Tensor) -> GaussianOutput:
        h = self.decoder(z)
        return GaussianOutput(self.mu(h), self.sigma(h))

    @classmethod
    def from_sizes(cls, size_output: int | Sequence[int], n_latent: int,
                   decoder_neurons: Sequence[int], decoder_activation: Sequence[ActivationLike],
                   output_activation: ActivationLike | Sequence[ActivationLike] = identity, *,
                   init: Init = nn.init.xavier_uniform_) -> Self:
        """As :meth:`JointGaussianLogDecoder.from_sizes`, but one ``output_activation`` applies
        to ``mu`` only and the ``sigma`` head ends in softplus; a pair ``(mu, sigma)`` sets both."""
        return cls._build(size_output, n_latent, decoder_neurons, decoder_activation,
                          output_activation, init, "softplus")


class _SplitDecoder(Built):
    """Two separate networks on ``z``; ``_second`` names the second one's fields."""

    _second = ""
    widths_through = (("mu",), ("mu",))

    @classmethod
    def _build(cls, size_output: int | Sequence[int], n_latent: int, decoder_neurons: Sequence[int],
               decoder_activation: Sequence[ActivationLike],
               output_activation: ActivationLike | Sequence[ActivationLike],
               second_neurons: Sequence[int] | None,
               second_activation: Sequence[ActivationLike] | None, init: Init,
               second_default: ActivationLike) -> Self:
        second = cls._second
        n_out, shape = parse_size("size_output", size_output)
        check_size("n_latent", n_latent)
        neurons = check_layers("decoder_neurons", decoder_neurons,
                                "decoder_activation", decoder_activation)
        if second_neurons is None:
            second_neurons = decoder_neurons
        if second_activation is None:
            second_activation = decoder_activation
        neurons2 = check_layers(f"{second}_neurons", second_neurons,
                                 f"{second}_activation", second_activation)
        first_act, second_act = _pair("output_activation", output_activation, second_default)
        module = cls(
            _decoder_net(n_latent, n_out, shape, neurons, decoder_activation, first_act, init),
            _decoder_net(n_latent, n_out, shape, neurons2, second_activation, second_act, init),
        )
        module.config = builder_config(
            cls.__name__, size_output=size_output, n_latent=n_latent,
            decoder_neurons=list(decoder_neurons), decoder_activation=list(decoder_activation),
            output_activation=output_activation,
            **{f"{second}_neurons": list(second_neurons),
               f"{second}_activation": list(second_activation)},
        )
        return module


class SplitGaussianLogDecoder(_SplitDecoder):
    """``z (M, d) -> GaussianLogOutput(mu(z), logsigma(z))``, each ``(M, *data_shape)``, from two
    separate networks."""

    _second = "logsigma"

    def __init__(self, mu: nn.Module, logsigma: nn.Module):
        super().__init__()
        self.mu, self.logsigma = mu, logsigma

    def forward(self, z: torch.Tensor) -> GaussianLogOutput:
        return GaussianLogOutput(self.mu(z), self.logsigma(z))

    @classmethod
    def from_sizes(cls, size_output: int | Sequence[int], n_latent: int,
                   decoder_neurons: Sequence[int], decoder_activation: Sequence[ActivationLike],
                   output_activation: ActivationLike | Sequence[ActivationLike] = identity, *,
                   logsigma_neurons: Sequence[int] | None = None,
                   logsigma_activation: Sequence[ActivationLike] | None = None,
                   init: Init = nn.init.xavier_uniform_) -> Self:
        """Two MLPs ``Linear(n_latent -> h1), act1, ..., Linear(hk -> n_out), output act``: the
        ``mu`` net from ``decoder_neurons``/``decoder_activation``, the ``logsigma`` net from
        ``logsigma_neurons``/``logsigma_activation`` (default: the same layers).
        ``output_activation`` is one activation for both nets or a pair ``(mu, logsigma)``."""
        return cls._build(size_output, n_latent, decoder_neurons, decoder_activation,
                          output_activation, logsigma_neurons, logsigma_activation, init, None)


class SplitGaussianDecoder(_SplitDecoder):
    """``z (M, d) -> GaussianOutput(mu(z), sigma(z))``, each ``(M, *data_shape)``, from two
    separate networks; ``sigma > 0``."""

    _second = "sigma"

    def __init__(self, mu: nn.Module, sigma: nn.Module):
        super().__init__()
        self.mu, self.sigma = mu, sigma

    def forward(self, z: torch.Tensor) -> GaussianOutput:
        return GaussianOutput(self.mu(z), self.sigma(z))

    @classmethod
    def from_sizes(cls, size_output: int | Sequence[int], n_latent: int,
                   decoder_neurons: Sequence[int], decoder_activation: Sequence[ActivationLike],
                   output_activation: ActivationLike | Sequence[ActivationLike] = identity, *,
                   sigma_neurons: Sequence[int] | None = None,
                   sigma_activation: Sequence[ActivationLike] | None = None,
                   init: Init = nn.init.xavier_uniform_) -> Self:
        """As :meth:`SplitGaussianLogDecoder.from_sizes` with a ``sigma`` net; one
        ``output_activation`` applies to ``mu`` only and the ``sigma`` net ends in softplus."""
        return cls._build(size_output, n_latent, decoder_neurons, decoder_activation,
                          output_activation, sigma_neurons, sigma_activation, init, "softplus")


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
      ``[eps, 1 - eps]``, ``eps = torch.finfo(p.dtype).eps``: finite at ``p = 0`` or ``1``.
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
        p = fields[0]
        eps = torch.finfo(p.dtype).eps
        p = p.clamp(eps, 1 - eps)
        loglik = (xb * torch.log(p) + (1 - xb) * torch.log1p(-p)).sum(-1)
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
