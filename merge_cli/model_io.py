"""Load ONNX models safely (weights by reference), check them, and hash the source files; writing is in writing.py."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .errors import bad_input, first_line
from .process import settle
from .wire import PROTOBUF_LIMIT, ByteRange, WireError, read_range, read_skeleton, ref_of, reference_location
from .writing import scratch_dir

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from onnx import ModelProto, TensorProto

_EXTERNAL = 1
# bytes per element of the fixed-size types (onnx TensorProto.DataType), for checking payload sizes
_FIXED_SIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
               17: 1, 18: 1, 19: 1, 20: 1, 24: 1}
# typed field and entries per element, for the types whose typed field holds one entry per element (or two)
_TYPED_FIELD = {1: ("float_data", 1), 11: ("double_data", 1), 7: ("int64_data", 1), 12: ("uint64_data", 1),
                13: ("uint64_data", 1), 8: ("string_data", 1), 14: ("float_data", 2), 15: ("double_data", 2),
                **{t: ("int32_data", 1) for t in (2, 3, 4, 5, 6, 9, 10, 16)}}
_ORT_MEMORY_TAG = "*/_ORT_MEM_ADDR_/*"  # onnxruntime reads such "external data" from a memory address
_DIGITS = re.compile(r"[0-9]{1,19}")
_ELEMENT_TYPE_FIELDS = ("elem_type", "data_type", "key_type")  # int32 fields holding a TensorProto.DataType


@dataclass(frozen=True)
class LoadedModel:
    """A model as read from disk: its structure parsed, its large weights kept by reference."""

    path: Path
    proto: ModelProto
    data_files: list[Path] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.path.stat().st_size + sum(p.stat().st_size for p in self.data_files)


def load_model(path: Path) -> LoadedModel:
    """Read `path` without parsing weight bytes; refuse anything that is not a trustworthy ONNX model."""
    from google.protobuf.message import DecodeError
    from onnx import ModelProto

    try:
        st = path.stat()
    except FileNotFoundError:
        raise bad_input(path, "no such file") from None
    except OSError as e:
        raise bad_input(path, f"cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise bad_input(path, "is a directory, not an ONNX model file")
    if not stat.S_ISREG(st.st_mode):
        raise bad_input(path, "is not a regular file (a pipe or device?), not an ONNX model file")
    if st.st_size == 0:
        raise bad_input(path, "is empty (0 bytes), not an ONNX model")
    if st.st_size > PROTOBUF_LIMIT:  # checked before reading: protobuf cannot hold it, so it is not one model file
        raise bad_input(path, f"is {st.st_size / 2**30:.1f} GiB; one protobuf file cannot exceed 2 GiB",
                        "save the model with external data (onnx.save(..., save_as_external_data=True))")
    try:
        skeleton = read_skeleton(path)
    except WireError as e:
        raise bad_input(path, f"not an ONNX model: {e}") from None
    except OSError as e:
        raise bad_input(path, f"cannot read: {e.strerror or e}") from None
    model = ModelProto()
    try:
        model.ParseFromString(skeleton)
    except (DecodeError, RecursionError, ValueError) as e:
        raise bad_input(path, f"not an ONNX model: {_decode_problem(e)}") from None
    if not model.HasField("graph"):
        raise bad_input(path, "not an ONNX model: it has no graph (a GraphProto or another message?)",
                        "pass the .onnx file that onnx.save wrote (a ModelProto)")
    check_fields(model, path)
    data_files = resolve_external_data(model, path)
    check_tensor_sizes(model, path)
    return LoadedModel(path, model, data_files)


def _decode_problem(e: Exception) -> str:
    """protobuf's parse errors, in words: upb reports the depth limit by its option's name."""
    text = str(e)
    if isinstance(e, RecursionError) or "MaxDepth" in text:
        return "messages are nested too deeply for protobuf to parse (more than 100 levels)"
    return "the bytes are not a valid protobuf message" if "corrupt" in text or not text else text


def check_fields(model: ModelProto, path: Path) -> None:
    """Refuse what protobuf parses but code reading the model cannot handle.

    A string field holding invalid UTF-8 comes back from protobuf as bytes; an element type is a
    plain int32 in onnx.proto, so an unknown one (say 29) passes protobuf and onnx.checker alike.
    """
    import onnx

    known = set(onnx.TensorProto.DataType.values())
    stack: list[tuple[Message, str]] = [(model, "")]
    while stack:
        msg, where = stack.pop()
        for fd, value in msg.ListFields():
            if fd.type == fd.TYPE_STRING:
                for i, item in enumerate(value if fd.is_repeated else [value]):
                    if not isinstance(item, str):
                        field_name = f"{where}{fd.name}" + (f"[{i}]" if fd.is_repeated else "")
                        raise bad_input(path, f"not an ONNX model: {field_name} is not valid UTF-8",
                                        "names and other strings in an ONNX model must be UTF-8")
            elif fd.name in _ELEMENT_TYPE_FIELDS and fd.type == fd.TYPE_INT32 and value not in known:
                raise bad_input(path, f"{where}{fd.name}: unknown element type {value}",
                                f"onnx {onnx.__version__} knows element types 0 to {max(known)}")
            elif fd.type == fd.TYPE_MESSAGE:
                if fd.is_repeated:
                    stack.extend((m, f"{where}{fd.name}[{i}].") for i, m in enumerate(value))
                else:
                    stack.append((value, f"{where}{fd.name}."))


# ---------------------------------------------------------------------------- external data


def resolve_external_data(model: ModelProto, path: Path) -> list[Path]:
    """Turn each external-data tensor into a reference (main graph) or inline bytes (elsewhere), safely.

    Every tensor is checked, wherever it is: onnx's own loader skips sparse tensors, but onnxruntime
    reads them when verification runs the original file.
    """
    # The model's folder, absolute and resolved: never "" (onnx 1.23 skips its symlink guard for an empty base).
    base = Path(os.path.abspath(path)).parent.resolve()
    files: dict[Path, int] = {}  # each file and how many of its bytes the tensors read
    for tensor, top_level in list(iter_tensors(model)):
        if tensor.data_location != _EXTERNAL or ref_of(tensor) is not None:
            continue
        ref = external_range(tensor, base, path)
        files[Path(ref.path)] = files.get(Path(ref.path), 0) + ref.length
        if top_level:
            del tensor.external_data[:]
            for key, value in (("location", reference_location(ref.path)), ("offset", str(ref.offset)),
                               ("length", str(ref.length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        else:
            try:
                tensor.raw_data = read_range(ref)
            except OSError as e:
                raise bad_input(path, f"tensor {tensor.name!r}: cannot read its external data: {e}") from None
            del tensor.external_data[:]
            tensor.ClearField("data_location")
    for file, read in files.items():
        check_data_file_size(file, read, path)
    return list(files)


def check_data_file_size(file: Path, read: int, model_path: Path) -> None:
    """Refuse a data file far larger than what the model reads of it: provenance hashes the whole file
    (a 3.6 kB model whose a.bin was extended to a sparse 1 TiB hashed zeros for ten minutes). Several
    models sharing one file of weights stay well under the bound."""
    size = file.stat().st_size
    if size > MAX_UNREAD_FACTOR * read + MAX_UNREAD_BYTES:
        raise bad_input(model_path, f"external data file {file.name!r} is {size} bytes but the model's tensors read "
                        f"{read} bytes of it", "keep each model's weights in a file of its own "
                        "(onnx.save_model(..., location=...))")


MAX_UNREAD_FACTOR, MAX_UNREAD_BYTES = 16, 256 << 20  # a data file may hold 16x what the model reads, + 256 MiB


def external_range(tensor: TensorProto, base: Path, model_path: Path) -> ByteRange:
    """Where an external tensor's bytes are; refuse locations that escape the model's folder."""
    name = tensor.name or "(unnamed)"
    info: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key in info:
            raise bad_input(model_path, f"tensor {name!r}: external data key {entry.key!r} is given twice")
        info[entry.key] = entry.value
    location = info.get("location", "")

    def refuse(problem: str, hint: str = "keep external data files as plain files inside the model's folder") -> Exception:
        return bad_input(model_path, f"tensor {name!r}: external data location {location!r} {problem}", hint)

    if not location:
        raise refuse("is empty")
    if location.startswith(_ORT_MEMORY_TAG):
        raise refuse("is onnxruntime's in-memory address tag, not a file")
    if "\0" in location:
        raise refuse("contains a NUL byte")
    parts = PurePosixPath(location)
    if parts.is_absolute() or location.startswith("\\") or re.match(r"[A-Za-z]:", location):
        raise refuse("is absolute")
    if "\\" in location:  # onnxruntime on POSIX would open another file than the one checked here
        raise refuse("contains a backslash", "use '/' between folder names in external data locations")
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
    offset_text, length_text = info.get("offset", "0"), info.get("length")
    if not _DIGITS.fullmatch(offset_text) or (length_text is not None and not _DIGITS.fullmatch(length_text)):
        raise bad_input(model_path, f"tensor {name!r}: external data offset {offset_text!r} and length "
                        f"{length_text!r} must be non-negative integers")
    offset = int(offset_text)
    length = int(length_text) if length_text is not None else st.st_size - offset
    if length < 0 or offset + length > st.st_size:
        raise bad_input(model_path, f"tensor {name!r}: external data offset {offset} + length {length} "
                        f"is outside {location!r} ({st.st_size} bytes)")
    return ByteRange(str(real), offset, length)


def iter_tensors(model: ModelProto) -> Iterator[tuple[TensorProto, bool]]:
    """Every TensorProto anywhere in the model, with True for the main graph's (dense) initializers.

    A generic walk, so tensors where few look (sparse initializers, sparse Constant values, function
    attribute defaults, training_info graphs) are found too.
    """
    from onnx import TensorProto

    yield from ((t, True) for t in model.graph.initializer)
    stack: list[tuple[Message, bool]] = [(model, False)]
    while stack:
        msg, main_graph = stack.pop()
        if isinstance(msg, TensorProto):
            yield msg, False
            continue
        for fd, value in msg.ListFields():
            if fd.type != fd.TYPE_MESSAGE or (main_graph and fd.name == "initializer"):
                continue
            if fd.is_repeated:
                stack.extend((m, False) for m in value)
            else:
                stack.append((value, msg is model and fd.name == "graph"))


def check_tensor_sizes(model: ModelProto, path: Path) -> None:
    """Tensor data must be exactly as large as its dims say (guards huge dims with little or no data)."""
    for tensor, _ in iter_tensors(model):
        if tensor.HasField("segment"):
            continue  # a piece of a chunked tensor: its dims are the whole tensor's
        count = 1
        for d in tensor.dims:
            if d < 0:
                raise bad_input(path, f"tensor {tensor.name!r} has a negative dimension {d}")
            count *= d
        dims = list(tensor.dims)
        ref = ref_of(tensor)
        if ref is not None or tensor.HasField("raw_data"):
            have = ref.length if ref is not None else len(tensor.raw_data)
            itemsize = _FIXED_SIZE.get(tensor.data_type)
            if itemsize is not None and have != count * itemsize:
                raise bad_input(path, f"tensor {tensor.name!r}: dims {dims} need {count * itemsize} bytes "
                                f"but its data has {have}")
            continue
        typed = _TYPED_FIELD.get(tensor.data_type)
        if typed is None:
            continue  # the rarer types: onnx.checker compares their counts
        field_name, per_element = typed
        have = len(getattr(tensor, field_name))
        if have != count * per_element:
            raise bad_input(path, f"tensor {tensor.name!r}: dims {dims} need {count * per_element} values "
                            f"but its data has {have}")


# ---------------------------------------------------------------------------- checking


def check_model(model: ModelProto, file: Path | str | None, full: bool = False) -> None:
    """Run onnx.checker on a skeleton, by path: referenced weights point at one empty placeholder file."""
    from onnx import ModelProto, checker

    copy = ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        ref = ref_of(tensor)
        if ref is not None:
            del tensor.external_data[:]
            for key, value in (("location", "placeholder.data"), ("length", str(ref.length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    with scratch_dir(None, "merge-models-check-") as tmp:
        (Path(tmp) / "placeholder.data").touch()
        model_path = Path(tmp) / "model.onnx"
        model_path.write_bytes(copy.SerializeToString())
        try:
            checker.check_model(str(model_path), full_check=full)
        except Exception as e:  # onnx raises ValidationError, InferenceError, RuntimeError...
            raise bad_input(file, f"fails onnx.checker: {first_line(e)}") from None


HASH_CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 4 MiB chunks: the read and the hashing both release the GIL for a whole
    chunk, so a hashing thread keeps its pace beside the main thread. Read, not memory-mapped: a file
    truncated while a background thread hashes it must give a short read, not a SIGBUS."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def hash_in_background(paths: list[Path]) -> dict[Path, Future[str]]:
    """Start the sha256 of each file now, on up to one daemon thread per core; the digests are read later.

    Hashing a few hundred MB takes as long as the rest of a merge (~0.13 s per 200 MB here); hashlib
    releases the GIL, so it runs beside the loading and checking instead of after them. Daemon threads
    let a failed merge exit without waiting for them.
    """
    futures: dict[Path, Future[str]] = {p: Future() for p in dict.fromkeys(paths)}
    queue = iter(list(futures.items()))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            path, future = item
            settle(future, functools.partial(sha256_file, path))

    for _ in range(min(len(futures), os.cpu_count() or 1)):
        threading.Thread(target=work, name="merge-models-sha256", daemon=True).start()
    return futures
