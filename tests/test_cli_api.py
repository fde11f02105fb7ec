"""The Python API: `from merge_cli import merge`, the command line's options as keyword arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES, rows, run_model

from merge_cli import ExitCode, MergeError, merge


def test_merge_returns_the_result_object(tmp_path: Path) -> None:
    steps: list[str] = []
    out = tmp_path / "merged.onnx"
    result = merge(SAMPLES / "features.toml", out, rows=64, progress=steps.append)
    assert result.output == out and result.files == [out] and out.is_file()
    assert result.verification is not None and result.verification.passed and result.verification.rows == 64
    assert [m.name for m in result.models] == ["a", "b"]
    assert result.to_dict()["status"] == "ok"
    assert {"load", "convert", "write", "verify"} <= set(steps)


def test_options_are_the_command_lines(tmp_path: Path) -> None:
    out = tmp_path / "weighted.onnx"
    result = merge(str(SAMPLES / "features.toml"), str(out), [SAMPLES / "model_a.onnx", SAMPLES / "model_b.onnx"],
                   combiner="weighted", weights=[0.7, 0.3], keep_outputs=True, verify=False)
    assert result.verification is None and result.combiner == "weighted"
    X = rows(32, 30)
    got = run_model(out, {"features": X})
    a = run_model(SAMPLES / "model_a.onnx", {"X": X[:, :15]})["probabilities"]
    b = run_model(SAMPLES / "model_b.onnx", {"X": X[:, 15:]})["probabilities"]
    np.testing.assert_allclose(got["probabilities"], 0.7 * a + 0.3 * b, atol=1e-6)
    np.testing.assert_allclose(got["a/probabilities"], a, atol=0)


def test_failures_raise_merge_error_with_the_exit_code(tmp_path: Path) -> None:
    with pytest.raises(MergeError) as caught:
        merge(SAMPLES / "features.toml", tmp_path / "missing" / "m.onnx", weights=[1.0])
    assert caught.value.code == ExitCode.USAGE and caught.value.message == "weights has 1 value for 2 models"
    with pytest.raises(MergeError) as caught:
        merge(tmp_path / "nope.toml", tmp_path / "m.onnx")
    assert caught.value.code == ExitCode.BAD_INPUT
    assert list(tmp_path.iterdir()) == []


def test_weights_as_text_and_errors_in_python_words(tmp_path: Path) -> None:
    out = tmp_path / "weighted.onnx"
    result = merge(SAMPLES / "features.toml", out, combiner="weighted", weights="0.7,0.3", rows=16)
    assert result.verification is not None and result.verification.passed
    with pytest.raises(MergeError) as caught:
        merge(SAMPLES / "features.toml", out, combiner="weighted", weights="0.2,0.3,0.5")
    assert caught.value.code == ExitCode.USAGE and caught.value.message == "weights has 3 values for 2 models"
    with pytest.raises(MergeError) as caught:
        merge(SAMPLES / "features.toml", out, rows=0)
    assert caught.value.message == "rows must be between 1 and 1000000, not 0" and "--" not in str(caught.value.hint)
    with pytest.raises(MergeError) as caught:
        merge(SAMPLES / "features.toml", out, weights="0.5,x")
    assert "--" not in caught.value.message + str(caught.value.hint) and "'x' is not a number" in caught.value.message


def test_data_and_target_are_arguments(tmp_path: Path) -> None:
    result = merge(SAMPLES / "features.toml", tmp_path / "m.onnx", data=SAMPLES / "rows.csv", target="target", rows=8)
    assert result.scores is not None and result.verification is not None
    assert result.verification.rows > 8


def test_the_public_names_are_all_dir_shows() -> None:
    import merge_cli

    assert dir(merge_cli) == sorted(["ExitCode", "MergeError", "MergeRequest", "MergeResult", "__version__",
                                     "inspect", "merge", "verify"])


def test_a_request_is_built_once_and_verify_rebuilds_from_the_file(tmp_path: Path) -> None:
    from merge_cli import MergeRequest, inspect, verify

    request = MergeRequest(SAMPLES / "features.toml", tmp_path / "m.onnx", rows=32)
    assert merge(request).output == request.out
    checked = verify(request.out, rows=32, sources_dir=SAMPLES)
    assert checked.passed and [s.model for s in checked.sources] == ["a", "b"]
    assert inspect(request.out).to_dict()["inputs"][0]["name"] == "features"
