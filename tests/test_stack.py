"""The stack, round two: float64 graph (default tolerances hold), passthrough = "all", the residual MLP,
a part shipped alone when it clearly wins, and the warning when one wins by less."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import run_model, write_mapping
from onnx import numpy_helper
from sklearn.datasets import load_iris
from test_combiners_learned import Job, diabetes, merge_json, rf, wine  # noqa: F401 (module fixtures)

from merge_cli import stacking


@pytest.mark.parametrize("learner", ["linear", "auto"])
def test_stack_on_diabetes_passes_default_tolerances_and_a_wrong_one_fails(cli, diabetes: Job, learner: str) -> None:  # noqa: F811
    """6 of 1440 float32 stack graphs differed from the float64 reference by a relative 3-7e-5 on random rows."""
    diabetes.csv(diabetes.stack, "stack.csv")
    mapping = diabetes.mapping({"kind": "stack", "data": "stack.csv", "target": "y", "passthrough": "all",
                                "learner": learner, "alpha": 1.0}, name=f"all_{learner}.toml")
    out = diabetes.dir / f"all_{learner}.onnx"
    doc = merge_json(cli, mapping, out, "--rows", "2000")
    assert doc["stack"]["passthrough"] == "all" and doc["stack"]["learner"] == learner
    # graph and reference both compute in float64 and round to float32 once: at most an ulp apart
    assert doc["verification"]["max_rel_error"] < 2.5e-7
    assert doc["verification"]["atol"] == 1e-5 and doc["verification"]["rtol"] == 1e-5
    assert cli("verify", out).code == 0

    model = onnx.load(out)
    coef = next(t for t in model.graph.initializer if t.name.startswith("stack_weight"))
    coef.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(coef) * (1 + 1e-4), coef.name))
    onnx.save(model, out)
    result = cli("verify", out)  # a stack off by 1e-4 of its weights is caught
    assert result.code == 1 and result.error_lines[0].startswith(f"error: {out}: merged outputs differ"), result.stderr


def test_verify_says_a_stack_fitted_by_an_older_merge_models_must_be_merged_again(cli, diabetes: Job) -> None:  # noqa: F811
    """verify refits the stack; a file whose fit came from an older version of the fit cannot be reproduced, and
    saying "outputs differ" about it would send the user looking for a broken file."""
    diabetes.csv(diabetes.stack, "stack.csv")
    mapping = diabetes.mapping({"kind": "stack", "data": "stack.csv", "target": "y"}, name="old.toml")
    out = diabetes.dir / "old.onnx"
    merge_json(cli, mapping, out)
    model = onnx.load(out)
    assert {p.key: p.value for p in model.metadata_props}["merge_models.stack_fit"] == "3"

    older = [p for p in model.metadata_props if p.key != "merge_models.stack_fit"]  # as files before version 3
    del model.metadata_props[:]
    model.metadata_props.extend(older)
    onnx.save(model, out)
    assert cli("verify", out).code == 0  # the same fit: nothing to say
    coef = next(t for t in model.graph.initializer if t.name.startswith("stack_weight"))
    coef.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(coef)[::-1].copy(), coef.name))  # another fit's weights
    onnx.save(model, out)
    result = cli("verify", out)
    assert result.code == 1 and len(result.error_lines) == 1, result.stderr
    assert result.error_lines[0].startswith(f"error: {out}: was merged by an older merge-models"), result.stderr
    assert "merge it again" in result.stderr and "Traceback" not in result.stderr


def test_passthrough_all_and_learner_are_validated(cli, wine: Job) -> None:  # noqa: F811
    wine.csv(wine.stack, "stack.csv")
    for value, message in (("some", "combiner.passthrough"), ("trees", "combiner.learner")):
        key = "passthrough" if message.endswith("passthrough") else "learner"
        mapping = wine.mapping({"kind": "stack", "data": "stack.csv", "target": "y", key: value}, name="bad.toml")
        result = cli("merge", "--map", mapping, "--out", wine.dir / "bad.onnx")
        assert result.code == 3 and message in result.error_lines[0], result.stderr
        assert not (wine.dir / "bad.onnx").exists()


def test_stack_rows_of_one_class_are_refused(cli, wine: Job) -> None:  # noqa: F811
    """A stack fitted where the target is one class learns to predict it for every row: exit 3, not that model."""
    one = wine.stack[wine.y[wine.stack] == wine.y[wine.stack][0]]
    wine.csv(one, "one.csv")
    mapping = wine.mapping({"kind": "stack", "data": "one.csv", "target": "y"}, name="one.toml")
    result = cli("merge", "--map", mapping, "--out", wine.dir / "one.onnx")
    assert result.code == 3 and len(result.error_lines) == 1, result.stderr
    assert "one.csv" in result.error_lines[0] and "a stack learned from one class" in result.error_lines[0]
    assert not (wine.dir / "one.onnx").exists()


def test_on_37_rows_the_stack_is_pulled_towards_the_pool_and_beats_the_better_part(cli, tmp_path) -> None:
    """iris, a random forest on each half of the columns, 37 stack rows: pulled towards `mean` (of a good and a
    poor part) the stack lost to the better part on held-out rows (log-loss 0.089 against 0.063); pulled
    towards the pool of the parts' log-probabilities, it beats it."""
    iris = Job(tmp_path, load_iris, [rf, rf], [[0, 1], [2, 3]], classify=True, seed=1)
    iris.csv(iris.stack, "stack.csv")
    mapping = iris.mapping({"kind": "stack", "data": "stack.csv", "target": "y", "passthrough": "all"})
    doc = merge_json(cli, mapping, tmp_path / "m.onnx")
    assert len(iris.stack) == 37 and doc["stack"]["chosen"] == "stack" and doc["stack"]["prior"] == "pool"

    test, rows = iris.X[iris.test], iris.X[iris.stack]
    better = min(iris.names, key=lambda name: log_loss(iris.head(name, rows), iris.y[iris.stack]))  # as a user picks
    merged = run_model(tmp_path / "m.onnx", {"features": test})["probabilities"]
    assert log_loss(merged, iris.y[iris.test]) < log_loss(iris.head(better, test), iris.y[iris.test])


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-15, None))))


def interacting(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Label 1 where u * v > 0.3 (plus noise): u only in part a's columns, v only in b's."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.5, 1.5, (n, 4))
    y = (x[:, 0] * x[:, 2] + 0.1 * rng.standard_normal(n) > 0.3).astype(np.int64)
    return x, y


def test_residual_mlp_learns_what_crosses_the_column_sets_and_is_embedded(cli, tmp_path) -> None:
    """Parts that each see one factor of u*v know nothing alone; the MLP over the columns learns the product."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = interacting(1200, 0)
    train, fit, test = slice(0, 400), slice(400, 800), slice(800, 1200)
    columns = ["u", "p", "v", "q"]
    for name, cols in (("a", [0, 1]), ("b", [2, 3])):
        model = LogisticRegression().fit(x[train][:, cols], y[train])
        onx = to_onnx(model, x[:1, cols].astype(np.float32), options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
        (tmp_path / f"{name}.onnx").write_bytes(onx.SerializeToString())
    rows = tmp_path / "rows.csv"
    rows.write_text("u,p,v,q,y\n" + "".join(f"{a},{b},{c},{d},{t}\n" for (a, b, c, d), t in zip(x[fit], y[fit], strict=True)))
    doc: dict[str, object] = {"input": {"columns": columns}, "models": {
        "a": {"path": "a.onnx", "columns": ["u", "p"]}, "b": {"path": "b.onnx", "columns": ["v", "q"]}},
        "combiner": {"kind": "stack", "data": "rows.csv", "target": "y", "passthrough": "all"}}
    out = merge_json(cli, write_mapping(tmp_path / "map.toml", doc), tmp_path / "m.onnx")
    assert out["stack"]["chosen"] == "stack+mlp"
    ops = {n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node}
    assert {"Tanh", "MatMul", "Softmax"} <= ops
    p = run_model(tmp_path / "m.onnx", {"features": x[test].astype(np.float32)})["probabilities"]
    accuracy = float(np.mean(np.argmax(p, axis=1) == y[test]))
    assert accuracy > 0.85  # the parts (and any mix of them) stay near the base rate, about 0.7


def sharp_and_useless(n: int, width: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Part a right on 90% of rows, part b a coin, `width` columns of noise: little data, much to overfit."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    sharp = np.where(y[:, None] == np.arange(2), 0.9, 0.1)
    flip = rng.random(n) < 0.1
    sharp[flip] = sharp[flip][:, ::-1]
    noise = rng.uniform(0.2, 0.8, (n, 1))
    return [sharp, np.hstack([noise, 1 - noise])], rng.standard_normal((n, width)), y


def test_a_part_that_clearly_wins_ships_alone_and_a_close_one_is_a_warning() -> None:
    outputs, rows, y = sharp_and_useless(40, 20)
    alone = stacking.fit_stack("classification", outputs, rows, y, ["a", "b"], tuple(range(20)), None, 5, 2, "linear")
    assert alone.chosen == "a" and alone.part == 0 and alone.linear is None
    assert "a alone beat the stack out of fold by more than one standard error" in alone.warnings[0]
    np.testing.assert_array_equal(stacking.apply(alone, outputs, rows), outputs[0])

    outputs, rows, y = sharp_and_useless(60, 30)
    close = stacking.fit_stack("classification", outputs, rows, y, ["a", "b"], tuple(range(30)), None, 5, 2, "linear")
    losses = {c.name: c.loss for c in close.candidates}
    assert close.chosen == "stack" and losses["a"] < losses["stack"]  # a wins out of fold, but by less than 1 SE
    assert "a alone beat the shipped combiner (stack)" in close.warnings[0] and "within one" in close.warnings[0]


def test_the_pool_is_a_convex_mix_of_log_probabilities_that_leans_on_the_better_part() -> None:
    outputs, rows, y = sharp_and_useless(60, 1)
    x = stacking.features("classification", outputs, rows, ())
    pool = stacking.prior("pool", "classification", x, y, 2, 2)
    c = pool.weights[[0, 2, 4], 0]  # on log mean p, log p_a, log p_b; the same on every class
    np.testing.assert_array_equal(pool.weights[[1, 3, 5], 1], c)
    assert np.all(c >= 0) and abs(c.sum() - 1) < 1e-12 and c[1] > 0.7 and c[2] < 0.1, c
    mean = stacking.prior("mean", "classification", x, y, 2, 2)
    assert loss_of(pool, x, y) < loss_of(mean, x, y)


def loss_of(prior: stacking.Prior, x: np.ndarray, y: np.ndarray) -> float:
    return float(stacking.loss("classification", stacking.softmax(x @ prior.weights + prior.intercept), y).mean())


def test_the_linear_fit_uses_at_most_fit_rows_of_the_usable_rows() -> None:
    """Beyond FIT_ROWS the fit is made on a seeded sample: time and memory stop growing with the rows,
    rows with a non-finite output, passthrough cell or target are dropped first and counted."""
    n = stacking.FIT_ROWS + 300
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((n, 2))
    y = rows[:, 0] + 0.5 * rows[:, 1] + 0.1 * rng.standard_normal(n)
    outputs = [rows[:, :1] + 0.3 * rng.standard_normal((n, 1)), rows[:, 1:] + 0.3 * rng.standard_normal((n, 1))]
    outputs[0][:100] = np.nan
    rows[100:150, 1] = np.inf
    y[150:200] = np.nan
    model = stacking.fit_stack("regression", outputs, rows, y, ["a", "b"], (1,), None, 5, 1, "linear")
    assert model.dropped == 200 and model.rows == stacking.FIT_ROWS and model.chosen == "stack"
    again = stacking.fit_stack("regression", outputs, rows, y, ["a", "b"], (1,), None, 5, 1, "linear")
    assert again.linear is not None and model.linear is not None
    np.testing.assert_array_equal(again.linear.coef, model.linear.coef)  # the same sample: the same model
    test = slice(200, 2200)
    predicted = stacking.apply(model, [o[test] for o in outputs], rows[test])[:, 0]
    # the best linear use of these features: 0.5 * the passthrough column + 0.917 * a, RMSE 0.304
    assert np.sqrt(np.mean((predicted - y[test]) ** 2)) < 0.32
