"""Mapped weights given back while onnxruntime runs: pages dropped, bytes unchanged, merges still verified."""

from __future__ import annotations

import mmap
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_model, write_mapping
from onnx import TensorProto, helper, numpy_helper, save

from merge_cli.residency import _madvise, drop_mapped, pages_given_back
from merge_cli.runtime import MAPPED_FROM

linux_only = pytest.mark.skipif(_madvise() is None, reason="madvise and /proc/self/maps are Linux's")


def resident_kib(path: Path) -> int:
    """The resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
                inside = len(head) == 6 and head[5] == os.path.realpath(path)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


@linux_only
def test_dropping_a_private_mapping_gives_its_pages_back_and_keeps_its_bytes(tmp_path: Path) -> None:
    weights = np.random.default_rng(0).standard_normal(1 << 19).astype(np.float32)  # 2 MiB
    path = tmp_path / "w.bin"
    weights.tofile(path)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    view = np.frombuffer(mapped, dtype=np.float32)
    assert float(view.sum()) == pytest.approx(float(weights.sum()), rel=1e-5)  # every page touched
    assert resident_kib(path) >= 2048

    madvise = _madvise()
    assert madvise is not None
    assert drop_mapped({os.path.realpath(path)}, madvise) >= 2 << 20
    assert resident_kib(path) == 0
    np.testing.assert_array_equal(view, weights)  # faulted back in from the file, the same bytes
    assert drop_mapped({str(tmp_path / "other.bin")}, madvise) == 0  # other files' mappings are left alone
    del view
    mapped.close()


@linux_only
def test_a_mapping_read_part_way_or_written_to_is_left_alone(tmp_path: Path) -> None:
    """Only a mapping read through (every page resident) and never written is dropped: one still being
    read would fault its pages back in, and a written page would lose what was written."""
    path = tmp_path / "w.bin"
    np.zeros(1 << 23, dtype=np.float32).tofile(path)  # 32 MiB: more than the kernel maps around one fault
    madvise = _madvise()
    assert madvise is not None
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    view = np.frombuffer(mapped, dtype=np.float32)
    assert view[:1024].sum() == 0  # its first page read
    assert drop_mapped({os.path.realpath(path)}, madvise) == 0 and resident_kib(path) > 0
    assert view.sum() == 0  # read through
    mapped[:4] = np.float32(7).tobytes()  # one page written: a private copy of it
    assert drop_mapped({os.path.realpath(path)}, madvise) == 0
    assert view[0] == 7 and resident_kib(path) > 16 << 10  # (the kernel may unmap the rest of a large folio it split)
    del view
    mapped.close()


@linux_only
def test_pages_are_given_back_while_the_block_runs(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    np.ones(1 << 19, dtype=np.float32).tofile(path)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    view = np.frombuffer(mapped, dtype=np.float32)
    with pages_given_back([path]):
        assert view.sum() == 1 << 19
        for _ in range(500):  # the dropping thread passes every EVERY seconds: wait for one, however loaded the machine
            if resident_kib(path) == 0:
                break
            time.sleep(0.01)
        assert resident_kib(path) == 0
    del view
    mapped.close()


def mlp_file(path: Path, inputs: int, hidden: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((inputs, hidden)) / np.sqrt(inputs)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    w3 = (rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("MatMul", ["r2", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                              [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.skipif(sys.platform != "linux", reason="the pages are given back on Linux only")
def test_a_merge_of_mapped_weights_verifies_with_its_pages_given_back(tmp_path: Path, cli) -> None:
    """Parts heavy enough to be memory-mapped (> MAPPED_FROM): verified as they run, pages dropped meanwhile."""
    hidden = 2112  # 2112 x 2112 float32 = 17.8 MB per part
    mlp_file(tmp_path / "a.onnx", 3, hidden, 1)
    mlp_file(tmp_path / "b.onnx", 3, hidden, 2)
    assert (tmp_path / "a.onnx").stat().st_size > MAPPED_FROM
    mapping = write_mapping(tmp_path / "m.toml", {
        "version": 1, "input": {"columns": ["a", "b", "c", "d", "e", "f"]},
        "models": {"a": {"path": "a.onnx", "columns": ["a", "b", "c"]}, "b": {"path": "b.onnx", "columns": ["d", "e", "f"]}},
        "combiner": {"kind": "mean"}})
    out = tmp_path / "out.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--json")
    assert result.code == 0, result.stderr
    assert result.json["verification"]["passed"] and result.json["verification"]["max_abs_error"] == 0.0
    x = np.random.default_rng(3).standard_normal((5, 6)).astype(np.float32)
    a = run_model(tmp_path / "a.onnx", {"x": x[:, :3]})["y"]
    b = run_model(tmp_path / "b.onnx", {"x": x[:, 3:]})["y"]
    np.testing.assert_allclose(run_model(out, {"features": x})["prediction"], (a + b) / 2, rtol=1e-6)
