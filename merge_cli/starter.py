"""Write a commented starter mapping (TOML) for some model files: the `init` command.

Column names come from the models' per-column inputs where they have them (skl2onnx writes one
[N, 1] input per column for a ColumnTransformer); otherwise they are placeholders `<model>_<i>`.
The file merges as written; naming the columns only changes what the merged input's columns are
called and which of them the models share.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import bad_input, cannot_write, incompatible
from .graphs import DOUBLE, ROUTABLE_TYPES, SCORE_TYPES, shape_text
from .inspection import ModelInfo, describe, input_width, model_name
from .mapping import COMBINER_KINDS, parse_mapping
from .naming import unique_name
from .splice import match_routes
from .starter_inputs import StarterInputs, lay_out, typed_port
from .writing import check_output_path, make_folders

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class StarterModel:
    """One [models.*] table of the starter file."""

    name: str
    path: str  # as written in the file: relative to it
    info: ModelInfo
    routes: list[tuple[str | None, list[str]]]  # model input (None: its only input) -> column names
    named: bool  # the column names come from the model's inputs, not placeholders
    output: str | None = None  # set when init had to choose the output that feeds the combiner
    notes: list[str] = field(default_factory=list)
    from_header: bool = False  # the column names come from --columns-from's header

    @property
    def columns(self) -> list[str]:
        return [c for _, cols in self.routes for c in cols]


@dataclass
class Starter:
    """The starter mapping: its text and what went into it; `to_dict()` is the --json document."""

    out: Path | None  # None: printed on stdout
    text: str
    columns: list[str]
    dtype: str
    models: list[StarterModel]
    combiner: str
    notes: list[str] = field(default_factory=list)
    header_notes: list[str] = field(default_factory=list)  # from --columns-from, shown at the top
    inputs: StarterInputs | None = None  # [inputs.*] instead of [input]: strings, integer codes or tensors
    columns_from: Path | None = None  # the --columns-from file: an input --out must not replace

    @property
    def placeholders(self) -> int:
        named = {c for m in self.models if m.named or m.from_header for c in m.columns}
        return sum(1 for c in self.columns if c not in named)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "output": str(self.out) if self.out else None,
            "columns": self.columns,
            "placeholders": self.placeholders,
            "dtype": self.dtype,
            "models": [{
                "name": m.name,
                "path": m.path,
                "columns": m.columns,
                "tensors": [v for _, v in self.inputs.bindings[m.name] if isinstance(v, str)] if self.inputs else [],
                "named_from_inputs": m.named,
                "task": m.info.task,
                "output": m.output,
                "notes": m.notes,
            } for m in self.models],
            "combiner": self.combiner,
            "inputs": [vars(i) for i in self.inputs.inputs] if self.inputs else None,
            "notes": self.header_notes + self.notes,
        }


def starter_mapping(paths: list[Path], out: Path | None, columns_from: Path | None = None) -> Starter:
    """Describe each model as a merge would and lay out a mapping that merges them as written.

    With `columns_from`, a CSV file whose header names the columns, the models that would get
    placeholder names take the header's names instead (see `name_from_header`).
    """
    base = (out.parent if out else Path.cwd()).absolute()
    used: set[str] = set()
    models = []
    for path in paths:
        name = unique_name(model_name(path), used)
        models.append(_starter_model(path, name, base))
    header_notes: list[str] = []
    dtype = "float64" if any(p.elem_type == DOUBLE for m in models for p in m.info.inputs) else "float32"
    inputs = None
    if any(typed_port(p) for m in models for p in m.info.inputs):
        inputs = lay_out([(m.name, m.info.inputs) for m in models], dtype)
        header_notes += [f"inputs.{i.name}: the models leave sizes after the batch open; give them in shape "
                         "(verification draws tensors of that shape)" for i in inputs.inputs
                         if i.shape is not None and not all(isinstance(d, int) for d in i.shape[1:])]
        for m in models:
            m.routes = [(port, cols) for port, cols in inputs.bindings[m.name] if isinstance(cols, list)]
            m.named = all(c in {p.name for p in m.info.inputs} for c in m.columns)
            m.notes = [n for n in m.notes if not n.startswith("input ")]  # the [inputs.*] tables take them
    if columns_from is not None:
        if inputs is not None:
            header_notes += [f"--columns-from {columns_from.name} names the columns of one float table; "
                            "these models read typed inputs, so it was not used"]
        else:
            models, header_notes = name_from_header(models, read_header(columns_from), columns_from)
    columns = list(dict.fromkeys(c for m in models for c in m.columns))
    combiner, notes = _choose_combiner(models)
    starter = Starter(out, "", columns, dtype, models, combiner, notes, header_notes, inputs, columns_from)
    starter.text = render(starter)
    check_starter(starter, base)
    return starter


def _starter_model(path: Path, name: str, base: Path) -> StarterModel:
    info = describe(path, name)
    output = None
    if info.problem is not None:
        # e.g. several outputs and none chosen: offer the first floating-point output, if that works
        scores = [p.name for p in info.outputs if p.elem_type in SCORE_TYPES]
        if scores:
            retry = describe(path, name, output=scores[0])
            if retry.problem is None:
                info, output = retry, scores[0]
    routes, named = _routes(info)
    model = StarterModel(name, _relative(path, base), info, routes, named, output)
    for port in info.inputs:
        if port.elem_type not in ROUTABLE_TYPES:
            model.notes.append(f"input {port.name!r} is {port.type}: merge-models feeds numeric columns only")
        elif input_width(port) is None:
            model.notes.append(f"input {port.name!r} has shape {shape_text(port.shape)}: its width is unknown; "
                               "list its columns")
    if info.problem is not None:
        model.notes.append(f"merge-models cannot use this model as it is: {info.problem.message}"
                           + (f" ({info.problem.hint})" if info.problem.hint else ""))
    return model


def _routes(info: ModelInfo) -> tuple[list[tuple[str | None, list[str]]], bool]:
    """Per-column inputs name their column; wider inputs get placeholders."""
    inputs = info.inputs
    if len(inputs) == 1:
        width = input_width(inputs[0]) or 1
        return [(None, [f"{info.name}_{i}" for i in range(width)])], False
    routes: list[tuple[str | None, list[str]]] = []
    for port in inputs:
        width = input_width(port) or 1
        if input_width(port) == 1:
            routes.append((port.name, [port.name]))
        else:
            routes.append((port.name, [f"{info.name}_{port.name}_{i}" for i in range(width)]))
    named = all(input_width(p) == 1 for p in inputs)
    return routes, named


def read_header(path: Path) -> list[str]:
    """The column names in the first line of a CSV file (a .tsv: tab-separated)."""
    import collections
    import csv

    from .data import header_line

    try:
        text = header_line(path).decode("utf-8-sig")
        header = next(csv.reader([text.rstrip("\r\n")], delimiter="\t" if path.suffix.lower() == ".tsv" else ","), [])
    except (UnicodeDecodeError, csv.Error) as e:
        raise bad_input(path, f"cannot read the header: {e}") from None
    header = [name.strip() for name in header]
    if not header or not all(header):
        raise bad_input(path, "has no header row naming every column",
                        "--columns-from takes a CSV file whose first line names the columns")
    counts = collections.Counter(header)  # header.count per name took hours on a 2M-column header
    repeated = sorted(n for n, k in counts.items() if k > 1)
    if repeated:
        raise bad_input(path, f"the header names {', '.join(map(repr, repeated[:5]))}"
                        f"{f' (and {len(repeated) - 5} more)' if len(repeated) > 5 else ''} more than once")
    return header


def name_from_header(models: list[StarterModel], header: list[str], path: Path) -> tuple[list[StarterModel], list[str]]:
    """Give the placeholder columns the header's names.

    The models read the header's columns in turn, in the order given (the first model the first
    columns, the next model the columns after them), as when each was trained on its block of one
    table; when the widths add up to more than the header has but all are equal, every model reads
    the first columns (models trained on the same table). Columns left over (a target, an id) are
    not in the mapping; `merge --data` ignores them.
    """
    placeholder = [m for m in models if not m.named]
    widths = [len(m.columns) for m in placeholder]
    if not placeholder:
        return models, [f"every model names its columns itself; the header of {path.name} was not needed"]
    if sum(widths) <= len(header):
        starts = [sum(widths[:i]) for i in range(len(widths))]
    elif len(set(widths)) == 1 and widths[0] <= len(header):
        starts = [0] * len(widths)
    else:
        raise incompatible(path, f"the header has {len(header)} columns; the models read "
                                 f"{' + '.join(map(str, widths))} = {sum(widths)} in turn",
                           "give a header with each model's columns in turn, or rename the placeholders by hand")
    renamed = {}
    for m, start in zip(placeholder, starts, strict=True):
        names = iter(header[start:start + len(m.columns)])
        routes = [(port, [next(names) for _ in cols]) for port, cols in m.routes]
        renamed[m.name] = replace(m, routes=routes, from_header=True)
    models = [renamed.get(m.name, m) for m in models]
    used = {c for m in models for c in m.columns}
    unused = [c for c in header if c not in used]
    notes = [f"column names from the header of {path.name}"]
    if unused:
        shown = ", ".join(unused[:10]) + (f" and {len(unused) - 10} more" if len(unused) > 10 else "")
        notes.append(f"not read by any model: {shown} (merge --data ignores such columns; "
                     "a target is named by --target)")
    return models, notes


def _choose_combiner(models: list[StarterModel]) -> tuple[str, list[str]]:
    """mean where the models' outputs line up; concat (side by side) where they cannot be averaged."""
    parts = [m.info.part for m in models if m.info.part is not None]
    if len(parts) < len(models):
        return "mean", []
    tasks = {p.task for p in parts}
    if len(tasks) > 1:
        return "concat", ["the models mix classifiers and regressors, so their outputs are put side by side; "
                          "to average them instead, choose outputs of one shape (output = ...) and kind = \"mean\""]
    if tasks == {"regression"} and len({p.head.shape[1:] if p.head.shape else None for p in parts}) > 1:
        return "concat", ["the regressors' outputs differ in shape, so they are put side by side"]
    if tasks == {"classification"} and len({p.classes for p in parts}) > 1:
        return "concat", ["the classifiers have different classes, so their probabilities are put side by side"]
    return "mean", []


def _relative(path: Path, base: Path) -> str:
    """`path` relative to the mapping's folder; absolute when they share nothing but the root."""
    full = path.absolute()
    try:
        if Path(os.path.commonpath([full, base])) != Path(full.anchor):
            return Path(os.path.relpath(full, base)).as_posix()
    except ValueError:  # another drive on Windows
        pass
    return full.as_posix()


# ---------------------------------------------------------------------------- the text


def render(starter: Starter) -> str:
    """The commented TOML text."""
    lines = [
        f"# Feature mapping for merge-models, written by `merge-models init` for {len(starter.models)} models.",
        "# [input].columns is the merged model's input row, in order; each model reads its columns by name,",
        "# and a column listed for several models is shared by them.",
    ]
    lines += _notes(starter.header_notes)
    if starter.placeholders:
        lines += [
            f"# {starter.placeholders} columns have placeholder names (<model>_<i>): rename them to your feature",
            "# names, here and in the models' lists. The file merges as it is, too.",
        ]
    out = starter.out.as_posix() if starter.out else "features.toml"
    lines += [f"#   merge-models merge --map {_shell_word(out)} --out merged.onnx", "", "version = 1", ""]
    if starter.inputs is not None:
        return _render_typed(starter, lines)
    lines += ["[input]", 'name = "features"', f'dtype = "{starter.dtype}"   # float32 | float64',
              f"columns = {_list(starter.columns)}"]
    for m in starter.models:
        lines += ["", f"[models.{_key(m.name)}]", f"# {_about(m.info)}"]
        lines += _notes(m.notes)
        lines.append(f"path = {_str(m.path)}   # relative to this file")
        if len(m.routes) == 1 and m.routes[0][0] is None:
            port = m.info.inputs[0]
            lines.append(f"columns = {_list(m.routes[0][1])}   # fed, in order, to {port.name} {shape_text(port.shape)}")
        head = m.info.part.head.name if m.info.part else None
        if m.output is not None:
            names = ", ".join(p.name for p in m.info.outputs)
            lines.append(f"output = {_str(m.output)}   # chosen by init from the outputs {names}")
        elif head is not None:
            lines.append(f"# output = {_str(head)}   # the output that feeds the combiner (the default)")
        lines.append("# weight = 1.0   # for kind = \"weighted\"")
        if not (len(m.routes) == 1 and m.routes[0][0] is None):
            lines += ["", f"[models.{_key(m.name)}.inputs]   # the model's inputs and the columns each one takes"]
            lines += [f"{_key(str(inp))} = {_list(cols)}" for inp, cols in m.routes]
    lines += ["", "[combiner]"]
    lines += _notes(starter.notes)
    lines += [f"# {' | '.join(COMBINER_KINDS)} (see the README)", f'kind = "{starter.combiner}"']
    return "\n".join(lines) + "\n"


def _render_typed(starter: Starter, lines: list[str]) -> str:
    """The [inputs.*] form: tables of typed columns, tensors passed whole, each model's bindings."""
    assert starter.inputs is not None
    lines[0:3] = [lines[0], "# Each [inputs.<name>] is one input of the merged model: a table (columns, routed to the",
                  "# models that list them) or a tensor (passed whole to the models bound to it)."]
    for item in starter.inputs.inputs:
        lines += [f"[inputs.{_key(item.name)}]", f'dtype = "{item.dtype}"']
        if item.columns is not None:
            lines.append(f"columns = {_list(item.columns)}")
        else:
            dims = ", ".join(str(d) if isinstance(d, int) else _str(d) for d in item.shape or [])
            lines.append(f"shape = [{dims}]   # the batch first")
        lines.append("")
    for m in starter.models:
        lines += [f"[models.{_key(m.name)}]", f"# {_about(m.info)}"]
        lines += _notes(m.notes)
        lines.append(f"path = {_str(m.path)}   # relative to this file")
        if m.output is not None:
            lines.append(f"output = {_str(m.output)}   # chosen by init")
        bound = starter.inputs.bindings[m.name]
        if len(bound) == 1:
            (_, value), = bound
            lines.append(f"input = {_str(value)}" if isinstance(value, str) else f"columns = {_list(value)}")
        else:
            lines += ["", f"[models.{_key(m.name)}.inputs]   # per model input: columns, or a whole merged input"]
            lines += [f"{_key(port)} = {_str(v) if isinstance(v, str) else _list(v)}" for port, v in bound]
        lines.append("")
    lines += ["[combiner]"]
    lines += _notes(starter.notes)
    lines += [f"# {' | '.join(COMBINER_KINDS)} (see the README)", f'kind = "{starter.combiner}"']
    return "\n".join(lines) + "\n"


def _notes(notes: list[str]) -> list[str]:
    import textwrap

    return [line for n in notes for line in textwrap.wrap(n, 96, initial_indent="# note: ", subsequent_indent="#   ")]


def _shell_word(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _about(info: ModelInfo) -> str:
    part = info.part
    if part is None:
        what = "model"
    elif part.task == "classification":
        classes = list(part.classes or ())
        shown = ", ".join(map(str, classes[:6])) + (", ..." if len(classes) > 6 else "")
        what = f"classifier (classes {shown})"
    else:
        what = "regressor"
    by = f" by {info.producer} {info.producer_version}".rstrip() if info.producer else ""
    feeds = f"; {part.head.name} feeds the combiner" if part else ""
    return f"{info.path.name}: {what}{by}{feeds}"


def _str(s: str) -> str:
    """A TOML basic string: JSON's escapes, plus DEL, which TOML wants escaped too."""
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(k: str) -> str:
    return k if BARE_KEY.match(k) else _str(k)


def _list(items: list[str]) -> str:
    inline = "[" + ", ".join(_str(i) for i in items) + "]"
    if len(inline) <= 60:
        return inline
    return "[\n" + "".join(f"  {_str(i)},\n" for i in items) + "]"


# ---------------------------------------------------------------------------- checking and writing


def check_starter(starter: Starter, base: Path) -> None:
    """The text must parse as a valid mapping whose routes fit each model: init never writes a broken file."""
    mapping = parse_mapping(tomllib.loads(starter.text), base / (starter.out.name if starter.out else "features.toml"))
    for m in starter.models:
        if m.info.part is not None and not m.notes:
            match_routes(replace(m.info.part, spec=mapping.model(m.name)))


def write_starter(starter: Starter, out: Path, force: bool) -> None:
    """Write the file atomically; refuse to replace an existing file unless `force`."""
    inputs = [m.info.path for m in starter.models] + [p for m in starter.models for p, _ in m.info.external_data]
    check_output_path(out, inputs + ([starter.columns_from] if starter.columns_from else []))
    if out.exists() and not force:
        raise cannot_write(out, "already exists", "pass --force to replace it, or choose another --out")
    made = make_folders(out.parent)  # `--out build/features.toml` on a fresh clone, as for merge
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"  # created like any new file (umask), unlike mkstemp
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as f:
            f.write(starter.text)
        if force:
            os.replace(tmp, out)
        else:
            _place_new(tmp, out)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, OSError):
            raise cannot_write(out, f"cannot write: {e.strerror or e}") from None
        raise


def _place_new(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out` only if `out` does not exist, even if it appears meanwhile."""
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise cannot_write(out, "already exists", "pass --force to replace it") from None
    except OSError:  # a file system without hard links
        if out.exists():
            raise cannot_write(out, "already exists", "pass --force to replace it") from None
        os.replace(tmp, out)
    else:
        tmp.unlink()  # the link is the file now; the temporary name was left beside it on every run
