"""Watching a training run: the progress bar of :class:`~infomax_ext.trainer.Trainer` and a
TensorBoard log (``infomax-ext train --tensorboard``).

:class:`TensorBoardMonitor` is a step and an epoch callback of a trainer::

    monitor = TensorBoardMonitor("runs/mine/tensorboard/infomax", val_x=val.x)
    trainer = Trainer.create(config, train.x, val.x, "runs/mine",
                             callbacks=[monitor], step_callbacks=[monitor.on_step])
    with monitor:                    # closes the event file at the end
        trainer.fit()

Everything is logged against one axis, the number of optimizer steps so far (``step``); the
per-epoch values at the epoch's last step:

- every step: ``step/vae_loss``, ``step/mi_loss``, ``step/mi`` (the MI chain's NWJ estimate,
  nats), ``step/grad_norm_vae`` and ``step/grad_norm_mi`` (the 2-norm of all gradients of the
  VAE and of the MI chain of that step, after averaging over processes), ``step/samples_per_s``;
- every epoch: ``epoch/vae_loss``, ``epoch/mi_loss``, ``epoch/mi`` (means over the epoch),
  ``epoch/samples_per_s`` (training only), ``epoch/epoch`` and, with held-out data,
  ``epoch/val_recon_loglik``, ``epoch/val_kl``, ``epoch/val_active_units``, and the images
  ``reconstructions`` and ``latent_space`` (the figures of :mod:`infomax_ext.plots`).

Only rank 0 of a data-parallel run writes (the others' calls return at once). A resumed run
appends to the same directory and discards what the interrupted one logged after its last
checkpoint (TensorBoard's ``purge_step``).
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:
    from .vae import VAE

__all__ = ["TensorBoardMonitor", "TensorBoardMissing", "require_tensorboard", "gradient_norm"]

INSTALL_HINT = "pip install 'infomax_ext[tensorboard]'"


class TensorBoardMissing(ImportError):
    """The ``tensorboard`` package is not installed."""


def require_tensorboard() -> None:
    """Raise :class:`TensorBoardMissing` (with the install command) unless TensorBoard's event
    writer can be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise TensorBoardMissing(f"TensorBoard logging needs the tensorboard package ({exc}); "
                                 f"install it with {INSTALL_HINT}") from None


def gradient_norm(module: torch.nn.Module) -> float:
    """The 2-norm of all gradients of ``module``'s parameters together (0.0 when none has one)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))


class TensorBoardMonitor:
    """Writes a trainer's losses, MI estimate, speed, gradient norms and figures to TensorBoard
    event files in ``log_dir`` (module docstring for the tags).

    ``val_x`` (M, *sample_shape), with ``labels`` (M,) and ``classes``: the held-out samples of
    the per-epoch figures (the first ``n_images`` are reconstructed; all are encoded for the
    latent plot); ``image_shape`` (H, W) shows samples as images. ``figures=False`` (or no
    ``val_x``) logs scalars only. ``title`` heads the figures. The event writer opens at the
    first call on rank 0.
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, val_x: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None, classes: Sequence[str] | None = None,
                 image_shape: Sequence[int] | None = None, figures: bool = True,
                 n_images: int = 24, title: str = "") -> None:
        require_tensorboard()
        self.log_dir = Path(log_dir)
        self.val_x, self.labels, self.classes = val_x, labels, classes
        self.image_shape, self.n_images, self.title = image_shape, n_images, title
        self.figures = figures and val_x is not None
        self.writer: Any = None
        self._last = (0, 0, 0.0)  # epoch, samples, seconds of the previous step
        self._epoch_end: dict[int, tuple[int, float]] = {}  # epoch: (its last step, samples/s)

    def _open(self, first_step: int) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is None:
            # purge_step: events an interrupted run wrote at or after this step are discarded.
            self.writer = SummaryWriter(str(self.log_dir), purge_step=first_step)
        return self.writer

    def on_step(self, trainer: Any, step: dict[str, Any]) -> None:  # trainer: a Trainer
        """Step callback: the step's losses, MI estimate, gradient norms and samples/s."""
        if trainer.rank != 0:
            return
        writer = self._open(step["step"])
        n = step["step"]
        # this step's samples and seconds: the epoch's so far less the previous step's
        _, samples, seconds = self._last if self._last[0] == step["epoch"] else (0, 0, 0.0)
        elapsed = step["seconds"] - seconds
        rate = (step["samples"] - samples) / elapsed if elapsed > 0 else math.nan
        self._last = (step["epoch"], step["samples"], step["seconds"])
        self._epoch_end[step["epoch"]] = (n, step["samples"] / step["seconds"]
                                          if step["seconds"] > 0 else math.nan)
        writer.add_scalar("step/vae_loss", step["vae_loss"], n)
        writer.add_scalar("step/mi_loss", step["mi_loss"], n)
        writer.add_scalar("step/mi", -step["mi_loss"], n)
        writer.add_scalar("step/grad_norm_vae", gradient_norm(trainer.model.vae), n)
        writer.add_scalar("step/grad_norm_mi", gradient_norm(trainer.model.mi), n)
        writer.add_scalar("step/samples_per_s", rate, n)

    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:  # trainer: a Trainer
        """Epoch callback: the epoch's means, held-out metrics, samples/s and figures, at the
        epoch's last step."""
        if trainer.rank != 0:
            return
        # without on_step: the epoch's last step from the number of batches, no samples/s
        n, rate = self._epoch_end.pop(record["epoch"], None) or \
            (record["epoch"] * len(trainer._batches(record["epoch"])), None)
        writer = self._open(n)
        for key in ("vae_loss", "mi_loss", "mi", "val_recon_loglik", "val_kl",
                    "val_active_units", "epoch"):
            if key in record:
                writer.add_scalar(f"epoch/{key}", record[key], n)
        if rate is not None:
            writer.add_scalar("epoch/samples_per_s", rate, n)
        if self.figures:
            self._add_figures(writer, trainer.model.vae, n)
        writer.flush()

    def _add_figures(self, writer: Any, vae: VAE, n: int) -> None:
        from matplotlib.image import imread

        from . import plots
        from .evaluation import encoder_mean

        was_training = vae.training
        vae.eval()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "figure.png"
                plots.plot_reconstructions(vae, self.val_x[: self.n_images],  # type: ignore[index]
                                       path,
                                           image_shape=self.image_shape,
                                           n=self.n_images, title=f"{self.title} reconstructions")
                writer.add_image("reconstructions", imread(path), n, dataformats="HWC")
                mu = encoder_mean(vae, self.val_x).cpu()  # type: ignore[arg-type]  # figures: val_x
                plots.plot_latent_space(mu, self.labels, path, classes=self.classes,
                                        title=f"{self.title} held-out latent means")
                writer.add_image("latent_space", imread(path), n, dataformats="HWC")
        finally:
            vae.train(was_training)

    def close(self) -> None:
        """Flush and close the event file (nothing to do when nothing was logged)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "TensorBoardMonitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- progress display

def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _NoBar:
    """Stands in for a tqdm bar when tqdm is not installed."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar (``tqdm.auto``: a widget in notebooks), or a silent stand-in without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(**kwargs)
