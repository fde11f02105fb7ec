"""Splice the parts under the merged inputs: columns of the tables (and a Cast) or a whole tensor per model
input, each graph under `<name>/`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .combiners import build_combiner
from .combining import Head, Prepared
from .convert import Target
from .errors import incompatible
from .graphs import (
    INPUT_TYPE_OF_DTYPE,
    ROUTABLE_TYPES,
    STRING,
    TensorInfo,
    copied,
    graph_names,
    is_default_domain,
    shape_text,
    subgraphs,
)
from .inputs import MergedInputs, TableInput, TensorInput, family
from .mapping import FeatureMapping, Route
from .naming import unique_name
from .parts import Part
from .split_routes import Segment, SplitCandidate, split_routes

if TYPE_CHECKING:
    from onnx import FunctionProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto



@dataclass
class Spliced:
    """The merged graph before the combiner: nodes, initializers and the parts' value infos."""

    inputs: list[ValueInfoProto]
    nodes: list[NodeProto] = field(default_factory=list)
    initializers: list[TensorProto] = field(default_factory=list)
    sparse_initializers: list[object] = field(default_factory=list)
    value_info: list[ValueInfoProto] = field(default_factory=list)
    functions: list[FunctionProto] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    columns_first: dict[str, str] = field(default_factory=dict)  # a table -> it transposed, once a route needs it

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
    """The merged inputs -> per model input its columns (Slice or Gather, see route; many runs of one table:
    one Split, see split_routes) [-> Cast], or a whole tensor [-> Cast] -> each prefixed graph."""
    from onnx import helper

    # A part with a fixed batch size fixes the merged model's too (check_batches warned about it).
    batch = next((p.batch for p in parts if p.batch is not None), "N")
    bound = [(part, info, r) for part in parts for info, r in bound_routes(part)]
    inputs = [helper.make_tensor_value_info(item.name, INPUT_TYPE_OF_DTYPE[item.dtype], merged_shape(item, bound, batch, mapping))
              for item in mapping.inputs.items]
    out = Spliced(inputs=inputs, names={i.name for i in inputs})
    opset = next((e.version for p in parts for e in p.model.opset_import if is_default_domain(e.domain)), 1)
    for part in parts:
        out.names.update(graph_names(part.model.graph))
    for part, info, r in bound:  # every route checked before any is built: the first bad one is the error
        (check_whole if r.whole is not None else check_columns)(part, info, r, mapping)
    fed = split_routes(out, [c for part, info, r in bound if (c := split_candidate(part, info, r, mapping))], opset)
    for part in parts:
        for info, r in bound_routes(part):
            target = f"{part.name}/{info.name}"
            if r.whole is not None:
                feed_whole(out, part, info, r.whole, target, mapping)
            elif target not in fed:
                feed_columns(out, part, info, r, target, mapping, opset)
        prefix = f"{part.name}/"
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


def _key(part: Part, info: TensorInfo, r: Route) -> str:
    """The mapping key that binds this model input, for error lines."""
    if r.input is None:
        return f"models.{part.name}.{'input' if r.whole is not None else 'columns'}"
    return f"models.{part.name}.inputs.{r.input}"


def _type_name(elem_type: int) -> str:
    from onnx import TensorProto

    return str(TensorProto.DataType.Name(elem_type)).lower()


def check_columns(part: Part, info: TensorInfo, r: Route, mapping: FeatureMapping) -> None:
    """The columns bound to a model input fit it: string columns for strings only, numbers for numbers, and
    as many as an [N, k] input takes (one for an [N] input)."""
    inputs, key, path = mapping.inputs, _key(part, info, r), part.source.path
    kinds = {family(inputs.dtype_of(c)) for c in r.columns}
    if info.elem_type == STRING and kinds != {"string"}:
        raise incompatible(mapping.source, f"{key}: numeric columns cannot feed string input {info.name!r} of "
                           f"{path.name}", "bind string columns (a table with dtype = \"string\") to it")
    if info.elem_type != STRING and "string" in kinds:
        column = next(inputs.columns[c] for c in r.columns if inputs.dtype_of(c) == "string")
        raise incompatible(mapping.source, f"{key}: string column {column!r} cannot feed {_type_name(info.elem_type)} "
                           f"input {info.name!r} of {path.name}", "bind numeric columns to it, or route the string "
                           "column to the model's string input")
    if info.elem_type not in ROUTABLE_TYPES and info.elem_type != STRING:
        raise incompatible(path, f"input {info.name!r} has element type {_type_name(info.elem_type)}; "
                           "only numeric and string inputs can take columns")
    scalar = info.rank == 1
    if info.rank not in (None, 1, 2):
        raise incompatible(mapping.source, f"{key}: input {info.name!r} of {path.name} has shape "
                           f"{shape_text(info.shape, 'unknown')}; only [N, k] (or [N] for one column) inputs can take columns",
                           "declare an [inputs.<name>] tensor with its shape and bind it whole (input = \"<name>\")")
    if scalar and len(r.columns) != 1:
        raise incompatible(path, f"input {info.name!r} is [N] (one value per row) but "
                           f"{len(r.columns)} columns are mapped to it", "map exactly one column to it")
    if info.rank == 2 and isinstance(info.shape[1], int) and info.shape[1] != len(r.columns):  # type: ignore[index]
        raise incompatible(mapping.source, f"models.{part.name}: input {info.name!r} takes "
                           f"{info.shape[1]} columns but {len(r.columns)} are mapped",  # type: ignore[index]
                           f"map exactly {info.shape[1]} columns to it")  # type: ignore[index]


def split_candidate(part: Part, info: TensorInfo, r: Route, mapping: FeatureMapping) -> SplitCandidate | None:
    """The route as a segment a Split can feed (consecutive columns of one table into an [N, k] input, one column
    into an [N] input), or None."""
    if r.whole is not None:
        return None
    pieces = _by_table(mapping.inputs, r.columns)
    if len(pieces) != 1:
        return None
    table, columns = pieces[0]
    if list(columns) != list(range(columns[0], columns[0] + len(columns))):
        return None
    return SplitCandidate(table, info.elem_type, Segment(columns[0], columns[-1] + 1, f"{part.name}/{info.name}"),
                          flat=info.rank == 1)


def feed_columns(out: Spliced, part: Part, info: TensorInfo, r: Route, target: str, mapping: FeatureMapping,
                 opset: int) -> None:
    """A model input fed columns (check_columns passed): per table a Slice or Gather of its columns, a Cast to
    the input's type, and a Concat when they come from several tables."""
    from onnx import helper

    inputs, scalar = mapping.inputs, info.rank == 1
    base = f"{part.name}.{info.name}"
    pieces = _by_table(inputs, r.columns)
    results = []
    for i, (table, columns) in enumerate(pieces):
        whole = len(pieces) == 1 and INPUT_TYPE_OF_DTYPE[table.dtype] == info.elem_type
        gathered = target if whole else out.fresh(f"{base}.gathered" if len(pieces) == 1 else f"{base}.{table.name}")
        route(out, table.name, columns, scalar, gathered, base if i == 0 else f"{base}.{table.name}", opset,
              transposed=table.dtype != "string", width=len(table.columns))
        if INPUT_TYPE_OF_DTYPE[table.dtype] != info.elem_type:
            cast = target if len(pieces) == 1 else out.fresh(f"{base}.{table.name}.cast")
            name = f"cast.{base}" if len(pieces) == 1 else f"cast.{base}.{table.name}"
            out.nodes.append(helper.make_node("Cast", [gathered], [cast], to=info.elem_type, name=out.fresh(name)))
            gathered = cast
        results.append(gathered)
    if len(results) > 1:
        out.nodes.append(helper.make_node("Concat", results, [target], axis=0 if scalar else 1,
                                          name=out.fresh(f"concat.{base}")))


def _by_table(inputs: MergedInputs, columns: tuple[int, ...]) -> list[tuple[TableInput, tuple[int, ...]]]:
    """Consecutive runs of columns from one table, as (table, indices in that table), in the model's order."""
    pieces: list[tuple[TableInput, list[int]]] = []
    for c in columns:
        table, index = inputs.owners[c]
        if pieces and pieces[-1][0] is table:
            pieces[-1][1].append(index)
        else:
            pieces.append((table, [index]))
    return [(t, tuple(ix)) for t, ix in pieces]


def check_whole(part: Part, info: TensorInfo, r: Route, mapping: FeatureMapping) -> None:
    """A whole merged tensor fits the model input it is bound to: strings feed strings only."""
    item = mapping.inputs.named(r.whole or "")
    assert item is not None
    key, have = _key(part, info, Route(None, (), item.name)), INPUT_TYPE_OF_DTYPE[item.dtype]
    if info.elem_type != have and STRING in (info.elem_type, have):
        raise incompatible(mapping.source, f"{key}: input {item.name!r} is {item.dtype} but input {info.name!r} of "
                           f"{part.source.path.name} is {_type_name(info.elem_type)}",
                           "strings feed string inputs only: bind another input, or change the dtype of "
                           f"inputs.{item.name}")


def feed_whole(out: Spliced, part: Part, info: TensorInfo, name: str, target: str, mapping: FeatureMapping) -> None:
    """A model input bound to a whole merged tensor (check_whole passed): the same type passes as it is,
    numbers are cast."""
    from onnx import helper

    item = mapping.inputs.named(name)
    assert item is not None
    if info.elem_type == INPUT_TYPE_OF_DTYPE[item.dtype]:
        out.nodes.append(helper.make_node("Identity", [name], [target], name=out.fresh(f"route.{part.name}.{info.name}")))
    else:
        out.nodes.append(helper.make_node("Cast", [name], [target], to=info.elem_type,
                                          name=out.fresh(f"cast.{part.name}.{info.name}")))


def merged_shape(item: TensorInput | TableInput, bound: list[tuple[Part, TensorInfo, Route]], batch: int | str,
                 mapping: FeatureMapping) -> list[int | str]:
    """A table is [batch, k]; a tensor has its declared shape, or the one every model bound to it agrees on.

    Each bound model's declared shape must fit: same rank, and equal sizes wherever both are fixed.
    """
    if isinstance(item, TableInput):
        return [batch, len(item.columns)]
    users = [(p, info, r) for p, info, r in bound if r.whole == item.name]
    shape: list[int | str] | None = None if item.shape is None else [batch, *item.shape[1:]]
    source = f"inputs.{item.name}.shape"
    for part, info, r in users:
        if info.shape is None:
            continue
        theirs = list(info.shape)
        if shape is None:
            shape, source = [batch, *(d if d else f"{item.name}_{i + 1}" for i, d in enumerate(theirs[1:]))], \
                f"{part.name}'s input {info.name!r}"
            continue
        fits = len(theirs) == len(shape) and all(not isinstance(a, int) or not isinstance(b, int) or a == b
                                                  for a, b in zip(theirs[1:], shape[1:], strict=True))
        if not fits:
            raise incompatible(mapping.source, f"{_key(part, info, r)}: input {info.name!r} of {part.source.path.name} "
                               f"has shape {shape_text(info.shape, 'unknown')} but {item.name!r} has "
                               f"{shape_text(shape, 'unknown')} (from {source})",
                               "bind models whose inputs have the same shape, or declare separate [inputs.*] tensors")
        shape = [b if isinstance(b, int) else (a if isinstance(a, int) else b)
                 for a, b in zip(theirs, shape, strict=True)]
        shape[0] = batch
    if shape is None:
        raise incompatible(mapping.source, f"inputs.{item.name}: no shape is known",
                           f'give it one: shape = ["N", ...] in [inputs.{item.name}]')
    return shape


def route(out: Spliced, source: str, columns: tuple[int, ...], scalar: bool, result: str, base: str,
          opset: int, transposed: bool = True, width: int | None = None) -> None:
    """Add the nodes that take `columns` of `source` [N, F] into `result`, as cheaply as onnxruntime can.

    onnxruntime's Gather(axis=1) copies element by element (~1 ms for 4096 rows x 16 columns on this
    machine, as long as a small MLP takes), so: a run of consecutive columns is one Slice (a copy per
    row); other sets are gathered as rows of the transposed input (one Transpose of the input, shared
    by every route, a Gather(axis=0) and a Transpose back: ~20x faster than Gather(axis=1) at 4096
    rows, ~1 us slower at 1 row). One column for an [N] input stays a Gather of that column.
    Not for strings (`transposed` False): onnxruntime 1.32's Gather(axis=0) of a transposed string tensor
    returns empty strings after the first row, so string columns are one Gather(axis=1).
    All `width` columns of the source in order are an Identity: onnxruntime opens 16,000 Slices in 8.5 s,
    16,000 Identities in 0.4 s (a mapping of one-column [inputs.*] tables).
    """
    from onnx import helper

    def const(values: list[int] | int, what: str) -> str:
        name = out.fresh(f"{base}.{what}")
        out.initializers.append(_numpy_tensor(np.array(values, dtype=np.int64), name))
        return name

    name = out.fresh(f"route.{base}")
    if not scalar and list(columns) == list(range(width or -1)):
        out.nodes.append(helper.make_node("Identity", [source], [result], name=name))
    elif scalar:
        out.nodes.append(helper.make_node("Gather", [source, const(columns[0], "column")], [result], axis=1, name=name))
    elif not transposed and list(columns) != list(range(columns[0], columns[0] + len(columns))):
        out.nodes.append(helper.make_node("Gather", [source, const(list(columns), "columns")], [result], axis=1,
                                          name=name))
    elif list(columns) == list(range(columns[0], columns[0] + len(columns))):
        start, end = [columns[0]], [columns[-1] + 1]
        if opset >= 10:
            inputs = [source, const(start, "start"), const(end, "end"), const([1], "axis")]
            out.nodes.append(helper.make_node("Slice", inputs, [result], name=name))
        else:  # Slice-1 takes them as attributes
            out.nodes.append(helper.make_node("Slice", [source], [result], starts=start, ends=end, axes=[1], name=name))
    else:
        if source not in out.columns_first:
            out.columns_first[source] = out.fresh(f"{source}.columns_first")
            out.nodes.append(helper.make_node("Transpose", [source], [out.columns_first[source]], perm=[1, 0],
                                              name=out.fresh(f"route.{source}.transpose")))
        rows = out.fresh(f"{base}.rows")
        out.nodes.append(helper.make_node("Gather", [out.columns_first[source], const(list(columns), "columns")],
                                          [rows], axis=0, name=name))
        out.nodes.append(helper.make_node("Transpose", [rows], [result], perm=[1, 0],
                                          name=out.fresh(f"route.{base}.transpose")))


def match_routes(part: Part) -> list[tuple[TensorInfo, tuple[int, ...]]]:
    """Each of the model's inputs fed columns, with its columns (inputs bound to a whole tensor left out)."""
    return [(info, r.columns) for info, r in bound_routes(part) if r.whole is None]


def bound_routes(part: Part) -> list[tuple[TensorInfo, Route]]:
    """Pair each of the model's inputs with what the mapping binds to it; every input must be fed, exactly once."""
    spec, path = part.spec, part.source.path
    by_name = {i.name: i for i in part.inputs}
    if len(spec.routes) == 1 and spec.routes[0].input is None:
        if len(part.inputs) != 1:
            names = ", ".join(by_name)
            given = "input binds one" if spec.routes[0].whole is not None else "columns maps one"
            raise incompatible(path, f"models.{spec.name}: the model has {len(part.inputs)} inputs ({names}) "
                               f"but {given}", f"use inputs = {{ {names.split(', ')[0]} = [...], ... }} instead")
        return [(part.inputs[0], spec.routes[0])]
    routes = []
    for r in spec.routes:
        if r.input not in by_name:
            raise incompatible(path, f"models.{spec.name}.inputs.{r.input}: the model has no input "
                               f"{r.input!r}", f"its inputs are: {', '.join(by_name)}")
        routes.append((by_name[r.input], r))
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
                     {i.name for i in spliced.inputs} | {t.name for t in (*spliced.initializers, *extra_initializers)})
    graph = helper.make_graph(nodes, name, spliced.inputs, outputs,
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
            node.input[:] = [combined.routes_read if x == mapping.inputs.items[0].name else x for x in node.input]
    for node in spliced.nodes if combined.tables_read else ():  # gate on [inputs.*]: NaN filled per table
        node.input[:] = [combined.tables_read.get(x, x) for x in node.input]
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
