"""Describe one model as a merge would see it: inputs, outputs, opsets, size, task and the combiner's input.

The model is read exactly as `merge` reads it (model_io.load_model, then parts.read_part with a
throwaway ModelSpec), so weights are not parsed and what is shown is what a merge would do.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ExitCode, MergeError
from .graphs import TensorInfo, fed_inputs, is_default_domain, tensor_info
from .mapping import MODEL_NAME, ModelSpec, Route
from .model_io import LoadedModel, load_model
from .parts import Part, read_part
from .wire import ref_of

if TYPE_CHECKING:
    from onnx import TensorProto, TypeProto, ValueInfoProto

Shape = list[int | str] | None


@dataclass(frozen=True)
class Port:
    """A graph input or output: its name, a readable type ("float", "seq(map(int64, float))") and shape."""

    name: str
    type: str
    shape: Shape
    elem_type: int = 0  # the tensor element type; 0 for sequences, maps and the like

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "shape": self.shape}


@dataclass
class ModelInfo:
    """What `inspect` reports; `to_dict()` is its --json document."""

    path: Path
    name: str  # the model name a mapping would give this file (as `init` does)
    bytes: int
    external_data: list[tuple[Path, int]]
    ir_version: int
    opsets: dict[str, int]
    producer: str
    producer_version: str
    graph: str
    nodes: int
    ops: dict[str, int]
    initializers: int
    weight_bytes: int
    inputs: list[Port]
    outputs: list[Port]
    metadata: dict[str, str]
    part: Part | None = None  # None when a merge could not use the model as it is (see problem)
    problem: MergeError | None = None
    zipmaps: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.bytes + sum(size for _, size in self.external_data)

    @property
    def columns(self) -> int | None:
        """How many columns a merge routes to this model (None when an input's width is unknown)."""
        widths = [input_width(p) for p in self.inputs]
        return None if any(w is None for w in widths) else sum(w for w in widths if w is not None)

    @property
    def task(self) -> str | None:
        return self.part.task if self.part else None

    @property
    def merged_from(self) -> list[dict[str, Any]] | None:
        """The sources recorded by merge-models, when this file is a merged model."""
        import json

        text = self.metadata.get("merge_models.sources")
        if text is None:
            return None
        try:
            sources = json.loads(text)
        except ValueError:
            return None
        return sources if isinstance(sources, list) else None

    def to_dict(self) -> dict[str, Any]:
        part = self.part
        return {
            "status": "ok",
            "path": str(self.path),
            "name": self.name,
            "bytes": self.bytes,
            "external_data": [{"path": str(p), "bytes": size} for p, size in self.external_data],
            "total_bytes": self.total_bytes,
            "ir_version": self.ir_version,
            "opsets": self.opsets,
            "producer": {"name": self.producer, "version": self.producer_version},
            "graph": self.graph,
            "nodes": self.nodes,
            "ops": self.ops,
            "initializers": {"count": self.initializers, "bytes": self.weight_bytes},
            "inputs": [p.to_dict() | {"binding": how_bound(p)} for p in self.inputs],
            "outputs": [p.to_dict() for p in self.outputs],
            "columns": self.columns,
            "task": self.task,
            "classes": list(part.classes) if part and part.classes is not None else None,
            "label": part.label.name if part and part.label else None,
            "head": port_of(part.head).to_dict() if part else None,
            "zipmap_replaced": self.zipmaps,
            "problem": self.problem.to_dict() if self.problem else None,
            "metadata": self.metadata,
        }


def describe(path: Path, name: str | None = None, output: str | None = None) -> ModelInfo:
    """Load `path` as a merge would and describe it.

    Unreadable or untrustworthy files raise MergeError (exit 3), as they would in a merge. When the
    model is readable but a merge could not use it as it is (e.g. several outputs and none chosen),
    the problem is recorded instead, with the hint a merge would print.
    """
    loaded = load_model(path)
    name = name or model_name(path)
    info = _raw_info(loaded, name)
    spec = ModelSpec(name=name, path=path, routes=(Route(None, ()),), output=output)
    try:
        part = read_part(spec, loaded)  # changes loaded.proto: collapses opsets, removes ZipMaps
    except MergeError as e:
        if e.code != ExitCode.INCOMPATIBLE:
            raise
        info.problem = e
    else:
        info.part = part
        info.zipmaps = dict(part.zipmaps)
    return info


def _raw_info(loaded: LoadedModel, name: str) -> ModelInfo:
    """Everything that is read straight from the file, before read_part normalizes the proto."""
    model, graph = loaded.proto, loaded.proto.graph
    opsets: dict[str, int] = {}
    for entry in model.opset_import:  # the same opset may be listed twice; keep the highest
        domain = "" if is_default_domain(entry.domain) else entry.domain
        opsets[domain] = max(opsets.get(domain, 0), entry.version)
    ops = Counter(node.op_type for node in graph.node)
    return ModelInfo(
        path=loaded.path,
        name=name,
        bytes=loaded.path.stat().st_size,
        external_data=[(p, p.stat().st_size) for p in loaded.data_files],
        ir_version=model.ir_version,
        opsets=dict(sorted(opsets.items())),
        producer=model.producer_name,
        producer_version=model.producer_version,
        graph=graph.name,
        nodes=len(graph.node),
        ops=dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        initializers=len(graph.initializer) + len(graph.sparse_initializer),
        weight_bytes=sum(tensor_bytes(t, loaded) for t in graph.initializer),
        inputs=[port_of_value(vi) for vi in fed_inputs(graph)],
        outputs=[port_of_value(vi) for vi in graph.output],
        metadata={p.key: p.value for p in model.metadata_props},
    )


def tensor_bytes(tensor: TensorProto, loaded: LoadedModel) -> int:
    """An initializer's payload size, without reading a payload that was left in the file."""
    import numpy as np
    from onnx import helper

    ref = ref_of(tensor)
    if ref is not None:
        return ref.length
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    if tensor.string_data:
        return sum(len(s) for s in tensor.string_data)
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    try:
        return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # an element type numpy has no dtype for
        return 0


def input_width(port: Port) -> int | None:
    """Columns an input takes: 1 for [N], k for [N, k]; None when unknown or not a row of columns."""
    if port.shape is None:
        return None
    if len(port.shape) == 1:
        return 1
    if len(port.shape) == 2 and isinstance(port.shape[1], int) and port.shape[1] > 0:
        return port.shape[1]
    return None


def how_bound(port: Port) -> str:
    """How a mapping can feed this input: columns of a table of its type, or a whole tensor input."""
    width = input_width(port)
    kind = {8: "string", 7: "int64", 6: "int32", 9: "bool", 11: "float64"}.get(port.elem_type, "float32")
    if port.elem_type == 8 or (width is not None and (kind.startswith("float") or width == 1)):
        count = "columns" if width is None else f"{width} column" + ("s" if width != 1 else "")
        return f"{count} of {'an' if kind[0] == 'i' else 'a'} {kind} table"
    return f"whole: {'an' if kind[0] == 'i' else 'a'} {kind} tensor [inputs.*]"


def port_of(info: TensorInfo) -> Port:
    from onnx import TensorProto

    shape: Shape = None if info.shape is None else [d if isinstance(d, int) else (d or "?") for d in info.shape]
    return Port(info.name, TensorProto.DataType.Name(info.elem_type).lower(), shape, info.elem_type)


def port_of_value(vi: ValueInfoProto) -> Port:
    info = tensor_info(vi)
    if info is not None:
        return port_of(info)
    return Port(vi.name, type_name(vi.type), None)


def type_name(t: TypeProto) -> str:
    """A readable ONNX type: float, seq(map(int64, float)), optional(...)."""
    from onnx import TensorProto

    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        return str(TensorProto.DataType.Name(t.tensor_type.elem_type)).lower()
    if kind == "sequence_type":
        return f"seq({type_name(t.sequence_type.elem_type)})"
    if kind == "map_type":
        key = TensorProto.DataType.Name(t.map_type.key_type).lower()
        return f"map({key}, {type_name(t.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional({type_name(t.optional_type.elem_type)})"
    if kind == "sparse_tensor_type":
        return f"sparse({TensorProto.DataType.Name(t.sparse_tensor_type.elem_type).lower()})"
    return "unknown"


def model_name(path: Path) -> str:
    """A mapping key for a model file: its stem, made usable as a graph prefix."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:64] or "model"
    if not MODEL_NAME.match(name):
        name = ("_" + name)[:64]
    return name
