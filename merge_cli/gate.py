"""The gate combiner: per row, only models whose columns are all present contribute."""

from __future__ import annotations

from typing import Any

import numpy as np

from .builder import Builder
from .combining import (
    NUMPY_TYPES,
    Head,
    Source,
    cast,
    check_same_classes,
    check_same_shapes,
    class_array,
    class_label,
    emit_classifier_outputs,
    promoted_type,
    task_of,
    vote_weights,
)
from .errors import incompatible
from .graphs import FLOAT
from .mapping import CombinerSpec


def build_gate(spec: CombinerSpec, heads: list[Head], b: Builder, source: Source) -> None:
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
    label = class_label(b, b.node("ArgMax", [combined], "argmax", axis=1, keepdims=0), classes)
    served_rows = b.reshape(served, [-1], "served_rows")
    missing_label = b.const(class_array((spec.missing_label,)), "missing_label")  # type: ignore[arg-type]
    label = b.node("Where", [served_rows, label, missing_label], "label_or_missing")
    emit_classifier_outputs(b, combined, dtype, shape, classes, label=label)


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


def reference_gate(spec: CombinerSpec, heads: list[Head], arrays: list[np.ndarray],
                   rows: np.ndarray) -> dict[str, np.ndarray]:
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
