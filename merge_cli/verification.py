"""The rows a merged model is verified on: seeded random rows (records with a field per merged input for
[inputs.*] mappings, drawn from the categories the models carry) and the --data rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .combining import Head
from .draws import data_rows
from .errors import incompatible
from .mapping import FeatureMapping
from .parts import Part
from .prepare import verification_batches
from .runtime import random_rows, rows_for_width

if TYPE_CHECKING:
    from onnx import ModelProto

    from .data import Rows


def rows_to_verify(rows: int, mapping: FeatureMapping, parts: list[Part], heads: list[Head], model: ModelProto,
                   data: Rows | None) -> np.ndarray:
    """`rows` seeded random rows (and gate's NaN patterns of them), then the --data rows, as one set."""
    real = data_rows(mapping.inputs, data.inputs) if data is not None else None
    if mapping.inputs.single_table and mapping.inputs.tables[0].dtype in ("float32", "float64"):
        random = random_rows(rows, len(mapping.inputs.columns), mapping.inputs.tables[0].dtype)
    else:  # records with a field per merged input, drawn per input (draws.py)
        random = typed_random_rows(rows_for_width(rows, len(mapping.inputs.columns)), mapping, parts,
                                   input_shapes(model))
    batches = verification_batches(mapping, heads, random, real)
    return np.concatenate(batches) if len(batches) > 1 else batches[0]


LOW_PRECISION = {10: ("float16", 2.0 ** -10), 16: ("bfloat16", 2.0 ** -7)}  # ONNX elem type: (name, machine epsilon)
ULPS = 4  # the parts' rounding, and onnxruntime's different kernels for the same ops in the merged graph


def fitted_tolerances(atol: float, rtol: float, heads: list[Head]) -> tuple[float, float, str | None]:
    """(atol, rtol, why): a part whose head is float16 or bfloat16 computes in that precision, so the merged
    file (the same ops, other kernels or fusions) can differ from it by a few of its ulps; the tolerances
    are raised to ULPS epsilons of the coarsest such type (at the scale of probabilities, 1), never lowered."""
    low = {LOW_PRECISION[h.elem_type]: h.model for h in heads if h.elem_type in LOW_PRECISION}
    if not low:
        return atol, rtol, None
    name, eps = max(low, key=lambda t: t[1])
    floor = ULPS * eps
    if atol >= floor and rtol >= floor:
        return atol, rtol, None
    models = ", ".join(m for (n, _), m in low.items() if n == name)
    return max(atol, floor), max(rtol, floor), f"{models} computes in {name}: at least {ULPS} ulps of it ({floor:g})"


def check_typed_support(mapping: FeatureMapping) -> None:
    """What a mapping of several or typed inputs cannot do yet: a stack's passthrough reads one float table."""
    if mapping.inputs.single_table and mapping.inputs.tables[0].dtype in ("float32", "float64"):
        return
    if mapping.combiner.kind == "stack" and mapping.combiner.passthrough:
        raise incompatible(mapping.source, "combiner.passthrough: a stack's passthrough columns come from one float "
                           "table; this mapping has several or typed [inputs.*]", "drop passthrough")


def input_shapes(model: ModelProto) -> dict[str, list[Any]]:
    """The merged model's inputs' shapes (a size, or a name where it is symbolic), for drawing tensors."""
    return {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}


def typed_random_rows(n: int, mapping: FeatureMapping, parts: list[Part], shapes: dict[str, list[Any]]) -> np.ndarray:
    """Records for a mapping of several or typed inputs: each column drawn from the categories of the model
    inputs it feeds, each tensor from its shape (and the index range of the embeddings it feeds)."""
    from .draws import NONE, Categories, column_categories, input_categories, typed_rows
    from .splice import bound_routes

    routed: list[tuple[Categories, tuple[int, ...]]] = []
    tensors: dict[str, Categories] = {}
    for part in parts:
        prefix = f"{part.name}/"  # the parts are prefixed by now
        found = {k.removeprefix(prefix): v for k, v in input_categories(part.model).items()}
        for info, r in bound_routes(part):
            if r.whole is not None:
                tensors[r.whole] = tensors.get(r.whole, NONE) | found.get(info.name, NONE)
            else:
                routed.append((found.get(info.name, NONE), r.columns))
    for item in mapping.inputs.items:
        shape = shapes.get(item.name, [])
        if not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise incompatible(mapping.source, f"inputs.{item.name}: verification needs its sizes after the batch, "
                               f"but its shape is [{', '.join(map(str, shape))}]",
                               f'give them: shape = ["N", ...] in [inputs.{item.name}], or merge with --no-verify')
    columns = column_categories(routed, len(mapping.inputs.columns))
    return typed_rows(n, mapping.inputs, shapes, columns, tensors)


