"""Fuzzing through the real CLI: mapping files from hypothesis, byte mutations of small valid models.

Every case must end with exit 0 or a documented code and one error line: never a traceback or an
internal error. Derandomized, so CI runs the same few hundred cases every time (well under a minute);
`HYPOTHESIS_PROFILE=fuzz-long pytest tests/test_fuzz.py` explores fresh ones for as long as you like.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bad_inputs import COLUMNS, make_regressor, mapping_doc, save, toml
from conftest import SAMPLES, make_mlp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from merge_cli.cli import main
from merge_cli.errors import ExitCode

settings.register_profile("fuzz-ci", max_examples=120, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("fuzz-long", max_examples=5000, deadline=None, derandomize=False, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fuzz-ci")
DOCUMENTED = {int(c) for c in ExitCode if c not in (ExitCode.INTERNAL, ExitCode.INTERRUPTED)}


CASE_SECONDS = 30  # the resource guard: no case may take longer (small inputs; a runaway loop or size would)
PEAK_BYTES = 2 << 30  # nor may the process's peak resident memory pass this (pytest and the libraries included)


def run_and_check(work: Path, capfd: pytest.CaptureFixture[str], args: list[str]) -> int:
    """Run the CLI; check the contract whatever the outcome; leave `work` as it was (minus the output).

    The resource guard: every case finishes within CASE_SECONDS and the process stays under PEAK_BYTES, so an
    absurd declared size (--rows 10**12, a tolerance of inf, 1e308 weights) must be refused, not served."""
    before = sorted(p.name for p in work.iterdir())
    capfd.readouterr()
    started = time.monotonic()
    code = main([*args, "--quiet"])
    assert time.monotonic() - started < CASE_SECONDS, args
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < PEAK_BYTES, args
    out, err = capfd.readouterr()
    assert code in DOCUMENTED, err
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 0:
        assert (work / "merged.onnx").is_file()
        assert err == ""
        (work / "merged.onnx").unlink()
    else:
        lines = err.splitlines()
        assert lines and lines[0].startswith("error: ") and all(x.startswith("hint: ") for x in lines[1:2]), err
        assert len(lines) <= 2, err
    assert sorted(p.name for p in work.iterdir()) == before  # no output, no temporary files
    assert out == ""
    return code


# ---------------------------------------------------------------------------- mapping files

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["A", "B", "C", "D", "a.onnx", "b.onnx", "mean", "x"]))
columns = st.lists(st.sampled_from(["A", "B", "C", "D", "E", 0, 1, 2, 3, 4, -1, 1.0, True]), max_size=5)
values = st.one_of(columns, st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=8))
PATHS = [("version",), ("input",), ("input", "name"), ("input", "columns"), ("input", "dtype"), ("models",),
         ("models", "a"), ("models", "a", "columns"), ("models", "a", "path"), ("models", "b", "inputs"),
         ("models", "b", "weight"), ("models", "a", "output"), ("models", "b", "task"), ("models", "a", "classes"),
         ("combiner",), ("combiner", "kind"), ("combiner", "weights"), ("extra",), ("models", "a/b")]


def set_path(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        child = doc.get(key)
        if not isinstance(child, dict):
            child = doc[key] = {}
        doc = child
    doc[path[-1]] = value


def loose_toml(doc: dict[str, Any]) -> str:
    """TOML for any document: tables as [sections], deeper ones inline; None becomes the invalid `null`."""

    def value(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, float):
            return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(v), repr(v))
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    lines = [f"{json.dumps(k)} = {value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for key, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{json.dumps(key)}]")
            lines += [f"{json.dumps(k)} = {value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@st.composite
def mapping_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """A mapping that starts valid, with some keys replaced by random values, in a random format."""
    doc = mapping_doc()
    structured = draw(st.booleans())
    if structured:  # a well-formed file whose choices may not fit the models
        valid_columns = st.lists(st.sampled_from(["A", "B", "C", "D", 0, 1, 2, 3]), min_size=1, max_size=4,
                                 unique_by=lambda c: COLUMNS.index(c) if isinstance(c, str) else c)
        for name in ("a", "b"):
            model: dict[str, Any] = {"path": f"{name}.onnx", "columns": draw(valid_columns)}
            extra = {"output": st.sampled_from(["y", "z"]), "task": st.sampled_from(["classification", "regression"]),
                     "classes": st.lists(st.integers(0, 3), max_size=3), "weight": st.floats(-1, 2)}
            for key in draw(st.lists(st.sampled_from(sorted(extra)), max_size=2, unique=True)):
                model[key] = draw(extra[key])
            doc["models"][name] = model
        doc["combiner"]["kind"] = draw(st.sampled_from(["mean", "weighted", "sum", "max", "min", "concat", "vote"]))
    for path, value in draw(st.lists(st.tuples(st.sampled_from(PATHS), values), max_size=0 if structured else 3)):
        set_path(doc, path, value)
    fmt = draw(st.sampled_from(["toml", "json", "yaml"]))
    if fmt == "json":
        text = json.dumps(doc, allow_nan=True, default=str)
    elif fmt == "yaml":
        import yaml

        text = yaml.safe_dump(json.loads(json.dumps(doc, allow_nan=True, default=str)), allow_unicode=True)
    else:
        text = loose_toml(doc)
    data = text.encode("utf-8", "surrogatepass")
    for position, byte in draw(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)),
                                        max_size=0 if structured else 1)):
        i = int(position * len(data))
        data = data[:i] + bytes([byte]) + data[i + 1:]
    return fmt, data


@pytest.fixture
def regressors(tmp_path: Path) -> Path:
    save(make_regressor(), tmp_path / "a.onnx")
    save(make_regressor(weight=-1.0), tmp_path / "b.onnx")
    return tmp_path


@settings(settings.get_profile(PROFILE))
@given(case=mapping_files())
def test_fuzzed_mapping_files(regressors: Path, capfd: pytest.CaptureFixture[str], case: tuple[str, bytes]) -> None:
    fmt, data = case
    mapping = regressors / f"map.{fmt}"
    mapping.write_bytes(data)
    try:
        code = run_and_check(regressors, capfd, ["merge", "--map", str(mapping), "--out",
                                                 str(regressors / "merged.onnx"), "--rows", "4"])
        event(f"exit {code}")  # pytest --hypothesis-show-statistics shows how the cases ended
    finally:
        mapping.unlink()


absurd_options = st.lists(st.one_of(
    st.tuples(st.just("--rows"), st.one_of(st.integers(-2, 2**70).map(str), st.sampled_from(["1e12", "nan", "4"]))),
    st.tuples(st.sampled_from(["--atol", "--rtol"]),
              st.one_of(st.floats(allow_nan=True).map(repr), st.sampled_from(["nan", "-inf", "inf", "1e-5", "-0.0"]))),
    st.tuples(st.just("--weights"), st.lists(st.sampled_from(["1e308", "0", "nan", "inf", "-1", "1", "1e-320"]),
                                             min_size=1, max_size=3).map(",".join)),
    st.tuples(st.just("--combiner"), st.sampled_from(["weighted", "vote", "gate", "mean", "max"])),
), max_size=3)


@settings(settings.get_profile(PROFILE), max_examples=30 if PROFILE == "fuzz-ci" else 2000)
@given(options=absurd_options)
def test_absurd_options_are_refused_not_served(regressors: Path, capfd: pytest.CaptureFixture[str],
                                               options: list[tuple[str, str]]) -> None:
    """--rows 10**20 used to allocate until memory ran out; inf tolerances and 1e308 weights gave wrong
    results: every option is refused (exit 2) or served within the guard."""
    (regressors / "map.toml").write_text(toml(mapping_doc()))
    flags = [x for option in options for x in option]
    code = run_and_check(regressors, capfd, ["merge", "--map", str(regressors / "map.toml"), "--out",
                                             str(regressors / "merged.onnx"), "--rows", "8", *flags])
    event(f"exit {code}")


def test_the_unmodified_mapping_merges(regressors: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The fuzzers start from valid inputs: without changes they give exit 0."""
    for fmt, data in (("toml", toml(mapping_doc()).encode()), ("json", json.dumps(mapping_doc()).encode())):
        (regressors / f"map.{fmt}").write_bytes(data)
        args = ["merge", "--map", str(regressors / f"map.{fmt}"), "--out", str(regressors / "merged.onnx")]
        assert run_and_check(regressors, capfd, args) == 0


# ---------------------------------------------------------------------------- model bytes


def _sample_setup(work: Path) -> None:
    shutil.copy(SAMPLES / "model_b.onnx", work / "b.onnx")
    shutil.copy(SAMPLES / "features.toml", work / "map.toml")
    text = (work / "map.toml").read_text().replace("model_a.onnx", "a.onnx").replace("model_b.onnx", "b.onnx")
    (work / "map.toml").write_text(text)


def _mlp_setup(work: Path) -> None:
    save(make_regressor(weight=-1.0), work / "b.onnx")
    (work / "map.toml").write_text(toml(mapping_doc()))


BASES: dict[str, tuple[bytes, Callable[[Path], None]]] = {
    "mlp": (make_mlp().SerializeToString(), _mlp_setup),  # weights over 1 KiB: read by reference
    "skl2onnx": ((SAMPLES / "model_a.onnx").read_bytes(), _sample_setup),  # a real converter's output
}

mutations = st.lists(st.one_of(
    st.tuples(st.just("set"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("xor"), st.floats(0, 1), st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128])),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.none()),
), min_size=1, max_size=4)


def mutate(data: bytes, steps: list[tuple[str, float, Any]]) -> bytes:
    for kind, position, arg in steps:
        i = min(int(position * len(data)), max(len(data) - 1, 0))
        if kind == "set":
            data = data[:i] + bytes([arg]) + data[i + 1:]
        elif kind == "xor" and data:
            data = data[:i] + bytes([data[i] ^ arg]) + data[i + 1:]
        elif kind == "insert":
            data = data[:i] + arg + data[i:]
        elif kind == "delete":
            data = data[:i] + data[i + arg:]
        elif kind == "truncate":
            data = data[:i]
    return data


@settings(settings.get_profile(PROFILE))
@given(base=st.sampled_from(sorted(BASES)), steps=mutations)
def test_byte_mutations_of_valid_models(tmp_path: Path, capfd: pytest.CaptureFixture[str], base: str,
                                        steps: list[tuple[str, float, Any]]) -> None:
    work = tmp_path / base
    data, setup = BASES[base]
    if not work.exists():
        work.mkdir()
        setup(work)
    (work / "a.onnx").write_bytes(mutate(data, steps))
    code = run_and_check(work, capfd, ["merge", "--map", str(work / "map.toml"), "--out",
                                       str(work / "merged.onnx"), "--rows", "4"])
    event(f"exit {code}")


@pytest.mark.parametrize("base", sorted(BASES))
def test_the_unmutated_models_merge(tmp_path: Path, capfd: pytest.CaptureFixture[str], base: str) -> None:
    data, setup = BASES[base]
    setup(tmp_path)
    (tmp_path / "a.onnx").write_bytes(data)
    args = ["merge", "--map", str(tmp_path / "map.toml"), "--out", str(tmp_path / "merged.onnx")]
    assert run_and_check(tmp_path, capfd, args) == 0
