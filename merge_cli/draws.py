"""Seeded random values for each merged input, drawn so that the models' branches are really taken.

Numbers are drawn as verification always drew them. A string or integer column is compared against
categories inside the models (OneHotEncoder, LabelEncoder, CategoryMapper): random text would only
ever take their "unknown" branch, so such columns are drawn from the categories the models carry,
plus one value none of them knows (unless an encoder refuses unknown values). An integer tensor used
as Gather indices (token ids into an embedding) is drawn below the table's length.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .graphs import NUMPY_OF_DTYPE, all_nodes
from .inputs import MergedInputs, TableInput

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto

UNKNOWN_STRING = "<unknown>"
CATEGORY_ATTRS = {  # op -> attributes listing the values its input is compared against
    "OneHotEncoder": ("cats_strings", "cats_int64s"),
    "LabelEncoder": ("keys_strings", "keys_int64s"),
    "CategoryMapper": ("cats_strings", "cats_int64s"),
}
INT_RANGE = (-3, 12)  # integers that meet no category: small, both signs


@dataclass(frozen=True)
class Categories:
    """What a model input's values are compared against, as the model's own graph says."""

    strings: frozenset[str] = frozenset()
    ints: frozenset[int] = frozenset()
    refuses_unknown: bool = False  # an encoder errors on values it does not know (OneHotEncoder zeros=0)
    index_bound: int | None = None  # used as Gather indices into a table this long: values must be below it

    def __or__(self, other: Categories) -> Categories:
        bounds = [b for b in (self.index_bound, other.index_bound) if b is not None]
        return Categories(self.strings | other.strings, self.ints | other.ints,
                          self.refuses_unknown or other.refuses_unknown, min(bounds) if bounds else None)


NONE = Categories()


def input_categories(model: ModelProto) -> dict[str, Categories]:
    """Per graph input: the categories of every encoder its values reach, and how long a table it indexes."""
    from onnx import helper

    graph = model.graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    consumers: dict[str, list[NodeProto]] = {}
    for node in all_nodes(graph):
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, Categories] = {}
    for vi in graph.input:
        if vi.name in shapes:
            continue
        seen = NONE
        for node, via in _reached(vi.name, consumers):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type in CATEGORY_ATTRS and via == node.input[0]:
                strings = frozenset(s.decode() if isinstance(s, bytes) else str(s)
                                    for key in CATEGORY_ATTRS[node.op_type] if key.endswith("strings")
                                    for s in attrs.get(key, []))
                ints = frozenset(int(i) for key in CATEGORY_ATTRS[node.op_type] if key.endswith("int64s")
                                 for i in attrs.get(key, []))
                strict = node.op_type == "OneHotEncoder" and attrs.get("zeros", 1) == 0
                seen = seen | Categories(strings, ints, strict)
            elif node.op_type == "Gather" and len(node.input) > 1 and via == node.input[1] \
                    and node.input[0] in shapes:
                axis = int(attrs.get("axis", 0))
                dims = shapes[node.input[0]]
                seen = seen | Categories(index_bound=dims[axis] if dims else None)
        found[vi.name] = seen
    return found


# Ops whose outputs carry their input's values (for category and index tracing), not new values.
_CARRIES = {"Identity", "Cast", "CastLike", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Slice",
            "Gather", "ArrayFeatureExtractor", "Transpose", "Split", "Expand", "Tile"}


def _reached(name: str, consumers: dict[str, list[NodeProto]]) -> Iterable[tuple[NodeProto, str]]:
    """Every (node, the tensor it reads) that `name`'s values flow into through value-carrying ops."""
    todo, done = [name], {name}
    while todo:
        current = todo.pop()
        for node in consumers.get(current, []):
            yield node, current
            carries = node.op_type in _CARRIES and not (node.op_type in ("Gather", "ArrayFeatureExtractor")
                                                        and current != node.input[0])
            if carries:
                for out in node.output:
                    if out and out not in done:
                        done.add(out)
                        todo.append(out)


def column_categories(routes: Iterable[tuple[Categories, Sequence[int]]], width: int) -> list[Categories]:
    """Per merged column: the union of the categories of every model input it is routed to."""
    out = [NONE] * width
    for categories, columns in routes:
        for c in columns:
            out[c] = out[c] | categories
    return out


# ---------------------------------------------------------------------------- drawing


def mixed_numbers(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Numbers of mixed scale (0.1x to 10x a standard normal per row), so thresholds of all sizes are crossed."""
    values = rng.standard_normal(shape)
    return values * 10.0 ** rng.uniform(-1, 1, size=(shape[0],) + (1,) * (len(shape) - 1))


def column_values(rng: np.random.Generator, n: int, dtype: str, categories: Categories) -> np.ndarray:
    """One column's n values: categories the models know plus one they do not; else numbers or small ints."""
    if dtype == "string":
        known = sorted(categories.strings)
        pool = known + ([] if categories.refuses_unknown and known else [_unknown(known)])
        if not known:
            pool = ["a", "b", "c", UNKNOWN_STRING]
        return np.array(pool, dtype=object)[rng.integers(0, len(pool), n)]
    if dtype in ("int64", "int32"):
        ints = sorted(categories.ints)
        if ints:
            codes = ints + ([] if categories.refuses_unknown else [max(ints) + 1])
            return np.array(codes, dtype=dtype)[rng.integers(0, len(codes), n)]
        high = categories.index_bound if categories.index_bound is not None else INT_RANGE[1]
        low = 0 if categories.index_bound is not None else INT_RANGE[0]
        return rng.integers(low, max(high, low + 1), n).astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, n).astype(bool)
    return mixed_numbers(rng, (n,)).astype(dtype)


def _unknown(known: list[str]) -> str:
    value = UNKNOWN_STRING
    while value in known:
        value += "?"
    return value


def table_rows(n: int, table: TableInput, categories: Sequence[Categories], seed: int = 0) -> np.ndarray:
    """[n, k] rows of a table: float tables as verification always drew them, typed columns one by one."""
    if table.dtype in ("float32", "float64"):
        return mixed_numbers(np.random.default_rng(seed), (n, len(table.columns))).astype(table.dtype)
    rng = np.random.default_rng(seed)
    columns = [column_values(rng, n, table.dtype, c) for c in categories]
    return np.stack(columns, axis=1).astype(NUMPY_OF_DTYPE[table.dtype])


def tensor_values(n: int, dtype: str, shape: Sequence[int | str | None], categories: Categories,
                  seed: int = 0) -> np.ndarray:
    """A whole tensor of batch n; the other dimensions must be fixed sizes (a mapping's `shape` gives them)."""
    dims = tuple(shape[1:])
    if not all(isinstance(d, int) for d in dims):
        raise ValueError(f"shape {list(shape)} has symbolic dimensions after the batch")
    full = (n, *(int(d) for d in dims))  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    flat = column_values(rng, int(np.prod(full)), dtype, categories)
    return flat.reshape(full).astype(NUMPY_OF_DTYPE[dtype])



# ---------------------------------------------------------------------------- rows of several inputs


def typed_rows(n: int, inputs: MergedInputs, shapes: Mapping[str, Sequence[int | str | None]],
               columns: Sequence[Categories], tensors: dict[str, Categories], seed: int = 0) -> np.ndarray:
    """Random rows of a mapping with several or typed inputs: one record per row, one field per merged
    input (a table's [k] columns, a tensor's shape after the batch), so rows are taken, joined and cut
    in pieces as one array."""
    arrays: dict[str, np.ndarray] = {}
    for k, item in enumerate(inputs.items):
        if isinstance(item, TableInput):
            arrays[item.name] = table_rows(n, item, [columns[inputs.position[c]] for c in item.columns], seed + k)
        else:
            arrays[item.name] = tensor_values(n, item.dtype, shapes[item.name], tensors.get(item.name, NONE), seed + k)
    return records(arrays)


def records(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Arrays with one row per record (same length) as one structured array with a field each."""
    n = len(next(iter(arrays.values())))
    out = np.zeros(n, dtype=[(name, a.dtype, a.shape[1:]) for name, a in arrays.items()])
    for name, a in arrays.items():
        out[name] = a
    return out


def finite_records(rows: np.ndarray) -> np.ndarray:
    """Per row: every number in it is finite (strings always are)."""
    if rows.dtype.names is None:
        return np.asarray(np.isfinite(rows).all(axis=1)) if rows.dtype.kind in "fc" else np.ones(len(rows), dtype=bool)
    ok = np.ones(len(rows), dtype=bool)
    for name in rows.dtype.names:
        field = rows[name]
        if field.dtype.kind in "fc":
            ok &= np.isfinite(field.reshape(len(rows), -1)).all(axis=1)
    return ok


def data_rows(inputs: MergedInputs, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Real rows (--data: an array per merged input) as verification takes them: the one float table of an
    `[input]` mapping as it is, else records like typed_rows' with each input in its own dtype."""
    if inputs.single_table and inputs.tables[0].dtype in ("float32", "float64"):
        return arrays[inputs.items[0].name].astype(inputs.items[0].dtype)
    return records({i.name: np.asarray(arrays[i.name]).astype(NUMPY_OF_DTYPE[i.dtype]) for i in inputs.items})
