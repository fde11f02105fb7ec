"""`stack` on many rows: two small classifiers, N rows x 10 columns of CSV (issue 14: 1M rows <= 30 s, <= 1 GB).

Prints the merge's wall time, its stages (`--json`), and the peak RSS of the merge process.
Usage: .venv/bin/python benchmarks/stack_rows.py [--rows 1000000] [--learner auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "stack_rows"
MERGE_MODELS = str(Path(sys.executable).with_name("merge-models"))


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
    started = time.perf_counter()
    done = subprocess.run([MERGE_MODELS, "merge", "--map", str(mapping), "--out", str(BUILD / "merged.onnx"), "--json"],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
    if done.returncode != 0:
        sys.exit(f"merge failed ({done.returncode}): {done.stderr}")
    doc = json.loads(done.stdout)
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in doc["stages"].items())
    print(f"stack on {args.rows} rows x 10 columns, learner {args.learner}: {seconds:.1f} s (target <= 30 s), "
          f"peak RSS {peak:.0f} MB (target <= 1024 MB), CPU {cpu:.1f} s; chosen {doc['stack']['chosen']}")
    print(f"stages: {stages}")


if __name__ == "__main__":
    main()
