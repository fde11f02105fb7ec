"""Splice the parts under one shared input: its columns (and a Cast) per model input, each graph under `<name>/`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .combiners import Head, Prepared, build_combiner
from .convert import Target
from .errors import incompatible
from .graphs import DOUBLE, FLOAT, TensorInfo, copied, graph_names, is_default_domain, subgraphs
from .mapping import FeatureMapping
from .naming import unique_name
from .parts import Part

if TYPE_CHECKING:
    from onnx import FunctionProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto

ROUTABLE_TYPES = {1: "float32", 11: "float64", 10: "float16", 16: "bfloat16", 6: "int32", 7: "int64", 9: "bool"}


@dataclass
class Spliced:
    """The merged graph before the combiner: nodes, initializers and the parts' value infos."""

    input: ValueInfoProto
    nodes: list[NodeProto] = field(default_factory=list)
    initializers: list[TensorProto] = field(default_factory=list)
    sparse_initializers: list[object] = field(default_factory=list)
    value_info: list[ValueInfoProto] = field(default_factory=list)
    functions: list[FunctionProto] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    columns_first: str | None = None  # the shared input transposed, once a route needs it

    def fresh(self, base: str) -> str:
        """A tensor name not used anywhere in the graph yet."""
        return unique_name(base, self.names)


# ---------------------------------------------------------------------------- prefixing


def prefixed(part: Part) -> Part:
    """The part with every name in (a copy of) its graph under `<model>/`."""
    model = copied(part.model)
    prefix_model(model, f"{part.name}/")
    return replace(part, model=model)


def prefix_model(model: ModelProto, prefix: str) -> None:
    """Prefix every name the model defines - tensors, nodes, subgraph names, local functions - in place.

    Every tensor a part refers to is defined inside the part, so prefixing every non-empty tensor name
    at every scope is exactly right, outer-scope references from If/Loop/Scan bodies included (which
    onnx.compose.add_prefix misses when the reference is to an outer initializer).
    """
    renamed_functions = {(f.domain, f.name): prefix + f.name for f in model.functions}
    used_node_names: set[str] = set()
    _prefix_graph(model.graph, prefix, renamed_functions, used_node_names)
    for function in model.functions:
        function.name = prefix + function.name
        for node in function.node:
            _rename_call(node, renamed_functions)
            for g in subgraphs(node):
                _rename_calls_only(g, renamed_functions)


def _rename_call(node: NodeProto, renamed: dict[tuple[str, str], str]) -> None:
    new = renamed.get((node.domain, node.op_type))
    if new is not None:
        node.op_type = new


def _rename_calls_only(graph: GraphProto, renamed: dict[tuple[str, str], str]) -> None:
    for node in graph.node:
        _rename_call(node, renamed)
        for g in subgraphs(node):
            _rename_calls_only(g, renamed)


def _prefix_graph(graph: GraphProto, p: str, renamed: dict[tuple[str, str], str], used: set[str]) -> None:
    if graph.name:
        graph.name = p + graph.name
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.name:
            vi.name = p + vi.name
    for t in graph.initializer:
        t.name = p + t.name
    for s in graph.sparse_initializer:
        s.values.name = p + s.values.name
        if s.indices.name:
            s.indices.name = p + s.indices.name
    for qa in graph.quantization_annotation:
        qa.tensor_name = p + qa.tensor_name
        for entry in qa.quant_parameter_tensor_names:
            entry.value = p + entry.value
    for i, node in enumerate(graph.node):
        node.name = p + unique_name(node.name or f"{node.op_type}_{i}", used)
        node.input[:] = [p + x if x else x for x in node.input]
        node.output[:] = [p + x if x else x for x in node.output]
        _rename_call(node, renamed)
        for g in subgraphs(node):
            _prefix_graph(g, p, renamed, used)


# ---------------------------------------------------------------------------- routing


def splice(parts: list[Part], mapping: FeatureMapping) -> Spliced:
    """One shared input -> its columns (Slice or Gather, see route) [-> Cast] per model input -> each prefixed graph."""
    from onnx import TensorProto, helper

    spec = mapping.input
    dtype = FLOAT if spec.dtype == "float32" else DOUBLE
    # A part with a fixed batch size fixes the merged model's too (check_batches warned about it).
    batch = next((p.batch for p in parts if p.batch is not None), "N")
    shared = helper.make_tensor_value_info(spec.name, dtype, [batch, len(spec.columns)])
    out = Spliced(input=shared, names={spec.name})
    opset = next((e.version for p in parts for e in p.model.opset_import if is_default_domain(e.domain)), 1)
    for part in parts:
        out.names.update(graph_names(part.model.graph))
    for part in parts:
        routes = match_routes(part)
        prefix = f"{part.name}/"
        for info, columns in routes:
            target = prefix + info.name
            if info.elem_type not in ROUTABLE_TYPES:
                raise incompatible(part.source.path, f"input {info.name!r} has element type "
                                   f"{TensorProto.DataType.Name(info.elem_type)}; only numeric inputs can take columns")
            scalar = info.rank == 1
            if info.rank not in (None, 1, 2):
                raise incompatible(part.source.path, f"input {info.name!r} has rank {info.rank}; "
                                   "only [N, k] (or [N] for one column) inputs can take columns")
            if scalar and len(columns) != 1:
                raise incompatible(part.source.path, f"input {info.name!r} is [N] (one value per row) but "
                                   f"{len(columns)} columns are mapped to it", "map exactly one column to it")
            if info.rank == 2 and isinstance(info.shape[1], int) and info.shape[1] != len(columns):  # type: ignore[index]
                raise incompatible(mapping.source, f"models.{part.name}: input {info.name!r} takes "
                                   f"{info.shape[1]} columns but {len(columns)} are mapped",  # type: ignore[index]
                                   f"map exactly {info.shape[1]} columns to it")  # type: ignore[index]
            gathered = target if info.elem_type == dtype else out.fresh(f"{part.name}.{info.name}.gathered")
            route(out, spec.name, columns, scalar, gathered, f"{part.name}.{info.name}", opset)
            if gathered != target:
                out.nodes.append(helper.make_node("Cast", [gathered], [target], to=info.elem_type,
                                                  name=out.fresh(f"cast.{part.name}.{info.name}")))
        graph = part.model.graph
        real_inputs = {i.name for i in part.inputs}
        out.nodes.extend(graph.node)
        out.initializers.extend(graph.initializer)
        out.sparse_initializers.extend(graph.sparse_initializer)
        # The parts' inputs become inner tensors: keep their types as value_info.
        out.value_info.extend(vi for vi in graph.input if vi.name[len(prefix):] in real_inputs)
        out.value_info.extend(graph.value_info)
        out.functions.extend(part.model.functions)
    return out


def route(out: Spliced, source: str, columns: tuple[int, ...], scalar: bool, result: str, base: str,
          opset: int) -> None:
    """Add the nodes that take `columns` of `source` [N, F] into `result`, as cheaply as onnxruntime can.

    onnxruntime's Gather(axis=1) copies element by element (~1 ms for 4096 rows x 16 columns on this
    machine, as long as a small MLP takes), so: a run of consecutive columns is one Slice (a copy per
    row); other sets are gathered as rows of the transposed input (one Transpose of the input, shared
    by every route, a Gather(axis=0) and a Transpose back: ~20x faster than Gather(axis=1) at 4096
    rows, ~1 us slower at 1 row). One column for an [N] input stays a Gather of that column.
    """
    from onnx import helper

    def const(values: list[int] | int, what: str) -> str:
        name = out.fresh(f"{base}.{what}")
        out.initializers.append(_numpy_tensor(np.array(values, dtype=np.int64), name))
        return name

    name = out.fresh(f"route.{base}")
    if scalar:
        out.nodes.append(helper.make_node("Gather", [source, const(columns[0], "column")], [result], axis=1, name=name))
    elif list(columns) == list(range(columns[0], columns[0] + len(columns))):
        start, end = [columns[0]], [columns[-1] + 1]
        if opset >= 10:
            inputs = [source, const(start, "start"), const(end, "end"), const([1], "axis")]
            out.nodes.append(helper.make_node("Slice", inputs, [result], name=name))
        else:  # Slice-1 takes them as attributes
            out.nodes.append(helper.make_node("Slice", [source], [result], starts=start, ends=end, axes=[1], name=name))
    else:
        if out.columns_first is None:
            out.columns_first = out.fresh(f"{source}.columns_first")
            out.nodes.append(helper.make_node("Transpose", [source], [out.columns_first], perm=[1, 0],
                                              name=out.fresh(f"route.{source}.transpose")))
        rows = out.fresh(f"{base}.rows")
        out.nodes.append(helper.make_node("Gather", [out.columns_first, const(list(columns), "columns")], [rows], axis=0,
                                          name=name))
        out.nodes.append(helper.make_node("Transpose", [rows], [result], perm=[1, 0],
                                          name=out.fresh(f"route.{base}.transpose")))


def match_routes(part: Part) -> list[tuple[TensorInfo, tuple[int, ...]]]:
    """Pair each of the model's inputs with its mapped columns; every input must be fed, exactly once."""
    spec, path = part.spec, part.source.path
    by_name = {i.name: i for i in part.inputs}
    if len(spec.routes) == 1 and spec.routes[0].input is None:
        if len(part.inputs) != 1:
            names = ", ".join(by_name)
            raise incompatible(path, f"models.{spec.name}: the model has {len(part.inputs)} inputs ({names}) "
                               "but columns maps one", f"use inputs = {{ {names.split(', ')[0]} = [...], ... }} instead")
        return [(part.inputs[0], spec.routes[0].columns)]
    routes = []
    for route in spec.routes:
        if route.input not in by_name:
            raise incompatible(path, f"models.{spec.name}.inputs.{route.input}: the model has no input "
                               f"{route.input!r}", f"its inputs are: {', '.join(by_name)}")
        routes.append((by_name[route.input], route.columns))
    fed = {r.input for r in spec.routes}  # once: rebuilt per input it made 20,000 inputs quadratic
    unfed = [n for n in by_name if n not in fed]
    if unfed:
        raise incompatible(path, f"models.{spec.name}: input(s) {', '.join(unfed)} get no columns",
                           "map columns to every input of the model")
    return routes


def _numpy_tensor(array: np.ndarray, name: str) -> TensorProto:
    from onnx import numpy_helper

    return numpy_helper.from_array(array, name)


# ---------------------------------------------------------------------------- ordering


def toposort(nodes: list[NodeProto], available: set[str]) -> list[NodeProto]:
    """Order nodes so each comes after the producers of its inputs (and of names its subgraphs use)."""
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for o in node.output:
            if o:
                producer[o] = i
    deps: list[set[int]] = []
    for node in nodes:
        needed = {producer[x] for x in _used_names(node) if x in producer and x not in available}
        deps.append(needed)
    users: dict[int, list[int]] = defaultdict(list)
    pending = [0] * len(nodes)
    for i, d in enumerate(deps):
        d.discard(i)
        pending[i] = len(d)
        for j in d:
            users[j].append(i)
    ready = [i for i in range(len(nodes)) if pending[i] == 0]
    order: list[int] = []
    import heapq

    heapq.heapify(ready)  # smallest index first keeps the original order where it is already valid
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in users[i]:
            pending[j] -= 1
            if pending[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        stuck = next(nodes[i] for i in range(len(nodes)) if pending[i])
        raise incompatible(None, f"the merged graph has a cycle through node {stuck.name!r}")
    return [nodes[i] for i in order]


def _used_names(node: NodeProto) -> set[str]:
    used = {x for x in node.input if x}
    for g in subgraphs(node):
        used |= _graph_free_names(g)
    return used


def _graph_free_names(graph: GraphProto) -> set[str]:
    """Names a subgraph reads from outer scopes."""
    defined = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used |= {x for x in _used_names(node) if x not in defined}
        defined.update(node.output)
    used |= {o.name for o in graph.output if o.name not in defined}
    return used


def assemble(spliced: Spliced, extra_nodes: list[NodeProto], extra_initializers: list[TensorProto],
             outputs: list[ValueInfoProto], name: str) -> GraphProto:
    from onnx import helper

    nodes = toposort([*spliced.nodes, *extra_nodes],
                     {spliced.input.name} | {t.name for t in (*spliced.initializers, *extra_initializers)})
    graph = helper.make_graph(nodes, name, [spliced.input], outputs,
                              initializer=[*spliced.initializers, *extra_initializers],
                              value_info=spliced.value_info)
    graph.sparse_initializer.extend(spliced.sparse_initializers)
    return graph


# ---------------------------------------------------------------------------- the merged model


def merged_model(parts: list[Part], mapping: FeatureMapping, target: Target, keep_outputs: bool,
                 prepared: Prepared) -> tuple[ModelProto, list[Head]]:
    """The merged ModelProto (weights still by reference, provenance not yet set) and its combiner's heads."""
    from onnx import helper

    spliced = splice(parts, mapping)
    heads = [Head.of(p) for p in parts]
    combined = build_combiner(mapping, heads, spliced.fresh, target.opsets[""], prepared)
    if combined.routes_read:  # gate: the parts read the input with NaN filled in
        for node in spliced.nodes:
            node.input[:] = [combined.routes_read if x == mapping.input.name else x for x in node.input]
    spliced.value_info.extend(combined.value_info)
    spliced.sparse_initializers.extend(combined.sparse_initializers)
    spliced.functions.extend(combined.functions)
    outputs = list(combined.outputs)
    if keep_outputs:
        for part in parts:
            tensors = {f"{part.name}/{o.name}" for o in part.outputs}
            outputs.extend(o for o in part.model.graph.output if o.name in tensors)
    graph = assemble(spliced, combined.nodes, combined.initializers, outputs, "merged")
    model = helper.make_model(
        graph,
        ir_version=target.ir_version,
        opset_imports=[helper.make_opsetid(d, v) for d, v in target.opsets.items()],
        producer_name="merge-models",
        producer_version=__version__,
        doc_string=f"{mapping.combiner.kind} of {', '.join(p.name for p in parts)}, merged by merge-models",
    )
    model.functions.extend(spliced.functions)
    _declare_function_domains(model)
    return model, heads


def _declare_function_domains(model: ModelProto) -> None:
    """Local functions' domains need an opset_import entry too (one per domain)."""
    known = {e.domain for e in model.opset_import}
    for function in model.functions:
        if function.domain not in known:
            model.opset_import.add(domain=function.domain, version=1)
            known.add(function.domain)
