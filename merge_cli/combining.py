"""What every combiner shares: the heads it combines, the checks on them, the cast, the mean and the label."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .builder import Builder
from .errors import incompatible
from .graphs import DOUBLE, FLOAT, INT64, NUMPY_OF_TYPE, STRING, Classes, Shape, shape_text
from .parts import Part
from .stacking import StackModel

if TYPE_CHECKING:
    from .model_io import LoadedModel

Source = Path | None  # the file errors are reported against (the mapping)


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
    sources: tuple[tuple[str, int], ...] = ()  # the same columns as (table, index in it), for [inputs.*] mappings

    @staticmethod
    def of(part: Part) -> Head:
        sources = tuple(dict.fromkeys(s for r in part.spec.routes for s in r.sources))
        return Head(part.name, f"{part.name}/{part.head.name}", part.head.elem_type, part.head.shape,
                    part.spec.weight, part.task, part.classes, part.spec.columns, sources)


@dataclass(frozen=True)
class UserGraph:
    """The user's own combiner (kind = "onnx"), held as a part so it is converted and prefixed like one."""

    part: Part  # part.model is converted to the common opset and prefixed with `prefix/` before building
    prefix: str


@dataclass(frozen=True)
class Prepared:
    """What a combiner needs beyond the mapping: a stack fitted on data, or the user's graph."""

    stack: StackModel | None = None
    graph: UserGraph | None = None

    def parts(self) -> list[Part]:
        """The user's combiner graph as a part: converted to the common opset and prefixed like one."""
        return [self.graph.part] if self.graph else []

    def with_parts(self, parts: list[Part]) -> Prepared:
        """The same, its user graph replaced by `parts` (the graph converted and prefixed)."""
        if self.graph is None:
            return self
        (part,) = parts
        return replace(self, graph=replace(self.graph, part=part))

    def sources(self) -> list[LoadedModel]:
        """Files whose weights the merged model copies (by reference) besides the models'."""
        return [p.source for p in self.parts()]

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
            raise incompatible(source, f"outputs have different shapes: {first.model} gives {head_shape_text(first.shape)}, "
                               f"{h.model} gives {head_shape_text(h.shape)}",
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


def head_shape_text(shape: Shape) -> str:
    """A head's shape in messages: its batch dimension reads `N` unless the model fixes it."""
    if not shape:
        return shape_text(shape)
    return shape_text(("N" if not isinstance(shape[0], int) else shape[0], *shape[1:]))


def task_of(heads: list[Head], kind: str, source: Source) -> str:
    tasks = {h.task for h in heads}
    if len(tasks) > 1 and kind != "concat":
        kinds = ", ".join(f"{h.model} is a {'classifier' if h.task == 'classification' else 'regressor'}"
                          for h in heads)
        raise incompatible(source, f"cannot {kind} a classifier with a regressor ({kinds})",
                           'use kind = "concat" to put their outputs side by side')
    return tasks.pop() if len(tasks) == 1 else "mixed"


def normalized_weights(heads: list[Head], kind: str) -> np.ndarray:
    if kind != "weighted":
        return np.full(len(heads), 1.0 / len(heads))
    return shares([h.weight if h.weight is not None else 0.0 for h in heads])


def shares(weights: list[float]) -> np.ndarray:
    """Weights scaled to sum to 1 without overflow: 1e308 + 1e308 is inf, and w / inf is 0 for every w."""
    w = np.array(weights, dtype=np.float64)
    w = w / w.max()  # each <= 1 now, so the sum is at most len(w)
    return np.asarray(w / w.sum())


def mean(b: Builder, xs: list[str], dtype: int) -> str:
    """Sum, then divide by the count: the order numpy's reference (stacking.mean_of) sums in."""
    return b.node("Div", [b.node("Sum", xs, "sum"), b.const(np.array(len(xs), NUMPY_OF_TYPE[dtype]), "count")], "mean")


def emit_classifier_outputs(b: Builder, probabilities: str, dtype: int, shape: Shape, classes: Classes,
                            label: str | None = None) -> None:
    """The outputs `label` (classes[argmax(probabilities)] unless given) and `probabilities`."""
    if label is None:
        label = class_label(b, b.node("ArgMax", [probabilities], "argmax", axis=1, keepdims=0), classes)
    b.output(b.rename(label, "label"), STRING if isinstance(classes[0], str) else INT64, (None,))
    b.output(b.rename(probabilities, "probabilities"), dtype, shape if shape else (None, len(classes)))


def class_label(b: Builder, index: str, classes: Classes) -> str:
    """The class label at each row's class index."""
    return b.node("Gather", [b.const(class_array(classes), "classes"), index], "label_value", axis=0)


def classifier_result(probabilities: np.ndarray, classes: Classes | None) -> dict[str, np.ndarray]:
    """What emit_classifier_outputs gives, in numpy: the argmax's label and the probabilities."""
    assert classes is not None
    return {"label": class_array(classes)[np.argmax(probabilities, axis=1)], "probabilities": probabilities}


def class_array(classes: tuple[int, ...] | tuple[str, ...]) -> np.ndarray:
    if isinstance(classes[0], str):
        return np.array(classes, dtype=object)
    return np.array(classes, dtype=np.int64)


def cast(b: Builder, tensor: str, have: int, want: int, model: str) -> str:
    if have == want:
        return tensor
    return b.node("Cast", [tensor], f"{model}.as_{'float64' if want == DOUBLE else 'float32'}", to=want)


def vote_weights(heads: list[Head], kind: str, source: Source) -> np.ndarray:
    """Each model's `weight` (1 when not given), normalised to sum to 1."""
    w = [1.0 if h.weight is None else h.weight for h in heads]
    if not any(w):
        raise incompatible(source, f"combiner {kind}: the weights sum to 0",
                           "give at least one model a positive weight")
    return shares(w)


def classifier_heads(heads: list[Head], kind: str, source: Source) -> tuple[int, ...] | tuple[str, ...]:
    if task_of(heads, kind, source) != "classification":
        raise incompatible(source, f"combiner {kind} needs classifiers, and {heads[0].model} is a regressor",
                           'use kind = "mean" (or "weighted") for regressors')
    return check_same_classes(heads, source)
