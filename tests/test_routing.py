"""Routing: each model gets exactly its columns of the shared input, whichever nodes do it.

A run of consecutive columns is a Slice (many runs of one table: one Split), any other set is
gathered from the transposed input, and one column for an [N] input is a Gather; the values must be
the columns themselves, bit for bit (NaN and infinities included), at every opset the merge can target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_model, write_mapping
from onnx import TensorProto, helper

from merge_cli.split_routes import MANY_ROUTES, Segment, layers, worth_a_split

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


# ---------------------------------------------------------------------------- many routes: one Split


def one_column_inputs(path: Path, k: int, opset: int, elem_type: int = TensorProto.FLOAT, rank: int = 2) -> None:
    """k inputs x0..x{k-1}, each [N, 1] (or [N]), as some converters and hand-built models have them; y = their
    Concat (as float32, so that every part can share one combiner)."""
    if rank == 2:
        nodes = [helper.make_node("Concat", [f"x{i}" for i in range(k)], ["all"], axis=1)]
    else:  # [k * N] -> [k, N] -> [N, k]
        nodes = [helper.make_node("Concat", [f"x{i}" for i in range(k)], ["stacked"], axis=0),
                 helper.make_node("Reshape", ["stacked", "k_by_n"], ["rows"]),
                 helper.make_node("Transpose", ["rows"], ["all"], perm=[1, 0])]
    if elem_type == TensorProto.STRING:  # y = (x == "b"): the strings themselves reach the output as 0/1
        nodes += [helper.make_node("Equal", ["all", "b"], ["is_b"]),
                  helper.make_node("Cast", ["is_b"], ["y"], to=TensorProto.FLOAT)]
    else:
        nodes.append(helper.make_node("Cast", ["all"], ["y"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "columns", [helper.make_tensor_value_info(f"x{i}", elem_type, ["N", 1][:rank])
                                                 for i in range(k)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", k])],
                              initializer=[helper.make_tensor("b", TensorProto.STRING, [], [b"b"]),
                                           helper.make_tensor("k_by_n", TensorProto.INT64, [2], [k, -1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7), path)


@pytest.mark.parametrize("opset", [11, 13, 18])  # the sizes an attribute, an input; Split-18's num_outputs
def test_many_one_column_routes_are_one_split_per_layer(cli, tmp_path: Path, opset: int) -> None:
    k = MANY_ROUTES + 8
    width = k + 4  # 4 columns nobody reads, between and after the read ones
    unread = {3, 17, width - 2, width - 1}
    read = [c for c in range(width) if c not in unread]
    shuffled = [read[(7 * i) % k] for i in range(k)]  # x_i takes a column far from c_i
    for name, elem_type in [("a", TensorProto.FLOAT), ("b", TensorProto.FLOAT), ("c", TensorProto.DOUBLE)]:
        one_column_inputs(tmp_path / f"{name}.onnx", k, opset, elem_type)
    one_column_inputs(tmp_path / "d.onnx", k, opset, rank=1)
    mapping = write_mapping(tmp_path / "map.json", {
        "input": {"columns": [f"c{i}" for i in range(width)]},
        "models": {
            "a": {"path": "a.onnx", "inputs": {f"x{i}": [shuffled[i]] for i in range(k)}},
            "b": {"path": "b.onnx", "inputs": {f"x{i}": [read[i]] for i in range(k)}},  # the same columns again
            "c": {"path": "c.onnx", "inputs": {f"x{i}": [read[i]] for i in range(k)}},  # as float64
            "d": {"path": "d.onnx", "inputs": {f"x{i}": [shuffled[i]] for i in range(k)}},  # [N] inputs
        },
        "combiner": {"kind": "concat"},
    })
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--json")
    assert result.code == 0, result.stderr
    graph = onnx.load(out).graph
    readers = sorted(n.op_type for n in graph.node if "features" in n.input)
    # a and b overlap: two layers; c's float64 columns are cast once; d's [N] inputs: one flattened Transpose
    assert readers == ["Cast", "Split", "Split", "Transpose"]
    cast = next(n.output[0] for n in graph.node if n.op_type == "Cast" and "features" in n.input)
    assert [n.op_type for n in graph.node if cast in n.input] == ["Split"]
    assert sum(n.op_type == "Split" for n in graph.node) == 4
    assert not [n for n in graph.node if n.op_type in ("Slice", "Gather")]
    for n in (1, 5, 300):
        x = np.random.default_rng(n).standard_normal((n, width)).astype(np.float32)
        x[0, :4] = [np.nan, np.inf, -np.inf, -0.0]
        got = run_model(out, {"features": x})["prediction"]
        want = np.concatenate([x[:, shuffled], x[:, read], x[:, read], x[:, shuffled]], axis=1)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_many_small_routes_and_string_columns_split_too(cli, tmp_path: Path) -> None:
    k = MANY_ROUTES
    one_column_inputs(tmp_path / "s.onnx", k, 19, TensorProto.STRING)  # Equal takes strings from opset 19
    one_column_inputs(tmp_path / "r.onnx", k, 19, TensorProto.STRING, rank=1)
    pairs = [f"x{i}" for i in range(k)]  # p: k inputs of two consecutive columns each
    graph = helper.make_graph([helper.make_node("Concat", pairs, ["y"], axis=1)], "pairs",
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 2]) for x in pairs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2 * k])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=7), tmp_path / "p.onnx")
    mapping = write_mapping(tmp_path / "map.json", {
        "inputs": {"numbers": {"columns": [f"n{i}" for i in range(2 * k)]},
                   "labels": {"columns": [f"s{i}" for i in range(k)], "dtype": "string"}},
        "models": {"p": {"path": "p.onnx", "inputs": {x: [f"n{2 * i}", f"n{2 * i + 1}"] for i, x in enumerate(pairs)}},
                   "s": {"path": "s.onnx", "inputs": {f"x{i}": [f"s{k - 1 - i}"] for i in range(k)}},
                   "r": {"path": "r.onnx", "inputs": {f"x{i}": [f"s{i}"] for i in range(k)}}},
        "combiner": {"kind": "concat"},
    })
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out)
    assert result.code == 0, result.stderr
    graph = onnx.load(out).graph
    assert sorted((n.op_type, n.input[0]) for n in graph.node if {"numbers", "labels"} & set(n.input)) == [
        ("Split", "labels"), ("Split", "numbers"), ("Transpose", "labels")]
    numbers = np.random.default_rng(0).standard_normal((9, 2 * k)).astype(np.float32)
    labels = np.random.default_rng(1).choice(np.array(["a", "b", "", "b\x00"], dtype=object), (9, k))
    got = run_model(out, {"numbers": numbers, "labels": labels})["prediction"]
    want = np.concatenate([numbers, labels[:, ::-1] == "b", labels == "b"], axis=1).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_layers_are_as_few_as_the_routes_overlap_and_a_split_needs_many_routes_reading_half() -> None:
    a, b, c, d = Segment(0, 2, "a"), Segment(1, 3, "b"), Segment(2, 4, "c"), Segment(0, 1, "d")
    assert layers([a, b, c, d]) == [[d, b], [a, c]]  # column 1 is read twice: two layers
    many = [Segment(i, i + 1, f"x{i}") for i in range(MANY_ROUTES)]
    assert worth_a_split(many, 2 * MANY_ROUTES)
    assert not worth_a_split(many, 2 * MANY_ROUTES + 1)  # a Split would copy more unread columns than read
    assert not worth_a_split(many[1:], MANY_ROUTES)  # a Slice each is as fast for a few


def test_a_whole_table_in_order_is_an_identity(cli, tmp_path: Path) -> None:
    """onnxruntime opens 16,000 one-column Slices in 8.5 s, as many Identities in 0.4 s (a mapping of
    one-column [inputs.*] tables, one per model input)."""
    identity(tmp_path / "a.onnx", 3, 17)
    identity(tmp_path / "b.onnx", 2, 17)
    mapping = write_mapping(tmp_path / "map.json", {
        "inputs": {"left": {"columns": ["l0", "l1", "l2"]}, "right": {"columns": ["r0", "r1", "r2"]}},
        "models": {"a": {"path": "a.onnx", "columns": ["l0", "l1", "l2"]},  # all of left, in order
                   "b": {"path": "b.onnx", "columns": ["r0", "r1"]}},  # a run of right: a Slice
        "combiner": {"kind": "concat"},
    })
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out)
    assert result.code == 0, result.stderr
    graph = onnx.load(out).graph
    assert sorted((n.op_type, n.input[0]) for n in graph.node if {"left", "right"} & set(n.input)) == [
        ("Identity", "left"), ("Slice", "right")]
    left, right = features(6)[:, :3], features(6)[:, 4:]
    got = run_model(out, {"left": left, "right": right})["prediction"]
    np.testing.assert_array_equal(got.view(np.uint32), np.concatenate([left, right[:, :2]], axis=1).view(np.uint32))
