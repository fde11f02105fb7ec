"""Hostile inputs that are not errors (issue 12): huge weights still combine, file text cannot drive
the terminal, --json is strict JSON, and killed or signalled merges leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from bad_inputs import external_mlp, make_regressor, mapping_doc, save, two_regressors, with_a
from conftest import rows, run_model, write_mapping
from hostile_inputs import ml5_tree
from test_interrupt import EXE, start, wait_for

from merge_cli.cli import main
from merge_cli.errors import ExitCode
from merge_cli.naming import unique_name


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


@pytest.mark.parametrize("dim", [0, 1])
def test_a_negative_declared_size_is_any_size(dim: int, tmp_path: Path) -> None:
    """Some converters write -1 for a dynamic size: read as unnamed. Left in, the merged graph's checker
    compared it with the routed width and blamed the output file (exit 3)."""
    a = make_regressor(weight=0.5)
    a.graph.input[0].type.tensor_type.shape.dim[dim].dim_value = -1 if dim == 0 else -5
    args = two_regressors(tmp_path, a=a)
    assert main([*args, "--quiet"]) == ExitCode.OK
    x = rows(5, 4)
    got = run_model(tmp_path / "merged.onnx", {"features": x})["prediction"]
    np.testing.assert_allclose(got, (x[:, :2].sum(1, keepdims=True) * 0.5 - x[:, 2:].sum(1, keepdims=True)) / 2,
                               rtol=1e-5, atol=1e-6)


def test_error_lines_stay_short_whatever_the_names_and_lists_in_them(tmp_path: Path,
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """A model of 20,001 outputs once listed them all (149 kB of one line), a 100,000-character model name
    was printed twice; the line keeps its start and its end (what is wrong is said after the list)."""
    a = make_regressor()
    for i in range(2000):
        a.graph.output.add().CopyFrom(a.graph.output[0])
        a.graph.output[-1].name = f"o{i}"
        a.graph.node.add().CopyFrom(onnx.helper.make_node("Identity", ["y"], [f"o{i}"]))
    doc = mapping_doc()
    (tmp_path / "long").mkdir()
    long_name = doc | {"models": {"m" * 100_000: doc["models"]["a"], "b": doc["models"]["b"]}}
    cases = [(two_regressors(tmp_path, a=a, doc=doc), ExitCode.INCOMPATIBLE, "2001 outputs (y, o0, o1,",
              "o1999) and none is chosen"),
             (two_regressors(tmp_path / "long", doc=long_name), ExitCode.BAD_INPUT, "models.mmmm",
              "m' is not usable as a graph prefix")]
    for argv, code, begins, ends in cases:
        capfd.readouterr()
        assert main(argv) == code
        line = capfd.readouterr().err.splitlines()[0]
        assert begins in line and line.endswith(ends) and "characters ...]" in line and len(line) < 1300, line[:200]


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


def test_inspect_escapes_control_characters_from_the_model(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_regressor(out_name=f"y{ESC}")
    model.producer_name = f"evil{ESC}\nforged: line"
    save(model, tmp_path / "a.onnx")
    assert main(["inspect", str(tmp_path / "a.onnx")]) == ExitCode.OK
    out = capfd.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "forged: line" in out and not any(line.startswith("forged") for line in out.splitlines())
    assert "\\x1b[2J" in out  # shown, escaped
    model.producer_name = "P" * 1_000_000  # once printed as a 100 kB line
    save(model, tmp_path / "a.onnx")
    monkeypatch.setenv("COLUMNS", "1000000")  # a terminal this wide: rich would not cut the cell itself
    assert main(["inspect", str(tmp_path / "a.onnx")]) == ExitCode.OK
    out = capfd.readouterr().out
    assert "characters ...]" in out and max(map(len, out.splitlines())) < 1300


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


@pytest.mark.parametrize(("signum", "code", "line"), [(signal.SIGTERM, 143, "error: terminated (SIGTERM)\n"),
                                                      (signal.SIGHUP, 129, "error: hung up (SIGHUP)\n")])
def test_sigterm_and_sighup_are_handled_like_ctrl_c(signum: int, code: int, line: str, job: Path) -> None:
    """A merge stopped by kill or a closed terminal: its exit code and one line, no staging folder left."""
    tmp = job.parent / "tmp"
    out = job / "merged.onnx"
    out.write_bytes(b"the previous merge")
    before = sorted(p.name for p in job.iterdir())
    proc = start(["merge", "--map", job / "map.toml", "--out", out, "--rows", "400000", "--external-data"], tmp)
    wait_for(lambda: any(p.name.startswith(".merged.onnx.") for p in job.iterdir()), proc, "the staging directory")
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stderr, stdout) == (code, line, "")
    assert sorted(p.name for p in job.iterdir()) == before
    assert out.read_bytes() == b"the previous merge"
    assert list(tmp.iterdir()) == []


def test_the_next_merge_removes_what_a_sigkill_left(job: Path) -> None:
    """SIGKILL cannot be handled: the staging folder stays until the next merge to that --out."""
    tmp = job.parent / "tmp"
    out = job / "merged.onnx"
    proc = start(["merge", "--map", job / "map.toml", "--out", out, "--rows", "400000", "--external-data"], tmp)
    wait_for(lambda: any(p.name.startswith(".merged.onnx.") for p in job.iterdir()), proc, "the staging directory")
    proc.kill()
    proc.communicate(timeout=60)
    left = [p.name for p in job.iterdir() if p.name.startswith(".merged.onnx.")]
    assert left and str(proc.pid) in left[0]
    alive = job / f".merged.onnx.{os.getpid()}.keep.tmp"  # a live process's staging folder is not touched
    alive.mkdir()
    assert main(["merge", "--map", str(job / "map.toml"), "--out", str(out), "--rows", "16", "--quiet"]) == 0
    assert sorted(p.name for p in job.iterdir() if p.name.startswith(".")) == [alive.name]


@pytest.mark.parametrize("stdout", ["closed", "/dev/full"])
def test_json_report_that_cannot_be_written_is_exit_5_and_the_model_stays(stdout: str, tmp_path: Path) -> None:
    """The merge is done when its report is printed: the model stays in place, the lost report is exit 5."""
    args = two_regressors(tmp_path)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([str(EXE), *args, "--json"], capture_output=False, text=True, timeout=300,
                              stdout=full if stdout == "/dev/full" else None, stderr=subprocess.PIPE,
                              pass_fds=(), preexec_fn=(lambda: os.close(1)) if stdout == "closed" else None)
    assert proc.returncode == ExitCode.CANNOT_WRITE
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("error: <stdout>: cannot write the report") and len(lines) == 2, proc.stderr
    assert (tmp_path / "merged.onnx").exists()
    assert run_model(tmp_path / "merged.onnx", {"features": rows(2, 4)})["prediction"].shape == (2, 1)


# ---------------------------------------------------------------------------- time linear in model size


class CountingSet(set[str]):
    """A set that counts membership tests: linear time shows as a bounded count per name, no clock needed."""

    lookups = 0

    def __contains__(self, item: object) -> bool:
        self.lookups += 1
        return super().__contains__(item)


def test_twenty_thousand_nodes_sharing_one_name_get_unique_names_in_few_lookups() -> None:
    """unique_name probed base_2, base_3, ... from the start each time: 20,000 same-named nodes took 130 s
    (2e8 lookups). Doubling then bisecting costs O(log n) lookups per name."""
    taken = CountingSet()
    names = [unique_name("same", taken) for _ in range(20_000)]
    assert len(set(names)) == 20_000 and names[:3] == ["same", "same_2", "same_3"] and names[-1] == "same_20000"
    assert taken.lookups < 40 * 20_000, taken.lookups
    taken |= {"x", "x_2", "x_4"}
    assert unique_name("x", taken) not in {"x", "x_2", "x_4"}


def test_a_30000_node_ml5_tree_is_rewritten_whole() -> None:
    """An ml 5 TreeEnsemble next to an old-style tree is rewritten as TreeEnsembleRegressor, every node kept.
    Its time (`key in list` made it quadratic: 30,000 nodes, 87 s) is a ratio in benchmarks/scaling.py."""
    from onnx import helper, numpy_helper

    from merge_cli.trees import _regressor_attributes

    node = ml5_tree(30_000).graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    out = _regressor_attributes(attrs, numpy_helper, double=False)
    assert len(out["nodes_nodeids"]) == 2 * 30_000 + 1


def test_twenty_thousand_model_inputs_are_all_matched(tmp_path: Path) -> None:
    """match_routes pairs each of 20,000 one-column inputs with its column. Its time (a set rebuilt per
    input made it quadratic: 10,000 inputs, 44 s) is a ratio in benchmarks/scaling.py."""
    from merge_cli.graphs import TensorInfo
    from merge_cli.mapping import parse_mapping
    from merge_cli.splice import match_routes

    n = 20_000
    doc = {"version": 1, "input": {"name": "features", "columns": [f"c{i}" for i in range(n)]},
           "models": {"a": {"path": "a.onnx", "inputs": {f"x{i}": [f"c{i}"] for i in range(n)}}}}
    spec = parse_mapping(doc, tmp_path / "map.json").models[0]
    inputs = [TensorInfo(f"x{i}", 1, ("N", 1)) for i in range(n)]
    part = SimpleNamespace(spec=spec, source=SimpleNamespace(path=tmp_path / "a.onnx"), inputs=inputs)
    routes = match_routes(part)  # type: ignore[arg-type]
    assert [(info.name, columns) for info, columns in routes[:2]] == [("x0", (0,)), ("x1", (1,))]
    assert len(routes) == n


def test_a_very_wide_mapping_verifies_on_fewer_rows_and_says_so(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Random rows x every column: 1.3M unused columns took 5.3 GB (now 0.67 GB, 12 rows). Here the cell
    budget is made small instead of the mapping large."""
    from merge_cli import runtime

    monkeypatch.setattr(runtime, "MAX_CELLS", 40 * 104)
    doc = mapping_doc()
    doc["input"]["columns"] = ["A", "B", "C", "D", *(f"u{i}" for i in range(100))]
    args = two_regressors(tmp_path, doc=doc)
    assert main([*args[:-2], "--rows", "256", "--json"]) == ExitCode.OK
    report = json.loads(capfd.readouterr().out)
    assert report["verification"]["rows"] == 40
    assert any("verifying on 40 random rows, not 256" in w for w in report["warnings"])


def test_an_input_truncated_while_its_weights_are_copied_is_blamed(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights are copied from the inputs by reference after loading: an input cut short meanwhile is
    exit 3 naming that input (it was exit 5 blaming the output), and nothing is left behind."""
    from merge_cli import pipeline

    args = with_a(tmp_path, lambda p: external_mlp(tmp_path))
    checked = pipeline.check_model

    def check_then_truncate(*a: object, **k: object) -> None:
        checked(*a, **k)  # type: ignore[arg-type]
        os.truncate(tmp_path / "a.bin", 100)  # after loading, before the copy

    monkeypatch.setattr(pipeline, "check_model", check_then_truncate)
    before = sorted(p.name for p in tmp_path.iterdir())
    capfd.readouterr()
    assert main(args) == ExitCode.BAD_INPUT
    err = capfd.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'a.bin'}: is shorter than when it was loaded"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_python_api_refuses_paths_that_are_not_utf8_too(tmp_path: Path) -> None:
    """merge_cli.merge(out=b'\\xfd'-named) failed in onnxruntime's session config (TypeError), a model path so
    in provenance (UnicodeEncodeError): MergeRequest checks every path it is given."""
    import merge_cli

    two_regressors(tmp_path)
    for kwargs, code in [({"out": tmp_path / "\udcfd.onnx"}, ExitCode.CANNOT_WRITE),
                         ({"out": tmp_path / "m.onnx", "models": [tmp_path / "\udcff.onnx", tmp_path / "b.onnx"]},
                          ExitCode.BAD_INPUT)]:
        with pytest.raises(merge_cli.MergeError) as e:
            merge_cli.merge(tmp_path / "map.toml", rows=4, **kwargs)  # type: ignore[arg-type]
        assert e.value.code == code and e.value.message == "the path is not UTF-8 text"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx", "map.toml"]
