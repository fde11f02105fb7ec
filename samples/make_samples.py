"""Train the two bundled sample models and write them with skl2onnx.

scikit-learn's breast-cancer data (569 real rows, 30 columns) is split by columns: model A, a
scaled logistic regression, sees the ten "mean ..." columns and the ten "... error" columns' first
five; model B, a small random forest, sees the "worst ..." columns and the other five error
columns. Both are trained on the same 70% of the rows; the held-out rows go to rows.csv (all 30
columns plus the target) so the merged model can be scored on rows neither part was trained on.

    python samples/make_samples.py        # rewrites model_a.onnx, model_b.onnx, features.toml, rows.csv
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
OPSET = {"": 17, "ai.onnx.ml": 3}


def main() -> None:
    data = load_breast_cancer()
    columns = [str(c) for c in data.feature_names]
    X, y = data.data.astype(np.float32), data.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)

    cols_a = columns[:15]  # the "mean ..." columns and the first five "... error" columns
    cols_b = columns[15:]  # the other error columns and the "worst ..." columns
    ia = [columns.index(c) for c in cols_a]
    ib = [columns.index(c) for c in cols_b]

    model_a = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.5))
    model_a.fit(X_train[:, ia], y_train)
    model_b = RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0)
    model_b.fit(X_train[:, ib], y_train)

    for name, model, idx in (("model_a", model_a, ia), ("model_b", model_b, ib)):
        onx = to_onnx(model, X_train[:1, idx], options={"zipmap": False}, target_opset=OPSET)
        onx.producer_version = onx.producer_version  # keep what skl2onnx wrote
        (HERE / f"{name}.onnx").write_bytes(onx.SerializeToString(deterministic=True))
        print(f"{name}.onnx: test accuracy {model.score(X_test[:, idx], y_test):.3f}")

    write_mapping(HERE / "features.toml", columns, cols_a, cols_b)
    with open(HERE / "rows.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*columns, "target"])
        for row, label in zip(X_test, y_test, strict=True):
            w.writerow([*(repr(float(v)) for v in row), int(label)])
    print(f"rows.csv: {len(X_test)} held-out rows")


def write_mapping(path: Path, columns: list[str], cols_a: list[str], cols_b: list[str]) -> None:
    def toml_list(items: list[str]) -> str:
        return "[\n" + "".join(f'  "{c}",\n' for c in items) + "]"

    path.write_text(
        "# Breast-cancer features: model A reads the first 15 columns, model B the last 15.\n"
        "version = 1\n\n"
        "[input]\n"
        'name = "features"\n'
        f"columns = {toml_list(columns)}\n"
        'dtype = "float32"\n\n'
        "[models.a]\n"
        'path = "model_a.onnx"   # scaled logistic regression (skl2onnx, zipmap=False)\n'
        f"columns = {toml_list(cols_a)}\n\n"
        "[models.b]\n"
        'path = "model_b.onnx"   # random forest (skl2onnx, zipmap=False)\n'
        f"columns = {toml_list(cols_b)}\n\n"
        "[combiner]\n"
        'kind = "mean"\n'
    )


if __name__ == "__main__":
    main()
