"""Real converter output merges as-is: skl2onnx, onnxmltools (LightGBM, XGBoost) and torch.onnx, any pairing.

The fixtures in tests/fixtures were written by tests/make_fixtures.py with each converter's defaults.
Every expected number here comes from running the ORIGINAL files separately in onnxruntime on the
dataset's rows and averaging, computed independently of merge_cli.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import run_model, write_mapping
from make_fixtures import FIXTURES, Fixture, load
from onnx import helper, numpy_helper

import merge_cli
from merge_cli.errors import ExitCode

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures"
CPU = ["CPUExecutionProvider"]
TOL = 1e-5


# ---------------------------------------------------------------------------- running the originals


def original_session(path: Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), providers=CPU)
    except Exception:
        # skl2onnx's float64 classifiers end in a ZipMap over float64 that onnxruntime refuses to load;
        # what they mean is the tensor that ZipMap wraps.
        model = onnx.load(path)
        for node in [n for n in model.graph.node if n.op_type == "ZipMap"]:
            for out in model.graph.output:
                if out.name == node.output[0]:
                    out.CopyFrom(helper.make_tensor_value_info(node.input[0], onnx.TensorProto.DOUBLE, None))
            model.graph.node.remove(node)
        return ort.InferenceSession(model.SerializeToString(), providers=CPU)


def run_original(path: Path, fixture: Fixture, X: np.ndarray) -> list[Any]:
    """All outputs of the original file on the rows X (the whole dataset, float32), fed its own columns."""
    session = original_session(path)
    inputs = session.get_inputs()
    names = load(fixture.dataset)[2]
    if fixture.per_column:
        by_name = {names[c]: X[:, [c]] for c in fixture.columns}
        feed = {i.name: by_name[i.name] for i in inputs}
    else:
        dtype = np.float64 if inputs[0].type == "tensor(double)" else np.float32
        feed = {inputs[0].name: X[:, list(fixture.columns)].astype(dtype)}
    batch = inputs[0].shape[0]
    if not isinstance(batch, int):
        return session.run(None, feed)
    pieces = [session.run(None, {k: v[i: i + batch] for k, v in feed.items()}) for i in range(0, len(X), batch)]
    return [np.concatenate(p) if isinstance(p[0], np.ndarray) else sum(p, []) for p in zip(*pieces, strict=True)]


def probabilities_by_label(name: str, X: np.ndarray) -> dict[Any, np.ndarray]:
    """A classifier's probability of each class, keyed by class label, whatever form its file gives them in."""
    fixture = FIXTURES[name]
    session = original_session(FIXTURE_DIR / f"{name}.onnx")
    kinds = [o.type for o in session.get_outputs()]
    values = run_original(FIXTURE_DIR / f"{name}.onnx", fixture, X)
    assert fixture.classes is not None
    for kind, value in zip(kinds, values, strict=True):
        if kind.startswith("seq"):  # ZipMap: a list of {label: probability}
            return {c: np.array([row[c] for row in value]) for c in fixture.classes}
    probs = next(np.asarray(v) for k, v in zip(kinds, values, strict=True) if k in ("tensor(float)", "tensor(double)"))
    if probs.ndim == 1 or probs.shape[1] == 1:  # the positive class only
        p = probs.reshape(-1).astype(np.float64)
        return {fixture.classes[0]: 1 - p, fixture.classes[1]: p}
    return {c: probs[:, i] for i, c in enumerate(fixture.classes)}


def prediction(name: str, X: np.ndarray) -> np.ndarray:
    (value,) = run_original(FIXTURE_DIR / f"{name}.onnx", FIXTURES[name], X)
    return np.asarray(value).reshape(len(X), -1)


def is_double(name: str) -> bool:
    return original_session(FIXTURE_DIR / f"{name}.onnx").get_inputs()[0].type == "tensor(double)"


# ---------------------------------------------------------------------------- mapping files


def model_entry(name: str, path: Path | None = None) -> dict[str, Any]:
    fixture = FIXTURES[name]
    names = load(fixture.dataset)[2]
    entry: dict[str, Any] = {"path": str(path or FIXTURE_DIR / f"{name}.onnx")}
    if fixture.per_column:
        entry["inputs"] = {names[c]: [names[c]] for c in fixture.columns}
    else:
        entry["columns"] = [names[c] for c in fixture.columns]
    entry.update(dict(fixture.mapping))
    return entry


def write_pair_mapping(tmp_path: Path, first: str, second: str, **entries: dict[str, Any]) -> Path:
    """Models a and b: two fixtures on their own columns of their dataset; `entries` change their entries."""
    names = load(FIXTURES[first].dataset)[2]
    models = {"a": model_entry(first), "b": model_entry(second)}
    for key, extra in entries.items():
        models[key] = {**models[key], **extra}
    return write_mapping(tmp_path / "features.toml", {"input": {"columns": names}, "models": models})


def dataset_rows(dataset: str) -> np.ndarray:
    return load(dataset)[0].astype(np.float32)


# ---------------------------------------------------------------------------- every pairing


def same_task(a: str, b: str) -> bool:
    fa, fb = FIXTURES[a], FIXTURES[b]
    return fa.runs and fb.runs and fa.dataset == fb.dataset and set(fa.classes or ()) == set(fb.classes or ())


PAIRS = [(a, b) for a, b in itertools.combinations(FIXTURES, 2) if same_task(a, b)]
# The first classifier's class order is the merged one: also put models with other orders or shapes first.
PAIRS += [("wine_torch_dynamo", "wine_lr_zipmap"), ("cancer_torch_classic", "cancer_lgbm"),
          ("cancer_torch_fixed", "cancer_svc"), ("diabetes_torch_dynamo", "diabetes_gbr")]


def test_pairs_cover_every_pairing_class() -> None:
    """zipmap+zipmap, zipmap+tensor, tree+torch, double+float, per-column+single, reversed columns, 2/3 classes."""
    def has(a: str, b: str, pa: Any, pb: Any) -> bool:
        return any(pa(x) and pb(y) for x, y in ((a, b), (b, a)))

    zipmap = {n for n in FIXTURES if any(o.type.WhichOneof("value") == "sequence_type"
                                         for o in onnx.load(FIXTURE_DIR / f"{n}.onnx").graph.output)}
    tree = {n for n in FIXTURES if any("TreeEnsemble" in node.op_type
                                       for node in onnx.load(FIXTURE_DIR / f"{n}.onnx").graph.node)}
    checks = {
        "zipmap + zipmap": lambda a, b: a in zipmap and b in zipmap,
        "zipmap + tensor": lambda a, b: has(a, b, lambda x: x in zipmap, lambda y: y not in zipmap),
        "tree + torch": lambda a, b: has(a, b, lambda x: x in tree, lambda y: FIXTURES[y].converter == "torch"),
        "double + float": lambda a, b: has(a, b, is_double, lambda y: not is_double(y)),
        "per-column + single": lambda a, b: has(a, b, lambda x: FIXTURES[x].per_column,
                                                 lambda y: not FIXTURES[y].per_column),
        "reversed columns": lambda a, b: any(list(FIXTURES[x].columns) != sorted(FIXTURES[x].columns) for x in (a, b)),
        "binary": lambda a, b: len(FIXTURES[a].classes or ()) == 2,
        "3 classes": lambda a, b: len(FIXTURES[a].classes or ()) == 3,
        "regression": lambda a, b: FIXTURES[a].classes is None,
        "string labels": lambda a, b: isinstance((FIXTURES[a].classes or (0,))[0], str),
        "fixed batch": lambda a, b: "cancer_torch_fixed" in (a, b),
    }
    for what, check in checks.items():
        assert any(check(a, b) for a, b in PAIRS), what
    overlapping = [(a, b) for a, b in PAIRS if set(FIXTURES[a].columns) & set(FIXTURES[b].columns)]
    assert overlapping


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_pair_merges_with_mean_and_equals_the_average_of_the_originals(tmp_path: Path, a: str, b: str) -> None:
    mapping = write_pair_mapping(tmp_path, a, b)
    out = tmp_path / "merged.onnx"
    result = merge_cli.merge(mapping, out)
    assert result.verification is not None and result.verification.passed

    fixture = FIXTURES[a]
    X = dataset_rows(fixture.dataset)
    merged = run_merged(out, X)
    double = is_double(a) or is_double(b)
    if fixture.classes is None:
        expected = (prediction(a, X).astype(np.float64) + prediction(b, X)) / 2
        assert merged["prediction"].shape == expected.shape
        assert merged["prediction"].dtype == (np.float64 if double else np.float32)
        np.testing.assert_allclose(merged["prediction"], expected, atol=TOL, rtol=TOL)
        return
    pa, pb = probabilities_by_label(a, X), probabilities_by_label(b, X)
    classes = list(fixture.classes)  # the first model's class order
    expected = np.stack([(pa[c].astype(np.float64) + pb[c]) / 2 for c in classes], axis=1)
    probabilities, label = merged["probabilities"], merged["label"]
    assert probabilities.dtype == (np.float64 if double else np.float32)
    np.testing.assert_allclose(probabilities, expected, atol=TOL, rtol=TOL)
    want = np.array(classes, dtype=object if isinstance(classes[0], str) else np.int64)[np.argmax(expected, axis=1)]
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-6
    assert (label == want)[clear].all()
    if isinstance(classes[0], str):
        assert label.dtype == object and isinstance(label[0], str)
    else:
        assert label.dtype == np.int64
    shapes = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
              for o in onnx.load(out).graph.output}
    assert shapes["probabilities"][1:] == [len(classes)]
    assert len(shapes["label"]) == 1


def run_merged(path: Path, X: np.ndarray) -> dict[str, Any]:
    session = ort.InferenceSession(str(path), providers=CPU)
    batch = session.get_inputs()[0].shape[0]
    names = [o.name for o in session.get_outputs()]
    if not isinstance(batch, int):
        return dict(zip(names, session.run(None, {"features": X}), strict=True))
    pieces = [session.run(None, {"features": X[i: i + batch]}) for i in range(0, len(X), batch)]
    return {n: np.concatenate(p) for n, p in zip(names, zip(*pieces, strict=True), strict=True)}


# ---------------------------------------------------------------------------- through the command line


def test_fixed_batch_part_gives_a_warning_and_a_fixed_batch_merged_model(cli, tmp_path: Path) -> None:
    mapping = write_pair_mapping(tmp_path, "cancer_lr_zipmap", "cancer_torch_fixed")
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out)
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "models.b" in warnings[0] and "fixed batch size of 1" in warnings[0] and "exactly 1 row" in warnings[0]
    assert [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim] == [1, 30]

    out_json = tmp_path / "again.onnx"
    doc = cli("merge", "--map", mapping, "--out", out_json, "--json").json
    assert doc["warnings"] == [warnings[0].removeprefix("warning: ")]
    assert doc["verification"]["passed"] and doc["verification"]["rows"] == 256

    X = dataset_rows("cancer")[:40]
    merged = run_merged(out, X)
    pa, pb = probabilities_by_label("cancer_lr_zipmap", X), probabilities_by_label("cancer_torch_fixed", X)
    expected = np.stack([(pa[c] + pb[c]) / 2 for c in (0, 1)], axis=1)
    np.testing.assert_allclose(merged["probabilities"], expected, atol=TOL, rtol=TOL)


def test_different_class_sets_are_exit_4_with_a_hint(cli, tmp_path: Path) -> None:
    mapping = write_pair_mapping(tmp_path, "wine_rf", "wine_rf_str")
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out)
    assert result.code == int(ExitCode.INCOMPATIBLE)
    assert result.error_lines == [f"error: {mapping}: the classifiers have different classes: a has [0, 1, 2], "
                                  "b has ['class_0', 'class_1', 'class_2']"]
    assert "hint: merge classifiers trained on the same classes" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_a_file_onnxruntime_refuses_is_exit_3_naming_it(cli, tmp_path: Path) -> None:
    """skl2onnx's float64 GradientBoostingRegressor: the merge could not be checked, so it is refused up front."""
    mapping = write_pair_mapping(tmp_path, "diabetes_gbr_double", "diabetes_lgbm")
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out)
    assert result.code == int(ExitCode.BAD_INPUT)
    (line,) = result.error_lines
    assert line.startswith(f"error: {FIXTURE_DIR / 'diabetes_gbr_double.onnx'}: onnxruntime cannot load this model:")
    assert "TreeEnsembleRegressor" in line
    assert "hint: the merge is checked against each original file in onnxruntime" in result.stderr
    assert not out.exists()


def test_float64_merged_input_casts_to_each_models_type(tmp_path: Path) -> None:
    """[input] dtype = "float64": the float32 model gets a Cast, the float64 one the columns as they are."""
    mapping = write_pair_mapping(tmp_path, "wine_lr_double", "wine_rf")
    mapping.write_text(mapping.read_text().replace('["input"]\n', '["input"]\n"dtype" = "float64"\n'))
    out = tmp_path / "merged.onnx"
    merge_cli.merge(mapping, out)
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    casts = [n for n in model.graph.node if n.op_type == "Cast" and n.input[0].startswith("b.")]
    assert len(casts) == 1
    X = load("wine")[0]
    merged = run_model(out, {"features": X})
    lr = original_session(FIXTURE_DIR / "wine_lr_double.onnx").run(None, {"X": X[:, 5:13]})
    rf = run_model(FIXTURE_DIR / "wine_rf.onnx", {"X": X[:, 6:13].astype(np.float32)})["probabilities"]
    probabilities = next(v for v in lr if np.asarray(v).dtype == np.float64)
    assert merged["probabilities"].dtype == np.float64
    np.testing.assert_allclose(merged["probabilities"], (probabilities + rf) / 2, atol=TOL, rtol=TOL)


def test_unlabeled_probabilities_next_to_a_classifier_ask_for_classes(cli, tmp_path: Path) -> None:
    """A torch softmax output carries no labels: without classes = [...] the mapping must say them."""
    entry = {k: v for k, v in model_entry("wine_torch_dynamo").items() if k != "classes"}
    mapping = write_mapping(tmp_path / "features.toml", {"input": {"columns": load("wine")[2]},
                                                         "models": {"a": model_entry("wine_rf"), "b": entry}})
    result = cli("merge", "--map", mapping, "--out", tmp_path / "merged.onnx")
    assert result.code == int(ExitCode.INCOMPATIBLE)
    assert "b looks like a classifier without labels" in result.error_lines[0]
    assert "hint: add classes = [0, 1, 2]" in result.stderr


def test_classes_in_another_order_are_aligned_by_label(cli, tmp_path: Path) -> None:
    """The torch model's columns are classes 2, 0, 1; the merged probabilities follow the first model's order."""
    mapping = write_pair_mapping(tmp_path, "wine_lgbm", "wine_torch_dynamo")
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--json")
    assert result.code == 0, result.stderr
    models = {m["name"]: m for m in result.json["models"]}
    assert models["a"]["classes"] == models["b"]["classes"] == [0, 1, 2]
    X = dataset_rows("wine")
    torch_columns = run_model(FIXTURE_DIR / "wine_torch_dynamo.onnx", {"x": X})["softmax"]
    merged = run_model(out, {"features": X})
    lgbm = probabilities_by_label("wine_lgbm", X)
    np.testing.assert_allclose(merged["probabilities"][:, 2], (lgbm[2] + torch_columns[:, 0]) / 2, atol=TOL)
    np.testing.assert_allclose(merged["probabilities"][:, 0], (lgbm[0] + torch_columns[:, 1]) / 2, atol=TOL)
    # `verify` rebuilds the merge from the provenance: the same alignment, the same numbers
    again = cli("verify", out, "--source", FIXTURE_DIR, "--json")
    assert again.code == 0, again.stderr


def test_shared_output_names_stay_apart_with_keep_outputs(cli, tmp_path: Path) -> None:
    """wine_rf and wine_xgb both call their outputs label and probabilities; LightGBM declares its label [1]."""
    mapping = write_pair_mapping(tmp_path, "wine_rf", "wine_lgbm")
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--keep-outputs", "--json")
    assert result.code == 0, result.stderr
    outputs = {o["name"]: o for o in result.json["outputs"]}
    assert {"label", "probabilities", "a/label", "a/probabilities", "b/label", "b/lgbmprobabilities"} <= set(outputs)
    assert outputs["b/label"]["shape"] == ["N"] or outputs["b/label"]["shape"][0] != 1
    X = dataset_rows("wine")
    merged = run_model(out, {"features": X})
    assert merged["b/label"].shape == (len(X),)
    np.testing.assert_array_equal(merged["a/label"], run_model(FIXTURE_DIR / "wine_rf.onnx",
                                                               {"X": X[:, 6:13]})["label"])


def test_a_declared_output_shape_that_a_run_contradicts_is_not_trusted(cli, tmp_path: Path) -> None:
    """A file that declares its probabilities [1, 1] but returns [N, 3] merges with the shape a run shows."""
    model = onnx.load(FIXTURE_DIR / "wine_rf.onnx")
    for out in model.graph.output:
        if out.name == "probabilities":
            out.CopyFrom(helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [1, 1]))
    wrong = tmp_path / "wrong_shape.onnx"
    onnx.save(model, wrong)
    mapping = write_pair_mapping(tmp_path, "wine_rf", "wine_xgb", a={"path": str(wrong)})
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--json")
    assert result.code == 0, result.stderr
    shapes = {o["name"]: o["shape"] for o in result.json["outputs"]}
    assert shapes["probabilities"][1:] == [3] and shapes["probabilities"][0] != 1
    X = dataset_rows("wine")
    pa, pb = probabilities_by_label("wine_rf", X), probabilities_by_label("wine_xgb", X)
    np.testing.assert_allclose(run_model(out, {"features": X})["probabilities"],
                               np.stack([(pa[c] + pb[c]) / 2 for c in (0, 1, 2)], axis=1), atol=TOL)


# ---------------------------------------------------------------------------- opsets and IR


@pytest.mark.parametrize("ml", [1, 2, 3, 4, 5])
def test_any_ai_onnx_ml_opset_merges_with_tree_models(tmp_path: Path, ml: int) -> None:
    """A linear model declaring ai.onnx.ml 1..5 next to a TreeEnsembleClassifier (deprecated in ml 5)."""
    model = onnx.load(FIXTURE_DIR / "wine_lr_zipmap.onnx")
    for entry in model.opset_import:
        if entry.domain == "ai.onnx.ml":
            entry.version = ml
    onnx.checker.check_model(model, full_check=True)
    declared = tmp_path / f"lr_ml{ml}.onnx"
    onnx.save(model, declared)
    mapping = write_pair_mapping(tmp_path, "wine_lr_zipmap", "wine_rf", a={"path": str(declared)})
    out = tmp_path / "merged.onnx"
    result = merge_cli.merge(mapping, out)
    merged_model = onnx.load(out)
    onnx.checker.check_model(merged_model, full_check=True)
    assert {e.domain: e.version for e in merged_model.opset_import}["ai.onnx.ml"] == min(ml, 4)
    assert result.opsets["ai.onnx.ml"] == min(ml, 4)
    X = dataset_rows("wine")
    pa, pb = probabilities_by_label("wine_lr_zipmap", X), probabilities_by_label("wine_rf", X)
    np.testing.assert_allclose(run_model(out, {"features": X})["probabilities"],
                               np.stack([(pa[c] + pb[c]) / 2 for c in (0, 1, 2)], axis=1), atol=TOL)


def tree_ensemble_model(dtype: type, columns: list[int]) -> tuple[onnx.ModelProto, Any]:
    """A random forest written as ai.onnx.ml 5 TreeEnsemble (no converter writes it yet; other tools do)."""
    from sklearn.ensemble import RandomForestRegressor

    X, y, _ = load("diabetes")
    forest = RandomForestRegressor(n_estimators=3, max_depth=3, random_state=0).fit(X[:, columns], y)
    a: dict[str, list[Any]] = {k: [] for k in ("roots", "feature", "split", "true", "true_leaf", "false",
                                               "false_leaf", "weight")}
    for estimator in forest.estimators_:
        tree = estimator.tree_
        inner = [i for i in range(tree.node_count) if tree.children_left[i] != -1]
        leaves = [i for i in range(tree.node_count) if tree.children_left[i] == -1]
        node_at = {n: len(a["feature"]) + k for k, n in enumerate(inner)}
        leaf_at = {n: len(a["weight"]) + k for k, n in enumerate(leaves)}
        a["roots"].append(node_at[0])
        for n in inner:
            a["feature"].append(int(tree.feature[n]))
            a["split"].append(tree.threshold[n])
            for child, ids, flags in ((tree.children_left[n], "true", "true_leaf"),
                                      (tree.children_right[n], "false", "false_leaf")):
                a[ids].append(leaf_at[child] if child in leaf_at else node_at[child])
                a[flags].append(int(child in leaf_at))
        a["weight"].extend(tree.value[n][0][0] / len(forest.estimators_) for n in leaves)
    node = helper.make_node(
        "TreeEnsemble", ["X"], ["Y"], domain="ai.onnx.ml", tree_roots=a["roots"], nodes_featureids=a["feature"],
        nodes_splits=numpy_helper.from_array(np.array(a["split"], dtype=dtype)),
        nodes_modes=numpy_helper.from_array(np.zeros(len(a["feature"]), dtype=np.uint8)),
        nodes_truenodeids=a["true"], nodes_trueleafs=a["true_leaf"], nodes_falsenodeids=a["false"],
        nodes_falseleafs=a["false_leaf"], leaf_targetids=[0] * len(a["weight"]),
        leaf_weights=numpy_helper.from_array(np.array(a["weight"], dtype=dtype)), n_targets=1)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph([node], "forest", [helper.make_tensor_value_info("X", elem, [None, len(columns)])],
                              [helper.make_tensor_value_info("Y", elem, [None, 1])])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21),
                                                                    helper.make_opsetid("ai.onnx.ml", 5)])
    onnx.checker.check_model(model, full_check=True)
    return model, forest


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ml5_tree_ensemble_next_to_an_ml1_tree_model_is_rewritten_and_merges(tmp_path: Path, dtype: type) -> None:
    columns = [0, 2, 3, 8]
    model, forest = tree_ensemble_model(dtype, columns)
    path = tmp_path / "forest_ml5.onnx"
    onnx.save(model, path)
    names = load("diabetes")[2]
    mapping = write_mapping(tmp_path / "features.toml", {
        "input": {"columns": names},
        "models": {"forest": {"path": str(path), "columns": [names[c] for c in columns]},
                   "gbr": model_entry("diabetes_gbr")},
    })
    out = tmp_path / "merged.onnx"
    result = merge_cli.merge(mapping, out)
    assert result.opsets["ai.onnx.ml"] == 4
    merged_model = onnx.load(out)
    assert "TreeEnsemble" not in {n.op_type for n in merged_model.graph.node}
    X = dataset_rows("diabetes")
    forest_out = run_model(path, {"X": X[:, columns].astype(dtype)})["Y"]
    np.testing.assert_allclose(forest_out[:, 0], forest.predict(X[:, columns]), rtol=1e-4)  # the file is right
    expected = (forest_out.astype(np.float64) + prediction("diabetes_gbr", X)) / 2
    got = run_model(out, {"features": X})["prediction"]
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=TOL)


def test_opset_7_ir_3_model_converts_up_to_the_newest_opset(tmp_path: Path) -> None:
    newest = onnx.defs.onnx_opset_version()
    assert onnx.load(FIXTURE_DIR / "cancer_lr_zipmap.onnx").ir_version == 3
    mapping = write_pair_mapping(tmp_path, "cancer_lr_zipmap", "cancer_torch_classic")
    out = tmp_path / "merged.onnx"
    result = merge_cli.merge(mapping, out, opset=newest)
    assert result.opsets[""] == newest
    X = dataset_rows("cancer")
    pa, pb = probabilities_by_label("cancer_lr_zipmap", X), probabilities_by_label("cancer_torch_classic", X)
    np.testing.assert_allclose(run_model(out, {"features": X})["probabilities"],
                               np.stack([(pa[c] + pb[c]) / 2 for c in (0, 1)], axis=1), atol=TOL)


def test_xgboost_without_a_default_opset_merges_with_itself(tmp_path: Path) -> None:
    """Two files that declare only ai.onnx.ml: the merged model still needs a default-domain opset."""
    assert {e.domain for e in onnx.load(FIXTURE_DIR / "wine_xgb.onnx").opset_import} == {"ai.onnx.ml"}
    mapping = write_pair_mapping(tmp_path, "wine_xgb", "wine_xgb")
    out = tmp_path / "merged.onnx"
    result = merge_cli.merge(mapping, out)
    assert result.opsets[""] >= 7
    X = dataset_rows("wine")
    p = probabilities_by_label("wine_xgb", X)
    np.testing.assert_allclose(run_model(out, {"features": X})["probabilities"],
                               np.stack([p[c] for c in (0, 1, 2)], axis=1), atol=TOL)


def test_fixtures_are_small_and_made_by_their_converters() -> None:
    producers = {"skl2onnx": "skl2onnx", "onnxmltools": "OnnxMLTools", "torch": "pytorch"}
    for name, fixture in FIXTURES.items():
        path = FIXTURE_DIR / f"{name}.onnx"
        assert path.stat().st_size < 1_000_000
        assert onnx.load(path).producer_name == producers[fixture.converter], name
