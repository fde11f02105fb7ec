"""`merge-models init`: a commented starter mapping that merges as written."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES, rows, run_console, run_model, save_text_model
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from merge_cli.errors import ExitCode

TWO_OUTPUTS = """
<ir_version: 8, opset_import: ["" : 17]>
two (float[N, 3] x) => (float[N, 1] y, float[N, 1] z) {
    w = Constant <value = float[3, 1] {1.0, 2.0, 3.0}> ()
    y = MatMul (x, w)
    z = Neg (y)
}
"""
ONE_OUTPUT = """
<ir_version: 8, opset_import: ["" : 17]>
one (float[N, 2] x) => (float[N, 1] y) {
    w = Constant <value = float[2, 1] {0.5, -1.0}> ()
    y = MatMul (x, w)
}
"""


def per_column_model(path: Path, columns: list[str], seed: int) -> Path:
    """A skl2onnx ColumnTransformer pipeline with one [N, 1] input per column, as DataFrames give."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((200, len(columns))).astype(np.float32)
    y = (X.sum(axis=1) > 0).astype(np.int64)
    transform = ColumnTransformer([("scaled", StandardScaler(), list(range(len(columns) - 1))),
                                   ("ranged", MinMaxScaler(), [len(columns) - 1])])
    pipeline = Pipeline([("columns", transform), ("model", LogisticRegression())]).fit(X, y)
    onx = convert_sklearn(pipeline, initial_types=[(c, FloatTensorType([None, 1])) for c in columns],
                          options={"zipmap": False}, target_opset=17)
    path.write_bytes(onx.SerializeToString())
    return path


def test_init_then_merge_the_samples_as_written(cli, tmp_path: Path) -> None:
    mapping = tmp_path / "features.toml"
    result = cli("init", SAMPLES / "model_a.onnx", SAMPLES / "model_b.onnx", "--out", mapping)
    assert result.code == 0, result.stderr
    text = mapping.read_text()
    assert text.startswith("# ") and "# weight = 1.0" in text  # commented for people
    doc = tomllib.loads(text)
    assert doc["input"]["columns"] == [f"model_a_{i}" for i in range(15)] + [f"model_b_{i}" for i in range(15)]
    assert "next: merge-models merge --map" in result.stdout

    out = tmp_path / "merged.onnx"
    merged = cli("merge", "--map", mapping, "--out", out, "--json")
    assert merged.code == 0, merged.stderr
    X = rows(64, 30)
    got = run_model(out, {"features": X})
    a = run_model(SAMPLES / "model_a.onnx", {"X": X[:, :15]})["probabilities"]
    b = run_model(SAMPLES / "model_b.onnx", {"X": X[:, 15:]})["probabilities"]
    np.testing.assert_allclose(got["probabilities"], (a + b) / 2, atol=1e-6, rtol=0)


def test_init_and_merge_with_their_defaults_in_a_folder(tmp_path: Path) -> None:
    """`merge-models init A B` writes ./features.toml, which `merge-models merge` reads by default."""
    result = run_console("init", SAMPLES / "model_a.onnx", SAMPLES / "model_b.onnx", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert (tmp_path / "features.toml").is_file()
    merged = run_console("merge", "--json", cwd=tmp_path)
    assert merged.code == 0, merged.stderr
    assert merged.json["output"] == "merged.onnx" and merged.json["verification"]["passed"]
    assert run_console("init", SAMPLES / "model_a.onnx", cwd=tmp_path).code == ExitCode.CANNOT_WRITE


def test_naming_the_placeholder_columns_is_all_there_is_to_do(cli, tmp_path: Path) -> None:
    """Rename the placeholders to the real names: the merged model then takes rows.csv's columns."""
    mapping = tmp_path / "features.toml"
    assert cli("init", SAMPLES / "model_a.onnx", SAMPLES / "model_b.onnx", "--out", mapping, "-q").code == 0
    real = tomllib.loads((SAMPLES / "features.toml").read_text())["input"]["columns"]
    placeholders = [f"model_a_{i}" for i in range(15)] + [f"model_b_{i}" for i in range(15)]
    text = mapping.read_text()
    for old, new in sorted(zip(placeholders, real, strict=True), key=lambda p: -len(p[0])):
        text = text.replace(f'"{old}"', f'"{new}"')
    mapping.write_text(text)
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--json")
    assert result.code == 0, result.stderr
    assert result.json["models"][1]["columns"][0] == "compactness error"
    verified = cli("verify", out, "--source", SAMPLES, "--data", SAMPLES / "rows.csv", "--json")
    assert verified.code == 0, verified.stderr
    assert verified.json["data"]["rows"] == len((SAMPLES / "rows.csv").read_text().splitlines()) - 1


def test_per_column_inputs_name_the_columns_and_share_them(cli, tmp_path: Path) -> None:
    """skl2onnx ColumnTransformer models: one [N,1] input per column; a name in both is one shared column."""
    a = per_column_model(tmp_path / "risk.onnx", ["age", "income", "debt"], seed=1)
    b = per_column_model(tmp_path / "churn.onnx", ["income", "tenure"], seed=2)
    mapping = tmp_path / "features.toml"
    result = cli("init", a, b, "--out", mapping, "--json")
    assert result.code == 0, result.stderr
    doc = result.json
    assert doc["columns"] == ["age", "income", "debt", "tenure"] and doc["placeholders"] == 0
    assert [m["named_from_inputs"] for m in doc["models"]] == [True, True]
    parsed = tomllib.loads(mapping.read_text())
    assert parsed["models"]["churn"]["inputs"] == {"income": ["income"], "tenure": ["tenure"]}

    out = tmp_path / "merged.onnx"
    merged = cli("merge", "--map", mapping, "--out", out)
    assert merged.code == 0, merged.stderr
    X = rows(50, 4)
    col = {name: X[:, [i]] for i, name in enumerate(doc["columns"])}
    pa = run_model(a, {k: col[k] for k in ("age", "income", "debt")})["probabilities"]
    pb = run_model(b, {k: col[k] for k in ("income", "tenure")})["probabilities"]
    np.testing.assert_allclose(run_model(out, {"features": X})["probabilities"], (pa + pb) / 2, atol=1e-6)


def test_init_chooses_an_output_when_a_model_has_several(cli, tmp_path: Path) -> None:
    two = save_text_model(tmp_path / "two.onnx", TWO_OUTPUTS)
    one = save_text_model(tmp_path / "one.onnx", ONE_OUTPUT)
    mapping = tmp_path / "features.toml"
    result = cli("init", two, one, "--out", mapping, "--json")
    assert result.code == 0, result.stderr
    assert result.json["models"][0]["output"] == "y"
    assert 'output = "y"' in mapping.read_text()
    out = tmp_path / "merged.onnx"
    assert cli("merge", "--map", mapping, "--out", out).code == 0
    X = rows(20, 5)
    y = run_model(two, {"x": X[:, :3]})["y"]
    z = run_model(one, {"x": X[:, 3:]})["y"]
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], (y + z) / 2, atol=1e-6)


def test_same_file_names_get_distinct_model_names(cli, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    first = save_text_model(tmp_path / "x" / "model.onnx", ONE_OUTPUT)
    second = save_text_model(tmp_path / "y" / "model.onnx", ONE_OUTPUT)
    result = cli("init", first, second, "--out", "-")
    assert result.code == 0, result.stderr
    doc = tomllib.loads(result.stdout)  # `--out -` prints the mapping and nothing else
    assert list(doc["models"]) == ["model", "model_2"]
    assert doc["models"]["model_2"]["path"].endswith("y/model.onnx")


def test_init_refuses_to_overwrite_unless_forced(cli, tmp_path: Path) -> None:
    mapping = tmp_path / "features.toml"
    mapping.write_text("# mine\n")
    result = cli("init", SAMPLES / "model_a.onnx", "--out", mapping)
    assert result.code == ExitCode.CANNOT_WRITE
    assert result.error_lines == [f"error: {mapping}: already exists"] and "--force" in result.stderr
    assert mapping.read_text() == "# mine\n"
    as_json = cli("init", SAMPLES / "model_a.onnx", "--out", mapping, "--json")
    assert as_json.code == ExitCode.CANNOT_WRITE and as_json.json["error"]["kind"] == "cannot_write"
    forced = cli("init", SAMPLES / "model_a.onnx", "--out", mapping, "--force")
    assert forced.code == 0, forced.stderr
    assert "[models.model_a]" in mapping.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.toml"]  # no temporary files left


@pytest.mark.parametrize("args, code", [
    (["--out", "{model}/missing-dir/features.toml"], ExitCode.CANNOT_WRITE),
    (["--out", "{model}", "--force"], ExitCode.CANNOT_WRITE),
    (["--out", "-", "--json"], ExitCode.USAGE),
])
def test_init_errors(cli, tmp_path: Path, args: list[str], code: ExitCode) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes((SAMPLES / "model_a.onnx").read_bytes())
    before = model.read_bytes()
    filled = [a.format(tmp=tmp_path, model=model) for a in args]
    result = cli("init", model, *filled)
    assert result.code == code
    assert len(result.error_lines) == 1 and "Traceback" not in result.stderr
    assert model.read_bytes() == before


@pytest.mark.parametrize("first, second", [("diabetes/a.onnx", "wine/b.onnx"), ("iris/a.onnx", "cancer/b.onnx")])
def test_outputs_that_cannot_be_averaged_are_concatenated(cli, tmp_path: Path, first: str, second: str) -> None:
    """A classifier with a regressor, or classifiers with different classes: init picks concat, which merges."""
    a, b = SAMPLES / "batch" / first, SAMPLES / "batch" / second
    mapping = tmp_path / "features.toml"
    result = cli("init", a, b, "--out", mapping, "--json")
    assert result.code == 0, result.stderr
    assert result.json["combiner"] == "concat" and result.json["notes"]
    out = tmp_path / "merged.onnx"
    assert cli("merge", "--map", mapping, "--out", out).code == 0
    widths = [len(m["columns"]) for m in result.json["models"]]
    X = rows(30, sum(widths))
    heads = []
    for path, cols in ((a, X[:, :widths[0]]), (b, X[:, widths[0]:])):
        outputs = run_model(path, {"X": cols})
        heads.append(outputs.get("probabilities", outputs.get("variable")))
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], np.concatenate(heads, axis=1),
                               atol=1e-6)
