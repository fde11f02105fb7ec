"""Read and validate the feature-mapping file (TOML, JSON or YAML) into frozen dataclasses."""

from __future__ import annotations

import functools
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .errors import MergeError, bad_input, usage

Dtype = Literal["float32", "float64"]
Task = Literal["classification", "regression"]
COMBINERS = ("mean", "weighted", "sum", "max", "min", "concat", "vote", "stack", "gate", "onnx")
MAX_MAPPING_BYTES = 16 * 1024 * 1024
MODEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")

TOP_KEYS = {"version", "input", "models", "combiner"}
INPUT_KEYS = {"name", "columns", "dtype"}
MODEL_KEYS = {"path", "columns", "inputs", "output", "weight", "task", "classes"}
# Combiner keys by kind; "kind" is allowed for all.
COMBINER_KEYS: dict[str, set[str]] = {
    "mean": set(),
    "weighted": set(),
    "sum": set(),
    "max": set(),
    "min": set(),
    "concat": set(),
    "vote": set(),
    "stack": {"data", "target", "passthrough", "alpha", "folds"},
    "gate": {"missing_label"},
    "onnx": {"path"},
}


@dataclass(frozen=True)
class InputSpec:
    """The merged model's one input: a row of named columns."""

    name: str
    columns: tuple[str, ...]
    dtype: Dtype = "float32"

    @functools.cached_property
    def position(self) -> dict[str, int]:
        """Column name -> index (wide tables have thousands of columns: no list searches)."""
        return {c: i for i, c in enumerate(self.columns)}


@dataclass(frozen=True)
class Route:
    """Columns (indices into InputSpec.columns) fed to one model input; input None = the only one."""

    input: str | None
    columns: tuple[int, ...]


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
    missing_label: int | str = -1
    path: Path | None = None


@dataclass(frozen=True)
class FeatureMapping:
    source: Path
    input: InputSpec
    models: tuple[ModelSpec, ...]
    combiner: CombinerSpec = field(default_factory=CombinerSpec)

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)


# ---------------------------------------------------------------------------- reading


def load_mapping(path: Path) -> FeatureMapping:
    """Parse and validate a mapping file; every problem is a MergeError naming the file and key."""
    doc = read_document(path)
    return parse_mapping(doc, path)


def read_document(path: Path) -> dict[str, Any]:
    """Decode TOML, JSON or YAML (by extension) strictly: no BOM, no duplicate keys, no NaN."""
    try:
        if not path.exists():
            raise bad_input(path, "no such mapping file")
        if path.is_dir():
            raise bad_input(path, "is a directory, not a mapping file")
        size = path.stat().st_size
        if size > MAX_MAPPING_BYTES:
            raise bad_input(path, f"mapping file is {size} bytes; more than {MAX_MAPPING_BYTES} is refused")
        with open(path, "rb") as f:  # capped: a pipe or /dev/zero has no size to check first
            raw = f.read(MAX_MAPPING_BYTES + 1)
        if len(raw) > MAX_MAPPING_BYTES:
            raise bad_input(path, f"mapping file is over {MAX_MAPPING_BYTES} bytes; more is refused")
    except OSError as e:
        raise bad_input(path, f"cannot read mapping file: {e.strerror or e}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raise bad_input(path, "starts with a UTF-8 byte-order mark", "save the file as UTF-8 without a BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_input(path, f"is not valid UTF-8 (byte {e.start})", "save the file as UTF-8") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            doc: Any = tomllib.loads(text)
        elif suffix == ".json":
            doc = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
        elif suffix in (".yaml", ".yml"):
            doc = _load_yaml(text, path)
        else:
            raise bad_input(path, f"unknown mapping format {suffix or '(no extension)'!r}",
                            "name the file .toml, .json or .yaml")
    except MergeError:
        raise
    except tomllib.TOMLDecodeError as e:
        raise bad_input(path, f"invalid TOML: {e}") from None
    except json.JSONDecodeError as e:
        raise bad_input(path, f"invalid JSON: {e}") from None
    except _DocumentError as e:
        raise bad_input(path, str(e)) from None
    except RecursionError:
        raise bad_input(path, "nested too deeply to be a mapping file") from None
    if not isinstance(doc, dict):
        raise bad_input(path, f"the top level must be a table/object, not {_kind(doc)}")
    return doc


class _DocumentError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DocumentError(f"invalid JSON: duplicate key {k!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise _DocumentError(f"invalid JSON: {name} is not a number JSON allows")


def _load_yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise bad_input(path, "YAML mapping files need PyYAML", "pip install 'merge-models[yaml]' or use TOML") from None

    class StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        keys = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
            if key in keys:
                raise _DocumentError(f"invalid YAML: duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            keys.add(key)
        return loader.construct_mapping(node)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise _DocumentError(f"invalid YAML: {str(e).splitlines()[0]}") from None


# ---------------------------------------------------------------------------- validation


def parse_mapping(doc: dict[str, Any], source: Path) -> FeatureMapping:
    """Turn a decoded document into a FeatureMapping, refusing anything unknown or inconsistent."""
    v = _Validator(source)
    v.keys(doc, TOP_KEYS, "")
    version = doc.get("version", 1)
    if version != 1 or isinstance(version, bool):
        raise v.error("version", f"unsupported version {version!r}", "this merge-models reads version = 1")
    inp = v.table(doc, "input", required=True)
    v.keys(inp, INPUT_KEYS, "input")
    name = v.string(inp.get("name", "features"), "input.name")
    columns = v.string_list(inp.get("columns"), "input.columns")
    if not columns:
        raise v.error("input.columns", "no columns", 'list the merged input\'s columns, e.g. columns = ["A", "B"]')
    seen: set[str] = set()
    for i, c in enumerate(columns):
        if c in seen:
            raise v.error(f"input.columns[{i}]", f"column {c!r} is listed twice", "column names must be unique")
        seen.add(c)
    dtype = inp.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise v.error("input.dtype", f"unsupported dtype {dtype!r}", 'use "float32" or "float64"')
    input_spec = InputSpec(name=name, columns=tuple(columns), dtype=dtype)

    models_doc = v.table(doc, "models", required=True)
    if not models_doc:
        raise v.error("models", "no models", "add a [models.<name>] table per model")
    models = tuple(v.model(mname, mdoc, input_spec) for mname, mdoc in models_doc.items())

    comb_doc = v.table(doc, "combiner", required=False)
    combiner = v.combiner(comb_doc, input_spec)
    return FeatureMapping(source=source, input=input_spec, models=models, combiner=combiner)


class _Validator:
    def __init__(self, source: Path) -> None:
        self.source = source
        self.base = source.parent

    def error(self, key: str, message: str, hint: str | None = None) -> MergeError:
        return bad_input(self.source, f"{key}: {message}" if key else message, hint)

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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, f"must be a finite number, not {_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum}, not {value}")
        return float(value)

    def columns(self, value: Any, key: str, spec: InputSpec) -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            raise self.error(key, f"must be a non-empty list of column names or indices, not {_kind(value)}")
        out: list[int] = []
        seen: set[int] = set()
        for i, c in enumerate(value):
            where = f"{key}[{i}]"
            if isinstance(c, bool) or not isinstance(c, (int, str)):
                raise self.error(where, f"a column is a name or a 0-based index, not {_kind(c)}")
            if isinstance(c, int):
                if not 0 <= c < len(spec.columns):
                    raise self.error(where, f"column index {c} is out of range",
                                     f"indices are 0-based into input.columns (0..{len(spec.columns) - 1})")
                index = c
            else:
                if c not in spec.position:
                    raise self.error(where, f"unknown column {c!r}",
                                     f"use a name from input.columns ({_preview(spec.columns)}) or a 0-based index")
                index = spec.position[c]
            if index in seen:
                raise self.error(where, f"column {spec.columns[index]!r} is repeated",
                                 "list each column once per model input")
            out.append(index)
            seen.add(index)
        return tuple(out)

    def path(self, value: Any, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a file path string, not {_kind(value)}")
        return self.base / value

    def model(self, name: str, doc: Any, spec: InputSpec) -> ModelSpec:
        where = f"models.{name}"
        if not MODEL_NAME.match(name):
            raise self.error(where, f"model name {name!r} is not usable as a graph prefix",
                             "use letters, digits, '_', '.', '-' (starting with a letter or '_')")
        if not isinstance(doc, dict):
            raise self.error(where, f"must be a table, not {_kind(doc)}")
        self.keys(doc, MODEL_KEYS, where)
        path = self.path(doc["path"], f"{where}.path") if "path" in doc else Path()
        if ("columns" in doc) == ("inputs" in doc):
            raise self.error(where, "give exactly one of columns or inputs",
                             'columns = ["A", "B"] for a one-input model, inputs = { x = ["A"], y = ["B"] } otherwise')
        if "columns" in doc:
            routes: tuple[Route, ...] = (Route(None, self.columns(doc["columns"], f"{where}.columns", spec)),)
        else:
            inputs = doc["inputs"]
            if not isinstance(inputs, dict) or not inputs:
                raise self.error(f"{where}.inputs", f"must be a table of input name -> columns, not {_kind(inputs)}")
            routes = tuple(Route(str(k), self.columns(v, f"{where}.inputs.{k}", spec)) for k, v in inputs.items())
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
            if len(set(ints)) != len(ints):
                raise self.error(key, "class labels repeat")
            return ints
        if all(isinstance(c, str) for c in value):
            strs = tuple(str(c) for c in value)
            if len(set(strs)) != len(strs):
                raise self.error(key, "class labels repeat")
            return strs
        raise self.error(key, "class labels must be all integers or all strings")

    def combiner(self, doc: dict[str, Any], spec: InputSpec) -> CombinerSpec:
        kind = doc.get("kind", "mean")
        if kind not in COMBINERS:
            raise self.error("combiner.kind", f"unknown combiner {kind!r}", f"use one of {', '.join(COMBINERS)}")
        self.keys(doc, COMBINER_KEYS[kind] | {"kind"}, "combiner")
        out = CombinerSpec(kind=kind)
        if "data" in doc:
            out = replace(out, data=self.path(doc["data"], "combiner.data"))
        if "path" in doc:
            out = replace(out, path=self.path(doc["path"], "combiner.path"))
        if "target" in doc:
            out = replace(out, target=self.string(doc["target"], "combiner.target"))
        if doc.get("passthrough", []) != []:  # [] (as the canonical mapping records it) means none
            out = replace(out, passthrough=self.columns(doc["passthrough"], "combiner.passthrough", spec))
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
            out = replace(out, missing_label=label)
        if kind == "stack" and (out.data is None or out.target is None):
            raise self.error("combiner", "kind = \"stack\" needs data and target",
                             'add data = "rows.csv" and target = "y" to [combiner]')
        if kind == "onnx" and out.path is None:
            raise self.error("combiner", "kind = \"onnx\" needs path", 'add path = "combiner.onnx" to [combiner]')
        return out


# ---------------------------------------------------------------------------- overrides


def apply_overrides(
    mapping: FeatureMapping,
    model_paths: list[Path],
    combiner: str | None,
    weights: list[float] | None,
) -> FeatureMapping:
    """Positional MODEL paths replace `path` in file order; --combiner and --weights replace the file's."""
    if len(model_paths) > len(mapping.models):
        raise usage(mapping.source, f"{len(model_paths)} MODEL arguments but the mapping names "
                    f"{len(mapping.models)} models", "give at most one MODEL path per [models.*] table")
    models = list(mapping.models)
    for i, p in enumerate(model_paths):
        models[i] = replace(models[i], path=p)
    for m in models:
        if m.path == Path():
            raise bad_input(mapping.source, f"models.{m.name}.path: missing",
                            "add path = \"model.onnx\" or pass the model file as a MODEL argument")
    if weights is not None:
        if len(weights) != len(models):
            raise usage(None, f"--weights has {len(weights)} values for {len(models)} models",
                        "give one weight per model, in mapping order, e.g. --weights 0.7,0.3")
        models = [replace(m, weight=w) for m, w in zip(models, weights, strict=True)]
    comb = mapping.combiner
    if combiner is not None:
        if combiner not in COMBINERS:
            raise usage(None, f"unknown combiner {combiner!r}", f"use one of {', '.join(COMBINERS)}")
        comb = replace(comb, kind=combiner)
        if combiner == "stack" and (comb.data is None or comb.target is None):
            raise usage(mapping.source, "--combiner stack needs data and target in [combiner]")
        if combiner == "onnx" and comb.path is None:
            raise usage(mapping.source, "--combiner onnx needs path in [combiner]")
    if comb.kind == "weighted":
        missing = [m.name for m in models if m.weight is None]
        if missing:
            raise bad_input(mapping.source, f"combiner weighted: no weight for {', '.join(missing)}",
                            "set weight = ... in each [models.*] table or pass --weights")
        if sum(m.weight or 0.0 for m in models) <= 0:
            raise bad_input(mapping.source, "combiner weighted: the weights sum to 0", "give positive weights")
    return replace(mapping, models=tuple(models), combiner=comb)


def parse_weights(text: str) -> list[float]:
    """--weights 0.7,0.3 -> [0.7, 0.3]; finite and non-negative."""
    out = []
    for part in text.split(","):
        try:
            w = float(part)
        except ValueError:
            raise usage(None, f"--weights: {part.strip()!r} is not a number", "e.g. --weights 0.7,0.3") from None
        if not math.isfinite(w) or w < 0:
            raise usage(None, f"--weights: {part.strip()!r} must be finite and >= 0")
        out.append(w)
    return out


# ---------------------------------------------------------------------------- canonical form


def canonical(mapping: FeatureMapping, relative_to: Path) -> dict[str, Any]:
    """The resolved mapping as plain data (paths relative to `relative_to`), for provenance."""

    def rel(p: Path | None) -> str | None:
        return None if p is None else _relpath(p, relative_to)

    models: dict[str, Any] = {}
    for m in mapping.models:
        entry: dict[str, Any] = {
            "path": rel(m.path),
            "inputs": [{"input": r.input, "columns": [mapping.input.columns[c] for c in r.columns]}
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
        comb |= {"data": rel(c.data), "target": c.target, "alpha": c.alpha, "folds": c.folds,
                 "passthrough": [mapping.input.columns[i] for i in c.passthrough]}
    if c.kind == "gate":
        comb["missing_label"] = c.missing_label
    if c.kind == "onnx":
        comb["path"] = rel(c.path)
    return {
        "version": 1,
        "input": {"name": mapping.input.name, "columns": list(mapping.input.columns), "dtype": mapping.input.dtype},
        "models": models,
        "combiner": comb,
    }


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _relpath(p: Path, start: Path) -> str:
    import os

    try:
        return Path(os.path.relpath(p.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return p.resolve().as_posix()


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
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


def _preview(columns: tuple[str, ...]) -> str:
    shown = ", ".join(columns[:6])
    return shown + (", ..." if len(columns) > 6 else "")
