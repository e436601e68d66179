"""The InfoMax VAE: the model, its two losses and the alternating training step.

VAE loss:  ``-<log p(x|z)> + beta * KL(q(z|x) || p(z)) - alpha * I(x; z) + reg_strength * reg``;
MI loss:   ``-I(x; z) + reg_strength * reg``, with ``I`` the NWJ bound of the MI chain.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, NamedTuple

import torch
from torch import nn

from . import distributed
from .mutual_info import (
    MIScores,
    MutualInfoChain,
    check_batch,
    reuse_data_half,
    shuffled_bound,
)
from .vae import VAE, VAEOutput, decoder_loglikelihood, encoder_kl

__all__ = ["InfoMaxVAE", "InfoMaxVAEOutput", "InfoMaxTerms", "infomaxloss", "infomax_terms",
           "miloss", "train_step"]


class InfoMaxVAEOutput(NamedTuple):
    """``model(x, latent=True)``: the VAE's latent output and the MI estimate (0-dim)."""

    vae: VAEOutput
    mi: torch.Tensor


class InfoMaxVAE(nn.Module):
    """A :class:`VAE` trained together with a :class:`MutualInfoChain` ``mi``.

    ``model(x)`` is ``vae(x)`` (the decoder output); ``model(x, latent=True, seed=None)`` returns
    ``InfoMaxVAEOutput(vae=VAEOutput(encoder, z, decoder), mi=I)``; with ``process_group`` the
    codes are shuffled over all processes' rows (:func:`~infomax_ext.mutual_info.shuffled_bound`).
    """

    def __init__(self, vae: VAE, mi: MutualInfoChain):
        super().__init__()
        if not isinstance(vae, nn.Module) or not isinstance(mi, nn.Module):
            raise TypeError("InfoMaxVAE(vae, mi) takes two nn.Modules")
        self.vae, self.mi = vae, mi

    def forward(self, x: torch.Tensor, latent: bool = False, seed: int | None = None,
                process_group=None):
        if not latent:
            return self.vae(x)
        check_batch(x)
        out = self.vae(x, latent=True)
        bound = shuffled_bound(self.mi, x, out.z, seed=seed, process_group=process_group).bound
        return InfoMaxVAEOutput(out, bound)

    def save(self, directory) -> None:
        """Write the model (architecture and weights) to ``directory``; see :meth:`load`."""
        from .serialization import save_model

        save_model(self, directory)

    @classmethod
    def load(cls, directory, map_location=None) -> "InfoMaxVAE":
        """The model saved by :meth:`save` in ``directory``, rebuilt exactly."""
        from .serialization import load_model

        return load_model(directory, map_location=map_location)


class InfoMaxTerms(NamedTuple):
    """The pieces of :func:`infomaxloss`: ``loss`` and its terms (all 0-dim), the MI chain's
    ``scores`` and the VAE's latent output."""

    loss: torch.Tensor
    loglikelihood: torch.Tensor
    kl: torch.Tensor
    mi: torch.Tensor
    regularization: torch.Tensor | None
    scores: MIScores
    vae_output: VAEOutput


def infomax_terms(
    vae: VAE,
    mi: MutualInfoChain,
    x: torch.Tensor,
    x_out: torch.Tensor | None = None,
    *,
    beta: float = 1.0,
    alpha: float = 1.0,
    n_samples: int = 1,
    reconstruction_loglikelihood: Callable = decoder_loglikelihood,
    kl_divergence: Callable = encoder_kl,
    regularization: Callable | None = None,
    reg_strength: float = 1.0,
    seed: int | None = None,
    shuffled_grad: bool = False,
    process_group=None,
) -> InfoMaxTerms:
    """:func:`infomaxloss` with its terms; the arguments are those of :func:`infomaxloss`."""
    n = check_batch(x, what="infomaxloss")
    if x_out is not None and x_out.shape[0] != n:
        raise ValueError(f"x and x_out batch sizes differ: {n} and {x_out.shape[0]}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    encoder_output = vae.encoder(x)
    z = vae.sample_latent(encoder_output, n_samples)
    z_rows = z.reshape(-1, z.shape[-1])
    decoder_output = vae.decoder(z_rows)
    target = x if x_out is None else x_out
    if n_samples > 1 and reconstruction_loglikelihood is not decoder_loglikelihood:
        target = target.repeat(n_samples, *([1] * (target.dim() - 1)))
    loglik = reconstruction_loglikelihood(target, z_rows, vae.decoder, decoder_output).mean()
    kl = kl_divergence(vae.encoder, encoder_output).mean()
    paired = shuffled_bound(mi, x, z_rows, n_samples, seed, shuffled_grad=shuffled_grad,
                            process_group=process_group)
    loss = -loglik + beta * kl - alpha * paired.bound
    vae_output = VAEOutput(encoder_output, z, decoder_output)
    reg = None
    if regularization is not None:
        reg = regularization(vae_output)
        loss = loss + reg_strength * reg
    return InfoMaxTerms(loss, loglik, kl, paired.bound, reg,
                        MIScores(paired.joint, paired.shuffled), vae_output)


def infomaxloss(vae, mi, x, x_out=None, **kwargs) -> torch.Tensor:
    """Loss of the VAE in the InfoMax VAE (a 0-dim tensor).

    ``-mean(log p(x_out | z)) + beta * mean(KL(q(z|x) || N(0, I))) - alpha * I(x; z)
    + reg_strength * regularization(VAEOutput(encoder, z, decoder))``, with ``x_out = x`` unless
    given. x (N, ...), N >= 2. Keywords: ``beta=1``, ``alpha=1``, ``n_samples=1`` (latent samples
    per input, drawn in one batch; the reconstruction and MI terms average over them),
    ``reconstruction_loglikelihood=decoder_loglikelihood``, ``kl_divergence=encoder_kl``,
    ``regularization=None``, ``reg_strength=1``, ``seed=None`` (the shuffle's seed),
    ``shuffled_grad=False`` (True: the MI term reaches the encoder through the shuffled codes
    too, as in the paper's code), ``process_group=None`` (torch.distributed: x holds this
    process's rows, the codes are shuffled over all processes' rows and the MI term is the mean
    of the bound's terms over this process's rows; see :mod:`infomax_ext.distributed`).
    """
    return infomax_terms(vae, mi, x, x_out, **kwargs).loss


def miloss(vae, mi, x, *, regularization=None, reg_strength=1.0, seed=None,
           process_group=None) -> torch.Tensor:
    """Loss of the MI chain: ``-I(x; z) + reg_strength * regularization(MIScores(joint, shuffled))``.

    z is one sample of the VAE's encoder, drawn without building a graph, so the gradient
    reaches only the MI chain. x (N, ...), N >= 2. ``process_group`` as in :func:`infomaxloss`.
    """
    check_batch(x, what="miloss")
    with torch.no_grad():
        z = vae.sample_latent(vae.encoder(x))
    paired = shuffled_bound(mi, x, z, seed=seed, process_group=process_group)
    loss = -paired.bound
    if regularization is not None:
        loss = loss + reg_strength * regularization(MIScores(paired.joint, paired.shuffled))
    return loss


def _optimizers(opt):
    if isinstance(opt, dict) or hasattr(opt, "keys"):
        try:
            return opt["vae"], opt["mi"]
        except KeyError:
            pass
    elif hasattr(opt, "vae") and hasattr(opt, "mi"):
        return opt.vae, opt.mi
    raise TypeError(
        "opt must hold a 'vae' and an 'mi' optimizer: a mapping {'vae': ..., 'mi': ...} or an "
        f"object with attributes vae and mi, got {type(opt).__name__}"
    )


@contextlib.contextmanager
def _frozen(params: Iterable[nn.Parameter]):
    """Parameters temporarily set to requires_grad=False, so no graph is built for them."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _set_grads(loss: torch.Tensor, params: list[nn.Parameter], retain_graph: bool = False):
    """``p.grad = d loss / d p`` for exactly these parameters (others' .grad untouched)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = g


def train_step(
    model: InfoMaxVAE,
    x: torch.Tensor,
    opt,
    x_out: torch.Tensor | None = None,
    *,
    infomaxloss_function: Callable = infomaxloss,
    infomaxloss_kwargs: dict | None = None,
    miloss_function: Callable = miloss,
    miloss_kwargs: dict | None = None,
    loss_return: bool = False,
    verbose: bool = False,
    reuse_forward: bool = False,
    shuffled_grad: bool | None = None,
    process_group=None,
    negatives: str = "global",
):
    """One training step of the InfoMax VAE (Julia's ``train!``).

    ``opt`` holds a ``vae`` and an ``mi`` optimizer. (1) The gradient of the InfoMax loss with
    respect to the VAE's parameters only, then the VAE step; (2) a fresh forward pass through the
    updated VAE, the gradient of the MI loss with respect to the MI chain only, then the MI step.
    Neither loss writes the other network's ``.grad``. ``reuse_forward=True`` is the paper's
    cheaper scheme: one forward pass feeds both updates (the MI step uses the pre-update codes and
    the same permutation); it needs the default loss functions. ``shuffled_grad`` (True or False)
    is passed on to the VAE loss, as in ``infomaxloss(..., shuffled_grad=...)``; None leaves it to
    ``infomaxloss_kwargs`` or the loss's default (False: the shuffled codes are constants).
    Returns ``(vae_loss, mi_loss)`` as floats when ``loss_return``.

    ``process_group`` (torch.distributed) makes the step data-parallel: every process passes its
    own rows x and both networks' gradients are averaged over the group before each optimizer
    step (:class:`~infomax_ext.distributed.AveragingOptimizer`), so every process takes the same
    step. ``negatives="global"`` passes the group on to both losses (unless their kwargs name a
    ``process_group``): the codes are shuffled over all processes' rows and the rank average of
    the gradients is the whole-batch gradient. ``"local"``: each process shuffles its own rows
    and no codes travel. The losses returned are this process's.
    """
    opt_vae, opt_mi = _optimizers(opt)
    vae_kwargs = dict(infomaxloss_kwargs or {})
    mi_kwargs = dict(miloss_kwargs or {})
    if shuffled_grad is not None:
        if not isinstance(shuffled_grad, bool):
            raise TypeError(f"shuffled_grad must be True, False or None, got {shuffled_grad!r}")
        if vae_kwargs.setdefault("shuffled_grad", shuffled_grad) != shuffled_grad:
            raise ValueError(
                f"shuffled_grad={shuffled_grad} contradicts infomaxloss_kwargs['shuffled_grad']="
                f"{vae_kwargs['shuffled_grad']!r}; give it once"
            )
    vae_params = [p for p in model.vae.parameters() if p.requires_grad]
    mi_params = [p for p in model.mi.parameters() if p.requires_grad]
    frozen = [name for name, params in (("model.vae", vae_params), ("model.mi", mi_params))
              if not params]
    if frozen:
        raise ValueError(
            f"train_step: {' and '.join(frozen)} {'has' if len(frozen) == 1 else 'have'} no "
            "trainable parameters (every parameter has requires_grad=False), so there is nothing "
            "to step; unfreeze some parameters"
        )
    if negatives not in ("global", "local"):
        raise ValueError(f"negatives must be 'global' or 'local', got {negatives!r}")
    if process_group is not None:
        for kwargs in (vae_kwargs, mi_kwargs):
            kwargs.setdefault("process_group", process_group if negatives == "global" else None)
        opt_vae = distributed.AveragingOptimizer(opt_vae, process_group)
        opt_mi = distributed.AveragingOptimizer(opt_mi, process_group)
    args = (x,) if x_out is None else (x, x_out)

    if reuse_forward:
        if infomaxloss_function is not infomaxloss or miloss_function is not miloss:
            raise ValueError("reuse_forward=True needs the default infomaxloss and miloss functions")
        if "seed" not in vae_kwargs:
            vae_kwargs["seed"] = mi_kwargs.get("seed")
        terms = infomax_terms(model.vae, model.mi, *args, **vae_kwargs)
        vae_loss = terms.loss
        mi_loss = -terms.mi
        if mi_kwargs.get("regularization") is not None:
            mi_loss = mi_loss + mi_kwargs.get("reg_strength", 1.0) * mi_kwargs["regularization"](terms.scores)
        alpha = float(vae_kwargs.get("alpha", 1.0))
        if alpha != 0.0 and mi_kwargs.get("regularization") is None:
            # d vae_loss / d theta_mi = -alpha dI / d theta_mi = alpha * d mi_loss / d theta_mi:
            # one backward pass gives both gradients.
            grads = torch.autograd.grad(vae_loss, vae_params + mi_params, allow_unused=True)
            for p, g in zip(vae_params, grads[: len(vae_params)]):
                p.grad = g
            for p, g in zip(mi_params, grads[len(vae_params):]):
                p.grad = None if g is None else g / alpha
        else:
            _set_grads(vae_loss, vae_params, retain_graph=True)
            _set_grads(mi_loss, mi_params)
        opt_vae.step()
        opt_mi.step()
    else:
        # Both losses see the same x and MI weights: the MI chain's data half is computed once.
        with reuse_data_half():
            with _frozen(mi_params):
                vae_loss = infomaxloss_function(model.vae, model.mi, *args, **vae_kwargs)
            _set_grads(vae_loss, vae_params)
            opt_vae.step()
            with _frozen(vae_params):
                mi_loss = miloss_function(model.vae, model.mi, x, **mi_kwargs)
        _set_grads(mi_loss, mi_params)
        opt_mi.step()

    if verbose:
        print(f"vae_loss = {vae_loss.item():.6g}, mi_loss = {mi_loss.item():.6g}")
    if loss_return:
        return float(vae_loss.detach()), float(mi_loss.detach())
    return None
