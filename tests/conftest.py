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
