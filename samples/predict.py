"""Run a merged model on real rows: `python samples/predict.py merged.onnx rows.csv [--target NAME]`.

rows.csv has a header naming the merged input's columns (in any order) and the target column: the
one given by --target, else the one column that is not an input. Prints the first few predictions
and the accuracy (classifiers) or RMSE (regressors) over all rows, next to each part's own when the
merged file was built with --keep-outputs (its outputs `<model>/<output>`).
"""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import onnxruntime as ort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("rows")
    parser.add_argument("--target", help="the column with the true values (default: the one that is not an input)")
    args = parser.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    mapping = json.loads(session.get_modelmeta().custom_metadata_map["merge_models.mapping"])
    columns = input_columns(mapping, feed.name)
    with open(args.rows, newline="") as f:
        table = list(csv.DictReader(f))
    header = list(table[0])
    others = [c for c in header if c not in columns]
    target = args.target or (others[0] if len(others) == 1 else None)
    if target is None or target not in header:
        raise SystemExit(f"{args.rows}: say which column is the target with --target (not inputs: {', '.join(others)})")
    dtype = np.float64 if feed.type == "tensor(double)" else np.float32
    X = np.array([[float(row[c] or "nan") for c in columns] for row in table], dtype=dtype)
    truth = [row[target] for row in table]
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {feed.name: X}), strict=True))

    if "label" in out:
        label, proba = out["label"], out["probabilities"]
        y = as_labels(truth, label)
        print(f"{'row':>4}  {'target':>6}  {'label':>5}  probabilities")
        for i in range(min(5, len(y))):
            print(f"{i:>4}  {y[i]!s:>6}  {label[i]!s:>5}  {np.array2string(proba[i], precision=3)}")
        scores = {"merged": np.mean(label == y)}
        scores |= {name.split("/")[0]: np.mean(out[name] == y) for name in names if name.endswith("/label")}
        what = "accuracy"
    else:
        prediction = out["prediction"].reshape(len(truth), -1)[:, 0]
        y = np.array([float(v) for v in truth])
        print(f"{'row':>4}  {'target':>10}  {'prediction':>10}")
        for i in range(min(5, len(y))):
            print(f"{i:>4}  {y[i]:>10.4g}  {prediction[i]:>10.4g}")
        scores = {"merged": rmse(prediction, y)}
        scores |= {name.split("/")[0]: rmse(out[name], y) for name in names
                   if "/" in name and out[name].size == len(y)}
        what = "RMSE"
    shown = ", ".join(f"{model} {value:.3f}" for model, value in scores.items())
    print(f"{what} on {len(y)} rows of {args.rows} (target {target}): {shown}")


def input_columns(mapping: dict, name: str) -> list[str]:
    """The merged input's columns, in order, from the mapping the merged file records."""
    if "input" in mapping:
        return list(mapping["input"]["columns"])
    return list(mapping["inputs"][name]["columns"])


def as_labels(truth: list[str], label: np.ndarray) -> np.ndarray:
    """The target column in the labels' type: integers for int64 labels ("1" and "1.0" alike), else text."""
    if label.dtype.kind in "iu":
        return np.array([int(float(v)) for v in truth], dtype=label.dtype)
    return np.array(truth, dtype=object)


def rmse(prediction: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((prediction.reshape(len(y)) - y) ** 2)))


if __name__ == "__main__":
    main()
