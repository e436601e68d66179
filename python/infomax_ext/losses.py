"""The losses as ``nn.Module`` objects, used like ``nn.CrossEntropyLoss``: build once with the
loss's settings, call on each batch.

- :class:`MutualInfoLoss` ``(critic)``: ``-I(x; z)``, the negative NWJ bound of a critic
  ``T(x, z)`` (a :class:`~infomax_ext.MutualInfoChain`) on any encoder's codes: the drop-in
  MI term of your own training loop.
- :class:`InfoMaxVAELoss` ``(critic, beta=, alpha=)``: the InfoMax VAE's loss of a
  :class:`~infomax_ext.VAE`, ``-log p(x|z) + beta KL - alpha I(x; z)``
  (:func:`~infomax_ext.infomaxloss`).

The critic is a submodule: ``loss.parameters()`` are its parameters, ``loss.to(device)`` moves
it, ``loss.state_dict()`` saves it. Train it in a step of its own on detached codes (it
maximises I, the encoder's loss uses I too)::

    mi_loss = MutualInfoLoss(MutualInfoChain.from_sizes(64, 8, [128, 128], ["relu", "relu"]))
    critic_opt = torch.optim.Adam(mi_loss.parameters(), lr=1e-3)
    for x in loader:
        mu, logsigma = encoder(x)
        z = mu + logsigma.exp() * torch.randn_like(mu)
        loss = task_loss(...) + alpha * mi_loss(x, z)       # the encoder's step: maximise I
        model_opt.zero_grad(); loss.backward(); model_opt.step()
        critic_loss = mi_loss(x, z.detach())                 # the critic's step: its own bound
        critic_opt.zero_grad(); critic_loss.backward(); critic_opt.step()
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from .infomax import InfoMaxTerms, infomax_terms
from .bounds import Bound, resolve_bound
from .mutual_info import NEGATIVES, MIScores, check_batch, paired_mutual_info, shuffled_bound
from .vae import decoder_loglikelihood, encoder_kl
from .validation import as_count, check_weight, is_integer_scalar
from .vae import VAEOutput

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["MutualInfoLoss", "InfoMaxVAELoss"]


def _finite(name: str, value: object) -> float:
    """A loss weight as a float: finite and >= 0 (:func:`~infomax_ext.validation.check_weight`)."""
    return float(check_weight(name, value))


def _critic(critic: object) -> nn.Module:
    if not isinstance(critic, nn.Module):
        raise TypeError(f"critic must be an nn.Module T(x, z) such as a MutualInfoChain, got "
                        f"{type(critic).__name__}")
    return critic


def _same(key: str) -> str:
    return key


def mi_loss_settings(*, regularization: object = None, reg_strength: object = 1.0,
                     bound: object = "nwj", negatives: object = "shuffle", seed: object = None,
                     process_group: object = None, where: str = "",
                     name: Callable[[str], str] = _same) -> tuple[Bound, str, float]:
    """The checked settings of an MI loss, before any work: ``(bound, negatives, reg_strength)``
    (the bound resolved, the weight as a float). One check for :class:`MutualInfoLoss`,
    :class:`InfoMaxVAELoss` and :func:`~infomax_ext.train_step`'s ``miloss_kwargs`` (the
    keywords of :func:`~infomax_ext.miloss`), each refused with a TypeError or ValueError that
    names it: ``regularization`` None or callable, ``reg_strength`` a finite number >= 0,
    ``bound`` one :func:`~infomax_ext.bounds.resolve_bound` takes, ``negatives`` one of
    ``NEGATIVES``, ``seed`` None or an integer scalar, ``process_group`` None or a
    torch.distributed ProcessGroup. ``where`` (e.g. ``"train_step"``) prefixes the messages;
    ``name(key)`` is how a setting is named in them (e.g. ``miloss_kwargs['seed']``)."""
    prefix = f"{where}: " if where else ""
    if regularization is not None and not callable(regularization):
        raise TypeError(f"{prefix}{name('regularization')} must be a function of "
                        f"MIScores(joint, shuffled), got {type(regularization).__name__} "
                        f"{regularization!r}")
    weight = float(check_weight(name("reg_strength"), reg_strength, where))
    if not isinstance(negatives, str) or negatives not in NEGATIVES:
        raise ValueError(f"{prefix}{name('negatives')} must be one of "
                         f"{', '.join(map(repr, NEGATIVES))}, got {negatives!r}")
    try:
        resolved = resolve_bound(bound)  # type: ignore[arg-type]  # any value: checked there
    except ValueError as exc:
        if not where:
            raise
        raise ValueError(f"{prefix}{name('bound')}: {exc}") from None
    if seed is not None and not is_integer_scalar(seed):
        raise TypeError(f"{prefix}{name('seed')} must be an integer or None, got "
                        f"{type(seed).__name__} ({seed!r})")
    if process_group is not None and not _is_process_group(process_group):
        raise TypeError(f"{prefix}{name('process_group')} must be a torch.distributed "
                        f"ProcessGroup or None, got {type(process_group).__name__} "
                        f"({process_group!r})")
    return resolved, negatives, weight


def _is_process_group(value: object) -> bool:
    import torch.distributed as dist

    return dist.is_available() and isinstance(value, dist.ProcessGroup)


class MutualInfoLoss(nn.Module):
    """``-I(x; z)``: the negative NWJ (variational) lower bound on the mutual information of
    samples ``x`` and their codes ``z``, estimated by the critic ``T`` it holds.

    ``I = mean_i T(x_i, z_i) - mean_i exp(T(x_i, z_{pi(i)}) - 1)``, with ``pi`` a random
    permutation of the codes (the shuffled pairs stand for the product of the marginals), plus
    ``reg_strength * regularization(MIScores(joint, shuffled))`` when a regularization is given.

    ``forward(x, z, z_shuffle=None, *, seed=None)``: ``x`` (N, ...), N >= 2; ``z`` (N, d), or
    (S N, d) for S codes per sample (block s pairs row s N + i with ``x[i]``; each block is
    shuffled within itself); ``z_shuffle`` (same shape as ``z``) replaces the internal shuffle.
    Returns a 0-dim tensor. The value equals ``-variational_mutual_info(critic, x, z, seed=seed)``
    (:func:`~infomax_ext.variational_mutual_info`).

    ``shuffled_grad=False`` (default) treats the shuffled codes as constants, so ``z`` gets its
    gradient through the joint term only; ``True`` lets it flow through both terms. The critic
    gets gradient from both terms either way. ``process_group`` (torch.distributed): each process
    passes its own rows, the codes are shuffled over all processes' rows
    (:func:`~infomax_ext.mutual_info.shuffled_bound`). ``bound`` (default ``"nwj"``, the
    formula above) and ``negatives`` (``"shuffle"`` or ``"all"``) choose another MI bound and
    its negatives (docs/bounds.md).
    """

    def __init__(self, critic: nn.Module, *, shuffled_grad: bool = False,
                 regularization: Callable[[MIScores], torch.Tensor] | None = None,
                 reg_strength: float = 1.0, process_group: ProcessGroup | None = None,
                 bound: str | Bound = "nwj",
                 negatives: str = "shuffle"):
        super().__init__()
        if not isinstance(shuffled_grad, bool):
            raise TypeError(f"shuffled_grad must be True or False, got {shuffled_grad!r}")
        critic = _critic(critic)
        self.bound, self.negatives, self.reg_strength = mi_loss_settings(
            regularization=regularization, reg_strength=reg_strength, bound=bound,
            negatives=negatives, process_group=process_group)
        self.critic = critic
        self.shuffled_grad = shuffled_grad
        self.regularization = regularization
        self.process_group = process_group

    def forward(self, x: torch.Tensor, z: torch.Tensor, z_shuffle: torch.Tensor | None = None,
                *, seed: int | None = None) -> torch.Tensor:
        n = check_batch(x, what="MutualInfoLoss")
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] % n:
            raise ValueError(f"MutualInfoLoss: z must be (N, d) or (S N, d) for x of N = {n} rows, "
                             f"got {tuple(z.shape) if isinstance(z, torch.Tensor) else z!r}")
        if z_shuffle is not None:
            if z_shuffle.shape != z.shape:
                raise ValueError(f"z_shuffle has shape {tuple(z_shuffle.shape)} but z has "
                                 f"{tuple(z.shape)}")
            if seed is not None or self.process_group is not None:
                raise ValueError("with z_shuffle given nothing is shuffled: no seed or "
                                 "process_group")
            if self.negatives != "shuffle" or self.bound.needs_all_pairs:
                raise ValueError("with z_shuffle given nothing is shuffled: not with "
                                 f"negatives={self.negatives!r} or bound {self.bound.name!r}")
            paired = paired_mutual_info(self.critic, x, z, z_shuffle=z_shuffle,
                                        shuffled_grad=self.shuffled_grad, bound=self.bound)
        else:
            paired = shuffled_bound(self.critic, x, z, z.shape[0] // n, seed,
                                    shuffled_grad=self.shuffled_grad,
                                    process_group=self.process_group, bound=self.bound,
                                    negatives=self.negatives)
        loss = -paired.bound
        if self.regularization is not None:
            loss = loss + self.reg_strength * self.regularization(
                MIScores(paired.joint, paired.shuffled))
        return loss

    def extra_repr(self) -> str:
        reg = "" if self.regularization is None else f", reg_strength={self.reg_strength:g}"
        return f"shuffled_grad={self.shuffled_grad}{reg}"


class InfoMaxVAELoss(nn.Module):
    """The InfoMax VAE's loss of a VAE, with the critic it holds (:func:`~infomax_ext.infomaxloss`):

    ``-mean log p(x_out | z) + beta * mean KL(q(z|x) || N(0, I)) - alpha * I(x; z)
    + reg_strength * regularization(VAEOutput(encoder, z, decoder))``,

    with ``z ~ q(z | x)`` (``n_samples`` codes per sample, reparameterised) and ``I`` the NWJ
    bound of the critic on ``(x, z)`` (as in :class:`MutualInfoLoss`; the shuffled codes are
    constants unless ``shuffled_grad``; ``bound`` and ``negatives`` as there; a bound's state,
    DV's moving average, is read, not updated: the critic's loss updates it).

    ``forward(vae, x, x_out=None, *, seed=None)``: ``vae`` a :class:`~infomax_ext.VAE` (its
    ``encoder``, ``decoder`` and ``sample_latent``), ``x`` (N, ...) with N >= 2, ``x_out`` the
    reconstruction target (default ``x``), ``seed`` the shuffle's. Returns a 0-dim tensor;
    :meth:`terms` returns the terms too (:class:`~infomax_ext.InfoMaxTerms`). The gradient
    reaches the VAE and the critic; the critic's own objective is ``MutualInfoLoss(critic)``
    on detached codes (:func:`~infomax_ext.miloss`), in a step of its own.
    """

    def __init__(self, critic: nn.Module, *, beta: float = 1.0, alpha: float = 1.0,
                 n_samples: int = 1,
                 reconstruction_loglikelihood: Callable[..., torch.Tensor] = decoder_loglikelihood,
                 kl_divergence: Callable[..., torch.Tensor] = encoder_kl,
                 regularization: Callable[[VAEOutput], torch.Tensor] | None = None,
                 reg_strength: float = 1.0,
                 shuffled_grad: bool = False, process_group: ProcessGroup | None = None,
                 bound: str | Bound = "nwj",
                 negatives: str = "shuffle"):
        super().__init__()
        n_samples = as_count("n_samples", n_samples)
        if not isinstance(shuffled_grad, bool):
            raise TypeError(f"shuffled_grad must be True or False, got {shuffled_grad!r}")
        self.critic = _critic(critic)
        self.beta = _finite("beta", beta)
        self.alpha = _finite("alpha", alpha)
        self.n_samples = n_samples
        self.reconstruction_loglikelihood = reconstruction_loglikelihood
        self.kl_divergence = kl_divergence
        self.regularization = regularization
        self.reg_strength = _finite("reg_strength", reg_strength)
        self.shuffled_grad = shuffled_grad
        self.process_group = process_group
        self.bound, self.negatives, _ = mi_loss_settings(bound=bound, negatives=negatives,
                                                         process_group=process_group)

    def terms(self, vae: nn.Module, x: torch.Tensor, x_out: torch.Tensor | None = None, *,
              seed: int | None = None) -> InfoMaxTerms:
        """The loss and its terms: ``InfoMaxTerms(loss, loglikelihood, kl, mi, regularization,
        scores, vae_output)`` (all 0-dim but the last two). The bound's state is read, not
        updated, as in :func:`~infomax_ext.infomaxloss`: DV's moving average is the critic's,
        updated by its own loss (:class:`MutualInfoLoss`), once per training step."""
        # any VAE-like module and critic module (not only VAE and MutualInfoChain)
        return infomax_terms(
            vae, self.critic, x, x_out,  # type: ignore[arg-type]
            beta=self.beta, alpha=self.alpha,
            n_samples=self.n_samples, reconstruction_loglikelihood=self.reconstruction_loglikelihood,
            kl_divergence=self.kl_divergence, regularization=self.regularization,
            reg_strength=self.reg_strength, seed=seed, shuffled_grad=self.shuffled_grad,
            process_group=self.process_group, bound=self.bound.without_state_update(),
            negatives=self.negatives)

    def forward(self, vae: nn.Module, x: torch.Tensor, x_out: torch.Tensor | None = None, *,
                seed: int | None = None) -> torch.Tensor:
        return self.terms(vae, x, x_out, seed=seed).loss

    def extra_repr(self) -> str:
        extra = f"beta={self.beta:g}, alpha={self.alpha:g}"
        if self.n_samples != 1:
            extra += f", n_samples={self.n_samples}"
        if self.shuffled_grad:
            extra += ", shuffled_grad=True"
        return extra
