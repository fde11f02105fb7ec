"""The merged model's inputs: tables of typed columns routed to the models, and tensors passed whole.

A mapping's `[input]` is one float table (the shorthand for `[inputs.features]`); `[inputs.<name>]`
tables declare several, in file order. Column names are unique across all tables, so a model binds
to columns by name wherever they live; columns are numbered across the tables, in order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .errors import MergeError
from .graphs import MAX_ROW_VALUES, row_values, shape_text

InputDtype = Literal["float32", "float64", "int64", "int32", "bool", "string"]
INPUT_DTYPES: tuple[InputDtype, ...] = ("float32", "float64", "int64", "int32", "bool", "string")
TABLE_KEYS = {"columns", "dtype"}
TENSOR_KEYS = {"dtype", "shape"}
Dim = int | str  # a fixed size, or a symbolic one ("N")
ErrorAt = Callable[[str, str, str | None], MergeError]  # (mapping key, what is wrong, hint) -> the error


def family(dtype: str) -> Literal["numeric", "string"]:
    """Numbers cast into each other; strings feed string inputs only."""
    return "string" if dtype == "string" else "numeric"


@dataclass(frozen=True)
class TableInput:
    """A merged input [N, k] of named columns, each routed to the model inputs that list it."""

    name: str
    columns: tuple[str, ...]
    dtype: InputDtype = "float32"

    @functools.cached_property
    def position(self) -> dict[str, int]:
        """Column name -> index (wide tables have thousands of columns: no list searches)."""
        return {c: i for i, c in enumerate(self.columns)}


@dataclass(frozen=True)
class TensorInput:
    """A merged input passed whole to the model inputs bound to it; its first dimension is the batch."""

    name: str
    dtype: InputDtype = "float32"
    shape: tuple[Dim, ...] | None = None  # None: as the models bound to it declare it


MergedInput = TableInput | TensorInput


@dataclass(frozen=True)
class MergedInputs:
    """Every merged input in mapping order; table columns numbered across the tables, in order."""

    items: tuple[MergedInput, ...]

    @functools.cached_property
    def tables(self) -> tuple[TableInput, ...]:
        return tuple(i for i in self.items if isinstance(i, TableInput))

    @functools.cached_property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for t in self.tables for c in t.columns)

    @functools.cached_property
    def position(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.columns)}

    @functools.cached_property
    def owners(self) -> tuple[tuple[TableInput, int], ...]:
        """Column number -> its table and its index there."""
        return tuple((t, i) for t in self.tables for i in range(len(t.columns)))

    @functools.cached_property
    def by_name(self) -> dict[str, MergedInput]:
        """Name -> merged input (a search per lookup made 16,000 tables take 6 s in the merge summary)."""
        return {i.name: i for i in self.items}

    def named(self, name: str) -> MergedInput | None:
        return self.by_name.get(name)

    def dtype_of(self, column: int) -> InputDtype:
        return self.owners[column][0].dtype

    @property
    def single_table(self) -> bool:
        """One float table and nothing else: what `[input]` declares, and all a merge needed before."""
        return len(self.items) == 1 and isinstance(self.items[0], TableInput)


# ---------------------------------------------------------------------------- reading a mapping's [inputs.*]


def parse_inputs(doc: Any, error: ErrorAt) -> MergedInputs:
    """The `[inputs.<name>]` tables of a mapping, refusing unknown keys, dtypes and repeated column names."""
    if not isinstance(doc, dict) or not doc:
        raise error("inputs", "must hold one table per merged input", '[inputs.features] with columns = ["A", "B"], '
                    'or [inputs.image] with dtype and shape for a tensor')
    items: list[MergedInput] = []
    owner: dict[str, str] = {}  # column -> the table that has it
    for name, table in doc.items():
        where = f"inputs.{name}"
        if not isinstance(table, dict):
            raise error(where, f"must be a table, not {kind_of(table)}", None)
        if "columns" not in table:
            items.append(parse_tensor(table, where, name, error))
            continue
        parsed = parse_table(table, where, name, error)
        for i, column in enumerate(parsed.columns):
            if column in owner:
                raise error(f"{where}.columns[{i}]", f"column {column!r} is also in inputs.{owner[column]}",
                            "column names must be unique across all [inputs.*] tables; rename one")
            owner[column] = name
        items.append(parsed)
    return MergedInputs(tuple(items))


def parse_table(doc: dict[str, Any], where: str, name: str, error: ErrorAt,
                dtypes: tuple[str, ...] = INPUT_DTYPES) -> TableInput:
    _known_keys(doc, TABLE_KEYS, where, error, "a table takes columns and dtype (a tensor: dtype and shape)")
    columns = doc["columns"]
    if not isinstance(columns, list) or not columns:
        raise error(f"{where}.columns", f"must be a non-empty list of column names, not {kind_of(columns)}",
                    'list the input\'s columns, e.g. columns = ["A", "B"]')
    seen: set[str] = set()
    for i, c in enumerate(columns):
        if not isinstance(c, str) or not c:
            raise error(f"{where}.columns[{i}]", f"must be a non-empty string, not {kind_of(c)}", None)
        if c in seen:
            raise error(f"{where}.columns[{i}]", f"column {c!r} is listed twice", "column names must be unique")
        seen.add(c)
    return TableInput(name, tuple(columns), _dtype(doc, where, error, dtypes))


def parse_tensor(doc: dict[str, Any], where: str, name: str, error: ErrorAt) -> TensorInput:
    _known_keys(doc, TENSOR_KEYS, where, error, "a tensor takes dtype and shape (a table: columns and dtype)")
    shape = None
    if "shape" in doc:
        value = doc["shape"]
        if not isinstance(value, list) or not value:
            raise error(f"{where}.shape", f"must be a non-empty list of dimensions, not {kind_of(value)}",
                        'e.g. shape = ["N", 3, 224, 224]: the batch first, then sizes or names')
        for i, d in enumerate(value):
            fixed = isinstance(d, int) and not isinstance(d, bool) and d > 0
            if not fixed and not (isinstance(d, str) and d):
                raise error(f"{where}.shape[{i}]", f"must be a positive size or a name, not {kind_of(d)}",
                            'e.g. shape = ["N", 3, 224, 224]')
        shape = tuple(value)
        if row_values(shape) > MAX_ROW_VALUES:
            raise error(f"{where}.shape", f"{shape_text(shape)} is {row_values(shape)} values per row; more than "
                        f"{MAX_ROW_VALUES} is refused", "a row of a tensor input is one example: check the sizes")
    return TensorInput(name, _dtype(doc, where, error, INPUT_DTYPES), shape)


def _dtype(doc: dict[str, Any], where: str, error: ErrorAt, dtypes: tuple[str, ...]) -> InputDtype:
    dtype = doc.get("dtype", "float32")
    if dtype not in dtypes:
        raise error(f"{where}.dtype", f"unsupported dtype {dtype!r}", f"use one of {', '.join(dtypes)}")
    return dtype  # type: ignore[no-any-return]


def _known_keys(doc: dict[str, Any], allowed: set[str], where: str, error: ErrorAt, hint: str) -> None:
    for key in doc:
        if key not in allowed:
            raise error(f"{where}.{key}", "unknown key", hint)


def kind_of(value: Any) -> str:
    """How an error names a value the mapping gave: `string 'x'`, `a list`, `boolean true`, ..."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int) and len(digits := str(abs(value))) > 30:  # a 400-digit weight: not all of it
        return f"number {'-' if value < 0 else ''}{digits[:6]}... ({len(digits)} digits)"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if value is None:
        return "null"
    return type(value).__name__


def canonical_inputs(inputs: MergedInputs) -> dict[str, Any]:
    """The `inputs` of a canonical mapping: each merged input as the mapping file writes it."""
    out: dict[str, Any] = {}
    for item in inputs.items:
        if isinstance(item, TableInput):
            out[item.name] = {"columns": list(item.columns), "dtype": item.dtype}
        else:
            out[item.name] = {"dtype": item.dtype} | ({"shape": list(item.shape)} if item.shape else {})
    return out
