"""Question 4: inference with the merged model against what users do without merge-models.

For a small (hidden 128) and a large (hidden 4096) pair of MLPs, at batch 1, 64 and 4096:
- merged: the merged file in one onnxruntime session, fed the whole rows;
- parts: the two original files in two sessions, each fed its columns (numpy fancy indexing),
  plus the numpy combiner ((a + b) / 2);
- pre-split: the merged graph without its routing Gathers, its parts' inputs fed columns
  that were split beforehand (outside the timing): what the routing itself costs.
All sessions use onnxruntime's default options, as a user's would (only logging is quietened). The three are timed in
interleaved rounds and each takes its best round, so a busy machine hurts all of them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import A_COLUMNS, B_COLUMNS, COLUMNS, Row, emit, make_pair, merge_cli, note, ratio_row, workdir

SIZES = {"small": (128, 1), "large": (4096, 1)}  # hidden width, hidden x hidden layers
BATCHES = (1, 64, 4096)
BUDGET = 4.0  # seconds of timing per model size and batch size (at least 3 rounds)


def presplit_model(merged: Path, out: Path) -> None:
    """The merged model with its routing Gathers removed: each part's input becomes a graph input."""
    import onnx

    model = onnx.load(merged)
    graph = model.graph
    shared = graph.input[0].name
    routes = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == shared]
    inputs = []
    for node in routes:
        graph.node.remove(node)
        vi = next(v for v in graph.value_info if v.name == node.output[0])
        inputs.append(vi)
    del graph.input[:]
    graph.input.extend(inputs)
    onnx.save(model, out)


def time_rounds(runs: dict[str, Callable[[], object]], budget: float) -> dict[str, float]:
    """Best seconds per call of each function, timed in interleaved rounds within about `budget` seconds.

    Each round runs every function for the same number of calls; many short rounds and the best
    of them filter out what other processes on the machine do meanwhile.
    """
    for fn in runs.values():
        fn()  # warm-up
    start = time.perf_counter()
    next(iter(runs.values()))()
    per_call = time.perf_counter() - start
    calls = max(1, int(0.03 / per_call))  # rounds of ~30 ms per function
    rounds = max(3, min(40, int(budget / (per_call * calls * len(runs)))))
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls)
    return best


def cell(size: str, hidden: int, batch: int, merged: Any, split: Any, part_a: Any, part_b: Any) -> list[Row]:
    """One model size at one batch size: merged vs the parts vs the pre-split merged graph."""
    x = np.random.default_rng(batch).standard_normal((batch, COLUMNS), dtype=np.float32)
    merged_input = merged.get_inputs()[0].name
    columns = {"a/x": A_COLUMNS, "b/x": B_COLUMNS}
    pre = {i.name: np.ascontiguousarray(x[:, columns[i.name]]) for i in split.get_inputs()}

    def merged_run() -> np.ndarray:
        return merged.run(None, {merged_input: x})[0]

    def parts_run() -> np.ndarray:
        ya = part_a.run(None, {"x": x[:, A_COLUMNS]})[0]
        yb = part_b.run(None, {"x": x[:, B_COLUMNS]})[0]
        return (ya + yb) / 2

    def presplit_run() -> np.ndarray:
        return split.run(None, pre)[0]

    np.testing.assert_allclose(merged_run(), parts_run(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(merged_run(), presplit_run(), rtol=1e-4, atol=1e-5)
    note(f"{size} MLPs (hidden {hidden}), batch {batch}")
    t = time_rounds({"merged": merged_run, "parts": parts_run, "presplit": presplit_run}, BUDGET)
    limit = 0.6 if (size, batch) == ("small", 1) else 1.0
    what = f"{size} (hidden {hidden}) batch {batch}"
    return [
        ratio_row("4 inference", f"{what}: merged / parts", t["merged"] / t["parts"], limit,
                  detail=f"merged {ms(t['merged'])}, two sessions + numpy {ms(t['parts'])}"),
        ratio_row("4 inference", f"{what}: routing cost", t["merged"] / t["presplit"], 1.05,
                  detail=f"merged {ms(t['merged'])}, fed pre-split columns {ms(t['presplit'])}"),
    ]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def main() -> list[Row]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the pre-split model's unused column indices would be warned about
    rows: list[Row] = []
    with workdir("inference") as tmp:
        for size, (hidden, layers) in SIZES.items():
            pair = make_pair(tmp / size, hidden, layers)
            merged, split = pair.dir / "merged.onnx", pair.dir / "presplit.onnx"
            merge_cli(pair, merged, "--no-verify")
            presplit_model(merged, split)
            sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                        for p in (merged, split, pair.a, pair.b)]
            for batch in BATCHES:
                rows += cell(size, hidden, batch, *sessions)
    return rows


if __name__ == "__main__":
    emit(main())
