"""Questions 7-10: the default path (verification on) is the fast path.

7. The 2 x 200 MB pair merged as users run it (verified) against the I/O floor (onnx.load x2 +
   onnx.save x2), its peak RSS and anonymous memory against the input bytes, `--no-verify` beside
   it, and `merge-models verify MERGED` against the same floor.
8. Graph size: two long thin parts (MatMul 8x8 + Add + Tanh blocks) of 1k, 10k and 50k nodes each,
   default against `--no-verify`; the default's time per node must not grow with the graph.
9. Model count: 32 small MLPs on one column each, default against `--no-verify`.
10. Rows: two small regressors verified and scored on 100k and 1M `--data` rows (10 columns).
Whole processes, interleaved rounds, each at its best; anonymous memory is sampled every ~5 ms.
"""

from __future__ import annotations

import json

import numpy as np
from common import (
    COLUMNS,
    MERGE_MODELS,
    MiB,
    Row,
    Run,
    best,
    chain,
    emit,
    io_floor,
    make_models,
    make_pair,
    merge_cli,
    mlp,
    note,
    ratio,
    ratio_row,
    remove,
    run_child,
    workdir,
)

HIDDEN, LAYERS = 4096, 3  # the 2 x 201 MB pair of question 1
ROUNDS = 3


def default_path() -> list[Row]:
    with workdir("default") as tmp:
        note(f"generating two MLPs (hidden {HIDDEN}, {LAYERS} hidden layers) in {tmp}")
        pair = make_pair(tmp, HIDDEN, LAYERS)
        out, kept = tmp / "merged.onnx", tmp / "kept.onnx"
        merge_cli(pair, kept)
        floors: list[Run] = []
        defaults: list[Run] = []
        plain: list[Run] = []
        rechecks: list[Run] = []
        verify_stage: list[float] = []
        for i in range(ROUNDS):
            note(f"round {i + 1}/{ROUNDS}: I/O floor, merge (verified), merge --no-verify, verify MERGED")
            floors.append(io_floor(pair)[1])
            defaults.append(merge_cli(pair, out, "--json"))
            verify_stage.append(json.loads(defaults[-1].stdout)["stages"]["verify"])
            remove(out)
            plain.append(merge_cli(pair, out, "--no-verify"))
            remove(out)
            rechecks.append(run_child([MERGE_MODELS, "verify", str(kept), "--quiet"]))
        size = pair.input_bytes
        floor = best([r.seconds for r in floors])
        rss = max(r.peak_rss for r in defaults)
        anon = max(r.peak_anon for r in defaults)
        return [
            ratio_row("7 default path", "merge (verified) / I/O floor", ratio(defaults, floors), 1.0,
                      detail=f"2 x {size / 2e6:.0f} MB; best: merge {best([r.seconds for r in defaults]):.2f} s "
                             f"(verify stage {best(verify_stage):.2f} s), load+save {floor:.2f} s"),
            ratio_row("7 default path", "merge --no-verify / I/O floor", ratio(plain, floors), 0.4,
                      detail=f"best: {best([r.seconds for r in plain]):.2f} s"),
            ratio_row("7 default path", "merge (verified) peak RSS / input bytes", rss / size, 1.2,
                      detail=f"{rss / MiB:.0f} MiB for {size / MiB:.0f} MiB of inputs; the merged file's weights "
                             f"are memory-mapped while it runs (load+save: {max(r.peak_rss for r in floors) / MiB:.0f} MiB)"),
            ratio_row("7 default path", "merge (verified) peak anonymous memory / input bytes", anon / size, 0.5,
                      detail=f"{anon / MiB:.0f} MiB (sampled every ~5 ms)"),
            ratio_row("7 default path", "verify MERGED / I/O floor", ratio(rechecks, floors), 1.0,
                      detail=f"best: {best([r.seconds for r in rechecks]):.2f} s; peak RSS "
                             f"{max(r.peak_rss for r in rechecks) / MiB:.0f} MiB, anonymous "
                             f"{max(r.peak_anon for r in rechecks) / MiB:.0f} MiB"),
        ]


SIZES = (1_000, 10_000, 50_000)  # nodes per part


def graph_size() -> list[Row]:
    times: dict[int, tuple[float, float]] = {}
    with workdir("graph") as tmp:
        for nodes in SIZES:
            note(f"two parts of {nodes} nodes: merge (verified), merge --no-verify")
            mapping = make_models(tmp / str(nodes), 2, lambda path, inputs, seed, n=nodes: chain(path, inputs, n, seed))
            out = tmp / f"{nodes}.onnx"
            verified = run_child([MERGE_MODELS, "merge", "--map", str(mapping), "--out", str(out), "--quiet"])
            remove(out)
            plain = run_child([MERGE_MODELS, "merge", "--map", str(mapping), "--out", str(out), "--quiet",
                               "--no-verify"])
            remove(out)
            times[nodes] = (verified.seconds, plain.seconds)
    small, large = SIZES[0], SIZES[-1]
    per_node = {n: t[0] / n for n, t in times.items()}
    shown = ", ".join(f"{n // 1000}k: {t[0]:.1f} s vs {t[1]:.1f} s" for n, t in times.items())
    return [
        ratio_row("8 graph size", f"merge (verified) time per node, {large // 1000}k vs {small // 1000}k nodes per part",
                  per_node[large] / per_node[small], 1.0, detail=f"verified vs --no-verify: {shown}"),
        ratio_row("8 graph size", f"{large // 1000}k nodes per part: merge (verified) / --no-verify",
                  times[large][0] / times[large][1], 3.0, detail="one round each (the large ones take minutes)"),
    ]


MODELS = 32


def model_count() -> list[Row]:
    with workdir("models") as tmp:
        note(f"{MODELS} small MLPs on one column each")
        mapping = make_models(tmp, MODELS, lambda path, inputs, seed: mlp(path, inputs, 64, 2, seed))
        out = tmp / "merged.onnx"
        verified: list[Run] = []
        plain: list[Run] = []
        for i in range(ROUNDS):
            note(f"round {i + 1}/{ROUNDS}: merge (verified), merge --no-verify")
            verified.append(run_child([MERGE_MODELS, "merge", "--map", str(mapping), "--out", str(out), "--quiet"]))
            remove(out)
            plain.append(run_child([MERGE_MODELS, "merge", "--map", str(mapping), "--out", str(out), "--quiet",
                                    "--no-verify"]))
            remove(out)
    return [ratio_row("9 model count", f"{MODELS} models: merge (verified) / --no-verify", ratio(verified, plain), 1.5,
                      detail=f"best: {best([r.seconds for r in verified]):.2f} s vs {best([r.seconds for r in plain]):.2f} s")]


ROWS = (100_000, 1_000_000)
DATA_COLUMNS = 10


def rows_scaling() -> list[Row]:
    runs: dict[int, tuple[Run, dict[str, float]]] = {}
    with workdir("rows") as tmp:
        half = DATA_COLUMNS // 2
        for name, seed in (("a", 1), ("b", 2)):
            mlp(tmp / f"{name}.onnx", half, 32, 2, seed)
        names = [f"c{i}" for i in range(DATA_COLUMNS)]
        mapping = tmp / "features.json"
        mapping.write_text(json.dumps({
            "version": 1, "input": {"name": "features", "columns": names},
            "models": {"a": {"path": "a.onnx", "columns": names[:half]}, "b": {"path": "b.onnx", "columns": names[half:]}},
            "combiner": {"kind": "mean"}}))
        rng = np.random.default_rng(0)
        for n in ROWS:
            note(f"{n} rows of --data: writing the CSV, then merge (verified and scored)")
            data = tmp / f"rows_{n}.csv"
            table = rng.standard_normal((n, DATA_COLUMNS + 1)).astype(np.float32)
            np.savetxt(data, table, fmt="%.6g", delimiter=",", header=",".join([*names, "y"]), comments="")
            del table
            out = tmp / "merged.onnx"
            run = run_child([MERGE_MODELS, "merge", "--map", str(mapping), "--out", str(out), "--json",
                             "--data", str(data), "--target", "y"])
            runs[n] = (run, json.loads(run.stdout)["stages"])
            remove(out, data)
    small, large = ROWS
    (run_s, _), (run_l, stages) = runs[small], runs[large]
    per_row = (run_l.seconds / large) / (run_s.seconds / small)
    stage_text = ", ".join(f"{k} {v:.1f} s" for k, v in stages.items() if v >= 0.05)
    return [
        ratio_row("10 rows", f"merge --data: time per row, {large // 1000}k vs {small // 1000}k rows", per_row, 1.0,
                  detail=f"{run_l.seconds:.1f} s vs {run_s.seconds:.1f} s; peak RSS {run_l.peak_rss / MiB:.0f} MiB at 1M"),
        Row("10 rows", f"{large // 1000}k rows: --data scoring alone (score stage)", stages.get("score", 0), "s",
            "<= 10 s", stages.get("score", 0) <= 10, detail=stage_text),
    ]


def main() -> list[Row]:
    return default_path() + graph_size() + model_count() + rows_scaling()


if __name__ == "__main__":
    assert COLUMNS >= 32
    emit(main())
