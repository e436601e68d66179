"""The run directory of ``infomax-ext train``: its name, its lock, its config.json."""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .common import PROG, CommandError

if TYPE_CHECKING:
    import argparse

    from ..train_config import TrainConfig

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
METRICS_SUMMARY = "metrics.json"
# What a run writes into its directory besides config.json and checkpoint.pt (which mark a run,
# _holds_run): the checkpoint's digest, the metrics, the model and, unless --no-plots, the plots.
RUN_FILES = ("checkpoint.sha256.json", "metrics.jsonl", METRICS_SUMMARY, "model")
RUN_PLOTS = ("training_curves.png", "latent_space.png", "reconstructions.png",
             "prior_samples.png", "active_units.png")
# What a --compare-vae run writes beside its two run directories infomax/ and vae/.
COMPARISON_FILES = ("comparison.md", "comparison.json")
COMPARISON_PLOT = "comparison.png"


def _default_out() -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / stamp
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{stamp}-{k}")
    return out


def _holds_run(directory: Path) -> bool:
    """Whether ``directory`` holds a run: anything (a broken link included) at its config.json or
    checkpoint.pt."""
    return any(os.path.lexists(directory / name) for name in (CONFIG_FILE, "checkpoint.pt"))


class _RunLock:
    """The advisory lock of a run directory: ``DIR/.lock``, flock'ed exclusively and holding the
    pid of its holder, from :meth:`acquire` to :meth:`release`. The kernel drops the lock when
    its holder dies, so a killed run never blocks the next one. (No lock where the platform
    lacks flock.)"""

    def __init__(self) -> None:
        self.fd: int | None = None

    def acquire(self, directory: Path) -> None:
        """Lock ``directory``, or raise CommandError naming the pid of the run that holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        path = directory / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise CommandError(f"cannot write to --out {directory}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CommandError(f"{directory} is in use by another {PROG} run (pid {holder}); wait "
                               "for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _check_out(out: Path, flag: str = "--out") -> None:
    """CommandError unless ``out`` (the directory option ``flag``) is, or can be created as, a
    directory."""
    if out.exists() and not out.is_dir():
        raise CommandError(f"{flag} {out} is a file, not a directory")
    for parent in out.parents:  # the nearest existing ancestor must be a directory
        if parent.exists():
            if not parent.is_dir():
                raise CommandError(f"{flag} {out} cannot be created: {parent} is a file")
            return


def run_outputs(compare: bool, plots: bool) -> list[str]:
    """The paths, relative to the run directory, of everything a run writes (with ``compare``:
    its two run directories' files and the comparison; with ``plots``: the PNGs)."""
    one = [CONFIG_FILE, "checkpoint.pt", *RUN_FILES, *(RUN_PLOTS if plots else ())]
    if not compare:
        return one
    return [f"{sub}/{name}" for sub in ("infomax", "vae") for name in one] + [
        CONFIG_FILE, *COMPARISON_FILES, *((COMPARISON_PLOT,) if plots else ())]


def _claim(out: Path, lock: _RunLock, resume: bool, parser: argparse.ArgumentParser,
           outputs: Sequence[str] = ()) -> None:
    """Lock the existing directory ``out`` for this run. A new run also needs it to hold no run
    and none of the files ``outputs`` (relative paths) it would write: a directory holding the
    files of something else (a model, an evaluation) is refused, naming them, not overwritten.
    A resumed run rewrites its own files, but none of ``outputs`` may be a directory."""
    lock.acquire(out)
    if not resume and _holds_run(out):
        parser.error(f"{out} already holds a run; pass --resume to continue it, or choose "
                     "another --out")
    if not resume:
        taken = [name for name in outputs if os.path.lexists(out / name)]
        if taken:
            shown = ", ".join(taken[:4]) + (f" and {len(taken) - 4} more" if len(taken) > 4 else "")
            raise CommandError(f"--out {out} holds no run but already holds {shown}, which "
                               "this run would overwrite; choose another --out (or move them)")
    for name in outputs:  # config.json and checkpoint.pt: --resume reads them and names them
        if Path(name).name not in ("model", CONFIG_FILE, "checkpoint.pt") \
                and (out / name).is_dir():
            raise CommandError(f"{out / name} is a directory; the run writes a file there: "
                               "remove it or choose another --out")


def _read_run_config(directory: Path) -> dict[str, Any]:
    """The run's config.json, checked for the entries ``--resume`` reads (CommandError naming
    the file and the entry)."""
    from ..data import NORMALIZATIONS
    from ..serialization import SerializationError, is_sha256_hex, read_json

    path = directory / CONFIG_FILE
    if not os.path.lexists(path):
        raise CommandError(f"no run to resume in {directory} ({CONFIG_FILE} not found)")
    try:
        config = read_json(path, "run config")
    except SerializationError as exc:
        raise CommandError(str(exc)) from None
    if not isinstance(config, dict) or not isinstance(config.get("train"), dict) \
            or not isinstance(config.get("data"), dict):
        raise CommandError(f"{path} is not an infomax-ext run configuration")
    data = config["data"]
    checks: list[tuple[str, Any, Callable[[Any], bool]]] = [
        ("data.source", data.get("source"), lambda v: v is None or isinstance(v, str)),
        ("data.labels", data.get("labels"), lambda v: v is None or isinstance(v, str)),
        ("data.label_column", data.get("label_column"),
         lambda v: v is None or (isinstance(v, (str, int)) and not isinstance(v, bool))),
        ("data.normalize", data.get("normalize", "none"), lambda v: v in NORMALIZATIONS),
        ("data.fingerprint", data.get("fingerprint"), is_sha256_hex),
        ("compare_vae", config.get("compare_vae", False), lambda v: isinstance(v, bool)),
        ("created", config.get("created"), lambda v: v is None or isinstance(v, str)),
    ]
    for name, value, ok in checks:
        if not ok(value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise CommandError(f"{path}: {name} {shown} is not a valid entry (an edited file?)")
    return config


def check_train_options(options: Any, path: Path) -> TrainConfig:
    """The training options ``options`` (config.json's ``train`` entry, read from ``path``) as a
    validated TrainConfig (:meth:`TrainConfig.from_dict`, what ``--resume`` continues with and
    ``evaluate`` measures with); else a one-line CommandError naming ``path`` and the field."""
    from dataclasses import fields

    from ..train_config import TrainConfig

    if not isinstance(options, dict):
        raise CommandError(f"{path}: entry train is not a JSON object of training options (an "
                           "edited file?)")
    try:
        return TrainConfig.from_dict(dict(options))
    except (TypeError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        names = [f.name for f in fields(TrainConfig)]
        if any(text.startswith(name + " ") for name in names):  # the message names the field
            raise CommandError(f"{path}: train.{text}") from None
        for name, value in options.items():  # a TypeError names none: find the field that fails
            if name in names:
                try:
                    TrainConfig.from_dict({name: value})
                except (TypeError, ValueError):
                    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                    raise CommandError(f"{path}: train.{name} {shown} is not a valid value (an "
                                       "edited file?)") from None
        raise CommandError(f"{path}: train: {text}") from None


def _path(text: str | None) -> str | None:
    """A data path as stored in config.json: absolute, so --resume works from any directory
    (``digits``, the built-in data, stays as it is)."""
    return text if text in (None, "digits") else os.path.abspath(text)


def _remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files (``.NAME.XXXX.tmp``) of atomic writes that a killed run left in
    its directory ``out`` and the directories under it that runs write (locked: no run of ours
    is writing there)."""
    for sub in ("", "model", "infomax", "vae", "infomax/model", "vae/model"):
        for tmp in (out / sub).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
