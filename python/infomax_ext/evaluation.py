"""How informative are the latent codes? The held-out metrics of the InfoMax VAE paper.

- ``mi``: the NWJ estimate ``mean T(x, z) - mean exp(T(x, z') - 1)`` on the held-out split, of a
  *freshly trained* MI chain on the *frozen* encoder (the chain trained alongside the model is not
  used: for a plain VAE it never mattered, for the InfoMax VAE it is part of the objective).
- ``active_units``: dimensions ``j`` whose encoder mean varies over the data,
  ``Var_x(E[z_j | x]) > threshold`` (0.01 by default, Burda et al. 2016). A collapsed unit has
  ``q(z_j | x) = p(z_j)`` for every ``x``: its mean is constant and it carries no information.
- ``probe_accuracy``: a logistic-regression probe trained on the encoder means of the training
  split, tested on the held-out split (needs labels; raw means, no rescaling, so a unit with a
  tiny spread counts for little, as it does for the decoder).
- ``recon_loglik``: mean ``log p(x | z)`` with one ``z ~ q(z | x)`` per held-out sample (nats).
- ``kl``: mean ``KL(q(z | x) || N(0, I))`` over the held-out samples (nats).
- ``elbo``: ``recon_loglik - kl``.

All functions run without gradients and under a forked, seeded RNG: evaluating never changes
torch's global random state.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .mutual_info import MutualInfoChain, latent_permutation, paired_mutual_info
from .vae import VAE, decoder_loglikelihood, encoder_kl
from .data import MappedSamples

if TYPE_CHECKING:
    from .infomax import InfoMaxVAE

__all__ = [
    "ACTIVE_UNIT_THRESHOLD",
    "encoder_mean",
    "active_units",
    "reconstruction_and_kl",
    "probe_accuracy",
    "heldout_mutual_info",
    "evaluate",
]

ACTIVE_UNIT_THRESHOLD = 0.01
_CHUNK = 2048


@contextlib.contextmanager
def _forked(device: torch.device, seed: int) -> Iterator[None]:
    """Torch's RNG forked (CPU and ``device``) and seeded with ``seed`` for the block."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return torch.device("cpu") if p is None else p.device


@torch.no_grad()
def encoder_mean(vae: VAE, x: torch.Tensor | MappedSamples) -> torch.Tensor:
    """The encoder means ``E[z | x]`` (N, d) for ``x`` (N, *sample_shape), in chunks."""
    device = _device_of(vae)
    parts = [vae.encoder(x[i:i + _CHUNK].to(device))[0] for i in range(0, x.shape[0], _CHUNK)]
    return torch.cat(parts)


def active_units(mu: torch.Tensor,
                 threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[int, list[float]]:
    """``(number of active units, per-dimension variances)`` of the encoder means ``mu`` (N, d):
    unit ``j`` is active when ``Var_n(mu[n, j]) > threshold`` (population variance over the N
    samples)."""
    if mu.dim() != 2 or mu.shape[0] < 2:
        raise ValueError(f"mu must be (N, d) with N >= 2, got shape {tuple(mu.shape)}")
    variances = mu.double().var(dim=0, unbiased=False)
    return int((variances > threshold).sum()), [float(v) for v in variances]


@torch.no_grad()
def reconstruction_and_kl(vae: VAE, x: torch.Tensor | MappedSamples) -> tuple[float, float]:
    """``(mean log p(x | z), mean KL(q(z | x) || N(0, I)))`` over ``x`` (N, *sample_shape), one
    ``z ~ q(z | x)`` per sample, drawn from torch's global generator (seed it, or fork it, to
    repeat)."""
    device = _device_of(vae)
    loglik, kl = 0.0, 0.0
    for i in range(0, x.shape[0], _CHUNK):
        xb = x[i:i + _CHUNK].to(device)
        out = vae(xb, latent=True)
        loglik += float(decoder_loglikelihood(xb, out.z, vae.decoder, out.decoder).double().sum())
        kl += float(encoder_kl(vae.encoder, out.encoder).double().sum())
    return loglik / x.shape[0], kl / x.shape[0]


def probe_accuracy(mu_train: torch.Tensor, y_train: torch.Tensor, mu_test: torch.Tensor,
                   y_test: torch.Tensor, *, seed: int = 0, max_iter: int = 2000) -> float | None:
    """Test accuracy of a logistic-regression probe fit on ``(mu_train (N, d), y_train (N,))``
    and scored on ``(mu_test (M, d), y_test (M,))``; ``None`` when the training labels hold a
    single class (nothing to learn)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    import warnings

    y_tr = np.asarray(y_train.cpu() if isinstance(y_train, torch.Tensor) else y_train)
    if np.unique(y_tr).size < 2:
        return None
    # scikit-learn takes 32-bit seeds: one derived from ``seed``, whatever its size
    random_state = int(np.random.SeedSequence(int(seed)).generate_state(1)[0])
    probe = LogisticRegression(max_iter=max_iter, random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(mu_train.double().cpu().numpy(), y_tr)
    y_te = np.asarray(y_test.cpu() if isinstance(y_test, torch.Tensor) else y_test)
    return float(probe.score(mu_test.double().cpu().numpy(), y_te))


def heldout_mutual_info(vae: VAE, x_train: torch.Tensor | MappedSamples,
                        x_test: torch.Tensor | MappedSamples, *,
                        mi_neurons: Sequence[int] = (128, 128), activation: str = "relu",
                        steps: int = 1500, batch_size: int = 256, lr: float = 1e-3,
                        seed: int = 0, n_eval: int = 16) -> float:
    """NWJ estimate of ``I(x; z)`` under the frozen encoder ``q(z | x)`` of ``vae``.

    A fresh ``MutualInfoChain.from_sizes(sample_shape, d, mi_neurons, activation)`` is trained
    with Adam (``lr``) for ``steps`` batches of ``batch_size`` samples of ``x_train`` (N, ...)
    (a new ``z ~ q(z | x)`` and a new shuffle each step) to maximise the bound; the estimate is
    the bound on all of ``x_test`` (M, ..., M >= 2) as one batch, averaged over ``n_eval`` draws of
    ``z`` and of the shuffle. Deterministic for a given ``seed``; the global RNG is untouched."""
    device = _device_of(vae)
    n, d = x_train.shape[0], None
    if n < 2 or x_test.shape[0] < 2:
        raise ValueError("heldout_mutual_info needs at least 2 training and 2 test samples")
    shape = list(x_train.shape[1:])
    with _forked(device, seed):
        with torch.no_grad():
            d = vae.encoder(x_train[:2].to(device))[0].shape[1]
        size = shape[0] if len(shape) == 1 else shape
        chain = MutualInfoChain.from_sizes(size, d, list(mi_neurons),
                                           [activation] * len(mi_neurons)).to(device)
        opt = torch.optim.Adam(chain.parameters(), lr=lr)
        batch_size = min(batch_size, n)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(0, n, (batch_size,), generator=generator)
            xb = x_train[idx].to(device)
            with torch.no_grad():
                z = vae.sample_latent(vae.encoder(xb))
            perm = latent_permutation(batch_size, 1, None, device)
            loss = -paired_mutual_info(chain, xb, z, perm).bound
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        total = 0.0
        with torch.no_grad():
            xt = x_test.to(device)
            enc = vae.encoder(xt)
            for _ in range(n_eval):
                z = vae.sample_latent(enc)
                perm = latent_permutation(xt.shape[0], 1, None, device)
                total += float(paired_mutual_info(chain, xt, z, perm).bound)
    return total / n_eval


def evaluate(model: InfoMaxVAE | VAE, x_train: torch.Tensor | MappedSamples,
             x_test: torch.Tensor | MappedSamples, y_train: torch.Tensor | None = None,
             y_test: torch.Tensor | None = None, *, threshold: float = ACTIVE_UNIT_THRESHOLD,
             mi_steps: int = 1500, mi_neurons: Sequence[int] = (128, 128), activation: str = "relu",
             seed: int = 0) -> dict[str, Any]:
    """All held-out metrics of an ``InfoMaxVAE`` (or a ``VAE``) as a JSON-ready dict.

    Keys: ``mi``, ``active_units``, ``probe_accuracy`` (``None`` without labels),
    ``recon_loglik``, ``kl``, ``elbo``, plus ``latent_dim``, ``active_unit_threshold``,
    ``latent_variances`` (per dimension, held-out), ``n_train``, ``n_test``. Data: x (N, ...),
    labels (N,) int64."""
    vae: VAE = model.vae if hasattr(model, "vae") else model  # type: ignore[assignment]
    was_training = vae.training
    vae.eval()
    try:
        mu_test = encoder_mean(vae, x_test)
        units, variances = active_units(mu_test, threshold)
        with _forked(_device_of(vae), seed):
            loglik, kl = reconstruction_and_kl(vae, x_test)
        probe = None
        if y_train is not None and y_test is not None:
            probe = probe_accuracy(encoder_mean(vae, x_train), y_train, mu_test, y_test, seed=seed)
        mi = heldout_mutual_info(vae, x_train, x_test, mi_neurons=mi_neurons,
                                 activation=activation, steps=mi_steps, seed=seed)
    finally:
        vae.train(was_training)
    return {
        "mi": mi,
        "active_units": units,
        "probe_accuracy": probe,
        "recon_loglik": loglik,
        "kl": kl,
        "elbo": loglik - kl,
        "latent_dim": len(variances),
        "active_unit_threshold": threshold,
        "latent_variances": variances,
        "n_train": int(x_train.shape[0]),
        "n_test": int(x_test.shape[0]),
    }
