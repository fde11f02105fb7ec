"""Real rows with a target: the merged input's columns (read by rows.py) plus the column of true values."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import bad_input
from .mapping import InputSpec
from .rows import MISSING, read_rows


@dataclass(frozen=True)
class Rows:
    """Rows in the merged input's column order; `target` as read (numbers, or strings for string labels)."""

    path: Path
    features: np.ndarray  # [N, F] float64, NaN where a cell is missing
    target: np.ndarray | None  # [N] float64 or object (str); None when there is no target
    target_name: str | None


def read_data(path: Path, spec: InputSpec, target: str | None) -> Rows:
    """The rows of `path` and its `target` column (CSV) or array (.npz); without a name, the one CSV
    column that is not an input, or an .npz's `y`; no such column: no target (verification only)."""
    features = read_rows(path, spec.columns, "float64")
    name = target if target is not None else guess_target(path, spec)
    if name is None:
        return Rows(path, features, None, None)
    values = _read_npz_target(path, name) if path.suffix.lower() == ".npz" else _read_csv_target(path, name, spec)
    if len(values) != len(features):
        raise bad_input(path, f"{len(values)} target values for {len(features)} rows")
    return Rows(path, features, values, name)


def guess_target(path: Path, spec: InputSpec) -> str | None:
    """The CSV header's one column that is not an input, or an .npz's `y` (None when there is none)."""
    if not path.is_file():  # read_rows says what is wrong; a device such as /dev/zero is never read
        return None
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return "y" if "y" in archive.files else None
        header = _header(path)
    except Exception:  # read_rows reports what is wrong with the file, in its own words
        return None
    extra = [h for h in header if h not in spec.position]
    return extra[0] if len(extra) == 1 else None


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [h.strip() for h in next(csv.reader(f, delimiter=_delimiter(path)), [])]


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _read_csv_target(path: Path, name: str, spec: InputSpec) -> np.ndarray:
    header = _header(path)
    if name not in header:
        others = ", ".join(h for h in header if h not in spec.position) or "none"
        raise bad_input(path, f"no target column {name!r} in the header", f"columns that are not inputs: {others}")
    index = header.index(name)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=_delimiter(path))
        next(reader)
        cells = [row[index].strip() for row in reader if row]  # read_rows has checked every row's width
    try:
        return np.array([math.nan if c in MISSING else float(c) for c in cells])
    except ValueError:  # not all numbers: string class labels
        if any(c in MISSING for c in cells):
            raise bad_input(path, f"target column {name!r} has empty cells among its labels") from None
        return np.array(cells, dtype=object)


def _read_npz_target(path: Path, name: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        if name not in archive.files:
            raise bad_input(path, f"no target array {name!r} (it has: {', '.join(archive.files)})",
                            "save the rows with np.savez(path, X=rows, y=targets)")
        values = archive[name]
    if values.ndim != 1:
        raise bad_input(path, f"{name} has shape {list(values.shape)}; one target per row is needed")
    if values.dtype.kind in "US":
        return values.astype(str).astype(object)
    if values.dtype.kind not in "fiub":
        raise bad_input(path, f"{name} has dtype {values.dtype}; numbers or strings are needed")
    return values.astype(np.float64)
