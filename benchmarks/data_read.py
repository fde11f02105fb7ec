"""Question 11: reading `--data` rows, and scoring on a million of them (issue 14's rows targets).

A CSV of 1M rows x 10 float columns and a 0/1 label (~90 MB) is read by merge_cli.data.read_data
with numpy alone (pyarrow hidden) and with pyarrow, each against numpy.loadtxt on the same file, in
interleaved rounds (fresh processes, imports excluded, the best of 7). Then the whole `merge-models merge --data`
process on that file with two small classifiers (a logistic regression and a depth-5 tree from
skl2onnx, ZipMap outputs as converted): read, verify on the rows, score each model and the merge.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from common import MERGE_MODELS, MiB, Row, emit, note, ratio_row, run_child, timed_snippet, workdir

ROWS = int(os.environ.get("BENCH_DATA_ROWS", "1000000"))
COLUMNS = 10
ROUNDS = 3  # whole merges
READ_ROUNDS = 7  # reads are short and the machine is shared: more rounds to find each one's best
MERGE_SECONDS = 10.0  # issue 14: `--data` scoring alone on 1M rows <= 10 s

LOADTXT = """
import sys, time
import numpy as np
start = time.perf_counter()
np.loadtxt(sys.argv[1], delimiter=",", skiprows=1)
print(f"seconds={time.perf_counter() - start}")
"""

READER = """
import sys, time
from pathlib import Path
from merge_cli import data
from merge_cli.mapping import InputSpec
if sys.argv[2] == "numpy":
    data._arrow = lambda: None
else:
    import pyarrow.csv  # imports excluded from the time, as numpy's are
spec = InputSpec("features", tuple(f"c{i}" for i in range(int(sys.argv[3]))))
start = time.perf_counter()
rows = data.read_data(Path(sys.argv[1]), [spec], data.resolve_target(Path(sys.argv[1]), [spec], None))
assert rows.target is not None and len(rows) == int(sys.argv[4])
print(f"seconds={time.perf_counter() - start}")
"""


def make_job(tmp: Path) -> tuple[Path, Path]:
    """rows.csv, and a mapping of two small classifiers on its two halves of columns."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(ROWS, COLUMNS)).astype(np.float32)
    y = ((X[:, 0] + X[:, COLUMNS // 2] + rng.normal(size=ROWS) * 0.5) > 0).astype(int)
    half = COLUMNS // 2
    a = LogisticRegression().fit(X[:2000, :half], y[:2000])
    b = DecisionTreeClassifier(max_depth=5, random_state=0).fit(X[:2000, half:], y[:2000])
    (tmp / "a.onnx").write_bytes(to_onnx(a, X[:1, :half], target_opset=17).SerializeToString())
    (tmp / "b.onnx").write_bytes(to_onnx(b, X[:1, half:], target_opset=17).SerializeToString())
    cols = [f"c{i}" for i in range(COLUMNS)]
    mapping = tmp / "map.json"
    mapping.write_text(json.dumps({
        "version": 1, "input": {"columns": cols},
        "models": {"a": {"path": "a.onnx", "columns": cols[:half]}, "b": {"path": "b.onnx", "columns": cols[half:]}},
        "combiner": {"kind": "mean"}}))
    rows = tmp / "rows.csv"
    with open(rows, "w") as f:
        f.write(",".join(cols) + ",label\n")
        np.savetxt(f, np.column_stack([X, y]), delimiter=",", fmt=["%.6g"] * COLUMNS + ["%d"])
    return rows, mapping


def main() -> list[Row]:
    with workdir("data") as tmp:
        note(f"writing {ROWS} rows x {COLUMNS} columns + a label, and two small classifiers, in {tmp}")
        rows, mapping = make_job(tmp)
        size = rows.stat().st_size
        times: dict[str, list[float]] = {"loadtxt": [], "numpy": [], "pyarrow": []}
        merges = []
        for i in range(READ_ROUNDS):
            note(f"round {i + 1}/{READ_ROUNDS}: numpy.loadtxt, reader (numpy), reader (pyarrow)"
                 + (", merge --data" if i < ROUNDS else ""))
            times["loadtxt"].append(timed_snippet(LOADTXT, str(rows))[0])
            for engine in ("numpy", "pyarrow"):
                times[engine].append(timed_snippet(READER, str(rows), engine, str(COLUMNS), str(ROWS))[0])
            if i >= ROUNDS:
                continue
            merges.append(run_child([MERGE_MODELS, "merge", "--map", str(mapping), "--out", str(tmp / "m.onnx"),
                                     "--data", str(rows), "--json"], cwd=tmp))
            (tmp / "m.onnx").unlink()
        loadtxt = min(times["loadtxt"])
        best = min(merges, key=lambda r: r.seconds)
        stages = json.loads(best.stdout)["stages"]
        shown = ", ".join(f"{k} {v:.1f} s" for k, v in stages.items() if v >= 0.05)
        return [
            ratio_row("11 --data", "CSV reader, numpy only / numpy.loadtxt", min(times["numpy"]) / loadtxt, 1.0,
                      detail=f"{min(times['numpy']):.2f} s vs {loadtxt:.2f} s; {ROWS} rows, {size / MiB:.0f} MiB"),
            ratio_row("11 --data", "CSV reader with pyarrow / numpy.loadtxt", min(times["pyarrow"]) / loadtxt, 1.0,
                      detail=f"{min(times['pyarrow']):.2f} s (merge-models[data])"),
            Row("11 --data", f"merge --data, {ROWS // 1000}k rows x {COLUMNS}, 2 small classifiers", best.seconds, "s",
                f"<= {MERGE_SECONDS:g} s", best.seconds <= MERGE_SECONDS,
                f"whole process, best of {ROUNDS}: {shown}; peak RSS {best.peak_rss / MiB:.0f} MiB "
                f"({best.peak_rss / size:.1f}x the CSV)"),
        ]


if __name__ == "__main__":
    emit(main())
