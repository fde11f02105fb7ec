"""The splice on hand-built models: prefixes everywhere, routing, opset conversion, structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import IF_OUTER_SCOPE, REDUCESUM_11, REGRESSOR_13, REGRESSOR_17, rows, run_model, save_text_model, write_mapping

LOCAL_FUNCTION = """
<ir_version: 8, opset_import: ["" : {opset}, "local" : 1]>
g (float[N,2] x) => (float[N,2] y)
{{
  y = local.f(x)
}}
<domain: "local", opset_import: ["" : {opset}]>
f (a) => (c) {{
  c = {body}
}}
"""

DOUBLE_INPUT = """
<ir_version: 8, opset_import: ["" : 17]>
g (double[N,2] x) => (double[N,1] y) <double[2,1] w = {1.5, -2.0}>
{
  y = MatMul(x, w)
}
"""


def merge_two(cli, tmp_path: Path, text_a: str, text_b: str, cols_a: list, cols_b: list, *extra: str,
              width: int = 4) -> Path:
    save_text_model(tmp_path / "a.onnx", text_a)
    save_text_model(tmp_path / "b.onnx", text_b)
    columns = [f"c{i}" for i in range(width)]
    mapping = write_mapping(tmp_path / "map.toml", {
        "input": {"columns": columns},
        "models": {"a": {"path": "a.onnx", "columns": cols_a}, "b": {"path": "b.onnx", "columns": cols_b}},
    })
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, *extra)
    assert result.code == 0, result.stderr
    return out


def parts_mean(tmp_path: Path, X: np.ndarray, cols_a: list[int], cols_b: list[int]) -> np.ndarray:
    a = run_model(tmp_path / "a.onnx", {"x": X[:, cols_a].astype(_input_dtype(tmp_path / "a.onnx"))})
    b = run_model(tmp_path / "b.onnx", {"x": X[:, cols_b].astype(_input_dtype(tmp_path / "b.onnx"))})
    ya, yb = next(iter(a.values())), next(iter(b.values()))
    dtype = np.float64 if np.float64 in (ya.dtype, yb.dtype) else np.float32
    return (ya.astype(dtype) + yb.astype(dtype)) / dtype(2)


def _input_dtype(path: Path) -> type:
    elem = onnx.load(path).graph.input[0].type.tensor_type.elem_type
    return np.float64 if elem == onnx.TensorProto.DOUBLE else np.float32


def test_identical_names_everywhere_are_prefixed(cli, tmp_path: Path) -> None:
    # both models use the very same tensor, node and initializer names
    out = merge_two(cli, tmp_path, REGRESSOR_17, REGRESSOR_17.replace("2.0, 3.0", "-4.0, 0.5"), [0, 1], [2, 3])
    merged = onnx.load(out)
    inits = {t.name for t in merged.graph.initializer}
    assert {"a/w", "a/b", "b/w", "b/b"} <= inits
    part_nodes = [n for n in merged.graph.node if n.name.startswith(("a/", "b/"))]
    assert len(part_nodes) == 4
    for node in part_nodes:
        prefix = node.name.split("/")[0] + "/"
        assert all(name.startswith(prefix) for name in (*node.input, *node.output))
    names = [n.name for n in merged.graph.node]
    assert len(names) == len(set(names)) and all(names)
    X = rows(64, 4)
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], parts_mean(tmp_path, X, [0, 1], [2, 3]),
                               rtol=1e-6)


def test_structure_one_input_one_opset_per_domain_checker_passes(cli, tmp_path: Path) -> None:
    out = merge_two(cli, tmp_path, REGRESSOR_13, REGRESSOR_17, [0, 1], [1, 3])
    merged = onnx.load(out)
    assert [i.name for i in merged.graph.input] == ["features"]
    dims = merged.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 4
    domains = [e.domain for e in merged.opset_import]
    assert len(domains) == len(set(domains))
    assert {e.domain: e.version for e in merged.opset_import}[""] == 17
    onnx.checker.check_model(merged, full_check=True)
    # columns [0, 1] are a run: one Slice; [1, 3] are gathered as rows of the transposed input
    readers = [n.op_type for n in merged.graph.node if n.input and n.input[0] == "features"]
    assert sorted(readers) == ["Slice", "Transpose"]


def test_opset_13_and_17_convert_to_the_highest(cli, tmp_path: Path) -> None:
    out = merge_two(cli, tmp_path, REGRESSOR_13, REGRESSOR_17, [0, 1], [2, 3], "--json")
    X = rows(100, 4)
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], parts_mean(tmp_path, X, [0, 1], [2, 3]),
                               rtol=1e-6)


def test_opset_11_reducesum_axes_attribute_is_converted(cli, tmp_path: Path) -> None:
    out = merge_two(cli, tmp_path, REDUCESUM_11, REGRESSOR_17, [3, 0, 2], [1, 2])
    merged = onnx.load(out)
    reduce = next(n for n in merged.graph.node if n.op_type == "ReduceSum")
    assert not any(a.name == "axes" for a in reduce.attribute)  # opset 13+: axes is an input
    assert len(reduce.input) == 2
    X = rows(100, 4)
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"],
                               parts_mean(tmp_path, X, [3, 0, 2], [1, 2]), rtol=1e-6)


def test_if_branches_using_outer_initializers(cli, tmp_path: Path) -> None:
    out = merge_two(cli, tmp_path, IF_OUTER_SCOPE, IF_OUTER_SCOPE.replace("2.0, 3.0", "7.0, -1.0"), [0, 1], [2, 3])
    merged = onnx.load(out)
    branch_inputs = {x for n in merged.graph.node if n.op_type == "If"
                     for a in n.attribute for sub in a.g.node for x in sub.input}
    assert branch_inputs == {"a/x", "a/w", "a/v", "b/x", "b/w", "b/v"}
    X = rows(200, 4)  # both branches are taken
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], parts_mean(tmp_path, X, [0, 1], [2, 3]),
                               rtol=1e-6)


def test_onnx_compose_add_prefix_misses_outer_scope_initializers() -> None:
    """Why we prefix ourselves: onnx.compose.add_prefix (onnx 1.23) breaks the If model above."""
    model = onnx.parser.parse_model(IF_OUTER_SCOPE)
    prefixed = onnx.compose.add_prefix(model, "a/")
    with pytest.raises(Exception, match="topologically sorted|not output of any previous nodes"):
        ort.InferenceSession(prefixed.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("opsets", [(17, 17), (15, 17)], ids=["kept", "inlined-for-conversion"])
def test_same_named_local_functions_with_different_bodies(cli, tmp_path: Path, opsets: tuple[int, int]) -> None:
    text_a = LOCAL_FUNCTION.format(opset=opsets[0], body="Neg(a)")
    text_b = LOCAL_FUNCTION.format(opset=opsets[1], body="Abs(a)")
    save_text_model(tmp_path / "a.onnx", text_a)
    save_text_model(tmp_path / "b.onnx", text_b)
    mapping = write_mapping(tmp_path / "map.json", {
        "input": {"columns": ["p", "q", "r"]},
        "models": {"a": {"path": "a.onnx", "columns": ["p", "q"]}, "b": {"path": "b.onnx", "columns": ["q", "r"]}},
        "combiner": {"kind": "sum"},
    })
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out)
    assert result.code == 0, result.stderr
    merged = onnx.load(out)
    names = [f.name for f in merged.functions]
    assert len(names) == len(set(names))
    if opsets == (17, 17):
        assert sorted(names) == ["a/f", "b/f"]
    X = rows(50, 3)
    expected = -X[:, [0, 1]] + np.abs(X[:, [1, 2]])
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], expected, rtol=1e-6)


def test_float64_input_model_gets_a_cast_and_float64_output(cli, tmp_path: Path) -> None:
    out = merge_two(cli, tmp_path, REGRESSOR_17, DOUBLE_INPUT, [0, 1], [2, 3])
    merged = onnx.load(out)
    casts = [n for n in merged.graph.node if n.op_type == "Cast"]
    assert any(n.output[0] == "b/x" for n in casts)
    assert merged.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    X = rows(100, 4)
    got = run_model(out, {"features": X})["prediction"]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, parts_mean(tmp_path, X, [0, 1], [2, 3]), rtol=1e-6)


def test_float64_merged_input(cli, tmp_path: Path) -> None:
    save_text_model(tmp_path / "a.onnx", REGRESSOR_17)
    save_text_model(tmp_path / "b.onnx", DOUBLE_INPUT)
    mapping = write_mapping(tmp_path / "map.toml", {
        "input": {"columns": ["A", "B", "C"], "dtype": "float64"},
        "models": {"a": {"path": "a.onnx", "columns": ["A", "B"]}, "b": {"path": "b.onnx", "columns": ["C", "A"]}},
    })
    out = tmp_path / "merged.onnx"
    assert cli("merge", "--map", mapping, "--out", out).code == 0
    X = rows(40, 3, dtype=np.float64)
    got = run_model(out, {"features": X})["prediction"]
    a = run_model(tmp_path / "a.onnx", {"x": X[:, [0, 1]].astype(np.float32)})["y"].astype(np.float64)
    b = run_model(tmp_path / "b.onnx", {"x": X[:, [2, 0]]})["y"]
    np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-6)


def test_model_with_several_inputs_and_overlapping_reordered_columns(cli, tmp_path: Path) -> None:
    save_text_model(tmp_path / "a.onnx", """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,1] p, float[N,2] q) => (float[N,1] y) <float[2,1] w = {1.0, 10.0}>
{
  t = MatMul(q, w)
  y = Sub(t, p)
}
""")
    save_text_model(tmp_path / "b.onnx", REGRESSOR_17)
    mapping = write_mapping(tmp_path / "map.toml", {
        "input": {"columns": ["A", "B", "C"]},
        "models": {"a": {"path": "a.onnx", "inputs": {"q": ["C", "A"], "p": [1]}},
                   "b": {"path": "b.onnx", "columns": ["B", "A"]}},
        "combiner": {"kind": "concat"},
    })
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out)
    assert result.code == 0, result.stderr
    X = rows(30, 3)
    ya = X[:, [2]] * 1.0 + X[:, [0]] * 10.0 - X[:, [1]]
    yb = run_model(tmp_path / "b.onnx", {"x": X[:, [1, 0]]})["y"]
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], np.concatenate([ya, yb], axis=1),
                               rtol=1e-5, atol=1e-6)


def test_opset_option_targets_a_given_opset(cli, tmp_path: Path) -> None:
    out = merge_two(cli, tmp_path, REGRESSOR_13, REGRESSOR_17, [0, 1], [2, 3], "--opset", "19")
    assert {e.domain: e.version for e in onnx.load(out).opset_import}[""] == 19


def test_positional_models_override_mapping_paths(cli, tmp_path: Path) -> None:
    save_text_model(tmp_path / "one.onnx", REGRESSOR_13)
    save_text_model(tmp_path / "two.onnx", REGRESSOR_17)
    mapping = write_mapping(tmp_path / "map.toml", {
        "input": {"columns": ["A", "B"]},
        "models": {"a": {"path": "missing.onnx", "columns": ["A", "B"]}, "b": {"columns": ["B", "A"]}},
    })
    out = tmp_path / "merged.onnx"
    result = cli("merge", tmp_path / "one.onnx", tmp_path / "two.onnx", "--map", mapping, "--out", out, "--json")
    assert result.code == 0, result.stderr
    assert [Path(m["path"]).name for m in result.json["models"]] == ["one.onnx", "two.onnx"]


def test_loop_body_and_sparse_initializer_are_prefixed(cli, tmp_path: Path) -> None:
    """A Loop body reading an outer initializer, and a sparse initializer, in both (same-named) models."""
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,2] x) => (float[N,2] y) <int64 n = {3}, float[2] step = {0.5, -0.25}, float[2] dense = {0.0, 1.5}>
{
  cond = Constant<value = bool {1}>()
  y = Loop(n, cond, x) <body = body (int64 i, bool c_in, float[N,2] acc) => (bool c_out, float[N,2] next) {
      c_out = Identity(c_in)
      scaled = Mul(acc, dense)
      next = Add(scaled, step)
  }>
}
""")
    # (an unused sparse initializer: onnx shape inference has no sparse inputs for ordinary ops)
    values = onnx.numpy_helper.from_array(np.array([1.5], dtype=np.float32), "sparse")
    indices = onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "sparse_indices")
    model.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, [2]))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "a.onnx")
    onnx.save(model, tmp_path / "b.onnx")
    mapping = write_mapping(tmp_path / "map.toml", {
        "input": {"columns": ["A", "B", "C"]},
        "models": {"a": {"path": "a.onnx", "columns": ["A", "B"]}, "b": {"path": "b.onnx", "columns": ["C", "A"]}},
        "combiner": {"kind": "concat"},
    })
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out)
    assert result.code == 0, result.stderr
    merged = onnx.load(out)
    assert sorted(s.values.name for s in merged.graph.sparse_initializer) == ["a/sparse", "b/sparse"]
    loops = [n for n in merged.graph.node if n.op_type == "Loop"]
    used = sorted(x for n in loops for a in n.attribute for sub in a.g.node for x in sub.input)
    assert "a/dense" in used and "b/step" in used and "dense" not in used
    X = rows(20, 3)

    def expected(part: np.ndarray) -> np.ndarray:
        for _ in range(3):
            part = part * np.array([0.0, 1.5], dtype=np.float32) + np.array([0.5, -0.25], dtype=np.float32)
        return part

    want = np.concatenate([expected(X[:, [0, 1]]), expected(X[:, [2, 0]])], axis=1)
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], want, rtol=1e-5)


def test_ir_version_is_the_highest_of_the_parts_capped_by_onnxruntime(cli, tmp_path: Path, monkeypatch) -> None:
    import merge_cli.runtime as runtime

    out = merge_two(cli, tmp_path, REGRESSOR_13, REGRESSOR_17, [0, 1], [2, 3])
    assert onnx.load(out).ir_version == 8  # the parts have 7 and 8
    monkeypatch.setattr(runtime, "runtime_ir_cap", lambda wanted=None: 7)
    capped = tmp_path / "capped.onnx"
    assert cli("merge", "--map", tmp_path / "map.toml", "--out", capped).code == 0
    assert onnx.load(capped).ir_version == 7
