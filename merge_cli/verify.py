"""Prove with onnxruntime that the merged file computes what the original files plus the combiner compute.

This is the only module that imports onnxruntime.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ExitCode, MergeError, bad_input, first_line
from .normalize import NUMPY_OF_TYPE, PROBE_ROWS, Observed, Part, all_nodes

if TYPE_CHECKING:
    import onnxruntime

# onnxruntime >= 1.29 on Linux starts a telemetry uploader at import that leaves $TMPDIR/.ses behind
# on every run; this variable (read at import, before any onnxruntime import here) turns it all off.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ONNX_OF = {"f4": 1, "f8": 11, "f2": 10, "i4": 6, "i8": 7, "b1": 9, "O8": 8}  # numpy kind + itemsize -> onnx type
DEFAULT_ROWS = 256
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-5


@dataclass
class OutputCheck:
    name: str
    shape: list[int]
    max_abs: float = 0.0
    max_rel: float = 0.0
    mismatches: int = 0  # label or integer values that differ
    near_ties: int = 0  # label differences where the expected probabilities tie within tolerance
    nonfinite: int = 0  # NaN/Inf values on rows whose inputs were finite
    passed: bool = True
    problem: str | None = None


@dataclass
class VerifyReport:
    rows: int
    atol: float
    rtol: float
    outputs: list[OutputCheck] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "rows": self.rows,
            "atol": self.atol,
            "rtol": self.rtol,
            "max_abs_error": self.max_abs,
            "max_rel_error": self.max_rel,
            "would_pass_with": {"atol": self.max_abs, "rtol": self.max_rel},
            "outputs": [asdict(o) for o in self.outputs],
            "seconds": round(self.seconds, 4),
        }

    def failure(self) -> str:
        bad = [o for o in self.outputs if not o.passed]
        parts = []
        for o in bad:
            if o.problem:
                parts.append(f"{o.name}: {o.problem}")
            else:
                parts.append(f"{o.name}: max abs error {o.max_abs:.3g}, max rel error {o.max_rel:.3g}")
        return ("merged outputs differ from the parts plus the combiner: " + "; ".join(parts)
                + f" (atol={self.atol:g}, rtol={self.rtol:g}; would pass with atol={self.max_abs:.3g} "
                f"or rtol={self.max_rel:.3g})")


# ---------------------------------------------------------------------------- onnxruntime


def quiet_options() -> onnxruntime.SessionOptions:
    ort = runtime()

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings would leak onto stderr around our own lines
    return options


def open_session(source: Path | bytes, on_error: Callable[[str], MergeError]) -> onnxruntime.InferenceSession:
    ort = runtime()

    try:
        what = str(source) if isinstance(source, Path) else source
        return ort.InferenceSession(what, quiet_options(), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for every failure
        raise on_error(first_line(e)) from None


def import_runtime() -> None:
    """Import onnx now: the CLI does it with Ctrl-C held, because an import cut short inside a C++
    extension's initialization can crash the process later. onnxruntime is imported the same way
    where it is first needed (runtime()): a merge with --no-verify may never need it (~25 ms, ~30 MB)."""
    import onnx  # noqa: F401


def runtime() -> ModuleType:
    """onnxruntime, imported on first use with Ctrl-C held (see import_runtime)."""
    from .process import interrupts_deferred

    with interrupts_deferred():
        import onnxruntime
    return onnxruntime


RUNTIME_IR_FLOOR = 10  # every onnxruntime this package supports (>= 1.20, see pyproject.toml) loads IR 10


def runtime_ir_cap(wanted: int | None = None) -> int:
    """The newest IR version the installed onnxruntime loads, or `wanted` when that is old enough for any.

    Importing onnxruntime costs ~25 ms and ~30 MB, so a merge that writes IR <= 10 (most converters'
    output) and skips verification never imports it.
    """
    if wanted is not None and wanted <= RUNTIME_IR_FLOOR:
        return wanted
    return _probe_ir_cap()


@functools.cache
def _probe_ir_cap() -> int:
    """Probe the installed onnxruntime once with a one-node model of each IR version, newest first."""
    import onnx
    ort = runtime()
    from onnx import helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", 1, [1])],
                              [helper.make_tensor_value_info("y", 1, [1])])
    for ir in range(onnx.IR_VERSION, 3, -1):
        model = helper.make_model(graph, ir_version=ir, opset_imports=[helper.make_opsetid("", 13)])
        try:
            ort.InferenceSession(model.SerializeToString(), quiet_options(), providers=["CPUExecutionProvider"])
            return ir
        except Exception:
            continue
    return 3


# ---------------------------------------------------------------------------- running the parts


def random_rows(n: int, width: int, dtype: str, seed: int = 0) -> np.ndarray:
    """Seeded rows of mixed scale (0.1x to 10x a standard normal), so thresholds of all sizes are crossed."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, width)) * 10.0 ** rng.uniform(-1, 1, size=(n, 1))
    return rows.astype(dtype)


def part_feed(part: Part, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The original model's inputs: its columns of `rows`, in its own dtype and rank."""
    from .splice import match_routes

    feed: dict[str, np.ndarray] = {}
    for info, columns in match_routes(part):
        values = rows[:, list(columns)]
        if info.rank == 1:
            values = values[:, 0]
        feed[info.name] = values.astype(NUMPY_OF_TYPE.get(info.elem_type, np.float32))
    return feed


def part_session(part: Part) -> onnxruntime.InferenceSession:
    """A session on the ORIGINAL file; failing that, on the file with its ZipMaps cut off.

    skl2onnx writes float64 classifiers with a ZipMap over a float64 tensor, which onnxruntime refuses
    to load ("Type 'tensor(double)' of input parameter ... of operator (ZipMap) ... is invalid"); the
    merged model does not have that ZipMap, so the part is checked against the tensor that fed it.
    """
    path = part.source.path
    try:
        return open_session(path, lambda m: bad_input(path, f"onnxruntime cannot load this model: {m}"))
    except MergeError:
        if part.unzipped is None:
            raise
    from io import BytesIO

    from .wire import write_single_file

    buffer = BytesIO()
    write_single_file(part.unzipped, part.source.refs, buffer)
    return open_session(buffer.getvalue(), lambda m: bad_input(path, f"onnxruntime cannot load this model: {m}"))


def run_part(part: Part, session: onnxruntime.InferenceSession, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Run the ORIGINAL file; a ZipMap output (a list of dicts) comes back as the [N, K] tensor it wraps.

    The part's head, when align_heads reshaped or reordered it, is added in its aligned form too.
    """
    fed_by = {tensor: zipmap for zipmap, tensor in part.zipmaps.items()}
    available = {o.name for o in session.get_outputs()}
    fetch = [fed_by[o.name] if fed_by.get(o.name) in available else o.name for o in part.outputs]
    try:
        values = session.run(fetch, part_feed(part, rows))
    except Exception as e:
        raise bad_input(part.source.path, f"onnxruntime cannot run this model: {first_line(e)}") from None
    out = {}
    for o, name, value in zip(part.outputs, fetch, values, strict=True):
        if name in part.zipmaps:
            classes = part.zipmap_classes.get(o.name, ())
            dtype = NUMPY_OF_TYPE.get(o.elem_type, np.float32)
            value = np.array([[row[c] for c in classes] for row in value], dtype=dtype).reshape(-1, len(classes))
        out[o.name] = np.asarray(value)
    if part.adapter is not None:
        out[part.head.name] = part.adapter.numpy(out[part.adapter.source])
    return out


def observe_outputs(part: Part, strict: bool = True) -> Observed | None:
    """Run the original file once on a few random rows: the shapes and types its outputs really have.

    Declared output shapes are not always right (LightGBM declares its label [1] and returns [N]).
    When onnxruntime cannot run the file: the error if `strict` (verification could not run it
    either), else None (--no-verify: the declared and inferred shapes will have to do).
    A graph of default-domain ops whose outputs shape inference fully describes is believed without
    a run (None): the run would load every weight into onnxruntime, ~2x the file in memory and time.
    """
    if shapes_are_inferred(part):
        return None
    try:
        session = part_session(part)
    except MergeError as e:
        if not strict:
            return None
        e.hint = e.hint or ("the merge is checked against each original file in onnxruntime; re-export this "
                            "model so that onnxruntime runs it, or merge with --no-verify")
        raise
    try:
        rows = random_rows(part.batch or PROBE_ROWS, max(part.spec.columns) + 1, "float32", seed=1)
        values = run_part(part, session, rows)
    except MergeError:  # e.g. columns that do not fit its input: splice says so, more precisely
        return None
    observed: Observed = {}
    for o in part.outputs:
        value = values[o.name]
        elem_type = None if o.name in part.zipmap_classes else ONNX_OF.get(value.dtype.kind + str(value.dtype.itemsize))
        observed[o.name] = (tuple(int(d) for d in value.shape), elem_type)
    return observed


def shapes_are_inferred(part: Part) -> bool:
    """Only default-domain ops (ONNX shape inference is exact for them), no local functions, and every
    output with a known element type and every dimension after the batch axis known."""
    model = part.model
    if model.functions or not {n.domain for n in all_nodes(model.graph)} <= {"", "ai.onnx"}:
        return False
    return all(o.elem_type and o.shape is not None and all(isinstance(d, int) for d in o.shape[1:])
               for o in part.outputs)


def batch_size(parts: list[Part]) -> int | None:
    """A fixed batch dimension declared by any part (then rows are run in chunks of it)."""
    sizes = {p.batch for p in parts if p.batch is not None}
    return min(sizes) if sizes else None


def run_parts(parts: list[Part], rows: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Every ORIGINAL part file on all `rows` (for fitting a stack and for scores on real rows)."""
    sessions = [part_session(p) for p in parts]
    chunk = batch_size(parts)
    return [_in_chunks(lambda piece, p=p, s=s: run_part(p, s, piece), rows, chunk)  # type: ignore[misc]
            for p, s in zip(parts, sessions, strict=True)]


def run_merged(path: Path, rows: np.ndarray, chunk: int | None = None) -> dict[str, np.ndarray]:
    """The merged file on all `rows`."""
    session = open_session(path, lambda m: MergeError(ExitCode.VERIFY_FAILED, path.name,
                                                      f"onnxruntime cannot load the merged model: {m}"))
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]

    def run(piece: np.ndarray) -> dict[str, np.ndarray]:
        try:
            return dict(zip(outputs, session.run(outputs, {name: piece}), strict=True))
        except Exception as e:
            raise MergeError(ExitCode.VERIFY_FAILED, path.name,
                             f"onnxruntime cannot run the merged model: {first_line(e)}") from None

    return _in_chunks(run, rows, chunk)


def run_file(path: Path, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """Any model file on the given feeds (the user's own combiner graph)."""
    session = open_session(path, lambda m: bad_input(path, f"onnxruntime cannot load this model: {m}"))
    try:
        return dict(zip(outputs, (np.asarray(v) for v in session.run(outputs, feeds)), strict=True))
    except Exception as e:
        raise bad_input(path, f"onnxruntime cannot run this model: {first_line(e)}") from None


def _in_chunks(run: Callable[[np.ndarray], dict[str, np.ndarray]], rows: np.ndarray,
               chunk: int | None) -> dict[str, np.ndarray]:
    """Run in pieces of a fixed batch size (the last one padded with copies of its last row, then cut)."""
    if not chunk:
        return run(rows)
    pieces = []
    for lo in range(0, len(rows), chunk):
        piece = rows[lo: lo + chunk]
        short = chunk - len(piece)
        if short:
            piece = np.concatenate([piece, np.repeat(piece[-1:], short, axis=0)])
        out = run(piece)
        pieces.append({k: v[: chunk - short] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


# ---------------------------------------------------------------------------- comparing


def compare(name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float,
            finite_rows: np.ndarray, ties: np.ndarray | None = None) -> OutputCheck:
    check = OutputCheck(name, list(want.shape))
    if got.shape != want.shape:
        check.passed = False
        check.problem = f"shape {list(got.shape)}, expected {list(want.shape)}"
        return check
    if want.dtype.kind not in "fc":
        differ = got != want
        check.mismatches = int(differ.sum())
        if ties is not None and check.mismatches:
            check.near_ties = int((differ & ties).sum())
        if check.mismatches > check.near_ties:
            check.passed = False
            check.problem = f"{check.mismatches - check.near_ties} of {want.size} values differ"
        return check
    g, w = got.astype(np.float64), want.astype(np.float64)
    if g.ndim and g.shape[0] == len(finite_rows):
        rows_mask = np.broadcast_to(finite_rows.reshape((-1,) + (1,) * (g.ndim - 1)), g.shape)
    else:  # not one value per row (e.g. a scalar from a user's combiner graph): finite if every row is
        rows_mask = np.full(g.shape, bool(finite_rows.all()))
    g_bad, w_bad = ~np.isfinite(g), ~np.isfinite(w)
    # Non-finite values never match on rows whose inputs were finite; elsewhere NaN must match NaN.
    check.nonfinite = int((g_bad & rows_mask).sum())
    pattern_differs = int(((g_bad != w_bad) & ~rows_mask).sum())
    both = ~g_bad & ~w_bad
    if both.any():
        diff = np.abs(g[both] - w[both])
        scale = np.abs(w[both])
        check.max_abs = float(diff.max())
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(diff == 0, 0.0, diff / scale)
        check.max_rel = float(rel.max())
        within = bool(np.all(diff <= atol + rtol * scale))
    else:
        within = True
    if check.nonfinite:
        check.passed = False
        check.problem = f"{check.nonfinite} non-finite values on finite input rows"
    elif pattern_differs:
        check.passed = False
        check.problem = f"{pattern_differs} values are non-finite in one result but not the other"
    else:
        check.passed = within
    return check


def near_ties(probabilities: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Rows whose two highest probabilities are within tolerance: argmax there may go either way."""
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        return np.zeros(len(probabilities), dtype=bool)
    top = np.sort(probabilities.astype(np.float64), axis=1)[:, -2:]
    return (top[:, 1] - top[:, 0]) <= 2 * (atol + rtol * np.abs(top[:, 1]))


# ---------------------------------------------------------------------------- the whole check


def verify(
    merged: Path,
    parts: list[Part],
    expected_of: Callable[[list[dict[str, np.ndarray]], np.ndarray], dict[str, np.ndarray]],
    batches: list[np.ndarray],
    atol: float,
    rtol: float,
    part_rows: Callable[[np.ndarray], np.ndarray] | None = None,
) -> VerifyReport:
    """Run the merged file and each original file on every batch; compare with `expected_of(part outputs)`.

    `part_rows` turns a batch into what the parts are fed (gate fills NaN cells before the parts run).
    """
    start = time.perf_counter()
    # The originals first: one that onnxruntime cannot load is a bad input, not a failed merge.
    sessions = [part_session(p) for p in parts]
    merged_session = open_session(merged, lambda m: MergeError(
        ExitCode.VERIFY_FAILED, merged.name, f"onnxruntime cannot load the merged model: {m}"))
    input_name = merged_session.get_inputs()[0].name
    output_names = [o.name for o in merged_session.get_outputs()]
    declared = {o.name: o.shape for o in merged_session.get_outputs()}
    chunk = batch_size(parts)
    checks: dict[str, OutputCheck] = {}
    total = 0
    for rows in batches:
        for lo in range(0, len(rows), chunk or max(len(rows), 1)):
            piece = rows[lo: lo + chunk] if chunk else rows
            if chunk and len(piece) < chunk:  # a fixed batch: fill the last piece up with rows already seen
                piece = np.concatenate([piece, np.resize(rows, (chunk - len(piece), rows.shape[1]))])
            fed = part_rows(piece) if part_rows else piece
            part_outputs = [run_part(p, s, fed) for p, s in zip(parts, sessions, strict=True)]
            expected = expected_of(part_outputs, piece)
            try:
                got = dict(zip(output_names, merged_session.run(output_names, {input_name: piece}), strict=True))
            except Exception as e:
                raise MergeError(ExitCode.VERIFY_FAILED, merged.name,
                                 f"onnxruntime cannot run the merged model: {first_line(e)}") from None
            finite_rows = np.asarray(np.isfinite(piece.astype(np.float64)).all(axis=1))
            ties = near_ties(expected["probabilities"], atol, rtol) if "probabilities" in expected else None
            for name in output_names:
                if name not in expected:
                    continue
                check = compare(name, np.asarray(got[name]), np.asarray(expected[name]), atol, rtol, finite_rows,
                                ties if name == "label" else None)
                wrong = declared_shape_problem(declared[name], np.asarray(got[name]).shape)
                if wrong and check.passed:
                    check.passed, check.problem = False, wrong
                checks[name] = merge_checks(checks.get(name), check)
            total += len(piece)
    return VerifyReport(total, atol, rtol, list(checks.values()), time.perf_counter() - start)


def declared_shape_problem(declared: list[Any] | None, actual: tuple[int, ...]) -> str | None:
    """The merged file must not declare an output shape that onnxruntime then contradicts."""
    if declared is None:
        return None
    differ = any(isinstance(d, int) and d != a for d, a in zip(declared, actual, strict=False))
    if len(declared) != len(actual) or differ:
        shown = ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in declared)
        return f"the merged file declares shape [{shown}] but onnxruntime returns {list(actual)}"
    return None


def merge_checks(old: OutputCheck | None, new: OutputCheck) -> OutputCheck:
    if old is None:
        return new
    return OutputCheck(
        name=new.name,
        shape=[old.shape[0] + new.shape[0], *new.shape[1:]] if old.shape and new.shape else new.shape,
        max_abs=max(old.max_abs, new.max_abs),
        max_rel=max(old.max_rel, new.max_rel),
        mismatches=old.mismatches + new.mismatches,
        near_ties=old.near_ties + new.near_ties,
        nonfinite=old.nonfinite + new.nonfinite,
        passed=old.passed and new.passed,
        problem=old.problem or new.problem,
    )
