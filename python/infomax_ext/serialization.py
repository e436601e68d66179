"""Files: atomic writes, safe reads, and the files of a saved model.

A saved model is a directory holding ``model_config.json``, the JSON config of its architecture
(written by :meth:`InfoMaxVAE.save <infomax_ext.InfoMaxVAE.save>`, which says what it holds) plus
``weights_sha256``, the SHA-256 digest of ``model.pt``, ``preprocessing_sha256``, that of
``preprocessing.json`` (absent in directories saved before it was recorded), and
``config_sha256``, that of its own other entries (:func:`config_digest`: an edited architecture
is refused too), and ``model.pt``, its ``state_dict``
(tensors only, on the CPU; read back with ``torch.load(weights_only=True)``, so loading runs no
pickled code). This module writes and reads those files and knows nothing of the models:
:mod:`.infomax` builds the model from the config.

Files are untrusted input: a path that is a directory, a symlink loop, a pipe or unreadable is
named as such (:func:`check_file`); a tensor file is read into memory once, its digest compared
with the one its JSON companion records (a changed, damaged or swapped file is refused, naming
it) and only then unpickled (tensors only).

Every file is written atomically (:func:`atomic_write_bytes`): the bytes go to a temporary file in
the same directory, are flushed and fsync'ed, then ``os.replace`` moves the file over the target
(and the directory is fsync'ed). A crash or Ctrl-C at any point leaves either the old file or the
new one, never a half-written one. Training checkpoints use the same functions.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Mapping, TypeGuard

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.serialization import MAP_LOCATION

__all__ = [
    "SerializationError",
    "MODEL_CONFIG_FILE",
    "MODEL_WEIGHTS_FILE",
    "WEIGHTS_DIGEST_KEY",
    "PREPROCESSING_DIGEST_KEY",
    "CONFIG_DIGEST_KEY",
    "config_digest",
    "check_file",
    "check_directory",
    "sha256_hex",
    "is_sha256_hex",
    "atomic_write_bytes",
    "atomic_write_with",
    "same_file",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "safe_torch_load",
    "read_json",
    "read_bytes",
    "write_model_files",
    "read_model_config",
    "read_model_weights",
    "check_weights_fit",
    "load_model_weights",
    "storage_problem",
]

MODEL_CONFIG_FILE = "model_config.json"
MODEL_WEIGHTS_FILE = "model.pt"
WEIGHTS_DIGEST_KEY = "weights_sha256"  # in model_config.json: the SHA-256 of model.pt
PREPROCESSING_DIGEST_KEY = "preprocessing_sha256"  # in model_config.json: of preprocessing.json
CONFIG_DIGEST_KEY = "config_sha256"  # in model_config.json: the SHA-256 of its other entries


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
    file gets the permissions of ``open()``: 0o666 less the umask. An OSError names ``path``
    (its ``filename``), never the temporary file."""
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """:func:`atomic_write_bytes` of what ``write(f)`` writes to the binary file ``f`` (the temp
    file): the bytes are streamed, never held in memory as one block."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OSError(errno.ENOTDIR, "a folder on its path is a file", str(path)) from None
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # KeyboardInterrupt included: never leave the temp file behind
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _naming(exc, path) from None
        raise
    _fsync_directory(path.parent)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as the same kind of OSError (``errno`` and reason kept) with ``path`` as its file:
    the target the caller asked for, not a temporary file or an ancestor."""
    if exc.errno is None:
        return OSError(f"{path}: {exc}")
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one file or directory: the same path once links are
    resolved, or the same inode (a hard link); False when either cannot be looked at."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return False


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """``obj`` as indented JSON (with a final newline), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def torch_bytes(obj: Any) -> bytes:
    """The bytes ``torch.save(obj, ...)`` writes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> str:
    """``torch.save(obj, path)`` made atomic: serialised in memory, then :func:`atomic_write_bytes`;
    returns the SHA-256 (hex) of the bytes written."""
    data = torch_bytes(obj)
    atomic_write_bytes(path, data)
    return sha256_hex(data)


# ----------------------------------------------------------------------------- safe reads

def sha256_hex(data: bytes) -> str:
    """The SHA-256 digest of ``data``, 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def is_sha256_hex(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a digest as :func:`sha256_hex` writes it."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def check_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` when it is a regular file (symlinks followed), else a :class:`SerializationError`
    saying what it is (:func:`~infomax_ext.data.file_problem`): missing, a dangling symlink, a
    symlink loop, a directory, a pipe or device, or unreadable."""
    from .data import file_problem

    problem = file_problem(path, what)
    if problem is not None:
        raise SerializationError(problem)
    return Path(path)


def check_directory(path: str | os.PathLike[str], what: str = "directory") -> Path:
    """``path`` when it is a directory (symlinks followed), else a :class:`SerializationError`
    saying what it is (as :func:`check_file`)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SerializationError(f"{what} not found: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SerializationError(f"{what} {path} is a symlink loop") from None
        raise SerializationError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISDIR(mode):
        raise SerializationError(f"{what} {path} is a file, not a directory")
    return path


def read_bytes(path: str | os.PathLike[str], what: str = "file") -> bytes:
    """The content of the regular file ``path`` (:func:`check_file`)."""
    path = check_file(path, what)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SerializationError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def safe_torch_load(path: str | os.PathLike[str], map_location: MAP_LOCATION = None,
                    what: str = "file", sha256: str | Iterable[str] | None = None,
                    digest_source: str | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` with a clear :class:`SerializationError` when the
    file is missing, not a regular file, truncated or not a torch file. ``sha256``: a digest or
    a collection of digests the file's bytes must match (``digest_source`` names where they are
    recorded); the file is read once, checked, then unpickled from memory."""
    data = read_bytes(path, what)
    if sha256 is not None:
        accepted = {sha256} if isinstance(sha256, str) else set(sha256)
        if sha256_hex(data) not in accepted:
            raise SerializationError(
                f"{what} {path} does not match the SHA-256 digest recorded in "
                f"{digest_source or 'its companion file'}: it was changed, damaged or replaced "
                "after it was written; refusing it")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        from .data import short_error

        raise SerializationError(
            f"{what} {path} is corrupt or not a torch file ({short_error(exc)})") from None


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """The JSON in ``path``; a :class:`SerializationError` when it is missing, not a regular
    file or not JSON."""
    data = read_bytes(path, what)
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SerializationError(f"{what} {Path(path)} is not valid JSON ({exc})") from None
    except RecursionError:
        raise SerializationError(f"{what} {Path(path)} is not valid JSON (nested too "
                                 "deeply)") from None


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


def write_model_files(directory: str | os.PathLike[str], config: Mapping[str, Any],
                      state_dict: Mapping[str, Any]) -> None:
    """Write a model's ``state_dict`` (moved to the CPU) to ``directory/model.pt`` and its
    ``config``, with the file's digest under ``weights_sha256``, to
    ``directory/model_config.json``, each atomically and the config last (it records the
    digests of the files written before it, so a save that fails halfway leaves a set that is
    refused, never a mix that loads); the directory is created if needed and files already
    there are replaced."""
    directory = Path(directory)
    digest = atomic_torch_save(cpu_copy(state_dict), directory / MODEL_WEIGHTS_FILE)
    atomic_write_json(directory / MODEL_CONFIG_FILE, {
        **config, WEIGHTS_DIGEST_KEY: digest, CONFIG_DIGEST_KEY: config_digest(config)})


def config_digest(config: Mapping[str, Any]) -> str:
    """The SHA-256 of ``config``'s entries but the two digests, as canonical JSON (sorted keys,
    no spaces): what ``config_sha256`` in model_config.json records."""
    body = {k: v for k, v in config.items() if k not in (WEIGHTS_DIGEST_KEY, CONFIG_DIGEST_KEY)}
    return sha256_hex(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def read_model_config(directory: str | os.PathLike[str]) -> Any:
    """The JSON of ``directory/model_config.json`` (with ``weights_sha256``), checked against
    its ``config_sha256``; a :class:`SerializationError` when the directory or the file is
    missing or not what it should be, the file is not JSON, or its entries were edited."""
    directory = check_directory(directory, "model directory")
    path = directory / MODEL_CONFIG_FILE
    config = read_json(path, "model config")
    if not isinstance(config, dict):
        raise SerializationError(f"model config {path} does not hold a JSON object")
    recorded = config.get(CONFIG_DIGEST_KEY)
    if not is_sha256_hex(recorded):
        raise SerializationError(f"model config {path} records no valid digest of its entries "
                                 f"({CONFIG_DIGEST_KEY}); save the model again")
    if recorded != config_digest(config):
        raise SerializationError(f"model config {path} was changed after it was written (its "
                                 f"entries do not match its {CONFIG_DIGEST_KEY}); refusing it")
    return config


def storage_problem(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """Why the tensors ``named`` (``(name, tensor)`` pairs) do not each own exactly their own
    memory, None when they do.

    Every tensor must be contiguous, start at offset 0 of its storage and fill it exactly (no
    view into a larger storage, no expanded or overlapping strides), and no two may share a
    storage. ``torch.save`` of cloned tensors (what this package writes) always passes; a crafted
    file could otherwise alias two parameters (one optimizer step would change both), keep a
    huge storage alive behind a small view, or hand an optimizer a tensor it cannot update in
    place."""
    owners: dict[tuple[str, int], str] = {}
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        storage_bytes = tensor.untyped_storage().nbytes()
        if not tensor.is_contiguous() or tensor.storage_offset() != 0 or storage_bytes != nbytes:
            return (f"{name} does not own exactly its memory (strides {tuple(tensor.stride())}, "
                    f"offset {tensor.storage_offset()}, {storage_bytes} bytes of storage for "
                    f"{nbytes}): a view, an expanded or an overlapping tensor")
        if nbytes:
            key = (str(tensor.device), tensor.untyped_storage().data_ptr())
            if key in owners:
                return f"{name} and {owners[key]} share one storage"
            owners[key] = name
    return None


def _tensors_only(state: object, path: str | os.PathLike[str]) -> None:
    """A :class:`SerializationError` unless ``state`` maps names to dense tensors that each own
    exactly their memory (:func:`storage_problem`)."""
    if not isinstance(state, dict):
        raise SerializationError(f"{path} does not hold a state_dict")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor) \
                or value.layout != torch.strided or value.is_quantized:
            raise SerializationError(f"{path}: entry {key!r} is not a dense tensor")
    problem = storage_problem(state.items())
    if problem is not None:
        raise SerializationError(f"{path}: {problem}; not a file save() writes, refusing it")


def read_model_weights(directory: str | os.PathLike[str], map_location: MAP_LOCATION = None,
                       sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in ``directory/model.pt``, checked: ``sha256`` is the digest
    ``model_config.json`` records (required: a file without one cannot be checked and is
    refused); dense tensors only, each owning exactly its memory (:func:`storage_problem`),
    finite, one floating dtype. ``map_location`` as in
    ``torch.load``."""
    path = Path(directory) / MODEL_WEIGHTS_FILE
    if not is_sha256_hex(sha256):
        raise SerializationError(
            f"{Path(directory) / MODEL_CONFIG_FILE} records no valid digest of {MODEL_WEIGHTS_FILE} "
            f"({WEIGHTS_DIGEST_KEY}), so the weights cannot be checked; save the model again")
    state: dict[str, torch.Tensor]
    state = safe_torch_load(path, map_location, what="model weights", sha256=sha256,
                            digest_source=str(Path(directory) / MODEL_CONFIG_FILE))
    _tensors_only(state, path)
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise SerializationError(f"{path}: {key} holds NaN or infinite values")
    dtypes = sorted({str(v.dtype) for v in state.values() if v.is_floating_point()})
    if len(dtypes) > 1:
        raise SerializationError(f"{path} holds weights of several dtypes {dtypes}: not a "
                                 "saved model")
    return state


def check_weights_fit(module: nn.Module, state: Mapping[str, torch.Tensor],
                      path: str | os.PathLike[str]) -> None:
    """A :class:`SerializationError` unless ``state`` has exactly the entries of ``module``'s
    state dict, of the same shapes, floating where the module's are (``module`` may live on the
    meta device: nothing is allocated)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problem = (f"missing {missing[:3]}" if missing else f"unexpected entries {unexpected[:3]}"
               if unexpected else None)
    for key, want in expected.items():
        if problem is None and tuple(state[key].shape) != tuple(want.shape):
            problem = f"{key} has shape {tuple(state[key].shape)}, the architecture needs " \
                      f"{tuple(want.shape)}"
        if problem is None and want.is_floating_point() != state[key].is_floating_point():
            problem = f"{key} has dtype {state[key].dtype}, the architecture needs a " \
                      "floating-point tensor"
    if problem is not None:
        raise SerializationError(
            f"the weights in {path} do not fit the architecture in {MODEL_CONFIG_FILE}: {problem}")


def load_model_weights(module: nn.Module, directory: str | os.PathLike[str],
                       map_location: MAP_LOCATION = None, sha256: str | None = None,
                       state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Load ``directory/model.pt`` (:func:`read_model_weights`, or the ``state`` it already
    returned) into ``module`` (strict, keeping the saved dtypes). A
    :class:`SerializationError` when the file is missing, corrupt, changed since it was written,
    or its weights do not fit the module (names, shapes, floating dtypes), are not finite, or do
    not each own exactly their memory (:func:`storage_problem`: aliased parameters, views,
    expanded tensors)."""
    path = Path(directory) / MODEL_WEIGHTS_FILE
    if state is None:
        state = read_model_weights(directory, map_location, sha256)
    else:
        _tensors_only(state, path)
    check_weights_fit(module, state, path)
    # assign: each tensor owns its memory alone (checked), so it becomes the parameter uncopied
    module.load_state_dict(state, strict=True, assign=True)
