"""What the VAE parts return: the named tuples of encoders, decoders and the VAE, shapes stated.

Batch-first: ``N`` rows; an encoder's tuple is ``(N, d)`` per field, a decoder's has the data's
shape ``(N, *data_shape)`` (or ``(S * N, *data_shape)`` for ``S`` samples of codes per input).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import torch

__all__ = ["GaussianLogOutput", "GaussianOutput", "BernoulliOutput", "SimpleGaussianOutput",
           "EncoderOutput", "DecoderOutput", "VAEOutput", "Init"]

Init = Callable[[torch.Tensor], Any]
"""A weight initialiser that fills its tensor in place (``nn.init.xavier_uniform_``)."""


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
