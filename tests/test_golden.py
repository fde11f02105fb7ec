"""The merged graph as text (onnx.printer), so changes to what a merge produces show up in review diffs.

Regenerate after an intended change: UPDATE_GOLDEN=1 pytest tests/test_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from conftest import IF_OUTER_SCOPE, REDUCESUM_11, REGRESSOR_13, save_text_model, write_mapping

GOLDEN = Path(__file__).parent / "golden" / "merged_small.txt"


def test_merged_graph_text_matches_golden(cli, tmp_path: Path) -> None:
    save_text_model(tmp_path / "lin.onnx", REGRESSOR_13)
    save_text_model(tmp_path / "branch.onnx", IF_OUTER_SCOPE)
    save_text_model(tmp_path / "sq.onnx", REDUCESUM_11)
    mapping = write_mapping(tmp_path / "map.toml", {
        "input": {"columns": ["A", "B", "C", "D"]},
        "models": {"lin": {"path": "lin.onnx", "columns": ["A", "B"]},
                   "branch": {"path": "branch.onnx", "columns": ["D", "A"]},
                   "sq": {"path": "sq.onnx", "columns": ["B", "C", "D"]}},
        "combiner": {"kind": "concat"},
    })
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out)
    assert result.code == 0, result.stderr
    model = onnx.load(out)
    del model.metadata_props[:]  # versions and hashes: covered by test_cli
    text = onnx.printer.to_text(model) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
