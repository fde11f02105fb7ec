"""vote, stack, gate, the user's own onnx graph, 3-model merges and scores on real rows.

The parts are scikit-learn models trained here on different columns of datasets that ship with
scikit-learn, written by skl2onnx; every number is checked with onnxruntime against the parts run
separately, and scores against sklearn.metrics.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import run_model, save_text_model, write_mapping
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris, load_wine
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from merge_cli import learners
from merge_cli.scores import average_ranks, roc_auc

OPSET = {"": 17, "ai.onnx.ml": 3}


# ---------------------------------------------------------------------------- fixtures: real data, real converters


class Job:
    """A dataset split three ways (parts' training rows, stack rows, held-out rows) and parts on column groups."""

    def __init__(self, directory: Path, loader: Callable[..., Any], makers: list[Callable[[], Any]],
                 groups: list[list[int]], classify: bool, seed: int = 0) -> None:
        data = loader()
        self.dir = directory
        self.X, self.y = data.data.astype(np.float32), data.target
        self.columns = [f"c{i}" for i in range(self.X.shape[1])]
        self.groups = groups
        self.names = [chr(ord("a") + i) for i in range(len(groups))]
        self.classify = classify
        strat = self.y if classify else None
        train, rest = train_test_split(np.arange(len(self.y)), train_size=0.5, random_state=seed, stratify=strat)
        stack, test = train_test_split(rest, train_size=0.5, random_state=seed,
                                       stratify=self.y[rest] if classify else None)
        self.train, self.stack, self.test = train, stack, test
        for name, make, cols in zip(self.names, makers, groups, strict=True):
            model = make().fit(self.X[train][:, cols], self.y[train])
            options = {"zipmap": False} if classify else None
            onx = to_onnx(model, self.X[:1, cols], options=options, target_opset=OPSET)
            (directory / f"{name}.onnx").write_bytes(onx.SerializeToString())

    def mapping(self, combiner: dict[str, Any], name: str = "map.toml", **model_keys: dict[str, Any]) -> Path:
        models = {n: {"path": f"{n}.onnx", "columns": [self.columns[i] for i in g], **model_keys.get(n, {})}
                  for n, g in zip(self.names, self.groups, strict=True)}
        return write_mapping(self.dir / name, {"input": {"columns": self.columns}, "models": models,
                                               "combiner": combiner})

    def csv(self, rows: np.ndarray, name: str, target: str = "y") -> Path:
        path = self.dir / name
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow([*self.columns, target])
            for row, value in zip(self.X[rows], self.y[rows], strict=True):
                writer.writerow([*(repr(float(v)) for v in row), value])
        return path

    def part(self, name: str, X: np.ndarray) -> dict[str, Any]:
        cols = self.groups[self.names.index(name)]
        return run_model(self.dir / f"{name}.onnx", {"X": X[:, cols]})

    def head(self, name: str, X: np.ndarray) -> np.ndarray:
        out = self.part(name, X)
        return out["probabilities"] if self.classify else out["variable"].reshape(len(X))


def lr() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))


def rf() -> Any:
    return RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0)


def gb() -> Any:
    return GradientBoostingClassifier(n_estimators=15, max_depth=2, random_state=0)


def thirds(width: int) -> list[list[int]]:
    return [list(range(i, width, 3)) for i in range(3)]


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Job:
    return Job(tmp_path_factory.mktemp("wine"), load_wine, [lr, rf, gb], thirds(13), classify=True)


@pytest.fixture(scope="module")
def cancer(tmp_path_factory: pytest.TempPathFactory) -> Job:
    return Job(tmp_path_factory.mktemp("cancer"), load_breast_cancer, [lr, rf],
               [list(range(15)), list(range(15, 30))], classify=True)


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Job:
    return Job(tmp_path_factory.mktemp("diabetes"), load_diabetes,
               [lambda: make_pipeline(StandardScaler(), Ridge()),
                lambda: RandomForestRegressor(n_estimators=30, max_depth=4, random_state=0),
                lambda: GradientBoostingRegressor(n_estimators=40, max_depth=2, random_state=0)],
               [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]], classify=False)


def merge_json(cli: Any, mapping: Path, out: Path, *args: str | Path) -> dict[str, Any]:
    result = cli("merge", "--map", mapping, "--out", out, "--json", *args)
    assert result.code == 0, result.stderr
    doc = result.json
    assert doc["verification"]["passed"] is True
    return doc


# ---------------------------------------------------------------------------- vote


def vote_by_hand(probabilities: list[np.ndarray], weights: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Row by row: weighted votes for each model's top class; ties go to the larger summed probability."""
    n, k = probabilities[0].shape
    labels, shares = np.zeros(n, dtype=np.int64), np.zeros((n, k))
    for i in range(n):
        votes = np.zeros(k)
        for p, w in zip(probabilities, weights, strict=True):
            votes[int(np.argmax(p[i]))] += w
        shares[i] = votes / sum(weights)
        best = [c for c in range(k) if np.isclose(votes[c], votes.max())]
        labels[i] = max(best, key=lambda c: sum(float(p[i, c]) for p in probabilities))
    return labels, shares


def test_vote_of_three_weighted_classifiers(cli, wine: Job) -> None:
    weights = {"a": {"weight": 2.0}, "b": {"weight": 1.0}, "c": {"weight": 1.0}}
    out = wine.dir / "vote.onnx"
    merge_json(cli, wine.mapping({"kind": "vote"}, **weights), out)
    X = wine.X
    merged = run_model(out, {"features": X})
    labels, shares = vote_by_hand([wine.head(n, X) for n in wine.names], [2.0, 1.0, 1.0])
    np.testing.assert_array_equal(merged["label"], labels)
    np.testing.assert_allclose(merged["probabilities"], shares, atol=1e-6)
    assert merged["label"].dtype == np.int64


def test_vote_of_two_equal_models_breaks_every_disagreement_by_probability(cli, cancer: Job) -> None:
    out = cancer.dir / "vote2.onnx"
    merge_json(cli, cancer.mapping({"kind": "vote"}), out)
    X = cancer.X
    merged = run_model(out, {"features": X})
    pa, pb = cancer.head("a", X), cancer.head("b", X)
    disagree = np.argmax(pa, axis=1) != np.argmax(pb, axis=1)
    assert disagree.any()  # the tie-break is exercised
    np.testing.assert_array_equal(merged["label"], np.argmax(pa + pb, axis=1))
    np.testing.assert_array_equal(merged["probabilities"][disagree], np.full((disagree.sum(), 2), 0.5))


def test_vote_refuses_regressors(cli, diabetes: Job) -> None:
    result = cli("merge", "--map", diabetes.mapping({"kind": "vote"}), "--out", diabetes.dir / "v.onnx")
    assert result.code == 4
    assert len(result.error_lines) == 1 and "vote needs classifiers" in result.error_lines[0]
    assert not (diabetes.dir / "v.onnx").exists()


# ---------------------------------------------------------------------------- gate


def test_gate_returns_exactly_the_model_whose_columns_are_present(cli, cancer: Job) -> None:
    out = cancer.dir / "gate.onnx"
    doc = merge_json(cli, cancer.mapping({"kind": "gate", "missing_label": 7}), out)
    assert doc["verification"]["rows"] >= 2 * 256  # random rows and the same rows with NaN patterns
    X = cancer.X[cancer.test]
    cols_a, cols_b = cancer.groups
    no_a, no_b, none = X.copy(), X.copy(), X.copy()
    no_a[:, cols_a] = np.nan
    no_b[:, cols_b] = np.nan
    none[:, :] = np.nan
    a, b = cancer.part("a", X), cancer.part("b", X)

    got = run_model(out, {"features": no_a})
    np.testing.assert_array_equal(got["probabilities"], b["probabilities"])
    np.testing.assert_array_equal(got["label"], b["label"])
    got = run_model(out, {"features": no_b})
    np.testing.assert_array_equal(got["probabilities"], a["probabilities"])
    np.testing.assert_array_equal(got["label"], a["label"])
    got = run_model(out, {"features": none})
    assert np.isnan(got["probabilities"]).all()
    np.testing.assert_array_equal(got["label"], np.full(len(X), 7))
    got = run_model(out, {"features": X})
    np.testing.assert_allclose(got["probabilities"], (a["probabilities"] + b["probabilities"]) / 2, atol=1e-6)
    # one NaN in a's columns is enough to drop a for that row, and nothing else changes
    one = X.copy()
    one[::2, cols_a[3]] = np.nan
    got = run_model(out, {"features": one})
    np.testing.assert_array_equal(got["probabilities"][::2], b["probabilities"][::2])
    assert np.isfinite(got["probabilities"]).all()


def test_gate_fills_missing_cells_before_the_parts_run(cli, cancer: Job) -> None:
    out = cancer.dir / "gate_kept.onnx"
    merge_json(cli, cancer.mapping({"kind": "gate"}), out, "--keep-outputs")  # verified with the parts' outputs
    X = cancer.X[cancer.test].copy()
    X[:, cancer.groups[0]] = np.nan
    kept = run_model(out, {"features": X})["a/probabilities"]
    assert np.isfinite(kept).all()  # no NaN reaches model a
    np.testing.assert_allclose(kept, cancer.part("a", np.nan_to_num(X, nan=0.0))["probabilities"], atol=1e-6)


def test_gate_of_three_weighted_regressors_with_a_shared_column(cli, diabetes: Job) -> None:
    out = diabetes.dir / "gate.onnx"
    weights = {"a": {"weight": 3.0}, "b": {"weight": 1.0}, "c": {"weight": 1.0}}
    merge_json(cli, diabetes.mapping({"kind": "gate"}, **weights), out)
    X = diabetes.X[diabetes.test]
    a, b, c = (diabetes.head(n, X) for n in "abc")
    only_c = X.copy()
    only_c[:, [0, 4]] = np.nan  # a and b each lose a column; column 3 is shared by a and b
    got = run_model(out, {"features": only_c})["prediction"].reshape(len(X))
    np.testing.assert_array_equal(got, c)
    no_c = X.copy()
    no_c[:, 8] = np.nan
    got = run_model(out, {"features": no_c})["prediction"].reshape(len(X))
    np.testing.assert_allclose(got, (3 * a + b) / 4, rtol=1e-5)
    shared = X.copy()
    shared[:, 3] = np.nan  # column 3 feeds a and b: only c is left
    got = run_model(out, {"features": shared})["prediction"].reshape(len(X))
    np.testing.assert_array_equal(got, c)
    gone = np.full_like(X, np.nan)
    assert np.isnan(run_model(out, {"features": gone})["prediction"]).all()


def test_gate_missing_label_must_have_the_labels_type(cli, cancer: Job) -> None:
    result = cli("merge", "--map", cancer.mapping({"kind": "gate", "missing_label": "none"}),
                 "--out", cancer.dir / "g.onnx")
    assert result.code == 4
    assert "missing_label" in result.error_lines[0]


def test_gate_scores_skip_rows_no_model_can_serve(cli, cancer: Job) -> None:
    rows = cancer.X[cancer.test].copy()
    rows[:10, :] = np.nan
    rows[10:20, cancer.groups[0]] = np.nan
    path = cancer.dir / "holes.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*cancer.columns, "y"])
        for row, value in zip(rows, cancer.y[cancer.test], strict=True):
            writer.writerow([*("" if np.isnan(v) else repr(float(v)) for v in row), value])
    doc = merge_json(cli, cancer.mapping({"kind": "gate"}), cancer.dir / "gh.onnx", "--data", path)
    merged = {m["model"]: m for m in doc["scores"]["models"]}["merged"]
    assert merged["rows"] == len(rows) - 10
    got = run_model(cancer.dir / "gh.onnx", {"features": rows})
    y = cancer.y[cancer.test]
    assert merged["accuracy"] == pytest.approx(accuracy_score(y[10:], got["label"][10:]))


def test_gate_and_vote_keep_string_labels(cli, tmp_path: Path) -> None:
    data = load_iris()
    X, y = data.data.astype(np.float32), data.target_names[data.target]
    columns = [f"c{i}" for i in range(4)]
    for name, model, cols in (("a", lr(), [0, 1]), ("b", rf(), [2, 3])):
        model.fit(X[::2, cols], y[::2])
        onx = to_onnx(model, X[:1, cols], options={"zipmap": False}, target_opset=OPSET)
        (tmp_path / f"{name}.onnx").write_bytes(onx.SerializeToString())
    rows = tmp_path / "rows.csv"
    rows.write_text("c0,c1,c2,c3,species\n" + "".join(
        ",".join([*(repr(float(v)) for v in X[i]), y[i]]) + "\n" for i in range(1, 150, 2)))
    models = {"a": {"path": "a.onnx", "columns": columns[:2]}, "b": {"path": "b.onnx", "columns": columns[2:]}}
    for kind in ("gate", "vote"):
        combiner = {"kind": kind, "missing_label": "unknown"} if kind == "gate" else {"kind": kind}
        mapping = write_mapping(tmp_path / f"{kind}.toml", {"input": {"columns": columns}, "models": models,
                                                            "combiner": combiner})
        out = tmp_path / f"{kind}.onnx"
        doc = merge_json(cli, mapping, out, "--data", rows)
        merged = {m["model"]: m for m in doc["scores"]["models"]}["merged"]
        got = run_model(out, {"features": X[1::2]})
        assert got["label"].dtype == object and set(got["label"]) <= set(data.target_names)
        assert merged["accuracy"] == pytest.approx(accuracy_score(y[1::2], got["label"]))
    gone = np.full((2, 4), np.nan, np.float32)
    assert list(run_model(tmp_path / "gate.onnx", {"features": gone})["label"]) == ["unknown", "unknown"]


# ---------------------------------------------------------------------------- stack


def held_out(job: Job, merged: Path) -> dict[str, dict[str, float]]:
    """sklearn's scores on the held-out rows: each part, their mean, and the merged model."""
    X, y = job.X[job.test], job.y[job.test]
    heads = {n: job.head(n, X) for n in job.names}
    heads["mean"] = sum(heads.values()) / len(job.names)
    out = run_model(merged, {"features": X})
    heads["merged"] = out["probabilities"] if job.classify else out["prediction"].reshape(len(X))
    if job.classify:
        return {n: {"log_loss": log_loss(y, p, labels=np.arange(p.shape[1])),
                    "accuracy": accuracy_score(y, np.argmax(p, axis=1))} for n, p in heads.items()}
    return {n: {"rmse": float(np.sqrt(np.mean((p - y) ** 2))), "r2": r2_score(y, p)} for n, p in heads.items()}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Job:
    return Job(tmp_path_factory.mktemp("digits"), load_digits, [lr, rf],
               [list(range(32)), list(range(32, 64))], classify=True)


@pytest.mark.parametrize("case", ["digits", "wine", "diabetes"])
def test_stack_scores_at_least_as_well_as_each_part_and_mean_on_held_out_rows(cli, request, case: str) -> None:
    job: Job = request.getfixturevalue(case)
    job.csv(job.stack, "stack.csv")
    test_rows = job.csv(job.test, "test.csv")
    passthrough = {"wine": ["c0", "c6"], "diabetes": ["c2", "c8"]}.get(case, [])
    combiner: dict[str, Any] = {"kind": "stack", "data": "stack.csv", "target": "y"}
    if passthrough:
        combiner["passthrough"] = passthrough
    mapping = job.mapping(combiner)
    out = job.dir / "stack.onnx"
    doc = merge_json(cli, mapping, out, "--data", test_rows)

    scores = held_out(job, out)
    others = [s for n, s in scores.items() if n != "merged"]
    if job.classify:
        assert scores["merged"]["log_loss"] <= min(s["log_loss"] for s in others)
    else:
        assert scores["merged"]["rmse"] <= min(s["rmse"] for s in others)
        assert scores["merged"]["r2"] >= max(s["r2"] for s in others)
    if case == "digits":  # complementary halves of the image: a clear gain in accuracy too
        assert scores["merged"]["accuracy"] > max(s["accuracy"] for s in others)

    stack = doc["stack"]
    assert [c["combiner"] for c in stack["cross_validation"]] == ["stack", "stack+mlp", "mean", *job.names]
    assert stack["rows"] == len(job.stack) and stack["folds"] == 5
    assert stack["passthrough"] == passthrough
    table = {m["model"]: m for m in doc["scores"]["models"]}
    assert doc["scores"]["in_sample"] is False
    metric = "log_loss" if job.classify else "rmse"
    assert table["merged"][metric] == pytest.approx(scores["merged"][metric], rel=1e-6)
    for name in job.names:
        assert table[name][metric] == pytest.approx(scores[name][metric], rel=1e-6)


def test_stack_from_the_command_line_on_npz_rows(cli, wine: Job, tmp_path: Path) -> None:
    data = tmp_path / "rows.npz"
    np.savez(data, X=wine.X[wine.stack], y=wine.y[wine.stack])
    mapping = wine.mapping({"kind": "mean"}, name="plain.toml")
    out = tmp_path / "stacked.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--combiner", "stack", "--data", data)
    assert result.code == 0, result.stderr
    assert "cross-validation" in result.stdout and "scores on" in result.stdout
    assert "in-sample" in result.stdout  # scores on the rows the stack was fitted on are labelled as such
    provenance = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert '"kind":"stack"' in provenance["merge_models.mapping"]
    later = cli("verify", out, "--source", wine.dir, "--json")  # the stack is refitted on the recorded rows
    assert later.code == 0 and later.json["verification"]["passed"] is True
    np.savez(data, X=wine.X[wine.test], y=wine.y[wine.test])  # other rows: another fit, which the file is not
    assert cli("verify", out, "--source", wine.dir).code == 1


def test_stack_embeds_the_fit_as_matmul_add_softmax(cli, wine: Job) -> None:
    wine.csv(wine.stack, "stack.csv")
    mapping = wine.mapping({"kind": "stack", "data": "stack.csv", "target": "y", "alpha": 3.0,
                            "passthrough": ["c1"]}, name="fixed.toml")
    out = wine.dir / "fixed.onnx"
    doc = merge_json(cli, mapping, out)
    assert doc["stack"]["chosen"] == "stack" and doc["stack"]["alpha"] == 3.0  # a given alpha is kept
    ops = [n.op_type for n in onnx.load(out).graph.node if not n.name.startswith(("a/", "b/", "c/"))]
    for op in ("MatMul", "Add", "Softmax", "Log", "Concat"):
        assert op in ops


def test_stack_falls_back_to_mean_when_the_fit_cannot_beat_it(cli, tmp_path: Path) -> None:
    """Two models that know nothing (p = 0.5 everywhere) and a balanced target: nothing to learn."""
    for name in ("a", "b"):
        save_text_model(tmp_path / f"{name}.onnx", """
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[N, 1] x) => (int64[N] label, float[N, 2] probabilities) {
                shape = Shape <end = 1> (x)
                half = Constant <value = float {0.5}> ()
                wide = Constant <value = int64[1] {2}> ()
                size = Concat <axis = 0> (shape, wide)
                probabilities = Expand (half, size)
                label = ArgMax <axis = 1, keepdims = 0> (probabilities)
            }""")
    rows = tmp_path / "rows.csv"
    rows.write_text("u,v,y\n" + "".join(f"{i * 0.1},{-i},{i % 2}\n" for i in range(40)))
    mapping = write_mapping(tmp_path / "map.toml", {
        "input": {"columns": ["u", "v"]},
        "models": {"a": {"path": "a.onnx", "columns": ["u"], "classes": [0, 1]},
                   "b": {"path": "b.onnx", "columns": ["v"], "classes": [0, 1]}},
        "combiner": {"kind": "stack", "data": "rows.csv", "target": "y"},
    })
    doc = merge_json(cli, mapping, tmp_path / "m.onnx")
    assert doc["stack"]["chosen"] == "mean" and doc["stack"]["alpha"] is None
    got = run_model(tmp_path / "m.onnx", {"features": np.zeros((3, 2), np.float32)})
    np.testing.assert_array_equal(got["probabilities"], np.full((3, 2), 0.5, np.float32))


def test_stack_numpy_fits_agree_with_sklearn() -> None:
    """With no prior (w0 = 0, b0 = 0) the fits are sklearn's, the intercept a penalised column of ones."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, 4))
    z -= z.mean(axis=0)
    y = np.argmax(z @ rng.standard_normal((4, 3)) + rng.standard_normal((200, 3)), axis=1)
    alpha = 2.0
    coef, intercept = learners.fit_logistic(z, y, 3, alpha, np.zeros((4, 3)), np.zeros(3))
    ones = np.hstack([z, np.ones((200, 1))])
    reference = LogisticRegression(C=1 / alpha, fit_intercept=False, tol=1e-10, max_iter=10000).fit(ones, y)
    np.testing.assert_allclose(np.vstack([coef, intercept]), reference.coef_.T, atol=1e-4)

    target = z @ np.array([1.0, -2.0, 0.5, 0.0]) + 3.0 + rng.standard_normal(200)
    w, b = learners.fit_ridge(z, target, alpha, np.zeros((4, 1)), np.zeros(1))
    ridge = Ridge(alpha=alpha, fit_intercept=False).fit(ones, target)
    np.testing.assert_allclose(np.append(w[:, 0], b), ridge.coef_, atol=1e-8)


def test_stack_needs_enough_rows(cli, wine: Job) -> None:
    wine.csv(wine.stack[:6], "tiny.csv")
    result = cli("merge", "--map", wine.mapping({"kind": "stack", "data": "tiny.csv", "target": "y"},
                                               name="tiny.toml"), "--out", wine.dir / "t.onnx")
    assert result.code == 3
    assert "tiny.csv" in result.error_lines[0] and "at least 10" in result.error_lines[0]


# ---------------------------------------------------------------------------- onnx: the user's own combiner


COMBINER = """
<ir_version: 7, opset_import: ["" : 13]>
combine (float[N, 3] a, float[N, 3] b, float[N, 3] c) => (float[N, 3] probabilities, int64[N] label) {
    wa = Constant <value = float {0.5}> ()
    wb = Constant <value = float {0.3}> ()
    wc = Constant <value = float {0.2}> ()
    sa = Mul (a, wa)
    sb = Mul (b, wb)
    sc = Mul (c, wc)
    probabilities = Sum (sa, sb, sc)
    label = ArgMax <axis = 1, keepdims = 0> (probabilities)
}
"""


def test_onnx_combiner_is_converted_prefixed_and_verified(cli, wine: Job) -> None:
    save_text_model(wine.dir / "combiner.onnx", COMBINER)
    out = wine.dir / "own.onnx"
    doc = merge_json(cli, wine.mapping({"kind": "onnx", "path": "combiner.onnx"}, name="own.toml"), out)
    assert doc["opsets"][""] == 17  # the combiner's opset 13 was converted with the parts'
    model = onnx.load(out)
    assert {o.name for o in model.graph.output} == {"probabilities", "label"}
    assert any(n.name.startswith("combiner/") for n in model.graph.node)
    X = wine.X
    got = run_model(out, {"features": X})
    want = 0.5 * wine.head("a", X) + 0.3 * wine.head("b", X) + 0.2 * wine.head("c", X)
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-6)
    np.testing.assert_array_equal(got["label"], np.argmax(got["probabilities"], axis=1))
    later = cli("verify", out, "--json")  # rebuilt from provenance: the combiner file is read again
    assert later.code == 0 and later.json["verification"]["passed"] is True


def test_onnx_combiner_prefix_never_collides_with_a_model_named_combiner(cli, wine: Job, tmp_path: Path) -> None:
    save_text_model(tmp_path / "own.onnx", COMBINER.replace("(float[N, 3] a,", "(float[N, 3] combiner,")
                    .replace("Mul (a, wa)", "Mul (combiner, wa)"))
    for name in wine.names:
        (tmp_path / f"{name}.onnx").write_bytes((wine.dir / f"{name}.onnx").read_bytes())
    mapping = write_mapping(tmp_path / "map.toml", {
        "input": {"columns": wine.columns},
        "models": {"combiner": {"path": "a.onnx", "columns": [wine.columns[i] for i in wine.groups[0]]},
                   "b": {"path": "b.onnx", "columns": [wine.columns[i] for i in wine.groups[1]]},
                   "c": {"path": "c.onnx", "columns": [wine.columns[i] for i in wine.groups[2]]}},
        "combiner": {"kind": "onnx", "path": "own.onnx"},
    })
    merge_json(cli, mapping, tmp_path / "m.onnx")
    names = {n.name.split("/")[0] for n in onnx.load(tmp_path / "m.onnx").graph.node if "/" in n.name}
    assert {"combiner", "combiner_"} <= names


def test_onnx_combiner_inputs_must_be_model_names(cli, wine: Job) -> None:
    save_text_model(wine.dir / "bad.onnx", COMBINER.replace("float[N, 3] c)", "float[N, 3] z)")
                    .replace("Mul (c, wc)", "Mul (z, wc)"))
    result = cli("merge", "--map", wine.mapping({"kind": "onnx", "path": "bad.onnx"}, name="bad.toml"),
                 "--out", wine.dir / "bad_out.onnx")
    assert result.code == 4
    assert "bad.onnx" in result.error_lines[0] and "'z'" in result.error_lines[0]


# ---------------------------------------------------------------------------- N models, scores on real rows


@pytest.mark.parametrize("kind", ["mean", "weighted", "max", "min", "sum"])
def test_three_classifiers_merge_and_verify(cli, tmp_path: Path, kind: str) -> None:
    job = Job(tmp_path, load_iris, [lr, rf, gb], [[0, 1], [1, 2], [2, 3]], classify=True)
    weights = {n: {"weight": w} for n, w in zip(job.names, (0.5, 0.3, 0.2), strict=True)}
    out = tmp_path / "m.onnx"
    merge_json(cli, job.mapping({"kind": kind}, **weights), out)
    ps = [job.head(n, job.X) for n in job.names]
    want = {"mean": sum(ps) / 3, "weighted": 0.5 * ps[0] + 0.3 * ps[1] + 0.2 * ps[2], "sum": sum(ps),
            "max": np.maximum.reduce(ps), "min": np.minimum.reduce(ps)}[kind]
    if kind in ("max", "min", "sum"):  # rows renormalised: probabilities still (docs/combiners.md)
        want = want / want.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(run_model(out, {"features": job.X})["probabilities"], want, atol=1e-6)


def test_three_regressors_concat_and_scores(cli, diabetes: Job) -> None:
    out = diabetes.dir / "concat.onnx"
    merge_json(cli, diabetes.mapping({"kind": "concat"}, name="concat.toml"), out)
    got = run_model(out, {"features": diabetes.X})["prediction"]
    np.testing.assert_allclose(got, np.stack([diabetes.head(n, diabetes.X) for n in "abc"], axis=1), rtol=1e-6)

    rows = diabetes.csv(diabetes.test, "test.csv", target="progression")
    doc = merge_json(cli, diabetes.mapping({"kind": "mean"}, name="mean.toml"), diabetes.dir / "mean.onnx",
                     "--data", rows, "--target", "progression")
    y = diabetes.y[diabetes.test]
    X = diabetes.X[diabetes.test]
    predictions = {n: diabetes.head(n, X) for n in "abc"}
    predictions["merged"] = run_model(diabetes.dir / "mean.onnx", {"features": X})["prediction"].reshape(len(X))
    assert doc["scores"]["task"] == "regression" and doc["scores"]["target"] == "progression"
    # rel 1e-7, not exact: the tool runs models without onnxruntime's graph optimizations (fused ops round
    # float32 a little differently from the unfused graph this test's default session runs)
    for entry in doc["scores"]["models"]:
        p = predictions[entry["model"]]
        assert entry["rmse"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)), rel=1e-7)
        assert entry["mae"] == pytest.approx(mean_absolute_error(y, p), rel=1e-7)
        assert entry["r2"] == pytest.approx(r2_score(y, p), abs=1e-6)


def test_scores_on_real_rows_match_sklearn_and_print_a_table(cli, cancer: Job) -> None:
    rows = cancer.csv(cancer.test, "test.csv")
    mapping = cancer.mapping({"kind": "mean"})
    doc = merge_json(cli, mapping, cancer.dir / "m.onnx", "--data", rows)  # the target: the one extra column
    assert doc["verification"]["rows"] == 256 + len(cancer.test)
    X, y = cancer.X[cancer.test], cancer.y[cancer.test]
    merged = run_model(cancer.dir / "m.onnx", {"features": X})
    outputs = {n: cancer.part(n, X) for n in cancer.names}
    outputs["merged"] = merged
    for entry in doc["scores"]["models"]:
        out = outputs[entry["model"]]
        assert entry["rows"] == len(y)
        assert entry["accuracy"] == pytest.approx(accuracy_score(y, out["label"]))
        assert entry["log_loss"] == pytest.approx(log_loss(y, out["probabilities"]), rel=1e-6)
        assert entry["roc_auc"] == pytest.approx(roc_auc_score(y, out["probabilities"][:, 1]), rel=1e-9)

    result = cli("merge", "--map", mapping, "--out", cancer.dir / "m2.onnx", "--data", rows)
    assert result.code == 0
    assert "scores on" in result.stdout and "roc_auc" in result.stdout and "merged" in result.stdout


@pytest.mark.parametrize(("edit", "code", "fragment"), [
    ("drop_column", 3, "no column 'c3'"),
    ("unknown_label", 3, "is not one of the classes"),
    ("text_cell", 3, "is not a number"),
    ("no_target", 3, "no target column 'label'"),
])
def test_bad_data_files(cli, cancer: Job, tmp_path: Path, edit: str, code: int, fragment: str) -> None:
    path = cancer.csv(cancer.test[:20], "rows.csv")
    lines = path.read_text().splitlines()
    if edit == "drop_column":
        lines = [",".join(c for i, c in enumerate(line.split(",")) if i != 3) for line in lines]
    elif edit == "unknown_label":
        lines[3] = lines[3].rsplit(",", 1)[0] + ",5"
    elif edit == "text_cell":
        lines[2] = "oops," + lines[2].split(",", 1)[1]
    bad = tmp_path / "rows.csv"
    bad.write_text("\n".join(lines) + "\n")
    args = ["--target", "label"] if edit == "no_target" else []
    out = tmp_path / "m.onnx"
    result = cli("merge", "--map", cancer.mapping({"kind": "mean"}), "--out", out, "--data", bad, *args)
    assert result.code == code
    assert len(result.error_lines) == 1 and fragment in result.error_lines[0] and "rows.csv" in result.error_lines[0]
    assert "Traceback" not in result.stderr and not out.exists()


def test_target_without_data_is_a_usage_error(cli, cancer: Job) -> None:
    result = cli("merge", "--map", cancer.mapping({"kind": "mean"}), "--out", cancer.dir / "x.onnx", "--target", "y")
    assert result.code == 2 and "--data" in result.error_lines[0]


def test_roc_auc_and_ranks_agree_with_sklearn_with_ties() -> None:
    rng = np.random.default_rng(3)
    score = np.round(rng.random(300), 1)  # many ties
    positive = rng.random(300) < score
    assert roc_auc(positive, score) == pytest.approx(roc_auc_score(positive, score), rel=1e-12)
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    assert roc_auc(np.ones(5, bool), score[:5]) is None


# ---------------------------------------------------------------------------- converter fixtures, and `verify` later


FIXTURE_SETS = {
    # [N, 1] sigmoid (torch) widened to [N, 2], XGBoost with reversed columns, skl2onnx ZipMap at opset 7
    "cancer": ("cancer_torch_classic", "cancer_xgb_reversed", "cancer_lr_zipmap"),
    # torch softmax with classes in the order 2, 0, 1 (aligned by label), GradientBoosting ZipMap, LightGBM
    "wine": ("wine_torch_dynamo", "wine_gb_reversed", "wine_lgbm"),
    # torch [N] next to XGBoost and GradientBoosting [N, 1]
    "diabetes": ("diabetes_torch_dynamo", "diabetes_xgb_reversed", "diabetes_gbr"),
}


def fixture_mapping(tmp_path: Path, dataset: str, combiner: dict[str, Any]) -> Path:
    from make_fixtures import FIXTURES, HERE, load

    X, y, names = load(dataset)
    with open(tmp_path / "rows.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*names, "y"])
        writer.writerows([*map(repr, map(float, row)), value] for row, value in zip(X, y, strict=True))
    models = {}
    for i, name in enumerate(FIXTURE_SETS[dataset]):
        fixture = FIXTURES[name]
        models[f"m{i}"] = {"path": str(HERE / f"{name}.onnx"), "columns": [names[c] for c in fixture.columns],
                           **dict(fixture.mapping)}
    return write_mapping(tmp_path / "map.toml", {"input": {"columns": names}, "models": models,
                                                 "combiner": combiner})


@pytest.mark.parametrize(("dataset", "kind"), [(d, k) for d in ("cancer", "wine", "diabetes")
                                                for k in ("vote", "gate", "stack") if (d, k) != ("diabetes", "vote")])
def test_new_combiners_on_converter_output_verify_now_and_later(cli, tmp_path: Path, dataset: str, kind: str) -> None:
    combiner = {"kind": kind} | ({"data": "rows.csv", "target": "y", "folds": 3} if kind == "stack" else {})
    mapping = fixture_mapping(tmp_path, dataset, combiner)
    out = tmp_path / "merged.onnx"
    doc = merge_json(cli, mapping, out, "--data", tmp_path / "rows.csv")
    assert [m["model"] for m in doc["scores"]["models"]] == ["m0", "m1", "m2", "merged"]
    assert doc["scores"]["models"][-1]["rows"] == doc["scores"]["rows"]
    from make_fixtures import HERE

    later = cli("verify", out, "--source", HERE, "--data", tmp_path / "rows.csv", "--json")
    assert later.code == 0, later.stderr
    assert later.json["verification"]["passed"] is True
