"""The `merge-models` command line: the only module that imports typer; rich is imported here and in summaries.py.

Commands import the library (and with it onnx, onnxruntime and numpy) only when they run, so
`merge-models --help` and shell completion stay fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer.core import TyperCommand

from . import __version__
from .errors import ExitCode, MergeError, check_path_text, first_line, interrupt_code, one_line
from .process import TERMINATING, interrupts_deferred, quiet_libraries, termination_as_interrupt
from .request import DEFAULT_ATOL, DEFAULT_ROWS, DEFAULT_RTOL

try:  # typer >= 0.20 vendors click as typer._click
    from typer._click import core as click_core
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer depends on click itself
    from click import core as click_core  # type: ignore[no-redef, unused-ignore]
    from click import exceptions as click_exceptions  # type: ignore[no-redef, unused-ignore]

# typer's own Exit/Abort; with older typer these are click's (the same classes)
_EXIT = (typer.Exit, getattr(click_exceptions, "Exit", typer.Exit))
_ABORT = (typer.Abort, getattr(click_exceptions, "Abort", typer.Abort), KeyboardInterrupt)
_INTERRUPTED = {ExitCode.INTERRUPTED: "interrupted", ExitCode.TERMINATED: "terminated (SIGTERM)",
                ExitCode.HANGUP: "hung up (SIGHUP)"}

if TYPE_CHECKING:

    pass

class _Command(TyperCommand):
    """A command whose --help prints what its parameters say.

    Two gaps between typer 0.19 and click 8.5 are closed here: click 8.5 gave arguments a `help` of
    their own, which typer then overwrites with None, so arguments showed no description; and typer
    escapes `[default: 256]` for rich markup even when rich markup is off, which printed `\\[default`.
    """

    def format_options(self, ctx: click_core.Context, formatter: click_core.HelpFormatter) -> None:
        from typer.utils import get_params_from_function

        function = getattr(self.callback, "__wrapped__", self.callback)
        declared = get_params_from_function(function) if function is not None else {}
        arguments, options = [], []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                meta = declared.get(param.name or "")
                arguments.append((param.make_metavar(ctx), getattr(meta.default, "help", None) or "" if meta else ""))
                continue
            record = param.get_help_record(ctx)
            if record is not None:
                options.append((record[0], record[1].replace("\\[", "[")))
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)


app = typer.Typer(
    name="merge-models",
    help="Merge trained ONNX models into one model that takes the whole feature row, verified with onnxruntime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # a traceback with locals would dump whole model protos
    add_completion=True,
    rich_markup_mode=None,
)

# Options every command has.
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")]
RowsOption = Annotated[int, typer.Option(help="Random rows to verify on.", metavar="N")]
AtolOption = Annotated[float, typer.Option(help="Absolute tolerance for verification.", metavar="X")]
RtolOption = Annotated[float, typer.Option(help="Relative tolerance for verification.", metavar="X")]
DEFAULT_MAP = Path("features.toml")


def _combiner_kinds(incomplete: str) -> list[str]:
    """What the shell completes after --combiner."""
    from .mapping import COMBINER_KINDS

    return [kind for kind in COMBINER_KINDS if kind.startswith(incomplete)]


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


# ---------------------------------------------------------------------------- commands


@app.command(cls=_Command)
def merge(
    models: Annotated[Optional[list[Path]], typer.Argument(  # noqa: UP045 - typer needs Optional here
        help="Model files, one per [models.*] table of the mapping, in its order; they replace the tables' "
             "paths (default: the paths in the mapping).",
        show_default=False, metavar="[MODEL]...")] = None,
    map_file: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--map", "-m", help=f"Feature-mapping file (.toml, .json or .yaml); `merge-models init` writes one.  "
                            f"[default: {DEFAULT_MAP}]", show_default=False, metavar="FILE")] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Where to write the merged model (its folder is made "
                                                         "if missing).", metavar="FILE")] = "merged.onnx",
    combiner: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Combiner kind: mean, weighted, sum, max, min, concat, vote, stack, gate, onnx (default: [combiner] "
             "kind in the mapping, else mean).",
        show_default=False, metavar="KIND", autocompletion=_combiner_kinds)] = None,
    weights: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Per-model weights in mapping order, e.g. 0.7,0.3, normalised (default: each model's weight in the "
             "mapping, else 1).",
        show_default=False, metavar="W,W,...")] = None,
    keep_outputs: Annotated[bool, typer.Option(
        "--keep-outputs", help="Also expose each model's own outputs as <model>/<output>.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify",
                                         help="Check the written model against the parts with onnxruntime.")] = True,
    rows: RowsOption = DEFAULT_ROWS,
    data: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Real rows (CSV with a header, or .npz with X and y): verify on them too and score each model.",
        show_default=False, metavar="FILE")] = None,
    target: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="The --data column holding the true values (default: the one column that is not an input, or y "
             "in a .npz).",
        show_default=False, metavar="NAME")] = None,
    atol: AtolOption = DEFAULT_ATOL,
    rtol: RtolOption = DEFAULT_RTOL,
    opset: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Target default-domain opset (default: the highest among the models).", show_default=False,
        metavar="N")] = None,
    ir_version: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--ir-version", help="Cap the merged model's IR version, for an older onnxruntime (default: the highest "
                             "among the models, or what the opsets need).", show_default=False, metavar="N")] = None,
    external_data: Annotated[bool, typer.Option("--external-data",
                                                help="Write weights to <out>.data beside the model.")] = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Merge the models of a mapping file into one verified model."""

    def job() -> dict[str, Any]:
        from .pipeline import merge as run_merge
        from .request import MergeRequest, weights_of
        from .writing import output_path

        request = MergeRequest(
            _mapping_file(map_file), output_path(out), tuple(models or ()), combiner=combiner,
            weights=weights_of(weights, from_cli=True),
            keep_outputs=keep_outputs, verify=verify, rows=rows, atol=atol, rtol=rtol, opset=opset,
            ir_version=ir_version, external_data=external_data, data=data, target=target, from_cli=True,
        )
        with _progress(quiet or json_output) as progress:
            result = run_merge(request, progress)
        if not quiet and not json_output:
            for warning in result.warnings:
                print(f"warning: {one_line(warning)}", file=sys.stderr)
            from . import summaries

            _to_stdout(summaries.print_summary, result)
        return result.to_dict()

    _run(job, json_output, debug)


def _mapping_file(given: Path | None) -> Path:
    """--map, or its default; a missing default says where the name came from (the user never typed it)."""
    if given is not None:
        return given
    if not DEFAULT_MAP.exists():
        from .errors import bad_input

        raise bad_input(DEFAULT_MAP, "no such mapping file (the default of --map, which was not given)",
                        "pass --map FILE, or write one with `merge-models init MODEL...`")
    return DEFAULT_MAP


@app.command(cls=_Command)
def inspect(
    model: Annotated[Path, typer.Argument(help="The ONNX model file to describe.", show_default=False,
                                          metavar="MODEL")],
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Show what a merge sees in a model.

    Inputs, outputs, opsets, IR version, producer, size and external data, node count, classifier and
    class labels, and the output a merge feeds to the combiner; read as a merge reads it.
    """

    def job() -> dict[str, Any]:
        from .inspection import describe

        check_path_text(model)
        info = describe(model)
        if not quiet and not json_output:
            from . import summaries

            _to_stdout(summaries.print_inspect, info)
        return info.to_dict()

    _run(job, json_output, debug)


@app.command(cls=_Command)
def init(
    models: Annotated[list[Path], typer.Argument(help="The model files to merge (one or more).", show_default=False,
                                                 metavar="MODEL...")],
    out: Annotated[str, typer.Option("--out", "-o", help="The mapping file to write ('-' prints it; its folder "
                                                         "is made if missing).", metavar="FILE")]
    = "features.toml",
    columns_from: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--columns-from", help="A CSV file whose header names the columns (the models read them in turn); "
                               "default: placeholder names <model>_<i>.", show_default=False, metavar="CSV")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the mapping file if it exists.")] = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Write a starter mapping file for these models.

    A commented TOML file that merges as written: columns are named after per-column inputs, or after
    the header of --columns-from, or get placeholder names <model>_<i> to rename. An existing file is
    kept unless --force.
    """

    def job() -> dict[str, Any]:
        from .errors import usage
        from .starter import starter_mapping, write_starter
        from .writing import output_path

        to_stdout = out == "-"
        if to_stdout and json_output:
            raise usage(None, "--out - prints the mapping on stdout, where --json prints its document",
                        "give --out FILE with --json")
        for model_path in (*models, columns_from):
            check_path_text(model_path)
        if not to_stdout:
            check_path_text(out, ExitCode.CANNOT_WRITE)
        path = None if to_stdout else output_path(out, "features.toml")  # a str: Path() drops a trailing '/'
        starter = starter_mapping(models, path, columns_from)
        if path is None:
            _to_stdout(sys.stdout.write, starter.text)
        else:
            write_starter(starter, path, force)
            if not quiet and not json_output:
                from . import summaries

                _to_stdout(summaries.print_init, starter)
        return starter.to_dict()

    _run(job, json_output, debug)


@app.command(cls=_Command)
def verify(
    merged: Annotated[Path, typer.Argument(help="A model written by `merge-models merge`.", show_default=False,
                                           metavar="MERGED")],
    data: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Real rows to verify on too: .csv with a header naming the columns, or .npz with X.",
        show_default=False, metavar="FILE")] = None,
    source: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        help="Where the source of model NAME is now, if it moved (repeatable); or a FOLDER holding the moved sources.",
        show_default=False, metavar="NAME=PATH|FOLDER")] = None,
    rows: RowsOption = DEFAULT_ROWS,
    atol: AtolOption = DEFAULT_ATOL,
    rtol: RtolOption = DEFAULT_RTOL,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    debug: DebugOption = False,
) -> None:
    """Re-check a merged model against its sources.

    The sources are found through the provenance the merged file records (paths relative to it, sha256
    checked); --source NAME=PATH points at a moved one, --source FOLDER at a folder holding them.
    """

    def job() -> dict[str, Any]:
        from .recheck import verify_merged

        check_path_text(merged)
        check_path_text(data)
        with _progress(quiet or json_output) as progress:
            moved, folder = _sources(source or [])
            result = verify_merged(merged, data=data, sources=moved, sources_dir=folder, rows=rows, atol=atol,
                                   rtol=rtol, progress=progress, from_cli=True)
        if not quiet and not json_output:
            from . import summaries

            _to_stdout(summaries.print_verify, result)
        doc = result.to_dict()
        if not result.passed:
            error = MergeError(ExitCode.VERIFY_FAILED, merged, *result.failure())
            error.details = {k: v for k, v in doc.items() if k != "status"}
            raise error
        return doc

    _run(job, json_output, debug)


def _sources(values: list[str]) -> tuple[dict[str, Path], Path | None]:
    """--source NAME=PATH (one moved model) and --source FOLDER (where moved models are, by file name)."""
    from .errors import usage

    moved, folder = {}, None
    for value in values:
        check_path_text(value)
        name, sep, path = value.partition("=")
        if not sep and Path(value).is_dir():
            if folder is not None:
                raise usage(None, f"--source {value}: a second folder (already {folder})", "give one folder")
            folder = Path(value)
            continue
        if not sep or not name or not path:
            raise usage(None, f"--source {value!r} is not NAME=PATH or a folder",
                        "e.g. --source a=models/model_a.onnx or --source models/")
        moved[name] = Path(path)
    return moved, folder


# ---------------------------------------------------------------------------- running and reporting


def _run(job: Callable[[], dict[str, Any]], json_output: bool, debug: bool) -> None:
    """Run a command body: one error line (plus hint) per failure, the documented exit code, JSON if asked."""
    try:
        with interrupts_deferred():  # numpy, onnx (onnxruntime: runtime.runtime): C extensions must not be cut mid-import
            from .runtime import import_runtime

            import_runtime()
        with quiet_libraries(keep_stdout=not json_output, replay=debug):
            doc = job()
    except MergeError as e:
        _fail(e.line(), e.hint, int(e.code), json_output, e.to_dict(), e.details)
    except (KeyboardInterrupt, Exception) as e:  # Ctrl-C, or a bug: one line, the traceback only with --debug
        interrupted = interrupt_code(e)  # Ctrl-C; inside a C extension's import it comes back as ImportError
        if interrupted is not None:
            _fail(f"error: {_INTERRUPTED[interrupted]}", None, int(interrupted), json_output,
                  {"code": int(interrupted), "kind": interrupted.name.lower(), "message": _INTERRUPTED[interrupted]})
        if debug:
            traceback.print_exc()
        message = f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        _fail(f"error: {message}", "this is a bug in merge-models; rerun with --debug and report the traceback",
              int(ExitCode.INTERNAL), json_output,
              {"code": int(ExitCode.INTERNAL), "kind": "internal", "message": message})
    else:
        if json_output:
            try:
                _print_json(doc)
            except MergeError as e:
                _fail(e.line(), e.hint, int(e.code), json_output, e.to_dict())


def _fail(line: str, hint: str | None, code: int, json_output: bool, error: dict[str, Any],
          details: dict[str, Any] | None = None) -> None:
    if json_output and error.get("file") != STDOUT:  # every error object has the same keys
        error = {"code": code, "kind": ExitCode(code).name.lower(), "file": None,
                 "message": line.removeprefix("error: "), "hint": hint, **error}
        with contextlib.suppress(MergeError):  # stdout is gone: the line on stderr is all that can be said
            _print_json({"status": "error", "error": error, **(details or {})})
    with contextlib.suppress(OSError, ValueError):  # stderr closed too: the exit code says it
        print(one_line(line), file=sys.stderr)
        if hint:
            print(f"hint: {one_line(hint)}", file=sys.stderr)
        sys.stderr.flush()
    raise typer.Exit(code)


STDOUT = "<stdout>"


def _to_stdout(write: Callable[[Any], Any], what: Any) -> None:
    """Print a command's report; stdout closed, full or a broken pipe is exit 5 naming <stdout>.

    The command's work is done by then and stays done (DESIGN.md, "Exit codes"): a merged model is
    already in place, complete and verified; only its report was lost."""
    try:
        write(what)
        sys.stdout.flush()
    except (OSError, ValueError) as e:  # ValueError: a closed file object
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise MergeError(ExitCode.CANNOT_WRITE, STDOUT, f"cannot write the report: {reason}",
                         "only the report was lost: the command itself succeeded (merge: the model is in place)") from None


def _print_json(doc: dict[str, Any]) -> None:
    _to_stdout(sys.stdout.write, _json_text(_strict(doc)) + "\n")


def _strict(value: Any) -> Any:
    """NaN and Infinity are not JSON (json.dumps writes them anyway): a non-finite number becomes null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _json_text(value: Any, indent: str = "") -> str:
    """JSON indented by two spaces, except that lists of numbers or strings stay on one line."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {_json_text(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, (list, tuple)) and value and any(isinstance(v, (dict, list, tuple)) for v in value):
        return "[\n" + ",\n".join(inner + _json_text(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, default=str, ensure_ascii=False, allow_nan=False)


@contextmanager
def _progress(silent: bool) -> Iterator[Callable[[str], None] | None]:
    """A spinner on stderr naming the running step (load, convert, verify, write), only on a terminal."""
    if silent or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.live import Live
    from rich.spinner import Spinner

    with Live(console=Console(stderr=True), transient=True, refresh_per_second=10) as live:

        def show(stage: str) -> None:
            live.update(Spinner("dots", text=f"{stage}..."), refresh=True)

        yield show


# ---------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; usage errors become one `error:` line with exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    _reserve_standard_descriptors()
    try:
        with termination_as_interrupt():
            result = app(args=args, prog_name="merge-models", standalone_mode=False)
    except click_exceptions.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `merge-models`: the help, as people expect
            print(e.format_message())
            return 0
        command = e.ctx.command_path if e.ctx else "merge-models"
        hint = f"run '{command} --help'"
        if "--json" in args:
            _print_json({"status": "error", "error": {"code": int(ExitCode.USAGE), "kind": "usage", "file": None,
                                                      "message": e.format_message(), "hint": hint}})
        print(f"error: {one_line(e.format_message())}", file=sys.stderr)
        print(f"hint: {hint}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except click_exceptions.ClickException as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        return int(e.exit_code)
    except _EXIT as e:
        return int(e.exit_code)
    except SystemExit as e:  # shell completion (--show-completion, the completion protocol) exits itself
        return e.code if isinstance(e.code, int) else 0
    except _ABORT as e:
        code = interrupt_code(e) or ExitCode.INTERRUPTED
        print(f"error: {_INTERRUPTED[code]}", file=sys.stderr)
        return int(code)
    return result if isinstance(result, int) else 0


class _ClosedStream:
    """sys.stdout or sys.stderr when the process was started with that descriptor closed (`>&-`)."""

    encoding = "utf-8"
    errors = "strict"

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "the stream was closed when merge-models started")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "closed")


def _reserve_standard_descriptors() -> None:
    """Started with fd 0, 1 or 2 closed, the first file opened would get that number: the model file
    as fd 1 would then receive the report, or be swapped away by quiet_libraries. Each closed one
    is pointed at /dev/null, and writing to a closed stdout is still reported."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
            if getattr(sys, name) is None or name != "stdin":
                setattr(sys, name, _ClosedStream())


def run() -> None:
    """The console script: main(), then exit without the interpreter's teardown.

    Unloading onnx (its operator schema registry), protobuf and numpy takes 35-65 ms after a merge,
    longer than a small merge's own work; everything that matters is closed or removed by then.
    """
    code = main()
    # The work is done: a Ctrl-C while the process exits must not turn this exit code into a kill.
    for signum in (signal.SIGINT, *TERMINATING):
        signal.signal(signum, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)
