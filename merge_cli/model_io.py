"""Load ONNX models safely (weights by reference) and write outputs atomically."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .errors import bad_input, cannot_write
from .wire import PROTOBUF_LIMIT, REF_PREFIX, ByteRange, Refs, WireError, read_range, read_skeleton, ref_of

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto, TensorProto

_EXTERNAL = 1
_FIXED_SIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}


@dataclass
class LoadedModel:
    """A model as read from disk: its structure parsed, its large weights kept by reference."""

    path: Path
    proto: ModelProto
    refs: Refs
    data_files: list[Path] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.path.stat().st_size + sum(p.stat().st_size for p in self.data_files)


def load_model(path: Path) -> LoadedModel:
    """Read `path` without parsing weight bytes; refuse anything that is not a trustworthy ONNX model."""
    from google.protobuf.message import DecodeError
    from onnx import ModelProto

    if not path.exists():
        raise bad_input(path, "no such file")
    if path.is_dir():
        raise bad_input(path, "is a directory, not an ONNX model file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise bad_input(path, f"cannot read: {e.strerror}") from None
    if size == 0:
        raise bad_input(path, "is empty (0 bytes), not an ONNX model")
    if size > PROTOBUF_LIMIT:
        raise bad_input(path, f"is {size / 2**30:.1f} GiB; one protobuf file cannot exceed 2 GiB",
                        "save the model with external data (onnx.save(..., save_as_external_data=True))")
    refs: Refs = {}
    try:
        skeleton = read_skeleton(path, refs)
    except WireError as e:
        raise bad_input(path, f"not an ONNX model: {e}") from None
    except OSError as e:
        raise bad_input(path, f"cannot read: {e.strerror or e}") from None
    model = ModelProto()
    try:
        model.ParseFromString(skeleton)
    except (DecodeError, RecursionError, ValueError) as e:
        reason = str(e) or "protobuf could not parse it"
        raise bad_input(path, f"not an ONNX model: {reason}") from None
    if not model.HasField("graph"):
        raise bad_input(path, "has no graph: not an ONNX ModelProto",
                        "pass the .onnx file that onnx.save wrote (a ModelProto)")
    data_files = resolve_external_data(model, path, refs)
    check_tensor_sizes(model, refs, path)
    return LoadedModel(path, model, refs, data_files)


# ---------------------------------------------------------------------------- external data


def resolve_external_data(model: ModelProto, path: Path, refs: Refs) -> list[Path]:
    """Turn each external-data tensor into a reference (main graph) or inline bytes (elsewhere), safely."""
    base = Path(os.path.abspath(path)).parent.resolve()
    files: dict[Path, None] = {}
    for tensor, top_level in iter_tensors(model):
        if tensor.data_location != _EXTERNAL or ref_of(tensor, refs) is not None:
            continue
        ref = external_range(tensor, base, path)
        files[Path(ref.path)] = None
        if top_level:
            token = f"{REF_PREFIX}ext:{len(refs)}"
            refs[token] = ref
            del tensor.external_data[:]
            for key, value in (("location", token), ("length", str(ref.length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        else:
            tensor.raw_data = read_range(ref)
            del tensor.external_data[:]
            tensor.ClearField("data_location")
    return list(files)


def external_range(tensor: TensorProto, base: Path, model_path: Path) -> ByteRange:
    """Where an external tensor's bytes are; refuse locations that escape the model's folder."""
    info = {e.key: e.value for e in tensor.external_data}
    name = tensor.name or "(unnamed)"
    location = info.get("location", "")

    def refuse(problem: str) -> Exception:
        return bad_input(model_path, f"tensor {name!r}: external data location {location!r} {problem}",
                         "keep external data files as plain files inside the model's folder")

    if not location:
        raise refuse("is empty")
    if "\0" in location:
        raise refuse("contains a NUL byte")
    parts = PurePosixPath(location.replace("\\", "/"))
    if parts.is_absolute() or location[1:3] in (":\\", ":/"):
        raise refuse("is absolute")
    if ".." in parts.parts:
        raise refuse("contains '..'")
    current = base
    for part in parts.parts:
        current = current / part
        if current.is_symlink():
            raise refuse("passes through a symbolic link")
    try:
        st = os.lstat(current)
    except OSError:
        raise bad_input(model_path, f"tensor {name!r}: external data file {location!r} does not exist",
                        "copy the model's data file(s) beside it") from None
    if not stat.S_ISREG(st.st_mode):
        raise refuse("is not a regular file")
    if st.st_nlink > 1:
        raise refuse("is a hard link")
    real = current.resolve()
    if not real.is_relative_to(base):
        raise refuse("resolves outside the model's folder")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else st.st_size - offset
    except ValueError:
        raise bad_input(model_path, f"tensor {name!r}: external data offset/length are not integers") from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise bad_input(model_path, f"tensor {name!r}: external data offset {offset} + length {length} "
                        f"is outside {location!r} ({st.st_size} bytes)")
    return ByteRange(str(real), offset, length)


def iter_tensors(model: ModelProto) -> Iterator[tuple[TensorProto, bool]]:
    """Every TensorProto in the model, with True for the main graph's (dense) initializers."""
    yield from ((t, True) for t in model.graph.initializer)
    yield from _graph_tensors(model.graph, skip_initializers=True)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: GraphProto, skip_initializers: bool = False) -> Iterator[tuple[TensorProto, bool]]:
    if not skip_initializers:
        yield from ((t, False) for t in graph.initializer)
    for sparse in graph.sparse_initializer:
        yield sparse.values, False
        yield sparse.indices, False
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: object) -> Iterator[tuple[TensorProto, bool]]:
    for attr in node.attribute:  # type: ignore[attr-defined]
        if attr.HasField("t"):
            yield attr.t, False
        yield from ((t, False) for t in attr.tensors)
        for sparse in (*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors):
            yield sparse.values, False
            yield sparse.indices, False
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


def check_tensor_sizes(model: ModelProto, refs: Refs, path: Path) -> None:
    """Initializer data must be exactly as large as its dims say (guards huge dims with no data)."""
    for tensor in model.graph.initializer:
        itemsize = _FIXED_SIZE.get(tensor.data_type)
        if itemsize is None:
            continue
        count = 1
        for d in tensor.dims:
            if d < 0:
                raise bad_input(path, f"initializer {tensor.name!r} has a negative dimension {d}")
            count *= d
        ref = ref_of(tensor, refs)
        if ref is not None:
            have = ref.length
        elif tensor.HasField("raw_data"):
            have = len(tensor.raw_data)
        else:
            continue  # typed fields: the checker compares their counts
        want = count * itemsize
        if have != want:
            raise bad_input(path, f"initializer {tensor.name!r}: dims {list(tensor.dims)} need {want} bytes "
                            f"but the data has {have}")


# ---------------------------------------------------------------------------- checking


def check_model(model: ModelProto, refs: Refs, file: Path | str | None, full: bool = False) -> None:
    """Run onnx.checker on a skeleton: referenced weights point at one empty placeholder file."""
    from onnx import ModelProto, checker

    copy = ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if ref_of(tensor, refs) is not None:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "placeholder.data"
    with tempfile.TemporaryDirectory(prefix="merge-models-check-") as tmp:
        (Path(tmp) / "placeholder.data").touch()
        model_path = Path(tmp) / "model.onnx"
        model_path.write_bytes(copy.SerializeToString())
        try:
            checker.check_model(str(model_path), full_check=full)
        except (checker.ValidationError, Exception) as e:  # onnx raises several types here
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise bad_input(file, f"fails onnx.checker: {message}") from None


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ---------------------------------------------------------------------------- writing


def check_output_path(out: Path, inputs: list[Path]) -> None:
    """Refuse, before any work, an output that cannot be written or would overwrite an input."""
    parent = out.parent
    if not parent.exists():
        raise cannot_write(out, f"directory {str(parent)!r} does not exist", "create it first")
    if not parent.is_dir():
        raise cannot_write(out, f"{str(parent)!r} is not a directory")
    if out.is_dir():
        raise cannot_write(out, "is a directory", "give a file name, e.g. --out merged.onnx")
    data = data_path(out)
    for candidate in (out, data):
        for inp in inputs:
            if _same_file(candidate, inp):
                raise cannot_write(out, f"would overwrite the input {str(inp)!r}", "choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise cannot_write(out, f"directory {str(parent)!r} is not writable")


def data_path(out: Path) -> Path:
    """Where a model's external data goes: beside it, named after it."""
    return out.with_name(out.name + ".data")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.abspath(a) == os.path.abspath(b)


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A private directory beside `out` for the files being written; removed whatever happens."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise cannot_write(out, f"cannot create a temporary file in {str(out.parent)!r}: {e.strerror}") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_model(model: ModelProto, refs: Refs, staged: Path, external: bool) -> list[Path]:
    """Write model (and its data file when external) into the staging dir; return the files written."""
    from .wire import write_single_file, write_with_external_data

    files = [staged]
    try:
        if external:
            data = data_path(staged)
            with open(staged, "wb") as f, open(data, "wb") as d:
                write_with_external_data(model, refs, f, d, data.name)
            files.append(data)
        else:
            with open(staged, "wb") as f:
                write_single_file(model, refs, f)
    except OSError as e:
        raise cannot_write(staged.parent.parent / staged.name, f"cannot write: {e.strerror or e}") from None
    return files


def commit(files: list[Path], out: Path) -> list[Path]:
    """Rename staged files into place, data file first so the model never points at a missing file."""
    placed = []
    for f in reversed(files):
        target = out.parent / f.name
        try:
            os.replace(f, target)
        except OSError as e:
            raise cannot_write(target, f"cannot move into place: {e.strerror}") from None
        placed.append(target)
    return list(reversed(placed))
