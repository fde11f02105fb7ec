"""External data, safely in and safely out: loading it, refusing what escapes, >2 GB outputs, atomic files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from bad_inputs import (
    HIDDEN,
    make_regressor,
    mapping_doc,
    save,
    save_external,
    set_external,
    write_doc,
)
from conftest import make_mlp, rows, run_model
from onnx import TensorProto, helper, numpy_helper

import merge_cli
from merge_cli import model_io, wire, writing
from merge_cli.errors import ExitCode, MergeError
from merge_cli.model_io import check_model, load_model


def expected_mean(d: Path, a: str = "a.onnx", b: str = "b.onnx", n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Rows and what the merged model must give for them: the mean of the original files run by onnxruntime."""
    x = rows(n, 4)
    ya = run_model(d / a, {"x": x[:, :2]})["y"]
    yb = run_model(d / b, {"x": x[:, 2:]})["y"]
    return x, (ya + yb) / 2


def two_external_mlps(d: Path) -> Path:
    """a.onnx keeps both weights in weights/a.bin, b.onnx one file per weight: both are ordinary onnx.save output."""
    (d / "weights").mkdir()
    save_external(make_mlp(seed=1), d / "a.onnx", "weights/a.bin")
    onnx.save_model(make_mlp(seed=2), d / "b.onnx", save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=1024)
    return write_doc(d / "map.toml", mapping_doc())


def test_models_with_external_data_merge_into_one_self_contained_file(cli, tmp_path: Path) -> None:
    two_external_mlps(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"W1", "W2", "weights"}  # b's weights: one file each
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", tmp_path / "map.toml", "--out", out, "--json")
    assert result.code == 0, result.stderr
    x, want = expected_mean(tmp_path)
    # the weights were copied in: the merged file runs on its own, far from the data files
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out, alone / "merged.onnx")
    np.testing.assert_allclose(run_model(alone / "merged.onnx", {"features": x})["prediction"], want, rtol=1e-5, atol=1e-6)
    assert [f["path"] for f in result.json["files"]] == [str(out)]


def test_relative_paths_never_resolve_against_an_empty_base_directory(cli, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With the model given as a bare file name its folder is ""; onnx 1.23 skips its symlink check then."""
    save_external(make_mlp(), tmp_path / "a.onnx", "a.bin")
    save(make_regressor(weight=-1.0), tmp_path / "b.onnx")
    write_doc(tmp_path / "map.toml", mapping_doc())
    monkeypatch.chdir(tmp_path)
    assert cli("merge", "a.onnx", "b.onnx", "--map", "map.toml", "--out", "merged.onnx").code == 0
    os.remove("merged.onnx")
    os.rename("a.bin", "real.bin")
    os.symlink("real.bin", "a.bin")
    result = cli("merge", "a.onnx", "b.onnx", "--map", "map.toml", "--out", "merged.onnx")
    assert result.code == ExitCode.BAD_INPUT
    assert result.error_lines == ["error: a.onnx: tensor 'W1': external data location 'a.bin' passes through a "
                                  "symbolic link"]
    assert not Path("merged.onnx").exists()


def test_sparse_constant_and_subgraph_constants_with_external_data_are_read_safely(cli, tmp_path: Path) -> None:
    """Tensors outside the main initializers (onnx's loader skips sparse ones) are checked, then inlined."""
    values = np.linspace(-1, 1, HIDDEN).astype(np.float32)
    (tmp_path / "w.bin").write_bytes(b"\0" * 64 + values.tobytes() + np.full(HIDDEN, 0.5, np.float32).tobytes())
    sparse_values = numpy_helper.from_array(values, "S")
    set_external(sparse_values, location="w.bin", offset="64", length=str(values.nbytes))
    indices = numpy_helper.from_array(np.arange(HIDDEN, dtype=np.int64) * 2, "S_indices")  # row 0, even columns
    branch_const = numpy_helper.from_array(np.zeros((1, HIDDEN), np.float32), "C")
    set_external(branch_const, location="w.bin", offset=str(64 + values.nbytes), length=str(values.nbytes))
    branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=branch_const)], "then", [],
                               [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, HIDDEN])])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["W"], sparse_value=helper.make_sparse_tensor(sparse_values, indices,
                                                                                          [2, HIDDEN])),
         helper.make_node("If", ["cond"], ["c"], then_branch=branch, else_branch=branch),
         helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("Mul", ["h", "c"], ["hc"]),
         helper.make_node("ReduceSum", ["hc", "axes"], ["y"], keepdims=1)],
        "sparse", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(np.array(True), "cond"), numpy_helper.from_array(np.array([1]), "axes")])
    save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "a.onnx")
    save(make_regressor(weight=-1.0), tmp_path / "b.onnx")
    write_doc(tmp_path / "map.toml", mapping_doc())

    result = cli("merge", "--map", tmp_path / "map.toml", "--out", tmp_path / "merged.onnx")
    assert result.code == 0, result.stderr
    x, want = expected_mean(tmp_path)
    assert np.all(want != 0)
    np.testing.assert_allclose(run_model(tmp_path / "merged.onnx", {"features": x})["prediction"], want, rtol=1e-5,
                               atol=1e-6)


def test_sparse_initializer_with_external_values_is_checked_and_inlined(tmp_path: Path) -> None:
    values = np.arange(1, 301, dtype=np.float32)
    (tmp_path / "s.bin").write_bytes(values.tobytes())
    sparse_values = numpy_helper.from_array(values, "S")
    set_external(sparse_values, location="s.bin", length=str(values.nbytes))
    model = make_regressor()
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(
        sparse_values, numpy_helper.from_array(np.arange(300, dtype=np.int64), "S_indices"), [1, 300]))
    save(model, tmp_path / "a.onnx")
    loaded = load_model(tmp_path / "a.onnx")
    inlined = loaded.proto.graph.sparse_initializer[0].values
    assert inlined.data_location == TensorProto.DEFAULT and not inlined.external_data
    np.testing.assert_array_equal(numpy_helper.to_array(inlined), values)
    assert loaded.data_files == [(tmp_path / "s.bin").resolve()]
    (tmp_path / "s.bin").unlink()
    (tmp_path / "s.bin").symlink_to("/etc/hostname")
    with pytest.raises(MergeError, match="symbolic link"):
        load_model(tmp_path / "a.onnx")


def test_weights_totalling_3_gb_are_loaded_and_checked_without_reading_them(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx.checker runs on a file whose weights point at an empty placeholder, so size never matters."""
    n = 3 * 2**30 // 4 // 2  # two float tensors of 1.5 GiB each, in one sparse file (no real disk used)
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(2 * n * 4)
    model = make_regressor()
    for i in range(2):
        big = TensorProto(name=f"big{i}", data_type=TensorProto.FLOAT, dims=[n])
        set_external(big, location="big.bin", offset=str(i * n * 4), length=str(n * 4))
        model.graph.initializer.append(big)
        model.graph.node.append(helper.make_node("Identity", [f"big{i}"], [f"unused{i}"]))
    save(model, tmp_path / "a.onnx")

    def no_reading(*args: object) -> bytes:
        raise AssertionError("weights were read")

    monkeypatch.setattr(model_io, "read_range", no_reading)
    monkeypatch.setattr(wire, "copy_range", no_reading)
    loaded = load_model(tmp_path / "a.onnx")
    assert wire.payload_bytes(loaded.proto) == 2 * n * 4 > 2**31
    check_model(loaded.proto, loaded.path, full=True)


def test_a_file_over_2_gb_is_refused_by_its_size_before_it_is_read(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "huge.onnx", "wb") as f:
        f.truncate(2**31)

    def no_reading(*args: object) -> bytes:
        raise AssertionError("the file was read")

    monkeypatch.setattr(model_io, "read_skeleton", no_reading)
    with pytest.raises(MergeError, match="2.0 GiB; one protobuf file cannot exceed 2 GiB") as e:
        load_model(tmp_path / "huge.onnx")
    assert e.value.code == ExitCode.BAD_INPUT and e.value.hint


def data_entries(model_path: Path) -> list[tuple[str, str, int, int]]:
    model = onnx.load(model_path, load_external_data=False)
    out = []
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            out.append((t.name, info["location"], int(info.get("offset", 0)), int(info["length"])))
    return out


def test_external_data_replaces_a_stale_data_file_and_never_appends(cli, tmp_path: Path) -> None:
    two_external_mlps(tmp_path)
    out, data = tmp_path / "merged.onnx", tmp_path / "merged.onnx.data"
    stale = b"stale bytes from an older merge " * 100_000
    data.write_bytes(stale)
    os.link(data, tmp_path / "old.data")  # the old file itself must not be written to
    result = cli("merge", "--map", tmp_path / "map.toml", "--out", out, "--external-data", "--json")
    assert result.code == 0, result.stderr
    assert (tmp_path / "old.data").read_bytes() == stale
    entries = data_entries(out)
    assert {name for name, *_ in entries} == {"a/W1", "a/W2", "b/W1", "b/W2"}
    assert {location for _, location, *_ in entries} == {"merged.onnx.data"}
    assert all(offset % 4096 == 0 for _, _, offset, _ in entries)
    assert data.stat().st_size == max(offset + length for *_, offset, length in entries)
    x, want = expected_mean(tmp_path)
    np.testing.assert_allclose(run_model(out, {"features": x})["prediction"], want, rtol=1e-5, atol=1e-6)
    assert [f["path"] for f in result.json["files"]] == [str(out), str(data)]


def test_outputs_over_2_gb_switch_to_external_data_on_their_own(cli, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The switch, with protobuf's limit lowered to just under this merge's size (a real 2.4 GB run is in the
    README's figures; it takes 15-24 s, 2.4 GB of disk and 2.4 GB of memory: too much for every CI run)."""
    two_external_mlps(tmp_path)
    single = tmp_path / "single.onnx"
    assert cli("merge", "--map", tmp_path / "map.toml", "--out", single).code == 0
    size = single.stat().st_size
    assert not (tmp_path / "single.onnx.data").exists()

    # the size estimate (skeleton + payloads) is a little above the file's size: 4 KiB over it stays one file
    monkeypatch.setattr(writing, "PROTOBUF_LIMIT", writing.EXTERNAL_MARGIN + size + 4096)
    assert cli("merge", "--map", tmp_path / "map.toml", "--out", tmp_path / "still.onnx").code == 0
    assert not (tmp_path / "still.onnx.data").exists()

    monkeypatch.setattr(writing, "PROTOBUF_LIMIT", writing.EXTERNAL_MARGIN + size - 1)  # just under: split
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", tmp_path / "map.toml", "--out", out, "--json")
    assert result.code == 0, result.stderr
    assert [f["path"] for f in result.json["files"]] == [str(out), str(out) + ".data"]
    assert out.stat().st_size < 4096 < (tmp_path / "merged.onnx.data").stat().st_size
    assert {loc for _, loc, *_ in data_entries(out)} == {"merged.onnx.data"}
    x, want = expected_mean(tmp_path)
    np.testing.assert_allclose(run_model(out, {"features": x})["prediction"], want, rtol=1e-5, atol=1e-6)


def test_output_files_appear_only_after_verification(tmp_path: Path) -> None:
    two_external_mlps(tmp_path)
    out = tmp_path / "merged.onnx"
    out.write_bytes(b"the previous merge")
    (tmp_path / "merged.onnx.data").write_bytes(b"the previous weights")
    seen: list[set[str]] = []

    def watching(stage: str) -> None:  # called as each stage starts: at "verify" the files are staged
        if stage != "verify":
            return
        seen.append({p.name for p in tmp_path.iterdir()})
        assert out.read_bytes() == b"the previous merge"
        assert (tmp_path / "merged.onnx.data").read_bytes() == b"the previous weights"
        staged = [p for p in tmp_path.iterdir() if p.name.startswith(".merged.onnx.")]
        assert len(staged) == 1 and {p.name for p in staged[0].iterdir()} == {"merged.onnx", "merged.onnx.data"}

    merge_cli.merge(tmp_path / "map.toml", out, external_data=True, progress=watching)
    assert len(seen) == 1
    staging = [name for name in seen[0] if name.startswith(".merged.onnx.")]
    assert len(staging) == 1 and staging[0].endswith(".tmp")
    assert not any(p.name.startswith(".merged.onnx.") for p in tmp_path.iterdir())
    x, want = expected_mean(tmp_path)
    np.testing.assert_allclose(run_model(out, {"features": x})["prediction"], want, rtol=1e-5, atol=1e-6)


def test_an_output_data_file_that_is_a_directory_stops_the_commit_before_anything_moves(
        tmp_path: Path) -> None:
    staged = tmp_path / "stage"
    staged.mkdir()
    for name in ("m.onnx", "m.onnx.data"):
        (staged / name).write_bytes(b"new")
    (tmp_path / "m.onnx").write_bytes(b"old")
    (tmp_path / "m.onnx.data").mkdir()
    with pytest.raises(MergeError, match="is a directory") as e:
        writing.commit([staged / "m.onnx", staged / "m.onnx.data"], tmp_path / "m.onnx")
    assert e.value.code == ExitCode.CANNOT_WRITE
    assert (tmp_path / "m.onnx").read_bytes() == b"old"
    assert sorted(p.name for p in staged.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_mlp_fixture_weights_are_read_by_reference(tmp_path: Path) -> None:
    """The bad-input cases rely on make_mlp's weights being large enough to be kept by reference."""
    save(make_mlp(), tmp_path / "a.onnx")
    loaded = load_model(tmp_path / "a.onnx")
    assert sum(wire.ref_of(t) is not None for t in loaded.proto.graph.initializer) == 2
    assert wire.payload_bytes(loaded.proto) == (2 * HIDDEN + HIDDEN) * 4


def test_a_weight_reference_is_a_value_the_tensor_carries_and_a_file_cannot_forge_one(tmp_path: Path) -> None:
    """The skeleton's tensors point at their bytes themselves (wire.ref_of reads path, offset, length back);
    a file that writes such a location (without this process's secret) is refused like any bad location."""
    model = make_mlp()
    save(model, tmp_path / "a.onnx")
    loaded = load_model(tmp_path / "a.onnx")
    refs = [wire.ref_of(t) for t in loaded.proto.graph.initializer]
    assert all(r is not None and r.path == str(tmp_path / "a.onnx") for r in refs)
    data = (tmp_path / "a.onnx").read_bytes()
    for tensor, ref in zip(model.graph.initializer, refs, strict=True):
        assert ref is not None and data[ref.offset:ref.offset + ref.length] == tensor.raw_data
    forged = make_mlp()
    target = tmp_path / "secret.bin"
    target.write_bytes(b"\0" * 4 * 2 * HIDDEN)
    set_external(forged.graph.initializer[0], location="\0merge-models-0123456789abcdef:" + str(target).encode().hex(),
                 length=str(4 * 2 * HIDDEN))
    save(forged, tmp_path / "forged.onnx")
    with pytest.raises(MergeError, match="NUL byte"):
        load_model(tmp_path / "forged.onnx")
