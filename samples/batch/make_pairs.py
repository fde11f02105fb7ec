"""Write the model pairs that samples/batch/Makefile merges: one folder per dataset.

Each folder holds two scikit-learn models trained on different columns of the same rows (written
with skl2onnx) and the features.toml that routes the columns to them. In real use each folder is a
customer, a region or a dataset whose two models were trained separately.

    python samples/batch/make_pairs.py     # rewrites */a.onnx, */b.onnx, */features.toml
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

HERE = Path(__file__).resolve().parent
OPSET = {"": 17, "ai.onnx.ml": 3}

# name -> (dataset, model a, model b, combiner table); a takes the first half of the columns, b the rest
PAIRS: dict[str, tuple[Callable[..., Any], Any, Any, dict[str, Any]]] = {
    "iris": (load_iris, LogisticRegression(max_iter=1000), DecisionTreeClassifier(max_depth=3, random_state=0),
             {"kind": "mean"}),
    "wine": (load_wine, make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
             RandomForestClassifier(n_estimators=10, max_depth=3, random_state=0), {"kind": "weighted"}),
    "cancer": (load_breast_cancer, make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
               GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=0), {"kind": "mean"}),
    "diabetes": (load_diabetes, Ridge(alpha=1.0),
                 GradientBoostingRegressor(n_estimators=20, max_depth=2, random_state=0), {"kind": "mean"}),
}
WEIGHTS = {"wine": (0.6, 0.4)}


def main() -> None:
    for name, (load, model_a, model_b, combiner) in PAIRS.items():
        data = load()
        columns = [str(c) for c in data.feature_names]
        X, y = data.data.astype(np.float32), data.target
        half = len(columns) // 2
        folder = HERE / name
        folder.mkdir(exist_ok=True)
        for file, model, cols in (("a.onnx", model_a, slice(0, half)), ("b.onnx", model_b, slice(half, None))):
            model.fit(X[:, cols], y)
            options = {"zipmap": False} if hasattr(model, "predict_proba") else {}
            onx = to_onnx(model, X[:1, cols], options=options, target_opset=OPSET)
            (folder / file).write_bytes(onx.SerializeToString(deterministic=True))
        weights = WEIGHTS.get(name)
        (folder / "features.toml").write_text(mapping(name, columns, half, combiner, weights))
        print(f"{name}: {len(columns)} columns, a.onnx + b.onnx")


def mapping(name: str, columns: list[str], half: int, combiner: dict[str, Any], weights: Any) -> str:
    def strings(items: list[str]) -> str:
        return "[" + ", ".join(json.dumps(c) for c in items) + "]"

    wa, wb = (f"weight = {weights[0]}\n", f"weight = {weights[1]}\n") if weights else ("", "")
    return (
        f"# {name}: model a reads the first {half} columns, model b the other {len(columns) - half}.\n"
        "version = 1\n\n"
        "[input]\n"
        f"columns = {strings(columns)}\n\n"
        "[models.a]\n"
        'path = "a.onnx"\n'
        f"columns = {strings(columns[:half])}\n{wa}\n"
        "[models.b]\n"
        'path = "b.onnx"\n'
        f"columns = {strings(columns[half:])}\n{wb}\n"
        "[combiner]\n"
        f'kind = "{combiner["kind"]}"\n'
    )


if __name__ == "__main__":
    main()
