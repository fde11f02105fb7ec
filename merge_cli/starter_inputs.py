"""Lay out `[inputs.*]` for `init` when the models read strings, integer codes or whole tensors.

Float inputs of one row ([N] or [N, k]) take columns of a float table, as `[input]` would; string
inputs take columns of a string table, integer codes of one column an int64/int32 table; any other
input (an image [N, 3, H, W], token ids [N, T]) is bound whole to a tensor input named after it,
which models whose inputs share that name, type and shape share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .graphs import BOOL, DTYPE_OF_INPUT_TYPE, INT32, INT64, STRING
from .inspection import Port, input_width
from .naming import unique_name

TABLE_OF = {"string": "strings", "int64": "codes", "int32": "codes32", "bool": "flags"}  # float tables: "features"


@dataclass
class StarterInput:
    """One `[inputs.<name>]` table of the starter file: columns (a table) or a shape (a tensor)."""

    name: str
    dtype: str
    columns: list[str] | None = None
    shape: list[int | str] | None = None


@dataclass
class StarterInputs:
    """The merged inputs, and per model and model input what it is bound to: columns, or a tensor's name."""

    inputs: list[StarterInput] = field(default_factory=list)
    bindings: dict[str, list[tuple[str, list[str] | str]]] = field(default_factory=dict)


def typed_port(port: Port) -> bool:
    """A port `[input]` cannot feed well: strings, integer codes, or not one row of known width."""
    if port.elem_type in (STRING, INT64, INT32, BOOL):
        return True
    return input_width(port) is None


def as_tensor(port: Port) -> bool:
    """Bound whole: anything but strings, one integer column, or a float row of known width."""
    if port.elem_type == STRING:
        return False
    return input_width(port) is None or (port.elem_type in (INT64, INT32, BOOL) and input_width(port) != 1)


def column_names(model: str, ports: list[Port], port: Port) -> list[str]:
    """As `[input]` mappings name them: a one-input model's columns `<model>_<i>`; with several inputs, a
    one-column input is named after itself (skl2onnx writes one [N, 1] input per DataFrame column)."""
    width = input_width(port) or 1
    if len(ports) == 1:
        return [f"{model}_{i}" for i in range(width)]
    return [port.name] if width == 1 else [f"{model}_{port.name}_{i}" for i in range(width)]


def lay_out(models: list[tuple[str, list[Port]]], float_dtype: str) -> StarterInputs:
    """The [inputs.*] tables for these models (name, input ports) and what each model input is bound to."""
    out = StarterInputs()
    tables: dict[str, StarterInput] = {}
    tensors: dict[tuple[str, str, int], StarterInput] = {}  # (input name, dtype, rank) -> the shared tensor
    column_dtype: dict[str, str] = {}
    taken: set[str] = set()
    for name, ports in models:
        bound: list[tuple[str, list[str] | str]] = []
        for port in ports:
            dtype = DTYPE_OF_INPUT_TYPE.get(port.elem_type, "float32")
            if as_tensor(port):
                shape: list[int | str] = ["N", *(port.shape or [])[1:]]
                key = (port.name, dtype, len(shape))
                shared = tensors.get(key)
                if shared is not None and shared.shape is not None and _fits(shared.shape, shape):
                    # a size one model fixes and another leaves open: the fixed one (verification needs it)
                    shared.shape = [b if isinstance(b, int) else a for a, b in zip(shared.shape, shape, strict=True)]
                else:
                    shared = StarterInput(unique_name(port.name, taken), dtype, shape=shape)
                    tensors.setdefault(key, shared)
                    out.inputs.append(shared)
                bound.append((port.name, shared.name))
                continue
            dtype = float_dtype if dtype in ("float32", "float64") else dtype
            table = TABLE_OF.get(dtype, "features")
            if table not in tables:
                tables[table] = StarterInput(unique_name(table, taken), dtype, columns=[])
                out.inputs.append(tables[table])
            cols = []
            for column in column_names(name, ports, port):
                if column_dtype.setdefault(column, dtype) != dtype:  # one name, two types: a column each
                    column = unique_name(column, set(column_dtype))
                    column_dtype[column] = dtype
                if column not in (tables[table].columns or []):
                    tables[table].columns.append(column)  # type: ignore[union-attr]
                cols.append(column)
            bound.append((port.name, cols))
        out.bindings[name] = bound
    out.inputs.sort(key=lambda i: i.columns is None)  # tables first, then tensors, each in order of first use
    return out


def _fits(a: list[int | str], b: list[int | str]) -> bool:
    """Two shapes one tensor can have: equal wherever both are fixed."""
    return all(not isinstance(x, int) or not isinstance(y, int) or x == y for x, y in zip(a[1:], b[1:], strict=True))
