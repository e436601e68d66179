"""Figures of a training run, drawn with matplotlib's Agg backend into PNG files.

The figures are made with :class:`matplotlib.figure.Figure` on an Agg canvas, never through
``pyplot``: drawing works without a display and never changes the backend of a session that
imports this module.

- :func:`plot_training_curves`: losses, the MI estimate and held-out KL / active units per epoch;
- :func:`plot_latent_space`: encoder means of the held-out data, coloured by label (PCA to 2-D
  above two latent dimensions);
- :func:`plot_reconstructions`: originals above their reconstructions;
- :func:`plot_prior_samples`: decoder means of ``z ~ N(0, I)``;
- :func:`plot_unit_variances`: per-dimension variance of the encoder mean (active units);
- :func:`plot_comparison`: two runs side by side (latent spaces and unit variances).
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .data import MappedSamples
    from .vae import VAE

__all__ = [
    "plot_training_curves",
    "plot_latent_space",
    "plot_reconstructions",
    "plot_prior_samples",
    "plot_unit_variances",
    "plot_comparison",
    "pca_2d",
    "decoder_mean",
]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    from .serialization import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def pca_2d(z: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """``z`` (N, d) projected on its two leading principal components: ``((N, 2), explained
    variance ratios)``. With ``d <= 2`` the coordinates are returned as they are (padded with a
    zero column when ``d == 1``)."""
    z = np.asarray(z, dtype=np.float64)
    if z.shape[1] == 1:
        return np.concatenate([z, np.zeros_like(z)], axis=1), [1.0]
    if z.shape[1] == 2:
        return z, []
    centred = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    total = float((s ** 2).sum()) or 1.0
    return centred @ vt[:2].T, [float(v) / total for v in s[:2] ** 2]


@torch.no_grad()
def decoder_mean(vae: VAE, z: torch.Tensor) -> torch.Tensor:
    """The decoder's mean for codes ``z`` (M, d): ``p`` for a Bernoulli decoder, ``mu`` for a
    Gaussian one; shape (M, *sample_shape)."""
    out = vae.decoder(z)
    mean: torch.Tensor = out.p if hasattr(out, "p") else out.mu
    return mean


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str],
                         title: str = "") -> Path:
    """Per-epoch VAE loss, MI-chain estimate (train), held-out KL and active units."""
    epochs = [r["epoch"] for r in history]
    has_val = bool(history) and "val_kl" in history[0]
    fig = _figure(12, 3.4)
    axes = fig.subplots(1, 3 if has_val else 2)
    axes[0].plot(epochs, [r["vae_loss"] for r in history], color="C0")
    axes[0].set(xlabel="epoch", ylabel="VAE loss", title="VAE loss  (-loglik + beta KL - alpha I)")
    axes[1].plot(epochs, [r["mi"] for r in history], color="C1")
    axes[1].set(xlabel="epoch", ylabel="nats", title="MI estimate I(x; z) (MI chain, NWJ)")
    if has_val:
        ax = axes[2]
        ax.plot(epochs, [r["val_kl"] for r in history], color="C2", label="held-out KL")
        ax.set(xlabel="epoch", ylabel="KL (nats)")
        twin = ax.twinx()
        twin.plot(epochs, [r["val_active_units"] for r in history], color="C3", ls="--",
                  label="active units")
        twin.set_ylabel("active units")
        twin.set_ylim(bottom=0)
        lines = ax.get_lines() + twin.get_lines()
        # Above the axes: inside, "best" only weighs one axis's curves and may cover the other's.
        ax.legend(lines, [line.get_label() for line in lines], loc="lower center",
                  bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
        ax.set_title("held-out KL and active units", pad=22)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _scatter_latent(ax: Axes, mu: np.ndarray, labels: np.ndarray | None,
                    classes: Sequence[str] | None, title: str) -> None:
    xy, ratios = pca_2d(mu)
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7, color="C0")
    else:
        labels = np.asarray(labels)
        cmap_name = "tab10" if len(classes or []) <= 10 else "tab20"
        from matplotlib import colormaps

        cmap = colormaps[cmap_name]
        for k in np.unique(labels):
            sel = labels == k
            name = classes[k] if classes is not None and k < len(classes) else str(k)
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.8, color=cmap(int(k) % cmap.N), label=name)
        if len(np.unique(labels)) <= 20:
            ax.legend(markerscale=2.5, fontsize=7, loc="best", ncol=2, frameon=False)
    d = mu.shape[1]
    if d > 2:
        ax.set(xlabel=f"PC 1 ({ratios[0]:.0%})", ylabel=f"PC 2 ({ratios[1]:.0%})")
    else:
        ax.set(xlabel="z1", ylabel="z2" if d == 2 else "")
    ax.set_title(title)


def plot_latent_space(mu: torch.Tensor, labels: torch.Tensor | None, path: str | os.PathLike[str],
                      *, classes: Sequence[str] | None = None, title: str = "latent space") -> Path:
    """Encoder means ``mu`` (N, d), coloured by ``labels`` (N,) when given; PCA to 2-D if d > 2."""
    fig = _figure(5.5, 5)
    ax = fig.subplots()
    _scatter_latent(ax, mu.detach().cpu().double().numpy(),
                    None if labels is None else labels.cpu().numpy(), classes,
                    f"{title} (PCA of {mu.shape[1]}-D means)" if mu.shape[1] > 2 else title)
    fig.tight_layout()
    return _save(fig, path)


def _mosaic(x: torch.Tensor, image_shape: Sequence[int] | None, cols: int) -> np.ndarray:
    """Samples ``x`` (N, ...) tiled into one array: ``image_shape`` (H, W) images in rows of
    ``cols`` separated by 1-pixel NaN gaps, or (without an image shape) one row per sample."""
    x = x.detach().cpu().double()
    if image_shape is None:
        return x.reshape(x.shape[0], -1).numpy()
    h, w = image_shape
    images = x.reshape(x.shape[0], h, w).numpy()
    rows = math.ceil(images.shape[0] / cols)
    canvas = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for k, image in enumerate(images):
        r, c = divmod(k, cols)
        canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = image
    return canvas


def _show(ax: Axes, canvas: np.ndarray, vmin: float, vmax: float, title: str, *,
          images: bool = True) -> None:
    """``canvas`` drawn in grey levels: a mosaic of images (no axes), or (``images=False``) a
    heatmap with one row per sample and one column per feature, both axes labelled."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    cmap = colormaps["gray_r"].with_extremes(bad="white")
    shown = ax.imshow(canvas, cmap=cmap if images else colormaps["viridis"], vmin=vmin, vmax=vmax,
                      interpolation="nearest",
                      aspect="equal" if images and canvas.shape[1] < 8 * canvas.shape[0]
                      else "auto")
    if images:
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set(xlabel="feature", ylabel="sample")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        ax.figure.colorbar(shown, ax=ax, shrink=0.8, label="value")
    ax.set_title(title, fontsize=9)


@torch.no_grad()
def plot_reconstructions(vae: VAE, x: torch.Tensor | MappedSamples, path: str | os.PathLike[str], *,
                         image_shape: Sequence[int] | None = None, n: int = 24,
                         title: str = "reconstructions",
                         units: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Path:
    """The first ``n`` samples of ``x`` (N, ...) beside the decoder means at their encoder means
    (left: originals, right: reconstructions, same positions); images when ``image_shape``
    (H, W) is known, otherwise a heatmap of one row per sample (numbered from 0) and one column
    per feature. ``units`` (a function of a tensor, e.g. ``Preprocessing.invert``) maps both to
    the units drawn."""
    device = next(vae.parameters()).device
    x = x[:n]
    rec = decoder_mean(vae, vae.encoder(x.to(device))[0]).cpu()
    if units is not None:
        x, rec = units(x), units(rec)
    cols = max(1, math.ceil(math.sqrt(1.5 * x.shape[0])))
    lo, hi = float(min(x.min(), rec.min())), float(max(x.max(), rec.max()))
    originals, reconstructions = _mosaic(x, image_shape, cols), _mosaic(rec, image_shape, cols)
    ratio = originals.shape[0] / originals.shape[1] if image_shape is not None else 0.6
    fig = _figure(9, min(9.0, 4.4 * ratio + 0.9))
    axes = fig.subplots(1, 2)
    images = image_shape is not None
    _show(axes[0], originals, lo, hi, "original", images=images)
    _show(axes[1], reconstructions, lo, hi, "reconstruction", images=images)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def plot_prior_samples(vae: VAE, latent_dim: int, path: str | os.PathLike[str], *,
                       image_shape: Sequence[int] | None = None, n: int = 64, seed: int = 0,
                       title: str = "samples from the prior",
                       units: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Path:
    """Decoder means of ``n`` codes ``z ~ N(0, I_d)`` (drawn from a private generator): images
    when ``image_shape`` (H, W) is known, a heatmap (samples by features) otherwise; ``units``
    as in :func:`plot_reconstructions`."""
    device = next(vae.parameters()).device
    z = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    samples = decoder_mean(vae, z).cpu()
    if units is not None:
        samples = units(samples)
    canvas = _mosaic(samples, image_shape, max(1, math.ceil(math.sqrt(n))))
    fig = _figure(5.5, 5.5)
    _show(fig.subplots(), canvas, float(samples.min()), float(samples.max()), title,
          images=image_shape is not None)
    fig.tight_layout()
    return _save(fig, path)


def _bars(ax: Axes, variances: Sequence[float], threshold: float, title: str) -> None:
    v = np.maximum(np.asarray(variances, dtype=np.float64), 1e-8)
    colors = ["C0" if val > threshold else "0.7" for val in variances]
    ax.bar(np.arange(1, len(v) + 1), v, color=colors)
    ax.axhline(threshold, color="C3", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set(xlabel="latent dimension", ylabel="Var_x E[z_j | x]", title=title)
    ax.set_xticks(np.arange(1, len(v) + 1))
    ax.legend(fontsize=8, loc="best")


def plot_unit_variances(variances: Sequence[float], threshold: float, path: str | os.PathLike[str],
                        title: str = "active units") -> Path:
    """Per-dimension variance of the encoder mean over the held-out data (log scale); units above
    ``threshold`` (dashed line) are active."""
    fig = _figure(6, 3.5)
    n_active = sum(v > threshold for v in variances)
    _bars(fig.subplots(), variances, threshold, f"{title}: {n_active} of {len(variances)} active")
    fig.tight_layout()
    return _save(fig, path)


def plot_comparison(runs: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Runs side by side: for each ``name -> {"mu", "labels", "classes", "variances",
    "threshold"}``, the latent space (top) and the unit variances (bottom)."""
    names = list(runs)
    fig = _figure(5.5 * len(names), 8.5)
    axes = fig.subplots(2, len(names), squeeze=False)
    for c, name in enumerate(names):
        run = runs[name]
        mu = run["mu"].detach().cpu().double().numpy()
        labels = None if run.get("labels") is None else run["labels"].cpu().numpy()
        _scatter_latent(axes[0, c], mu, labels, run.get("classes"), f"{name}: latent means (held-out)")
        n_active = sum(v > run["threshold"] for v in run["variances"])
        _bars(axes[1, c], run["variances"], run["threshold"],
              f"{name}: {n_active} of {len(run['variances'])} units active")
    fig.tight_layout()
    return _save(fig, path)

