"""Hostile inputs that are not errors (issue 12): huge weights still combine, file text cannot drive
the terminal, --json is strict JSON, and killed or signalled merges leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bad_inputs import make_regressor, mapping_doc, save, two_regressors
from conftest import rows, run_model, write_mapping

from merge_cli.cli import main
from merge_cli.errors import ExitCode


@pytest.mark.parametrize(("flags", "weight"), [(["--weights", "1e308,1e308", "--combiner", "weighted"], None),
                                               (["--combiner", "weighted"], 1e308),
                                               (["--weights", "1e308,1e-300", "--combiner", "weighted"], None)])
def test_huge_weights_normalise_without_overflow(flags: list[str], weight: float | None, tmp_path: Path) -> None:
    """1e308 + 1e308 is inf: dividing by that sum made every weight 0 and the model output zeros."""
    doc = mapping_doc()
    if weight is not None:
        doc["models"]["a"]["weight"] = doc["models"]["b"]["weight"] = weight
    args = two_regressors(tmp_path, a=make_regressor(weight=0.5), b=make_regressor(weight=-1.0), doc=doc)
    assert main([*args, *flags, "--quiet"]) == ExitCode.OK
    x = rows(8, 4)
    got = run_model(tmp_path / "merged.onnx", {"features": x})["prediction"]
    a, b = x[:, :2].sum(1, keepdims=True) * 0.5, -x[:, 2:].sum(1, keepdims=True)
    want = a if "1e-300" in flags[1] else (a + b) / 2
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(got).max() > 0


def test_vote_with_huge_weights_still_votes(tmp_path: Path) -> None:
    doc = mapping_doc()
    for m, w in (("a", 1e308), ("b", 1e308)):
        doc["models"][m] |= {"task": "classification", "classes": [0, 1], "weight": w}
    doc["combiner"]["kind"] = "vote"
    args = two_regressors(tmp_path, a=make_regressor(out_dims=[2]), b=make_regressor(out_dims=[2], weight=-1.0),
                          doc=doc)
    assert main([*args, "--quiet"]) == ExitCode.OK
    x = rows(16, 4)
    got = run_model(tmp_path / "merged.onnx", {"features": x})
    scores = {n: v for n, v in got.items() if v.dtype.kind == "f"}
    assert scores and all(np.abs(v).max() > 0 for v in scores.values()), got


ESC = "\x1b[2J\x1b]0;owned\x07"


def test_inspect_escapes_control_characters_from_the_model(tmp_path: Path,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    model = make_regressor(out_name=f"y{ESC}")
    model.producer_name = f"evil{ESC}\nforged: line"
    save(model, tmp_path / "a.onnx")
    assert main(["inspect", str(tmp_path / "a.onnx")]) == ExitCode.OK
    out = capfd.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "forged: line" in out and not any(line.startswith("forged") for line in out.splitlines())
    assert "\\x1b[2J" in out  # shown, escaped


def test_merge_summary_escapes_column_names(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    doc = mapping_doc()
    doc["input"]["columns"] = [f"A{ESC}", "B", "C", "D"]
    doc["models"]["a"]["columns"] = [0, 1]
    write_mapping(tmp_path / "map.toml", doc)
    save(make_regressor(), tmp_path / "a.onnx")
    save(make_regressor(), tmp_path / "b.onnx")
    assert main(["merge", "--map", str(tmp_path / "map.toml"), "--out", str(tmp_path / "m.onnx")]) == ExitCode.OK
    captured = capfd.readouterr()
    assert "\x1b" not in captured.out + captured.err
    assert "A\\x1b[2J" in captured.out
