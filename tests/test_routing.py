"""Routing: each model gets exactly its columns of the shared input, whichever nodes do it.

A run of consecutive columns is a Slice, any other set is gathered from the transposed input, and
one column for an [N] input is a Gather; the values must be the columns themselves, bit for bit
(NaN and infinities included), at every opset the merge can target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_model, write_mapping
from onnx import TensorProto, helper

WIDTH = 7


def identity(path: Path, width: int | None, opset: int, elem_type: int = TensorProto.FLOAT) -> None:
    """y = x: the merged output shows exactly what the route delivered."""
    shape = ["N"] if width is None else ["N", width]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", elem_type, shape)],
                              [helper.make_tensor_value_info("y", elem_type, shape)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7), path)


def features(n: int) -> np.ndarray:
    x = np.random.default_rng(3).standard_normal((n, WIDTH)).astype(np.float32)
    x[0, :] = [np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.4e38, -1.5][:WIDTH]
    return x


@pytest.mark.parametrize("opset", [9, 17])
@pytest.mark.parametrize(("columns_a", "columns_b", "readers"), [
    ([0, 1, 2], [3, 4, 5, 6], ["Slice", "Slice"]),  # two runs
    ([2], [6, 0, 3], ["Slice", "Transpose"]),  # one column; a scattered set
    ([5, 4, 3], [1, 3, 5], ["Transpose"]),  # descending; strided: both from the one transposed input
])
def test_routes_deliver_exactly_the_columns(cli, tmp_path: Path, opset: int, columns_a: list[int],
                                            columns_b: list[int], readers: list[str]) -> None:
    identity(tmp_path / "a.onnx", len(columns_a), opset)
    identity(tmp_path / "b.onnx", len(columns_b), opset)
    mapping = write_mapping(tmp_path / "map.json", {
        "input": {"columns": [f"c{i}" for i in range(WIDTH)]},
        "models": {"a": {"path": "a.onnx", "columns": columns_a}, "b": {"path": "b.onnx", "columns": columns_b}},
        "combiner": {"kind": "concat"},
    })
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--json")
    assert result.code == 0, result.stderr
    merged = onnx.load(out)
    assert sorted(n.op_type for n in merged.graph.node if n.input and n.input[0] == "features") == readers
    assert {e.domain: e.version for e in merged.opset_import}[""] == opset
    for n in (1, 5, 300):
        x = features(n)
        got = run_model(out, {"features": x})["prediction"]
        want = np.concatenate([x[:, columns_a], x[:, columns_b]], axis=1)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_one_column_for_a_rank_1_input_and_a_cast(cli, tmp_path: Path) -> None:
    # a: x [N] float64 from the float32 input (Gather of one column, then Cast) -> y [N, 1]
    graph = helper.make_graph([helper.make_node("Unsqueeze", ["x", "axes"], ["y"])], "column",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N"])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 1])],
                              initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "a.onnx")
    identity(tmp_path / "b.onnx", 2, 17)
    mapping = write_mapping(tmp_path / "map.json", {
        "input": {"columns": [f"c{i}" for i in range(WIDTH)]},
        "models": {"a": {"path": "a.onnx", "columns": [4]}, "b": {"path": "b.onnx", "columns": [4, 6]}},
        "combiner": {"kind": "concat"},
    })
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--keep-outputs")
    assert result.code == 0, result.stderr
    x = features(9)
    got = run_model(out, {"features": x})
    np.testing.assert_array_equal(got["a/y"], x[:, [4]].astype(np.float64))
    np.testing.assert_array_equal(got["b/y"], x[:, [4, 6]])
