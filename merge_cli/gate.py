"""The gate combiner: per row, only models whose columns are all present contribute."""

from __future__ import annotations

from typing import Any

import numpy as np

from .builder import Builder
from .combining import (
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
from .graphs import DOUBLE, FLOAT, NUMPY_OF_TYPE
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
    np_type = NUMPY_OF_TYPE[dtype]
    shape = check_same_shapes(heads, source)
    rank = len(shape) if shape is not None else 2
    counts = missing_counts(heads, b) if b.tables else legacy_missing_counts(heads, b)
    available, weighted = [], []
    for h, w, count in zip(heads, vote_weights(heads, "gate", source), counts, strict=True):
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


def legacy_missing_counts(heads: list[Head], b: Builder) -> list[str]:
    """Per model, its missing (NaN) cells of the one float table; the parts read it with NaN filled by 0."""
    missing = b.node("IsNaN", [b.input_name], "missing")
    zero = b.const(np.array(0, NUMPY_OF_TYPE[b.input_type]), "zero_input")
    b.graph.routes_read = b.node("Where", [missing, zero, b.input_name], "features_filled")
    missing_count = b.node("Cast", [missing], "missing_count_cells", to=FLOAT)
    counts = []
    for h in heads:
        # missing cells among the model's columns: one MatMul with its 0/1 column indicator (exact for
        # counts of 0/1 values; onnxruntime's Gather(axis=1) + ReduceSum copied element by element)
        indicator = np.zeros(b.input_width, np.float32)
        indicator[list(h.columns)] = 1
        counts.append(b.node("MatMul", [missing_count, b.const(indicator, f"{h.model}.columns")],
                             f"{h.model}.missing_count"))
    return counts


def missing_counts(heads: list[Head], b: Builder) -> list[str]:
    """Per model, its missing cells across an [inputs.*] mapping's tables: NaN in a float table, the empty
    string in a string table (other tables and tensors are always present). Float tables reach the parts
    with NaN filled by 0 (tables_read)."""
    cells: dict[str, str] = {}
    for table in b.tables:
        if table.dtype in ("float32", "float64"):
            missing = b.node("IsNaN", [table.name], f"{table.name}.missing")
            zero = b.const(np.array(0, NUMPY_OF_TYPE[DOUBLE if table.dtype == "float64" else FLOAT]), "zero_input")
            b.graph.tables_read[table.name] = b.node("Where", [missing, zero, table.name], f"{table.name}_filled")
        elif table.dtype == "string" and b.opset >= 19:  # Equal takes strings from opset 19
            missing = b.node("Equal", [table.name, b.const(np.array("", dtype=object), "empty_string")],
                             f"{table.name}.missing")
        elif table.dtype == "string":  # before: ai.onnx.ml's CategoryMapper ("" -> 1), as in every ml opset
            missing = b.node("CategoryMapper", [table.name], f"{table.name}.missing", domain="ai.onnx.ml",
                             cats_strings=[""], cats_int64s=[1], default_int64=0)
        else:
            continue
        cells[table.name] = b.node("Cast", [missing], f"{table.name}.missing_cells", to=FLOAT)
    counts = []
    for h in heads:
        terms = []
        for table in b.tables:
            used = [i for t, i in h.sources if t == table.name]
            if table.name in cells and used:
                indicator = np.zeros(len(table.columns), np.float32)
                indicator[used] = 1
                terms.append(b.node("MatMul", [cells[table.name], b.const(indicator, f"{h.model}.{table.name}")],
                                    f"{h.model}.{table.name}.missing_count"))
        if not terms:  # nothing it reads can be missing: a count of 0 per row
            shape = b.node("Shape", [h.tensor], f"{h.model}.shape")
            rows = b.node("Gather", [shape, b.const(np.array([0], np.int64), "first")], f"{h.model}.rows", axis=0)
            terms.append(b.node("ConstantOfShape", [rows], f"{h.model}.none_missing",
                                value=_float_tensor(0.0)))
        counts.append(terms[0] if len(terms) == 1 else b.node("Sum", terms, f"{h.model}.missing_count"))
    return counts


def _float_tensor(value: float) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array([value], np.float32), "value")


def check_missing_label(spec: CombinerSpec, classes: tuple[int, ...] | tuple[str, ...] | None,
                        source: Source) -> None:
    if classes is not None and isinstance(classes[0], str) != isinstance(spec.missing_label, str):
        kind = "strings" if isinstance(classes[0], str) else "integers"
        example = '"none"' if kind == "strings" else "-1"
        raise incompatible(source, f"combiner.missing_label {spec.missing_label!r} is not of the labels' type ({kind})",
                           f"give missing_label as one of the {kind}, e.g. missing_label = {example}")


def available_rows(heads: list[Head], rows: np.ndarray) -> list[np.ndarray]:
    """Per model: rows whose columns for it are all present (not NaN; in records, not "" either)."""
    if rows.dtype.names is not None:
        return [~np.any([missing_cells(rows[t][:, i]) for t, i in h.sources] or [np.zeros(len(rows), bool)], axis=0)
                for h in heads]
    return [np.asarray(~np.isnan(rows[:, list(h.columns)].astype(np.float64)).any(axis=1)) for h in heads]


def missing_cells(values: np.ndarray) -> np.ndarray:
    """NaN numbers and empty strings are missing; integers never are."""
    if values.dtype.kind == "f":
        return np.asarray(np.isnan(values))
    if values.dtype.kind == "O":
        return np.asarray(values == "")
    return np.zeros(len(values), bool)


def reference_gate(spec: CombinerSpec, heads: list[Head], arrays: list[np.ndarray],
                   rows: np.ndarray) -> dict[str, np.ndarray]:
    dtype: Any = NUMPY_OF_TYPE[promoted_type(heads)]
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
    if rows.dtype.names is not None:
        return _gate_records(heads, rows, rng)
    out = rows.copy()  # float32 or float64: NaN fits either
    pattern = np.arange(len(out)) % (len(heads) + 3)  # row i gets pattern i mod (models + 3)
    for k, head in enumerate(heads, start=1):
        out[np.ix_(np.flatnonzero(pattern == k), np.asarray(head.columns, dtype=np.int64))] = np.nan
    out[pattern == len(heads) + 1] = np.nan
    one = np.flatnonzero(pattern == len(heads) + 2)
    out[one, rng.integers(out.shape[1], size=len(one))] = np.nan
    return out


def _gate_records(heads: list[Head], rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """gate_rows for records: NaN in float tables, "" in string tables, in the same patterns."""
    out = rows.copy()
    every = list(dict.fromkeys(s for h in heads for s in h.sources))

    def blank(i: int, cells: list[tuple[str, int]]) -> None:
        for table, c in cells:
            kind = out[table].dtype.kind
            if kind in "fO":
                out[table][i, c] = np.nan if kind == "f" else ""

    patterns = len(heads) + 3
    for i in range(len(out)):
        pattern = i % patterns
        if 1 <= pattern <= len(heads):
            blank(i, list(heads[pattern - 1].sources))
        elif pattern == len(heads) + 1:
            blank(i, every)
        elif pattern == len(heads) + 2 and every:
            blank(i, [every[rng.integers(len(every))]])
    return out
