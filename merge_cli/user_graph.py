"""The onnx combiner: the user's own graph, fed each model's head under the model's name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .builder import Builder
from .combining import Head, UserGraph, cast, head_shape_text
from .errors import bad_input, incompatible
from .graphs import NUMPY_OF_TYPE, Shape, TensorInfo, default_opset, fed_inputs, graph_names, tensor_info
from .mapping import FeatureMapping, ModelSpec
from .parts import Part, checked_model


def read_user_graph(path: Path, mapping: FeatureMapping) -> UserGraph:
    """Load `[combiner] path` safely; its inputs must be named after the models (or the merged input)."""
    from .model_io import check_model, load_model

    loaded = load_model(path)
    model = checked_model(loaded)
    check_model(model, path, full=True)  # declared shapes its own nodes contradict: else the merged file is blamed
    names = [m.name for m in mapping.models]
    inputs = []
    for vi in fed_inputs(model.graph):
        info = tensor_info(vi)
        if vi.name not in names and vi.name not in {i.name for i in mapping.inputs.items}:
            raise incompatible(path, f"the combiner's input {vi.name!r} is not a model's name",
                               f"name its inputs after the models ({', '.join(names)}): each gets that model's output")
        if info is None:
            raise incompatible(path, f"the combiner's input {vi.name!r} is not a tensor")
        inputs.append(info)
    if not inputs:
        raise bad_input(path, "the combiner graph has no inputs", f"give it inputs named {', '.join(names)}")
    outputs = [tensor_info(o) for o in model.graph.output]
    if not outputs or any(o is None for o in outputs):
        raise incompatible(path, "the combiner graph must have tensor outputs only")
    prefix = "combiner"
    while prefix in names:  # "<model>/" prefixes the parts: never share one
        prefix += "_"
    spec = ModelSpec(name=prefix, path=path, routes=())
    part = Part(spec, loaded, model, inputs, [o for o in outputs if o is not None], head=outputs[0],  # type: ignore[arg-type]
                opset_from=default_opset(model))
    return UserGraph(part, prefix)


def build_onnx(user: UserGraph | None, heads: list[Head], b: Builder) -> None:
    """Feed each model's head to the input named after it; the graph's outputs become the merged outputs."""
    from onnx import helper

    assert user is not None
    graph = user.part.model.graph
    by_model = {h.model: h for h in heads}
    p = f"{user.prefix}/"
    names = graph_names(graph)
    for name in sorted(names):
        if b.fresh(name) != name:
            raise incompatible(user.part.source.path, f"the combiner's name {name!r} collides with the merged graph")
    for info in user.part.inputs:
        if info.name in by_model:
            h = by_model[info.name]
            fed = cast(b, h.tensor, h.elem_type, info.elem_type, f"combiner.{h.model}")
            check_input_shape(info, h.shape, user.part.source.path, h.model)
        else:
            fed = cast(b, b.input_name, b.input_type, info.elem_type, "combiner.input")
        b.graph.nodes.append(helper.make_node("Identity", [fed], [p + info.name],
                                              name=b.fresh(f"combiner.feed.{info.name}")))
    inputs = {p + i.name for i in user.part.inputs}
    b.graph.nodes.extend(graph.node)
    b.graph.initializers.extend(graph.initializer)
    b.graph.sparse_initializers.extend(graph.sparse_initializer)
    b.graph.value_info.extend(vi for vi in graph.input if vi.name in inputs)
    b.graph.value_info.extend(graph.value_info)
    b.graph.functions.extend(user.part.model.functions)
    for out in user.part.outputs:  # read before prefixing: the public names
        b.output(b.rename(p + out.name, out.name), out.elem_type, out.shape)


def check_input_shape(info: TensorInfo, shape: Shape, path: Path, model: str) -> None:
    """The combiner's input fits the model's head: same rank, and the same size wherever both fix one
    (a mismatch found later would fail the merged graph's checker and blame the output file)."""
    if info.shape is None or shape is None:
        return
    if len(info.shape) != len(shape):
        raise incompatible(path, f"the combiner's input {model!r} has rank {len(info.shape)}, "
                           f"but {model} gives {head_shape_text(shape)}", "declare the input with the model's output shape")
    if any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(info.shape[1:], shape[1:], strict=True)):
        raise incompatible(path, f"the combiner's input {model!r} is {head_shape_text(info.shape)}, "
                           f"but {model} gives {head_shape_text(shape)}", "declare the input with the model's output shape")


def reference_onnx(user: UserGraph | None, heads: list[Head], arrays: list[np.ndarray],
                   rows: np.ndarray) -> dict[str, np.ndarray]:
    """The user's ORIGINAL combiner file run by onnxruntime on the parts' outputs."""
    from .runtime import run_file

    assert user is not None
    by_model = dict(zip((h.model for h in heads), arrays, strict=True))
    feeds: dict[str, np.ndarray] = {}
    for info in user.part.inputs:
        value = by_model.get(info.name, rows)
        feeds[info.name] = value.astype(NUMPY_OF_TYPE.get(info.elem_type, np.float32))
    return run_file(user.part.source.path, feeds, [o.name for o in user.part.outputs])
