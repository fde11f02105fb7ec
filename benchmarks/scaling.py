"""Question 12: linear in model size. Steps that were once quadratic (issue 12), each timed at n and 4n
in one run: the ratio of the times must stay well under 16, what a quadratic step gives (target 8x).

- unique_name: n nodes that all share one name (20,000 took 130 s when the suffix search restarted).
- the ai.onnx.ml 5 tree rewrite of an n-node TreeEnsemble (`key in list`: 30,000 nodes took 87 s).
- match_routes over n one-column model inputs (a set rebuilt per input: 10,000 took 44 s).
- the whole merge of a model with n [N, 1] (or [N]) inputs, one column each, verified and not:
  onnxruntime pays per node when it opens a session (a Slice per route: 20,000 inputs took 74 s; a
  Gather per [N] input: 27 s; one Split: 7 s).
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from common import ROOT, Row, emit, note, ratio_row

sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def best_time(job: Callable[[], object], rounds: int = 5) -> float:
    """Best of a few rounds with the garbage collector held: its passes land at random sizes."""
    times = []
    gc.disable()
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            job()
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return min(times)


def names(n: int) -> Callable[[], object]:
    from merge_cli.naming import unique_name

    def job() -> list[str]:
        taken: set[str] = set()
        return [unique_name("same", taken) for _ in range(n)]

    return job


def tree(n: int) -> Callable[[], object]:
    from hostile_inputs import ml5_tree
    from onnx import helper, numpy_helper

    from merge_cli.trees import _regressor_attributes

    node = ml5_tree(n).graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return lambda: _regressor_attributes(attrs, numpy_helper, double=False)


def routes(n: int, folder: Path) -> Callable[[], object]:
    from merge_cli.graphs import TensorInfo
    from merge_cli.mapping import parse_mapping
    from merge_cli.splice import match_routes

    doc = {"version": 1, "input": {"name": "features", "columns": [f"c{i}" for i in range(n)]},
           "models": {"a": {"path": "a.onnx", "inputs": {f"x{i}": [f"c{i}"] for i in range(n)}}}}
    spec = parse_mapping(doc, folder / "map.json").models[0]
    inputs = [TensorInfo(f"x{i}", 1, ("N", 1)) for i in range(n)]
    part = SimpleNamespace(spec=spec, source=SimpleNamespace(path=folder / "a.onnx"), inputs=inputs)
    return lambda: match_routes(part)  # type: ignore[arg-type]


def one_column_inputs(n: int, folder: Path, rank: int = 2) -> Path:
    """A model with n inputs x_i [N, 1] (y = their Concat), or [N] (y = their Sum), and a mapping giving
    x_i column c_i."""
    import json

    import onnx
    from onnx import TensorProto, helper

    xs = [f"x{i}" for i in range(n)]
    node = helper.make_node("Concat", xs, ["y"], axis=1) if rank == 2 else helper.make_node("Sum", xs, ["y"])
    graph = helper.make_graph([node], "columns",
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 1][:rank]) for x in xs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n][:rank])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, folder / f"inputs{n}_{rank}.onnx")
    doc = {"version": 1, "input": {"name": "features", "columns": [f"c{i}" for i in range(n)]},
           "models": {"a": {"path": f"inputs{n}_{rank}.onnx", "inputs": {f"x{i}": [f"c{i}"] for i in range(n)}}},
           "combiner": {"kind": "concat"}}
    mapping = folder / f"inputs{n}_{rank}.json"
    mapping.write_text(json.dumps(doc))
    return mapping


def merge_inputs(mapping: Path, *extra: str) -> float:
    """Best wall time of a few whole `merge-models merge` runs, start-up included."""
    from common import MERGE_MODELS, run_child

    out = mapping.with_suffix(".merged.onnx")
    return min(run_child([MERGE_MODELS, "merge", "--map", str(mapping), "--out", str(out), "--quiet", *extra]).seconds
               for _ in range(2))


def main() -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        cases = [("unique_name, n same-named nodes", names, 25_000),
                 ("ml 5 tree rewrite, n nodes", tree, 15_000),
                 ("match_routes, n one-column inputs", lambda n: routes(n, Path(folder)), 25_000)]
        for what, make, n in cases:
            note(f"timing {what} at n = {n:,} and {4 * n:,}")
            small, large = best_time(make(n)), best_time(make(4 * n))
            rows.append(ratio_row("12 linear in model size", f"{what}: time at 4n / time at n", large / small, 8.0,
                                  detail=f"{small * 1000:.0f} ms -> {large * 1000:.0f} ms (linear 4x, quadratic 16x)"))
        n = 5_000
        for rank, how, extra in [(2, "verified", ()), (2, "--no-verify", ("--no-verify",)), (1, "verified", ())]:
            shape = "[N, 1]" if rank == 2 else "[N]"
            note(f"timing a merge of a model with n = {n:,} and {4 * n:,} {shape} inputs, {how}")
            small = merge_inputs(one_column_inputs(n, Path(folder), rank), *extra)
            large = merge_inputs(one_column_inputs(4 * n, Path(folder), rank), *extra)
            rows.append(ratio_row("12 linear in model size", f"merge, n {shape} inputs, {how}: time at 4n / at n",
                                  large / small, 8.0, detail=f"{small:.2f} s -> {large:.2f} s at {4 * n:,} inputs "
                                  "(start-up included)"))
    return rows


if __name__ == "__main__":
    emit(main())
