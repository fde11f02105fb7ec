"""Read and validate the feature-mapping file (TOML, JSON or YAML) into frozen dataclasses."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .document import read_document
from .errors import MergeError, bad_input, incompatible, usage
from .graphs import Task
from .inputs import MergedInputs, TableInput, TensorInput, canonical_inputs, family, parse_inputs
from .inputs import kind_of as _kind

if TYPE_CHECKING:
    from .request import MergeRequest

Dtype = Literal["float32", "float64"]
COMBINER_KINDS = ("mean", "weighted", "sum", "max", "min", "concat", "vote", "stack", "gate", "onnx")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # class labels are int64 tensors
Learner = Literal["auto", "linear"]
LEARNERS: tuple[Learner, ...] = ("auto", "linear")
MODEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")

TOP_KEYS = {"version", "input", "inputs", "models", "combiner"}
INPUT_KEYS = {"name", "columns", "dtype"}
MODEL_KEYS = {"path", "columns", "input", "inputs", "output", "weight", "task", "classes"}
# Combiner keys by kind; "kind" is allowed for all.
COMBINER_KEYS: dict[str, set[str]] = {
    "mean": set(),
    "weighted": set(),
    "sum": set(),
    "max": set(),
    "min": set(),
    "concat": set(),
    "vote": set(),
    "stack": {"data", "target", "passthrough", "alpha", "folds", "learner"},
    "gate": {"missing_label"},
    "onnx": {"path"},
}


InputSpec = TableInput  # what `[input]` declares: the merged model's one table


@dataclass(frozen=True)
class Route:
    """What feeds one model input (None: its only input): columns, numbered across the merged input's
    tables (see inputs.MergedInputs), or `whole`, the name of a merged tensor input passed as it is."""

    input: str | None
    columns: tuple[int, ...]
    whole: str | None = None
    sources: tuple[tuple[str, int], ...] = field(default=(), compare=False)  # per column: its table, its index there


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    routes: tuple[Route, ...]
    output: str | None = None
    weight: float | None = None
    task: Task | None = None
    classes: tuple[int, ...] | tuple[str, ...] | None = None

    @property
    def columns(self) -> tuple[int, ...]:
        """Every column this model reads, in route order (duplicates removed)."""
        return tuple(dict.fromkeys(c for r in self.routes for c in r.columns))


@dataclass(frozen=True)
class CombinerSpec:
    kind: str = "mean"
    data: Path | None = None
    target: str | None = None
    passthrough: tuple[int, ...] = ()
    alpha: float | None = None
    folds: int = 5
    learner: Learner = "auto"  # "linear": never the residual MLP
    missing_label: int | str = -1
    path: Path | None = None


@dataclass(frozen=True)
class FeatureMapping:
    source: Path
    inputs: MergedInputs
    models: tuple[ModelSpec, ...]
    combiner: CombinerSpec = field(default_factory=CombinerSpec)

    @property
    def input(self) -> InputSpec:
        """The one float table of an `[input]` mapping (or of an `[inputs.*]` mapping that declares only that)."""
        if not self.inputs.single_table or self.inputs.items[0].dtype not in ("float32", "float64"):
            raise incompatible(self.source, "this merge-models merges [inputs.*] mappings of one float table only",
                               "declare one float32 or float64 table")
        return self.inputs.tables[0]

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)


# ---------------------------------------------------------------------------- reading


def load_mapping(path: Path) -> FeatureMapping:
    """Parse and validate a mapping file; every problem is a MergeError naming the file and key."""
    doc = read_document(path)
    return parse_mapping(doc, path)


# ---------------------------------------------------------------------------- validation


def parse_mapping(doc: dict[str, Any], source: Path) -> FeatureMapping:
    """Turn a decoded document into a FeatureMapping, refusing anything unknown or inconsistent."""
    v = _Validator(source)
    v.keys(doc, TOP_KEYS, "")
    version = doc.get("version", 1)
    if version != 1 or isinstance(version, bool):
        raise v.error("version", f"unsupported version {version!r}", "this merge-models reads version = 1")
    if "inputs" in doc:
        if "input" in doc:
            raise v.error("input", "give [input] or [inputs.*] tables, not both",
                          "[input] is the shorthand for one table, [inputs.features]: move it there")
        inputs = parse_inputs(doc["inputs"], v.error)
    else:
        inputs = MergedInputs((v.input(v.table(doc, "input", required=True)),))

    models_doc = v.table(doc, "models", required=True)
    if not models_doc:
        raise v.error("models", "no models", "add a [models.<name>] table per model")
    models = tuple(v.model(mname, mdoc, inputs) for mname, mdoc in models_doc.items())
    bound = {r.whole for m in models for r in m.routes}
    for item in inputs.items:
        if isinstance(item, TensorInput) and item.shape is None and item.name not in bound:
            raise v.error(f"inputs.{item.name}", "no model is bound to it and it has no shape",
                          f'bind a model to it (input = "{item.name}"), give its shape, or remove it')
    for m in models:  # the merged graph names model m's tensors "<m>/...": no input may be one of them
        for item in inputs.items:
            if item.name.startswith(f"{m.name}/"):
                raise v.error("input.name" if "inputs" not in doc else f"inputs.{item.name}",
                              f"{item.name!r} starts with '{m.name}/', the prefix of model {m.name}'s tensors",
                              "choose an input name without '/'")

    comb_doc = v.table(doc, "combiner", required=False)
    combiner = v.combiner(comb_doc, inputs)
    return FeatureMapping(source=source, inputs=inputs, models=models, combiner=combiner)


class _Validator:
    def __init__(self, source: Path) -> None:
        self.source = source
        self.base = source.parent

    def error(self, key: str, message: str, hint: str | None = None) -> MergeError:
        return bad_input(self.source, f"{key}: {message}" if key else message, hint)

    def input(self, inp: dict[str, Any]) -> InputSpec:
        """`[input]`: one float table, named `features` unless it says otherwise."""
        self.keys(inp, INPUT_KEYS, "input")
        name = self.string(inp.get("name", "features"), "input.name")
        columns = self.string_list(inp.get("columns"), "input.columns")
        if not columns:
            raise self.error("input.columns", "no columns", 'list the merged input\'s columns, e.g. columns = ["A", "B"]')
        seen: set[str] = set()
        for i, c in enumerate(columns):
            if c in seen:
                raise self.error(f"input.columns[{i}]", f"column {c!r} is listed twice", "column names must be unique")
            seen.add(c)
        dtype = inp.get("dtype", "float32")
        if dtype not in ("float32", "float64"):
            raise self.error("input.dtype", f"unsupported dtype {dtype!r}", 'use "float32" or "float64"')
        return InputSpec(name=name, columns=tuple(columns), dtype=dtype)

    def keys(self, table: dict[str, Any], allowed: set[str], where: str) -> None:
        for k in table:
            if k not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.error(f"{where}.{k}" if where else str(k), "unknown key", f"known keys here: {known}")

    def table(self, doc: dict[str, Any], key: str, required: bool) -> dict[str, Any]:
        if key not in doc:
            if required:
                raise self.error(key, f"missing [{key}] table")
            return {}
        value = doc[key]
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, not {_kind(value)}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty string, not {_kind(value)}")
        return value

    def string_list(self, value: Any, key: str) -> list[str]:
        if not isinstance(value, list):
            raise self.error(key, f"must be a list of column names, not {_kind(value)}")
        for i, c in enumerate(value):
            if not isinstance(c, str) or not c:
                raise self.error(f"{key}[{i}]", f"must be a non-empty string, not {_kind(c)}")
        return value

    def number(self, value: Any, key: str, minimum: float | None = None) -> float:
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max
        if not finite or not math.isfinite(value):  # an int past 1.8e308 has no float (math.isfinite raised)
            raise self.error(key, f"must be a finite number, not {_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum}, not {value}")
        return float(value)

    def columns(self, value: Any, key: str, spec: MergedInputs, one_family: bool = True) -> tuple[int, ...]:
        """Column names (of any tables, one dtype family) or 0-based indices, as numbers across the tables."""
        if not isinstance(value, list) or not value:
            raise self.error(key, f"must be a non-empty list of column names or indices, not {_kind(value)}")
        out: list[int] = []
        seen: set[int] = set()
        where_from = "input.columns" if spec.single_table else "the [inputs.*] tables"
        for i, c in enumerate(value):
            where = f"{key}[{i}]"
            if isinstance(c, bool) or not isinstance(c, (int, str)):
                raise self.error(where, f"a column is a name or a 0-based index, not {_kind(c)}")
            if isinstance(c, int):
                if not 0 <= c < len(spec.columns):
                    raise self.error(where, f"column index {c} is out of range",
                                     f"indices are 0-based into {where_from} (0..{len(spec.columns) - 1})")
                index = c
            else:
                if c not in spec.position:
                    raise self.error(where, f"unknown column {c!r}",
                                     f"use a name from {where_from} ({_preview(spec.columns)}) or a 0-based index")
                index = spec.position[c]
            if index in seen:
                raise self.error(where, f"column {spec.columns[index]!r} is repeated",
                                 "list each column once per model input")
            if one_family and out and family(spec.dtype_of(index)) != family(spec.dtype_of(out[0])):
                first, this = spec.columns[out[0]], spec.columns[index]
                raise self.error(where, f"column {this!r} is {spec.dtype_of(index)} but {first!r} is "
                                 f"{spec.dtype_of(out[0])}", "a model input takes numeric columns or string "
                                 "columns, not both: bind them to separate inputs")
            out.append(index)
            seen.add(index)
        return tuple(out)

    def binding(self, value: Any, key: str, model_input: str | None, spec: MergedInputs) -> Route:
        """What feeds one model input: a list of columns, or the name of a whole merged input."""
        if not isinstance(value, str):
            return Route(model_input, self.columns(value, key, spec))
        item = spec.named(value)
        if item is None:
            names = ", ".join(i.name for i in spec.items)
            raise self.error(key, f"unknown merged input {value!r}",
                             f"name one of the mapping's inputs ({names}), or list columns, e.g. [{value!r}]")
        if isinstance(item, TableInput):  # a whole table: all its columns, routed like any others
            return Route(model_input, tuple(spec.position[c] for c in item.columns))
        return Route(model_input, (), whole=item.name)

    def path(self, value: Any, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a file path string, not {_kind(value)}")
        return self.base / value

    def model(self, name: Any, doc: Any, spec: MergedInputs) -> ModelSpec:
        where = f"models.{name}"
        if not isinstance(name, str) or not MODEL_NAME.match(name):
            raise self.error(where, f"model name {name!r} is not usable as a graph prefix",
                             "use up to 64 letters, digits, '_', '.', '-' (starting with a letter or '_')")
        if not isinstance(doc, dict):
            raise self.error(where, f"must be a table, not {_kind(doc)}")
        self.keys(doc, MODEL_KEYS, where)
        path = self.path(doc["path"], f"{where}.path") if "path" in doc else Path()
        if sum(k in doc for k in ("columns", "input", "inputs")) != 1:
            raise self.error(where, "give exactly one of columns, input or inputs",
                             'columns = ["A", "B"] or input = "image" for a one-input model, '
                             'inputs = { x = ["A"], y = "image" } otherwise')
        if "columns" in doc:
            routes: tuple[Route, ...] = (Route(None, self.columns(doc["columns"], f"{where}.columns", spec)),)
        elif "input" in doc:
            whole = self.string(doc["input"], f"{where}.input")
            routes = (self.binding(whole, f"{where}.input", None, spec),)
        else:
            inputs = doc["inputs"]
            if not isinstance(inputs, dict) or not inputs:
                raise self.error(f"{where}.inputs", f"must be a table of input name -> columns, not {_kind(inputs)}")
            routes = tuple(self.binding(v, f"{where}.inputs.{k}", str(k), spec) for k, v in inputs.items())
        routes = tuple(replace(r, sources=tuple((spec.owners[c][0].name, spec.owners[c][1]) for c in r.columns))
                       for r in routes)
        output = self.string(doc["output"], f"{where}.output") if "output" in doc else None
        weight = self.number(doc["weight"], f"{where}.weight", 0.0) if "weight" in doc else None
        task = doc.get("task")
        if task is not None and task not in ("classification", "regression"):
            raise self.error(f"{where}.task", f"unknown task {task!r}", 'use "classification" or "regression"')
        classes = None
        if "classes" in doc:
            classes = self.classes(doc["classes"], f"{where}.classes")
        return ModelSpec(name, path, routes, output, weight, task, classes)

    def classes(self, value: Any, key: str) -> tuple[int, ...] | tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.error(key, f"must be a non-empty list of class labels, not {_kind(value)}")
        if all(isinstance(c, int) and not isinstance(c, bool) for c in value):
            ints = tuple(int(c) for c in value)
            for i, c in enumerate(ints):
                if not INT64_MIN <= c <= INT64_MAX:
                    raise self.error(f"{key}[{i}]", f"class label {c} does not fit in int64")
            if len(set(ints)) != len(ints):
                raise self.error(key, "class labels repeat")
            return ints
        if all(isinstance(c, str) for c in value):
            strs = tuple(str(c) for c in value)
            if len(set(strs)) != len(strs):
                raise self.error(key, "class labels repeat")
            return strs
        raise self.error(key, "class labels must be all integers or all strings")

    def combiner(self, doc: dict[str, Any], spec: MergedInputs) -> CombinerSpec:
        kind = doc.get("kind", "mean")
        if kind not in COMBINER_KINDS:
            raise self.error("combiner.kind", f"unknown combiner {kind!r}", f"use one of {', '.join(COMBINER_KINDS)}")
        self.keys(doc, COMBINER_KEYS[kind] | {"kind"}, "combiner")
        out = CombinerSpec(kind=kind)
        if "data" in doc:
            out = replace(out, data=self.path(doc["data"], "combiner.data"))
        if "path" in doc:
            out = replace(out, path=self.path(doc["path"], "combiner.path"))
        if "target" in doc:
            out = replace(out, target=self.string(doc["target"], "combiner.target"))
        if doc.get("passthrough") == "all":  # every numeric column of the merged input
            out = replace(out, passthrough=numeric_columns(spec))
        elif doc.get("passthrough", []) != []:  # [] (as the canonical mapping records it) means none
            if isinstance(doc["passthrough"], str):
                raise self.error("combiner.passthrough", f"must be \"all\" or a list of columns, not {doc['passthrough']!r}")
            out = replace(out, passthrough=self.columns(doc["passthrough"], "combiner.passthrough", spec, False))
            strings = [spec.columns[c] for c in out.passthrough if family(spec.dtype_of(c)) == "string"]
            if strings:
                raise self.error("combiner.passthrough", f"column {strings[0]!r} is a string column",
                                 "passthrough takes numeric columns only")
        if "learner" in doc:
            if doc["learner"] not in LEARNERS:
                raise self.error("combiner.learner", f"must be \"auto\" or \"linear\", not {doc['learner']!r}")
            out = replace(out, learner=doc["learner"])
        if "alpha" in doc:
            out = replace(out, alpha=self.number(doc["alpha"], "combiner.alpha", 0.0))
        if "folds" in doc:
            folds = doc["folds"]
            if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
                raise self.error("combiner.folds", f"must be an integer >= 2, not {folds!r}")
            out = replace(out, folds=folds)
        if "missing_label" in doc:
            label = doc["missing_label"]
            if isinstance(label, bool) or not isinstance(label, (int, str)):
                raise self.error("combiner.missing_label", f"must be an integer or a string, not {_kind(label)}")
            if isinstance(label, int) and not INT64_MIN <= label <= INT64_MAX:
                raise self.error("combiner.missing_label", f"{label} does not fit in int64")
            out = replace(out, missing_label=label)
        if kind == "stack" and (out.data is None or out.target is None):
            raise self.error("combiner", "kind = \"stack\" needs data and target",
                             'add data = "rows.csv" and target = "y" to [combiner]')
        if kind == "onnx" and out.path is None:
            raise self.error("combiner", "kind = \"onnx\" needs path", 'add path = "combiner.onnx" to [combiner]')
        return out


# ---------------------------------------------------------------------------- overrides


def apply_overrides(mapping: FeatureMapping, request: MergeRequest) -> FeatureMapping:
    """The request's MODEL paths replace `path` in file order; its combiner and weights replace the file's."""
    model_paths, combiner, weights = request.models, request.combiner, request.weights
    option = request.option
    if len(model_paths) > len(mapping.models):
        raise usage(mapping.source, f"{len(model_paths)} MODEL arguments but the mapping names "
                    f"{len(mapping.models)} models", "give at most one MODEL path per [models.*] table")
    if 0 < len(model_paths) < len(mapping.models):
        names = ", ".join(m.name for m in mapping.models)
        raise usage(mapping.source, f"{len(model_paths)} MODEL argument{'s' if len(model_paths) > 1 else ''} but the "
                    f"mapping names {len(mapping.models)} models ({names})",
                    "give one MODEL path per [models.*] table, in file order, or none to use the mapping's paths")
    models = list(mapping.models)
    for i, p in enumerate(model_paths):
        models[i] = replace(models[i], path=p)
    for m in models:
        if m.path == Path():
            raise bad_input(mapping.source, f"models.{m.name}.path: missing",
                            "add path = \"model.onnx\" or pass the model file as a MODEL argument")
        if not model_paths and not os.path.lexists(m.path):  # a path the user wrote in the mapping, not typed
            raise bad_input(mapping.source, f"models.{m.name}.path: no such file {str(m.path)!r}",
                            f"paths in the mapping are relative to its folder ({str(mapping.source.parent)!r}); "
                            f"fix models.{m.name}.path, or pass the model files as MODEL arguments")
    if weights is not None:
        if len(weights) != len(models):
            raise usage(None, f"{option('weights')} has {len(weights)} value{'s' if len(weights) != 1 else ''} "
                              f"for {len(models)} models",
                        f"give one weight per model, in mapping order, e.g. {option('weights', '0.7,0.3')}")
        models = [replace(m, weight=w) for m, w in zip(models, weights, strict=True)]  # MergeRequest checked them
    comb = mapping.combiner
    if combiner is not None:
        if combiner not in COMBINER_KINDS:
            raise usage(None, f"unknown combiner {combiner!r}", f"use one of {', '.join(COMBINER_KINDS)}")
        comb = replace(comb, kind=combiner)
        if combiner == "stack" and comb.data is None:
            raise usage(mapping.source, f"{option('combiner', 'stack')} needs rows to fit on",
                        f"pass {option('data', 'rows.csv')} (with a target column), or set data and target in [combiner]")
        if combiner == "stack" and comb.target is None:
            raise usage(comb.data, f"{option('combiner', 'stack')} needs a target column in these rows",
                        f"pass {option('target', 'NAME')}")
        if combiner == "onnx" and comb.path is None:
            raise usage(mapping.source, f"{option('combiner', 'onnx')} needs path in [combiner]")
    if comb.kind == "weighted":
        missing = [m.name for m in models if m.weight is None]
        if missing:
            raise bad_input(mapping.source, f"combiner weighted: no weight for {', '.join(missing)}",
                            f"set weight = ... in each [models.*] table or pass {option('weights')}")
    if comb.kind in ("weighted", "vote", "gate") and not any(1.0 if m.weight is None else m.weight for m in models):
        message = f"combiner {comb.kind}: every weight is 0"
        if weights is not None:
            raise usage(None, f"{option('weights')}: {message}", "give at least one model a positive weight")
        raise bad_input(mapping.source, message, "give at least one model a positive weight")
    return replace(mapping, models=tuple(models), combiner=comb)



# ---------------------------------------------------------------------------- canonical form


def numeric_columns(spec: MergedInputs) -> tuple[int, ...]:
    """What passthrough = "all" means: every column that is not a string column."""
    return tuple(i for i in range(len(spec.columns)) if family(spec.dtype_of(i)) == "numeric")


def canonical(mapping: FeatureMapping, relative_to: Path) -> dict[str, Any]:
    """The resolved mapping as plain data (paths relative to `relative_to`), for provenance."""

    def rel(p: Path | None) -> str | None:
        return None if p is None else _relpath(p, relative_to)

    models: dict[str, Any] = {}
    for m in mapping.models:
        entry: dict[str, Any] = {
            "path": rel(m.path),
            "inputs": [{"input": r.input, "whole": r.whole} if r.whole is not None else
                       {"input": r.input, "columns": [mapping.inputs.columns[c] for c in r.columns]}
                       for r in m.routes],
        }
        for key in ("output", "weight", "task"):
            if getattr(m, key) is not None:
                entry[key] = getattr(m, key)
        if m.classes is not None:
            entry["classes"] = list(m.classes)
        models[m.name] = entry
    c = mapping.combiner
    comb: dict[str, Any] = {"kind": c.kind}
    if c.kind == "stack":
        every = c.passthrough == numeric_columns(mapping.inputs)
        comb |= {"data": rel(c.data), "target": c.target, "alpha": c.alpha, "folds": c.folds, "learner": c.learner,
                 "passthrough": "all" if every else [mapping.inputs.columns[i] for i in c.passthrough]}
    if c.kind == "gate":
        comb["missing_label"] = c.missing_label
    if c.kind == "onnx":
        comb["path"] = rel(c.path)
    inputs: dict[str, Any]
    if mapping.inputs.single_table and mapping.inputs.tables[0].dtype in ("float32", "float64"):
        table = mapping.inputs.tables[0]  # as before [inputs.*]: merged files record the same mapping
        inputs = {"input": {"name": table.name, "columns": list(table.columns), "dtype": table.dtype}}
    else:
        inputs = {"inputs": canonical_inputs(mapping.inputs)}
    return {"version": 1, **inputs, "models": models, "combiner": comb}


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _relpath(p: Path, start: Path) -> str:
    import os

    try:
        return Path(os.path.relpath(p.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return p.resolve().as_posix()


def _preview(columns: tuple[str, ...]) -> str:
    shown = ", ".join(columns[:6])
    return shown + (", ..." if len(columns) > 6 else "")
