"""How verification runs models: fixed batches in pieces, and what would crash onnxruntime refused first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import rows, run_console, run_model, save_text_model, write_mapping
from onnx import TensorProto, helper, numpy_helper

from merge_cli.errors import ExitCode
from merge_cli.runtime import ROWS_PER_RUN, in_chunks
from merge_cli.unrunnable import MAX_TREE_DEPTH, tree_depth


def chain_tree(depth: int) -> onnx.ModelProto:
    """An ai.onnx.ml 5 TreeEnsemble whose one tree is a chain of `depth` branch nodes: x < i gives leaf i."""
    splits = numpy_helper.from_array(np.arange(depth, dtype=np.float32), "splits")
    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", name="chain",
        tree_roots=[0], nodes_featureids=[0] * depth, nodes_splits=splits,
        nodes_modes=numpy_helper.from_array(np.zeros(depth, dtype=np.uint8), "modes"),
        nodes_truenodeids=list(range(depth)), nodes_trueleafs=[1] * depth,
        nodes_falsenodeids=[*range(1, depth), depth], nodes_falseleafs=[0] * (depth - 1) + [1],
        leaf_targetids=[0] * (depth + 1),
        leaf_weights=numpy_helper.from_array(np.arange(depth + 1, dtype=np.float32), "weights"),
        n_targets=1, aggregate_function=1, post_transform=0)
    graph = helper.make_graph([node], "tree", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21),
                                                                  helper.make_opsetid("ai.onnx.ml", 5)])


def test_tree_depth_counts_branch_levels() -> None:
    assert tree_depth(chain_tree(7).graph.node[0]) == 7


def test_a_tree_deep_enough_to_crash_onnxruntime_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """onnxruntime 1.32 dies with SIGSEGV creating a session on a 12,000-level tree: refused before it does."""
    onnx.save(chain_tree(12_000), tmp_path / "deep.onnx")
    save_text_model(tmp_path / "plain.onnx", """
        <ir_version: 8, opset_import: ["" : 17]>
        plain (float[N, 1] x) => (float[N, 1] y) { y = Identity(x) }
    """)
    line = refused_before_it_runs(tmp_path, "deep", "plain")
    assert "12000 levels deep" in line and f"more than {MAX_TREE_DEPTH}" in line


def refused_before_it_runs(tmp_path: Path, bad: str, good: str) -> str:
    """Merge `bad`.onnx with `good`.onnx: exit 3 naming `bad`, nothing written; --no-verify merges them
    (nothing runs the model then: the merge itself is fine). The error line."""
    mapping = write_mapping(tmp_path / "m.toml", {
        "version": 1, "input": {"columns": ["a", "b"]},
        "models": {bad: {"path": f"{bad}.onnx", "columns": ["a"]}, good: {"path": f"{good}.onnx", "columns": ["b"]}},
        "combiner": {"kind": "mean"}})
    result = run_console("merge", "--map", mapping, "--out", tmp_path / "out.onnx")
    assert result.code == ExitCode.BAD_INPUT, result.stderr
    assert len(result.error_lines) == 1 and f"{bad}.onnx" in result.error_lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "out.onnx").exists()
    unchecked = run_console("merge", "--map", mapping, "--out", tmp_path / "out.onnx", "--no-verify")
    assert unchecked.code == 0, unchecked.stderr
    return result.error_lines[0]


def sum_and_negation(tmp_path: Path, batch: str, kind: str) -> Path:
    """Model `fixed` sums columns a, b (its batch `batch`: "N" or a fixed size), model `free` negates c."""
    save_text_model(tmp_path / "fixed.onnx", f"""
        <ir_version: 8, opset_import: ["" : 17]>
        fixed (float[{batch}, 2] x) => (float[{batch}, 1] y) <int64[1] axes = {{1}}>
        {{ y = ReduceSum <keepdims: int = 1> (x, axes) }}
    """)
    save_text_model(tmp_path / "free.onnx", """
        <ir_version: 8, opset_import: ["" : 17]>
        free (float[N, 1] x) => (float[N, 1] y) { y = Neg(x) }
    """)
    return write_mapping(tmp_path / "m.toml", {
        "version": 1, "input": {"columns": ["a", "b", "c"]},
        "models": {"fixed": {"path": "fixed.onnx", "columns": ["a", "b"]}, "free": {"path": "free.onnx", "columns": ["c"]}},
        "combiner": {"kind": kind}})


def test_a_fixed_batch_is_run_in_pieces_and_every_row_compared(tmp_path: Path, cli) -> None:
    """A part that fixes its batch at 4 is run on 10 rows as 4 + 4 + 2 (padded, then cut): 10 rows compared."""
    mapping = sum_and_negation(tmp_path, "4", "sum")
    out = tmp_path / "out.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--rows", "10", "--json")
    assert result.code == 0, result.stderr
    assert result.json["verification"]["rows"] == 10 and result.json["verification"]["passed"]
    x = rows(4, 3)
    got = run_model(out, {"features": x})["prediction"]
    np.testing.assert_allclose(got.ravel(), x[:, 0] + x[:, 1] - x[:, 2], rtol=1e-6)


def test_many_rows_of_a_free_batch_are_run_in_bounded_pieces_and_joined() -> None:
    """--rows up to 1M: each onnxruntime run sees at most ROWS_PER_RUN rows (its activations stay bounded),
    the last piece is not padded, and per-row outputs come back joined in order."""
    x = rows(2 * ROWS_PER_RUN + 5, 2)
    seen: list[int] = []

    def run(piece: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(len(piece))
        return {"y": piece.sum(axis=1, keepdims=True), "count": np.array(len(piece))}

    got = in_chunks(run, x, None)
    assert seen == [ROWS_PER_RUN, ROWS_PER_RUN, 5]
    np.testing.assert_array_equal(got["y"], x.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(got["count"], [ROWS_PER_RUN, ROWS_PER_RUN, 5])  # not one per row: one per piece
    assert in_chunks(run, x[:7], None)["y"].shape == (7, 1) and seen[-1] == 7  # few rows: one run


def test_more_rows_than_one_run_takes_are_all_verified(tmp_path: Path, cli) -> None:
    mapping = sum_and_negation(tmp_path, "N", "mean")
    result = cli("merge", "--map", mapping, "--out", tmp_path / "out.onnx", "--rows", str(2 * ROWS_PER_RUN + 3), "--json")
    assert result.code == 0, result.stderr
    assert result.json["verification"]["rows"] == 2 * ROWS_PER_RUN + 3 and result.json["verification"]["passed"]


def test_the_scores_read_verifications_runs_each_model_runs_once(tmp_path: Path, cli, monkeypatch) -> None:
    """--data rows are verified and scored: each part's session and the merged one open once, not twice."""
    from merge_cli import runtime

    for name, op in (("a", "Neg"), ("b", "Abs")):
        save_text_model(tmp_path / f"{name}.onnx", f"""
            <ir_version: 8, opset_import: ["" : 17]>
            {name} (float[N, 1] x) => (float[N, 1] y) {{ y = {op}(x) }}
        """)
    mapping = write_mapping(tmp_path / "m.toml", {
        "version": 1, "input": {"columns": ["a", "b"]},
        "models": {"a": {"path": "a.onnx", "columns": ["a"]}, "b": {"path": "b.onnx", "columns": ["b"]}},
        "combiner": {"kind": "mean"}})
    x = rows(40, 2)
    y = (-x[:, 0] + np.abs(x[:, 1])) / 2 + 0.5
    data = tmp_path / "rows.csv"
    data.write_text("a,b,y\n" + "".join(f"{p},{q},{t}\n" for (p, q), t in zip(x.tolist(), y.tolist(), strict=True)))
    opened: list[str] = []
    for name in ("part_session", "merged_session"):
        real = getattr(runtime, name)
        monkeypatch.setattr(runtime, name, lambda what, real=real, name=name: opened.append(name) or real(what))

    result = cli("merge", "--map", mapping, "--out", tmp_path / "out.onnx", "--data", data, "--json")
    assert result.code == 0, result.stderr
    assert sorted(opened) == ["merged_session", "part_session", "part_session"]
    scores = {m["model"]: m for m in result.json["scores"]["models"]}
    assert scores["merged"]["rmse"] == pytest.approx(0.5, rel=1e-5)
    assert scores["a"]["rmse"] == pytest.approx(float(np.sqrt(np.mean((-x[:, 0] - y) ** 2))), rel=1e-5)


def test_a_tree_as_deep_as_allowed_is_verified(tmp_path: Path) -> None:
    """The parts run on a thread of their own while the merged file is written: its stack holds the
    deepest tree the limit lets through, as the main thread's does."""
    onnx.save(chain_tree(MAX_TREE_DEPTH), tmp_path / "deep.onnx")
    save_text_model(tmp_path / "plain.onnx", """
        <ir_version: 8, opset_import: ["" : 17]>
        plain (float[N, 1] x) => (float[N, 1] y) { y = Identity(x) }
    """)
    mapping = write_mapping(tmp_path / "m.toml", {
        "version": 1, "input": {"columns": ["a", "b"]},
        "models": {"deep": {"path": "deep.onnx", "columns": ["a"]}, "plain": {"path": "plain.onnx", "columns": ["b"]}},
        "combiner": {"kind": "mean"}})

    result = run_console("merge", "--map", mapping, "--out", tmp_path / "out.onnx")
    assert result.code == 0, result.stderr
    x = np.array([[0.5, 7.0], [MAX_TREE_DEPTH - 0.5, -1.0]], dtype=np.float32)
    got = run_model(tmp_path / "out.onnx", {"features": x})
    np.testing.assert_allclose(got["prediction"].ravel(), [(1 + 7.0) / 2, (MAX_TREE_DEPTH - 1.0) / 2])


def loop_model(trips: int, cond_out: str) -> str:
    """x + the number of iterations run: a Loop of `trips` iterations whose body hands back `cond_out` as its condition."""
    return f"""
        <ir_version: 8, opset_import: ["" : 17]>
        looped (float[N, 1] x) => (float[N, 1] y)
          <int64 trips = {{{trips}}}, bool go = {{1}}, float one = {{1.0}}> {{
          total = Loop (trips, go, x)
            <body = step (int64 i, bool cond_in, float[N, 1] acc) => (bool cond_out, float[N, 1] next) {{
            cond_out = {cond_out}
            next = Add(acc, one)
          }}>
          y = Identity(total)
        }}
    """


@pytest.mark.parametrize("cond_out", ["Identity(cond_in)", "Constant <value = bool {1}> ()"])
def test_a_loop_that_never_stops_is_refused_before_it_runs(tmp_path: Path, cond_out: str) -> None:
    """A Loop of 10^15 iterations whose condition never turns false would hang verification: exit 3, at once."""
    save_text_model(tmp_path / "endless.onnx", loop_model(10**15, cond_out))
    save_text_model(tmp_path / "short.onnx", loop_model(3, cond_out))
    assert "runs 1000000000000000 times" in refused_before_it_runs(tmp_path, "endless", "short")

    mapping = write_mapping(tmp_path / "m2.toml", {
        "version": 1, "input": {"columns": ["a", "b"]},
        "models": {"one": {"path": "short.onnx", "columns": ["a"]}, "two": {"path": "short.onnx", "columns": ["b"]}},
        "combiner": {"kind": "sum"}})
    assert run_console("merge", "--map", mapping, "--out", tmp_path / "short_sum.onnx").code == 0
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(run_model(tmp_path / "short_sum.onnx", {"features": x})["prediction"], [[1 + 3 + 2 + 3]])
