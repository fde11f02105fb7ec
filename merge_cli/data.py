"""Real rows (--data): a CSV, .npz or Parquet file read once into frozen Rows: per-input arrays and a target.

One reader serves verification, scores and the stack fit. It reads at most what the file holds
(devices, procfs and sysfs files are refused) and checks sizes an .npz declares before it allocates.
"""

from __future__ import annotations

import collections
import csv
import functools
import io
import math
import os
import stat
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import bad_input, first_line, usage
from .inputs import MergedInput, TableInput, TensorInput
from .npz import archive_of, read_npz

MISSING = ("", "nan", "NaN", "NA", "N/A", "null", "None")  # cells read as a missing value (NaN)
MAX_HEADER = 16 << 20  # bytes in a CSV header line: 16 MiB names ~1M columns; a longer line is not a header
TEXT_FORMATS = (".csv", ".txt", ".tsv")
FORMATS = (*TEXT_FORMATS, ".npz", ".parquet")


@dataclass(frozen=True)
class Rows:
    """Rows read from `path`: per merged input an [N, k] array (float64 with NaN where a cell is missing,
    or str objects for text columns), and the target as read (float64, or str objects for labels)."""

    path: Path
    inputs: Mapping[str, np.ndarray]
    target: np.ndarray | None
    target_name: str | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def features(self) -> np.ndarray:
        """The one merged input's rows (a mapping with one [input] table)."""
        (only,) = self.inputs.values()
        return only


def read_data(path: Path, inputs: Sequence[MergedInput], target: str | None = None) -> Rows:
    """Read `path` once: each input's columns (CSV/Parquet header names; .npz: an array per input name,
    `X` for a single table, or one per column; tensors from .npz only) and the `target` column or array
    (None: no target)."""
    suffix = _format(path)
    tensors = [i.name for i in inputs if isinstance(i, TensorInput)]
    if tensors and suffix != ".npz":
        raise bad_input(path, f"input {tensors[0]!r} is a tensor, which a table of columns cannot hold",
                        f"give a .npz file with an array {tensors[0]!r} (the batch first) per tensor input")
    if suffix == ".npz":
        features, values = read_npz(path, read_file(path), inputs, target)
        data = Rows(path, MappingProxyType(features), values, target if values is not None else None)
    elif suffix == ".parquet":
        data = _read_parquet(path, read_file(path), inputs, target)
    else:
        with _open(path) as f:
            data = _read_text(path, f, inputs, target)
    if len(data) == 0:
        raise bad_input(path, "has no rows")
    check_integer_cells(data, inputs, suffix in TEXT_FORMATS)
    if data.target is not None and len(data.target) != len(data):
        raise bad_input(path, f"{len(data.target)} target values for {len(data)} rows")
    return data


def check_integer_cells(data: Rows, inputs: Sequence[MergedInput], text: bool) -> None:
    """An int or bool column cannot hold a missing cell (NaN) or a fraction: cast to int64 it would become
    another category silently, so the first such cell is named (a CSV's line: the header is line 1)."""
    for item in inputs:
        values = data.inputs.get(item.name)
        if not isinstance(item, TableInput) or item.dtype not in ("int64", "int32", "bool") or values is None \
                or values.dtype.kind != "f":
            continue
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            row, column = (int(i) for i in np.argwhere(bad)[0])
            where = f"line {row + 2}" if text else f"row {row + 1}"
            what = "is missing" if not np.isfinite(values[row, column]) else f"is {values[row, column]:g}"
            raise bad_input(data.path, f"{where}, column {item.columns[column]!r}: the cell {what}, but inputs."
                            f"{item.name} is {item.dtype}", "fill it with a whole number (a category code)")


def resolve_target(path: Path, inputs: Sequence[MergedInput], target: str | None, strict: bool = True) -> str | None:
    """The target column of `path`, decided here only: `target` if given (it must exist); else an .npz's
    `y`, or the one CSV/Parquet column that is not an input. Several such columns: the user must say
    which (`strict`), or there is no target (verify, which scores nothing)."""
    names = column_names(path)
    used = _used_names(path, inputs)
    if target is not None:
        if target not in names:
            others = ", ".join(n for n in names if n not in used) or "none"
            raise bad_input(path, f"no target column {target!r}", f"columns that are not inputs: {others}")
        return target
    if path.suffix.lower() == ".npz":
        return "y" if "y" in names else None
    extra = [n for n in names if n not in used]
    if len(extra) > 1 and not strict:
        return None
    if len(extra) > 1:
        shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
        raise usage(path, f"{len(extra)} non-input columns ({shown}): pass --target",
                    f"e.g. --target {extra[-1]} (the column of true values the models are scored on)")
    return extra[0] if extra else None


def column_names(path: Path) -> list[str]:
    """The names a file offers: its CSV header, Parquet schema or .npz arrays (a bounded peek)."""
    suffix = _format(path)
    with _open(path) as f:
        if suffix in TEXT_FORMATS:
            return _header(path, f.readline(MAX_HEADER + 1))[0]
        if suffix == ".npz":
            return [n.removesuffix(".npy") for n in archive_of(path, f).namelist()]
        return list(_parquet(path, f).schema_arrow.names)


# ---------------------------------------------------------------------------- the file itself


def read_file(path: Path) -> bytes:
    """The file's bytes, at most as many as it says it holds: devices, pipes, procfs and sysfs files
    (which claim to be regular files of size 0 or of any size) are refused, not read until memory runs out."""
    _format(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        blob = f.read(size)
    if len(blob) == 0:
        raise bad_input(path, "is empty")
    return blob


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise bad_input(path, f"unknown data format {suffix or '(no extension)'!r}",
                        "give a .csv file with a header row, a .npz file with an array X, or a .parquet file")
    return suffix


def header_line(path: Path) -> bytes:
    """A text file's first line, at most MAX_HEADER bytes of it (more is refused), through the same guards
    as --data files (no devices, pipes, procfs or sysfs files): init --columns-from reads its header so."""
    with _open(path) as f:
        line = f.readline(MAX_HEADER + 1)
    if len(line) > MAX_HEADER:
        raise bad_input(path, f"the header line is longer than {MAX_HEADER >> 20} MiB",
                        "the first line must name the columns")
    return line


def _open(path: Path) -> io.BufferedReader:
    """The file opened for reading once it is known to be a regular file (O_NONBLOCK: opening a FIFO
    would wait for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise bad_input(path, "no such data file") from None
    except IsADirectoryError:
        raise bad_input(path, "is a directory, not a data file") from None
    except OSError as e:
        raise bad_input(path, f"cannot read: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_dev in _pseudo_devices():
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise bad_input(path, "is a directory, not a data file")
        raise bad_input(path, "is not a regular file, not a data file", "give a CSV, .npz or Parquet file")
    return os.fdopen(fd, "rb")


def _pseudo_devices() -> set[int]:
    """Devices of procfs and sysfs, whose files say they are regular but are made up as they are read."""
    found = set()
    for root in ("/proc", "/sys"):
        try:
            found.add(os.stat(root).st_dev)
        except OSError:
            pass
    return found


def _used_names(path: Path, inputs: Sequence[MergedInput]) -> set[str]:
    """Names that feed inputs: columns, plus (.npz) the arrays that may hold them."""
    used = {c for spec in _tables(inputs) for c in spec.columns}
    if path.suffix.lower() == ".npz":
        used |= {spec.name for spec in inputs} | ({"X"} if len(inputs) == 1 else set())
    return used


def _is_text(spec: MergedInput) -> bool:
    return spec.dtype == "string"


def _tables(inputs: Sequence[MergedInput]) -> list[TableInput]:
    return [i for i in inputs if isinstance(i, TableInput)]


def _target_values(path: Path, name: str, cells: np.ndarray) -> np.ndarray:
    """A target column: numbers (NaN where missing), else string labels (which must all be there)."""
    if cells.dtype.kind in "fiub":
        return cells.astype(np.float64, copy=False)
    text = np.char.strip(cells.astype(str))
    missing = np.isin(text, MISSING)
    try:
        return np.where(missing, "nan", text).astype(np.float64)
    except ValueError:  # not all numbers: class labels
        if missing.any():
            raise bad_input(path, f"target column {name!r} has empty cells among its labels") from None
        return text.astype(object)


def _number_columns(cells: np.ndarray) -> np.ndarray:
    """[N, k] text cells as float64, missing cells NaN; raises ValueError on a cell that is not a number."""
    text = np.char.strip(cells.astype(str))
    return np.where(np.isin(text, MISSING), "nan", text).astype(np.float64)


# ---------------------------------------------------------------------------- CSV


def _header(path: Path, line: bytes) -> tuple[list[str], int]:
    """The header's names (first of repeated names wins) and its length in bytes."""
    if len(line) > MAX_HEADER:
        raise bad_input(path, f"the header line is longer than {MAX_HEADER >> 20} MiB",
                        "the first line must name the columns")
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise bad_input(path, f"is not valid UTF-8 (byte {e.start})") from None
    try:
        names = next(csv.reader([text.rstrip("\r\n")], delimiter=_delimiter(path)), [])
    except csv.Error as e:
        raise bad_input(path, f"invalid CSV header: {e}") from None
    if not names or names == [""]:
        raise bad_input(path, "has no header: the first line must name the columns")
    return [n.strip() for n in names], len(line)


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


@dataclass(frozen=True)
class _Plan:
    """Which header positions feed which input, and the target's position."""

    header: list[str]
    columns: dict[str, list[int]]  # input name -> header positions, in the input's column order
    text: set[str]  # inputs of text columns
    target: int | None

    @functools.cached_property
    def used(self) -> list[int]:
        """Every position read: the inputs' columns and the target, in file order."""
        target = {self.target} if self.target is not None else set()
        return sorted({i for cols in self.columns.values() for i in cols} | target)


def _plan(path: Path, header: list[str], inputs: Sequence[MergedInput], target: str | None) -> _Plan:
    position: dict[str, int] = {}
    for i, h in enumerate(header):
        position.setdefault(h, i)
    columns = {}
    for spec in _tables(inputs):
        missing = [c for c in spec.columns if c not in position]
        if missing:
            shown = ", ".join(repr(c) for c in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise bad_input(path, f"has no column {shown} ({len(missing)} of the mapping's "
                            f"{len(spec.columns)} columns are missing)", "the header must name the mapping's columns")
        columns[spec.name] = [position[c] for c in spec.columns]
    if target is not None and target not in position:
        others = ", ".join(h for h in header if h not in {c for s in _tables(inputs) for c in s.columns}) or "none"
        raise bad_input(path, f"no target column {target!r} in the header", f"columns that are not inputs: {others}")
    return _Plan(header, columns, {s.name for s in inputs if _is_text(s)}, position.get(target) if target else None)


def _read_text(path: Path, f: io.BufferedReader, inputs: Sequence[MergedInput], target: str | None) -> Rows:
    """CSV/TSV, parsed as it is read (the file's bytes are not held beside the arrays): pyarrow when
    installed (its errors are re-read by numpy, whose messages name the line), else numpy.loadtxt on
    all columns as numbers, then (from the bytes) as text, then Python's csv module for the error."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise bad_input(path, "is empty")
    header, start = _header(path, f.readline(MAX_HEADER + 1))
    plan = _plan(path, header, inputs, target)
    cells = _arrow_csv(path, f, plan) or _numpy_csv(path, f, start, size, plan)
    return _assemble(path, plan, cells, target)


Cells = Callable[[list[int]], np.ndarray]  # header positions -> [N, k]: float64 numbers, or str objects


def _by_column(column: Callable[[int], np.ndarray]) -> Cells:
    """Cells filled a column at a time: only one column's conversion is held beside the result."""
    def cells(positions: list[int]) -> np.ndarray:
        out = np.empty((0, len(positions)))
        for k, i in enumerate(positions):
            values = column(i)
            if k == 0:
                out = np.empty((len(values), len(positions)), dtype=np.float64 if values.dtype.kind == "f" else object)
            out[:, k] = values
        return out

    return cells


def _columns_of(table: np.ndarray, positions: list[int]) -> np.ndarray:
    """Columns of one parsed table: a view when they are side by side (no copy), else rows gathered whole."""
    first = positions[0] if positions else 0
    if positions == list(range(first, first + len(positions))):
        return table[:, first:first + len(positions)]
    return table[:, positions]


def _assemble(path: Path, plan: _Plan, cells: Cells, target: str | None) -> Rows:
    """Columns by header position -> each input's [N, k] array and the target."""
    inputs = {name: cells(positions) for name, positions in plan.columns.items()}
    values = None
    if plan.target is not None and target is not None:
        values = _target_values(path, target, cells([plan.target])[:, 0])
    return Rows(path, MappingProxyType(inputs), values, target if values is not None else None)


def _numpy_csv(path: Path, f: io.BufferedReader, start: int, size: int, plan: _Plan) -> Cells:
    """numpy.loadtxt's C parser: every column as float64 in one pass (the common case: all numbers);
    failing that, the used columns as text, converted column by column; failing that, _careful_csv."""
    options: dict[str, Any] = {"delimiter": _delimiter(path), "comments": None, "quotechar": '"', "ndmin": 2,
                               "encoding": "utf-8"}
    width = len(plan.header)
    if not plan.text:
        f.seek(start)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data": said as "has no rows"
                table = np.loadtxt(f, dtype=np.float64, **options)
            if table.shape[1] == width:
                return functools.partial(_columns_of, table)
        except ValueError:
            pass
    f.seek(0)
    blob = f.read(size)  # no more than the file said it holds
    if _text_pass_fits(np.frombuffer(blob, dtype=np.uint8, offset=start), width, options["delimiter"], len(plan.used)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                text = np.loadtxt(_at(blob, start), dtype=str, usecols=plan.used, **options)
            numeric = [i for i in plan.used if i != plan.target and not _text_column(plan, i)]
            out = {i: text[:, k] for k, i in enumerate(plan.used)}
            if numeric:
                numbers = _number_columns(np.stack([out[i] for i in numeric], axis=1))
                out |= {i: numbers[:, k] for k, i in enumerate(numeric)}
            return _by_column(out.__getitem__)
        except (ValueError, MemoryError):
            pass
    return _by_column(_careful_csv(path, blob[start:], plan).__getitem__)


def _at(blob: bytes, start: int) -> io.BytesIO:
    """The bytes as a file positioned at `start` (BytesIO shares a bytes object's buffer: no copy)."""
    f = io.BytesIO(blob)
    f.seek(start)
    return f


def _text_column(plan: _Plan, position: int) -> bool:
    return any(position in plan.columns[name] for name in plan.text)


def _text_pass_fits(raw: np.ndarray, width: int, delimiter: str, used: int) -> bool:
    """Whether numpy's text pass may read these bytes: every non-empty line has width-1 delimiters and
    there are no quotes (the pass uses usecols, which would not notice a longer row), and its
    fixed-width text cells (4 bytes per character of the longest cell, for every used cell) would take
    at most ~8x the file. Otherwise the csv module reads it (its 128 KiB field limit bounds a long cell)."""
    if len(raw) == 0 or bool((raw == ord('"')).any()):
        return False
    ends = np.flatnonzero(raw == 10)
    if len(ends) == 0 or ends[-1] != len(raw) - 1:
        ends = np.append(ends, len(raw))
    starts = np.concatenate([[0], ends[:-1] + 1])
    keep = ends - starts > (raw[np.minimum(starts, len(raw) - 1)] == 13)  # skip blank lines (\n or \r\n)
    if not keep.any():
        return True
    delimiters = np.add.reduceat(raw == ord(delimiter), starts, dtype=np.uint32)  # per line (blank ones: 0)
    if not np.all(delimiters[keep] == width - 1):
        return False
    bounds = np.flatnonzero((raw == ord(delimiter)) | (raw == 10))
    longest = int(np.diff(bounds, prepend=-1).max(initial=0)) if len(bounds) else len(raw)
    longest = max(longest, len(raw) - 1 - (int(bounds[-1]) if len(bounds) else -1))  # a last line without \n
    return int(keep.sum()) * used * 4 * longest <= 8 * len(raw) + (64 << 20)


def _careful_csv(path: Path, body: bytes, plan: _Plan) -> dict[int, np.ndarray]:
    """Python's csv module, cell by cell: slow, but it says which line and column is wrong."""
    text = io.TextIOWrapper(io.BytesIO(body), encoding="utf-8", newline="")  # decoded as read: no copy of it all
    width = len(plan.header)
    numeric = [i for i in plan.used if i != plan.target and not _text_column(plan, i)]
    kept: dict[int, list[Any]] = {i: [] for i in plan.used}
    line = 1
    try:
        for line, row in enumerate(csv.reader(text, delimiter=_delimiter(path)), start=2):
            if not row:
                continue
            if len(row) != width:
                raise bad_input(path, f"line {line}: {len(row)} cells, the header has {width}")
            for i in plan.used:
                kept[i].append(row[i].strip())
            for i in numeric:
                kept[i][-1] = _number(path, kept[i][-1], line, plan.header[i])
    except csv.Error as e:
        raise bad_input(path, f"invalid CSV: {e}") from None
    except UnicodeDecodeError:
        raise bad_input(path, f"is not valid UTF-8 (after line {line})") from None
    return {i: np.array(v, dtype=np.float64 if i in numeric else object) for i, v in kept.items()}


def _number(path: Path, text: str, line: int, column: str) -> float:
    if text in MISSING:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise bad_input(path, f"line {line}: column {column!r}: {text[:40]!r} is not a number") from None


# ---------------------------------------------------------------------------- pyarrow (optional: merge-models[data])


def _arrow() -> Any:
    try:
        import pyarrow
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError:
        return None
    return pyarrow


def _arrow_csv(path: Path, f: io.BufferedReader, plan: _Plan) -> Cells | None:
    """pyarrow.csv on the used columns (None without pyarrow or on any error: numpy re-reads and explains)."""
    pa = _arrow()
    if pa is None:
        return None
    names = [f"c{i}" for i in range(len(plan.header))]
    types = {f"c{i}": pa.float64() for i in plan.used if i != plan.target and not _text_column(plan, i)}
    types |= {f"c{i}": pa.string() for i in plan.used if _text_column(plan, i)}
    try:
        table = pa.csv.read_csv(
            f,
            read_options=pa.csv.ReadOptions(column_names=names, block_size=8 << 20),
            parse_options=pa.csv.ParseOptions(delimiter=_delimiter(path)),
            convert_options=pa.csv.ConvertOptions(include_columns=[names[i] for i in plan.used], column_types=types,
                                                  null_values=list(MISSING), strings_can_be_null=True,
                                                  true_values=[], false_values=[]))  # True/False: labels
    except (pa.ArrowException, ValueError, OverflowError):
        return None
    return _by_column(lambda i: _arrow_column(path, plan.header[i], table.column(names[i]), text=_text_column(plan, i)))


def _arrow_column(path: Path, name: str, column: Any, text: bool) -> np.ndarray:
    """An arrow column as numpy: numbers as float64 with NaN for nulls (integers past 2^53 rounded, as a
    CSV's digits are), anything else as str objects; a column that is neither (lists, structs, bytes that
    are not UTF-8) is exit 3 naming it."""
    import pyarrow as pa

    try:
        if not text and (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)
                         or pa.types.is_boolean(column.type) or pa.types.is_null(column.type)):
            return np.asarray(column.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64)
        values = column.cast(pa.string()).to_numpy(zero_copy_only=False)
    except (pa.ArrowException, ValueError) as e:
        raise bad_input(path, f"column {name!r} has type {column.type}: neither numbers nor text ({first_line(e)})",
                        "give numbers, or labels as text") from None
    return np.array(["" if v is None else v for v in values], dtype=object)


def _parquet(path: Path, source: bytes | io.BufferedReader) -> Any:
    pa = _arrow()
    if pa is None:
        raise bad_input(path, "reading Parquet needs pyarrow", "pip install 'merge-models[data]'")
    try:
        return pa.parquet.ParquetFile(pa.BufferReader(source) if isinstance(source, bytes) else source)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise bad_input(path, f"cannot read Parquet: {first_line(e)}") from None


def _read_parquet(path: Path, blob: bytes, inputs: Sequence[MergedInput], target: str | None) -> Rows:
    pa = _arrow()
    parquet = _parquet(path, blob)
    header = list(parquet.schema_arrow.names)
    plan = _plan(path, header, inputs, target)
    counts = collections.Counter(header)
    twice = next((header[i] for i in plan.used if counts[header[i]] > 1), None)
    if twice is not None:  # a CSV's first wins; a Parquet reader takes columns by name only
        raise bad_input(path, f"names column {twice!r} {counts[twice]} times", "give each column its own name")
    if parquet.metadata.num_rows * max(len(plan.used), 1) * 8 > 8 * len(blob) + (256 << 20):
        raise bad_input(path, f"declares {parquet.metadata.num_rows} rows, far more than its {len(blob)} bytes hold")
    try:
        table = parquet.read(columns=[header[i] for i in plan.used])
    except (pa.ArrowException, OSError, ValueError) as e:
        raise bad_input(path, f"cannot read Parquet: {first_line(e)}") from None
    del blob
    for i in plan.used:
        kind = table.column(header[i]).type
        if not _text_column(plan, i) and i != plan.target and not (
                pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind)
                or pa.types.is_null(kind)):
            raise bad_input(path, f"column {header[i]!r} has type {kind}; numbers are needed")
    cells = _by_column(lambda i: _arrow_column(path, header[i], table.column(header[i]), text=_text_column(plan, i)))
    return _assemble(path, plan, cells, target)
