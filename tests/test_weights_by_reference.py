"""The fast path's promises, checked by what they produce (no timings here; `make bench` measures):
weights go from the inputs to the output byte for byte without onnx.load, provenance hashes are
the sources' sha256 whichever way the output is written, and commands import only what they need."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, make_mlp, rows, run_model, write_mapping
from onnx import numpy_helper


def mlp(path: Path, inputs: int, hidden: int, seed: int, *, external: bool = False, ir: int = 8) -> dict[str, np.ndarray]:
    """conftest's MLP (with biases) saved at `path`; returns its weights by name."""
    model = make_mlp(inputs, hidden, seed, bias=True, ir=ir)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}  # before a save moves them out
    if external:
        onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, path)
    return weights


def pair(tmp_path: Path, *, external: bool = False, ir: int = 8) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    weights = {"a": mlp(tmp_path / "a.onnx", 3, 96, seed=1, external=external, ir=ir),
               "b": mlp(tmp_path / "b.onnx", 4, 80, seed=2, external=external, ir=ir)}
    mapping = write_mapping(tmp_path / "features.json", {
        "version": 1,
        "input": {"columns": [f"c{i}" for i in range(6)]},
        "models": {"a": {"path": "a.onnx", "columns": [0, 2, 4]}, "b": {"path": "b.onnx", "columns": [5, 1, 3, 0]}},
        "combiner": {"kind": "mean"},
    })
    return mapping, weights


@pytest.mark.parametrize("external_in", [False, True], ids=["single-file-in", "external-data-in"])
@pytest.mark.parametrize("external_out", [False, True], ids=["single-file-out", "external-data-out"])
def test_weights_copied_byte_for_byte_and_provenance_hashes_the_sources(cli, tmp_path: Path, external_in: bool,
                                                                         external_out: bool) -> None:
    mapping, weights = pair(tmp_path, external=external_in)
    out = tmp_path / "out" / "merged.onnx"
    out.parent.mkdir()
    result = cli("merge", "--map", mapping, "--out", out, "--json", *(["--external-data"] if external_out else []))
    assert result.code == 0, result.stderr
    assert result.json["verification"]["passed"] is True
    assert (out.parent / "merged.onnx.data").exists() == external_out

    merged = onnx.load(out)
    initializers = {t.name: numpy_helper.to_array(t) for t in merged.graph.initializer}
    for model, tensors in weights.items():
        for name, value in tensors.items():
            np.testing.assert_array_equal(initializers[f"{model}/{name}"], value)
    props = {p.key: p.value for p in merged.metadata_props}
    sources = {s["model"]: s for s in json.loads(props["merge_models.sources"])}
    for model in ("a", "b"):
        source = tmp_path / f"{model}.onnx"
        assert sources[model]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert sources[model]["bytes"] == source.stat().st_size

    x = rows(64, 6)
    a = run_model(tmp_path / "a.onnx", {"x": x[:, [0, 2, 4]]})["y"]
    b = run_model(tmp_path / "b.onnx", {"x": x[:, [5, 1, 3, 0]]})["y"]
    np.testing.assert_allclose(run_model(out, {"features": x})["prediction"], (a + b) / 2, rtol=1e-5, atol=1e-5)


def test_same_inputs_give_the_same_bytes_whichever_way_they_are_written(cli, tmp_path: Path) -> None:
    mapping, _ = pair(tmp_path)
    outputs = []
    for i in range(2):
        out = tmp_path / f"merged{i}.onnx"
        assert cli("merge", "--map", mapping, "--out", out, "--no-verify").code == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def run_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_merge_never_calls_onnx_load_on_the_inputs(tmp_path: Path) -> None:
    """onnx.load would parse every weight into Python bytes; the merge must read the skeleton only."""
    out = tmp_path / "merged.onnx"
    proc = run_python(f"""
        import onnx, onnx.external_data_helper
        def refuse(*args, **kwargs):
            raise AssertionError("onnx.load was called")
        onnx.load = onnx.load_model = onnx.load_model_from_string = refuse
        onnx.external_data_helper.load_external_data_for_model = refuse
        from merge_cli.cli import main
        code = main(["merge", "--map", {str(SAMPLES / 'features.toml')!r}, "--out", {str(out)!r}, "--no-verify", "-q"])
        raise SystemExit(code)
    """)
    assert proc.returncode == 0, proc.stderr
    assert run_model(out, {"features": rows(8, 30)})["probabilities"].shape == (8, 2)


@pytest.mark.parametrize("ir", [8, 10])
def test_merge_without_verification_does_not_import_onnxruntime(tmp_path: Path, ir: int) -> None:
    mapping, _ = pair(tmp_path, ir=ir)
    proc = run_python(f"""
        import sys
        from merge_cli.cli import main
        code = main(["merge", "--map", {str(mapping)!r}, "--out", {str(tmp_path / 'm.onnx')!r}, "--no-verify", "-q"])
        print(sorted(m for m in sys.modules if m.split(".")[0] == "onnxruntime"))
        raise SystemExit(code)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert onnx.load(tmp_path / "m.onnx").ir_version == ir


@pytest.mark.parametrize("args", [["--help"], ["merge", "--help"], ["--version"]])
def test_help_imports_neither_onnx_nor_onnxruntime_nor_numpy(args: list[str]) -> None:
    proc = run_python(f"""
        import sys
        from merge_cli.cli import main
        code = main({args!r})
        print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxruntime", "numpy")))
        raise SystemExit(code)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []"
