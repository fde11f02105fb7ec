"""Mapping files: one test per validation rule, through the real CLI; and the formats that parse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import rows, run_model, save_text_model, write_mapping

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,2] x) => (float[N,1] y) <float[2,1] w = {1.0, -1.0}>
{
  y = MatMul(x, w)
}
"""


@pytest.fixture
def models(tmp_path: Path) -> Path:
    save_text_model(tmp_path / "a.onnx", MODEL)
    save_text_model(tmp_path / "b.onnx", MODEL.replace("1.0, -1.0", "2.0, 0.5"))
    return tmp_path


def good() -> dict[str, Any]:
    return {
        "version": 1,
        "input": {"name": "features", "columns": ["A", "B", "C"], "dtype": "float32"},
        "models": {"a": {"path": "a.onnx", "columns": ["A", "B"]}, "b": {"path": "b.onnx", "columns": ["B", "C"]}},
        "combiner": {"kind": "mean"},
    }


def with_change(change: Any) -> dict[str, Any]:
    doc = good()
    change(doc)
    return doc


# (id, change to the good mapping, exit code, fragments of the error line, fragment of the hint)
RULES = [
    ("unknown-top-key", lambda d: d.update(extra=1), 3, ["extra: unknown key"], "known keys"),
    ("unknown-input-key", lambda d: d["input"].update(colums=["A"]), 3, ["input.colums: unknown key"], "columns"),
    ("unknown-model-key", lambda d: d["models"]["a"].update(colums=["A"]), 3, ["models.a.colums: unknown key"], "columns"),
    ("unknown-combiner-key", lambda d: d["combiner"].update(weight=2), 3, ["combiner.weight: unknown key"], None),
    ("unknown-combiner", lambda d: d["combiner"].update(kind="median"), 3, ["combiner.kind", "median"], "mean"),
    ("unknown-column", lambda d: d["models"]["a"].update(columns=["A", "Z"]), 3,
     ["models.a.columns[1]", "unknown column 'Z'"], "input.columns"),
    ("repeated-column", lambda d: d["models"]["a"].update(columns=["A", "A"]), 3,
     ["models.a.columns[1]", "repeated"], "once"),
    ("index-out-of-range", lambda d: d["models"]["a"].update(columns=[0, 3]), 3,
     ["models.a.columns[1]", "out of range"], "0..2"),
    ("negative-index", lambda d: d["models"]["a"].update(columns=[-1, 0]), 3, ["models.a.columns[0]", "out of range"], None),
    ("bool-column", lambda d: d["models"]["a"].update(columns=[True, 0]), 3, ["models.a.columns[0]", "boolean"], None),
    ("float-column", lambda d: d["models"]["a"].update(columns=[1.5, 0]), 3, ["models.a.columns[0]", "1.5"], None),
    ("empty-columns", lambda d: d["models"]["a"].update(columns=[]), 3, ["models.a.columns"], None),
    ("columns-and-inputs", lambda d: d["models"]["a"].update(inputs={"x": ["A"]}), 3,
     ["models.a", "exactly one of columns, input or inputs"], None),
    ("duplicate-input-column", lambda d: d["input"].update(columns=["A", "B", "A"]), 3,
     ["input.columns[2]", "listed twice"], None),
    ("no-input-table", lambda d: d.pop("input"), 3, ["missing [input]"], None),
    ("no-models", lambda d: d.update(models={}), 3, ["models: no models"], None),
    ("bad-dtype", lambda d: d["input"].update(dtype="int8"), 3, ["input.dtype", "int8"], "float32"),
    ("bad-version", lambda d: d.update(version=2), 3, ["version", "unsupported"], None),
    ("bad-model-name", lambda d: d["models"].update({"a/b": d["models"].pop("b")}), 3, ["models.a/b"], None),
    ("negative-weight", lambda d: d["models"]["a"].update(weight=-1), 3, ["models.a.weight", ">= 0"], None),
    ("missing-model-file", lambda d: d["models"]["a"].update(path="nope.onnx"), 3, ["nope.onnx", "no such file"], None),
    ("width-mismatch", lambda d: d["models"]["a"].update(columns=["A", "B", "C"]), 4,
     ["models.a", "takes 2 columns but 3 are mapped"], "exactly 2"),
    ("wrong-input-name", lambda d: d["models"]["a"].pop("columns") and d["models"]["a"].update(inputs={"z": ["A", "B"]}),
     4, ["models.a.inputs.z", "no input 'z'"], "x"),
    ("missing-output", lambda d: d["models"]["a"].update(output="nope"), 4, ["models.a.output", "nope"], "y"),
]


@pytest.mark.parametrize("rule", RULES, ids=[r[0] for r in RULES])
def test_mapping_rule(cli, models: Path, rule: tuple) -> None:
    _, change, code, fragments, hint = rule
    mapping = write_mapping(models / "map.json", with_change(change))
    out = models / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out)
    assert result.code == code, result.stderr
    assert len(result.error_lines) == 1, result.stderr
    line = result.error_lines[0]
    assert "Traceback" not in result.stderr
    assert ".json" in line or ".onnx" in line  # names the file
    for fragment in fragments:
        assert fragment in line
    if hint:
        assert hint in result.stderr.split("hint:", 1)[1]
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".toml", ".json", ".yaml"])
def test_every_format_merges_the_same(cli, models: Path, suffix: str) -> None:
    doc = good()
    path = models / f"map{suffix}"
    if suffix == ".yaml":
        import yaml

        path.write_text(yaml.safe_dump(doc))
    else:
        write_mapping(path, doc)
    out = models / f"merged{suffix}.onnx"
    result = cli("merge", "--map", path, "--out", out)
    assert result.code == 0, result.stderr
    X = rows(10, 3)
    a = run_model(models / "a.onnx", {"x": X[:, [0, 1]]})["y"]
    b = run_model(models / "b.onnx", {"x": X[:, [1, 2]]})["y"]
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], (a + b) / 2, rtol=1e-6)


def test_columns_by_index_equal_columns_by_name(cli, models: Path) -> None:
    by_name = write_mapping(models / "names.json", good())
    doc = good()
    doc["models"]["a"]["columns"] = [0, "B"]
    doc["models"]["b"]["columns"] = [1, 2]
    by_index = write_mapping(models / "indices.json", doc)
    assert cli("merge", "--map", by_name, "--out", models / "one.onnx").code == 0
    assert cli("merge", "--map", by_index, "--out", models / "two.onnx").code == 0
    X = rows(10, 3)
    np.testing.assert_array_equal(run_model(models / "one.onnx", {"features": X})["prediction"],
                                  run_model(models / "two.onnx", {"features": X})["prediction"])


@pytest.mark.parametrize("text,fragment", [
    ("[input\ncolumns = 1", "invalid TOML"),
    ('\ufeff[input]\ncolumns = ["A"]', "byte-order mark"),
])
def test_toml_syntax_errors(cli, models: Path, text: str, fragment: str) -> None:
    path = models / "map.toml"
    path.write_text(text, encoding="utf-8")
    result = cli("merge", "--map", path, "--out", models / "merged.onnx")
    assert result.code == 3
    assert fragment in result.error_lines[0] and "map.toml" in result.error_lines[0]


@pytest.mark.parametrize("text,fragment", [
    ('{"input": {"columns": ["A"]}, "input": {}}', "duplicate key 'input'"),
    ('{"input": {"columns": ["A"]}, "models": {"a": {"path": "a.onnx", "columns": ["A"], "weight": NaN}}}', "NaN"),
    ('{"input": ', "invalid JSON"),
    ("[1, 2]", "top level must be a table"),
])
def test_json_errors(cli, models: Path, text: str, fragment: str) -> None:
    path = models / "map.json"
    path.write_text(text)
    result = cli("merge", "--map", path, "--out", models / "merged.onnx")
    assert result.code == 3
    assert fragment in result.error_lines[0]


def test_invalid_utf8_and_unknown_extension(cli, models: Path) -> None:
    bad = models / "map.toml"
    bad.write_bytes(b'[input]\ncolumns = ["\xff"]\n')
    result = cli("merge", "--map", bad, "--out", models / "merged.onnx")
    assert result.code == 3 and "not valid UTF-8" in result.error_lines[0]
    odd = models / "map.ini"
    odd.write_text(json.dumps(good()))
    result = cli("merge", "--map", odd, "--out", models / "merged.onnx")
    assert result.code == 3 and "unknown mapping format" in result.error_lines[0]


def test_yaml_duplicate_keys_are_refused(cli, models: Path) -> None:
    path = models / "map.yaml"
    path.write_text("input:\n  columns: [A]\ninput:\n  columns: [B]\n")
    result = cli("merge", "--map", path, "--out", models / "merged.onnx")
    assert result.code == 3 and "duplicate key 'input'" in result.error_lines[0]


def test_too_many_positional_models_is_a_usage_error(cli, models: Path) -> None:
    mapping = write_mapping(models / "map.json", good())
    a = models / "a.onnx"
    result = cli("merge", a, a, a, "--map", mapping, "--out", models / "merged.onnx")
    assert result.code == 2
    assert "3 MODEL arguments" in result.error_lines[0]
