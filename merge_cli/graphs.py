"""What merge-models reads off ONNX protos: element types, tensor shapes, opsets, nodes at every depth, names in use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto, NodeProto, ValueInfoProto

Dim = int | str | None
Shape = tuple[Dim, ...] | None  # None: rank unknown
Classes = tuple[int, ...] | tuple[str, ...]
Task = Literal["classification", "regression"]  # what a model predicts: classes (probabilities, label) or numbers

# The one place for element types. onnx TensorProto.DataType values used by name (onnx itself is imported
# only where it is needed, so these are written out; they agree with onnx.helper.tensor_dtype_to_np_dtype).
FLOAT, INT32, INT64, STRING, BOOL, FLOAT16, DOUBLE, BFLOAT16 = 1, 6, 7, 8, 9, 10, 11, 16
LABEL_TYPES = (INT64, INT32, STRING)
SCORE_TYPES = (FLOAT, DOUBLE, FLOAT16, BFLOAT16)
NUMPY_OF_TYPE: dict[int, type[np.generic]] = {FLOAT: np.float32, DOUBLE: np.float64, FLOAT16: np.float16, INT32: np.int32,
                                              INT64: np.int64, BOOL: np.bool_, STRING: np.object_}
_TYPE_OF_NUMPY = {(np.dtype(t).kind, np.dtype(t).itemsize): elem for elem, t in NUMPY_OF_TYPE.items()}
# the dtype names a mapping file uses for inputs, and the element types they feed
INPUT_TYPE_OF_DTYPE = {"float32": FLOAT, "float64": DOUBLE, "int64": INT64, "int32": INT32, "bool": BOOL,
                       "string": STRING}
DTYPE_OF_INPUT_TYPE = {elem: name for name, elem in INPUT_TYPE_OF_DTYPE.items()}
ROUTABLE_TYPES = {FLOAT: "float32", DOUBLE: "float64", FLOAT16: "float16", BFLOAT16: "bfloat16", INT32: "int32",
                  INT64: "int64", BOOL: "bool"}  # element types a table's columns can feed
NUMPY_OF_DTYPE = {name: NUMPY_OF_TYPE[elem] for name, elem in INPUT_TYPE_OF_DTYPE.items()}


def shape_text(shape: Sequence[Dim] | None, unknown: str = "[?]") -> str:
    """A shape as messages and summaries print it, `[N, 3]`; an unnamed dimension is `?`."""
    if shape is None:
        return unknown
    return "[" + ", ".join("?" if d is None or d == "" else str(d) for d in shape) + "]"


MAX_ROW_VALUES = 1 << 26  # values in one row of an input (256 MiB of float32): more is a size no model runs on


def row_values(shape: Sequence[Dim]) -> int:
    """How many values one row (all but the first dimension) holds, counting the sizes that are fixed."""
    count = 1
    for d in shape[1:]:
        count *= d if isinstance(d, int) and d > 0 else 1
    return count


def elem_type_of(dtype: np.dtype[Any]) -> int | None:
    """The onnx element type of a numpy array's dtype (by kind and size), None for one onnx has no name for here."""
    return _TYPE_OF_NUMPY.get((dtype.kind, dtype.itemsize))
DEFAULT_OPSET = 17  # for parts that declare no default-domain opset at all (e.g. XGBoost via onnxmltools)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    elem_type: int
    shape: Shape

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def width(self) -> int | None:
        """The last dimension of a rank-2 tensor, 1 for a rank-1 tensor (one value per row)."""
        if self.shape is None:
            return None
        if len(self.shape) == 1:
            return 1
        last = self.shape[-1]
        return last if isinstance(last, int) else None


def tensor_info(vi: ValueInfoProto) -> TensorInfo | None:
    """Name, element type and shape of a tensor ValueInfo; None for sequences, maps and the like."""
    if vi.type.WhichOneof("value") != "tensor_type":
        return None
    tt = vi.type.tensor_type
    shape: Shape = None
    if tt.HasField("shape"):
        dims: list[Dim] = []
        for d in tt.shape.dim:
            kind = d.WhichOneof("value")
            if kind == "dim_value" and d.dim_value >= 0:
                dims.append(d.dim_value)
            elif kind == "dim_param" and not d.dim_param.startswith("unk__"):  # shape inference's made-up names
                dims.append(d.dim_param)
            else:  # unnamed, or a negative size: some converters write -1 for "any"
                dims.append(None)
        shape = tuple(dims)
    return TensorInfo(vi.name, tt.elem_type, shape)


def is_default_domain(domain: str) -> bool:
    """The default operator set is spelled "" or "ai.onnx"."""
    return domain in ("", "ai.onnx")


def default_opset(model: ModelProto) -> int | None:
    return next((e.version for e in model.opset_import if e.domain == ""), None)


def copied(model: ModelProto) -> ModelProto:
    """A deep copy: stages change their own copy, never the model they were given."""
    copy = type(model)()
    copy.CopyFrom(model)
    return copy


def fed_inputs(graph: GraphProto) -> list[ValueInfoProto]:
    """The graph inputs a caller feeds: not those that name an initializer (IR 3 lists every one as an input)."""
    initializers = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    return [vi for vi in graph.input if vi.name not in initializers]


def subgraphs(node: NodeProto) -> list[GraphProto]:
    """The graphs a node holds in its attributes (If's branches, Loop's and Scan's bodies)."""
    return [g for attr in node.attribute for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]


def all_nodes(graph: GraphProto) -> list[NodeProto]:
    """Every node of the graph and of its subgraphs, at any depth (each followed by its subgraphs' nodes)."""
    out = []
    for node in graph.node:
        out.append(node)
        for g in subgraphs(node):
            out.extend(all_nodes(g))
    return out


def graph_names(graph: GraphProto) -> set[str]:
    """Every name the graph uses, at every scope: values, initializers, and nodes' inputs, outputs and names.

    A fresh name must avoid all of them: a subgraph's name may not shadow one of an outer scope either.
    """
    names = {vi.name for vi in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
        for g in subgraphs(node):
            names |= graph_names(g)
    names.discard("")
    return names
