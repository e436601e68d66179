"""What the commands for a trained model share: finding and loading the model of a run or model
directory, reading new data in the training data's units and preparing it, the common options,
and writing ``.npy`` files."""
from __future__ import annotations

import argparse
import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .common import PROG, CommandError, _say
from .options import _device, _positive_int
from .run_dir import CONFIG_FILE, _holds_run

if TYPE_CHECKING:
    import torch

    from ..data import ArrayDataset
    from ..infomax import InfoMaxVAE

# A Bernoulli decoder's log-likelihood needs inputs in [0, 1]; prepared data may stray this far
# outside by rounding (the training data's own extremes map to 0 and 1 up to float32 rounding).
_UNIT_SLACK = 1e-6


@dataclass
class TrainedModel:
    """A loaded model, where it came from and its run's training options (config.json's
    ``train`` entry as read, unchecked: ``evaluate`` checks it, :func:`~.run_dir.
    check_train_options`; ``None`` for a bare model directory)."""

    model: "InfoMaxVAE"
    model_dir: Path
    run_dir: Path | None
    train_options: Any


# ----------------------------------------------------------------------------- options

def _npy_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() != ".npy":
        raise argparse.ArgumentTypeError(f"expected a .npy file name, got {text!r}")
    return path


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="RUN_OR_MODEL_DIR",
                        help="a run directory of infomax-ext train (with model/ inside; of a "
                             "--compare-vae run: DIR/infomax or DIR/vae) or a model directory "
                             "(InfoMaxVAE.save)")


def add_data_arguments(parser: argparse.ArgumentParser, *, labels: bool) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", metavar="FILE", required=True,
                       help=".npy, .npz, .pt, .csv or .tsv file of samples (N, ...) in the units "
                            "of the training data (the model's normalisation is applied), or "
                            "digits (scikit-learn's, as train uses them)")
    if labels:
        group.add_argument("--labels", metavar="FILE", default=None,
                           help="labels (N,) for --data when the file holds none")
    group.add_argument("--label-column", metavar="NAME_OR_INDEX", default=None,
                       help="the labels' column of a .csv/.tsv file (a header name or a 0-based "
                            "index; -1: the last), not a feature" +
                            ("" if labels else "; its values are ignored"))


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--device", type=_device, default="cpu", metavar="DEV",
                       help="cpu, cuda, cuda:N or auto (default cpu)")
    group.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                       help="CPU threads for torch (default 1)")


# ----------------------------------------------------------------------------- the model

def _model_dir_of(path: Path) -> tuple[Path, Path | None]:
    """``(model directory, run directory or None)`` of a run or model directory ``path``."""
    from ..serialization import MODEL_CONFIG_FILE

    if not path.exists():
        raise CommandError(f"{path} not found")
    if not path.is_dir():
        raise CommandError(f"{path} is a file; give a run directory or a model directory")
    if (path / "model" / MODEL_CONFIG_FILE).is_file():
        return path / "model", path
    if (path / MODEL_CONFIG_FILE).is_file():
        run = path.parent if (path.parent / CONFIG_FILE).is_file() else None
        return path, run
    if (path / "infomax").is_dir() and (path / "vae").is_dir():
        raise CommandError(f"{path} is a --compare-vae run holding two models; name one: "
                           f"{path / 'infomax'} or {path / 'vae'}")
    if _holds_run(path):
        raise CommandError(f"{path} holds a run without a trained model (model/ is written when "
                           f"training ends); finish it with {PROG} train --resume --out {path}")
    raise CommandError(f"{path} is neither a run directory (with model/{MODEL_CONFIG_FILE}) nor a "
                       f"model directory (with {MODEL_CONFIG_FILE})")


def load_trained(text: str, device: torch.device | str) -> TrainedModel:
    """The model of the run or model directory ``text`` on ``device``, in eval mode."""
    from ..infomax import InfoMaxVAE
    from ..serialization import read_json

    model_dir, run_dir = _model_dir_of(Path(text))
    model = InfoMaxVAE.load(model_dir, map_location=device).eval()
    options = None
    if run_dir is not None:
        saved = read_json(run_dir / CONFIG_FILE, "run configuration")
        options = saved.get("train") if isinstance(saved, dict) else saved
    return TrainedModel(model, model_dir, run_dir, options)


def resolved_device(text: str) -> torch.device:
    from ..trainer import _resolve_device

    return _resolve_device(text)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_bernoulli(model: InfoMaxVAE) -> bool:
    from ..vae import BernoulliDecoder

    return isinstance(model.vae.decoder, BernoulliDecoder)


# ----------------------------------------------------------------------------- the data

def read_prepared(args: argparse.Namespace, trained: TrainedModel, *, labels: bool) -> ArrayDataset:
    """The ``--data`` file (labels from ``--labels`` / ``--label-column`` when ``labels``) as an
    :class:`~infomax_ext.data.ArrayDataset` whose ``x`` is the model's input: the raw values
    checked, then prepared by the model's preprocessing; the shape checked against the model."""
    import torch

    from ..csv_data import parse_label_column
    from ..data import DataError, DataWarning, load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        data = load_dataset(args.data, getattr(args, "labels", None) if labels else None,
                            "gaussian", "none", label_column=parse_label_column(args.label_column),
                            min_samples=2 if labels else 1, keep_labels=labels)
    for w in caught:  # a large raw range is what preprocessing is for: not worth a notice
        if issubclass(w.category, DataWarning) and "inputs this large" not in str(w.message):
            _say(f"{PROG}: notice: {w.message}")
    prep = trained.model.preprocessing
    data.x = prep.apply(data.x, data.source)  # type: ignore[arg-type]  # read into memory
    data.normalization = (prep.kind, prep.shift, prep.scale)
    if prep.image_shape is not None and data.image_shape is None:
        data.image_shape = prep.image_shape
    check_model_input(data, trained)
    return data


def check_model_input(data: ArrayDataset, trained: TrainedModel) -> None:
    """A DataError unless the model takes ``data``'s samples: of the shape its encoder was
    built for (``size_input`` of its config, when it records one) and, on a probe of one
    sample, giving one code ``(1, d)``. (A model saved from Python records no sample shape in
    its preprocessing: only these checks stand between it and wrongly shaped data, which its
    layers would otherwise map row by row into codes of a wrong shape.)"""
    import torch

    from ..data import DataError
    from ..serialization import MODEL_CONFIG_FILE

    encoder = trained.model.vae.encoder
    config = getattr(encoder, "config", None) or {}
    size, d = config.get("size_input"), config.get("n_latent")
    shape = tuple(data.sample_shape)
    expected = (size,) if isinstance(size, int) else tuple(size) if isinstance(size, list) \
        and all(isinstance(s, int) for s in size) else None
    if expected is not None and shape != expected:
        raise DataError(f"{data.source}: samples of shape {shape} do not fit the model's input: "
                        f"its encoder takes samples of shape {expected} (size_input in "
                        f"{trained.model_dir / MODEL_CONFIG_FILE})")
    device = next(trained.model.parameters()).device
    try:
        with torch.no_grad():
            mu = encoder(data.x[:1].to(device))[0]
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{data.source}: samples of shape {shape} do not fit the model's input "
                        f"({first})") from None
    width = d if isinstance(d, int) else mu.shape[-1]
    if tuple(mu.shape) != (1, width):
        raise DataError(f"{data.source}: samples of shape {shape} do not fit the model's input: "
                        f"its encoder maps one of them to codes of shape {tuple(mu.shape)}, not "
                        f"(1, {width})")


def check_unit_range(data: ArrayDataset, trained: TrainedModel) -> None:
    """A DataError unless a Bernoulli decoder's prepared data lies in [0, 1]."""
    from ..data import DataError

    if not is_bernoulli(trained.model):
        return
    lo, hi = float(data.x.min()), float(data.x.max())  # type: ignore[union-attr]  # prepared
    if lo < -_UNIT_SLACK or hi > 1 + _UNIT_SLACK:
        prep = trained.model.preprocessing
        how = "as given" if prep.is_identity else f"after the model's normalisation ({prep.kind})"
        raise DataError(f"{data.source}: {how} the values range over [{lo:g}, {hi:g}], but the "
                        "model's Bernoulli decoder needs them in [0, 1]; is the data in the units "
                        "of the training data?")


# ----------------------------------------------------------------------------- outputs

def check_outputs(args: argparse.Namespace, outputs: Sequence[tuple[str, Path]]) -> None:
    """A CommandError, before any work, unless every output ``(what, path)`` (``what`` names it
    in the message: ``"--out"``, ``"the PNG"``) can be written without harm: not a directory,
    not under a file, and not one of the command's input files (``--data``, ``--labels``: an
    output there would replace the input it is computed from)."""
    from ..serialization import same_file

    inputs = [(flag, Path(text)) for flag, text in (("--data", getattr(args, "data", None)),
                                                    ("--labels", getattr(args, "labels", None)))
              if text is not None and os.path.lexists(text)]
    for what, path in outputs:
        for flag, source in inputs:
            if same_file(path, source):
                raise CommandError(f"{what} {path} is the {flag} file: writing it would replace "
                                   "the input; choose another file name")
        if path.is_dir():
            raise CommandError(f"{what} {path} is a directory; it must be a file name" + (
                " (remove it or pass --no-plots)" if path.suffix == ".png" else ""))
        for parent in path.parents:  # the nearest existing ancestor must be a directory
            if os.path.lexists(parent):
                if not parent.is_dir():
                    raise CommandError(f"{what} {path} cannot be written: {parent} is a file, "
                                       "not a directory")
                break


def write_npy(path: Path, array: Any) -> None:
    """``array`` (a numpy array) saved to the ``.npy`` file ``path``, atomically and streamed
    (no second copy of it in memory); the path checked before (:func:`check_outputs`)."""
    import numpy as np

    from ..serialization import atomic_write_with

    try:
        atomic_write_with(path, lambda f: np.save(f, array, allow_pickle=False))
    except OSError as exc:
        raise CommandError(f"cannot write --out {path}: {exc.strerror or exc}") from None


def check_matplotlib() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise CommandError("the PNG needs matplotlib: pip install 'infomax_ext[train]' (or pass "
                           "--no-plots)")


def batched(fn: Callable[[Any], torch.Tensor], x: Any, chunk: int = 2048) -> torch.Tensor:
    """``torch.cat([fn(x[i:i + chunk]) ...])`` under no_grad, on the CPU, for ``x`` (N, ...)
    (anything sliceable along its first dimension of ``N`` rows: a tensor, a ``range``): each
    result written into one output allocated at the first chunk, so the whole result is held
    once."""
    import torch

    n = len(x)
    with torch.no_grad():
        first = fn(x[:chunk]).cpu()
        out = torch.empty((n, *first.shape[1:]), dtype=first.dtype)
        out[:len(first)] = first
        for i in range(chunk, n, chunk):
            out[i:i + chunk] = fn(x[i:i + chunk])
    return out
