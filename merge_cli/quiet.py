"""Keep libraries' own printing (onnxruntime's C++ logger, protobuf, Python warnings) off our output."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import TextIO


@contextlib.contextmanager
def quiet_libraries(keep_stdout: bool, replay: bool = False) -> Iterator[None]:
    """While the block runs, file descriptors 1 and 2 point at a scratch file; Python's sys.stderr
    (and sys.stdout when `keep_stdout`) keep writing where they did.

    onnxruntime logs a failing kernel as "[E:onnxruntime:...]" straight to fd 2 from C++, whatever
    its session options say; that must never land in `--json` output or next to the error line.
    With `replay`, what the libraries printed is copied to stderr afterwards (for --debug).
    """
    for stream in (sys.stdout, sys.stderr):
        _flush(stream)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    swapped: dict[str, TextIO] = {}
    with tempfile.TemporaryFile() as sink:
        try:
            for name, fd in (("stdout", 1), ("stderr", 2)):
                if name == "stdout" and not keep_stdout:
                    continue
                stream = getattr(sys, name)
                if _fileno(stream) == fd:  # the real descriptor: write through a copy of it instead
                    swapped[name] = stream
                    setattr(sys, name, io.TextIOWrapper(os.fdopen(os.dup(saved[fd]), "wb", buffering=0),
                                                        encoding=stream.encoding, errors=stream.errors,
                                                        line_buffering=True, write_through=True))
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            with warnings.catch_warnings():
                if not replay:
                    warnings.simplefilter("ignore")
                yield
        finally:
            _flush_c_streams()
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


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None


def _flush(stream: TextIO) -> None:
    with contextlib.suppress(Exception):
        stream.flush()


def _flush_c_streams() -> None:
    """C stdio buffers output to a file: flush it into the scratch file before fd 1 points back."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)
