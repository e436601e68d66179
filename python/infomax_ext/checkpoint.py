"""Training checkpoints: written with a SHA-256 companion, read back as untrusted input.

A checkpoint ``NAME.pt`` (:meth:`Trainer.save_checkpoint <infomax_ext.trainer.Trainer.save_checkpoint>`)
is a ``torch.save`` dict of tensors and plain values: ``format``, ``version``, ``epoch``,
``config`` (the :class:`~infomax_ext.trainer.TrainConfig`), ``model_config``, ``model`` (the
state dict), ``optimizers`` (``"vae"`` and ``"mi"``: Adam state dicts), ``history`` (one record
per epoch), ``n_train``, ``rng`` (``{"torch": ByteTensor[, "cuda": ByteTensor]}``),
``world_size``, and optionally ``rank_rng`` (one rng dict per process), ``data_fingerprint``
(the SHA-256 of the data, set by the command), ``preprocessing`` (how the data was prepared)
and ``bound_state`` (the running average of a DV bound with ``moving_average``:
``{"average": 0-dim tensor, "updates": int}``, :func:`bound_state`). Next to it, ``NAME.sha256.json`` records the
digest of its bytes (:func:`digest_path`).

Writing (:func:`write_checkpoint`) keeps the pair verifiable at every instant: the companion is
first rewritten to accept both the new digest and the ones it accepted before, then the
checkpoint is replaced atomically, then the companion is rewritten with the new digest alone. A
crash at any point leaves a checkpoint whose digest the companion lists.

Reading (:func:`read_checkpoint`) refuses, with a :class:`~infomax_ext.serialization.SerializationError`
naming the file and the entry, everything that is not exactly what a trainer writes: a path
that is not a regular file, a missing companion or a digest that does not match, and after
unpickling (tensors only) any entry of the wrong type; model weights and Adam moments whose
names, shapes or dtypes do not match the architecture of ``model_config`` (built on the meta
device first, its size checked against the machine's memory); non-finite weights or moments; an
Adam state that lacks a parameter after the first epoch or whose hyperparameters differ from the
config's; an epoch beyond the config's budget; a history that does not have one record per
epoch; random generator states torch would not accept; a ``config`` that contradicts
``model_config`` in what decides a step (bound, negatives, likelihood:
:func:`~infomax_ext.trainer_checks.config_mismatches`; the sizes are the model_config's);
weights or Adam states that do not each own exactly their memory (shared, views, expanded).
Nothing of it reaches torch's kernels before it has been checked.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, NoReturn, Sequence, cast

import torch

from . import memory
from .serialization import (
    SerializationError,
    atomic_write_bytes,
    atomic_write_json,
    is_sha256_hex,
    read_json,
    safe_torch_load,
    sha256_hex,
    storage_problem,
    torch_bytes,
)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "digest_path", "write_checkpoint",
           "read_checkpoint", "validate_checkpoint", "restore_training_state", "bound_state"]

CHECKPOINT_FORMAT = "infomax_ext.checkpoint"
CHECKPOINT_VERSION = 1
DIGEST_FORMAT = "infomax_ext.checkpoint-digest"

_REQUIRED = ("format", "version", "epoch", "config", "model_config", "model", "optimizers",
             "history", "n_train", "rng", "world_size")
_OPTIONAL = ("rank_rng", "data_fingerprint", "preprocessing", "bound_state")
_RECORD_KEYS = {"epoch", "vae_loss", "mi_loss", "mi"}
_ADAM_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
                         "decoupled_weight_decay")
_ADAM_STATE_KEYS = {"step", "exp_avg", "exp_avg_sq"}
_CUDA_RNG_MAX_BYTES = 64  # Philox: seed and offset, 8 bytes each (checked again on the device)


def digest_path(path: str | os.PathLike[str]) -> Path:
    """The companion of checkpoint ``path``: ``checkpoint.pt`` -> ``checkpoint.sha256.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.sha256.json")


def _accepted_digests(companion: Path, path: Path) -> list[str]:
    """The digests the companion ``companion`` of checkpoint ``path`` accepts."""
    record = read_json(companion, "checkpoint digest file")
    if not isinstance(record, dict) or record.get("format") != DIGEST_FORMAT:
        raise SerializationError(f"checkpoint digest file {companion} is not an infomax_ext "
                                 "checkpoint digest")
    digests = [record.get("sha256")] + list(record.get("previous_sha256") or [])
    if not all(is_sha256_hex(d) for d in digests):
        raise SerializationError(f"checkpoint digest file {companion} holds an entry that is not "
                                 "a SHA-256 digest")
    return cast("list[str]", digests)


def write_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically with its digest in :func:`digest_path` (module
    docstring: the pair is verifiable at every instant)."""
    path = Path(path)
    data = torch_bytes(state)
    digest, companion = sha256_hex(data), digest_path(path)
    try:
        earlier = _accepted_digests(companion, path) if path.exists() else []
    except SerializationError:
        earlier = []
    record = {"format": DIGEST_FORMAT, "file": path.name, "sha256": digest}
    atomic_write_json(companion, {**record, "previous_sha256": [d for d in earlier if d != digest]})
    atomic_write_bytes(path, data)
    atomic_write_json(companion, record)
    return path


def read_checkpoint(path: str | os.PathLike[str], config_type: type[Any]) -> dict[str, Any]:
    """The state in checkpoint ``path``, after checking its digest and every entry
    (:func:`validate_checkpoint` with ``config_type``); tensors on the CPU."""
    path = Path(path)
    companion = digest_path(path)
    if not companion.exists() and not companion.is_symlink():
        from .serialization import check_file

        check_file(path, "checkpoint")  # a missing or unreadable checkpoint is named first
        raise SerializationError(
            f"checkpoint {path} has no digest file {companion} next to it (written with every "
            "checkpoint), so it cannot be checked; refusing it")
    digests = _accepted_digests(companion, path)
    state = safe_torch_load(path, map_location="cpu", what="checkpoint", sha256=digests,
                            digest_source=str(companion))
    return validate_checkpoint(state, path, config_type)


# ----------------------------------------------------------------------------- validation

def _show(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else f"{type(value).__name__} {text[:50]}..."


class _Checker:
    """Raises :class:`SerializationError` as ``checkpoint PATH: ENTRY ...``."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, text: str) -> NoReturn:
        raise SerializationError(f"checkpoint {self.path}: {text}")

    def integer(self, value: object, name: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(f"{name} must be an integer >= {minimum}, found {_show(value)}")
        return value

    def mapping(self, value: object, name: str) -> dict[Any, Any]:
        if not isinstance(value, dict):
            self.fail(f"{name} must be a dict, found {_show(value)}")
        return value

    def tensor(self, value: object, name: str, shape: Sequence[int] | None = None,
               dtype: torch.dtype | None = None, finite: bool = True) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            self.fail(f"{name} must be a tensor, found {_show(value)}")
        if value.layout != torch.strided or value.is_quantized or not value.is_contiguous():
            self.fail(f"{name} is not a dense contiguous tensor")
        if value.requires_grad:
            self.fail(f"{name} is a tensor that requires grad")
        if shape is not None and tuple(value.shape) != tuple(shape):
            self.fail(f"{name} has shape {tuple(value.shape)}, the parameter has {tuple(shape)}")
        if dtype is not None and value.dtype != dtype:
            self.fail(f"{name} has dtype {value.dtype}, expected {dtype}")
        if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            self.fail(f"{name} holds NaN or infinite values: not a usable training state")
        return value


def validate_checkpoint(state: object, path: str | os.PathLike[str],
                        config_type: type[Any]) -> dict[str, Any]:
    """``state`` (as unpickled from checkpoint ``path``) when every entry is what a trainer
    writes (module docstring); else a :class:`SerializationError` naming the entry.
    ``config_type``: :class:`~infomax_ext.trainer.TrainConfig` (passed in: the trainer imports
    this module), whose ``from_dict`` checks the ``config`` entry."""
    from .infomax import InfoMaxVAE

    c = _Checker(Path(path))
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SerializationError(f"{path} is not an infomax_ext training checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise SerializationError(f"{path}: checkpoint version {_show(state.get('version'))} is "
                                 f"not supported (expected {CHECKPOINT_VERSION})")
    missing = [k for k in _REQUIRED if k not in state]
    unknown = [k for k in state if k not in _REQUIRED + _OPTIONAL]
    if missing or unknown:
        c.fail(f"missing entries {missing}" if missing else f"unknown entries {unknown}")
    try:
        config = config_type.from_dict(dict(c.mapping(state["config"], "config")))
    except (TypeError, ValueError) as exc:
        c.fail(f"config: {exc}")
    epoch = c.integer(state["epoch"], "epoch")
    if epoch > config.epochs:
        c.fail(f"epoch {epoch} is beyond the config's budget of {config.epochs} epochs")
    c.integer(state["n_train"], "n_train", 2)
    world = c.integer(state["world_size"], "world_size", 1)
    fingerprint = state.get("data_fingerprint")
    if fingerprint is not None and not is_sha256_hex(fingerprint):
        c.fail(f"data_fingerprint must be a SHA-256 digest, found {_show(fingerprint)}")
    if state.get("preprocessing") is not None:
        from .preprocessing import Preprocessing

        try:
            Preprocessing.from_dict(state["preprocessing"])
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            c.fail(f"preprocessing: {exc}")

    model_config = c.mapping(state["model_config"], "model_config")
    try:  # the architecture on the meta device: shapes, no memory (sizes checked)
        shell = memory.on_meta(lambda: InfoMaxVAE.from_config(model_config))
    except SerializationError as exc:
        c.fail(f"model_config: {exc}")
    from .trainer_checks import config_mismatches

    mismatches = config_mismatches(config, shell, architecture=False)
    if mismatches:  # resumed, the model would train under another objective than it records
        c.fail(f"config contradicts model_config: {'; '.join(mismatches)}")
    dtype = _check_model(c, c.mapping(state["model"], "model"), shell)
    optimizers = c.mapping(state["optimizers"], "optimizers")
    if set(optimizers) != {"vae", "mi"}:
        c.fail(f"optimizers must hold 'vae' and 'mi', found {sorted(map(str, optimizers))}")
    for name, network, lr in (("vae", shell.vae, config.lr), ("mi", shell.mi, config.mi_lr)):
        _check_adam(c, optimizers[name], f"optimizers.{name}", list(network.parameters()),
                    dtype, lr, epoch)
    _check_storage(c, state["model"], optimizers)
    _check_history(c, state["history"], epoch)
    if "bound_state" in state:
        _check_bound_state(c, state["bound_state"], getattr(shell, "bound", None))
    _check_rng(c, state["rng"], "rng")
    if state.get("rank_rng") is not None:
        ranks = state["rank_rng"]
        if not isinstance(ranks, list) or len(ranks) != world:
            c.fail(f"rank_rng must be a list of {world} random states, found {_show(ranks)}")
        for r, rng in enumerate(ranks):
            _check_rng(c, rng, f"rank_rng[{r}]")
    return state


def _check_model(c: _Checker, weights: dict[Any, Any], shell: torch.nn.Module) -> torch.dtype:
    """Check the state dict ``weights`` against the meta model ``shell``; returns its dtype."""
    expected = shell.state_dict()
    missing = [k for k in expected if k not in weights]
    unknown = [str(k) for k in weights if k not in expected]
    if missing or unknown:
        c.fail(f"model: missing weights {missing[:3]}" if missing else
               f"model: unknown weights {unknown[:3]}")
    dtypes: set[torch.dtype] = set()
    for key, meta in expected.items():
        value = c.tensor(weights[key], f"model.{key}", shape=meta.shape)
        if not value.is_floating_point():
            c.fail(f"model.{key} has dtype {value.dtype}, not a floating-point dtype")
        dtypes.add(value.dtype)
    if len(dtypes) > 1:
        c.fail(f"model holds weights of several dtypes {sorted(map(str, dtypes))}")
    return dtypes.pop() if dtypes else torch.float32


def _check_storage(c: _Checker, weights: Mapping[str, torch.Tensor],
                   optimizers: Mapping[str, Any]) -> None:
    """The weights and Adam states (already checked) each own exactly their memory
    (:func:`~infomax_ext.serialization.storage_problem`): Adam updates its moments and step
    counts in place, as the weights are updated, and must never update two at once."""
    named = [(f"model.{key}", value) for key, value in weights.items()]
    for name, saved in optimizers.items():
        for index, entry in saved["state"].items():
            named += [(f"optimizers.{name}.state[{index}].{key}", entry[key])
                      for key in sorted(_ADAM_STATE_KEYS)]
    problem = storage_problem(named)
    if problem is not None:
        c.fail(f"{problem} (a checkpoint holds each tensor in its own storage)")


def _same(a: object, b: object) -> bool:
    """Plain-value equality that never touches a tensor (a crafted entry may be anything)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return a is None and b is None


def _check_adam(c: _Checker, saved: object, name: str, params: Sequence[torch.Tensor],
                dtype: torch.dtype, lr: float, epoch: int) -> None:
    """Check an Adam ``state_dict`` against the (meta) ``params`` of its network."""
    saved = c.mapping(saved, name)
    if set(saved) != {"state", "param_groups"}:
        c.fail(f"{name} must hold 'state' and 'param_groups'")
    groups = saved["param_groups"]
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict):
        c.fail(f"{name}.param_groups must be a list of one dict")
    group = groups[0]
    if not _same(group.get("params"), list(range(len(params)))):
        c.fail(f"{name}.param_groups[0].params must be the {len(params)} parameter indices "
               f"0..{len(params) - 1}")
    fresh = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr).param_groups[0]
    unknown = [str(k) for k in group if k not in fresh]
    if unknown:
        c.fail(f"{name}.param_groups[0] has unknown entries {unknown}")
    for key in _ADAM_HYPERPARAMETERS:  # one another torch version lacks: the fresh value is used
        if key in fresh and key in group and not _same(group[key], fresh[key]):
            c.fail(f"{name} {key} is {_show(group.get(key))}, the config's Adam has "
                   f"{_show(fresh[key])}")
    entries = c.mapping(saved["state"], f"{name}.state")
    bad = [k for k in entries if isinstance(k, bool) or not isinstance(k, int)
           or not 0 <= k < len(params)]
    if bad:
        c.fail(f"{name}.state has entries {_show(bad[:3])} for no parameter")
    if epoch > 0 and len(entries) != len(params):
        c.fail(f"{name}.state holds Adam moments for {len(entries)} of the {len(params)} "
               f"parameters after {epoch} epochs (an emptied or partial optimizer state)")
    for index, entry in entries.items():
        where = f"{name}.state[{index}]"
        entry = c.mapping(entry, where)
        if set(entry) != _ADAM_STATE_KEYS:
            c.fail(f"{where} must hold {sorted(_ADAM_STATE_KEYS)}, found {sorted(map(str, entry))}")
        step = c.tensor(entry["step"], f"{where}.step", shape=())
        value = float(step) if step.is_floating_point() else math.nan
        if not (value >= 1 and value == int(value)):
            c.fail(f"{where}.step must be a whole number >= 1 held as a float tensor, found "
                   f"{_show(step)} {step.tolist() if step.numel() == 1 else ''}".rstrip())
        shape = params[index].shape
        c.tensor(entry["exp_avg"], f"{where}.exp_avg", shape=shape, dtype=dtype)
        squares = c.tensor(entry["exp_avg_sq"], f"{where}.exp_avg_sq", shape=shape, dtype=dtype)
        if bool((squares < 0).any()):
            c.fail(f"{where}.exp_avg_sq holds negative values")


def _check_history(c: _Checker, history: object, epoch: int) -> None:
    """One record per completed epoch, ``epoch`` 1, 2, ..., finite numbers, the same keys."""
    if not isinstance(history, list) or len(history) != epoch:
        c.fail(f"history must be a list of {epoch} records (one per epoch), found "
               f"{_show(history) if not isinstance(history, list) else f'{len(history)} records'}")
    keys: set[Any] | None = None
    for i, record in enumerate(history):
        record = c.mapping(record, f"history[{i}]")
        if keys is None:
            keys = set(record)
            if not _RECORD_KEYS <= keys:
                c.fail(f"history[0] lacks {sorted(_RECORD_KEYS - keys)}")
        elif set(record) != keys:
            c.fail(f"history[{i}] has other entries than history[0]")
        for key, value in record.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                c.fail(f"history[{i}].{key} must be a finite number, found {_show(value)}")
        if record["epoch"] != i + 1:
            c.fail(f"history[{i}].epoch must be {i + 1}, found {_show(record['epoch'])}")


def bound_state(model: torch.nn.Module) -> dict[str, Any] | None:
    """The checkpoint's ``bound_state`` entry for ``model``: its DV bound's running average
    (:meth:`~infomax_ext.bounds.DV.average_state`), None when it keeps none."""
    from .bounds import DV

    bound = getattr(model, "bound", None)
    return bound.average_state() if isinstance(bound, DV) else None


def _check_bound_state(c: _Checker, saved: object, bound: object) -> None:
    """``bound_state`` fits the model's bound: a DV with a moving average, and a state its
    :meth:`~infomax_ext.bounds.DV.load_average_state` takes."""
    from .bounds import DV

    if not isinstance(bound, DV) or bound.moving_average is None:
        c.fail(f"bound_state is given but the model's bound {bound!r} keeps no running average")
    saved = c.mapping(saved, "bound_state")
    if "average" in saved:
        c.tensor(saved["average"], "bound_state.average", shape=())
    try:
        DV(bound.moving_average).load_average_state(saved)
    except ValueError as exc:
        c.fail(f"bound_state: {exc}")


def _check_rng(c: _Checker, rng: object, name: str) -> None:
    """A random state dict: ``torch`` a CPU generator state torch accepts, ``cuda`` optional."""
    rng = c.mapping(rng, name)
    unknown = [str(k) for k in rng if k not in ("torch", "cuda")]
    if "torch" not in rng or unknown:
        c.fail(f"{name} must hold 'torch' (and optionally 'cuda'), found {sorted(map(str, rng))}")
    state = c.tensor(rng["torch"], f"{name}.torch", dtype=torch.uint8)
    try:
        torch.Generator().set_state(state)
    except (RuntimeError, TypeError, ValueError):
        c.fail(f"{name}.torch is not a valid CPU random generator state")
    if "cuda" in rng:
        state = c.tensor(rng["cuda"], f"{name}.cuda", dtype=torch.uint8)
        if state.dim() != 1 or not 0 < state.numel() <= _CUDA_RNG_MAX_BYTES:
            c.fail(f"{name}.cuda is not a CUDA random generator state")


# ----------------------------------------------------------------------------- restoring

def restore_training_state(trainer: Any, state: Mapping[str, Any]) -> None:
    """Put the checked ``state`` into ``trainer``, whose model already holds its weights: both
    Adam states (under the trainer's own hyperparameters and implementation flags, equal to the
    saved ones by :func:`validate_checkpoint`), a DV bound's running average, the epoch,
    history and random state."""
    for name, opt in trainer.optimizers.items():
        target = opt.state_dict()
        target["state"] = state["optimizers"][name]["state"]
        opt.load_state_dict(target)
    if state.get("bound_state") is not None:  # checked against the model's bound
        trainer.model.bound.load_average_state(state["bound_state"])
    trainer.epoch = state["epoch"]
    trainer.history = [dict(r) for r in state["history"]]
    trainer.data_fingerprint = state.get("data_fingerprint")
    ranks = state.get("rank_rng") or [state["rng"]]
    trainer._rng_state = ranks[trainer.rank] if len(ranks) == trainer.world_size else (
        state["rng"] if trainer.rank == 0 else None)
    rng = trainer._rng_state or {}
    if "cuda" in rng and trainer.device.type == "cuda":  # as the CPU state: on a scratch generator
        try:
            torch.Generator(device=trainer.device).set_state(rng["cuda"])
        except (RuntimeError, TypeError, ValueError):
            raise SerializationError("the checkpoint's CUDA random state is not one this device "
                                     "accepts") from None
