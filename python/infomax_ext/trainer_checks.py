"""What a :class:`~infomax_ext.trainer.Trainer` checks before it trains or writes anything: the
config describes the model (:func:`config_mismatches`, also applied to checkpoints), the data fit
the model (:func:`model_sample_shape`, :func:`check_data_dtype`) and the run directory holds no
other run (:func:`check_run_dir`)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import memory
from .bounds import resolve_bound
from .serialization import same_file
from .train_config import TrainConfig, build_model

__all__ = ["config_mismatches", "model_sample_shape", "check_data_dtype", "run_held",
           "check_run_dir"]

# Where the model config (InfoMaxVAE.config) holds what each TrainConfig field states.
_FIELD_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "latent_dim": (("vae", "encoder", "n_latent"), ("vae", "decoder", "n_latent"),
                   ("mi", "n_latent")),
    "encoder_neurons": (("vae", "encoder", "encoder_neurons"),),
    "decoder_neurons": (("vae", "decoder", "decoder_neurons"),),
    "mi_neurons": (("mi", "mlp_neurons"),),
    "activation": (("vae", "encoder", "encoder_activation"),
                   ("vae", "decoder", "decoder_activation"), ("mi", "mlp_activations")),
    "likelihood": (("vae", "decoder", "class"),),
}
_MISSING = object()


def _at(config: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return _MISSING
        config = config[key]
    return config


def model_sample_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The shape of one sample ``model`` takes (its encoder's ``size_input``), None when its
    config does not say (a model whose parts were not built by ``from_sizes``)."""
    size = _at(getattr(model, "config", None), ("vae", "encoder", "size_input"))
    if isinstance(size, int) and not isinstance(size, bool):
        return (size,)
    if isinstance(size, (list, tuple)) and all(isinstance(s, int) for s in size):
        return tuple(size)
    return None


def config_mismatches(config: TrainConfig, model: nn.Module,
                      architecture: bool = True) -> list[str]:
    """Each thing ``config`` states about the model that ``model`` contradicts, as
    ``"config.FIELD is X but the model ..."``; empty when they agree. Checked: ``negatives``,
    ``bound`` (with ``smile_clip`` / ``dv_moving_average``) and, when the model carries its
    config (:attr:`~infomax_ext.InfoMaxVAE.config`), ``latent_dim``, the three neuron lists,
    ``activation`` and ``likelihood`` (its decoder class), against what
    :func:`~infomax_ext.train_config.build_model` builds (on the meta device: nothing
    allocated). ``model`` may live on the meta device. ``architecture=False`` compares only what
    decides a training step (negatives, bound, likelihood), not the sizes and activation: for a
    resumed run, whose model is rebuilt from the checkpoint's ``model_config`` (a checkpoint of
    a model built otherwise than its config says trained fine before this check existed)."""
    found = []
    negatives = getattr(model, "negatives", "shuffle")
    if negatives != config.negatives:
        found.append(f"config.negatives is {config.negatives!r} but the model pairs its "
                     f"negatives by {negatives!r}")
    bound = getattr(model, "bound", None)
    if bound is not None:
        have, want = resolve_bound(bound).config(), config.mi_bound().config()
        if have.get("name") != want.get("name"):
            found.append(f"config.bound is {config.bound!r} but the model's bound is "
                         f"{have.get('name')!r}")
        elif have != want:
            field = {"smile": "smile_clip", "dv": "dv_moving_average"}.get(config.bound, "bound")
            found.append(f"config.{field} is {getattr(config, field)!r} but the model's bound "
                         f"is {bound!r}")
    actual = getattr(model, "config", None)
    shape = model_sample_shape(model)
    if not isinstance(actual, dict) or shape is None:
        return found  # not built by from_sizes: nothing more to compare
    with torch.random.fork_rng(devices=[]):
        expected = memory.on_meta(lambda: build_model(config, shape)).config
    for field, paths in _FIELD_PATHS.items():
        if not architecture and field != "likelihood":
            continue
        differ = [path for path in paths if _at(actual, path) != _at(expected, path)]
        if differ:
            has = _at(actual, differ[0])
            shown = "missing" if has is _MISSING else has if field == "likelihood" else repr(has)
            what = f"the model's decoder is {shown}" if field == "likelihood" else \
                f"the model has {'.'.join(differ[0])} = {shown}"
            found.append(f"config.{field} is {getattr(config, field)!r} but {what}")
    return found


def check_data_dtype(x: Any, name: str, model: nn.Module) -> None:
    """A ValueError unless floating samples ``x`` have the dtype of the model's weights (when
    they all have one): a float32 batch does not multiply a float64 or bfloat16 weight. Integer
    samples are left to the model (token ids for an embedding)."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    dtype = getattr(x, "dtype", None)
    if len(dtypes) == 1 and isinstance(dtype, torch.dtype) and dtype.is_floating_point \
            and dtype not in dtypes:
        want = dtypes.pop()
        raise ValueError(f"{name} holds {dtype} samples but the model's weights are {want}: "
                         f"give {name} in the model's dtype ({name}.to({want})) or convert the "
                         f"model (model.to({dtype}))")


def run_held(run_dir: Path, checkpoint_file: str, metrics_file: str) -> list[str]:
    """What of a training run ``run_dir`` holds: ``checkpoint_file`` (any entry of that name)
    and ``metrics_file`` with records (an empty one, written by a run that stopped in its first
    epoch, holds nothing)."""
    held = []
    if os.path.lexists(run_dir / checkpoint_file):
        held.append(checkpoint_file)
    metrics = run_dir / metrics_file
    if os.path.lexists(metrics):
        try:
            info = os.stat(metrics)
            if not stat.S_ISREG(info.st_mode):
                held.append(f"{metrics_file} (not a regular file)")
            elif info.st_size:
                with open(metrics, "rb") as f:
                    lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
                held.append(f"{metrics_file} with {lines} epoch record{'s' if lines != 1 else ''}")
        except OSError as exc:
            held.append(f"{metrics_file} (unreadable: {exc.strerror or exc})")
    return held


def check_run_dir(run_dir: Path, checkpoint_file: str, metrics_file: str,
                  resuming: Path | None = None, history: Sequence[Any] = ()) -> None:
    """A ValueError naming ``run_dir`` and what it holds (:func:`run_held`) unless a trainer
    may write its run there: the directory holds no run, or the trainer resumes that run from
    the checkpoint ``resuming`` whose epoch records are ``history``: a checkpoint in
    ``run_dir`` itself, or one kept elsewhere whose records begin the run's ``metrics_file``
    (an earlier checkpoint of the same run). Nothing is written."""
    held = run_held(run_dir, checkpoint_file, metrics_file)
    if not held:
        return
    own = run_dir / checkpoint_file
    if resuming is not None and (same_file(resuming.parent, run_dir)
                                 or _begins(run_dir / metrics_file, history)):
        return
    what = f"run directory {run_dir} already holds a run ({' and '.join(held)})"
    if resuming is not None:
        raise ValueError(f"{what}; resuming {resuming}, a checkpoint of another run, there "
                         "would overwrite it: resume into the checkpoint's own directory "
                         "(run_dir=None) or an empty one")
    hint = (f"resume it with Trainer.from_checkpoint({str(own)!r}, ...) or" if checkpoint_file in
            held else "remove it or")
    raise ValueError(f"{what}; a fresh Trainer would overwrite it: {hint} give another run_dir")


def _begins(metrics: Path, history: Sequence[Any]) -> bool:
    """Whether the JSON lines of ``metrics`` begin with the (non-empty) ``history``."""
    if not history:
        return False
    try:
        with open(metrics, encoding="utf-8") as f:
            lines = [line for line, _ in zip(f, range(len(history)))]
        return [json.loads(line) for line in lines] == list(history)
    except (OSError, ValueError, RecursionError):
        return False
