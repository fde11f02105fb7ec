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
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import IO, TextIO, TypeVar

from .errors import Signalled

T = TypeVar("T")
TERMINATING = (signal.SIGTERM, signal.SIGHUP)  # handled as Ctrl-C is (errors.Signalled)


def _raise_signalled(signum: int, frame: object) -> None:
    raise Signalled(signum)


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise errors.Signalled (a KeyboardInterrupt): a killed
    merge removes its staging folder and says so, exit 143/129, as Ctrl-C does with 130. A signal the
    process was started ignoring (nohup) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in TERMINATING}
    for s, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(s, _raise_signalled)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT), SIGTERM and SIGHUP until the block is done, then raise the first as
    KeyboardInterrupt (errors.Signalled for SIGTERM and SIGHUP).

    For the few steps that must not be cut in half: a C extension's first import, making and removing
    temporary folders, renaming the output's files into place, putting stdout/stderr back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = [s for s in (signal.SIGINT, *TERMINATING) if s == signal.SIGINT or signal.getsignal(s) == _raise_signalled]
    previous = {s: signal.getsignal(s) for s in held}
    for s in held:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            fallback = signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL
            signal.signal(s, handler if handler is not None else fallback)
    if received:
        raise KeyboardInterrupt if received[0] == signal.SIGINT else Signalled(received[0])


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


def settle(future: Future[T], work: Callable[[], T]) -> None:
    """Run `work` and hand its result, or whatever it raised, to `future` (read by another thread)."""
    try:
        future.set_result(work())
    except BaseException as e:  # handed to whoever reads the result
        future.set_exception(e)


def in_background(work: Callable[[], T], name: str) -> Future[T]:
    """Start `work` on a daemon thread now; its result (or error) is read later. A daemon thread lets a
    failed merge exit without waiting for it."""
    future: Future[T] = Future()
    threading.Thread(target=settle, args=(future, work), name=name, daemon=True).start()
    return future
