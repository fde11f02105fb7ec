"""`stack` on many rows: two small classifiers, N rows x 10 columns of CSV (issue 14: 1M rows <= 30 s, <= 1 GB).

Prints the merge's wall time, its stages (`--json`), and the peak RSS of the merge process (part of `make bench`).
Usage: .venv/bin/python benchmarks/stack_rows.py [--rows 1000000] [--learner auto]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from common import MiB, Row, emit, run_child

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "stack_rows"
MERGE_MODELS = str(Path(sys.executable).with_name("merge-models"))
SECONDS, RSS_MB = 30.0, 1000  # issue 14: stack on 1M rows x 10 columns, two small classifiers


def make(rows: int) -> Path:
    """Two logistic regressions on 5 columns each, and `rows` CSV rows to fit the stack on (made once)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    BUILD.mkdir(parents=True, exist_ok=True)
    data = BUILD / f"rows_{rows}.csv"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((max(rows, 2000), 10)).astype(np.float32)
    y = (x[:, 0] + x[:, 5] + 0.5 * x[:, 0] * x[:, 5] + rng.standard_normal(len(x)) > 0).astype(np.int64)
    columns = [f"c{i}" for i in range(10)]
    for name, cols in (("a", slice(0, 5)), ("b", slice(5, 10))):
        model = LogisticRegression().fit(x[:2000, cols], y[:2000])
        onx = to_onnx(model, x[:1, cols], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
        (BUILD / f"{name}.onnx").write_bytes(onx.SerializeToString())
    if not data.exists():
        table = np.column_stack([x[:rows], y[:rows]])
        np.savetxt(data, table, fmt=["%.6g"] * 10 + ["%d"], delimiter=",", header=",".join([*columns, "y"]), comments="")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--learner", default="auto", choices=["auto", "linear"])
    args = parser.parse_args()
    data = make(args.rows)
    mapping = BUILD / f"map_{args.learner}.toml"
    mapping.write_text(f"""[input]
columns = [{", ".join(f'"c{i}"' for i in range(10))}]
[models.a]
path = "a.onnx"
columns = ["c0", "c1", "c2", "c3", "c4"]
[models.b]
path = "b.onnx"
columns = ["c5", "c6", "c7", "c8", "c9"]
[combiner]
kind = "stack"
data = "{data.name}"
target = "y"
passthrough = "all"
learner = "{args.learner}"
""")
    run = run_child([MERGE_MODELS, "merge", "--map", str(mapping), "--out", str(BUILD / "merged.onnx"), "--json"],
                    check=False)
    if run.code != 0:
        sys.exit(f"merge failed ({run.code}): {run.stderr}")
    doc = json.loads(run.stdout)
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in doc["stages"].items())
    what = f"stack on {args.rows // 1000}k rows x 10 columns, learner {args.learner}"
    emit([
        Row("10 rows", f"{what}: time", run.seconds, "s", f"<= {SECONDS:g} s", run.seconds <= SECONDS,
            detail=f"stages: {stages}; chosen {doc['stack']['chosen']}"),
        Row("10 rows", f"{what}: peak RSS", run.peak_rss / 1e6, "MB", f"<= {RSS_MB} MB",
            run.peak_rss <= RSS_MB * 1e6, detail=f"anonymous {run.peak_anon / MiB:.0f} MiB"),
    ])


if __name__ == "__main__":
    main()
