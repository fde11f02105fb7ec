"""Guards around the process: Ctrl-C held through steps that must not be cut, library output kept off ours."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from typing import IO, TextIO


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block is done, then raise KeyboardInterrupt.

    For the few steps that must not be cut in half: a C extension's first import, making and removing
    temporary folders, renaming the output's files into place, putting stdout/stderr back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def quiet_libraries(keep_stdout: bool, replay: bool = False) -> Iterator[None]:
    """While the block runs, file descriptors 1 and 2 point at a scratch file; Python's sys.stderr
    (and sys.stdout when `keep_stdout`) keep writing where they did.

    onnxruntime logs a failing kernel as "[E:onnxruntime:...]" straight to fd 2 from C++, whatever
    its session options say; that must never land in `--json` output or next to the error line.
    Python warnings are silenced too. With `replay`, what the libraries printed is copied to stderr
    afterwards, and warnings are shown (for --debug).
    """
    for stream in (sys.stdout, sys.stderr):
        _flush(stream)
    sink = tempfile.TemporaryFile()  # never named on Linux (O_TMPFILE): nothing to leave behind
    saved: dict[int, int] = {}
    swapped: dict[str, TextIO] = {}
    try:
        with interrupts_deferred():  # a Ctrl-C held here is raised inside the try: the finally undoes it all
            saved.update((fd, os.dup(fd)) for fd in (1, 2))
            for name, fd in (("stdout", 1), ("stderr", 2)):
                stream = getattr(sys, name)
                if (name == "stderr" or keep_stdout) and _fileno(stream) == fd:
                    swapped[name] = stream  # the real descriptor: Python writes through a copy of it instead
                    setattr(sys, name, io.TextIOWrapper(os.fdopen(os.dup(saved[fd]), "wb", buffering=0),
                                                        encoding=stream.encoding, errors=stream.errors,
                                                        line_buffering=True, write_through=True))
                os.dup2(sink.fileno(), fd)
        with warnings.catch_warnings():
            if not replay:
                warnings.simplefilter("ignore")
            yield
    finally:
        with interrupts_deferred():  # cut short, fd 2 would stay on the scratch file and hide the error line
            _restore(saved, swapped, sink, replay)


def _restore(saved: dict[int, int], swapped: dict[str, TextIO], sink: IO[bytes], replay: bool) -> None:
    """Point fds 1 and 2 (and sys.stdout/sys.stderr) back where they were; replay what libraries printed."""
    with contextlib.suppress(Exception):  # C stdio buffers output to files: flush it before fd 1 points back
        ctypes.CDLL(None).fflush(None)
    for name, original in swapped.items():
        replacement = getattr(sys, name)
        setattr(sys, name, original)
        replacement.close()
    for fd, copy in saved.items():
        os.dup2(copy, fd)
        os.close(copy)
    if replay:
        sink.seek(0)
        sys.stderr.write(sink.read().decode(errors="replace"))
    sink.close()


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None


def _flush(stream: TextIO) -> None:
    with contextlib.suppress(Exception):
        stream.flush()
