"""Combiner subgraphs that turn the parts' outputs into the merged outputs, each with a numpy reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .builder import Builder, CombinerGraph
from .errors import bad_input, incompatible
from .graphs import (
    DOUBLE,
    FLOAT,
    INT64,
    NUMPY_OF_TYPE,
    STRING,
    Shape,
    TensorInfo,
    default_opset,
    fed_inputs,
    graph_names,
    tensor_info,
)
from .inputs import TableInput
from .mapping import CombinerSpec, FeatureMapping, ModelSpec
from .parts import Part, checked_model
from .stacking import EPS, StackModel, mean_of

if TYPE_CHECKING:

    from .model_io import LoadedModel

Source = Path | None  # the file errors are reported against (the mapping)
ELEMENTWISE = ("mean", "weighted", "sum", "max", "min")
NUMPY_TYPES = {FLOAT: np.float32, DOUBLE: np.float64}
TIE = 1e-6  # vote shares this close count as tied (they are sums of normalised weights)


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


# ---------------------------------------------------------------------------- element-wise and concat


def build_elementwise(spec: CombinerSpec, heads: list[Head], b: Builder, source: Source,
                      prepared: Prepared) -> None:
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
        if spec.kind in RENORMALISED:
            combined = renormalise(b, combined, dtype, len(classes))
        emit_classifier_outputs(b, combined, dtype, shape, classes)
    else:
        b.output(b.rename(combined, "prediction"), dtype, shape)


RENORMALISED = ("sum", "max", "min")  # on classifiers: rows scaled to sum to 1, so they stay probabilities


def renormalise(b: Builder, probabilities: str, dtype: int, classes: int) -> str:
    """Each row divided by its sum (argmax, so `label`, unchanged); a row of zeros (min of confident
    models that disagree) becomes uniform rather than 0/0."""
    total = b.reduce("ReduceSum", probabilities, 1, 1, "row_sum")
    scaled = b.node("Div", [probabilities, total], "renormalised")
    positive = b.node("Greater", [total, b.const(np.array(0, NUMPY_TYPES[dtype]), "zero")], "row_sum_positive")
    return b.node("Where", [positive, scaled, b.const(np.array(1 / classes, NUMPY_TYPES[dtype]), "uniform")],
                  "renormalised_probabilities")


def reference_renormalise(p: np.ndarray) -> np.ndarray:
    total = p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled: np.ndarray = np.where(total > 0, p / total, p.dtype.type(1 / p.shape[1])).astype(p.dtype)
    return scaled


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


def build_concat(spec: CombinerSpec, heads: list[Head], b: Builder, source: Source, prepared: Prepared) -> None:
    dtype = promoted_type(heads)
    ranks = {len(h.shape) for h in heads if h.shape is not None}
    if len(ranks) > 1:
        raise incompatible(source, "concat needs outputs of one rank: "
                           + ", ".join(f"{h.model} gives {_show(h.shape)}" for h in heads))
    xs = [cast(b, h.tensor, h.elem_type, dtype, h.model) for h in heads]
    if ranks == {1}:
        xs = [b.unsqueeze(x, [1], f"{h.model}.column") for x, h in zip(xs, heads, strict=True)]
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
                          rows: np.ndarray, prepared: Prepared) -> dict[str, np.ndarray]:
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
        if spec.kind in RENORMALISED:
            out = reference_renormalise(out)
        return {"label": class_array(heads[0].classes)[np.argmax(out, axis=1)], "probabilities": out}
    return {"prediction": out}


def reference_concat(spec: CombinerSpec, heads: list[Head], arrays: list[np.ndarray],
                     rows: np.ndarray, prepared: Prepared) -> dict[str, np.ndarray]:
    dtype = NUMPY_TYPES[promoted_type(heads)]
    xs = [a.astype(dtype).reshape(len(a), -1) if a.ndim == 1 else a.astype(dtype) for a in arrays]
    return {"prediction": np.concatenate(xs, axis=-1)}


# ---------------------------------------------------------------------------- vote


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


def build_vote(spec: CombinerSpec, heads: list[Head], b: Builder, source: Source, prepared: Prepared) -> None:
    """Each model votes its argmax class with its weight; the most votes wins, ties go to the higher summed p."""
    classes = classifier_heads(heads, "vote", source)
    dtype = promoted_type(heads)
    shape = check_same_shapes(heads, source)
    k = len(classes)
    np_type = NUMPY_TYPES[dtype]
    ps = [cast(b, h.tensor, h.elem_type, dtype, h.model) for h in heads]
    index = b.const(np.arange(k, dtype=np.int64).reshape(1, k), "class_index")
    votes = []
    for p, w, h in zip(ps, vote_weights(heads, "vote", source), heads, strict=True):
        top = b.node("ArgMax", [p], f"{h.model}.choice", axis=1, keepdims=1)
        hit = b.node("Cast", [b.node("Equal", [top, index], f"{h.model}.is_choice")], f"{h.model}.vote", to=dtype)
        weight = b.const(np.array(w, np_type), f"{h.model}.weight")
        votes.append(b.node("Mul", [hit, weight], f"{h.model}.weighted_vote"))
    share = b.node("Sum", votes, "votes")
    probability_sum = b.node("Sum", ps, "probability_sum")
    most = b.reduce("ReduceMax", share, 1, 1, "most_votes")
    margin = b.node("Sub", [most, b.const(np.array(TIE, np_type), "tie")], "tie_floor")
    tied = b.node("Not", [b.node("Less", [share, margin], "behind")], "tied")
    masked = b.node("Where", [tied, probability_sum, b.const(np.array(-np.inf, np_type), "minus_inf")], "tie_break")
    winner = b.node("ArgMax", [masked], "winner", axis=1, keepdims=0)
    label = b.node("Gather", [b.const(class_array(classes), "classes"), winner], "label_value", axis=0)
    b.output(b.rename(label, "label"), STRING if isinstance(classes[0], str) else INT64, (None,))
    b.output(b.rename(share, "probabilities"), dtype, shape if shape else (None, k))


def reference_vote(spec: CombinerSpec, heads: list[Head], arrays: list[np.ndarray], rows: np.ndarray,
                   prepared: Prepared) -> dict[str, np.ndarray]:
    classes = class_array(classifier_heads(heads, "vote", None))
    dtype: Any = NUMPY_TYPES[promoted_type(heads)]
    ps = [a.astype(dtype) for a in arrays]
    k = len(classes)
    share = None
    for p, w in zip(ps, vote_weights(heads, "vote", None), strict=True):
        vote = (np.argmax(p, axis=1)[:, None] == np.arange(k)[None, :]).astype(dtype) * dtype(w)
        share = vote if share is None else share + vote
    assert share is not None
    probability_sum = ps[0]
    for p in ps[1:]:
        probability_sum = probability_sum + p
    tied = ~(share < share.max(axis=1, keepdims=True) - dtype(TIE))
    winner = np.argmax(np.where(tied, probability_sum, dtype(-np.inf)), axis=1)
    return {"label": classes[winner], "probabilities": share}


# ---------------------------------------------------------------------------- gate


def build_gate(spec: CombinerSpec, heads: list[Head], b: Builder, source: Source, prepared: Prepared) -> None:
    """Per row, only models whose columns are all present contribute; their weights are renormalised.

    The parts read a copy of the input with NaN replaced by 0 (routes_read), so a part that cannot
    serve a row still computes something finite there; Where (not a multiplication by 0) drops it.
    """
    task = task_of(heads, "gate", source)
    classes = check_same_classes(heads, source) if task == "classification" else None
    check_missing_label(spec, classes, source)
    dtype = promoted_type(heads)
    np_type = NUMPY_TYPES[dtype]
    shape = check_same_shapes(heads, source)
    rank = len(shape) if shape is not None else 2
    missing = b.node("IsNaN", [b.input_name], "missing")
    zero = b.const(np.array(0, NUMPY_TYPES[b.input_type]), "zero_input")
    b.graph.routes_read = b.node("Where", [missing, zero, b.input_name], "features_filled")
    missing_count = b.node("Cast", [missing], "missing_count_cells", to=FLOAT)
    available, weighted = [], []
    for h, w in zip(heads, vote_weights(heads, "gate", source), strict=True):
        # missing cells among the model's columns: one MatMul with its 0/1 column indicator (exact for
        # counts of 0/1 values; onnxruntime's Gather(axis=1) + ReduceSum copied element by element)
        indicator = np.zeros(b.input_width, np.float32)
        indicator[list(h.columns)] = 1
        count = b.node("MatMul", [missing_count, b.const(indicator, f"{h.model}.columns")], f"{h.model}.missing_count")
        ok = b.node("Less", [count, b.const(np.array(0.5, np.float32), "half")], f"{h.model}.available")
        if rank > 1:
            ok = b.unsqueeze(ok, list(range(1, rank)), f"{h.model}.available_rows")
        available.append(ok)
        zero_w = b.const(np.array(0, np_type), "zero")
        weighted.append(b.node("Where", [ok, b.const(np.array(w, np_type), f"{h.model}.weight"), zero_w],
                               f"{h.model}.weight_if_available"))
    total = b.node("Sum", weighted, "available_weight")
    xs = [cast(b, h.tensor, h.elem_type, dtype, h.model) for h in heads]
    terms = []
    for x, ok, w, h in zip(xs, available, weighted, heads, strict=True):
        share = b.node("Div", [w, total], f"{h.model}.share")
        term = b.node("Mul", [x, share], f"{h.model}.term")
        terms.append(b.node("Where", [ok, term, b.const(np.array(0, np_type), "zero")], f"{h.model}.contribution"))
    combined = b.node("Sum", terms, "gated")
    served = b.node("Greater", [total, b.const(np.array(0, np_type), "zero")], "served")
    combined = b.node("Where", [served, combined, b.const(np.array(np.nan, np_type), "nan")], "gated_or_nan")
    if classes is None:
        b.output(b.rename(combined, "prediction"), dtype, shape)
        return
    index = b.node("ArgMax", [combined], "argmax", axis=1, keepdims=0)
    label = b.node("Gather", [b.const(class_array(classes), "classes"), index], "label_value", axis=0)
    served_rows = b.reshape(served, [-1], "served_rows")
    missing_label = b.const(class_array((spec.missing_label,)), "missing_label")  # type: ignore[arg-type]
    label = b.node("Where", [served_rows, label, missing_label], "label_or_missing")
    b.output(b.rename(label, "label"), STRING if isinstance(classes[0], str) else INT64, (None,))
    b.output(b.rename(combined, "probabilities"), dtype, shape if shape else (None, len(classes)))


def check_missing_label(spec: CombinerSpec, classes: tuple[int, ...] | tuple[str, ...] | None,
                        source: Source) -> None:
    if classes is not None and isinstance(classes[0], str) != isinstance(spec.missing_label, str):
        kind = "strings" if isinstance(classes[0], str) else "integers"
        example = '"none"' if kind == "strings" else "-1"
        raise incompatible(source, f"combiner.missing_label {spec.missing_label!r} is not of the labels' type ({kind})",
                           f"give missing_label as one of the {kind}, e.g. missing_label = {example}")


def available_rows(heads: list[Head], rows: np.ndarray) -> list[np.ndarray]:
    """Per model: rows whose columns for it are all present (not NaN)."""
    return [np.asarray(~np.isnan(rows[:, list(h.columns)].astype(np.float64)).any(axis=1)) for h in heads]


def reference_gate(spec: CombinerSpec, heads: list[Head], arrays: list[np.ndarray], rows: np.ndarray,
                   prepared: Prepared) -> dict[str, np.ndarray]:
    dtype: Any = NUMPY_TYPES[promoted_type(heads)]
    w = vote_weights(heads, "gate", None).astype(dtype)
    masks = available_rows(heads, rows)
    weighted = [np.where(ok, wi, dtype(0)) for ok, wi in zip(masks, w, strict=True)]
    total = weighted[0]
    for x in weighted[1:]:
        total = total + x
    combined = None
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for a, ok, wi in zip(arrays, masks, weighted, strict=True):
            a = a.astype(dtype)
            shape = (-1,) + (1,) * (a.ndim - 1)
            term = np.where(ok.reshape(shape), a * (wi / total).reshape(shape), dtype(0))
            combined = term if combined is None else combined + term
    assert combined is not None
    served = total > 0
    combined = np.where(served.reshape((-1,) + (1,) * (combined.ndim - 1)), combined, dtype(np.nan))
    if heads[0].task != "classification":
        return {"prediction": combined}
    assert heads[0].classes is not None
    classes = class_array(heads[0].classes)
    label = classes[np.argmax(np.where(np.isnan(combined), 0, combined), axis=1)]
    missing: Any = class_array((spec.missing_label,))[0]  # type: ignore[arg-type]
    label = np.where(served, label, missing).astype(classes.dtype)
    return {"label": label, "probabilities": combined}


def gate_rows(heads: list[Head], rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rows with the NaN patterns gate must handle: none, each model's columns, all columns, one column."""
    rng = np.random.default_rng(seed)
    out = rows.astype(np.float64).copy()
    patterns = len(heads) + 3
    for i in range(len(out)):
        pattern = i % patterns
        if 1 <= pattern <= len(heads):
            out[i, list(heads[pattern - 1].columns)] = np.nan
        elif pattern == len(heads) + 1:
            out[i, :] = np.nan
        elif pattern == len(heads) + 2:
            out[i, rng.integers(out.shape[1])] = np.nan
    return out.astype(rows.dtype)


# ---------------------------------------------------------------------------- stack


def stack_task(heads: list[Head], source: Source) -> tuple[str, int]:
    """The stack's task and K (1 for regressors); regressors must give one value per row."""
    task = task_of(heads, "stack", source)
    if task == "classification":
        return task, len(check_same_classes(heads, source))
    shape = check_same_shapes(heads, source)
    if shape is not None and len(shape) > 1 and (len(shape) > 2 or shape[1] != 1):
        raise incompatible(source, f"stack fits one value per row, and the regressors give {_show(shape)}",
                           'use kind = "mean" for multi-output regressors')
    return task, 1


def build_stack(spec: CombinerSpec, heads: list[Head], b: Builder, source: Source, prepared: Prepared) -> None:
    """features -> (features - mean) / scale -> MatMul + Add (-> Softmax); or `mean` when that won."""
    model = prepared.stack
    assert model is not None, "the stack is fitted before the graph is built"
    task, k = stack_task(heads, source)
    dtype = promoted_type(heads)
    np_type = NUMPY_TYPES[dtype]
    shape = check_same_shapes(heads, source)
    ps = [cast(b, h.tensor, h.elem_type, dtype, h.model) for h in heads]
    if not model.learned:
        out = b.node("Div", [b.node("Sum", ps, "sum"), b.const(np.array(len(ps), np_type), "count")], "mean")
    else:
        assert model.mean is not None and model.scale is not None and model.coef is not None
        assert model.intercept is not None
        if task == "classification":
            mean = b.node("Div", [b.node("Sum", ps, "sum"), b.const(np.array(len(ps), np_type), "count")], "mean")
            floor = b.node("Max", [mean, b.const(np.array(EPS, np_type), "eps")], "mean_clipped")
            blocks = [b.node("Log", [floor], "log_mean"), *ps]
        else:
            blocks = [b.reshape(p, [-1, 1], f"{h.model}.column") for p, h in zip(ps, heads, strict=True)]
        if model.passthrough:
            picked = b.node("Gather", [b.input_name, b.const(np.array(model.passthrough, np.int64), "passthrough")],
                            "passthrough_columns", axis=1)
            blocks.append(cast(b, picked, b.input_type, dtype, "passthrough"))
        x = b.node("Concat", blocks, "stack_features", axis=1)
        z = b.node("Div", [b.node("Sub", [x, b.const(model.mean.astype(np_type), "stack_mean")], "centred"),
                           b.const(model.scale.astype(np_type), "stack_scale")], "standardised")
        out = b.node("Add", [b.node("MatMul", [z, b.const(model.coef.astype(np_type), "stack_coef")], "stack_matmul"),
                             b.const(model.intercept.astype(np_type), "stack_intercept")], "stack_logits")
        if task == "classification":
            out = b.node("Softmax", [out], "stack_probabilities", axis=1)
        elif shape is not None and len(shape) == 1:
            out = b.reshape(out, [-1], "stack_prediction")
    if task == "classification":
        emit_classifier_outputs(b, out, dtype, shape, check_same_classes(heads, source))
    else:
        b.output(b.rename(out, "prediction"), dtype, shape)


def reference_stack(spec: CombinerSpec, heads: list[Head], arrays: list[np.ndarray], rows: np.ndarray,
                    prepared: Prepared) -> dict[str, np.ndarray]:
    from .stacking import apply

    model = prepared.stack
    assert model is not None
    dtype = NUMPY_TYPES[promoted_type(heads)]
    if not model.learned:
        out = mean_of([a.astype(dtype) for a in arrays])
    else:
        out = apply(model, arrays, rows, dtype)
    if model.task == "classification":
        assert heads[0].classes is not None
        return {"label": class_array(heads[0].classes)[np.argmax(out, axis=1)], "probabilities": out}
    return {"prediction": out.reshape(arrays[0].shape)}


# ---------------------------------------------------------------------------- onnx: the user's own graph


def read_user_graph(path: Path, mapping: FeatureMapping) -> UserGraph:
    """Load `[combiner] path` safely; its inputs must be named after the models (or the merged input)."""
    from .model_io import load_model

    loaded = load_model(path)
    model = checked_model(loaded)
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


def build_onnx(spec: CombinerSpec, heads: list[Head], b: Builder, source: Source, prepared: Prepared) -> None:
    """Feed each model's head to the input named after it; the graph's outputs become the merged outputs."""
    from onnx import helper

    user = prepared.graph
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
            check_input_rank(info, h.shape, user.part.source.path, h.model)
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


def check_input_rank(info: TensorInfo, shape: Shape, path: Path, model: str) -> None:
    if info.shape is not None and shape is not None and len(info.shape) != len(shape):
        raise incompatible(path, f"the combiner's input {model!r} has rank {len(info.shape)}, "
                           f"but {model} gives {_show(shape)}", "declare the input with the model's output shape")


def reference_onnx(spec: CombinerSpec, heads: list[Head], arrays: list[np.ndarray], rows: np.ndarray,
                   prepared: Prepared) -> dict[str, np.ndarray]:
    """The user's ORIGINAL combiner file run by onnxruntime on the parts' outputs."""
    from .runtime import run_file

    user = prepared.graph
    assert user is not None
    by_model = dict(zip((h.model for h in heads), arrays, strict=True))
    feeds: dict[str, np.ndarray] = {}
    for info in user.part.inputs:
        value = by_model.get(info.name, rows)
        feeds[info.name] = value.astype(NUMPY_OF_TYPE.get(info.elem_type, np.float32))
    return run_file(user.part.source.path, feeds, [o.name for o in user.part.outputs])


# ---------------------------------------------------------------------------- registry

Build = Callable[[CombinerSpec, list[Head], Builder, Source, Prepared], None]
# (spec, heads, each part's head output, the merged input rows, prepared) -> expected merged outputs
Reference = Callable[[CombinerSpec, list[Head], list[np.ndarray], np.ndarray, Prepared], dict[str, np.ndarray]]

COMBINERS: dict[str, tuple[Build, Reference]] = {
    **{kind: (build_elementwise, reference_elementwise) for kind in ELEMENTWISE},
    "concat": (build_concat, reference_concat),
    "vote": (build_vote, reference_vote),
    "gate": (build_gate, reference_gate),
    "stack": (build_stack, reference_stack),
    "onnx": (build_onnx, reference_onnx),
}


def build_combiner(mapping: FeatureMapping, heads: list[Head], fresh: Callable[[str], str], opset: int,
                   prepared: Prepared | None = None) -> CombinerGraph:
    spec = mapping.combiner
    if spec.kind not in COMBINERS:
        raise incompatible(mapping.source, f"combiner {spec.kind!r} is not available yet")
    first = mapping.inputs.items[0]  # gate and stack passthrough read the one float table of an [input] mapping
    width = len(first.columns) if isinstance(first, TableInput) else 0
    builder = Builder(fresh, opset, first.name, DOUBLE if first.dtype == "float64" else FLOAT, width, mapping.source)
    COMBINERS[spec.kind][0](spec, heads, builder, mapping.source, prepared or Prepared())
    return builder.graph


def reference(spec: CombinerSpec, heads: list[Head], arrays: list[np.ndarray], rows: np.ndarray,
              prepared: Prepared | None = None) -> dict[str, np.ndarray]:
    """The combiner's outputs computed in numpy from the parts' outputs (run separately)."""
    return COMBINERS[spec.kind][1](spec, heads, arrays, rows, prepared or Prepared())
