"""Question 4: inference with the merged model against what users do without merge-models.

For a small (hidden 128) and a large (hidden 4096) pair of MLPs, each reading its own block of
16 of the 32 columns, at batch 1, 64 and 4096:
- merged: the merged file in one onnxruntime session, fed the whole rows;
- parts: the two original files in two sessions, each fed its columns (numpy fancy indexing),
  plus the numpy combiner ((a + b) / 2);
- pre-split: the merged graph without its routing nodes, its parts' inputs fed columns that
  were split beforehand (outside the timing): what the routing itself costs.
The small pair is measured once more with interleaved columns (a: even, b: odd), whose routing
is a Gather of the transposed input rather than a Slice; that is reported without a target.
All sessions use onnxruntime's default options but one, the same for all of them: idle intra-op
threads do not spin. By default they spin ~40 ms after each run, and on a machine shared with
other jobs the spinning threads of the variant measured last slow the one measured next by up to
2x; this also takes away what two sessions of the parts lose to each other's spinning.
Each variant also runs in a second set of sessions of the same files (an A/A control): how far
identical variants drift apart is the noise a ratio is judged against.
The variants are timed in interleaved rounds (~10 ms of calls each, at least 8 rounds), each taken
at its best, using three sessions of each file in turn (where a session's weights land in memory
moves a memory-bound model's time by ~10%).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import BLOCKS, COLUMNS, SCATTERED, Pair, Row, emit, make_pair, merge_cli, note, ratio_row, workdir

SIZES = {"small": (128, 1), "large": (4096, 1)}  # hidden width, hidden x hidden layers
BATCHES = (1, 64, 4096)
BUDGET = 4.0  # seconds of timing per model size and batch size (at least MIN_ROUNDS rounds)
SESSIONS = 3  # of each file, used in turn
MIN_ROUNDS = 8


def presplit_model(merged: Path, out: Path, part_inputs: list[str]) -> None:
    """The merged model without its routing: each part's input (e.g. "a/x") becomes a graph input."""
    import onnx

    model = onnx.load(merged)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    routing: dict[int, onnx.NodeProto] = {}
    pending = list(part_inputs)
    while pending:  # every node the parts' inputs are computed by, back to the shared input
        node = producer.get(pending.pop())
        if node is not None and id(node) not in routing:
            routing[id(node)] = node
            pending.extend(node.input)
    for node in routing.values():
        graph.node.remove(node)
    used = {x for n in graph.node for x in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [next(v for v in graph.value_info if v.name == name) for name in part_inputs]
    del graph.input[:]
    graph.input.extend(inputs)
    onnx.save(model, out)


def time_rounds(runs: dict[str, list[Callable[[], object]]], budget: float) -> dict[str, list[float]]:
    """Seconds per call of each variant in each round; the rounds interleave the variants.

    A round runs every variant for the same number of calls (~10 ms each), one after the other; many
    rounds within about `budget` seconds (at least MIN_ROUNDS). A variant has one function per session and round r uses
    session r % n: how a session's weights land in memory changes a memory-bound model's speed by
    ~10%, which is luck, not the model.
    """
    start = time.perf_counter()
    runs["merged"][0]()
    per_call = time.perf_counter() - start
    calls = max(1, int(0.01 / per_call))
    rounds = max(MIN_ROUNDS, min(200, int(budget / (per_call * calls * len(runs)))))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, fns in runs.items():
            fn = fns[r % len(fns)]
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls)
    return times


def best_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    return min(times[a]) / min(times[b])


def cell(size: str, hidden: int, batch: int, pair: Pair, sessions: dict[str, list[Any]],
         layout: str = "") -> list[Row]:
    """One model size at one batch size: merged vs the parts vs the pre-split merged graph.

    `sessions`: a few sessions of each file ("merged", "presplit", "a", "b"). With a `layout`
    name, only the routing cost is reported, as information (no target).
    """
    x = np.random.default_rng(batch).standard_normal((batch, COLUMNS), dtype=np.float32)
    cols_a, cols_b = pair.columns["a"], pair.columns["b"]
    merged_input = sessions["merged"][0].get_inputs()[0].name
    columns = {"a/x": cols_a, "b/x": cols_b}
    pre = {i.name: np.ascontiguousarray(x[:, columns[i.name]]) for i in sessions["presplit"][0].get_inputs()}

    def merged_run(merged: Any) -> Callable[[], np.ndarray]:
        return lambda: merged.run(None, {merged_input: x})[0]

    def parts_run(part_a: Any, part_b: Any) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            ya = part_a.run(None, {"x": x[:, cols_a]})[0]
            yb = part_b.run(None, {"x": x[:, cols_b]})[0]
            return (ya + yb) / 2

        return run

    def presplit_run(split: Any) -> Callable[[], np.ndarray]:
        return lambda: split.run(None, pre)[0]

    runs = {"merged": [merged_run(m) for m in sessions["merged"]],
            "presplit": [presplit_run(s) for s in sessions["presplit"]]}
    if not layout:  # the same files in other sessions: how far identical variants drift apart (A/A)
        runs["merged again"] = [merged_run(m) for m in sessions["merged2"]]
    if not layout:
        runs["parts"] = [parts_run(a, b) for a, b in zip(sessions["a"], sessions["b"], strict=True)]
        runs["parts again"] = [parts_run(a, b) for a, b in zip(sessions["a2"], sessions["b2"], strict=True)]
    want = runs["merged"][0]()  # also warms the first session of each variant up; the others warm up in
    for fns in runs.values():  # the first rounds (batch 1 comes first), whose times the best ignores
        np.testing.assert_allclose(fns[0](), want, rtol=1e-4, atol=1e-5)
    note(f"{size} MLPs (hidden {hidden}){', ' + layout if layout else ''}, batch {batch}")
    times = time_rounds(runs, BUDGET)
    t = {name: min(values) for name, values in times.items()}
    what = f"{size} (hidden {hidden}){' ' + layout if layout else ''} batch {batch}"
    routing = best_ratio(times, "merged", "presplit")
    routing_detail = f"best: merged {ms(t['merged'])}, fed pre-split columns {ms(t['presplit'])}"
    if layout:
        return [Row("4 inference", f"{what}: routing cost", routing, "x", "(info)", None, routing_detail)]
    limit = 0.6 if (size, batch) == ("small", 1) else 1.0
    rounds = f"best of {len(times['merged'])} rounds"
    spread = {name: abs(best_ratio(times, name, f"{name} again") - 1) for name in ("merged", "parts")}
    noise = max(spread.values())
    return [
        ratio_row("4 inference", f"{what}: merged / parts", best_ratio(times, "merged", "parts"), limit,
                  detail=f"best: merged {ms(t['merged'])}, two sessions + numpy {ms(t['parts'])}; {rounds}",
                  noise=noise if limit == 1.0 else 0.0),
        ratio_row("4 inference", f"{what}: routing cost", routing, 1.05, detail=routing_detail, noise=noise),
        Row("4 inference", f"{what}: A/A noise (same files, other sessions)", 1 + noise, "x", "(info)", None,
            f"merged {ms(t['merged'])} vs {ms(t['merged again'])}, parts {ms(t['parts'])} vs {ms(t['parts again'])}"),
    ]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def main() -> list[Row]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings only
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see the module's docstring
    rows: list[Row] = []
    cases = [(size, hidden, layers, BLOCKS, "") for size, (hidden, layers) in SIZES.items()]
    cases.append(("small", *SIZES["small"], SCATTERED, "scattered columns"))
    with workdir("inference") as tmp:
        for size, hidden, layers, columns, layout in cases:
            pair = make_pair(tmp / f"{size}{'-' + layout.split()[0] if layout else ''}", hidden, layers,
                             columns=columns)
            merged, split = pair.dir / "merged.onnx", pair.dir / "presplit.onnx"
            merge_cli(pair, merged, "--no-verify")
            presplit_model(merged, split, ["a/x", "b/x"])
            sessions = {name: [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                               for _ in range(SESSIONS)]
                        for name, p in (("merged", merged), ("presplit", split), ("a", pair.a), ("b", pair.b),
                                        ("a2", pair.a), ("b2", pair.b), ("merged2", merged))}
            for batch in BATCHES:
                rows += cell(size, hidden, batch, pair, sessions, layout=layout)
    return rows


if __name__ == "__main__":
    emit(main())
