"""Shared pieces of the benchmarks: generated MLP models, timed child processes, the result table.

Absolute times depend on the machine and on whatever else runs on it, so every question is answered
with a ratio of two things measured side by side in the same run, in interleaved rounds, each taken
at its best (other jobs only ever add time, so the best round is the closest to the true cost).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "bench"
PYTHON = sys.executable
MERGE_MODELS = str(Path(sys.executable).with_name("merge-models"))
MiB = 2**20
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))

COLUMNS = 32  # the shared input's width
BLOCKS = {"a": list(range(0, 16)), "b": list(range(16, 32))}  # each model its own block of columns, as usual
SCATTERED = {"a": list(range(0, COLUMNS, 2)), "b": list(range(1, COLUMNS, 2))}  # interleaved: the harder case


def compile_package() -> None:
    """Byte-compile merge_cli as pip does when it installs a wheel.

    `make install` installs it editable, and with PYTHONDONTWRITEBYTECODE=1 (set here) every
    process would compile its modules from source again: 50-100 ms that an installed copy does
    not pay. Existing .pyc files are read whatever that variable says.
    """
    import compileall

    compileall.compile_dir(ROOT / "merge_cli", quiet=1)


compile_package()


# ---------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the table: a measured ratio (or figure) and the target it must meet."""

    question: str
    what: str
    value: float
    unit: str  # "x" for a ratio, "s", "MiB", ...
    target: str = ""  # e.g. "<= 0.6x"; empty when there is nothing to meet
    ok: bool | None = None
    detail: str = ""

    def cells(self) -> list[str]:
        value = f"{self.value:.2f}x" if self.unit == "x" else f"{self.value:.3g} {self.unit}"
        status = "" if self.ok is None else ("ok" if self.ok else "MISSED")
        return [self.question, self.what, value, self.target, status, self.detail]


def ratio_row(question: str, what: str, value: float, limit: float, *, at_most: bool = True,
              detail: str = "", noise: float = 0.0) -> Row:
    """A ratio against its target, compared as printed (two decimals): run-to-run noise on a shared
    machine is a few percent, so a third decimal would be noise.

    `noise`: the spread measured between two identical variants in the same run (an A/A test); a
    ratio beyond the limit by less than that is no evidence of a miss, and the detail says so.
    """
    target = f"<= {limit:g}x" if at_most else f">= {limit:g}x"
    shown = round(value, 2)
    ok = shown <= limit if at_most else shown >= limit
    if not ok and noise and (shown <= round(limit + noise, 2) if at_most else shown >= round(limit - noise, 2)):
        ok = True
        detail += f" (beyond {limit:g}x by less than the A/A noise, {noise:.1%})"
    return Row(question, what, value, "x", target, ok, detail)


def print_table(rows: list[Row], file=sys.stdout) -> None:
    """A Markdown table, so the README can quote `make bench` output as it is."""
    header = ["question", "measure", "value", "target", "", "measured side by side"]
    cells = [r.cells() for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]

    def line(items: list[str]) -> str:
        return "| " + " | ".join(s.ljust(w) for s, w in zip(items, widths, strict=True)) + " |"

    print(line(header), file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for c in cells:
        print(line(c), file=file)
    file.flush()


def emit(rows: list[Row]) -> None:
    """Print a script's rows as a table; with BENCH_JSON set, also write them there for run_all."""
    print_table(rows)
    target = os.environ.get("BENCH_JSON")
    if target:
        with open(target, "a") as f:
            for r in rows:
                f.write(json.dumps(asdict(r)) + "\n")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores ({cpu}), load average {load:.1f}, Python {sys.version.split()[0]}"


def note(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- models


def mlp(path: Path, inputs: int, hidden: int, layers: int, seed: int, *, external: bool = False) -> int:
    """Write an MLP (MatMul+Add+Relu per layer, then MatMul+Add to one output); return its weight bytes.

    `layers` counts the hidden x hidden weight matrices; the model is
    x [N, inputs] -> hidden -> (layers x hidden) -> y [N, 1], float32 weights.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    shapes = [(inputs, hidden)] + [(hidden, hidden)] * layers + [(hidden, 1)]
    nodes, inits = [], []
    x = "x"
    weight_bytes = 0
    for i, (fan_in, fan_out) in enumerate(shapes):
        w = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
        w *= np.float32(1.0 / np.sqrt(fan_in))
        b = rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.1)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        weight_bytes += w.nbytes + b.nbytes
        del w
        nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"], name=f"matmul{i}"))
        last = i == len(shapes) - 1
        nodes.append(helper.make_node("Add", [f"mm{i}", f"B{i}"], ["y" if last else f"add{i}"], name=f"add{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [f"add{i}"], [f"h{i}"], name=f"relu{i}"))
            x = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="benchmarks")
    model.ir_version = 8
    if external:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, path)
    return weight_bytes


@dataclass
class Pair:
    """Two generated models, the mapping that merges them, and where things go."""

    dir: Path
    a: Path
    b: Path
    mapping: Path
    weight_bytes: int
    columns: dict[str, list[int]]

    @property
    def input_bytes(self) -> int:
        """Bytes of the two inputs on disk (model files plus their external data files)."""
        return sum(p.stat().st_size for p in self.dir.iterdir() if p.name.startswith(("a.onnx", "b.onnx")))


def make_pair(dir: Path, hidden: int, layers: int, *, external: bool = False,
              columns: dict[str, list[int]] = BLOCKS) -> Pair:
    dir.mkdir(parents=True, exist_ok=True)
    a, b = dir / "a.onnx", dir / "b.onnx"
    weight_bytes = mlp(a, len(columns["a"]), hidden, layers, seed=1, external=external)
    weight_bytes += mlp(b, len(columns["b"]), hidden, layers, seed=2, external=external)
    mapping = dir / "features.json"
    mapping.write_text(json.dumps({
        "version": 1,
        "input": {"name": "features", "columns": [f"f{i}" for i in range(COLUMNS)]},
        "models": {"a": {"path": a.name, "columns": columns["a"]}, "b": {"path": b.name, "columns": columns["b"]}},
        "combiner": {"kind": "mean"},
    }))
    return Pair(dir, a, b, mapping, weight_bytes, columns)


@contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A scratch directory under build/bench, removed afterwards (the big files must not linger)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=BUILD))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_disk(path: Path) -> int:
    return shutil.disk_usage(path).free


def remove(*paths: Path) -> None:
    for p in paths:
        for f in p.parent.glob(p.name + "*"):
            f.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- measuring


@dataclass
class Run:
    """A finished child process: wall time, peak resident memory, and what it printed."""

    seconds: float
    peak_rss: int  # bytes
    stdout: str
    stderr: str
    code: int
    peak_anon: int = 0  # bytes of anonymous (private) memory at its highest, sampled every ~5 ms


def run_child(argv: list[str], cwd: Path | None = None, check: bool = True) -> Run:
    """Run a process and measure it on its own: wall time and peak RSS.

    The peak comes from /usr/bin/time when it exists: wait4() on a child of this (large) process
    would also count the pages the child shared with it between fork and exec.
    """
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss"
        wrapped = [gnu_time, "-f", "%M", "-o", str(rss_file), *argv] if gnu_time else argv
        start = time.perf_counter()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(wrapped, cwd=cwd, stdout=out, stderr=err)
            anon = _sample_anon(proc, watch_child=gnu_time is not None)
            seconds = time.perf_counter() - start
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        peak = int(rss_file.read_text().split()[-1]) * 1024 if gnu_time else _children_maxrss()
    run = Run(seconds, peak, stdout, stderr, proc.returncode, anon)
    if check and run.code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {run.code}:\n{run.stderr[-2000:]}")
    return run


def _sample_anon(proc: subprocess.Popen[bytes], watch_child: bool) -> int:
    """Wait for `proc`, sampling RssAnon of it (or of its one child, under /usr/bin/time); the highest seen."""
    peak = 0
    watched: int | None = None if watch_child else proc.pid
    while proc.poll() is None:
        if watched is None:
            try:
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                watched = int(children[0]) if children else None
            except OSError:
                pass
        if watched is not None:
            try:
                for line in Path(f"/proc/{watched}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
        time.sleep(0.005)
    return peak


def _children_maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def python_child(code: str, *args: str) -> Run:
    """Run a Python snippet in a fresh interpreter; it prints its own timing as the last stdout line."""
    return run_child([PYTHON, "-c", textwrap.dedent(code), *args])


def timed_snippet(code: str, *args: str) -> tuple[float, Run]:
    """Run a snippet that prints `seconds=<float>` for the part it times (imports excluded)."""
    run = python_child(code, *args)
    seconds = float(run.stdout.strip().splitlines()[-1].split("=", 1)[1])
    return seconds, run


def ratio(a: list[Run], b: list[Run]) -> float:
    """a's best time over b's best time: what each costs when the other jobs on the machine let it run."""
    return min(r.seconds for r in a) / min(r.seconds for r in b)


def best(values: list[float]) -> float:
    return min(values)


# ---------------------------------------------------------------------------- the reference ways


IO_FLOOR = """
import sys, time
import onnx
a, b, out_a, out_b, external = sys.argv[1:6]
start = time.perf_counter()
ma = onnx.load(a)
mb = onnx.load(b)
if external == "1":
    onnx.save(ma, out_a, save_as_external_data=True, location=out_a.rsplit("/", 1)[-1] + ".data")
    onnx.save(mb, out_b, save_as_external_data=True, location=out_b.rsplit("/", 1)[-1] + ".data")
else:
    onnx.save(ma, out_a)
    onnx.save(mb, out_b)
print(f"seconds={time.perf_counter() - start}")
"""


def io_floor(pair: Pair, external: bool = False) -> tuple[float, Run]:
    """onnx.load of both models + onnx.save of both: the least any merge that parses them must do."""
    out_a, out_b = pair.dir / "floor_a.onnx", pair.dir / "floor_b.onnx"
    try:
        return timed_snippet(IO_FLOOR, str(pair.a), str(pair.b), str(out_a), str(out_b), "1" if external else "0")
    finally:
        remove(out_a, out_b)


def merge_cli(pair: Pair, out: Path, *extra: str) -> Run:
    """The whole `merge-models merge` process, as a user runs it."""
    return run_child([MERGE_MODELS, "merge", "--map", str(pair.mapping), "--out", str(out), "--quiet", *extra])


COMPOSE_WAY = """
import sys, time
import onnx
from onnx import TensorProto, compose, helper, numpy_helper
import numpy as np
a, b, out, width, cols_a, cols_b = sys.argv[1:7]
width = int(width)
cols = {"a": [int(c) for c in cols_a.split(",")], "b": [int(c) for c in cols_b.split(",")]}
start = time.perf_counter()
ma, mb = onnx.load(a), onnx.load(b)
opsets = [helper.make_opsetid("", 17)]
router = helper.make_model(helper.make_graph(
    [helper.make_node("Gather", ["features", f"cols_{m}"], [f"route_{m}"], axis=1) for m in "ab"], "router",
    [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", width])],
    [helper.make_tensor_value_info(f"route_{m}", TensorProto.FLOAT, ["N", len(cols[m])]) for m in "ab"],
    initializer=[numpy_helper.from_array(np.array(cols[m], dtype=np.int64), f"cols_{m}") for m in "ab"]),
    opset_imports=opsets, ir_version=ma.ir_version)
combiner = helper.make_model(helper.make_graph(
    [helper.make_node("Mean", ["in_a", "in_b"], ["prediction"])], "combiner",
    [helper.make_tensor_value_info(f"in_{m}", TensorProto.FLOAT, ["N", 1]) for m in "ab"],
    [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1])]),
    opset_imports=opsets, ir_version=ma.ir_version)
ma, mb = compose.add_prefix(ma, "a/"), compose.add_prefix(mb, "b/")
merged = compose.merge_models(router, ma, io_map=[("route_a", "a/x")])
merged = compose.merge_models(merged, mb, io_map=[("route_b", "b/x")])
merged = compose.merge_models(merged, combiner, io_map=[("a/y", "in_a"), ("b/y", "in_b")])
onnx.save(merged, out)
print(f"seconds={time.perf_counter() - start}")
"""


def compose_way(pair: Pair, out: Path) -> tuple[float, Run]:
    """The same merge with onnx.compose: add_prefix, then merge_models with a router and a combiner model."""
    try:
        return timed_snippet(COMPOSE_WAY, str(pair.a), str(pair.b), str(out), str(COLUMNS),
                             ",".join(map(str, pair.columns["a"])), ",".join(map(str, pair.columns["b"])))
    finally:
        remove(out)


def cores() -> int:
    return os.cpu_count() or 1


def chain(path: Path, inputs: int, nodes: int, seed: int) -> None:
    """Write a long thin graph of about `nodes` nodes: blocks of MatMul (8 x 8) + Add + Tanh on [N, 8].

    Its weights are tiny (inline in the graph): what it costs is the number of nodes.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    width = 8
    x = "x"
    nodes_out, inits = [], []
    blocks = max(1, nodes // 3)
    for i in range(blocks):
        fan_in = inputs if i == 0 else width
        w = (rng.standard_normal((fan_in, width)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(width) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes_out += [helper.make_node("MatMul", [x, f"W{i}"], [f"m{i}"]),
                      helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"]),
                      helper.make_node("Tanh", [f"a{i}"], [f"h{i}"])]
        x = f"h{i}"
    nodes_out.append(helper.make_node("ReduceMean", [x], ["y"], axes=[1], keepdims=1))
    graph = helper.make_graph(nodes_out, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="benchmarks")
    model.ir_version = 8
    onnx.save(model, path)


def make_models(dir: Path, count: int, write: Callable[[Path, int, int], object]) -> Path:
    """`count` models written by `write(path, inputs, seed)`, each on its own block of columns, and a mean mapping."""
    dir.mkdir(parents=True, exist_ok=True)
    per = max(1, COLUMNS // count)
    models = {}
    for i in range(count):
        name = f"m{i:02d}"
        write(dir / f"{name}.onnx", per, i + 1)
        models[name] = {"path": f"{name}.onnx", "columns": [(i * per + c) % COLUMNS for c in range(per)]}
    mapping = dir / "features.json"
    mapping.write_text(json.dumps({
        "version": 1, "input": {"name": "features", "columns": [f"f{i}" for i in range(COLUMNS)]},
        "models": models, "combiner": {"kind": "mean"}}))
    return mapping
