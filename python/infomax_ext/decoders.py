"""The decoders of the VAE: codes ``z`` (N, d) to the parameters of p(x | z).

Four families, each with a ``from_sizes`` builder (the AutoEncoderToolkit.jl constructors) and
``from_config``: Bernoulli probabilities, a Gaussian mean with unit variance, and Gaussians with a
learned (log) standard deviation from one joint trunk or from two separate nets. Outputs have
the data's shape ``(N, *data_shape)``; see :mod:`.vae_outputs` for the tuples.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

import torch
from torch import nn

from ._builders import Built, builder_config, check_layers, check_size, head, mlp, output_pair, \
    parse_size
from .activations import ActivationLike, identity
from .vae_outputs import (BernoulliOutput, GaussianLogOutput, GaussianOutput, Init,
                          SimpleGaussianOutput)

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self

__all__ = ["BernoulliDecoder", "SimpleGaussianDecoder", "JointGaussianLogDecoder",
           "JointGaussianDecoder", "SplitGaussianLogDecoder", "SplitGaussianDecoder"]

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
        first_act, second_act = output_pair("output_activation", output_activation, second_default)
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
        first_act, second_act = output_pair("output_activation", output_activation, second_default)
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
