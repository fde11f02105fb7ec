"""The combiners: each kind's subgraph over the parts' heads, and the same computed in numpy (its reference).

mean, weighted, sum, max, min, concat, vote and stack are here; gate (gate.py) and onnx, the user's own
graph (user_graph.py), have modules of their own. COMBINERS maps each kind to its pair of functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .builder import Builder, CombinerGraph
from .combining import (
    Head,
    Prepared,
    Source,
    cast,
    check_same_classes,
    check_same_shapes,
    class_array,
    class_label,
    classifier_heads,
    classifier_result,
    emit_classifier_outputs,
    head_shape_text,
    mean,
    normalized_weights,
    promoted_type,
    task_of,
    vote_weights,
)
from .errors import incompatible
from .gate import build_gate, reference_gate
from .graphs import DOUBLE, FLOAT, NUMPY_OF_TYPE
from .inputs import TableInput
from .mapping import CombinerSpec, FeatureMapping
from .stacking import mean_of
from .user_graph import build_onnx, reference_onnx

ELEMENTWISE = ("mean", "weighted", "sum", "max", "min")
TIE = 1e-6  # vote shares this close count as tied (they are sums of normalised weights)


# ---------------------------------------------------------------------------- element-wise and concat


def build_elementwise(kind: str, heads: list[Head], b: Builder, source: Source) -> None:
    """mean, weighted, sum, max, min: one element-wise op over the heads (a classifier's label is its argmax)."""
    task = task_of(heads, kind, source)
    dtype = promoted_type(heads)
    shape = check_same_shapes(heads, source)
    xs = [cast(b, h.tensor, h.elem_type, dtype, h.model) for h in heads]
    if kind == "mean":
        combined = mean(b, xs, dtype)
    elif kind == "sum":
        combined = b.node("Sum", xs, "sum")
    elif kind == "weighted":
        w = normalized_weights(heads, kind).astype(NUMPY_OF_TYPE[dtype])
        scaled = [b.node("Mul", [x, b.const(np.array(wi), f"{h.model}.weight")], f"{h.model}.weighted")
                  for x, wi, h in zip(xs, w, heads, strict=True)]
        combined = b.node("Sum", scaled, "weighted")
    else:
        combined = b.node("Max" if kind == "max" else "Min", xs, kind)
    if task == "classification":
        classes = check_same_classes(heads, source)
        if kind in RENORMALISED:
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
    positive = b.node("Greater", [total, b.const(np.array(0, NUMPY_OF_TYPE[dtype]), "zero")], "row_sum_positive")
    return b.node("Where", [positive, scaled, b.const(np.array(1 / classes, NUMPY_OF_TYPE[dtype]), "uniform")],
                  "renormalised_probabilities")


def reference_renormalise(p: np.ndarray) -> np.ndarray:
    total = p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled: np.ndarray = np.where(total > 0, p / total, p.dtype.type(1 / p.shape[1])).astype(p.dtype)
    return scaled


def build_concat(heads: list[Head], b: Builder, source: Source) -> None:
    """The heads side by side (each cast to the common float type; [N] becomes [N, 1])."""
    dtype = promoted_type(heads)
    ranks = {len(h.shape) for h in heads if h.shape is not None}
    if len(ranks) > 1:
        raise incompatible(source, "concat needs outputs of one rank: "
                           + ", ".join(f"{h.model} gives {head_shape_text(h.shape)}" for h in heads))
    xs = [cast(b, h.tensor, h.elem_type, dtype, h.model) for h in heads]
    if ranks == {1}:
        xs = [b.unsqueeze(x, [1], f"{h.model}.column") for x, h in zip(xs, heads, strict=True)]
    combined = b.node("Concat", xs, "concat", axis=-1)
    widths = [h.shape[-1] if h.shape and len(h.shape) > 1 else 1 if h.shape else None for h in heads]
    last = sum(w for w in widths if isinstance(w, int)) if all(isinstance(w, int) for w in widths) else None
    rank = ranks.pop() if ranks else 2
    shape = (None,) * (max(rank, 2) - 1) + (last,)
    b.output(b.rename(combined, "prediction"), dtype, shape)


# ---------------------------------------------------------------------------- numpy references


def reference_elementwise(kind: str, heads: list[Head], arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """What build_elementwise computes, in numpy, from the parts' outputs run separately."""
    dtype = NUMPY_OF_TYPE[promoted_type(heads)]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise incompatible(None, "the parts' outputs have different shapes when run: "
                           + ", ".join(f"{h.model} {list(a.shape)}" for h, a in zip(heads, arrays, strict=True)))
    xs = [a.astype(dtype) for a in arrays]
    if kind == "mean":
        out = mean_of(xs)
    elif kind == "sum":
        out = xs[0].copy()
        for x in xs[1:]:
            out = out + x
    elif kind == "weighted":
        w = normalized_weights(heads, kind).astype(dtype)
        out = xs[0] * w[0]
        for x, wi in zip(xs[1:], w[1:], strict=True):
            out = out + x * wi
    else:
        out = np.maximum.reduce(xs) if kind == "max" else np.minimum.reduce(xs)
    if heads[0].task == "classification":
        return classifier_result(reference_renormalise(out) if kind in RENORMALISED else out, heads[0].classes)
    return {"prediction": out}


def reference_concat(heads: list[Head], arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    dtype = NUMPY_OF_TYPE[promoted_type(heads)]
    xs = [a.astype(dtype).reshape(len(a), -1) if a.ndim == 1 else a.astype(dtype) for a in arrays]
    return {"prediction": np.concatenate(xs, axis=-1)}




# ---------------------------------------------------------------------------- vote


def build_vote(heads: list[Head], b: Builder, source: Source) -> None:
    """Each model votes its argmax class with its weight; the most votes wins, ties go to the higher summed p."""
    classes = classifier_heads(heads, "vote", source)
    dtype = promoted_type(heads)
    shape = check_same_shapes(heads, source)
    k = len(classes)
    np_type = NUMPY_OF_TYPE[dtype]
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
    emit_classifier_outputs(b, share, dtype, shape, classes, label=class_label(b, winner, classes))


def reference_vote(heads: list[Head], arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    classes = class_array(classifier_heads(heads, "vote", None))
    dtype: Any = NUMPY_OF_TYPE[promoted_type(heads)]
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


# ---------------------------------------------------------------------------- stack


def stack_task(heads: list[Head], source: Source) -> tuple[str, int]:
    """The stack's task and K (1 for regressors); regressors must give one value per row."""
    task = task_of(heads, "stack", source)
    if task == "classification":
        return task, len(check_same_classes(heads, source))
    shape = check_same_shapes(heads, source)
    if shape is not None and len(shape) > 1 and (len(shape) > 2 or shape[1] != 1):
        raise incompatible(source, f"stack fits one value per row, and the regressors give {head_shape_text(shape)}",
                           'use kind = "mean" for multi-output regressors')
    return task, 1


def build_stack(spec: CombinerSpec, heads: list[Head], b: Builder, source: Source, prepared: Prepared) -> None:
    """The learned stack (stack_graph, in float64), or `mean`, or one part alone: whichever cross-validation chose."""
    from .stack_graph import as_float64, from_float64, learned_stack

    model = prepared.stack
    assert model is not None, "the stack is fitted before the graph is built"
    task, k = stack_task(heads, source)
    dtype = promoted_type(heads)
    shape = check_same_shapes(heads, source)
    if model.part is not None:
        out = cast(b, heads[model.part].tensor, heads[model.part].elem_type, dtype, heads[model.part].model)
    elif not model.learned:
        out = mean(b, [cast(b, h.tensor, h.elem_type, dtype, h.model) for h in heads], dtype)
    else:
        ps = [as_float64(b, h.tensor, h.elem_type, h.model) for h in heads]
        out = from_float64(b, learned_stack(b, model, ps, [h.model for h in heads]), dtype)
        if task == "regression" and shape is not None and len(shape) == 1:
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
    out = apply(model, arrays, rows, NUMPY_OF_TYPE[promoted_type(heads)])
    if model.task == "classification":
        return classifier_result(out, heads[0].classes)
    return {"prediction": out.reshape(arrays[0].shape)}


# ---------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Combination:
    """Everything a combiner kind may read; each kind's functions take only what they use (see COMBINERS)."""

    spec: CombinerSpec
    heads: list[Head]
    source: Source  # the mapping file: errors about the combination name it
    prepared: Prepared


@dataclass(frozen=True)
class Combiner:
    """A combiner kind: the subgraph it appends, and the same computed in numpy from the parts' outputs
    (run separately) and the merged input's rows, which verification compares the merged file with."""

    build: Callable[[Combination, Builder], None]
    reference: Callable[[Combination, list[np.ndarray], np.ndarray], dict[str, np.ndarray]]


def _elementwise() -> Combiner:
    return Combiner(lambda c, b: build_elementwise(c.spec.kind, c.heads, b, c.source),
                    lambda c, arrays, rows: reference_elementwise(c.spec.kind, c.heads, arrays))


COMBINERS: dict[str, Combiner] = {
    **{kind: _elementwise() for kind in ELEMENTWISE},
    "concat": Combiner(lambda c, b: build_concat(c.heads, b, c.source),
                       lambda c, arrays, rows: reference_concat(c.heads, arrays)),
    "vote": Combiner(lambda c, b: build_vote(c.heads, b, c.source),
                     lambda c, arrays, rows: reference_vote(c.heads, arrays)),
    "gate": Combiner(lambda c, b: build_gate(c.spec, c.heads, b, c.source),
                     lambda c, arrays, rows: reference_gate(c.spec, c.heads, arrays, rows)),
    "stack": Combiner(lambda c, b: build_stack(c.spec, c.heads, b, c.source, c.prepared),
                      lambda c, arrays, rows: reference_stack(c.spec, c.heads, arrays, rows, c.prepared)),
    "onnx": Combiner(lambda c, b: build_onnx(c.prepared.graph, c.heads, b),
                     lambda c, arrays, rows: reference_onnx(c.prepared.graph, c.heads, arrays, rows)),
}


def build_combiner(mapping: FeatureMapping, heads: list[Head], fresh: Callable[[str], str], opset: int,
                   prepared: Prepared | None = None) -> CombinerGraph:
    spec = mapping.combiner
    if spec.kind not in COMBINERS:
        raise incompatible(mapping.source, f"combiner {spec.kind!r} is not available yet")
    first = mapping.inputs.items[0]  # gate and stack passthrough read the one float table of an [input] mapping
    width = len(first.columns) if isinstance(first, TableInput) else 0
    builder = Builder(fresh, opset, first.name, DOUBLE if first.dtype == "float64" else FLOAT, width, mapping.source)
    if not (mapping.inputs.single_table and first.dtype in ("float32", "float64")):
        builder.tables = mapping.inputs.tables  # gate reads each table: NaN and "" are missing cells
    COMBINERS[spec.kind].build(Combination(spec, heads, mapping.source, prepared or Prepared()), builder)
    return builder.graph


def reference(spec: CombinerSpec, heads: list[Head], arrays: list[np.ndarray], rows: np.ndarray,
              prepared: Prepared | None = None) -> dict[str, np.ndarray]:
    """The combiner's outputs computed in numpy from the parts' outputs (run separately)."""
    return COMBINERS[spec.kind].reference(Combination(spec, heads, None, prepared or Prepared()), arrays, rows)
