"""Ctrl-C: a real process gets a real SIGINT; it exits 130 and leaves no temporary or partial files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx
import pytest

from merge_cli.errors import ExitCode
from merge_cli.process import interrupts_deferred
from merge_cli.writing import staging_dir

EXE = Path(sys.executable).with_name("merge-models")


def start(args: list[str | Path], tmp: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONFAULTHANDLER": "1"}  # the process's temporary files land here, to be counted
    return subprocess.Popen([str(EXE), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def wait_for(condition: object, proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, f"the merge ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.002)


def test_ctrl_c_while_verifying_exits_130_and_leaves_nothing(job: Path) -> None:
    tmp = job.parent / "tmp"
    out = job / "merged.onnx"
    out.write_bytes(b"the previous merge")  # must survive untouched
    before = sorted(p.name for p in job.iterdir())
    # enough rows that writing and verifying take a while; the staging directory exists throughout
    proc = start(["merge", "--map", job / "map.toml", "--out", out, "--rows", "1000000", "--external-data"], tmp)
    wait_for(lambda: any(p.name.startswith(".merged.onnx.") for p in job.iterdir()), proc, "the staging directory")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED == 130
    assert stderr == "error: interrupted\n"
    assert stdout == ""
    assert sorted(p.name for p in job.iterdir()) == before
    assert out.read_bytes() == b"the previous merge"
    assert list(tmp.iterdir()) == []


def test_ctrl_c_while_reading_the_mapping_exits_130_with_json(job: Path) -> None:
    """The mapping comes from a pipe that never finishes: the process is blocked in read() when Ctrl-C comes."""
    tmp = job.parent / "tmp"
    fifo = job / "pipe.json"
    os.mkfifo(fifo)
    proc = start(["merge", "--map", fifo, "--out", job / "merged.onnx", "--json"], tmp)

    writer: list[int] = []

    def reader_waiting() -> bool:  # opening the write end succeeds once the merge has opened the read end
        try:
            writer.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return True
        except OSError:
            return False

    wait_for(reader_waiting, proc, "the mapping to be opened")
    try:
        os.write(writer[0], b'{"version": 1,')  # a first piece, then nothing more
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        os.close(writer[0])
    assert proc.returncode == 130
    assert stderr == "error: interrupted\n"
    assert '"kind": "interrupted"' in stdout
    assert sorted(p.name for p in job.iterdir()) == ["a.onnx", "b.onnx", "map.toml", "pipe.json"]
    assert list(tmp.iterdir()) == []


def feed_fifo_mapping(fifo: Path, text: str, proc: subprocess.Popen[str]) -> None:
    """Write the whole mapping into the pipe once the merge has opened it: from then on main() is running."""
    fds: list[int] = []

    def reader_waiting() -> bool:
        try:
            fds.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return True
        except OSError:
            return False

    wait_for(reader_waiting, proc, "the mapping to be opened")
    try:
        os.write(fds[0], text.encode())
    finally:
        os.close(fds[0])


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6])
def test_ctrl_c_at_any_moment_leaves_no_temporary_or_partial_files(job: Path, delay: float) -> None:
    """Whatever stage the merge is in (importing, reading, converting, writing, verifying, renaming, exiting):
    130 and nothing new, or a complete output (and 0 if the merge was done before the signal came)."""
    tmp = job.parent / "tmp"
    out = job / "merged.onnx"
    out.write_bytes(b"the previous merge")
    mapping = (job / "map.toml").read_text()
    fifo = job / "map_pipe.toml"
    os.mkfifo(fifo)
    inputs = {p.name: p.read_bytes() for p in job.iterdir() if p.is_file() and p != fifo}
    proc = start(["merge", "--map", fifo, "--out", out, "--rows", "400000", "--external-data"], tmp)
    feed_fifo_mapping(fifo, mapping, proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), stderr  # never a crash, never killed by the signal
    assert stderr == ("error: interrupted\n" if proc.returncode == 130 else "")
    names = {p.name for p in job.iterdir()}
    if out.read_bytes() == b"the previous merge":  # interrupted before the renames: nothing new
        assert proc.returncode == 130
        assert names == set(inputs) | {"map_pipe.toml"}
    else:  # the renames were done (a Ctrl-C there waits for them): the output is complete
        assert names == set(inputs) | {"map_pipe.toml", "merged.onnx.data"}
        assert onnx.load(out).graph.output[0].name == "prediction"  # loads, with its weights beside it
    assert {n: (job / n).read_bytes() for n in inputs if n != "merged.onnx"} == {
        n: b for n, b in inputs.items() if n != "merged.onnx"}
    assert list(tmp.iterdir()) == []


def test_ctrl_c_while_the_staging_directory_is_made_still_removes_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp_then_ctrl_c(*args: Any, **kwargs: Any) -> str:
        path = real_mkdtemp(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # arrives after the directory exists, before staging_dir knows it
        time.sleep(0.05)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        with staging_dir(tmp_path / "merged.onnx"):
            raise AssertionError("the interrupt comes before the body runs")
    assert list(tmp_path.iterdir()) == []


def test_renames_into_place_are_never_cut_in_half_by_ctrl_c() -> None:
    """Inside interrupts_deferred a SIGINT waits; it becomes KeyboardInterrupt when the block is done."""
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run by now: no KeyboardInterrupt here
            steps.append("first rename")
            steps.append("second rename")
    assert steps == ["first rename", "second rename"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
