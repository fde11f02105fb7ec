"""The `merge-models` command line: the only module that imports typer and rich."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import __version__
from .errors import ExitCode, MergeError

try:  # typer >= 0.20 vendors click as typer._click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer depends on click itself
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

# typer's own Exit/Abort; with older typer these are click's (the same classes)
_EXIT = (typer.Exit, getattr(click_exceptions, "Exit", typer.Exit))
_ABORT = (typer.Abort, getattr(click_exceptions, "Abort", typer.Abort), KeyboardInterrupt)

app = typer.Typer(
    name="merge-models",
    help="Merge trained ONNX models into one model that takes the whole feature row, verified with onnxruntime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # a traceback with locals would dump whole model protos
    add_completion=True,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"merge-models {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Merge trained ONNX models into one model that takes the whole feature row, verified with onnxruntime."""


@app.command()
def merge(
    models: Annotated[Optional[list[Path]], typer.Argument(  # noqa: UP045 - typer needs Optional here
        help="Model files, matched to the mapping's [models.*] in file order; they override its paths.",
        show_default=False)] = None,
    map_file: Annotated[Path, typer.Option("--map", "-m", help="Feature-mapping file (.toml, .json or .yaml).",
                                           show_default=False)] = Path("features.toml"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the merged model.",
                                      show_default=False)] = Path("merged.onnx"),
    combiner: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Combiner kind (overrides [combiner] kind): mean, weighted, sum, max, min, concat.",
        show_default=False)] = None,
    weights: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Per-model weights in mapping order, e.g. 0.7,0.3 (normalised; implies nothing about kind).",
        show_default=False)] = None,
    keep_outputs: Annotated[bool, typer.Option("--keep-outputs",
                                               help="Also expose each model's own outputs as <model>/<output>.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify",
                                         help="Check the written model against the parts with onnxruntime.")] = True,
    rows: Annotated[int, typer.Option(help="Random rows to verify on.")] = 256,
    atol: Annotated[float, typer.Option(help="Absolute tolerance for verification.")] = 1e-5,
    rtol: Annotated[float, typer.Option(help="Relative tolerance for verification.")] = 1e-5,
    opset: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Target default-domain opset (default: the highest among the models).", show_default=False)] = None,
    external_data: Annotated[bool, typer.Option("--external-data",
                                                help="Write weights to <out>.data beside the model.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Merge the models named in a feature-mapping file into one verified ONNX model."""

    def job() -> dict[str, Any]:
        from .mapping import parse_weights
        from .pipeline import merge as run_merge

        result = run_merge(
            map_file, out, models or [],
            combiner=combiner,
            weights=parse_weights(weights) if weights is not None else None,
            keep_outputs=keep_outputs, verify_output=verify, rows=rows, atol=atol, rtol=rtol,
            opset=opset, external_data=external_data,
            progress=_progress(quiet or json_output),
        )
        if not quiet and not json_output:
            _print_summary(result)
        return result.to_dict()

    _run(job, json_output, debug)


# ---------------------------------------------------------------------------- running and reporting


def _run(job: Callable[[], dict[str, Any]], json_output: bool, debug: bool) -> None:
    """Run a command body: one error line (plus hint) per failure, the documented exit code, JSON if asked."""
    try:
        doc = job()
    except MergeError as e:
        _fail(e.line(), e.hint, int(e.code), json_output, e.to_dict())
    except KeyboardInterrupt:
        _fail("error: interrupted", None, int(ExitCode.INTERRUPTED), json_output,
              {"code": int(ExitCode.INTERRUPTED), "kind": "interrupted", "message": "interrupted"})
    except Exception as e:  # a bug: one line, the traceback only with --debug
        if debug:
            traceback.print_exc()
        message = f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        _fail(f"error: {message}", "this is a bug in merge-models; rerun with --debug and report the traceback",
              int(ExitCode.INTERNAL), json_output, {"code": int(ExitCode.INTERNAL), "kind": "internal", "message": message})
    else:
        if json_output:
            _print_json(doc)


def _fail(line: str, hint: str | None, code: int, json_output: bool, error: dict[str, Any]) -> None:
    if json_output:
        _print_json({"status": "error", "error": error})
    print(line, file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.stderr.flush()
    raise typer.Exit(code)


def _print_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _progress(silent: bool) -> Callable[[str], None] | None:
    if silent or not sys.stderr.isatty():
        return None
    from rich.console import Console

    console = Console(stderr=True)

    def show(stage: str) -> None:
        console.print(f"[dim]{stage}...[/dim]", highlight=False)

    return show


def _print_summary(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    doc = result.to_dict()
    table = Table(title=f"merge-models {__version__}: {doc['combiner']} of {len(doc['models'])} models",
                  title_justify="left")
    for col in ("model", "file", "task", "columns", "feeds combiner", "opset"):
        table.add_column(col)
    for m in doc["models"]:
        cols = m["columns"]
        shown = ", ".join(cols[:3]) + (f", ... ({len(cols)})" if len(cols) > 3 else "")
        opset = f"{m['opset_from']} -> {m['opset_to']}" if m["opset_from"] != m["opset_to"] else str(m["opset_to"])
        table.add_row(m["name"], Path(m["path"]).name, m["task"], shown, m["head"], opset)
    console.print(table)
    outs = ", ".join(f"{o['name']} {o['type']} {_shape(o['shape'])}" for o in doc["outputs"])
    console.print(f"outputs: {outs}")
    v = doc["verification"]
    if v:
        console.print(f"verified on {v['rows']} rows with onnxruntime: max abs error {v['max_abs_error']:.3g}, "
                      f"max rel error {v['max_rel_error']:.3g} (atol {v['atol']:g}, rtol {v['rtol']:g}) [green]ok[/green]")
    else:
        console.print("[yellow]not verified (--no-verify)[/yellow]")
    size = sum(f["bytes"] for f in doc["files"])
    files = " + ".join(f["path"] for f in doc["files"])
    console.print(f"wrote {files} ({_size(size)}) in {doc['seconds']:.2f} s")


def _shape(shape: list[Any] | None) -> str:
    return "[?]" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; usage errors become one `error:` line with exit code 2."""
    try:
        result = app(args=argv, prog_name="merge-models", standalone_mode=False)
    except click_exceptions.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `merge-models`: the help, as people expect
            print(e.format_message())
            return 0
        print(f"error: {e.format_message()}", file=sys.stderr)
        command = e.ctx.command_path if e.ctx else "merge-models"
        print(f"hint: run '{command} --help'", file=sys.stderr)
        return int(ExitCode.USAGE)
    except click_exceptions.ClickException as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        return int(e.exit_code)
    except _EXIT as e:
        return int(e.exit_code)
    except _ABORT:
        print("error: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    return result if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
