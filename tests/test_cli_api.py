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
    assert caught.value.code == ExitCode.USAGE and "--weights" in caught.value.message
    with pytest.raises(MergeError) as caught:
        merge(tmp_path / "nope.toml", tmp_path / "m.onnx")
    assert caught.value.code == ExitCode.BAD_INPUT
    assert list(tmp_path.iterdir()) == []
