"""What the commands print for people: the merge summary, inspect's facts, init's plan and verify's table.

cli.py prints JSON itself and calls these for the human-readable form; rich is imported here and in cli.py only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import one_line, shortened
from .graphs import shape_text

if TYPE_CHECKING:
    from rich.console import Console

    from .inspection import ModelInfo
    from .recheck import RecheckResult
    from .result import MergeResult
    from .starter import Starter


def _console() -> Console:
    """stdout as rich sees it. Piped into a file or a CI log, lines are never wrapped, and tables are cut
    to $COLUMNS only when it is set: rich's 80-column default would break phrases mid-way."""
    from rich.console import Console

    terminal = sys.stdout.isatty()
    width = None if terminal or os.environ.get("COLUMNS") else 100_000
    return Console(highlight=False, soft_wrap=not terminal, width=width)


Cell = Any  # str or rich.text.Text


def _print_rows(console: Console, header: list[str] | None, rows: list[list[Cell]]) -> None:
    """Columns padded to their widest cell, the last one cut with '…': each row stays one line in 80 columns."""
    from rich.text import Text

    lines = [[Text(h, style="bold") for h in header]] if header else []
    lines += [[c.copy() if isinstance(c, Text) else Text(one_line(str(c))) for c in row] for row in rows]
    if not lines:
        return
    n = len(lines[0])
    widths = [max(line[i].cell_len for line in lines) for i in range(n)]
    room = max(console.width - sum(widths[:-1]) - 2 * (n - 1), 12)
    for cells in lines:
        text = Text()
        for i, cell in enumerate(cells):
            if i < n - 1:
                cell.pad_right(widths[i] - cell.cell_len)
                text.append_text(cell)
                text.append("  ")
            else:
                cell.truncate(room, overflow="ellipsis")
                text.append_text(cell)
        text.rstrip()
        console.print(text, no_wrap=True, overflow="ellipsis", crop=True)


def _ok(passed: bool, bad: str = "differs") -> Cell:
    from rich.text import Text

    return Text("ok", style="green") if passed else Text(bad, style="red")


def print_summary(result: MergeResult) -> None:
    console = _console()
    doc = result.to_dict()
    files = ", ".join(f"{m['name']} ({Path(m['path']).name})" for m in doc["models"])
    _plain(console)(f"merge-models {__version__}: {doc['combiner']} of {files}")
    _print_rows(console, ["model", "task", "output", "columns"], [
        [m["name"], _task(m["task"]), m["head"], _columns(m["columns"], m["tensors"])] for m in doc["models"]])
    converted = [f"{m['name']} {m['opset_from'] if m['opset_from'] is not None else '(no ai.onnx opset)'} -> "
                 f"{m['opset_to']}" for m in doc["models"] if m["opset_from"] != m["opset_to"]]
    print_plain = _plain(console)
    print_plain(f"outputs: {', '.join(_port(o) for o in doc['outputs'])}")
    print_plain(f"opset {doc['opsets'].get('', '?')}, IR {doc['ir_version']}"
                + (f" (converted {', '.join(converted)})" if converted else ""))
    v = doc["verification"]
    if v:
        console.print(f"verified on {v['rows']} rows with onnxruntime: [green]ok[/green]")
        print_plain(f"  max abs error {v['max_abs_error']:.3g} (atol {v['atol']:g}), "
                    f"max rel error {v['max_rel_error']:.3g} (rtol {v['rtol']:g})"
                    + (f"; {v['tolerance_from']}" if v["tolerance_from"] else ""))
    else:
        console.print("[yellow]not verified (--no-verify)[/yellow]")
    _print_scores(console, doc)
    size = sum(f["bytes"] for f in doc["files"])
    files = " + ".join(f["path"] for f in doc["files"])
    print_plain(f"wrote {files} ({_size(size)}) in {doc['seconds']:.2f} s")


def _plain(console: Console) -> Callable[[str], None]:
    """Print text as it is (no markup: names and shapes may contain brackets), control characters
    from files (names, producers) escaped so they cannot move the cursor or forge lines."""
    return lambda text: console.print(one_line(text), markup=False, highlight=False)


def print_inspect(info: ModelInfo) -> None:
    console = _console()
    print_plain = _plain(console)
    doc = info.to_dict()
    if doc["task"] == "classification":
        what = f"classifier, classes {_preview([str(c) for c in doc['classes'] or []], 8)}"
    elif doc["task"] == "regression":
        what = "regressor"
    else:
        what = "a merge cannot use it as it is"
    print_plain(f"{info.path}: {what}")
    head = doc["head"]
    replaced = doc["zipmap_replaced"]
    rows: list[list[Cell]] = [["input", p["name"], p["type"], _shape(p["shape"]),
                               "" if p["binding"].endswith("float32 table") else p["binding"]] for p in doc["inputs"]]
    for port in doc["outputs"]:
        note = ""
        if head and port["name"] == head["name"]:
            note = "feeds the combiner"
        elif port["name"] in replaced:
            note = "ZipMap, replaced by"
        rows.append(["output", port["name"], port["type"], _shape(port["shape"]), note])
    if head and head["name"] in replaced.values():
        rows.append(["", head["name"], head["type"], _shape(head["shape"]), "feeds the combiner"])
    _print_rows(console, ["", "name", "type", "shape", ""], rows)
    weights = doc["initializers"]
    external = ""
    if doc["external_data"]:
        names = ", ".join(Path(d["path"]).name for d in doc["external_data"])
        external = f" + {_size(sum(d['bytes'] for d in doc['external_data']))} in {names}"
    facts: list[list[Cell]] = [
        ["file", f"{_size(doc['bytes'])}{external}; "
                 + (f"{_plural(weights['count'], 'initializer')} ({_size(weights['bytes'])})" if weights["count"]
                    else "no initializers")],
        ["producer", shortened(f"{doc['producer']['name'] or '?'} {doc['producer']['version']}".rstrip())],
        ["format", f"IR {doc['ir_version']}, opsets " + ", ".join(f"{d or 'ai.onnx'} {v}"
                                                                  for d, v in doc["opsets"].items())],
        ["graph", f"{_plural(doc['nodes'], 'node')}: {_preview(list(doc['ops']), 5, 'other op types')}"],
    ]
    if doc["columns"] is not None:
        facts.append(["columns", f"{doc['columns']} (what a merge routes to it)"])
    sources = info.merged_from
    if sources:
        made_by = doc["metadata"].get("merge_models.version", "?")
        shown = ", ".join(str(s.get("model")) for s in sources)
        facts.append(["merged", f"by merge-models {made_by} from {shown} (see `merge-models verify`)"])
    _print_rows(console, None, facts)
    if doc["problem"]:
        problem = doc["problem"]
        console.print("[yellow]a merge would fail:[/yellow] ", end="")
        print_plain(problem["message"])
        if problem.get("hint"):
            print_plain(f"hint: {problem['hint']}")


def print_init(starter: Starter) -> None:
    console = _console()
    print_plain = _plain(console)
    doc = starter.to_dict()
    print_plain(f"wrote {doc['output']}: {len(doc['models'])} models, {len(doc['columns'])} columns, "
                f"combiner {doc['combiner']}")
    _print_rows(console, ["model", "task", "columns", "file"], [
        [m["name"], _task(m["task"]), _columns(m["columns"], m["tensors"]), m["path"]] for m in doc["models"]])
    for m in doc["models"]:
        for note in m["notes"]:
            print_plain(f"note: {m['name']}: {note}")
    for note in doc["notes"]:
        print_plain(f"note: {note}")
    if doc["placeholders"]:
        print_plain(f"name the columns: {doc['placeholders']} have placeholder names (<model>_<i>)")
    print_plain(f"next: merge-models merge --map {doc['output']} --out merged.onnx")


def print_verify(result: RecheckResult) -> None:
    console = _console()
    print_plain = _plain(console)
    doc = result.to_dict()
    v = doc["verification"]
    print_plain(f"{doc['merged']}: {doc['combiner']} of {len(doc['sources'])} models, "
                f"made by merge-models {doc['made_by'] or '?'}")
    _print_rows(console, ["model", "sha256", "source"],
                [[s["model"], s["sha256"][:12] + " unchanged", s["path"]] for s in doc["sources"]])
    _print_rows(console, ["output", "max abs error", "max rel error", ""], [
        [o["name"], f"{o['max_abs']:.3g}", f"{o['max_rel']:.3g}", _ok(o["passed"], o["problem"] or "differs")]
        for o in v["outputs"]])
    real = doc["data"]["rows"] if doc["data"] else 0
    on = f"{v['rows'] - real} random rows" + (f" + {real} from {Path(doc['data']['path']).name}" if real else "")
    console.print(f"verified on {one_line(on)}: ", _ok(v["passed"], "failed"), f" (atol {v['atol']:g}, rtol {v['rtol']:g}"
                  + (f"; {v['tolerance_from']})" if v.get("tolerance_from") else ")"), sep="", markup=False)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _task(task: str | None) -> str:
    return {"classification": "classifier", "regression": "regressor"}.get(task or "", "?")


def _columns(columns: list[str], tensors: list[str] | None = None) -> str:
    """'15 columns (mean radius .. smoothness error)': the count and the first and last names; whole
    tensor inputs first by name ('image + 3 columns (...)')."""
    if tensors:
        return " + ".join([*tensors, *([_columns(columns)] if columns else [])])
    if len(columns) == 1:
        return f"1 column ({columns[0]})"
    if len(columns) == 2:
        return f"2 columns ({columns[0]}, {columns[1]})"
    return f"{len(columns)} columns ({columns[0]} .. {columns[-1]})"


def _preview(items: list[str], n: int, more: str = "more") -> str:
    """The first n items and how many more: no ellipsis of its own, which a cut line would double."""
    return ", ".join(items[:n]) + (f" and {len(items) - n} {more}" if len(items) > n else "")


def _port(o: dict[str, Any]) -> str:
    return f"{o['name']} {o['type']} {_shape(o['shape'])}"


def _print_scores(console: Console, doc: dict[str, Any]) -> None:
    """The stack's cross-validated choice, then each model on the --data rows."""
    metrics = {"classification": ["accuracy", "log_loss", "roc_auc"], "regression": ["rmse", "mae", "r2"]}
    print_plain = _plain(console)
    stack = doc.get("stack")
    if stack:
        cv = stack["cross_validation"]
        names = metrics["classification" if "accuracy" in cv[0] else "regression"]
        alpha = f", alpha {stack['alpha']:g}" if stack["alpha"] is not None else ""
        alpha += f" towards {stack['prior']}" if stack.get("prior") else ""
        print_plain(f"stack: {stack['folds']}-fold cross-validation on {stack['rows']} rows "
                    f"(chosen: {stack['chosen']}{alpha})")
        _print_rows(console, ["combiner", *names], [[c["combiner"], *(_metric(c.get(n)) for n in names)] for c in cv])
    scores = doc.get("scores")
    if scores:
        names = metrics[scores["task"]]
        print_plain(f"scores on {scores['rows']} rows of {Path(scores['data']).name} (target {scores['target']}):")
        _print_rows(console, ["model", "rows", *names],
                    [[m["model"], str(m["rows"]), *(_metric(m.get(n)) for n in names)] for m in scores["models"]])
        if scores["in_sample"]:
            console.print("[yellow]in-sample:[/yellow] the stack was fitted on these rows (see its cross-validation)")


def _metric(value: float | None) -> str:
    """Four decimals; an exponent past a million (targets of 1e300 once printed 300 digits per cell)."""
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"


def _shape(shape: list[Any] | None) -> str:
    return shape_text(shape)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"
