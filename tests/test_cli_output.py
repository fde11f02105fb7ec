"""What each command prints: one JSON document with --json, the same exit codes, progress only on a
terminal, --quiet, 80-column summaries, a fast --help, shell completion (the docs' examples: test_docs.py)."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLES, CliResult, save_text_model, write_mapping

from merge_cli.errors import ExitCode

EXE = Path(sys.executable).with_name("merge-models")


def console(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
    """The installed console script in a subprocess (stdin, stdout and stderr are pipes, not terminals)."""
    proc = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def with_terminal_stderr(*args: str | Path, cwd: Path) -> tuple[int, str, str]:
    """Run the console script with stderr on a pseudo-terminal; return (code, stdout, terminal output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(EXE), *map(str, args)], cwd=cwd, stdout=subprocess.PIPE, stderr=follower,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "80"})
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the other end closed
            break
        if not data:
            break
        chunks.append(data)
    stdout, _ = proc.communicate(timeout=300)
    os.close(leader)
    return proc.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


INFINITE = """
<ir_version: 8, opset_import: ["" : 17]>
inf (float[N, 2] x) => (float[N, 2] y) {
    zero = Constant <value = float {0.0}> ()
    y = Div (x, zero)
}
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder laid out like the repository: samples/ (no batch outputs) and build/ with a model whose
    outputs are infinite on finite rows, which verification fails."""
    shutil.copytree(SAMPLES, tmp_path / "samples", ignore=shutil.ignore_patterns("merged", "__pycache__"))
    (tmp_path / "build").mkdir()
    save_text_model(tmp_path / "build" / "inf.onnx", INFINITE)
    write_mapping(tmp_path / "build" / "inf.toml", {"input": {"columns": ["p", "q"]},
                                                    "models": {"inf": {"path": "inf.onnx", "columns": ["p", "q"]}}})
    return tmp_path


# ---------------------------------------------------------------------------- --json and exit codes


CASES = {
    "merge ok": ["merge", "--map", "samples/features.toml", "--out", "build/m.onnx"],
    "merge verify failed": ["merge", "--map", "build/inf.toml", "--out", "build/m.onnx"],
    "merge bad input": ["merge", "--map", "samples/missing.toml", "--out", "build/m.onnx"],
    "merge incompatible": ["merge", "--map", "samples/features.toml", "--out", "build/m.onnx", "--opset", "3"],
    "merge cannot write": ["merge", "--map", "samples/features.toml", "--out", "samples/rows.csv/m.onnx"],
    "merge usage": ["merge", "--map", "samples/features.toml", "--rows", "many"],
    "inspect ok": ["inspect", "samples/model_a.onnx"],
    "inspect bad input": ["inspect", "samples/rows.csv"],
    "init ok": ["init", "samples/model_a.onnx", "samples/model_b.onnx", "--out", "build/f.toml", "--force"],
    "init cannot write": ["init", "samples/model_a.onnx", "--out", "samples/features.toml"],
    "verify ok": ["verify", "samples/batch/merged-ok.onnx"],
    "verify bad input": ["verify", "samples/model_a.onnx"],
    "unknown command": ["frobnicate"],
}


@pytest.mark.parametrize("case", CASES)
def test_json_is_one_document_and_exit_codes_do_not_change(case: str, cli, workdir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    if case.startswith("verify ok"):
        assert cli("merge", "--map", "samples/batch/iris/features.toml", "--out", "samples/batch/merged-ok.onnx",
                   "-q").code == 0
    args = CASES[case]
    plain = cli(*args)
    as_json = cli(*args, "--json")
    assert plain.code == as_json.code
    doc = json.loads(as_json.stdout)  # the whole of stdout is one document
    assert isinstance(doc, dict)
    if as_json.code == 0:
        assert doc["status"] == "ok" and as_json.stderr == ""
    else:
        assert doc["status"] == "error" and doc["error"]["code"] == as_json.code
        assert set(doc["error"]) == {"code", "kind", "file", "message", "hint"}
        assert plain.error_lines[0].endswith(doc["error"]["message"])
        assert as_json.error_lines == plain.error_lines and len(plain.error_lines) == 1
        assert plain.stdout == "" or plain.code == ExitCode.VERIFY_FAILED
    assert "Traceback" not in plain.stderr + as_json.stderr
    expected = {"ok": 0, "verify failed": 1, "usage": 2, "command": 2, "bad input": 3, "incompatible": 4,
                "cannot write": 5}
    assert as_json.code == next(code for suffix, code in expected.items() if case.endswith(suffix))


def test_a_failed_merge_verification_carries_its_report(cli, workdir: Path, monkeypatch) -> None:
    monkeypatch.chdir(workdir)
    result = cli(*CASES["merge verify failed"], "--json")
    assert result.code == ExitCode.VERIFY_FAILED
    assert result.json["verification"]["passed"] is False
    assert not (workdir / "build" / "m.onnx").exists()


# ---------------------------------------------------------------------------- people


def test_merge_summary_fits_80_columns(workdir: Path) -> None:
    result = console("merge", "--map", "samples/features.toml", "--out", "build/m.onnx", cwd=workdir,
                     env={"COLUMNS": "80"})
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in ("a", "b")}
    assert set(rows) == {"a", "b"}  # one line per model, nothing wrapped onto the next
    assert "classifier  probabilities  15 columns (mean radius .. smoothness error)" in rows["a"]
    assert rows["b"].endswith("…")  # too long for 80 columns: cut, not wrapped
    assert "verified on 256 rows with onnxruntime: ok" in lines
    assert result.stderr == ""  # no progress when stderr is not a terminal


def test_progress_on_a_terminal_only_and_quiet(workdir: Path) -> None:
    code, stdout, terminal = with_terminal_stderr("merge", "--map", "samples/features.toml", "--out", "build/m.onnx",
                                                  cwd=workdir)
    assert code == 0
    for step in ("load...", "convert...", "write...", "verify..."):
        assert step in terminal
    assert "rows with onnxruntime: ok" in stdout and "load..." not in stdout
    code, stdout, terminal = with_terminal_stderr("verify", "build/m.onnx", "--source", "samples", cwd=workdir)
    assert code == 0 and "verify..." in terminal
    code, stdout, terminal = with_terminal_stderr("merge", "--map", "samples/features.toml", "--out",
                                                  "build/m.onnx", "--quiet", cwd=workdir)
    assert (code, stdout, terminal.strip()) == (0, "", "")
    code, stdout, terminal = with_terminal_stderr("merge", "--map", "samples/features.toml", "--out",
                                                  "build/m.onnx", "--json", cwd=workdir)
    assert code == 0 and terminal.strip() == "" and json.loads(stdout)["status"] == "ok"
    code, stdout, terminal = with_terminal_stderr("merge", "--map", "samples/missing.toml", "--out",
                                                  "build/m.onnx", "--quiet", cwd=workdir)
    assert code == ExitCode.BAD_INPUT and stdout == "" and "error: samples/missing.toml" in terminal


# ---------------------------------------------------------------------------- startup and completion


def test_help_does_not_import_the_heavy_libraries() -> None:
    probe = ("import sys; from merge_cli.cli import main; code = main(['--help']); "
             "heavy = [m for m in ('onnx', 'onnxruntime', 'numpy', 'merge_cli.pipeline') if m in sys.modules]; "
             "print(code, heavy)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 []"
    for command in ("merge", "inspect", "init", "verify"):
        assert command in proc.stdout


def test_shell_completion(tmp_path: Path) -> None:
    env = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    script = console("--show-completion", "bash", env=env)
    assert script.code == 0 and "_MERGE_MODELS_COMPLETE=complete_bash" in script.stdout
    assert "complete " in script.stdout and "merge-models" in script.stdout
    # what bash asks when you type `merge-models in<TAB>`
    words = console(env={"_MERGE_MODELS_COMPLETE": "complete_bash", "COMP_WORDS": "merge-models in",
                         "COMP_CWORD": "1"})
    assert words.code == 0 and set(words.stdout.split()) == {"inspect", "init"}
    options = console(env={"_MERGE_MODELS_COMPLETE": "complete_bash", "COMP_WORDS": "merge-models verify --so",
                           "COMP_CWORD": "2"})
    assert options.stdout.split() == ["--source"]
