"""The command line's contract: one test per exit code, --json, determinism, atomic output, provenance."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, assert_no_leftovers, rows, run_console, run_model, save_text_model, write_mapping

from merge_cli.errors import ExitCode

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,2] x) => (float[N,1] y) <float[2,1] w = {1.0, -1.0}>
{
  y = MatMul(x, w)
}
"""

# Random output: the merged model can never reproduce what the original computed.
NOISY = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,2] x) => (float[N,1] y) <float[2,1] w = {1.0, -1.0}>
{
  t = MatMul(x, w)
  r = RandomUniformLike(t)
  y = Add(t, r)
}
"""


@pytest.fixture
def job(tmp_path: Path) -> Path:
    save_text_model(tmp_path / "a.onnx", MODEL)
    save_text_model(tmp_path / "b.onnx", MODEL.replace("1.0, -1.0", "0.5, 2.0"))
    write_mapping(tmp_path / "map.toml", {
        "input": {"columns": ["A", "B", "C"]},
        "models": {"a": {"path": "a.onnx", "columns": ["A", "B"]}, "b": {"path": "b.onnx", "columns": ["C", "B"]}},
    })
    return tmp_path


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir() if p.is_file()}


def test_exit_0_merged_and_verified(cli, job: Path) -> None:
    result = cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx")
    assert result.code == ExitCode.OK
    assert "verified on 256 rows" in result.stdout
    assert result.stderr == ""


def test_exit_1_verification_failed_writes_nothing(cli, job: Path) -> None:
    save_text_model(job / "b.onnx", NOISY)
    before = digests(job)
    result = cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx")
    assert result.code == ExitCode.VERIFY_FAILED
    assert len(result.error_lines) == 1
    assert "merged.onnx" in result.error_lines[0] and "differ" in result.error_lines[0]
    assert "would pass with atol=" in result.error_lines[0]
    assert digests(job) == before
    assert_no_leftovers(job, set(before))


# NaN wherever x @ w < 0: on about half of the random rows, in the original file as in the merged one.
ROOTED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,2] x) => (float[N,1] y) <float[2,1] w = {1.0, -1.0}>
{
  t = MatMul(x, w)
  y = Sqrt(t)
}
"""


def test_exit_1_names_a_model_that_is_not_finite_on_the_random_rows_itself(cli, job: Path) -> None:
    """NaN never counts as a match; the error says which original model gives it and does not offer
    tolerances that could not help."""
    save_text_model(job / "b.onnx", ROOTED)
    result = cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx")
    assert result.code == ExitCode.VERIFY_FAILED and len(result.error_lines) == 1, result.stderr
    line = result.error_lines[0]
    assert "cannot be verified: prediction:" in line and "non-finite values on finite input rows" in line
    assert "where b itself gives NaN or inf" in line
    assert "would pass with" not in line and "--atol" not in result.stderr
    assert "--no-verify" in result.stderr
    assert cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx", "--no-verify").code == ExitCode.OK


def test_exit_1_keeps_an_existing_output(cli, job: Path) -> None:
    (job / "merged.onnx").write_bytes(b"previous")
    save_text_model(job / "b.onnx", NOISY)
    assert cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx").code == 1
    assert (job / "merged.onnx").read_bytes() == b"previous"


def test_no_verify_skips_onnxruntime_check(cli, job: Path) -> None:
    save_text_model(job / "b.onnx", NOISY)
    result = cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx", "--no-verify", "--json")
    assert result.code == 0
    assert result.json["verification"] is None
    assert (job / "merged.onnx").exists()


def test_exit_2_usage_error_is_one_line(cli, job: Path) -> None:
    result = cli("merge", "--map", job / "map.toml", "--out", job / "m.onnx", "--bogus")
    assert result.code == ExitCode.USAGE
    assert len(result.error_lines) == 1 and "--bogus" in result.error_lines[0]
    assert "Traceback" not in result.stderr
    assert cli("merge", "--map", job / "map.toml", "--out", job / "m.onnx", "--rows", "zero").code == 2
    assert cli("merge", "--map", job / "map.toml", "--out", job / "m.onnx", "--weights", "1,x").code == 2


def test_exit_3_bad_model_file(cli, job: Path) -> None:
    (job / "a.onnx").write_bytes(b"\x08\x07garbage that is not a model \xff\xfe")
    result = cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx")
    assert result.code == ExitCode.BAD_INPUT
    assert len(result.error_lines) == 1 and "a.onnx" in result.error_lines[0]


def test_exit_4_incompatible(cli, job: Path) -> None:
    write_mapping(job / "map.toml", {
        "input": {"columns": ["A", "B", "C"]},
        "models": {"a": {"path": "a.onnx", "columns": ["A"]}, "b": {"path": "b.onnx", "columns": ["C", "B"]}},
    })
    result = cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx")
    assert result.code == ExitCode.INCOMPATIBLE
    assert "takes 2 columns but 1 are mapped" in result.error_lines[0]
    assert result.stderr.count("hint:") == 1


@pytest.mark.parametrize("where", ["under-a-file", "is-dir", "equals-input", "equals-mapping"])
def test_exit_5_output_cannot_be_written(cli, job: Path, where: str) -> None:
    out = {"under-a-file": job / "a.onnx" / "no" / "merged.onnx", "is-dir": job, "equals-input": job / "a.onnx",
           "equals-mapping": job / "map.toml"}[where]
    before = digests(job)
    result = cli("merge", "--map", job / "map.toml", "--out", out)
    assert result.code == ExitCode.CANNOT_WRITE
    assert len(result.error_lines) == 1
    assert digests(job) == before


def test_exit_70_internal_error_is_one_line_unless_debug(cli, job: Path, monkeypatch) -> None:
    import merge_cli.splice as splice

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(splice, "route", broken)
    result = cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx")
    assert result.code == ExitCode.INTERNAL
    assert result.error_lines == ["error: internal error: RuntimeError: simulated bug"]
    assert "Traceback" not in result.stderr
    debug = cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx", "--debug")
    assert debug.code == ExitCode.INTERNAL and "Traceback" in debug.stderr


def test_json_is_the_only_thing_on_stdout(cli, job: Path) -> None:
    result = cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx", "--json")
    assert result.code == 0
    doc = json.loads(result.stdout)
    assert doc["status"] == "ok"
    assert doc["verification"]["passed"] is True and doc["verification"]["rows"] == 256
    assert [m["name"] for m in doc["models"]] == ["a", "b"]
    assert doc["outputs"] == [{"name": "prediction", "type": "float", "shape": ["N", 1]}]
    bad = cli("merge", "--map", job / "missing.toml", "--out", job / "merged.onnx", "--json")
    assert bad.code == 3
    assert json.loads(bad.stdout)["error"]["code"] == 3
    assert len(bad.error_lines) == 1


def test_quiet_prints_nothing(cli, job: Path) -> None:
    result = cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx", "--quiet")
    assert result.code == 0 and result.stdout == "" and result.stderr == ""


def test_output_is_byte_identical_across_runs_and_directories(cli, job: Path, tmp_path_factory) -> None:
    first = job / "one.onnx"
    assert cli("merge", "--map", job / "map.toml", "--out", first).code == 0
    copy = tmp_path_factory.mktemp("elsewhere")
    for name in ("a.onnx", "b.onnx", "map.toml"):
        shutil.copy(job / name, copy / name)
    second = copy / "one.onnx"
    assert cli("merge", "--map", copy / "map.toml", "--out", second).code == 0
    assert first.read_bytes() == second.read_bytes()
    # and with the samples, whose weights go through the by-reference copy
    s1, s2 = job / "s1.onnx", job / "s2.onnx"
    assert cli("merge", "--map", SAMPLES / "features.toml", "--out", s1, "--no-verify").code == 0
    assert cli("merge", "--map", SAMPLES / "features.toml", "--out", s2, "--no-verify").code == 0
    assert s1.read_bytes() != first.read_bytes()
    assert hashlib.sha256(s1.read_bytes()).digest() == hashlib.sha256(s2.read_bytes()).digest()


def test_inputs_are_never_modified_and_no_temporary_files_remain(cli, job: Path) -> None:
    before = digests(job)
    assert cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx").code == 0
    after = digests(job)
    assert {k: v for k, v in after.items() if k != "merged.onnx"} == before
    assert_no_leftovers(job, set(before) | {"merged.onnx"})


def test_provenance_metadata(cli, job: Path) -> None:
    assert cli("merge", "--map", job / "map.toml", "--out", job / "merged.onnx").code == 0
    props = {p.key: p.value for p in onnx.load(job / "merged.onnx").metadata_props}
    assert props["merge_models.version"]
    mapping = json.loads(props["merge_models.mapping"])
    assert mapping["models"]["b"]["inputs"] == [{"input": None, "columns": ["C", "B"]}]
    assert mapping["models"]["a"]["path"] == "a.onnx"
    sources = json.loads(props["merge_models.sources"])
    assert [s["model"] for s in sources] == ["a", "b"]
    assert sources[0]["sha256"] == hashlib.sha256((job / "a.onnx").read_bytes()).hexdigest()
    assert props["merge_models.mapping"] == json.dumps(mapping, sort_keys=True, separators=(",", ":"))


def test_external_data_option_writes_weights_beside_the_model(cli, job: Path) -> None:
    big = np.arange(4096, dtype=np.float32).reshape(2, 2048) / 4096
    model = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,2] x) => (float[N,2048] y)
{
  y = MatMul(x, w)
}
""")
    model.graph.initializer.append(onnx.numpy_helper.from_array(big, "w"))
    onnx.save(model, job / "a.onnx")
    onnx.save(model, job / "b.onnx")
    out = job / "merged.onnx"
    result = cli("merge", "--map", job / "map.toml", "--out", out, "--external-data")
    assert result.code == 0, result.stderr
    data = job / "merged.onnx.data"
    assert data.stat().st_size >= 2 * big.nbytes
    assert out.stat().st_size < big.nbytes
    X = rows(8, 3)
    expected = (X[:, [0, 1]] @ big + X[:, [2, 1]] @ big) / 2
    np.testing.assert_allclose(run_model(out, {"features": X})["prediction"], expected, rtol=1e-5, atol=1e-6)


def test_console_script_runs_in_a_subprocess(job: Path) -> None:
    result = run_console("merge", "--map", "map.toml", "--out", "merged.onnx", "--json", cwd=job)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["output"] == "merged.onnx"
    help_text = run_console("merge", "--help")
    assert help_text.code == 0 and "--keep-outputs" in help_text.stdout
    missing = run_console("merge", "--map", "nope.toml", "--out", "x.onnx", cwd=job)
    assert missing.code == 3
    assert missing.stderr.startswith("error: nope.toml: no such mapping file")


def test_exit_5_output_that_is_a_pipe_is_not_replaced(cli, job: Path) -> None:
    """--out /dev/stdout and the like: the rename into place would replace the device or pipe itself."""
    import os
    import stat

    fifo = job / "merged.onnx"
    os.mkfifo(fifo)
    result = cli("merge", "--map", job / "map.toml", "--out", fifo)
    assert result.code == ExitCode.CANNOT_WRITE
    assert "not a regular file" in result.error_lines[0]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
