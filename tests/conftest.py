"""Shared helpers: write models and mappings, run the real CLI, run models with onnxruntime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from merge_cli.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `merge-models ARGS` in-process through the console entry point; return code and output."""

    def run(*args: str | Path) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_console(*args: str | Path, cwd: Path | None = None) -> CliResult:
    """Run the installed `merge-models` console script in a subprocess."""
    exe = Path(sys.executable).with_name("merge-models")
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"}, timeout=600)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


# ---------------------------------------------------------------------------- small models shared by the tests

REGRESSOR_13 = """
<ir_version: 7, opset_import: ["" : 13]>
g (float[N,2] x) => (float[N,1] y) <float[2,1] w = {0.5, -1.0}, float[1] b = {0.25}>
{
  t = MatMul(x, w)
  y = Add(t, b)
}
"""


REGRESSOR_17 = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,2] x) => (float[N,1] y) <float[2,1] w = {2.0, 3.0}, float[1] b = {-1.0}>
{
  t = MatMul(x, w)
  y = Add(t, b)
}
"""


REDUCESUM_11 = """
<ir_version: 6, opset_import: ["" : 11]>
g (float[N,3] x) => (float[N,1] y)
{
  sq = Mul(x, x)
  y = ReduceSum<axes=[1], keepdims=1>(sq)
}
"""


# The If branches read the outer initializers w and v: onnx.compose.add_prefix leaves those unprefixed.
IF_OUTER_SCOPE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,2] x) => (float[N,2] y) <float[2] w = {2.0, 3.0}, float[2] v = {-1.0, 1.0}>
{
  s = ReduceSum<keepdims=0>(x)
  zero = Constant<value = float {0.0}>()
  c = Greater(s, zero)
  y = If(c) <then_branch = t () => (float[N,2] o1) { o1 = Mul(x, w) },
             else_branch = e () => (float[N,2] o2) { o2 = Add(x, v) }>
}
"""


def make_mlp(width: int = 2, hidden: int = 300, seed: int = 0, *, bias: bool = False, ir: int = 8) -> onnx.ModelProto:
    """y = relu(x @ W1 [+ B1]) @ W2 [+ B2]: the tests' one MLP. Its weights are over 1 KiB (hidden >= 128), so
    merge-models reads them by reference (and they can live in external data)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {"W1": rng.standard_normal((width, hidden)).astype(np.float32),
               "W2": rng.standard_normal((hidden, 1)).astype(np.float32) / hidden}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="layer1")]
    if bias:
        weights |= {"B1": rng.standard_normal(hidden).astype(np.float32), "B2": rng.standard_normal(1).astype(np.float32)}
        nodes.append(helper.make_node("Add", ["h", "B1"], ["hb"], name="bias1"))
    nodes += [helper.make_node("Relu", ["hb" if bias else "h"], ["r"], name="relu"),
              helper.make_node("MatMul", ["r", "W2"], ["z" if bias else "y"], name="layer2")]
    if bias:
        nodes.append(helper.make_node("Add", ["z", "B2"], ["y"], name="bias2"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                              initializer=[numpy_helper.from_array(w, n) for n, w in weights.items()])
    return helper.make_model(graph, ir_version=ir, opset_imports=[helper.make_opsetid("", 17)])


def save_text_model(path: Path, text: str) -> Path:
    """Write a model given in ONNX text syntax, checked on the way."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def write_mapping(path: Path, doc: dict[str, Any]) -> Path:
    """Write a mapping document as TOML, JSON or YAML (by the file's extension)."""
    if path.suffix == ".json":
        path.write_text(json.dumps(doc, indent=1))
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    else:
        path.write_text(to_toml(doc))
    return path


def to_toml(doc: dict[str, Any]) -> str:
    """A small TOML writer for mapping documents: top-level keys, then one [table] per section."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        return repr(v)

    def body(table: dict[str, Any]) -> list[str]:
        return [f"{json.dumps(k)} = {value(v)}" for k, v in table.items()]

    lines = body({k: v for k, v in doc.items() if not isinstance(v, dict)})
    for key, section in doc.items():
        if key == "models":
            for name, model in section.items():
                lines += ["", f"[models.{json.dumps(name)}]", *body(model)]
        elif isinstance(section, dict):
            lines += ["", f"[{json.dumps(key)}]", *body(section)]
    return "\n".join(lines) + "\n"


def run_model(path: Path, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, Any]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def rows(n: int, width: int, seed: int = 1, dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(dtype)


def assert_no_leftovers(directory: Path, expected: set[str]) -> None:
    """Only the expected files are in `directory`: no temporary or partial outputs."""
    assert {p.name for p in directory.iterdir()} == expected


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A merge that takes a while with 400,000 rows (an MLP and a regressor), for the signal and
    interrupt tests; $TMPDIR is tmp_path/tmp."""
    from bad_inputs import make_regressor, mapping_doc, save  # bad_inputs imports this module

    d = tmp_path / "job"
    d.mkdir()
    save(make_mlp(), d / "a.onnx")
    save(make_regressor(weight=-1.0), d / "b.onnx")
    write_mapping(d / "map.toml", mapping_doc())
    (tmp_path / "tmp").mkdir()
    return d
