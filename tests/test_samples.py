"""The core promise on real converter output: two skl2onnx classifiers (zipmap=False) merged with mean."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, run_model, write_mapping
from skl2onnx import to_onnx
from sklearn.datasets import load_iris, load_wine
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def real_rows() -> tuple[np.ndarray, np.ndarray]:
    with open(SAMPLES / "rows.csv", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        data = np.array([[float(v) for v in row] for row in reader])
    return data[:, :-1].astype(np.float32), data[:, -1].astype(np.int64)


def test_samples_merge_equals_mean_of_parts(cli, tmp_path: Path) -> None:
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", SAMPLES / "features.toml", "--out", out, "--json")
    assert result.code == 0, result.stderr
    doc = result.json
    assert doc["verification"]["passed"] is True
    assert doc["verification"]["max_abs_error"] <= 1e-5

    X, y = real_rows()
    merged = run_model(out, {"features": X})
    a = run_model(SAMPLES / "model_a.onnx", {"X": X[:, :15]})
    b = run_model(SAMPLES / "model_b.onnx", {"X": X[:, 15:]})
    mean = (a["probabilities"] + b["probabilities"]) / 2
    np.testing.assert_allclose(merged["probabilities"], mean, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(merged["label"], np.argmax(mean, axis=1))
    # using what both learned is the point: the merged model is at least as accurate as either part here
    accuracy = np.mean(merged["label"] == y)
    assert accuracy >= max(np.mean(a["label"] == y), np.mean(b["label"] == y))


def test_sample_files_are_small_and_made_by_skl2onnx() -> None:
    for name in ("model_a.onnx", "model_b.onnx"):
        path = SAMPLES / name
        assert path.stat().st_size < 1_000_000
        assert onnx.load(path).producer_name == "skl2onnx"


@pytest.mark.parametrize("dataset", [load_iris, load_wine])
def test_fresh_skl2onnx_classifiers_on_disjoint_columns(cli, tmp_path: Path, dataset) -> None:
    data = dataset()
    X, y = data.data.astype(np.float32), data.target
    width = X.shape[1]
    cols_a, cols_b = list(range(0, width, 2)), list(range(1, width, 2))
    names = [f"f{i}" for i in range(width)]
    part_a = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X[:, cols_a], y)  # a pipeline, as users export
    part_b = GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=0).fit(X[:, cols_b], y)
    for name, model, cols in (("a", part_a, cols_a), ("b", part_b, cols_b)):
        onx = to_onnx(model, X[:1, cols], options={"zipmap": False}, target_opset=17)
        (tmp_path / f"{name}.onnx").write_bytes(onx.SerializeToString())
    mapping = write_mapping(tmp_path / "map.toml", {
        "input": {"columns": names},
        "models": {"a": {"path": "a.onnx", "columns": [names[i] for i in cols_a]},
                   "b": {"path": "b.onnx", "columns": cols_b}},
    })
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out)
    assert result.code == 0, result.stderr

    merged = run_model(out, {"features": X})
    pa = run_model(tmp_path / "a.onnx", {"X": X[:, cols_a]})["probabilities"]
    pb = run_model(tmp_path / "b.onnx", {"X": X[:, cols_b]})["probabilities"]
    np.testing.assert_allclose(merged["probabilities"], (pa + pb) / 2, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(merged["label"], np.argmax(pa + pb, axis=1))


def test_image_sample_merges_two_cnns_and_a_table_model_as_their_mean(cli, tmp_path: Path) -> None:
    """samples/images: a whole [N, 1, 8, 8] image input shared by two CNNs, a 16-column table for the third."""
    out = tmp_path / "images.onnx"
    result = cli("merge", "--map", SAMPLES / "images" / "images.toml", "--out", out, "--json")
    assert result.code == 0, result.stderr
    assert result.json["verification"]["max_abs_error"] <= 1e-5
    assert [i["name"] for i in result.json["inputs"]] == ["image", "grid"]
    with np.load(SAMPLES / "images" / "rows.npz") as rows:
        image, grid, y = rows["image"], rows["grid"], rows["y"]
    parts = [run_model(SAMPLES / "images" / "cnn_small.onnx", {"image": image})["probabilities"],
             run_model(SAMPLES / "images" / "cnn_deep.onnx", {"image": image})["probabilities"],
             run_model(SAMPLES / "images" / "grid.onnx", {"X": grid})["probabilities"]]
    merged = run_model(out, {"image": image, "grid": grid})
    np.testing.assert_allclose(merged["probabilities"], sum(parts) / 3, atol=1e-5, rtol=0)
    assert np.mean(merged["label"] == y) > 0.9  # held-out images none of the parts was trained on
