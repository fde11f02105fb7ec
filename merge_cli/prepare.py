"""What combiners need around the graph: real rows, a stack fitted on them, the user's graph, scores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .combiners import stack_task
from .combining import Head, Prepared
from .data import Rows, read_data, resolve_target
from .draws import data_rows
from .errors import bad_input
from .gate import gate_rows
from .mapping import FeatureMapping
from .parts import Part
from .scores import Predictions, ScoreTable, class_indices, score_table
from .user_graph import read_user_graph

if TYPE_CHECKING:
    from .comparison import Outputs
from .stacking import StackModel, TooFewRows, fit_stack


def data_defaults(mapping: FeatureMapping, data: str | Path | None, target: str | None) -> FeatureMapping:
    """--data and its target (--target, else resolved from the file's columns) stand in for [combiner]
    data/target where the file gives none (e.g. for --combiner stack)."""
    if data is None:  # MergeRequest refuses a target without data
        return mapping
    resolved = resolve_target(Path(data), mapping.inputs.items, target)
    comb = mapping.combiner
    if comb.data is None:
        comb = replace(comb, data=Path(data), target=resolved)
    return replace(mapping, combiner=comb)


def prepare_combiner(spec: FeatureMapping, data: Path | None, target: str | None) -> tuple[Prepared, Rows | None]:
    """Before conversion: the --data rows, and the user's combiner graph (converted with the parts)."""
    rows = None
    if data is not None:
        if spec.combiner.data is not None and _same_data_file(spec.combiner.data, data):
            target = target or spec.combiner.target
        rows = read_data(data, spec.inputs.items, resolve_target(data, spec.inputs.items, target, strict=False))
    if spec.combiner.kind == "onnx":
        assert spec.combiner.path is not None
        return Prepared(graph=read_user_graph(spec.combiner.path, spec)), rows
    return Prepared(), rows


def fit_combiner(spec: FeatureMapping, parts: list[Part], prepared: Prepared, rows: Rows | None) -> Prepared:
    """After conversion (the parts' heads aligned): fit the stack on its data."""
    comb = spec.combiner
    if comb.kind != "stack":
        return prepared
    assert comb.data is not None and comb.target is not None
    if rows is None or not _same_data_file(comb.data, rows.path) or rows.target_name != comb.target:
        rows = read_data(comb.data, spec.inputs.items, comb.target)
    return replace(prepared, stack=fit(spec, parts, rows))


def _same_data_file(a: Path, b: Path) -> bool:
    """Two --data paths name the same file once symlinks and '..' are resolved, so one read serves both."""
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def fit(spec: FeatureMapping, parts: list[Part], rows: Rows) -> StackModel:
    """Run the original parts on the rows in onnxruntime, then fit the stack in numpy."""
    from .runtime import run_parts

    heads = [Head.of(p) for p in parts]
    task, k = stack_task(heads, spec.source)
    if rows.target is None:
        raise bad_input(rows.path, f"no target column {spec.combiner.target!r}")
    x = data_rows(spec.inputs, rows.inputs)
    outputs = [o[p.head.name] for p, o in zip(parts, run_parts(parts, x), strict=True)]
    if task == "classification":
        assert heads[0].classes is not None
        y = class_indices(rows.target, heads[0].classes, rows.path)
        usable = y >= 0
        seen = np.unique(y[usable])
        if len(seen) == 1:  # a fit on one class learns to predict it everywhere: a merged model that is wrong
            label = heads[0].classes[int(seen[0])]
            raise bad_input(rows.path, f"every row's target {rows.target_name!r} is {label!r}: a stack learned from "
                            "one class would predict it for every row", "give rows of every class the models know")
    else:
        if rows.target.dtype == object:
            raise bad_input(rows.path, f"target {rows.target_name!r} holds text; the regressors need numbers")
        y = rows.target.astype(np.float64)
        usable = np.isfinite(y)
    folds = spec.combiner.folds
    if usable.sum() < 2 * folds:
        raise bad_input(rows.path, f"{int(usable.sum())} rows with a target; stack needs at least {2 * folds} "
                        f"for {folds}-fold cross-validation", "give more rows, or fewer folds (folds = ...)")
    keep = slice(None) if usable.all() else np.flatnonzero(usable)  # no copies when every row has a target
    # passthrough columns come from one float table; records of typed inputs have none (check_typed_support)
    table = x[keep] if x.dtype.names is None else np.zeros((int(usable.sum()), 0))
    try:
        return fit_stack(task, [o[keep] for o in outputs], table, y[keep],  # type: ignore[arg-type]
                         [p.name for p in parts], spec.combiner.passthrough, spec.combiner.alpha, folds, k,
                         spec.combiner.learner)
    except TooFewRows as e:
        raise bad_input(rows.path, f"{e.rows} of its {int(usable.sum())} rows with a target have finite values in "
                        f"every passthrough column and model output; stack needs at least {2 * folds} for "
                        f"{folds}-fold cross-validation", "fill the missing cells, or pass fewer columns through") from None
    except np.linalg.LinAlgError:  # alpha = 0 with parts whose outputs are linearly dependent (identical parts)
        raise bad_input(spec.source, f"combiner.alpha = {spec.combiner.alpha:g}: the stack's fit has no unique "
                        "solution (the parts' outputs on these rows are linearly dependent)",
                        "give alpha > 0, or leave alpha out to choose it by cross-validation") from None


def verification_batches(spec: FeatureMapping, heads: list[Head], random: np.ndarray,
                         data: np.ndarray | None) -> list[np.ndarray]:
    """Random rows; for gate also those rows with every NaN pattern; and the real rows."""
    batches = [random]
    if spec.combiner.kind == "gate":
        batches.append(gate_rows(heads, random))
    if data is not None:
        batches.append(data)
    return batches


def part_rows(spec: FeatureMapping) -> Callable[[np.ndarray], np.ndarray] | None:
    """What the parts are fed: gate fills NaN cells with 0 before they run, as its graph does."""
    if spec.combiner.kind != "gate":
        return None
    floats = [t.name for t in spec.inputs.tables if t.dtype in ("float32", "float64")]

    def filled(rows: np.ndarray) -> np.ndarray:
        if rows.dtype.names is None:
            return np.where(np.isnan(rows), rows.dtype.type(0), rows)
        out = rows.copy()  # records: NaN in float tables filled; "" stays (the models' unknown category)
        for name in floats:
            out[name] = np.where(np.isnan(out[name]), out[name].dtype.type(0), out[name])
        return out

    return filled


def score_rows(merged: Path, parts: list[Part], heads: list[Head], spec: FeatureMapping,
               rows: Rows, known: Outputs | None = None) -> ScoreTable | None:
    """Each part alone and the merged model on the --data rows (None when the task has no common score).

    `known`: verification's runs, read again where they cover these rows (no model runs twice on them).
    """
    from .runtime import run_merged, run_parts

    assert rows.target is not None and rows.target_name is not None
    tasks = {h.task for h in heads}
    if len(tasks) != 1:
        return None
    task = tasks.pop()
    classes = heads[0].classes
    if task == "classification" and any(h.classes != classes for h in heads):
        return None
    x = data_rows(spec.inputs, rows.inputs)
    seen = known.last(x) if known is not None else None
    models = []
    part_outputs = list(seen.parts) if seen is not None and seen.parts is not None else run_parts(parts, x)
    for part, out in zip(parts, part_outputs, strict=True):
        labels = out.get(part.label.name) if part.label is not None else None
        models.append(Predictions(part.name, out[part.head.name], labels))
    merged_out = seen.merged if seen is not None else run_merged(merged, x)
    if task == "classification" and "probabilities" in merged_out:
        models.append(Predictions("merged", merged_out["probabilities"], merged_out.get("label")))
    elif task == "regression" and "prediction" in merged_out and merged_out["prediction"].size == len(x):
        models.append(Predictions("merged", merged_out["prediction"]))
    comb = spec.combiner
    in_sample = comb.kind == "stack" and comb.data is not None and _same_data_file(comb.data, rows.path)
    return score_table(rows.path, rows.target_name, rows.target, task, classes, models, in_sample)

