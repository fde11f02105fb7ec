"""Read real feature rows (CSV with a header, or .npz with an array X) for verification."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .errors import bad_input

MISSING = {"", "nan", "NaN", "NA", "N/A", "null", "None"}


def read_rows(path: Path, columns: tuple[str, ...], dtype: str) -> np.ndarray:
    """The rows of `path` as an [N, len(columns)] array in the merged input's column order.

    A CSV file's header names its columns: the mapping's columns are picked by name (others, such as
    a target, are ignored) and empty cells or NaN/NA are missing values (NaN). A .npz file holds `X`
    with exactly the mapping's columns, in order.
    """
    if not path.exists():
        raise bad_input(path, "no such data file")
    if path.is_dir():
        raise bad_input(path, "is a directory, not a data file")
    if not path.is_file():  # a device or pipe: /dev/zero would be read until memory runs out
        raise bad_input(path, "is not a regular file, not a data file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        rows = _read_npz(path, len(columns))
    elif suffix in (".csv", ".txt", ".tsv"):
        rows = _read_csv(path, columns)
    else:
        raise bad_input(path, f"unknown data format {suffix or '(no extension)'!r}",
                        "give a .csv file with a header row, or a .npz file with an array X")
    if len(rows) == 0:
        raise bad_input(path, "has no rows")
    return rows.astype(dtype)


def _read_npz(path: Path, width: int) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "X" not in archive:
                raise bad_input(path, f"has no array 'X' (it has: {', '.join(archive.files) or 'nothing'})",
                                "save the rows with np.savez(path, X=rows)")
            rows = archive["X"]
    except (OSError, ValueError) as e:
        raise bad_input(path, f"cannot read .npz: {e}") from None
    if rows.ndim != 2 or rows.shape[1] != width:
        raise bad_input(path, f"X has shape {list(rows.shape)}; the merged input takes [N, {width}]")
    if rows.dtype.kind not in "fiub":
        raise bad_input(path, f"X has dtype {rows.dtype}; numbers are needed")
    return np.asarray(rows, dtype=np.float64)


def _read_csv(path: Path, columns: tuple[str, ...]) -> np.ndarray:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise bad_input(path, "is empty: a header row naming the columns is needed")
            header = [h.strip() for h in header]
            position = {h: i for i, h in reversed(list(enumerate(header)))}  # the first of repeated names
            missing = [c for c in columns if c not in position]
            if missing:
                shown = ", ".join(repr(c) for c in missing[:3]) + (", ..." if len(missing) > 3 else "")
                raise bad_input(path, f"has no column {shown} ({len(missing)} of the mapping's "
                                f"{len(columns)} columns are missing)",
                                "the header must name the mapping's [input].columns")
            index = [position[c] for c in columns]
            out = []
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise bad_input(path, f"line {line}: {len(row)} cells, the header has {len(header)}")
                out.append([_number(row[i], path, line, columns[k]) for k, i in enumerate(index)])
    except UnicodeDecodeError as e:
        raise bad_input(path, f"is not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise bad_input(path, f"cannot read: {e.strerror or e}") from None
    except csv.Error as e:
        raise bad_input(path, f"invalid CSV: {e}") from None
    return np.array(out, dtype=np.float64).reshape(len(out), len(columns))


def _number(text: str, path: Path, line: int, column: str) -> float:
    text = text.strip()
    if text in MISSING:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise bad_input(path, f"line {line}: column {column!r}: {text!r} is not a number") from None
