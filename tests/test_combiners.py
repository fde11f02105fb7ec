"""Element-wise and concat combiners: the merged numbers equal the parts run separately plus numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import rows, run_model, save_text_model, write_mapping

LINEAR = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,2] x) => (float[N,{k}] y) <float[2,{k}] w = {{{w}}}>
{{
  y = MatMul(x, w)
}}
"""


def linear(tmp_path: Path, name: str, weights: list[float], k: int = 2, dtype: str = "float") -> Path:
    text = LINEAR.format(k=k, w=", ".join(map(str, weights)))
    if dtype == "double":
        text = text.replace("float", "double")
    return save_text_model(tmp_path / f"{name}.onnx", text)


def setup(tmp_path: Path, combiner: dict | None = None, weights: tuple[float, float] | None = None,
          k_b: int = 2, dtype_b: str = "float") -> Path:
    linear(tmp_path, "a", [1.0, -2.0, 0.5, 3.0])
    linear(tmp_path, "b", [0.25, 4.0, -1.0, 2.0, 1.0, 1.0][: 2 * k_b], k=k_b, dtype=dtype_b)
    models = {"a": {"path": "a.onnx", "columns": ["A", "B"]}, "b": {"path": "b.onnx", "columns": ["C", "A"]}}
    if weights:
        models["a"]["weight"], models["b"]["weight"] = weights
    doc = {"input": {"columns": ["A", "B", "C"]}, "models": models}
    if combiner:
        doc["combiner"] = combiner
    return write_mapping(tmp_path / "map.toml", doc)


def parts(tmp_path: Path, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = run_model(tmp_path / "a.onnx", {"x": X[:, [0, 1]]})["y"]
    b_in = X[:, [2, 0]]
    if onnx.load(tmp_path / "b.onnx").graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE:
        b_in = b_in.astype(np.float64)
    return a, run_model(tmp_path / "b.onnx", {"x": b_in})["y"]


EXPECTED = {
    "mean": lambda a, b: (a + b) / 2,
    "sum": lambda a, b: a + b,
    "max": np.maximum,
    "min": np.minimum,
    "concat": lambda a, b: np.concatenate([a, b], axis=1),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_combiner_matches_parts(cli, tmp_path: Path, kind: str) -> None:
    mapping = setup(tmp_path, {"kind": kind})
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--json")
    assert result.code == 0, result.stderr
    assert result.json["combiner"] == kind
    X = rows(128, 3)
    a, b = parts(tmp_path, X)
    got = run_model(out, {"features": X})["prediction"]
    np.testing.assert_allclose(got, EXPECTED[kind](a, b), rtol=1e-6, atol=1e-6)


def test_weighted_normalises_weights_from_the_mapping(cli, tmp_path: Path) -> None:
    mapping = setup(tmp_path, {"kind": "weighted"}, weights=(3.0, 1.0))
    out = tmp_path / "merged.onnx"
    assert cli("merge", "--map", mapping, "--out", out).code == 0
    X = rows(64, 3)
    a, b = parts(tmp_path, X)
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], 0.75 * a + 0.25 * b, rtol=1e-6, atol=1e-6)


def test_weights_option_and_combiner_option_override_the_file(cli, tmp_path: Path) -> None:
    mapping = setup(tmp_path, {"kind": "max"})
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--combiner", "weighted", "--weights", "1,4")
    assert result.code == 0, result.stderr
    X = rows(64, 3)
    a, b = parts(tmp_path, X)
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], 0.2 * a + 0.8 * b, rtol=1e-6, atol=1e-6)


def test_weighted_without_weights_is_an_error(cli, tmp_path: Path) -> None:
    mapping = setup(tmp_path, {"kind": "weighted"})
    result = cli("merge", "--map", mapping, "--out", tmp_path / "merged.onnx")
    assert result.code == 3
    assert "no weight for a, b" in result.error_lines[0]


def test_float32_with_float64_is_promoted(cli, tmp_path: Path) -> None:
    mapping = setup(tmp_path, {"kind": "mean"}, dtype_b="double")
    out = tmp_path / "merged.onnx"
    assert cli("merge", "--map", mapping, "--out", out).code == 0
    X = rows(64, 3)
    a, b = parts(tmp_path, X)
    got = run_model(out, {"features": X})["prediction"]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, (a.astype(np.float64) + b) / 2, rtol=1e-12)


@pytest.mark.parametrize("kind", ["mean", "max", "weighted"])
def test_broadcast_trap_is_refused(cli, tmp_path: Path, kind: str) -> None:
    """[N,2] with [N,1] would broadcast silently in onnxruntime: refused with exit 4."""
    mapping = setup(tmp_path, {"kind": kind}, weights=(1.0, 1.0), k_b=1)
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out)
    assert result.code == 4
    assert "different shapes" in result.error_lines[0] and "[N, 2]" in result.stderr and "[N, 1]" in result.stderr
    assert not out.exists()


def test_concat_accepts_different_widths(cli, tmp_path: Path) -> None:
    mapping = setup(tmp_path, {"kind": "concat"}, k_b=3)
    out = tmp_path / "merged.onnx"
    assert cli("merge", "--map", mapping, "--out", out).code == 0
    X = rows(32, 3)
    a, b = parts(tmp_path, X)
    got = run_model(out, {"features": X})["prediction"]
    assert got.shape == (32, 5)
    np.testing.assert_allclose(got, np.concatenate([a, b], axis=1), rtol=1e-6)


def test_keep_outputs_exposes_each_part(cli, tmp_path: Path) -> None:
    mapping = setup(tmp_path)
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--keep-outputs", "--json")
    assert result.code == 0, result.stderr
    assert [o["name"] for o in result.json["outputs"]] == ["prediction", "a/y", "b/y"]
    X = rows(16, 3)
    a, b = parts(tmp_path, X)
    got = run_model(out, {"features": X})
    np.testing.assert_allclose(got["a/y"], a, rtol=1e-7)
    np.testing.assert_allclose(got["b/y"], b, rtol=1e-7)
    np.testing.assert_allclose(got["prediction"], (a + b) / 2, rtol=1e-6)


def test_three_models_mean(cli, tmp_path: Path) -> None:
    linear(tmp_path, "a", [1.0, 2.0, 3.0, 4.0])
    linear(tmp_path, "b", [-1.0, 0.5, 0.0, 2.0])
    linear(tmp_path, "c", [0.1, 0.2, 0.3, 0.4])
    mapping = write_mapping(tmp_path / "map.json", {
        "input": {"columns": ["A", "B", "C"]},
        "models": {"a": {"path": "a.onnx", "columns": ["A", "B"]},
                   "b": {"path": "b.onnx", "columns": ["B", "C"]},
                   "c": {"path": "c.onnx", "columns": ["C", "A"]}},
    })
    out = tmp_path / "merged.onnx"
    assert cli("merge", "--map", mapping, "--out", out).code == 0
    X = rows(20, 3)
    ys = [run_model(tmp_path / f"{n}.onnx", {"x": X[:, c]})["y"] for n, c in (("a", [0, 1]), ("b", [1, 2]), ("c", [2, 0]))]
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], sum(ys) / 3, rtol=1e-5, atol=1e-6)
