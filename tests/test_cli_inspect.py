"""`merge-models inspect`: a model as a merge sees it, read the way a merge reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, save_text_model, write_mapping
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from merge_cli.errors import ExitCode

TWO_OUTPUTS = """
<ir_version: 8, opset_import: ["" : 17]>
two (float[N, 3] x) => (float[N, 1] y, float[N, 1] z) {
    w = Constant <value = float[3, 1] {1.0, 2.0, 3.0}> ()
    y = MatMul (x, w)
    z = Neg (y)
}
"""


@pytest.fixture(scope="module")
def zipmap_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two skl2onnx iris classifiers with their default ZipMap output, on different columns."""
    folder = tmp_path_factory.mktemp("zipmap")
    data = load_iris()
    X, y = data.data.astype(np.float32), data.target
    paths = []
    for name, model, cols in (("lr", LogisticRegression(max_iter=500), [0, 1]),
                              ("tree", DecisionTreeClassifier(max_depth=3, random_state=0), [2, 3])):
        model.fit(X[:, cols], y)
        path = folder / f"{name}.onnx"
        path.write_bytes(to_onnx(model, X[:1, cols], target_opset=17).SerializeToString())
        paths.append(path)
    return paths[0], paths[1]


def test_inspect_reports_what_the_file_holds(cli) -> None:
    path = SAMPLES / "model_a.onnx"
    result = cli("inspect", path, "--json")
    assert result.code == 0, result.stderr
    doc = result.json
    model = onnx.load(path)
    assert doc["status"] == "ok"
    assert doc["bytes"] == doc["total_bytes"] == path.stat().st_size
    assert doc["external_data"] == []
    assert doc["ir_version"] == model.ir_version
    assert doc["producer"] == {"name": model.producer_name, "version": model.producer_version}
    assert doc["nodes"] == len(model.graph.node)
    assert sum(doc["ops"].values()) == len(model.graph.node)
    assert [i["name"] for i in doc["inputs"]] == [i.name for i in model.graph.input]
    assert [o["name"] for o in doc["outputs"]] == [o.name for o in model.graph.output]
    width = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    assert doc["inputs"][0]["shape"] == ["?", width] and doc["columns"] == width
    assert doc["opsets"][""] == max(e.version for e in model.opset_import if e.domain == "")
    assert doc["task"] == "classification" and doc["classes"] == [0, 1]
    assert doc["head"]["name"] == "probabilities" and doc["label"] == "label"
    assert doc["problem"] is None


def test_inspect_table_for_people(cli) -> None:
    result = cli("inspect", SAMPLES / "model_b.onnx")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith("model_b.onnx: classifier, classes 0, 1")
    head_line = next(line for line in result.stdout.splitlines() if "feeds the combiner" in line)
    assert head_line.split()[:2] == ["output", "probabilities"]
    assert "skl2onnx" in result.stdout and "TreeEnsembleClassifier" in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert result.stderr == ""


def test_inspect_says_what_merge_does(cli, tmp_path: Path, zipmap_models: tuple[Path, Path]) -> None:
    """The head, task and classes inspect reports are the ones a merge of the same files uses."""
    lr, tree = zipmap_models
    mapping = write_mapping(tmp_path / "map.toml", {
        "input": {"columns": ["sl", "sw", "pl", "pw"]},
        "models": {"lr": {"path": str(lr), "columns": ["sl", "sw"]}, "tree": {"path": str(tree), "columns": [2, 3]}},
    })
    merged = cli("merge", "--map", mapping, "--out", tmp_path / "merged.onnx", "--json")
    assert merged.code == 0, merged.stderr
    for path, used in zip((lr, tree), merged.json["models"], strict=True):
        doc = cli("inspect", path, "--json").json
        assert doc["head"]["name"] == used["head"]
        assert doc["task"] == used["task"] and doc["classes"] == used["classes"]
        assert doc["columns"] == len(used["columns"])
        # the ZipMap output is listed as what the file says, and replaced by the tensor under it
        zipmap = next(o for o in doc["outputs"] if o["type"].startswith("seq("))
        assert zipmap["type"] == "seq(map(int64, float))"
        assert doc["zipmap_replaced"] == {zipmap["name"]: used["head"]}
    lines = cli("inspect", lr).stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"output  {zipmap['name']}"))
    assert lines[at].endswith("ZipMap, replaced by")
    assert lines[at + 1].split()[0] == used["head"] and lines[at + 1].endswith("feeds the combiner")


def test_inspect_of_a_model_a_merge_cannot_use_as_it_is(cli, tmp_path: Path) -> None:
    path = save_text_model(tmp_path / "two.onnx", TWO_OUTPUTS)
    doc = cli("inspect", path, "--json")
    assert doc.code == 0
    problem = doc.json["problem"]
    assert problem["code"] == ExitCode.INCOMPATIBLE and "none is chosen" in problem["message"]
    assert doc.json["head"] is None and doc.json["task"] is None
    # ...and that is exactly what merge says about it
    mapping = write_mapping(tmp_path / "map.toml", {"input": {"columns": ["a", "b", "c"]},
                                                    "models": {"two": {"path": "two.onnx", "columns": [0, 1, 2]}}})
    merged = cli("merge", "--map", mapping, "--out", tmp_path / "out.onnx")
    assert merged.code == ExitCode.INCOMPATIBLE
    assert problem["message"] in merged.stderr
    human = cli("inspect", path)
    assert "a merge would fail: " in human.stdout and f"hint: {problem['hint']}" in human.stdout


def test_inspect_external_data_without_parsing_weights(cli, tmp_path: Path, monkeypatch) -> None:
    weights = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        initializer=[numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="ext.weights", size_threshold=0)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("inspect must not load the whole model")

    monkeypatch.setattr(onnx, "load", refuse)
    monkeypatch.setattr(onnx, "load_model", refuse)
    result = cli("inspect", path, "--json")
    assert result.code == 0, result.stderr
    doc = result.json
    data = tmp_path / "ext.weights"
    assert doc["external_data"] == [{"path": str(data.resolve()), "bytes": data.stat().st_size}]
    assert doc["total_bytes"] == path.stat().st_size + data.stat().st_size
    assert doc["initializers"] == {"count": 1, "bytes": weights.nbytes}
    assert doc["inputs"] == [{"name": "x", "type": "float", "shape": ["N", 64],  # w is an initializer
                              "binding": "64 columns of a float32 table"}]
    assert doc["task"] == "regression" and doc["head"]["name"] == "y" and doc["columns"] == 64
    assert "ext.weights" in cli("inspect", path).stdout


def test_inspect_of_a_merged_file_names_its_sources(cli, tmp_path: Path) -> None:
    out = tmp_path / "merged.onnx"
    assert cli("merge", "--map", SAMPLES / "features.toml", "--out", out, "-q").code == 0
    doc = cli("inspect", out, "--json").json
    assert doc["producer"]["name"] == "merge-models"
    assert doc["columns"] == 30 and doc["head"]["name"] == "probabilities"
    assert "merge_models.mapping" in doc["metadata"]
    assert "merged    by merge-models" in cli("inspect", out).stdout


@pytest.mark.parametrize("make, code", [
    (lambda d: d / "missing.onnx", ExitCode.BAD_INPUT),
    (lambda d: d, ExitCode.BAD_INPUT),
    (lambda d: (d / "junk.onnx").write_bytes(b"\x08\x07junk" * 10) and d / "junk.onnx", ExitCode.BAD_INPUT),
])
def test_inspect_bad_input(cli, tmp_path: Path, make, code) -> None:
    path = make(tmp_path)
    plain = cli("inspect", path)
    assert plain.code == code and plain.stdout == ""
    assert len(plain.error_lines) == 1 and str(path) in plain.error_lines[0]
    assert "Traceback" not in plain.stderr
    as_json = cli("inspect", path, "--json")
    assert as_json.code == code
    assert as_json.json["status"] == "error" and as_json.json["error"]["code"] == code
