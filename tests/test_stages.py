"""Each stage on its own, on small models written in ONNX text: read, convert, align, prefix, splice, combine.

These call the stage functions directly (no CLI, no files written but the inputs); the numbers are
checked with onnxruntime against numpy. The CLI tests drive the same stages end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REDUCESUM_11, REGRESSOR_13, rows, save_text_model

from merge_cli.combiners import build_combiner, reference
from merge_cli.combining import Head, Prepared
from merge_cli.convert import Target, common_target, convert_part
from merge_cli.heads import align_heads
from merge_cli.mapping import parse_mapping
from merge_cli.model_io import load_model
from merge_cli.parts import Part, read_part
from merge_cli.request import MergeRequest, weights_of
from merge_cli.splice import merged_model, prefixed, splice

# A "classifier" that gives only the positive class's probability, [N, 1], with its labels in the mapping.
POSITIVE_13 = """
<ir_version: 7, opset_import: ["" : 13]>
g (float[N,2] x) => (float[N,1] p) <float[2,1] w = {1.0, -2.0}>
{
  t = MatMul(x, w)
  p = Sigmoid(t)
}
"""

# A two-class classifier with its probabilities [N, 2] in the other class order (1, 0).
SOFTMAX_13 = """
<ir_version: 7, opset_import: ["" : 13]>
g (float[N,2] x) => (float[N,2] probabilities) <float[2,2] w = {1.0, -1.0, 0.5, 2.0}>
{
  t = MatMul(x, w)
  probabilities = Softmax<axis=1>(t)
}
"""


def mapping_of(tmp_path: Path, models: dict[str, tuple[str, list[str]]], columns: list[str],
               combiner: str = "mean", **model_keys: dict[str, object]) -> object:
    """A FeatureMapping for text models written to tmp_path (name -> (ONNX text, columns))."""
    doc_models = {}
    for name, (text, cols) in models.items():
        save_text_model(tmp_path / f"{name}.onnx", text)
        doc_models[name] = {"path": f"{name}.onnx", "columns": cols, **model_keys.get(name, {})}
    return parse_mapping({"version": 1, "input": {"columns": columns}, "models": doc_models,
                          "combiner": {"kind": combiner}}, tmp_path / "map.toml")


def read_all(mapping: object) -> list[Part]:
    return [read_part(m, load_model(m.path)) for m in mapping.models]  # type: ignore[attr-defined]


def test_read_part_leaves_the_loaded_model_as_read(tmp_path: Path) -> None:
    mapping = mapping_of(tmp_path, {"sq": (REDUCESUM_11, ["a", "b", "c"])}, ["a", "b", "c"])
    spec = mapping.models[0]  # type: ignore[attr-defined]
    loaded = load_model(spec.path)
    before = loaded.proto.SerializeToString()
    part = read_part(spec, loaded)
    assert loaded.proto.SerializeToString() == before and part.model is not loaded.proto
    assert part.task == "regression" and part.head.name == "y" and part.head.shape == ("N", 1)
    assert [i.name for i in part.inputs] == ["x"] and part.opset_from == 11
    with pytest.raises(AttributeError):
        part.head = part.inputs[0]  # type: ignore[misc]  # frozen: stages return new parts


def test_convert_part_returns_a_new_part_at_the_target(tmp_path: Path) -> None:
    (part,) = read_all(mapping_of(tmp_path, {"sq": (REDUCESUM_11, ["a", "b", "c"])}, ["a", "b", "c"]))
    target = common_target([part], 13)
    assert target == Target(opsets={"": 13}, ir_version=7)
    converted = convert_part(part, target)
    assert [(e.domain, e.version) for e in converted.model.opset_import] == [("", 13)]
    assert [(e.domain, e.version) for e in part.model.opset_import] == [("", 11)]  # the input part is unchanged
    reduce = next(n for n in converted.model.graph.node if n.op_type == "ReduceSum")
    assert len(reduce.input) == 2  # opset 13 takes the axes as an input
    x = rows(5, 3)
    got = run(converted.model, {"x": x})["y"]
    np.testing.assert_allclose(got, (x * x).sum(axis=1, keepdims=True), rtol=1e-6)


def test_align_heads_makes_a_positive_class_output_two_columns_in_the_common_order(tmp_path: Path) -> None:
    mapping = mapping_of(tmp_path, {"soft": (SOFTMAX_13, ["a", "b"]), "pos": (POSITIVE_13, ["a", "b"])}, ["a", "b"],
                         soft={"classes": [1, 0]}, pos={"classes": [0, 1]})
    soft, pos = read_all(mapping)
    aligned_pos = align_heads([soft, pos], "mean", 13, tmp_path)[1]
    assert pos.adapter is None and aligned_pos.adapter is not None and aligned_pos.adapter.binary
    assert aligned_pos.head.shape == ("N", 2) and aligned_pos.classes == (1, 0)  # the first classifier's order
    model = with_output(aligned_pos.model, aligned_pos.head.name)
    x = rows(6, 2)
    p = 1 / (1 + np.exp(-(x @ np.array([1.0, -2.0]))))
    np.testing.assert_allclose(run(model, {"x": x})[aligned_pos.head.name], np.stack([p, 1 - p], axis=1), rtol=1e-5)


def test_prefixed_renames_every_tensor_and_leaves_the_input_part_alone(tmp_path: Path) -> None:
    (part,) = read_all(mapping_of(tmp_path, {"lin": (REGRESSOR_13, ["a", "b"])}, ["a", "b"]))
    out = prefixed(part)
    names = {t.name for t in out.model.graph.initializer} | {n for node in out.model.graph.node for n in node.output}
    assert names == {"lin/w", "lin/b", "lin/t", "lin/y"}
    assert {t.name for t in part.model.graph.initializer} == {"w", "b"}


def test_splice_routes_columns_and_the_mean_combiner_matches_its_reference(tmp_path: Path) -> None:
    mapping = mapping_of(tmp_path, {"lin": (REGRESSOR_13, ["c", "a"]), "sq": (REDUCESUM_11, ["b", "c", "a"])}, ["a", "b", "c"])
    parts = read_all(mapping)
    target = common_target(parts, None)
    parts = [prefixed(convert_part(p, target)) for p in parts]
    spliced = splice(parts, mapping)  # type: ignore[arg-type]
    assert [n.op_type for n in spliced.nodes][:2] == ["Transpose", "Gather"]  # columns (2, 0) are not a run
    model, heads = merged_model(parts, mapping, target, False, Prepared())  # type: ignore[arg-type]
    onnx.checker.check_model(model, full_check=True)
    x = rows(7, 3)
    lin = x[:, [2, 0]] @ np.array([[0.5], [-1.0]]) + 0.25
    sq = (x[:, [1, 2, 0]] ** 2).sum(axis=1, keepdims=True)
    got = run(model, {"features": x})["prediction"]
    np.testing.assert_allclose(got, (lin + sq) / 2, rtol=1e-5)
    want = reference(mapping.combiner, heads, [lin.astype(np.float32), sq.astype(np.float32)], x)  # type: ignore[attr-defined]
    np.testing.assert_allclose(got, want["prediction"], rtol=1e-6)


@pytest.mark.parametrize("kind", ["mean", "max", "vote", "concat"])
def test_each_combiner_graph_equals_its_numpy_reference(kind: str) -> None:
    """The combiner alone: two heads of [N, 3] probabilities fed as graph inputs."""
    from onnx import helper

    heads = [Head(m, m, 1, (None, 3), None, "classification", (0, 1, 2), (0,)) for m in ("a", "b")]
    mapping = parse_mapping({"version": 1, "input": {"columns": ["x"]},
                             "models": {"a": {"path": "a.onnx", "columns": ["x"]}, "b": {"path": "b.onnx", "columns": ["x"]}},
                             "combiner": {"kind": kind}}, Path("map.toml"))
    taken = {"a", "b", "features"}

    def fresh(base: str) -> str:
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    graph = build_combiner(mapping, heads, fresh, 17)
    inputs = [helper.make_tensor_value_info(m, onnx.TensorProto.FLOAT, ["N", 3]) for m in ("a", "b")]
    model = helper.make_model(helper.make_graph(graph.nodes, "combiner", inputs, graph.outputs, graph.initializers),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(3)
    a, b = (rng.dirichlet(np.ones(3), size=9).astype(np.float32) for _ in range(2))
    got = run(model, {"a": a, "b": b})
    want = reference(mapping.combiner, heads, [a, b], np.zeros((9, 1), np.float32))
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-6)


def test_the_request_holds_the_defaults_and_checks_its_options() -> None:
    request = MergeRequest(Path("map.toml"))
    assert (request.rows, request.atol, request.rtol, request.out) == (256, 1e-5, 1e-5, Path("merged.onnx"))
    assert weights_of("0.7, 0.3") == (0.7, 0.3) and weights_of([1, 2]) == (1.0, 2.0) and weights_of(None) is None
    from merge_cli.errors import MergeError

    with pytest.raises(MergeError, match="^--rows must be between"):
        MergeRequest(Path("map.toml"), rows=0, from_cli=True)
    with pytest.raises(MergeError, match="^atol must be a finite number"):
        MergeRequest(Path("map.toml"), atol=float("nan"))


# ---------------------------------------------------------------------------- helpers


def with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """The model with `name` as its only output (its type left for onnxruntime to infer)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.add(name=name)
    return copy


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))
