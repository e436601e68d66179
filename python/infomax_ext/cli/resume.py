"""What ``infomax-ext train --resume`` checks before anything in the run directory is written.

Three sources describe a resumed run: its ``config.json`` (the data options, the data's
fingerprint and every training option), the command line, and the checkpoint of each model
(``checkpoint.pt`` with its digest file; ``infomax/`` and ``vae/`` with ``--compare-vae``). They
must agree: the command line with config.json (checked by the option parser, exit code 2), and
every checkpoint with config.json and the data (here, exit code 1): every training option but
``epochs`` and ``device`` (the two a resumed run may change), the model the options build for the
data's sample shape (latent size, layer widths, likelihood, ...), the data's fingerprint and the
number of training samples, and an epoch within the budget. A disagreement names the file, the
field and both values. The checkpoints are read and checked as untrusted input first
(:func:`infomax_ext.checkpoint.read_checkpoint`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .common import CommandError
from .run_dir import CONFIG_FILE

if TYPE_CHECKING:
    from ..trainer import TrainConfig

RESUMABLE = {"epochs", "device"}  # the training options a resumed run may change


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 70 else text[:60] + "..."


def _first_difference(a: object, b: object, where: str = "") -> tuple[str, object, object] | None:
    """``(path, value in a, value in b)`` of the first place two JSON values differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    same = type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                  and not isinstance(a, bool) and not isinstance(b, bool))
    return None if same and a == b else (where, a, b)


def check_checkpoint_agrees(path: Path, state: dict[str, Any], config: TrainConfig,
                            fingerprint: str, n_train: int, sample_shape: Sequence[int]) -> None:
    """A :class:`CommandError` unless the checked checkpoint ``state`` (read from ``path``) was
    trained with the options of ``config`` (a TrainConfig from config.json and the command
    line), on data of this ``fingerprint``, ``n_train`` training samples and ``sample_shape``,
    and its epoch is within ``config.epochs``."""
    from ..infomax import model_config
    from ..memory import on_meta
    from ..train_config import upgrade_options
    from ..trainer import build_model

    saved, wanted = upgrade_options(state["config"]), config.to_dict()
    for field, value in wanted.items():
        if field in RESUMABLE:
            continue
        found = _first_difference(saved.get(field), value)
        if found:
            raise CommandError(
                f"{path} was trained with {field} {_short(saved.get(field))}, but the run's "
                f"{CONFIG_FILE} (and the command line) say {_short(value)}: a resumed run never "
                "mixes settings; resume with the matching run directory, or start a new run")
    recorded = state.get("data_fingerprint")
    if recorded != fingerprint:
        raise CommandError(
            f"{path} was trained on data of fingerprint {str(recorded)[:12]}..., the run's data "
            f"has fingerprint {fingerprint[:12]}...: not the same data" if recorded else
            f"{path} records no data fingerprint (not written by {CONFIG_FILE}'s run); refusing "
            "to resume from it")
    if state["n_train"] != n_train:
        raise CommandError(f"{path} was trained on {state['n_train']} samples, the run's data "
                           f"split gives {n_train}: not the same data")
    expected = model_config(on_meta(lambda: build_model(config, sample_shape)))
    found = _first_difference(state["model_config"], expected)
    if found:
        where, have, want = found
        raise CommandError(
            f"{path} holds a model whose {where} is {_short(have)}, but the run's options build "
            f"{_short(want)} for this data: not this run's model")
    if state["epoch"] > config.epochs:
        raise CommandError(f"{path} is already at epoch {state['epoch']}, beyond --epochs "
                           f"{config.epochs}")


def check_sub_run_config(run_dir: Path, config: TrainConfig) -> None:
    """A :class:`CommandError` unless ``run_dir/config.json`` (a model's own file under
    ``--compare-vae``), when there, holds the training options of ``config`` (but the
    resumable ones)."""
    from ..serialization import SerializationError, read_json
    from ..train_config import upgrade_options

    path = run_dir / CONFIG_FILE
    if not os.path.lexists(path):
        return
    try:
        saved = read_json(path, "run config")
    except SerializationError as exc:
        raise CommandError(str(exc)) from None
    train = saved.get("train") if isinstance(saved, dict) else None
    if not isinstance(train, dict):
        raise CommandError(f"{path} is not an infomax-ext run configuration")
    train = upgrade_options(train)  # today's keys, every field
    for field, value in config.to_dict().items():
        if field not in RESUMABLE and _first_difference(train.get(field), value):
            raise CommandError(f"{path} says {field} {_short(train.get(field))}, the run's "
                               f"{CONFIG_FILE} gives {_short(value)}: an edited file?")


def check_layout(out: Path, compare: bool) -> None:
    """A :class:`CommandError` when the checkpoints in ``out`` are not where config.json's
    ``compare_vae`` puts them (top level for one model, ``infomax/`` and ``vae/`` for two)."""
    from ..trainer import CHECKPOINT_FILE

    wrong = [out / CHECKPOINT_FILE] if compare else [out / "infomax" / CHECKPOINT_FILE,
                                                     out / "vae" / CHECKPOINT_FILE]
    for path in wrong:
        if os.path.lexists(path):
            raise CommandError(
                f"{out / CONFIG_FILE} says compare_vae {str(compare).lower()}, but {path} holds "
                "a checkpoint of the other layout: config.json and the checkpoints disagree")


def read_resume_states(out: Path, runs: list[tuple[str, TrainConfig, Path]], fingerprint: str,
                       n_train: int, sample_shape: Sequence[int],
                       ) -> dict[str, dict[str, Any] | None]:
    """For each ``(name, config, run_dir)`` of ``runs`` in the run directory ``out``, the checked
    checkpoint state of ``run_dir/checkpoint.pt`` (None when there is nothing at that path
    yet), after :func:`check_layout`, :func:`check_checkpoint_agrees` and
    :func:`check_sub_run_config`."""
    from ..checkpoint import read_checkpoint
    from ..trainer import CHECKPOINT_FILE, TrainConfig

    check_layout(out, len(runs) > 1)
    states: dict[str, dict[str, Any] | None] = {}
    for name, config, run_dir in runs:
        if len(runs) > 1:  # --compare-vae: each model's own config.json
            check_sub_run_config(run_dir, config)
        path = run_dir / CHECKPOINT_FILE
        if not os.path.lexists(path):  # a symlink loop or a dangling link is something: read it
            states[name] = None
            continue
        state = read_checkpoint(path, TrainConfig)
        check_checkpoint_agrees(path, state, config, fingerprint, n_train, sample_shape)
        states[name] = state
    return states
