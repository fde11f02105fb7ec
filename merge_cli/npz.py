"""Arrays of an .npz --data file, each read by its .npy header: shape and dtype checked against what the
archive holds (and free memory) before anything is allocated; object arrays are never unpickled."""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import bad_input, first_line
from .inputs import MergedInput, TensorInput

INFLATE_FLOOR = 256 << 20  # arrays this large must not inflate from much less (a zip bomb: 9 MB -> 9 GB)
INFLATE_RATIO = 200  # real tables compress 2-20x; all zeros deflates ~1000x


def archive_of(path: Path, source: bytes | io.BufferedReader) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        hint = "save it with np.savez(path, X=rows, y=targets)"
        if isinstance(source, io.BufferedReader):
            source.seek(0)
        if (source if isinstance(source, bytes) else source.read(6)).startswith(b"\x93NUMPY"):
            raise bad_input(path, "is a .npy file, not a .npz archive", hint) from None
        raise bad_input(path, f"is not a .npz archive: {first_line(e)}", hint) from None


def _npy(path: Path, archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """One array, its declared shape and dtype checked against what the archive holds before reading it."""
    member = archive.getinfo(f"{name}.npy")
    fmt = np.lib.format
    try:
        with archive.open(member) as f:
            version = fmt.read_magic(f)
            read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read_header is None:
                raise bad_input(path, f"{name} is a .npy of version {version}, which is not read here")
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject:
                raise bad_input(path, f"{name} is an array of Python objects, which is never unpickled",
                                "save numbers or strings")
            count = math.prod(shape)
            size = count * dtype.itemsize
            if size > member.file_size:
                raise bad_input(path, f"{name} declares shape {list(shape)} ({size} bytes), but the archive holds "
                                f"{member.file_size} bytes for it")
            if size > INFLATE_FLOOR and size > INFLATE_RATIO * max(member.compress_size, 1):
                raise bad_input(path, f"{name} declares shape {list(shape)} ({size} bytes) from "
                                f"{member.compress_size} compressed bytes: more than {INFLATE_RATIO}x is not data",
                                "save the rows with np.savez (uncompressed) or np.savez_compressed")
            if size > _memory_available():
                raise bad_input(path, f"{name} declares shape {list(shape)} ({size} bytes), more than this "
                                "machine's free memory")
            raw = f.read(size)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zipfile.LargeZipFile, zlib.error) as e:
        raise bad_input(path, f"cannot read {name}: {first_line(e)}") from None
    if len(raw) != size:
        raise bad_input(path, f"{name} is truncated: {len(raw)} of {size} bytes")
    array = np.frombuffer(raw, dtype=dtype, count=count)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _memory_available() -> int:
    """MemAvailable (Linux), or no limit where it cannot be read."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f.read(1 << 16).splitlines():
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62


def read_npz(path: Path, blob: bytes, inputs: Sequence[MergedInput],
             target: str | None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """An array per input (`X` for a single input), or one 1-D array per column; the target array."""
    archive = archive_of(path, blob)
    names = {n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy")}
    features = {}
    for spec in inputs:
        if isinstance(spec, TensorInput):
            features[spec.name] = _npz_tensor(path, archive, names, spec)
            continue
        whole = spec.name if spec.name in names else "X" if len(inputs) == 1 and "X" in names else None
        if whole is not None:
            rows = _npy(path, archive, whole)
            if rows.ndim != 2 or rows.shape[1] != len(spec.columns):
                raise bad_input(path, f"{whole} has shape {list(rows.shape)}; the merged input takes "
                                f"[N, {len(spec.columns)}]")
        elif spec.columns and all(c in names for c in spec.columns):
            rows = np.stack([_column(path, archive, c) for c in spec.columns], axis=1)
        else:
            wanted = "X" if len(inputs) == 1 else spec.name
            raise bad_input(path, f"has no array {wanted!r} (it has: {', '.join(sorted(names)) or 'nothing'})",
                            "save the rows with np.savez(path, X=rows, y=targets)")
        features[spec.name] = _npz_cells(path, whole or spec.name, rows, spec.dtype == "string")
    values = None
    if target is not None:
        if target not in names:
            raise bad_input(path, f"no target array {target!r} (it has: {', '.join(sorted(names))})",
                            "save the rows with np.savez(path, X=rows, y=targets)")
        y = _npy(path, archive, target)
        if y.ndim != 1:
            raise bad_input(path, f"{target} has shape {list(y.shape)}; one target per row is needed")
        if y.dtype.kind not in "fiubUS":
            raise bad_input(path, f"{target} has dtype {y.dtype}; numbers or strings are needed")
        values = _text(path, target, y) if y.dtype.kind in "US" else y.astype(np.float64)
    rows_of = {len(v) for v in features.values()}
    if len(rows_of) > 1:
        raise bad_input(path, f"its arrays hold different numbers of rows ({', '.join(map(str, sorted(rows_of)))})")
    return features, values


def _npz_tensor(path: Path, archive: zipfile.ZipFile, names: set[str], spec: TensorInput) -> np.ndarray:
    """A tensor input's array as stored (the batch first), its fixed dimensions checked."""
    if spec.name not in names:
        raise bad_input(path, f"has no array {spec.name!r} for the tensor input (it has: {', '.join(sorted(names))})",
                        f"save it with np.savez(path, {spec.name}=batch, y=targets)")
    array = _npy(path, archive, spec.name)
    expected = spec.shape
    if array.ndim == 0 or (expected is not None and (len(expected) != array.ndim or any(
            isinstance(d, int) and d != n for d, n in zip(expected[1:], array.shape[1:], strict=True)))):
        shown = list(expected) if expected is not None else "[N, ...]"
        raise bad_input(path, f"{spec.name} has shape {list(array.shape)}; the input takes {shown}")
    if (array.dtype.kind in "US") != (spec.dtype == "string") or array.dtype.kind not in "fiubUS":
        raise bad_input(path, f"{spec.name} has dtype {array.dtype}; the input takes {spec.dtype}")
    return array


def _column(path: Path, archive: zipfile.ZipFile, name: str) -> np.ndarray:
    column = _npy(path, archive, name)
    if column.ndim != 1:
        raise bad_input(path, f"{name} has shape {list(column.shape)}; a column is one value per row")
    return column


def _npz_cells(path: Path, name: str, rows: np.ndarray, text: bool) -> np.ndarray:
    if text:
        if rows.dtype.kind not in "US":
            raise bad_input(path, f"{name} has dtype {rows.dtype}; the input takes strings")
        return _text(path, name, rows)
    if rows.dtype.kind not in "fiub":
        raise bad_input(path, f"{name} has dtype {rows.dtype}; numbers are needed")
    return rows.astype(np.float64)


def _text(path: Path, name: str, array: np.ndarray) -> np.ndarray:
    """Strings as str objects; bytes (dtype S) decoded as UTF-8 (astype(str) decodes ASCII and raised on
    the first other byte, exit 70)."""
    if array.dtype.kind == "S":
        try:
            array = np.char.decode(array, "utf-8")
        except UnicodeDecodeError as e:
            raise bad_input(path, f"{name} holds bytes that are not UTF-8 text ({e.reason} at byte {e.start})") from None
    return array.astype(str).astype(object)
