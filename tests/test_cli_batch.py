"""samples/batch: a Makefile pattern rule merges every pair under `make -j2`; a second run does nothing,
and clean runs give byte-identical files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES, rows, run_model

BATCH = SAMPLES / "batch"
MERGE = Path(sys.executable).with_name("merge-models")


def make(folder: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-C", str(folder), "-j2", f"MERGE={MERGE}", *targets], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    """A clean copy of samples/batch (without merged outputs)."""
    if shutil.which("make") is None:
        pytest.fail("make is needed for the batch sample")
    return Path(shutil.copytree(BATCH, tmp_path / "batch", ignore=shutil.ignore_patterns("merged", "__pycache__")))


def pairs() -> list[str]:
    return sorted(p.parent.name for p in BATCH.glob("*/features.toml"))


def expected(folder: Path, X: np.ndarray) -> np.ndarray:
    """What the merged model must compute: the parts run alone, combined as the mapping says, in numpy."""
    mapping = tomllib.loads((folder / "features.toml").read_text())
    columns = mapping["input"]["columns"]
    heads, weights = [], []
    for name in ("a", "b"):
        spec = mapping["models"][name]
        outputs = run_model(folder / spec["path"], {"X": X[:, [columns.index(c) for c in spec["columns"]]]})
        heads.append(outputs["probabilities"] if "probabilities" in outputs else outputs["variable"])
        weights.append(spec.get("weight", 1.0))
    w = np.array(weights) / sum(weights) if mapping["combiner"]["kind"] == "weighted" else np.full(2, 0.5)
    return w[0] * heads[0] + w[1] * heads[1]


def test_make_merges_all_pairs_once_and_identically(batch: Path) -> None:
    assert len(pairs()) >= 3
    first = make(batch)
    assert first.returncode == 0, first.stderr
    outputs = {p: (batch / "merged" / f"{p}.onnx") for p in pairs()}
    assert all(f.is_file() for f in outputs.values())
    assert first.stdout.count("merge-models merge") == len(outputs)
    assert first.stderr == ""

    for name, path in outputs.items():
        width = len(tomllib.loads((batch / name / "features.toml").read_text())["input"]["columns"])
        X = rows(40, width, seed=3) * 5
        got = run_model(path, {"features": X})
        value = got["probabilities"] if "probabilities" in got else got["prediction"]
        np.testing.assert_allclose(value, expected(batch / name, X), rtol=1e-5, atol=1e-5)

    again = make(batch)
    assert again.returncode == 0
    assert "Nothing to be done for 'all'" in again.stdout and "merge-models merge" not in again.stdout
    assert subprocess.run(["make", "-C", str(batch), "-q", f"MERGE={MERGE}"]).returncode == 0  # up to date

    contents = {name: path.read_bytes() for name, path in outputs.items()}
    assert make(batch, "clean").returncode == 0 and not (batch / "merged").exists()
    rerun = make(batch)
    assert rerun.returncode == 0, rerun.stderr
    assert {name: path.read_bytes() for name, path in outputs.items()} == contents  # byte-identical

    verified = make(batch, "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.count("merge-models verify") == len(outputs)


def test_a_changed_model_is_merged_again_and_a_bad_one_fails_the_build(batch: Path) -> None:
    assert make(batch).returncode == 0
    name = pairs()[0]
    model = batch / name / "a.onnx"
    later = (batch / "merged" / f"{name}.onnx").stat().st_mtime + 10
    os.utime(model, (later, later))  # retrained: newer than its merged file
    rebuilt = make(batch)
    assert rebuilt.returncode == 0
    assert rebuilt.stdout.count("merge-models merge") == 1 and f"merged/{name}.onnx" in rebuilt.stdout
    model.write_bytes(b"not a model")
    broken = make(batch)
    assert broken.returncode != 0
    assert f"error: {name}/a.onnx: " in broken.stderr
    assert (batch / "merged" / f"{name}.onnx").is_file()  # the previous merge is left as it was


def test_batch_models_are_small() -> None:
    for model in BATCH.glob("*/*.onnx"):
        assert model.stat().st_size < 1_000_000
