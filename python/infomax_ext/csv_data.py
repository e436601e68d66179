"""Samples from CSV and TSV files: a table of numbers, one sample per row.

:func:`read_delimited` reads ``.csv`` (comma-separated) and ``.tsv`` (tab-separated) files with
the standard library's :mod:`csv` reader (quoted fields allowed, a UTF-8 byte-order mark
ignored, blank lines skipped):

- **header**: optional. ``header=None`` detects it: the first row is a header when one of its
  sample fields (every column but the label column) is not a number, so a header needs at least
  one name that is not a number. ``True`` / ``False`` say it.
- **labels**: ``label_column`` picks one column as the labels: a name from the header, or a
  0-based index (negative counts from the end; ``"-1"`` is the last column). Labels may be
  numbers (whole numbers: class ids) or text; the other columns are the samples' features.
- **errors** (:class:`TableError`; :func:`~infomax_ext.data.load_file` raises a
  :class:`~infomax_ext.data.DataError`) name the row and column: rows are counted
  as the lines of a spreadsheet, from 1 with the header included (blank lines too); columns from
  1, with their header name when there is one. A field that is empty, not a number, NaN or
  infinite is refused, and so is a row with a different number of fields than the first.

The samples come back as float64 ``(N, F)``; :func:`~infomax_ext.data.load_file` checks and
converts them like the samples of any other file.

A labels file (``--labels labels.csv``) is read by :func:`read_label_table`: one column, one
label per row, numbers or text (class names), header optional.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np

__all__ = ["DELIMITED_SUFFIXES", "TableError", "read_delimited", "read_label_table",
           "parse_label_column"]

DELIMITED_SUFFIXES = {".csv": ",", ".tsv": "\t"}


class TableError(ValueError):
    """The table cannot be read (the message names the file, row and column);
    :func:`~infomax_ext.data.load_file` raises it as a :class:`~infomax_ext.data.DataError`."""


def parse_label_column(text: str | int | None) -> str | int | None:
    """A ``--label-column`` value: an int when ``text`` is one (an index; a header name that is
    a number is matched first, see :func:`read_delimited`), the name otherwise."""
    if text is None or isinstance(text, int):
        return text
    text = str(text)
    try:
        return int(text)
    except ValueError:
        return text


def _number(field: str) -> float:
    """``float(field)`` for a decimal number as a table writes one; a ValueError for anything
    else, ``"1_0"`` included (Python's float reads it as 10: a typo would become a value)."""
    if "_" in field:
        raise ValueError(f"not a number: {field!r}")
    return float(field)


def _is_number(field: str) -> bool:
    try:
        _number(field)
    except ValueError:
        return False
    return True


def _column_name(index: int, names: list[str] | None) -> str:
    return f"column {index + 1}" + (f" ({names[index]!r})" if names else "")


def _label_index(label_column: str | int, names: list[str] | None, width: int,
                 path: Path) -> int:
    """The 0-based index of ``label_column`` among ``width`` columns named ``names``."""
    if names is not None and str(label_column) in names:
        if names.count(str(label_column)) > 1:
            raise TableError(f"{path}: the header names {str(label_column)!r} more than once; give "
                            "the label column by index")
        return names.index(str(label_column))
    if isinstance(label_column, int):
        if not -width <= label_column < width:
            raise TableError(f"{path}: label column {label_column} is out of range for {width} "
                            f"columns (0 to {width - 1}, or -{width} to -1 from the end)")
        return label_column % width
    if names is None:
        raise TableError(f"{path}: label column {label_column!r} is a name but the file has no "
                        "header (its first row is all numbers); give the column's index")
    raise TableError(f"{path}: no column named {label_column!r}; the header holds {names}")


def _rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of the non-blank rows of ``path``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            for fields in reader:
                if fields and any(field.strip() for field in fields):
                    yield reader.line_num, fields
    except UnicodeDecodeError as exc:
        raise TableError(f"{path} is not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise TableError(f"{path}: not a valid {path.suffix} file ({exc})") from None


def _bad_field(path: Path, line: int, col: int, names: list[str] | None, field: str,
               what: str) -> TableError:
    return TableError(f"{path}: row {line}, {_column_name(col, names)}: {field.strip()!r} is "
                     f"{what}" if field.strip() else
                     f"{path}: row {line}, {_column_name(col, names)}: empty field; every "
                     "sample needs a number in every column")


def read_delimited(path: str | os.PathLike[str], label_column: str | int | None = None,
                   header: bool | None = None) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """``(samples (N, F) float64, labels (N,) or None, column names or None)`` of the CSV/TSV
    file ``path`` (delimiter from its suffix; module docstring for the rules). Labels are float64
    when every label is a number, strings otherwise; the names are the samples' columns'."""
    path = Path(path)
    delimiter = DELIMITED_SUFFIXES[path.suffix.lower()]
    rows = _rows(path, delimiter)
    first = next(rows, None)
    if first is None:
        raise TableError(f"{path} holds no rows")
    line, fields = first
    width = len(fields)
    names = None
    label = None
    if header is None:
        # A header: a non-number in a sample column (the label column by index may hold text).
        index = label_column if isinstance(label_column, int) and -width <= label_column < width \
            else None
        sample_cols = [c for c in range(width) if index is None or c != index % width]
        header = any(not _is_number(fields[c]) for c in sample_cols)
    if header:
        names = [field.strip() for field in fields]
        first = next(rows, None)
        if first is None:
            raise TableError(f"{path} holds a header and no rows of data")
        line, fields = first
    if label_column is not None:
        label = _label_index(label_column, names, width, path)
    feature_cols = [c for c in range(width) if c != label]
    if not feature_cols:
        raise TableError(f"{path}: the label column is the only column; no features left")
    samples, labels = [], []
    for line, fields in _chain(first, rows):
        if len(fields) != width:
            raise TableError(f"{path}: row {line} has {len(fields)} fields, the first row has "
                            f"{width}")
        values = []
        for c in feature_cols:
            try:
                value = _number(fields[c])
            except ValueError:
                raise _bad_field(path, line, c, names, fields[c], "not a number") from None
            if not math.isfinite(value):
                raise _bad_field(path, line, c, names, fields[c], "not a finite number")
            values.append(value)
        samples.append(values)
        if label is not None:
            if not fields[label].strip():
                raise TableError(f"{path}: row {line}, {_column_name(label, names)}: empty label")
            labels.append(fields[label].strip())
    x = np.asarray(samples, dtype=np.float64)
    y = None
    if label is not None:
        y = np.asarray(labels)
        if all(_is_number(v) for v in labels):
            y = y.astype(np.float64)
    column_names = None if names is None else [names[c] for c in feature_cols]
    return x, y, column_names


def read_label_table(path: str | os.PathLike[str], n: int | None = None) -> np.ndarray:
    """The labels (N,) of the CSV/TSV file ``path`` of one column: float64 when every label is
    a number, strings otherwise (blank rows are skipped). A header is optional: the first row is
    one when it is text and every other row a number, or, when labels are text, when the file
    holds ``n + 1`` rows for ``n`` samples (it cannot be told from a class name otherwise)."""
    path = Path(path)
    rows = list(_rows(path, DELIMITED_SUFFIXES[path.suffix.lower()]))
    if not rows:
        raise TableError(f"{path} holds no rows")
    labels = []
    for line, fields in rows:
        if len(fields) != 1:
            raise TableError(f"{path}: row {line} has {len(fields)} fields; a labels file holds "
                             "one column, one label per row (for a table with a label column, "
                             "give it as --data with --label-column)")
        labels.append(fields[0].strip())
    numbers = [_is_number(v) for v in labels]
    header = (not numbers[0] and len(labels) > 1 and all(numbers[1:])) or (
        n is not None and len(labels) == n + 1 and not all(numbers))
    if header:
        labels = labels[1:]
    y = np.asarray(labels)
    return y.astype(np.float64) if all(_is_number(v) for v in labels) else y


_T = TypeVar("_T")


def _chain(first: _T, rest: Iterable[_T]) -> Iterator[_T]:
    yield first
    yield from rest

