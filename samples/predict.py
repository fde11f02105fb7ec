"""Run a merged model on real rows: `python samples/predict.py merged.onnx rows.csv`.

rows.csv has a header naming the merged input's columns plus a `target` column. Prints the first
few predictions and the accuracy over all rows, next to each part's own accuracy when the merged
file was built with --keep-outputs.
"""

from __future__ import annotations

import csv
import sys

import numpy as np
import onnxruntime as ort


def main(model_path: str, rows_path: str) -> None:
    with open(rows_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        data = np.array([[float(v) for v in row] for row in reader])
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    X = data[:, : len(header) - 1].astype(np.float32 if feed.type == "tensor(float)" else np.float64)
    y = data[:, -1].astype(np.int64)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {feed.name: X}), strict=True))
    label, proba = out["label"], out["probabilities"]
    print(f"{'row':>4}  {'target':>6}  {'label':>5}  probabilities")
    for i in range(5):
        print(f"{i:>4}  {y[i]:>6}  {label[i]:>5}  {np.array2string(proba[i], precision=3)}")
    print(f"merged model accuracy on {len(y)} held-out rows: {np.mean(label == y):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
