"""Files: atomic writes, safe reads, and a saved model's two files.

A saved model is a directory holding ``model_config.json``, the JSON config of its architecture
(written by :meth:`InfoMaxVAE.save <infomax_ext.InfoMaxVAE.save>`, which says what it holds), and
``model.pt``, its ``state_dict`` (tensors only, on the CPU; read back with
``torch.load(weights_only=True)``, so loading runs no pickled code). This module writes and reads
those files and knows nothing of the models: :mod:`.infomax` builds the model from the config.

Every file is written atomically (:func:`atomic_write_bytes`): the bytes go to a temporary file in
the same directory, are flushed and fsync'ed, then ``os.replace`` moves the file over the target
(and the directory is fsync'ed). A crash or Ctrl-C at any point leaves either the old file or the
new one, never a half-written one. Training checkpoints use the same functions.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = [
    "SerializationError",
    "MODEL_CONFIG_FILE",
    "MODEL_WEIGHTS_FILE",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "safe_torch_load",
    "read_json",
    "write_model_files",
    "read_model_config",
    "load_model_weights",
]

MODEL_CONFIG_FILE = "model_config.json"
MODEL_WEIGHTS_FILE = "model.pt"


class SerializationError(ValueError):
    """A model or checkpoint cannot be written or read back (the message says why)."""


# ----------------------------------------------------------------------------- atomic writes

def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, os.replace.

    Readers see either the previous content of ``path`` or ``data``, never a mix, even when the
    process dies mid-write; a failed write removes its temporary file (``.NAME.XXXX.tmp``). The
    file gets the permissions of ``open()``: 0o666 less the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temp file behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """``obj`` as indented JSON (with a final newline), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` made atomic: serialised in memory, then :func:`atomic_write_bytes`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def safe_torch_load(path: str | os.PathLike[str], map_location: str | torch.device | None = None,
                    what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` with a clear :class:`SerializationError` when the
    file is missing, truncated or not a torch file."""
    path = Path(path)
    if not path.is_file():
        raise SerializationError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        from .data import short_error

        raise SerializationError(
            f"{what} {path} is corrupt or not a torch file ({short_error(exc)})") from None


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """The JSON in ``path``; a :class:`SerializationError` when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise SerializationError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SerializationError(f"{what} {path} is not valid JSON ({exc})") from None


# ----------------------------------------------------------------------------- saved models

def cpu_copy(obj: Any) -> Any:
    """A copy of a (nested) state dict with every tensor detached and on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def write_model_files(directory: str | os.PathLike[str], config: dict[str, Any],
                      state_dict: Mapping[str, Any]) -> None:
    """Write a model's ``config`` to ``directory/model_config.json`` and its ``state_dict`` (moved
    to the CPU) to ``directory/model.pt``, each atomically; the directory is created if needed and
    files already there are replaced."""
    directory = Path(directory)
    atomic_torch_save(cpu_copy(state_dict), directory / MODEL_WEIGHTS_FILE)
    atomic_write_json(directory / MODEL_CONFIG_FILE, config)


def read_model_config(directory: str | os.PathLike[str]) -> Any:
    """The JSON of ``directory/model_config.json``; a :class:`SerializationError` when the
    directory or the file is missing or the file is not JSON."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SerializationError(f"model directory not found: {directory}")
    return read_json(directory / MODEL_CONFIG_FILE, "model config")


def load_model_weights(module: nn.Module, directory: str | os.PathLike[str],
                       map_location: str | torch.device | None = None) -> None:
    """Load ``directory/model.pt`` into ``module`` (strict, keeping the saved dtypes);
    ``map_location`` as in ``torch.load``. A :class:`SerializationError` when the file is missing
    or corrupt or its weights do not fit the module."""
    path = Path(directory) / MODEL_WEIGHTS_FILE
    state = safe_torch_load(path, map_location, what="model weights")
    if not isinstance(state, dict):
        raise SerializationError(f"{path} does not hold a state_dict")
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise SerializationError(
            f"the weights in {path} do not fit the architecture in {MODEL_CONFIG_FILE}: {exc}"
        ) from None
