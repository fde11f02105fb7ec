"""Add nodes and constants to a graph under fresh names: the combiners' subgraphs and the heads' alignment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import incompatible
from .graphs import FLOAT, Shape

if TYPE_CHECKING:
    from onnx import FunctionProto, NodeProto, SparseTensorProto, TensorProto, ValueInfoProto

    from .inputs import TableInput


@dataclass
class CombinerGraph:
    """What a combiner adds to the merged graph."""

    nodes: list[NodeProto] = field(default_factory=list)
    initializers: list[TensorProto] = field(default_factory=list)
    outputs: list[ValueInfoProto] = field(default_factory=list)
    value_info: list[ValueInfoProto] = field(default_factory=list)
    sparse_initializers: list[SparseTensorProto] = field(default_factory=list)
    functions: list[FunctionProto] = field(default_factory=list)
    routes_read: str | None = None  # the tensor the routes (Slice, Gather, Transpose) read instead of the merged input (gate)
    tables_read: dict[str, str] = field(default_factory=dict)  # the same per table of an [inputs.*] mapping (gate)


class Builder:
    """Adds nodes with fresh names; `fresh` comes from the spliced graph so nothing collides."""

    def __init__(self, fresh: Callable[[str], str], opset: int, input_name: str = "features",
                 input_type: int = FLOAT, input_width: int = 0, source: Path | None = None,
                 node_prefix: str = "combine.") -> None:
        self.fresh = fresh
        self.source = source  # the mapping file, named by errors about names it chose
        self.node_prefix = node_prefix  # node names: "combine.<what>" in a combiner, "align.<what>" in a head
        self.opset = opset
        self.input_name = input_name  # the merged input [N, F], for passthrough columns and gate
        self.input_type = input_type
        self.input_width = input_width  # F
        self.tables: tuple[TableInput, ...] = ()  # an [inputs.*] mapping's tables (gate), else empty
        self.graph = CombinerGraph()

    def node(self, op: str, inputs: list[str], base: str, domain: str = "", **attrs: Any) -> str:
        from onnx import helper

        out = self.fresh(base)
        self.graph.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(f"{self.node_prefix}{base}"),
                                                 domain=domain, **attrs))
        return out

    def const(self, array: np.ndarray, base: str) -> str:
        from onnx import numpy_helper

        name = self.fresh(base)
        self.graph.initializers.append(numpy_helper.from_array(array, name))
        return name

    def output(self, name: str, elem_type: int, shape: Shape) -> None:
        from onnx import helper

        dims = None if shape is None else ["N" if i == 0 else d for i, d in enumerate(shape)]
        self.graph.outputs.append(helper.make_tensor_value_info(name, elem_type, dims))

    def rename(self, tensor: str, wanted: str) -> str:
        """Give a computed tensor its public output name with an Identity."""
        from onnx import helper

        if self.fresh(wanted) != wanted:
            raise incompatible(self.source, f"the merged output name {wanted!r} is already used by the merged input",
                               f"rename [input].name to something other than {wanted!r}")
        self.graph.nodes.append(helper.make_node("Identity", [tensor], [wanted], name=self.fresh(f"output.{wanted}")))
        return wanted

    def reduce(self, op: str, x: str, axis: int, keepdims: int, base: str) -> str:
        """ReduceSum/ReduceMax over one axis: axes became an input in opset 13 (Sum) and 18 (the others)."""
        if self.opset >= (13 if op == "ReduceSum" else 18):
            return self.node(op, [x, self.const(np.array([axis], np.int64), "axes")], base, keepdims=keepdims)
        return self.node(op, [x], base, axes=[axis], keepdims=keepdims)

    def unsqueeze(self, x: str, axes: list[int], base: str, axes_base: str = "axes") -> str:
        """Unsqueeze: axes became an input in opset 13."""
        if self.opset >= 13:
            return self.node("Unsqueeze", [x, self.const(np.array(axes, np.int64), axes_base)], base)
        return self.node("Unsqueeze", [x], base, axes=axes)

    def reshape(self, x: str, shape: list[int], base: str) -> str:
        return self.node("Reshape", [x, self.const(np.array(shape, np.int64), "shape")], base)
