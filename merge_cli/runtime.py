"""onnxruntime sessions: the original files and the merged file run on rows (comparison.py compares them).

This is the only module that imports onnxruntime.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ExitCode, MergeError, bad_input, first_line
from .graphs import DTYPE_OF_INPUT_TYPE, NUMPY_OF_TYPE, all_nodes, elem_type_of, is_default_domain, shape_text
from .parts import PROBE_ROWS, Observed, Part
from .residency import pages_given_back

if TYPE_CHECKING:
    import onnxruntime
    from onnx import ModelProto


# onnxruntime >= 1.29 on Linux starts a telemetry uploader at import that leaves $TMPDIR/.ses behind
# on every run; this variable (read at import, before any onnxruntime import here) turns it all off.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

MAX_CELLS = 1 << 24  # random rows x input columns held at once: 64 MiB of float32, whatever the width


def rows_for_width(rows: int, width: int) -> int:
    """How many random rows to verify on: `rows`, or fewer for a table so wide that they would not fit
    in MAX_CELLS (memory stays proportional to the mapping, not to its width times --rows)."""
    return max(1, min(rows, MAX_CELLS // max(width, 1)))


# ---------------------------------------------------------------------------- onnxruntime


def quiet_options() -> onnxruntime.SessionOptions:
    ort = runtime()

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings would leak onto stderr around our own lines
    return options


def checking_options(folder: Path | None = None, threads: int = 1, prepack: bool = False) -> onnxruntime.SessionOptions:
    """Options for the sessions that check numbers: made to open fast and hold no copy of the weights.

    - No graph optimizations: they only make a session faster to run, but cost time super-linear in the
      graph's size to apply (25k nodes: 191 s with them, 14 s without); the merged file and the parts
      are run the same way, so what is compared is the graph as written.
    - No prepacking unless asked (a file with small weights): it copies every MatMul weight into a
      layout of its own, so memory-mapped weights would be resident twice; but without it, onnxruntime
      takes time quadratic in the number of initializers to open a session (a chain of Add nodes with
      their own (1, 8) weights, 40k nodes: 9.6 s without against 3.3 s with).
    - No spinning, and one intra-op thread unless asked for more (a file with large weights, where one
      MatMul has enough arithmetic to share): a spinning pool per session keeps cores busy between
      runs, and with many small parts, the pools cost more than the runs (32 parts: 0.52x the time).
    `folder` is where external-data locations are resolved for a model given as bytes.
    """
    ort = runtime()

    options = quiet_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.add_session_config_entry("session.disable_prepacking", "0" if prepack else "1")
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    return options


def open_session(source: Path | bytes, on_error: Callable[[str], MergeError],
                 options: onnxruntime.SessionOptions | None = None) -> onnxruntime.InferenceSession:
    ort = runtime()

    if isinstance(source, bytes):
        from .unrunnable import refuse_what_cannot_run

        refuse_what_cannot_run(source, on_error)
    try:
        what = str(source) if isinstance(source, Path) else source
        return ort.InferenceSession(what, options or quiet_options(), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for every failure
        raise on_error(first_line(e)) from None


def file_session(path: Path, on_error: Callable[[str], MergeError],
                 weight_bytes: int | None = None) -> onnxruntime.InferenceSession:
    """A session on the model file at `path` whose large weights onnxruntime memory-maps from the file.

    onnxruntime given a path parses the whole file into protobuf, then copies every weight again into
    its own tensors: ~3x the file in memory and time. Here it is given the file's structure (a few KB
    to MB, cut out of the file at the wire level, see wire.read_located_skeleton) with each large weight
    marked as external data at its own offset in the same file, so every byte it computes with is
    still the file's own. Either way it gets bytes, not the path, so that what would crash it is
    refused first (unrunnable.refuse_what_cannot_run). `weight_bytes`: the model's weights with its external data
    files (default: the file's size and its `<name>.data`), which decide how many threads it gets.
    """
    from .wire import WireError, read_located_skeleton

    try:
        small = path.stat().st_size <= MAPPED_FROM
        skeleton = path.read_bytes() if small else read_located_skeleton(path)
        weights = weight_bytes if weight_bytes is not None else stored_bytes(path)
    except (OSError, WireError) as e:
        raise on_error(f"cannot read it: {e}") from None
    light = weights <= MAPPED_FROM
    threads = 1 if light else os.cpu_count() or 1
    return open_session(skeleton, on_error, checking_options(Path(os.path.abspath(path)).parent, threads, light))


def weights_given_back(files: list[Path], weights: int) -> contextlib.AbstractContextManager[None]:
    """Around a run of the merged file when its weights are memory-mapped (more than MAPPED_FROM bytes):
    their pages are given back as the run goes (residency.py), so that peak memory is not all of them at
    once. The parts need not: each holds only its own weights, fewer than the merged file's, and its
    session is closed before the next one opens; a pass costs ~0.1 s per run of the 200 MB pair's files."""
    return pages_given_back(files) if weights > MAPPED_FROM else contextlib.nullcontext()


def stored_bytes(path: Path) -> int:
    """A model file's size plus that of the external data file merge-models writes beside it."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


# Files up to this size are given to onnxruntime whole: copying their few weights costs less than
# cutting out their structure in Python (~50 us per node: 0.5 s for a 10k-node graph).
MAPPED_FROM = 16 * 1024 * 1024


def proto_session(model: ModelProto, folder: Path,
                  on_error: Callable[[str], MergeError]) -> onnxruntime.InferenceSession:
    """A session on a skeleton held in memory, its weights memory-mapped from the files they sit in."""
    from onnx import ModelProto

    from .wire import ref_of

    copy = ModelProto()
    copy.CopyFrom(model)
    mapped = 0
    for tensor in copy.graph.initializer:
        ref = ref_of(tensor)
        if ref is None:
            continue
        mapped += ref.length
        del tensor.external_data[:]
        location = os.path.relpath(os.path.abspath(ref.path), folder)
        for key, value in (("location", location), ("offset", str(ref.offset)), ("length", str(ref.length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    skeleton = copy.SerializeToString()
    return open_session(skeleton, on_error, checking_options(folder, prepack=len(skeleton) + mapped <= MAPPED_FROM))


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
    module: ModuleType = onnxruntime
    return module


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
    """Seeded rows of mixed scale (0.1x to 10x a standard normal), so thresholds of all sizes are crossed;
    fewer than `n` for a very wide table (rows_for_width)."""
    n = rows_for_width(n, width)
    rng = np.random.default_rng(seed)
    kind = np.float32 if dtype == "float32" else np.float64  # drawn in that dtype: no float64 copy of 1M rows
    rows = rng.standard_normal((n, width), dtype=kind)
    rows *= (10.0 ** rng.uniform(-1, 1, size=(n, 1))).astype(kind)
    return np.asarray(rows)


def part_feed(part: Part, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The original model's inputs: its columns of `rows` (or the whole tensors bound to it), in its own
    dtype and rank. `rows` is one float table [N, F], or records with a field per merged input (draws.records)."""
    from .splice import bound_routes

    feed: dict[str, np.ndarray] = {}
    for info, r in bound_routes(part):
        if rows.dtype.names is None:
            values = rows[:, list(r.columns)]
        elif r.whole is not None:
            values = rows[r.whole]
        else:
            values = np.stack([rows[table][:, i] for table, i in r.sources], axis=1)
        if info.rank == 1 and r.whole is None:
            values = values[:, 0]
        feed[info.name] = values.astype(NUMPY_OF_TYPE.get(info.elem_type, object))
    return feed


def merged_feed(names: list[str], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The merged model's inputs: the one table, or each merged input's field of the records."""
    if rows.dtype.names is None:
        return {names[0]: rows}
    return {name: rows[name] for name in names}


def probe_rows(part: Part, n: int) -> np.ndarray:
    """A few rows for one run of a part: random floats for a float table, else records drawn per input."""
    from .draws import NONE, column_values, input_categories, records

    if all(r.whole is None for r in part.spec.routes) and all(i.elem_type != 8 for i in part.inputs):
        return random_rows(n, max(part.spec.columns) + 1, "float32", seed=1)
    from .splice import bound_routes

    found = input_categories(part.source.proto)
    rng = np.random.default_rng(1)
    arrays: dict[str, np.ndarray] = {}
    for info, r in bound_routes(part):
        dims = [1 if not isinstance(d, int) else d for d in (info.shape or [None, 1])[1:]]
        dtype = DTYPE_OF_INPUT_TYPE.get(info.elem_type, "float32")
        values = column_values(rng, n * int(np.prod(dims)), dtype, found.get(info.name, NONE)).reshape(n, *dims)
        if r.whole is not None:
            arrays[r.whole] = values
        else:
            for (table, i), k in zip(r.sources, range(values.shape[1]), strict=False):
                arrays.setdefault(table, np.zeros((n, i + 1), values.dtype))
                if arrays[table].shape[1] <= i:
                    arrays[table] = np.pad(arrays[table], ((0, 0), (0, i + 1 - arrays[table].shape[1])))
                arrays[table][:, i] = values[:, k]
    return records(arrays)


def part_session(part: Part) -> onnxruntime.InferenceSession:
    """A session on the ORIGINAL file (its weights memory-mapped from it, see file_session).

    A part with ZipMaps is run without them (part.unzipped: the file as read, ZipMaps cut off): the
    merged model does not have them, and the tensor a ZipMap wraps comes back as it is, where the
    list of dicts it makes would have to be turned back into that tensor in Python. skl2onnx also
    writes float64 classifiers with a ZipMap over a float64 tensor, which onnxruntime refuses to load.
    """
    path = part.source.path

    def refuse(problem: str) -> MergeError:
        return bad_input(path, f"onnxruntime cannot load this model: {problem}")

    if part.unzipped is not None:
        return proto_session(part.unzipped, Path(os.path.abspath(path)).parent, refuse)
    return file_session(path, refuse, part.source.size)


def run_part(part: Part, session: onnxruntime.InferenceSession, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Run the ORIGINAL file (a session from part_session: a ZipMap's tensor is an output of it).

    The part's head, when align_heads reshaped or reordered it, is added in its aligned form too.
    """
    fetch = [o.name for o in part.outputs]
    try:
        values = session.run(fetch, part_feed(part, rows))
    except Exception as e:
        raise bad_input(part.source.path, f"onnxruntime cannot run this model: {first_line(e)}") from None
    out = {name: np.asarray(value) for name, value in zip(fetch, values, strict=True)}
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
        values = run_part(part, session, probe_rows(part, part.batch or PROBE_ROWS))
    except MergeError:  # e.g. columns that do not fit its input: splice says so, more precisely
        return None
    observed: Observed = {}
    for o in part.outputs:
        value = values[o.name]
        elem_type = None if o.name in part.zipmap_classes else elem_type_of(value.dtype)
        observed[o.name] = (tuple(int(d) for d in value.shape), elem_type)
    return observed


def shapes_are_inferred(part: Part) -> bool:
    """Only default-domain ops (ONNX shape inference is exact for them), no local functions, and every
    output with a known element type and every dimension after the batch axis known."""
    model = part.model
    if model.functions or not all(is_default_domain(n.domain) for n in all_nodes(model.graph)):
        return False
    return all(o.elem_type and o.shape is not None and all(isinstance(d, int) for d in o.shape[1:])
               for o in part.outputs)


def batch_size(parts: list[Part]) -> int | None:
    """A fixed batch dimension declared by any part (then rows are run in chunks of it)."""
    sizes = {p.batch for p in parts if p.batch is not None}
    return min(sizes) if sizes else None


def run_parts(parts: list[Part], rows: np.ndarray,
              fed: Callable[[np.ndarray], np.ndarray] | None = None) -> list[dict[str, np.ndarray]]:
    """Every ORIGINAL part file on all `rows` (for fitting a stack, verifying, and scores on real rows);
    `fed` turns each piece into what the parts are given (gate's NaN cells filled), a piece at a time.

    One session at a time, each closed before the next opens: only one part's weights are mapped at once.
    """
    chunk = batch_size(parts)
    outputs = []
    for part in parts:
        session = part_session(part)

        def run(piece: np.ndarray, p: Part = part, s: onnxruntime.InferenceSession = session) -> dict[str, np.ndarray]:
            return run_part(p, s, fed(piece) if fed else piece)

        outputs.append(in_chunks(run, rows, chunk))
        del session, run
    return outputs


def merged_session(path: Path) -> onnxruntime.InferenceSession:
    return file_session(path, lambda m: MergeError(ExitCode.VERIFY_FAILED, path.name,
                                                   f"onnxruntime cannot load the merged model: {m}"))


# A merged file with at most this many bytes of weights is opened while the parts still run (verification's
# references): two cores open two sessions at once, and for a large graph of small weights, opening the
# sessions is what verification costs. A heavier one waits until the parts' sessions are closed, so that
# their weights and its own are never mapped at the same time.
OPEN_EARLY_UP_TO = 64 * 1024 * 1024


def early_merged_session(path: Path) -> onnxruntime.InferenceSession | MergeError | None:
    """The merged file's session, opened now if its weights are light (else None). An error is returned,
    not raised: the caller raises it once the parts have run, so that a part onnxruntime cannot load
    is named first (a bad input, not a failed merge)."""
    if stored_bytes(path) > OPEN_EARLY_UP_TO:
        return None
    try:
        return merged_session(path)
    except MergeError as e:
        return e


def run_merged(path: Path, rows: np.ndarray, chunk: int | None = None,
               shape_problems: dict[str, str] | None = None,
               session: onnxruntime.InferenceSession | None = None) -> dict[str, np.ndarray]:
    """The merged file (or its `session`, opened already) on all `rows` (output shapes that contradict the
    declared ones land in `shape_problems`)."""
    return _run_merged(session or merged_session(path), path, rows, chunk,
                       {} if shape_problems is None else shape_problems)


def _run_merged(session: onnxruntime.InferenceSession, path: Path, rows: np.ndarray, chunk: int | None,
                shape_problems: dict[str, str]) -> dict[str, np.ndarray]:
    """Run the merged session on all `rows`; each piece's output shapes are checked against the declared
    ones (the first contradiction per output lands in `shape_problems`)."""
    names = [i.name for i in session.get_inputs()]
    outputs = session.get_outputs()

    def run(piece: np.ndarray) -> dict[str, np.ndarray]:
        try:
            values = session.run([o.name for o in outputs], merged_feed(names, piece))
        except Exception as e:
            raise MergeError(ExitCode.VERIFY_FAILED, path.name,
                             f"onnxruntime cannot run the merged model: {first_line(e)}") from None
        got = {}
        for o, value in zip(outputs, values, strict=True):
            got[o.name] = np.asarray(value)
            wrong = declared_shape_problem(o.shape, got[o.name].shape)
            if wrong:
                shape_problems.setdefault(o.name, wrong)
        return got

    with weights_given_back([path, path.with_name(path.name + ".data")], stored_bytes(path)):  # once, over every piece
        return in_chunks(run, rows, chunk)


def run_file(path: Path, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """Any model file on the given feeds (the user's own combiner graph)."""
    session = file_session(path, lambda m: bad_input(path, f"onnxruntime cannot load this model: {m}"))
    try:
        return dict(zip(outputs, (np.asarray(v) for v in session.run(outputs, feeds)), strict=True))
    except Exception as e:
        raise bad_input(path, f"onnxruntime cannot run this model: {first_line(e)}") from None


# Rows given to onnxruntime in one run when the models leave the batch free: bounds what a run holds at
# once (1M rows through a 4096-wide layer would be 16 GiB of activations in one piece).
ROWS_PER_RUN = 8192


def in_chunks(run: Callable[[np.ndarray], dict[str, np.ndarray]], rows: np.ndarray,
              chunk: int | None) -> dict[str, np.ndarray]:
    """Run on all `rows` in pieces: of a fixed batch size `chunk` (the last piece padded with copies of its
    last row, which are cut off again), else of at most ROWS_PER_RUN rows. Outputs with one value per
    row are joined into one; any other output is stacked, one entry per piece."""
    size = chunk or ROWS_PER_RUN
    if not chunk and len(rows) <= size:
        return run(rows)
    pieces, ends = [], []
    for lo in range(0, len(rows), size):
        piece = rows[lo: lo + size]
        ends.append(len(piece))
        if chunk and len(piece) < chunk:
            piece = np.concatenate([piece, np.repeat(piece[-1:], chunk - len(piece), axis=0)])
        pieces.append((len(piece), run(piece)))
    joined = {}
    for name in pieces[0][1]:
        if all(out[name].ndim and len(out[name]) == fed for fed, out in pieces):
            joined[name] = np.concatenate([out[name][:n] for (_, out), n in zip(pieces, ends, strict=True)])
        else:
            joined[name] = np.stack([out[name] for _, out in pieces])
    return joined


def declared_shape_problem(declared: list[Any] | None, actual: tuple[int, ...]) -> str | None:
    """The merged file must not declare an output shape that onnxruntime then contradicts."""
    if declared is None:
        return None
    differ = any(isinstance(d, int) and d != a for d, a in zip(declared, actual, strict=False))
    if len(declared) != len(actual) or differ:
        return f"the merged file declares shape {shape_text(declared)} but onnxruntime returns {list(actual)}"
    return None
