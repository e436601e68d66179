"""Saving and loading: models as a JSON config plus a state_dict, and atomic file writes.

A saved model is a directory holding

- ``model_config.json``: ``{"format": "infomax_ext.InfoMaxVAE", "version": 1, "vae": <VAE
  config>, "mi": <MutualInfoChain config>}``, the builder arguments ``from_sizes`` recorded, so the
  architecture is rebuilt without the code that made it;
- ``model.pt``: the ``state_dict`` (tensors only; read back with ``torch.load(weights_only=True)``).

Only models whose encoder, decoder and MI chain were built by ``from_sizes`` (and so carry a
``config``) with named activations (``activations.KERNEL_ACTIVATIONS``, with a leaky ReLU slope or
an ELU alpha) can be saved this way. For any other model, a custom callable or module as an
activation included, :func:`save_model` raises a :class:`SerializationError` before writing
anything, rather than pickling the module: a pickle needs the defining code at load time anyway
and cannot be read back safely. Save ``model.state_dict()`` with ``torch.save`` and rebuild the
architecture in code instead. Loading refuses any config entry that ``save_model`` does not write
(an unknown activation name, a parameter on an activation that takes none, a wrong type, ...).

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
from typing import Any

import torch
from torch import nn

from .activations import KERNEL_ACTIVATIONS, spec_of_module

__all__ = [
    "SerializationError",
    "MODEL_CONFIG_FILE",
    "MODEL_WEIGHTS_FILE",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "safe_torch_load",
    "model_config",
    "model_from_config",
    "save_model",
    "load_model",
]

MODEL_CONFIG_FILE = "model_config.json"
MODEL_WEIGHTS_FILE = "model.pt"
FORMAT = "infomax_ext.InfoMaxVAE"
VERSION = 1


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


def atomic_write_bytes(path, data: bytes) -> None:
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


def atomic_write_text(path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj: Any) -> None:
    """``obj`` as indented JSON (with a final newline), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path) -> None:
    """``torch.save(obj, path)`` made atomic: serialised in memory, then :func:`atomic_write_bytes`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def safe_torch_load(path, map_location=None, what: str = "file") -> Any:
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


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise SerializationError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SerializationError(f"{what} {path} is not valid JSON ({exc})") from None


# ----------------------------------------------------------------------------- models

def model_config(model: nn.Module) -> dict:
    """The JSON config of an ``InfoMaxVAE``: ``{"format", "version", "vae", "mi"}``.

    Raises :class:`SerializationError` when a part was not built by ``from_sizes`` (no config)."""
    vae, mi = getattr(model, "vae", None), getattr(model, "mi", None)
    if not isinstance(vae, nn.Module) or not isinstance(mi, nn.Module):
        raise SerializationError(
            f"save_model expects an InfoMaxVAE (with .vae and .mi), got {type(model).__name__}"
        )
    vae_config, mi_config = getattr(vae, "config", None), getattr(mi, "config", None)
    missing = []
    if vae_config is None:
        for part in ("encoder", "decoder"):
            if getattr(getattr(vae, part, None), "config", None) is None:
                missing.append(f"vae.{part}")
        missing = missing or ["vae"]
    if mi_config is None:
        missing.append("mi")
    if missing:
        raise SerializationError(
            f"cannot save this InfoMaxVAE: {', '.join(missing)} carries no config (it was not built "
            "by from_sizes), so its architecture cannot be written as JSON. Build it with the "
            "from_sizes builders, or save model.state_dict() with torch.save and rebuild the "
            "architecture in code."
        )
    unnamed = (_unnamed_activation_entries(vae_config, "vae")
               + _unnamed_activation_entries(mi_config, "mi"))
    if unnamed:
        modules = ", ".join(f"{name} = {module!r}" for name, module in model.named_modules()
                            if _is_unnamed_activation(module))
        raise SerializationError(
            f"cannot save this InfoMaxVAE: activation with no name at {', '.join(unnamed)}"
            + (f" ({modules})" if modules else "")
            + f"; a config can only rebuild the named activations ({', '.join(KERNEL_ACTIVATIONS)})."
            " Build it with named activations, or save model.state_dict() with torch.save and "
            "rebuild the architecture in code."
        )
    # Round-trip through JSON now so an unserialisable entry fails here, not halfway through a save.
    try:
        vae_config = json.loads(json.dumps(vae_config))
        mi_config = json.loads(json.dumps(mi_config))
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"the model's config is not JSON-serialisable: {exc}") from None
    return {"format": FORMAT, "version": VERSION, "vae": vae_config, "mi": mi_config}


def _unnamed_activation_entries(config: dict, path: str) -> list[str]:
    """``"<path>.<key>[i]"`` for each activation entry of a builder config that holds no name."""
    found = []
    for key, value in config.items():
        if isinstance(value, dict):
            found += _unnamed_activation_entries(value, f"{path}.{key}")
        elif key.endswith(("activation", "activations")):
            if isinstance(value, list):
                found += [f"{path}.{key}[{i}]" for i, entry in enumerate(value) if entry is None]
            elif value is None:
                found.append(f"{path}.{key}")
    return found


def _is_unnamed_activation(module: nn.Module) -> bool:
    """Whether ``module`` is a layer of a built model that is an activation without a name."""
    return (next(module.children(), None) is None
            and not isinstance(module, (nn.Linear, nn.Flatten, nn.Unflatten))
            and spec_of_module(module) is None)


def model_from_config(config: dict) -> nn.Module:
    """A fresh ``InfoMaxVAE`` with the architecture of ``config`` (:func:`model_config`).

    The builders' random initialisation runs under a forked RNG, so rebuilding a model leaves
    torch's global generator untouched."""
    from .infomax import InfoMaxVAE
    from .mutual_info import MutualInfoChain
    from .vae import VAE

    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise SerializationError(f"not an InfoMaxVAE model config (format {FORMAT!r} expected)")
    if config.get("version") != VERSION:
        raise SerializationError(
            f"model config version {config.get('version')!r} is not supported (this is version "
            f"{VERSION}); was it written by a newer infomax_ext?"
        )
    try:
        with torch.random.fork_rng(devices=[]):
            return InfoMaxVAE(VAE.from_config(config["vae"]), MutualInfoChain.from_config(config["mi"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"cannot rebuild the model from its config: {exc}") from None


def save_model(model: nn.Module, directory) -> None:
    """Write ``model`` (an ``InfoMaxVAE`` built by ``from_sizes``) to ``directory``.

    Files: ``model_config.json`` (architecture) and ``model.pt`` (state_dict), each written
    atomically; the weights are stored on the CPU, so a model trained on a GPU loads anywhere.
    Raises :class:`SerializationError` for a model without config (see the module docstring).
    The directory is created if needed; files already there are replaced."""
    config = model_config(model)
    directory = Path(directory)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save(state, directory / MODEL_WEIGHTS_FILE)
    atomic_write_json(directory / MODEL_CONFIG_FILE, config)


def load_model(directory, map_location=None) -> nn.Module:
    """The ``InfoMaxVAE`` saved by :func:`save_model` in ``directory``, rebuilt exactly.

    Weights keep their saved dtypes (float64 stays float64); ``map_location`` (as in
    ``torch.load``) places them on a device. Clear :class:`SerializationError` for a missing
    directory, a missing or corrupt file, or weights that do not fit the architecture."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SerializationError(f"model directory not found: {directory}")
    config = _read_json(directory / MODEL_CONFIG_FILE, "model config")
    model = model_from_config(config)
    state = safe_torch_load(directory / MODEL_WEIGHTS_FILE, map_location, what="model weights")
    if not isinstance(state, dict):
        raise SerializationError(f"{directory / MODEL_WEIGHTS_FILE} does not hold a state_dict")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise SerializationError(
            f"the weights in {directory / MODEL_WEIGHTS_FILE} do not fit the architecture in "
            f"{MODEL_CONFIG_FILE}: {exc}"
        ) from None
    return model
