"""A reusable training loop for the InfoMax VAE: configuration, epochs, checkpoints, metrics.

::

    from infomax_ext.data import load_digits, train_val_split
    from infomax_ext.trainer import TrainConfig, Trainer

    train, val = train_val_split(load_digits(), 0.2, seed=0)
    config = TrainConfig(latent_dim=8, beta=2.0, alpha=10.0, epochs=50)
    trainer = Trainer.create(config, train.x, val.x, run_dir="runs/mine")
    history = trainer.fit()          # one dict per epoch, also in runs/mine/metrics.jsonl
    # later, after a crash or Ctrl-C:
    trainer = Trainer.from_checkpoint("runs/mine/checkpoint.pt", train.x, val.x)
    trainer.fit()                    # continues at the next epoch, same optimizer state

Every epoch draws its batch order from a generator seeded by ``(seed, epoch)``; latent samples and
MI shuffles come from torch's global generator, which :meth:`Trainer.fit` seeds with ``seed`` at
the start of a run and which checkpoints save and restore. A resumed run therefore repeats the
uninterrupted one exactly (same device and thread count).

Data-parallel (``process_group``, one trainer per process, e.g. under torchrun): every process
takes an equal, disjoint share of each batch of the same global order (``batch_size`` is the
global batch), gradients are averaged every step and the MI bound's negatives come from the whole
batch (``negatives_scope``; :mod:`.distributed`); each process draws its own latent noise (rank 0 from
``seed``, rank r from a seed derived from it), and checkpoints hold every rank's random state.
Rank 0 alone writes the run directory and evaluates on the held-out data.

Run directory files written here: ``checkpoint.pt`` (atomic, see :mod:`.serialization`) with
its digest in ``checkpoint.sha256.json`` (checked, like every entry, when it is read back: see
:mod:`.checkpoint`) and ``metrics.jsonl`` (one JSON object per epoch; rewritten atomically every
epoch). A trainer never replaces another run's files: a fresh one refuses a ``run_dir`` that
holds a checkpoint or epoch records, and a resumed one a ``run_dir`` holding a run it does not
continue (:func:`~infomax_ext.trainer_checks.check_run_dir`), before writing anything.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from . import distributed, memory
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, bound_state, read_checkpoint,
                         restore_training_state, write_checkpoint)
from .data import MappedSamples, check_values
from .evaluation import active_units, encoder_mean, reconstruction_and_kl
from .infomax import InfoMaxVAE, model_config
from .monitor import _is_terminal, _progress_bar
from .train_config import TrainConfig, build_model, derived_seed
from .trainer_checks import check_data_dtype, check_run_dir, config_mismatches, model_sample_shape
from .training_step import train_step
from .preprocessing import Preprocessing
from .serialization import atomic_write_text, cpu_copy

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["TrainConfig", "TrainingError", "Trainer", "build_model", "fit", "derived_seed",
           "CHECKPOINT_FILE", "METRICS_FILE"]

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"

Callback = Callable[["Trainer", dict[str, Any]], Any]
"""``callback(trainer, record)``, called after every epoch with that epoch's record."""


class TrainingError(RuntimeError):
    """Training cannot go on (a loss became NaN, a checkpoint does not fit, ...)."""


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def _check_data(x: Any, name: str, sample_shape: Sequence[int] | None = None,
                likelihood: str | None = None) -> Any:
    if not isinstance(x, (torch.Tensor, MappedSamples)) or x.dim() < 2:
        raise ValueError(f"{name} must be a tensor of shape (N, *sample_shape), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {x.shape[0]}")
    if sample_shape is not None and tuple(x.shape[1:]) != tuple(sample_shape):
        raise ValueError(f"{name} has samples of shape {tuple(x.shape[1:])}, the model takes "
                         f"{tuple(sample_shape)}")
    if likelihood is not None:  # NaN, or outside [0, 1] for the Bernoulli decoder: a DataError
        check_values(x, likelihood, name)
    return x


class Trainer:
    """Trains an :class:`InfoMaxVAE` with :func:`~infomax_ext.train_step`, one epoch at a time.

    ``train_data`` (N, *sample_shape) and optional ``val_data`` (M, *sample_shape) are tensors
    (kept on the CPU; batches move to the device). With a ``run_dir`` every epoch's metrics go to
    ``metrics.jsonl`` and a checkpoint to ``checkpoint.pt`` every ``checkpoint_every`` epochs and
    at the end. ``callbacks`` are called as ``callback(trainer, record)`` after every epoch, and
    ``step_callbacks`` as ``callback(trainer, step)`` after every optimizer step with ``step`` =
    {epoch, step (steps so far in the run), vae_loss, mi_loss, samples and seconds (of all
    processes, so far in the epoch)} (:class:`~infomax_ext.monitor.TensorBoardMonitor` is both).
    ``progress`` shows a tqdm bar (epoch, running losses and MI estimate) named ``desc`` on
    stderr when that is a terminal, and prints a line per epoch (losses, MI estimate, samples/s)
    on stdout when that is not one (a log file, CI): at most one every ``log_interval`` seconds,
    and the last epoch's.

    ``process_group`` (torch.distributed): one trainer per process trains one model
    data-parallel (module docstring). Every process passes the same arguments (checked, the
    training data by a SHA-256 of what each process reads, so a file that holds other contents
    on another machine is refused; the model's weights are set to rank 0's); rank 0 alone
    shows progress, validates and writes ``run_dir``, but every process calls :meth:`fit` and
    :meth:`save_checkpoint`.

    Refused at once, with a ValueError naming the problem, before anything is written: a model
    that is not the one ``config`` describes (bound, negatives, sizes, activation, likelihood:
    :func:`~infomax_ext.trainer_checks.config_mismatches`; :func:`build_model` builds it), data
    whose sample shape or dtype is not the model's (a float64 or bfloat16 model takes data of
    its own dtype), a ``run_dir`` that holds another run (module docstring).
    ``check_architecture=False`` leaves the sizes and activation uncompared (what
    :meth:`from_checkpoint` passes: its model is the checkpoint's ``model_config``'s).
    """

    def __init__(self, model: InfoMaxVAE, config: TrainConfig,
                 train_data: torch.Tensor | MappedSamples,
                 val_data: torch.Tensor | MappedSamples | None = None,
                 run_dir: str | os.PathLike[str] | None = None, *, progress: bool = True,
                 desc: str = "train", callbacks: Sequence[Callback] = (),
                 step_callbacks: Sequence[Callable[..., Any]] = (),
                 log_interval: float = 5.0, process_group: ProcessGroup | None = None,
                 check_architecture: bool = True) -> None:
        if isinstance(log_interval, bool) or not isinstance(log_interval, (int, float)) \
                or not math.isfinite(log_interval) or log_interval < 0:
            raise ValueError(f"log_interval must be a non-negative number of seconds, got "
                             f"{log_interval!r}")
        self.config = config.validate()
        mismatches = config_mismatches(config, model, check_architecture)
        if mismatches:  # what the checkpoint would record as config must be the model
            raise ValueError(f"Trainer: the model is not the one config describes: "
                             f"{'; '.join(mismatches)}; build the model with "
                             "build_model(config, sample_shape) (as Trainer.create does)")
        self.group = process_group
        self.rank, self.world_size = (0, 1) if process_group is None else \
            distributed.rank_and_size(process_group)
        self.device = _resolve_device(config.device)
        if process_group is not None:
            self.device = distributed.local_device(self.device)
        shape = model_sample_shape(model)
        self.train_data = _check_data(train_data, "train_data", shape, config.likelihood)
        self.val_data = None if val_data is None else _check_data(
            val_data, "val_data", train_data.shape[1:], config.likelihood)
        for name, x in (("train_data", self.train_data), ("val_data", self.val_data)):
            if x is not None:
                check_data_dtype(x, name, model)
        self.model = model.to(self.device)
        if process_group is not None:
            distributed.check_same(process_group, "Trainer", {
                "training options": {k: v for k, v in config.to_dict().items() if k != "device"},
                "number of training samples": len(self.train_data),
                "sample shape": tuple(self.train_data.shape[1:]),
                "model parameters": [(name, tuple(p.shape), str(p.dtype))
                                     for name, p in self.model.named_parameters()],
                "run directory given": run_dir is not None,
                "training data (SHA-256 of the samples each process reads)":
                    distributed.data_digest(self.train_data),
            })
            distributed.broadcast_module(self.model, process_group)
        check_batch_size(config.batch_size, len(self.train_data), self.world_size)
        self.run_dir = None if run_dir is None else Path(run_dir)
        if self.run_dir is not None:  # a fresh run never replaces another one's files
            self._check_run_dir()
        self.progress = progress and self.rank == 0
        self.desc, self.callbacks, self.step_callbacks = desc, list(callbacks), list(step_callbacks)
        self.log_interval = float(log_interval)
        self.optimizers = {"vae": _adam(self.model.vae.parameters(), config.lr),
                           "mi": _adam(self.model.mi.parameters(), config.mi_lr)}
        self.epoch = 0          # epochs completed
        self.history: list[dict[str, Any]] = []
        self._rng_state: dict[str, torch.Tensor] | None = None
        self.data_fingerprint: str | None = None  # saved with checkpoints (the command sets it)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, config: TrainConfig, train_data: torch.Tensor | MappedSamples,
               val_data: torch.Tensor | MappedSamples | None = None,
               run_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> "Trainer":
        """A fresh model built by :func:`build_model` under ``torch.manual_seed(config.seed)``
        (so equal configs start from equal weights) and its trainer; a ValueError naming the
        size field first when training it needs more memory than the device has."""
        config.validate()
        _check_data(train_data, "train_data")
        if run_dir is not None:  # before building: a directory holding a run is refused anyway
            distributed.from_rank0(kwargs.get("process_group"), lambda: check_run_dir(
                Path(run_dir), CHECKPOINT_FILE, METRICS_FILE))
        memory.check_training(config, train_data.shape[1:], build_model)  # names the field
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_model(config, train_data.shape[1:])
        return cls(model, config, train_data, val_data, run_dir, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], train_data: torch.Tensor | MappedSamples,
                        val_data: torch.Tensor | MappedSamples | None = None,
                        run_dir: str | os.PathLike[str] | None = None, *,
                        epochs: int | None = None, device: str | None = None,
                        state: dict[str, Any] | None = None, **kwargs: Any) -> "Trainer":
        """The trainer saved in checkpoint ``path``, ready to continue: model, both optimizers'
        state, epoch count, history and random state. ``epochs`` raises the total epoch budget;
        ``device`` moves the run; ``run_dir`` defaults to the checkpoint's directory (another
        one must hold no run, or the same run: its metrics begin with the checkpoint's
        history). The file is untrusted input: its digest and every entry are checked before use
        (:func:`~infomax_ext.checkpoint.read_checkpoint`); ``state``: a state that function
        already returned for ``path``. With a ``process_group`` keyword, rank 0 reads the
        checkpoint and sends it to every process (each takes its own saved random state when
        the number of processes is unchanged). A run with ``negatives_scope="local"`` resumes
        only on the number of processes it was trained on (:class:`TrainingError` naming both):
        its objective depends on it."""
        path = Path(path)
        if state is None:
            state = distributed.from_rank0(kwargs.get("process_group"),
                                           lambda: read_checkpoint(path, TrainConfig))
        config_dict = dict(state["config"])
        if epochs is not None:
            config_dict["epochs"] = epochs
        if device is not None:
            config_dict["device"] = device
        config = TrainConfig.from_dict(config_dict)
        model = InfoMaxVAE.from_config(state["model_config"])
        model.to(next(iter(state["model"].values())).dtype).load_state_dict(state["model"])
        if state.get("preprocessing") is not None:  # checked by read_checkpoint
            model.preprocessing = Preprocessing.from_dict(state["preprocessing"])
        # the model is the checkpoint's model_config's: only what decides a step is compared
        trainer = cls(model, config, train_data, val_data, None, check_architecture=False,
                      **kwargs)
        trainer.run_dir = path.parent if run_dir is None else Path(run_dir)
        trainer._check_run_dir(path, state["history"])  # its own run, or a directory holding none
        saved_world = state.get("world_size", 1)
        if config.negatives_scope == "local" and saved_world != trainer.world_size:
            raise TrainingError(
                f"{path} was trained with negatives_scope='local' on {saved_world} process"
                f"{'es' if saved_world != 1 else ''}, now resumed on {trainer.world_size}: each "
                "process shuffles within its share of the batch, so another number of processes "
                f"changes the objective; resume with {saved_world} process"
                f"{'es' if saved_world != 1 else ''}")
        if state["n_train"] != len(trainer.train_data):
            raise TrainingError(f"{path} was trained on {state['n_train']} samples, now given "
                                f"{len(trainer.train_data)}: not the same data")
        restore_training_state(trainer, state)
        return trainer

    def _check_run_dir(self, resuming: Path | None = None,
                       history: Sequence[dict[str, Any]] = ()) -> None:
        """A ValueError naming ``run_dir`` and what it holds when it holds a run's checkpoint or
        metrics and this trainer is not resuming that run (from checkpoint ``resuming`` with
        epoch records ``history``: :func:`~infomax_ext.trainer_checks.check_run_dir`); rank 0
        decides for every process."""
        run_dir = self.run_dir
        assert run_dir is not None
        distributed.from_rank0(self.group, lambda: check_run_dir(
            run_dir, CHECKPOINT_FILE, METRICS_FILE, resuming, history))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds (tensors on the CPU; loadable with weights_only=True).
        Data-parallel, also ``rank_rng``, every process's random state (gathered: call it on
        every process)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "config": self.config.to_dict(),
            "model_config": model_config(self.model),
            "model": cpu_copy(self.model.state_dict()),
            "preprocessing": getattr(self.model, "preprocessing", Preprocessing()).to_dict(),
            "optimizers": {name: cpu_copy(opt.state_dict()) for name, opt in self.optimizers.items()},
            "history": self.history,
            "n_train": len(self.train_data),
            "rng": rng,
            "world_size": self.world_size,
        }
        if self.data_fingerprint is not None:
            state["data_fingerprint"] = self.data_fingerprint
        if bound_state(self.model) is not None:  # a DV bound's running average
            state["bound_state"] = bound_state(self.model)
        if self.group is not None:
            state["rank_rng"] = distributed.all_objects(self.group, rng)
        return state

    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write :meth:`state_dict` atomically to ``path`` (default ``run_dir/checkpoint.pt``);
        data-parallel, every process calls it and rank 0 writes."""
        if path is None:
            if self.run_dir is None:
                raise ValueError("save_checkpoint needs a path when the trainer has no run_dir")
            path = self.run_dir / CHECKPOINT_FILE
        path = Path(path)
        state = self.state_dict()
        if self.rank != 0:
            return path
        try:
            write_checkpoint(state, path)  # and its digest, checkpoint.sha256.json
        except OSError as exc:  # a full disk, ...: the previous file is intact (atomic write)
            raise TrainingError(f"cannot write the checkpoint {path}: {exc.strerror or exc} "
                                f"({_checkpoint_note(path)})") from None
        return path

    def _write_metrics(self) -> None:
        if self.run_dir is not None and self.rank == 0:
            atomic_write_text(self.run_dir / METRICS_FILE,
                              "".join(json.dumps(r) + "\n" for r in self.history))

    # ------------------------------------------------------------------ loop
    def _check_finite(self, epoch: int, vae_loss: float, mi_loss: float) -> None:
        """Raise :class:`TrainingError` unless both losses and, for each network, the gradients
        and updates are finite (:func:`_all_finite`). One fused reduction per network and a
        single host read for both (Adam can overflow its state while weights and losses stay
        finite: with a huge ``alpha`` the squared gradients become inf and the steps 0)."""
        names = {"vae": "VAE", "mi": "MI chain"}
        networks = {"vae": self.model.vae, "mi": self.model.mi}
        flags = torch.stack([_all_finite(networks[key], self.optimizers[key]) for key in names])
        for name, ok in zip(names.values(), flags.tolist()):
            if not ok:
                raise TrainingError(
                    f"the {name} diverged at epoch {epoch}: its gradients overflowed (inf or "
                    f"NaN in Adam's state); lower lr / mi_lr or alpha and restart "
                    f"({_checkpoint_note(self.run_dir)})")
        if not (math.isfinite(vae_loss) and math.isfinite(mi_loss)):
            raise TrainingError(
                f"the loss became non-finite at epoch {epoch} (vae_loss={vae_loss}, "
                f"mi_loss={mi_loss}); lower lr / mi_lr or alpha and resume or restart "
                f"({_checkpoint_note(self.run_dir)})")

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        """This process's rows of each batch of epoch ``epoch``: the training rows in an order
        drawn from the seeded stream ``(seed, 1, epoch)``, cut into batches of ``batch_size``,
        each shared out in equal parts in rank order. A last batch that cannot give every
        process 2 samples (the MI bound needs 2) is dropped, and one that does not divide evenly
        loses its last rows."""
        generator = torch.Generator().manual_seed(derived_seed(self.config.seed, 1, epoch))
        order = torch.randperm(len(self.train_data), generator=generator)
        batches = []
        for batch in order.split(self.config.batch_size):
            share = len(batch) // self.world_size
            if share >= 2:
                batches.append(batch[self.rank * share:(self.rank + 1) * share])
        return batches

    def _loader(self, epoch: int) -> DataLoader[tuple[torch.Tensor]]:
        """This process's batches of epoch ``epoch`` (:meth:`_batches`), read as tensors."""
        return DataLoader(_Rows(self.train_data), sampler=self._batches(epoch), batch_size=None)

    def _validation(self) -> dict[str, Any]:
        """Held-out reconstruction log-likelihood, KL and active units, under a forked RNG (rank
        0 alone)."""
        if self.val_data is None or self.rank != 0:
            return {}
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derived_seed(self.config.seed, 2))
            loglik, kl = reconstruction_and_kl(self.model.vae, self.val_data)  # chunk by chunk
            units, _ = active_units(encoder_mean(self.model.vae, self.val_data),
                                    self.config.active_threshold)
        return {"val_recon_loglik": loglik, "val_kl": kl, "val_active_units": units}

    def fit(self) -> list[dict[str, Any]]:
        """Train from epoch ``self.epoch + 1`` to ``config.epochs``; returns the history.

        Each record: ``epoch``, ``vae_loss`` and ``mi_loss`` (means over the epoch's batches),
        ``mi`` (the MI chain's NWJ estimate, ``-mi_loss``), ``seconds``, and with validation data
        ``val_recon_loglik``, ``val_kl``, ``val_active_units``. After every step, raises
        :class:`TrainingError` naming the network and the epoch when a loss, weight, gradient or
        optimizer state turns NaN or infinite (the last checkpoint stays as it was)."""
        config, model = self.config, self.model
        if self._rng_state is not None:
            torch.set_rng_state(self._rng_state["torch"])
            if "cuda" in self._rng_state and self.device.type == "cuda":
                torch.cuda.set_rng_state(self._rng_state["cuda"], self.device)
            self._rng_state = None
        elif self.epoch == 0 or self.rank > 0:
            torch.manual_seed(config.seed if self.rank == 0 else
                              derived_seed(config.seed, 3, self.rank, self.epoch))
        if self.run_dir is not None and self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_metrics()
        if self.epoch >= config.epochs:
            return self.history
        loss_kwargs = {"beta": config.beta, "alpha": config.alpha,
                       "shuffled_grad": config.shuffled_grad}
        steps_per_epoch = len(self._loader(0))
        bar = _progress_bar(total=steps_per_epoch * config.epochs, initial=steps_per_epoch * self.epoch,
                   desc=self.desc, unit="step", dynamic_ncols=True, leave=True,
                   disable=None if self.progress else True)  # None: off when not a terminal
        lines = self.progress and not _is_terminal(sys.stdout)
        last_line = -math.inf
        try:
            while self.epoch < config.epochs:
                epoch = self.epoch + 1
                bar.set_description(f"{self.desc} epoch {epoch}/{config.epochs}")
                model.train()
                start, sums, count, samples = time.perf_counter(), [0.0, 0.0], 0, 0
                for (xb,) in self._loader(epoch):
                    samples += xb.shape[0] * self.world_size
                    xb = xb.to(self.device, non_blocking=True)
                    vae_loss, mi_loss = train_step(
                        model, xb, self.optimizers, loss_return=True,
                        infomaxloss_kwargs=loss_kwargs, reuse_forward=config.reuse_forward,
                        process_group=self.group, negatives_scope=config.negatives_scope)
                    if self.group is not None:  # the whole batch's losses and MI bound
                        vae_loss, mi_loss = distributed.mean_over(self.group, [vae_loss, mi_loss],
                                                                  self.device)
                    self._check_finite(epoch, vae_loss, mi_loss)
                    sums[0] += vae_loss
                    sums[1] += mi_loss
                    count += 1
                    bar.set_postfix({"vae_loss": f"{sums[0] / count:.2f}",
                                     "MI": f"{-sums[1] / count:.3f}"}, refresh=False)
                    bar.update(1)
                    step = {"epoch": epoch, "step": (epoch - 1) * steps_per_epoch + count,
                            "vae_loss": vae_loss, "mi_loss": mi_loss, "samples": samples,
                            "seconds": time.perf_counter() - start}
                    for callback in self.step_callbacks:
                        callback(self, step)
                train_seconds = time.perf_counter() - start
                model.eval()
                record = {"epoch": epoch, "vae_loss": sums[0] / count, "mi_loss": sums[1] / count,
                          "mi": -sums[1] / count}
                record.update(self._validation())
                record["seconds"] = time.perf_counter() - start
                self.history.append(record)
                self.epoch = epoch
                if self.run_dir is not None:
                    if epoch % config.checkpoint_every == 0 or epoch == config.epochs:
                        self.save_checkpoint()
                    self._write_metrics()
                if lines and (epoch == config.epochs
                              or time.monotonic() - last_line >= self.log_interval):
                    last_line = time.monotonic()
                    print(f"{self.desc} epoch {epoch}/{config.epochs}: vae_loss "
                          f"{record['vae_loss']:.2f}, MI {record['mi']:.3f} nats, "
                          f"{samples / train_seconds:.0f} samples/s",
                          flush=True)
                for callback in self.callbacks:
                    callback(self, record)
        finally:
            bar.close()
        return self.history


class _Rows(Dataset[tuple[torch.Tensor]]):
    """``data[rows]`` as a 1-tuple, for a loader whose sampler yields index tensors."""

    def __init__(self, data: torch.Tensor | MappedSamples) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, rows: Any) -> tuple[torch.Tensor]:
        return (self.data[rows],)




def _checkpoint_note(path: str | os.PathLike[str] | None) -> str:
    """Where the last good state is: ``path`` is a checkpoint, a run directory or None."""
    if path is not None and Path(path).is_dir():
        path = Path(path) / CHECKPOINT_FILE
    if path is None or not Path(path).exists():
        return "no checkpoint was written"
    return f"{path} still holds the last good state"


def _all_finite(network: torch.nn.Module, optimizer: torch.optim.Adam) -> torch.Tensor:
    """A 0-dim bool tensor (no host sync): are Adam's averages of the squared gradients of the
    parameters of ``network`` (``exp_avg_sq``) all finite?

    A gradient that is NaN, infinite or beyond about 1e19 (its float32 square overflows) makes
    its ``exp_avg_sq`` so, and while those stay finite every update is finite (at most about
    ``lr`` per entry); a non-finite weight shows in the loss. Tested by their sums (L1 norms of
    non-negative tensors, one multi-tensor kernel), which are finite exactly when every entry
    is, short of totals beyond 3e38."""
    squares = [optimizer.state[p]["exp_avg_sq"] for p in network.parameters()
               if "exp_avg_sq" in optimizer.state.get(p, {})]
    if not squares:  # no step taken yet
        return torch.ones((), dtype=torch.bool, device=next(network.parameters()).device)
    return torch.stack(torch._foreach_norm(squares, ord=1)).isfinite().all()


def check_batch_size(batch_size: int, n_train: int, world_size: int = 1,
                     name: str = "batch_size") -> None:
    """A ValueError naming ``name`` unless the global ``batch_size`` fits the ``n_train``
    training samples and divides among ``world_size`` processes, at least 2 samples each."""
    if batch_size > n_train:
        raise ValueError(f"{name} {batch_size} exceeds the {n_train} training samples")
    if batch_size % world_size or batch_size < 2 * world_size:
        raise ValueError(f"{name} {batch_size} (the batch of all processes) must be a multiple of "
                         f"the {world_size} processes that gives each at least 2 samples")


def _adam(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused (one kernel per step: faster for many small tensors) where torch allows."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def fit(config: TrainConfig, train_data: torch.Tensor | MappedSamples,
        val_data: torch.Tensor | MappedSamples | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any) -> tuple[InfoMaxVAE, list[dict[str, Any]]]:
    """Build a model for ``config`` and train it: ``(model, history)``. Keywords go to
    :class:`Trainer` (``progress``, ``desc``, ``callbacks``, ``log_interval``)."""
    trainer = Trainer.create(config, train_data, val_data, run_dir, **kwargs)
    return trainer.model, trainer.fit()
