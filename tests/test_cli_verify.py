"""`merge-models verify`: re-check a merged file against its sources, found through its provenance."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLES

from merge_cli.errors import ExitCode

ROWS = SAMPLES / "rows.csv"


@pytest.fixture
def merged(cli, tmp_path: Path) -> Path:
    """The samples merged from a copy in out/src/ into out/merged.onnx (sources recorded as src/...)."""
    src = tmp_path / "out" / "src"
    src.mkdir(parents=True)
    for name in ("model_a.onnx", "model_b.onnx", "features.toml"):
        shutil.copy(SAMPLES / name, src / name)
    out = tmp_path / "out" / "merged.onnx"
    result = cli("merge", "--map", src / "features.toml", "--out", out, "--quiet")
    assert result.code == 0, result.stderr
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_verify_finds_and_checks_the_sources(cli, merged: Path) -> None:
    result = cli("verify", merged, "--json")
    assert result.code == 0, result.stderr
    doc = result.json
    src = merged.parent / "src"
    assert [(s["model"], s["recorded"]) for s in doc["sources"]] == [("a", "src/model_a.onnx"),
                                                                     ("b", "src/model_b.onnx")]
    assert [s["sha256"] for s in doc["sources"]] == [sha256(src / "model_a.onnx"), sha256(src / "model_b.onnx")]
    assert doc["outputs"] == ["label", "probabilities"]
    v = doc["verification"]
    assert v["passed"] and v["rows"] == 256 and {o["name"] for o in v["outputs"]} == {"label", "probabilities"}
    assert doc["data"] is None


def test_verify_on_real_rows(cli, merged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("verify", merged, "--data", ROWS, "--rows", "100", "--json")
    assert result.code == 0, result.stderr
    held_out = len(ROWS.read_text().splitlines()) - 1
    assert result.json["data"] == {"path": str(ROWS), "rows": held_out}
    assert result.json["verification"]["rows"] == 100 + held_out
    monkeypatch.setenv("COLUMNS", "80")
    human = cli("verify", merged, "--data", ROWS)
    assert human.code == 0
    assert f"verified on 256 random rows + {held_out} from rows.csv: ok" in human.stdout
    title, *tables = human.stdout.splitlines()
    assert title.startswith(f"{merged}: mean of 2 models")  # a long path: one line, never wrapped
    assert all(len(line) <= 80 for line in tables)


def test_moved_sources_are_a_clear_error_and_source_points_at_them(cli, merged: Path) -> None:
    src = merged.parent / "src"
    moved = src.rename(src.with_name("elsewhere"))
    result = cli("verify", merged)
    assert result.code == ExitCode.BAD_INPUT
    assert len(result.error_lines) == 1
    assert "source of model 'a' not found (recorded as 'src/model_a.onnx', relative to merged.onnx)" in result.stderr
    assert "hint: pass --source a=PATH" in result.stderr
    as_json = cli("verify", merged, "--json")
    assert as_json.code == ExitCode.BAD_INPUT and as_json.json["error"]["kind"] == "bad_input"
    pointed = cli("verify", merged, "--source", f"a={moved / 'model_a.onnx'}",
                  "--source", f"b={moved / 'model_b.onnx'}", "--json")
    assert pointed.code == 0, pointed.stderr
    assert [s["path"] for s in pointed.json["sources"]] == [str(moved / "model_a.onnx"), str(moved / "model_b.onnx")]


def test_changed_source_is_refused_by_its_sha256(cli, merged: Path) -> None:
    source = merged.parent / "src" / "model_a.onnx"
    model = onnx.load(source)
    model.doc_string = "retrained"  # any change: even one that computes the same
    onnx.save(model, source)
    result = cli("verify", merged)
    assert result.code == ExitCode.BAD_INPUT
    assert "source of model 'a' has changed since the merge" in result.stderr
    swapped = cli("verify", merged, "--source", f"a={merged.parent / 'src' / 'model_b.onnx'}")
    assert swapped.code == ExitCode.BAD_INPUT
    assert "is not the file model 'a' was merged from" in swapped.stderr


def test_outputs_that_differ_fail_with_exit_1(cli, merged: Path) -> None:
    """A file whose provenance says mean but which computes a weighted mean does not verify."""
    src = merged.parent / "src"
    weighted = merged.with_name("weighted.onnx")
    assert cli("merge", "--map", src / "features.toml", "--out", weighted, "--combiner", "weighted",
               "--weights", "0.9,0.1", "-q").code == 0
    model = onnx.load(weighted)
    del model.metadata_props[:]
    model.metadata_props.extend(onnx.load(merged).metadata_props)
    onnx.save(model, weighted)

    result = cli("verify", weighted)
    assert result.code == ExitCode.VERIFY_FAILED
    assert result.error_lines[0].startswith(f"error: {weighted}: merged outputs differ")
    assert any(line.startswith("probabilities") and "differs" in line for line in result.stdout.splitlines())
    as_json = cli("verify", weighted, "--json")
    assert as_json.code == ExitCode.VERIFY_FAILED
    doc = as_json.json
    assert doc["status"] == "error" and doc["error"]["code"] == ExitCode.VERIFY_FAILED
    probabilities = next(o for o in doc["verification"]["outputs"] if o["name"] == "probabilities")
    assert not probabilities["passed"] and probabilities["max_abs"] > 1e-3
    assert doc["verification"]["would_pass_with"]["atol"] == doc["verification"]["max_abs_error"]
    quiet = cli("verify", weighted, "--quiet")
    assert quiet.code == ExitCode.VERIFY_FAILED and quiet.stdout == ""


def test_kept_outputs_are_verified_too(cli, merged: Path) -> None:
    kept = merged.with_name("kept.onnx")
    assert cli("merge", "--map", merged.parent / "src" / "features.toml", "--out", kept,
               "--keep-outputs", "-q").code == 0
    result = cli("verify", kept, "--json")
    assert result.code == 0, result.stderr
    checked = {o["name"] for o in result.json["verification"]["outputs"]}
    assert {"a/probabilities", "b/label"} <= checked and set(result.json["outputs"]) == checked


def test_a_tampered_graph_fails(cli, merged: Path) -> None:
    """Changing a weight inside the merged graph (not its metadata) is caught by the numbers."""
    model = onnx.load(merged)
    node = next(n for n in model.graph.node if n.op_type == "LinearClassifier")
    coefficients = next(a for a in node.attribute if a.name == "coefficients")
    coefficients.floats[:] = list(np.asarray(coefficients.floats) * 1.5)
    onnx.save(model, merged)
    assert cli("verify", merged).code == ExitCode.VERIFY_FAILED


@pytest.mark.parametrize("args, code, fragment", [
    (["--source", "a"], ExitCode.USAGE, "is not NAME=PATH"),
    (["--source", "zzz=x.onnx"], ExitCode.USAGE, "has no model 'zzz'"),
    (["--rows", "0"], ExitCode.USAGE, "--rows must be between 1 and"),
    (["--data", "{tmp}/missing.csv"], ExitCode.BAD_INPUT, "no such data file"),
    (["--data", "{tmp}/bad.csv"], ExitCode.BAD_INPUT, "has no column 'mean radius'"),
])
def test_verify_usage_and_data_errors(cli, merged: Path, args: list[str], code: ExitCode, fragment: str) -> None:
    tmp = merged.parent
    (tmp / "bad.csv").write_text("x,y\n1,2\n")
    result = cli("verify", merged, *[a.format(tmp=tmp) for a in args])
    assert result.code == code
    assert len(result.error_lines) == 1 and fragment in result.error_lines[0]


def test_verify_refuses_a_file_without_provenance(cli) -> None:
    result = cli("verify", SAMPLES / "model_a.onnx")
    assert result.code == ExitCode.BAD_INPUT
    assert "has no merge-models provenance" in result.stderr


def test_every_missing_source_is_named_in_one_run_and_a_folder_finds_them(cli, merged: Path) -> None:
    src = merged.parent / "src"
    moved = src.rename(src.with_name("elsewhere"))
    result = cli("verify", merged)
    assert result.code == ExitCode.BAD_INPUT and len(result.error_lines) == 1
    assert "source of model 'a' not found" in result.stderr and "source of model 'b' not found" in result.stderr
    assert "--source FOLDER" in result.stderr
    found = cli("verify", merged, "--source", moved, "--json")
    assert found.code == 0, found.stderr
    assert [s["path"] for s in found.json["sources"]] == [str(moved / "model_a.onnx"), str(moved / "model_b.onnx")]
    assert found.json["verification"]["passed"]


def test_verify_lists_the_models_in_mapping_order(cli, tmp_path: Path) -> None:
    """The recorded mapping is canonical JSON (keys sorted); the models are rebuilt in the order they were merged."""
    for name in ("model_a.onnx", "model_b.onnx"):
        shutil.copy(SAMPLES / name, tmp_path / name)
    text = (SAMPLES / "features.toml").read_text()
    mapping = tmp_path / "features.toml"
    mapping.write_text(text.replace("[models.a]", "[models.z]"))
    out = tmp_path / "merged.onnx"
    assert cli("merge", "--map", mapping, "--out", out, "--combiner", "concat", "-q").code == 0, "merge"
    result = cli("verify", out, "--json")
    assert result.code == 0, result.stderr
    assert [s["model"] for s in result.json["sources"]] == ["z", "b"]
