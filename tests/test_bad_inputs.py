"""Every bad input in tests/bad_inputs.py, through the real CLI: one error line, the documented code, nothing touched."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from bad_inputs import CASES, Case, two_regressors
from conftest import run_console
from hostile_inputs import HOSTILE_CASES

from merge_cli import wire
from merge_cli.cli import main
from merge_cli.errors import ExitCode


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root with what it is: file contents' sha256, link target, or 'dir'/'fifo'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = "link -> " + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                what = "dir"
            elif stat.S_ISFIFO(st.st_mode):
                out[str(path.relative_to(root))] = "fifo"  # writing into a pipe changes its mtime
                continue
            elif st.st_size > 2**31:
                what = f"{st.st_size} bytes, {st.st_blocks} blocks"  # the sparse >2 GiB file: never read it here
            else:
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = f"{what} mode={stat.S_IMODE(st.st_mode):o} mtime={st.st_mtime_ns}"
    return out


def run_case(case: Case, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
             *flags: str) -> tuple[int, str, str, Path]:
    work = tmp_path / "case"
    work.mkdir()
    temp = tmp_path / "tmp"  # the process's temporary directory: must be empty again afterwards
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    args = case.build(work)
    before = snapshot(work)
    capfd.readouterr()
    code = main([*args, *flags])
    out, err = capfd.readouterr()
    assert snapshot(work) == before, "inputs changed, or an output or temporary file was left behind"
    assert list(temp.iterdir()) == []
    return code, out, err, work


def strict_json(text: str) -> Any:
    """json.loads, refusing NaN and Infinity (which Python writes and other parsers reject)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def check_error(case: Case, work: Path, code: int, err: str) -> str:
    assert code == case.code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert 1 <= len(lines) <= 2, f"expected one error line (and a hint), got:\n{err}"
    line = lines[0]
    if case.file:
        prefix = f"error: {os.path.join(work, case.file)}: "  # join keeps a trailing slash
        assert line.startswith(prefix), f"the error line should name {prefix!r}: {line}"
    else:
        assert line.startswith("error: ")
    assert case.problem.lower() in line.lower(), line
    if case.hint:
        assert len(lines) == 2 and lines[1].startswith("hint: ") and len(lines[1]) > len("hint: ") + 5, err
    else:
        assert len(lines) == 1 or lines[1].startswith("hint: "), err
    return line


ALL_CASES = CASES + HOSTILE_CASES


def test_enough_cases_with_unique_names() -> None:
    names = [c.name for c in ALL_CASES]
    assert len(names) >= 40
    assert len(set(names)) == len(names)
    assert {c.code for c in ALL_CASES} >= {ExitCode.USAGE, ExitCode.BAD_INPUT, ExitCode.INCOMPATIBLE,
                                      ExitCode.CANNOT_WRITE, ExitCode.VERIFY_FAILED}


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_bad_input(case: Case, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err, work = run_case(case, tmp_path, capfd, monkeypatch)
    check_error(case, work, code, err)
    assert out == ""


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c.json], ids=lambda c: c.name)
def test_bad_input_json(case: Case, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With --json: the same error line on stderr, and stdout is exactly one JSON document saying so."""
    code, out, err, work = run_case(case, tmp_path, capfd, monkeypatch, "--json")
    line = check_error(case, work, code, err)
    doc = strict_json(out)
    assert doc["status"] == "error"
    assert doc["error"]["code"] == int(case.code)
    assert line.endswith(doc["error"]["message"])
    if case.file:
        assert doc["error"]["file"] == os.path.join(work, case.file)


@pytest.mark.parametrize(("writer", "flags"), [("write_single_file", []), ("write_with_external_data",
                                                                             ["--external-data"])])
def test_disk_full_while_writing_is_exit_5_and_leaves_nothing(writer: str, flags: list[str], tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(wire, writer, disk_full)
    full = Case("disk_full", two_regressors, ExitCode.CANNOT_WRITE, "merged.onnx", "No space left on device")
    code, out, err, work = run_case(full, tmp_path, capfd, monkeypatch, *flags)
    check_error(full, work, code, err)


def test_onnxruntime_logs_stay_off_the_console_script_output_unless_debug(tmp_path: Path) -> None:
    """In a real process: onnxruntime logs a failing Reshape from C++ to fd 2 ("[E:onnxruntime:...]")."""
    case = next(c for c in CASES if c.name == "model_fails_when_run")
    args = case.build(tmp_path)
    result = run_console(*args, "--json")
    assert result.code == ExitCode.BAD_INPUT
    assert json.loads(result.stdout)["error"]["file"] == str(tmp_path / "a.onnx")
    check_error(case, tmp_path, result.code, result.stderr)
    debug = run_console(*args, "--debug")
    assert debug.code == ExitCode.BAD_INPUT
    assert "[E:onnxruntime:" in debug.stderr  # what was kept off the output is there for --debug
    assert debug.stderr.splitlines()[-1].startswith("error: ")
