"""Data for training: the scikit-learn digits, users' array files, validation and splits.

Everything here returns an :class:`ArrayDataset`: samples ``x`` of shape ``(N, *sample_shape)``
(float32), optional integer labels ``y`` of shape ``(N,)``, and what the plots need to know
(``image_shape``, class names). Problems with the input raise :class:`DataError` with a message
that names the file and the problem; nothing reaches torch before it has been checked.

File formats (:func:`load_file`):

- ``.npy``: one array, the samples. Labels may come from a second file (``labels=``).
- ``.npz``: samples under ``x``, ``X``, ``data``, ``samples`` or ``images`` (or the only array in
  the file); labels, if any, under ``y``, ``labels``, ``targets`` or ``target``.
- ``.pt`` (read with ``torch.load(weights_only=True)``): a tensor (the samples), a tuple or list
  ``(x,)`` / ``(x, y)``, or a dict with the keys above.
- ``.csv`` / ``.tsv``: a table of numbers, one sample per row, header optional, labels from the
  column ``label_column`` (:mod:`.csv_data`). Table rows are feature vectors, never images. As
  a labels file: one column of labels, numbers or class names, header optional.

Labels may be integers, integral floats or strings; they are mapped to codes ``0..K-1`` in sorted
order, the original values kept as ``classes``. Object (pickled) arrays are refused; float16 and
bfloat16 (and float8) tensors are converted to float32 (exactly) with a :class:`DataWarning`;
sparse, quantized and complex tensors are refused.

Samples may be rescaled on loading (``normalize``, :func:`normalize_samples`): ``"unit"`` maps
them to [0, 1] (what the Bernoulli decoder needs), ``"standardize"`` to mean 0 and variance 1
(data of any scale for the Gaussian decoder). The dataset keeps the shift and scale
(``ArrayDataset.normalization``), so new data can be prepared the same way
(:class:`~infomax_ext.preprocessing.Preprocessing`).

Data larger than memory: ``load_file(path.npy, mmap=True)`` memory-maps the file
(:class:`MappedSamples`): it is checked and its rescaling measured in one streaming pass, and
afterwards only the rows asked for are read (converted and rescaled as they are read).
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence, overload

import numpy as np
import torch

from .data_checks import (LIKELIHOODS, MIN_SAMPLES, NORMALIZATIONS, DataError,
                          DataWarning, _check_finite, _check_float32, _check_layout,
                          _check_likelihood, _check_normalization, _check_range, _checked,
                          _is_wide_float, _largest, _rescaled, _tensor_to_numpy, check_samples,
                          check_values, normalization_parameters, normalize_samples)

__all__ = [
    "DataError",
    "DataWarning",
    "ArrayDataset",
    "MappedSamples",
    "LIKELIHOODS",
    "NORMALIZATIONS",
    "load_digits",
    "load_file",
    "load_dataset",
    "check_samples",
    "check_mapped",
    "check_values",
    "normalize_samples",
    "normalization_parameters",
    "train_val_split",
    "short_error",
]

SAMPLE_KEYS = ("x", "X", "data", "samples", "images")
LABEL_KEYS = ("y", "labels", "targets", "target")
SUFFIXES = (".npy", ".npz", ".pt", ".csv", ".tsv")
@dataclass
class ArrayDataset:
    """Samples ``x`` (N, *sample_shape) float32 (a tensor, or :class:`MappedSamples` read on
    demand) with optional labels ``y`` (N,) int64.

    ``classes[k]`` is the original label of code ``k``; ``image_shape`` ``(H, W)`` says how to draw
    one sample as an image (``None``: draw it as a strip); ``source`` names where it came from;
    ``normalization`` ``(kind, shift, scale)`` is how ``x`` was rescaled from the file's values
    (``x = (raw - shift) / scale``; ``("none", 0.0, 1.0)``: not rescaled)."""

    x: "torch.Tensor | MappedSamples"
    y: torch.Tensor | None = None
    source: str = "arrays"
    image_shape: tuple[int, int] | None = None
    classes: list[str] | None = None
    indices: torch.Tensor | None = field(default=None, repr=False)
    normalization: tuple[str, float, float] = ("none", 0.0, 1.0)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, ``x.shape[1:]``."""
        return tuple(self.x.shape[1:])

    def subset(self, index: torch.Tensor) -> "ArrayDataset":
        """The samples (and labels) at ``index`` (K,) int64, in that order (mapped samples stay
        mapped)."""
        x = self.x.subset(index) if isinstance(self.x, MappedSamples) else self.x[index]
        return ArrayDataset(x, None if self.y is None else self.y[index], self.source,
                            self.image_shape, self.classes, index, self.normalization)

    def fingerprint(self) -> str:
        """SHA-256 of the samples and labels (shape, dtype and bytes): identifies the data of a run."""
        h = hashlib.sha256()
        for t in (self.x, self.y):
            if t is None:
                h.update(b"none")
                continue
            if isinstance(t, MappedSamples):  # the bytes of the float32 samples, read in chunks
                chunks, header = t.chunks(), (np.dtype(np.float32).str, tuple(t.shape))
            else:
                a = t.detach().cpu().contiguous().numpy()
                chunks, header = iter([a]), (a.dtype.str, a.shape)
            h.update(f"{header[0]}{header[1]}".encode())
            for chunk in chunks:
                h.update(chunk.tobytes())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON summary: source, number of samples, sample shape, classes, fingerprint."""
        return {
            "source": self.source,
            "n_samples": len(self),
            "sample_shape": list(self.sample_shape),
            "n_classes": None if self.classes is None else len(self.classes),
            "fingerprint": self.fingerprint(),
        }


class MappedSamples:
    """The samples of a ``.npy`` file, memory-mapped: ``(N, *sample_shape)`` float32 values
    read on demand, each read converted from the file's dtype and rescaled by ``shift`` and
    ``scale`` (``scale`` None: not rescaled), exactly as :func:`check_samples` converts and
    rescales samples in memory.

    Indexing (an int, a slice, an index tensor or array) reads only those rows and returns a
    tensor; ``rows`` (K,) makes this the view of those rows of the file, in that order
    (:meth:`subset`). ``.to(device)`` reads every row. Pickles as its path and parameters, so a
    copy sent to another process maps the file again instead of carrying its data."""

    dtype = torch.float32

    def __init__(self, path: str | os.PathLike[str], shift: float = 0.0, scale: float | None = None,
                 rows: np.ndarray | None = None) -> None:
        self.path = Path(path)
        self.array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self.shift, self.scale, self.rows = shift, scale, rows

    def __reduce__(self) -> tuple[Any, ...]:
        return MappedSamples, (str(self.path), self.shift, self.scale, self.rows)

    def __len__(self) -> int:
        return int(self.array.shape[0] if self.rows is None else len(self.rows))

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.array.shape[1:]))

    def dim(self) -> int:
        ndim: int = self.array.ndim
        return ndim

    def _read(self, index: Any) -> np.ndarray:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        if self.rows is not None:
            index = self.rows[index]
        x = np.array(self.array[index], dtype=np.float32)
        return x if self.scale is None else _rescaled(x, self.shift, self.scale)

    def __getitem__(self, index: Any) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self._read(index)))

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Every row, read into memory as a tensor, then ``Tensor.to(*args, **kwargs)``."""
        return self[:].to(*args, **kwargs)

    def subset(self, index: Any) -> "MappedSamples":
        """The rows ``index`` (K,) of these samples, in that order, still mapped."""
        index = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        rows = index if self.rows is None else self.rows[index]
        return MappedSamples(self.path, self.shift, self.scale, rows)

    def chunks(self, nbytes: int = 2**24) -> Iterator[np.ndarray]:
        """The rows in order, as float32 arrays of about ``nbytes`` each."""
        step = max(1, nbytes // max(1, 4 * math.prod(self.array.shape[1:])))
        for start in range(0, len(self), step):
            yield self._read(slice(start, start + step))


# ----------------------------------------------------------------------------- built-in data

def load_digits() -> ArrayDataset:
    """scikit-learn's handwritten digits: 1,797 real 8x8 images shipped with scikit-learn (no
    download). ``x`` (1797, 64) float32, pixel intensities 0..16 scaled to [0, 1] for the
    Bernoulli decoder; ``y`` (1797,) the digit 0-9."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:  # pragma: no cover - scikit-learn is a training dependency
        raise DataError(
            "the digits data set needs scikit-learn: pip install 'infomax_ext[train]'"
        ) from None
    digits = sk_load_digits()
    x = torch.as_tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    return ArrayDataset(x, y, "digits", (8, 8), [str(k) for k in range(10)])


# ----------------------------------------------------------------------------- files

def short_error(exc: BaseException, limit: int = 160) -> str:
    """``"Type: first line of the message"``, cut to ``limit`` characters; torch's refusal to
    unpickle arbitrary objects is said in one sentence."""
    text = str(exc).strip()
    if "Weights only load failed" in text:
        return ("torch.load(weights_only=True) refused it: it holds Python objects other than "
                "tensors and tuples, lists or dicts of them, or it is damaged")
    first = text.splitlines()[0] if text else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _as_numpy(value: object, what: str, path: Path) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return _tensor_to_numpy(value, f"{path}: {what}")
    if isinstance(value, np.ndarray):
        return value
    raise DataError(f"{path}: {what} must be an array or tensor, found {type(value).__name__}")


def _pick(mapping: dict[Any, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in mapping:
            return key
    return None


def _from_mapping(mapping: dict[Any, Any], path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    names = [str(k) for k in mapping]
    x_key, y_key = _pick(mapping, SAMPLE_KEYS), _pick(mapping, LABEL_KEYS)
    if x_key is None:
        rest = [k for k in mapping if k != y_key]
        if len(rest) != 1:
            raise DataError(
                f"{path}: cannot tell which entry holds the samples (found {names}); name it one "
                f"of {list(SAMPLE_KEYS)} (labels: one of {list(LABEL_KEYS)})"
            )
        x_key = rest[0]
    x = _as_numpy(mapping[x_key], f"entry {x_key!r}", path)
    y = None if y_key is None else _as_numpy(mapping[y_key], f"entry {y_key!r}", path)
    return x, y


def file_problem(path: str | os.PathLike[str], what: str = "file") -> str | None:
    """None when ``path`` is a regular file (symlinks followed); else what it is, as a message
    naming ``what``: missing, a dangling symlink, a symlink loop, a directory, a pipe or device,
    or unreadable (the reason the system gives). Nothing is opened."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"{what} {path} is a symlink to {os.readlink(path)}, which does not exist"
        return f"{what} not found: {path}"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{what} {path} is a symlink loop (it never reaches a file)"
        return f"{what} {path} cannot be read: {exc.strerror}"
    if stat.S_ISDIR(mode):
        return f"{what} {path} is a directory, not a file"
    if not stat.S_ISREG(mode):
        return f"{what} {path} is not a regular file (a pipe, socket or device)"
    return None


@overload
def _read_file(path: Path, mmap: Literal[False] = False, label_column: str | int | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]: ...
@overload
def _read_file(path: Path, mmap: bool, label_column: str | int | None = None
               ) -> tuple[np.ndarray | MappedSamples, np.ndarray | None]: ...
def _read_file(path: Path, mmap: bool = False, label_column: str | int | None = None
               ) -> tuple[np.ndarray | MappedSamples, np.ndarray | None]:
    """``(samples, labels or None)`` as numpy arrays, from a .npy, .npz, .pt, .csv or .tsv file
    (``label_column``: the labels' column of a table); with ``mmap`` a .npy file's samples as
    :class:`MappedSamples`."""
    problem = file_problem(path, "data file")  # a directory, a symlink loop, a pipe, ...
    if problem is not None:
        raise DataError(problem)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}; use .npy, .npz, .pt, "
            ".csv or .tsv"
        )
    if label_column is not None and suffix not in (".csv", ".tsv"):
        raise DataError(f"{path}: a label column selects a column of a .csv or .tsv file; "
                        f"a {suffix} file keeps its labels under a key (or use a labels file)")
    if suffix in (".csv", ".tsv"):
        from .csv_data import TableError, read_delimited

        try:
            return read_delimited(path, label_column)[:2]
        except TableError as exc:
            raise DataError(str(exc)) from None
    try:
        if suffix == ".npy":
            return (MappedSamples(path) if mmap else np.load(path, allow_pickle=False)), None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return _from_mapping({k: archive[k] for k in archive.files}, path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "Python objects" in str(exc):  # np.load, mmap too
            raise DataError(
                f"{path} is not a valid {suffix} file of numeric arrays: it is corrupt, or it "
                "holds pickled Python objects (refused; save plain arrays with np.save, "
                "np.savez or torch.save of tensors)"
            ) from None
        raise DataError(
            f"{path} is corrupt or not a valid {suffix} file ({short_error(exc)})") from None
    except Exception as exc:  # zipfile.BadZipFile, EOFError, OSError, UnpicklingError, ...
        raise DataError(
            f"{path} is corrupt or not a valid {suffix} file ({short_error(exc)})") from None
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return _as_numpy(obj, "the file", path), None
    if isinstance(obj, (tuple, list)):
        if len(obj) not in (1, 2):
            raise DataError(f"{path}: a tuple/list must be (x,) or (x, y), found {len(obj)} items")
        x = _as_numpy(obj[0], "item 0 (samples)", path)
        y = _as_numpy(obj[1], "item 1 (labels)", path) if len(obj) == 2 else None
        return x, y
    if isinstance(obj, dict):
        return _from_mapping(obj, path)
    raise DataError(
        f"{path}: expected a tensor, a tuple (x, y) or a dict of tensors, found {type(obj).__name__}"
    )


def _image_shape(sample_shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(sample_shape) == 2:
        return sample_shape
    if len(sample_shape) == 3 and sample_shape[0] == 1:
        return sample_shape[1:]
    if len(sample_shape) == 1:
        side = math.isqrt(sample_shape[0])
        if side > 1 and side * side == sample_shape[0]:
            return side, side
    return None


def _encode_labels(y: np.ndarray, n: int, path: object) -> tuple[torch.Tensor, list[str]]:
    if y.dtype == object or y.dtype.kind not in "biufUS":
        raise DataError(f"{path}: labels must be numbers or strings, found dtype {y.dtype}")
    y = np.squeeze(y) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1:
        raise DataError(f"{path}: labels must be one per sample, shape (N,), found {y.shape}")
    if y.shape[0] != n:
        raise DataError(f"{path}: {y.shape[0]} labels for {n} samples; give exactly one per sample")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{path}: float labels must be whole numbers (class ids)")
        y = y.astype(np.int64)
    classes, codes = np.unique(y, return_inverse=True)
    return torch.as_tensor(codes.reshape(-1), dtype=torch.int64), [str(c) for c in classes]


def check_mapped(samples: MappedSamples, likelihood: str = "bernoulli", source: str = "data",
                 normalize: str = "none") -> MappedSamples:
    """:func:`check_samples` for memory-mapped samples, streaming: the same checks and errors,
    the rescaling measured over every value (one pass over the file; ``standardize`` a second)
    and set on ``samples`` (returned), which then rescale each row as they read it."""
    _check_likelihood(likelihood)
    _check_normalization(normalize)
    _check_layout(samples.array, source)
    samples.scale, bad, lo, hi, total = None, 0, math.inf, -math.inf, 0.0
    with np.errstate(over="ignore"):  # an overflow is reported below, by name
        for chunk in samples.chunks():
            bad += int((~np.isfinite(chunk)).sum())
            if not bad:
                lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
                total += float(chunk.sum(dtype=np.float64))
    if bad and _is_wide_float(samples.array.dtype):  # NaN in the file, or float32 overflow?
        row_bytes = samples.array.dtype.itemsize * max(1, math.prod(samples.array.shape[1:]))
        raw_bad, largest, step = 0, 0.0, max(1, 2**24 // row_bytes)
        for start in range(0, len(samples.array), step):
            rows = np.asarray(samples.array[start:start + step])
            finite = np.isfinite(rows)
            raw_bad += int((~finite).sum())
            largest = max(largest, _largest(rows[finite]) if finite.any() else 0.0)
        _check_finite(raw_bad, source)
        _check_float32(bad, largest, samples.array.dtype, source)
    _check_finite(bad, source)
    if normalize != "none":
        count = math.prod(samples.shape)
        if normalize == "unit":
            shift, scale = lo, hi - lo
        else:
            shift = total / count
            squares = sum(float(((c.astype(np.float64) - shift) ** 2).sum())
                          for c in samples.chunks())
            scale = math.sqrt(squares / count)
        lo, hi = _rescaled(np.array([lo, hi], dtype=np.float32), shift, scale).tolist()
        samples.shift, samples.scale = shift, scale
    _check_range(lo, hi, likelihood, source)
    return samples


def _read_labels(path: Path, n: int) -> np.ndarray:
    """The labels in the labels file ``path`` for ``n`` samples: a table's one column
    (:func:`~.csv_data.read_label_table`: numbers or class names), or the single array of a
    .npy, .npz or .pt file."""
    problem = file_problem(path, "labels file")
    if problem is not None:
        raise DataError(problem)
    if path.suffix.lower() in (".csv", ".tsv"):
        from .csv_data import TableError, read_label_table

        try:
            return read_label_table(path, n)
        except TableError as exc:
            raise DataError(str(exc)) from None
    y, extra = _read_file(path)
    if extra is not None:
        raise DataError(f"{path}: a labels file must hold a single array")
    return y


def load_file(path: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None,
              likelihood: str = "bernoulli", normalize: str = "none", *, mmap: bool = False,
              label_column: str | int | None = None,
              min_samples: int = MIN_SAMPLES, keep_labels: bool = True) -> ArrayDataset:
    """An :class:`ArrayDataset` from a ``.npy``, ``.npz``, ``.pt``, ``.csv`` or ``.tsv`` file (see
    the module docstring), labels optionally from a second file ``labels`` (same formats, one
    array) or, for a table, from its column ``label_column`` (a header name or a 0-based index),
    samples checked and rescaled by :func:`check_samples`. ``mmap=True``: a ``.npy`` file's
    samples stay in the file, memory-mapped (:class:`MappedSamples`, :func:`check_mapped`); other
    formats are read into memory. ``min_samples``: the fewest samples accepted (training needs
    ``MIN_SAMPLES``; encoding one sample needs 1). ``keep_labels=False``: labels the file holds
    are dropped unread (no labels file may be given): a use that needs none of them is not
    refused for them."""
    path = Path(path)
    x, y = _read_file(path, mmap, label_column)
    samples: MappedSamples | torch.Tensor
    if isinstance(x, MappedSamples):
        samples = check_mapped(x, likelihood, str(path), normalize)
        shift, scale = (0.0, 1.0) if samples.scale is None else (samples.shift, samples.scale)
    else:
        samples, shift, scale = _checked(x, likelihood, str(path), normalize, min_samples)
    if not keep_labels:
        if labels is not None:
            raise DataError(f"{labels}: labels are not used here; do not pass a labels file")
        y = None
    if labels is not None:
        if y is not None:
            raise DataError(f"{path} already holds labels; do not also pass a labels file")
        labels = Path(labels)
        y = _read_labels(labels, samples.shape[0])
    codes, classes = (None, None) if y is None else _encode_labels(
        y, samples.shape[0], labels if labels is not None else path)
    table = path.suffix.lower() in (".csv", ".tsv")
    image_shape = None if table else _image_shape(tuple(samples.shape[1:]))
    return ArrayDataset(samples, codes, str(path), image_shape, classes,
                        normalization=(normalize, float(shift), float(scale)))


def load_dataset(source: str | None = None, labels: str | os.PathLike[str] | None = None,
                 likelihood: str = "bernoulli",
                 normalize: str = "none", *, mmap: bool = False,
                 label_column: str | int | None = None,
                 min_samples: int = MIN_SAMPLES, keep_labels: bool = True) -> ArrayDataset:
    """``source`` None or ``"digits"``: :func:`load_digits`; otherwise :func:`load_file` (with
    ``mmap``, ``label_column``, ``min_samples`` and ``keep_labels``); the samples checked and
    rescaled by :func:`check_samples`."""
    if source is None or source == "digits":
        if labels is not None or label_column is not None:
            raise DataError("labels go with a data file; the digits carry their labels")
        data = load_digits()
        data.x, shift, scale = _checked(data.x, likelihood, "digits",  # type: ignore[arg-type]
                                        normalize)  # the digits are in memory
        data.normalization = (normalize, shift, scale)
        if not keep_labels:
            data.y, data.classes = None, None
        return data
    return load_file(source, labels, likelihood, normalize, mmap=mmap, label_column=label_column,
                     min_samples=min_samples, keep_labels=keep_labels)


# ----------------------------------------------------------------------------- splits

def train_val_split(dataset: ArrayDataset, val_fraction: float,
                    seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """A seeded random split into a training and a held-out part.

    The held-out part has ``round(val_fraction * N)`` samples (``0 < val_fraction < 1``); both
    parts must keep at least 2 samples (the MI bound shuffles across a batch). The same seed and
    data always give the same split."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"the held-out fraction must lie strictly between 0 and 1, got {val_fraction}")
    n = len(dataset)
    n_val = int(round(val_fraction * n))
    if n_val < 2 or n - n_val < 2:
        raise DataError(
            f"a held-out fraction of {val_fraction} leaves {n - n_val} training and {n_val} held-out "
            f"samples out of {n}; each part needs at least 2"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return dataset.subset(perm[n_val:].sort().values), dataset.subset(perm[:n_val].sort().values)
