"""Combiner subgraphs that turn the parts' outputs into the merged outputs, each with a numpy reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import incompatible
from .mapping import CombinerSpec, FeatureMapping
from .normalize import DOUBLE, FLOAT, INT64, STRING, Part, Shape

if TYPE_CHECKING:
    from onnx import NodeProto, TensorProto, ValueInfoProto

Source = Path | None  # the file errors are reported against (the mapping)
ELEMENTWISE = ("mean", "weighted", "sum", "max", "min")
NUMPY_TYPES = {FLOAT: np.float32, DOUBLE: np.float64}


@dataclass(frozen=True)
class Head:
    """One part's contribution to the combiner: the tensor it feeds in and what it means."""

    model: str
    tensor: str  # name in the merged graph
    elem_type: int
    shape: Shape
    weight: float | None
    task: str
    classes: tuple[int, ...] | tuple[str, ...] | None
    columns: tuple[int, ...]  # the merged input's columns this part reads (for gate)

    @staticmethod
    def of(part: Part) -> Head:
        return Head(part.name, f"{part.name}/{part.head.name}", part.head.elem_type, part.head.shape,
                    part.spec.weight, part.task, part.classes, part.spec.columns)


@dataclass
class CombinerGraph:
    """What a combiner adds to the merged graph."""

    nodes: list[NodeProto] = field(default_factory=list)
    initializers: list[TensorProto] = field(default_factory=list)
    outputs: list[ValueInfoProto] = field(default_factory=list)


class Builder:
    """Adds nodes with fresh names; `fresh` comes from the spliced graph so nothing collides."""

    def __init__(self, fresh: Callable[[str], str], opset: int) -> None:
        self.fresh = fresh
        self.opset = opset
        self.graph = CombinerGraph()

    def node(self, op: str, inputs: list[str], base: str, domain: str = "", **attrs: Any) -> str:
        from onnx import helper

        out = self.fresh(base)
        self.graph.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(f"combine.{base}"),
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
            raise incompatible(None, f"the merged output name {wanted!r} is already used by the merged input",
                               f"rename [input].name to something other than {wanted!r}")
        self.graph.nodes.append(helper.make_node("Identity", [tensor], [wanted], name=self.fresh(f"output.{wanted}")))
        return wanted


# ---------------------------------------------------------------------------- shared checks


def promoted_type(heads: list[Head]) -> int:
    """float64 if any part gives float64, else float32."""
    return DOUBLE if any(h.elem_type == DOUBLE for h in heads) else FLOAT


def check_same_shapes(heads: list[Head], source: Source) -> Shape:
    """Shapes must match exactly: [N,1] with [N,2] (or [N] with [N,1]) would silently broadcast."""
    first = heads[0]
    shape = first.shape
    for h in heads[1:]:
        if shape is None or h.shape is None:
            shape = shape or h.shape
            continue
        if len(shape) != len(h.shape) or any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(shape[1:], h.shape[1:], strict=True)
        ):
            raise incompatible(source, f"outputs have different shapes: {first.model} gives {_show(first.shape)}, "
                               f"{h.model} gives {_show(h.shape)}",
                               "choose outputs of one shape (output = ...) or use kind = \"concat\"")
        shape = tuple(a if isinstance(a, int) else b for a, b in zip(shape, h.shape, strict=True))
    return shape


def check_same_classes(heads: list[Head], source: Source) -> tuple[int, ...] | tuple[str, ...]:
    first = heads[0]
    assert first.classes is not None
    for h in heads[1:]:
        if h.classes != first.classes:
            raise incompatible(source, f"classifiers disagree on classes: {first.model} has {list(first.classes)}, "
                               f"{h.model} has {list(h.classes or ())}",
                               "merge classifiers trained on the same classes (or give classes = [...] per model)")
    return first.classes


def _show(shape: Shape) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join("N" if i == 0 and not isinstance(d, int) else str(d) if d is not None else "?"
                           for i, d in enumerate(shape)) + "]"


def task_of(heads: list[Head], kind: str, source: Source) -> str:
    tasks = {h.task for h in heads}
    if len(tasks) > 1 and kind != "concat":
        kinds = ", ".join(f"{h.model} is a {'classifier' if h.task == 'classification' else 'regressor'}" for h in heads)
        raise incompatible(source, f"cannot {kind} a classifier with a regressor ({kinds})",
                           'use kind = "concat" to put their outputs side by side')
    return tasks.pop() if len(tasks) == 1 else "mixed"


def normalized_weights(heads: list[Head], kind: str) -> np.ndarray:
    if kind != "weighted":
        return np.full(len(heads), 1.0 / len(heads))
    w = np.array([h.weight if h.weight is not None else 0.0 for h in heads], dtype=np.float64)
    return w / w.sum()


# ---------------------------------------------------------------------------- element-wise and concat


def build_elementwise(spec: CombinerSpec, heads: list[Head], b: Builder, source: Source) -> None:
    task = task_of(heads, spec.kind, source)
    dtype = promoted_type(heads)
    shape = check_same_shapes(heads, source)
    xs = [cast(b, h.tensor, h.elem_type, dtype, h.model) for h in heads]
    if spec.kind in ("mean", "sum"):
        combined = b.node("Sum", xs, "sum")
        if spec.kind == "mean":
            n = b.const(np.array(len(xs), dtype=NUMPY_TYPES[dtype]), "count")
            combined = b.node("Div", [combined, n], "mean")
    elif spec.kind == "weighted":
        w = normalized_weights(heads, spec.kind).astype(NUMPY_TYPES[dtype])
        scaled = [b.node("Mul", [x, b.const(np.array(wi), f"{h.model}.weight")], f"{h.model}.weighted")
                  for x, wi, h in zip(xs, w, heads, strict=True)]
        combined = b.node("Sum", scaled, "weighted")
    else:
        combined = b.node("Max" if spec.kind == "max" else "Min", xs, spec.kind)
    if task == "classification":
        classes = check_same_classes(heads, source)
        emit_classifier_outputs(b, combined, dtype, shape, classes)
    else:
        b.output(b.rename(combined, "prediction"), dtype, shape)


def emit_classifier_outputs(b: Builder, probabilities: str, dtype: int, shape: Shape,
                            classes: tuple[int, ...] | tuple[str, ...]) -> None:
    """`label` = classes[argmax(probabilities)], `probabilities` as given."""
    index = b.node("ArgMax", [probabilities], "argmax", axis=1, keepdims=0)
    table = b.const(class_array(classes), "classes")
    label = b.node("Gather", [table, index], "label_value", axis=0)
    b.output(b.rename(label, "label"), STRING if isinstance(classes[0], str) else INT64, (None,))
    b.output(b.rename(probabilities, "probabilities"), dtype, shape if shape else (None, len(classes)))


def class_array(classes: tuple[int, ...] | tuple[str, ...]) -> np.ndarray:
    if isinstance(classes[0], str):
        return np.array(classes, dtype=object)
    return np.array(classes, dtype=np.int64)


def build_concat(spec: CombinerSpec, heads: list[Head], b: Builder, source: Source) -> None:
    dtype = promoted_type(heads)
    ranks = {len(h.shape) for h in heads if h.shape is not None}
    if len(ranks) > 1:
        raise incompatible(source, "concat needs outputs of one rank: "
                           + ", ".join(f"{h.model} gives {_show(h.shape)}" for h in heads))
    xs = [cast(b, h.tensor, h.elem_type, dtype, h.model) for h in heads]
    if ranks == {1}:
        xs = [b.node("Unsqueeze", [x, b.const(np.array([1], np.int64), "axes")], f"{h.model}.column")
              if b.opset >= 13 else b.node("Unsqueeze", [x], f"{h.model}.column", axes=[1])
              for x, h in zip(xs, heads, strict=True)]
    combined = b.node("Concat", xs, "concat", axis=-1)
    widths = [h.shape[-1] if h.shape and len(h.shape) > 1 else 1 if h.shape else None for h in heads]
    last = sum(w for w in widths if isinstance(w, int)) if all(isinstance(w, int) for w in widths) else None
    rank = ranks.pop() if ranks else 2
    shape = (None,) * (max(rank, 2) - 1) + (last,)
    b.output(b.rename(combined, "prediction"), dtype, shape)


def cast(b: Builder, tensor: str, have: int, want: int, model: str) -> str:
    if have == want:
        return tensor
    return b.node("Cast", [tensor], f"{model}.as_{'float64' if want == DOUBLE else 'float32'}", to=want)


# ---------------------------------------------------------------------------- numpy references


def reference_elementwise(spec: CombinerSpec, heads: list[Head], arrays: list[np.ndarray],
                          rows: np.ndarray) -> dict[str, np.ndarray]:
    """What build_elementwise computes, in numpy, from the parts' outputs run separately."""
    dtype = NUMPY_TYPES[promoted_type(heads)]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise incompatible(None, "the parts' outputs have different shapes when run: "
                           + ", ".join(f"{h.model} {list(a.shape)}" for h, a in zip(heads, arrays, strict=True)))
    xs = [a.astype(dtype) for a in arrays]
    if spec.kind in ("mean", "sum"):
        out = xs[0].copy()
        for x in xs[1:]:
            out = out + x
        if spec.kind == "mean":
            out = out / dtype(len(xs))
    elif spec.kind == "weighted":
        w = normalized_weights(heads, spec.kind).astype(dtype)
        out = xs[0] * w[0]
        for x, wi in zip(xs[1:], w[1:], strict=True):
            out = out + x * wi
    else:
        out = np.maximum.reduce(xs) if spec.kind == "max" else np.minimum.reduce(xs)
    if heads[0].task == "classification":
        assert heads[0].classes is not None
        return {"label": class_array(heads[0].classes)[np.argmax(out, axis=1)], "probabilities": out}
    return {"prediction": out}


def reference_concat(spec: CombinerSpec, heads: list[Head], arrays: list[np.ndarray],
                     rows: np.ndarray) -> dict[str, np.ndarray]:
    dtype = NUMPY_TYPES[promoted_type(heads)]
    xs = [a.astype(dtype).reshape(len(a), -1) if a.ndim == 1 else a.astype(dtype) for a in arrays]
    return {"prediction": np.concatenate(xs, axis=-1)}


# ---------------------------------------------------------------------------- registry

Build = Callable[[CombinerSpec, list[Head], Builder, Source], None]
# (spec, heads, each part's head output, the merged input rows) -> expected merged outputs
Reference = Callable[[CombinerSpec, list[Head], list[np.ndarray], np.ndarray], dict[str, np.ndarray]]

COMBINERS: dict[str, tuple[Build, Reference]] = {
    **{kind: (build_elementwise, reference_elementwise) for kind in ELEMENTWISE},
    "concat": (build_concat, reference_concat),
}


def build_combiner(mapping: FeatureMapping, heads: list[Head], fresh: Callable[[str], str], opset: int) -> CombinerGraph:
    spec = mapping.combiner
    if spec.kind not in COMBINERS:
        raise incompatible(mapping.source, f"combiner {spec.kind!r} is not available yet")
    builder = Builder(fresh, opset)
    COMBINERS[spec.kind][0](spec, heads, builder, mapping.source)
    return builder.graph


def reference(spec: CombinerSpec, heads: list[Head], arrays: list[np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The combiner's outputs computed in numpy from the parts' outputs (run separately)."""
    return COMBINERS[spec.kind][1](spec, heads, arrays, rows)
