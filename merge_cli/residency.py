"""Memory-mapped weights given back to the kernel while onnxruntime runs on them.

Verification sessions memory-map the weights from the files they sit in (runtime.file_session). A run
touches every weight once, and every page it touched stays resident until the session is closed: the
merged file's weights all at once, plus ~120 MiB of interpreter and libraries (the 2 x 200 MB pair:
508 MiB peak RSS, 1.32x the inputs). A page of a private file mapping that was never written can be
dropped at any time: it stays in the page cache, and if still in use it is mapped again at its next
access (a minor fault). So while a run goes on, a thread drops the mapped pages of the files it reads
four times a second, and the process holds what the run touched since (the 200 MB pair: peak RSS
505 -> 308-440 MB; the 1.1 GB pair: 2372 -> 698 MB).

onnxruntime maps external data read-write and private, but never writes a weight: initializers are
constant inputs to its kernels, and with prepacking and graph optimizations off (runtime.checking_options)
nothing rewrites them. Were one written, dropping it would bring back the file's bytes: the runs would
then differ from each other, and verification fail, never pass wrongly.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

MADV_DONTNEED = 4  # Linux: drop the range's pages from this process; file pages stay in the page cache
EVERY = 0.25  # seconds between two passes: a MatMul reads its weight a panel at a time, every page many
# times over, and each pass makes it fault the pages it still needs back in (every 10-50 ms: the 1.1 GB
# pair's verified merge took 1.4-2x as long; every 0.25 s: no difference beyond the noise)
MAPS = "/proc/self/maps"
Madvise = Callable[[ctypes.c_void_p, ctypes.c_size_t, int], int]


@contextlib.contextmanager
def pages_given_back(files: Iterable[Path]) -> Iterator[None]:
    """While the block runs, drop the pages of this process's private mappings of `files` every EVERY seconds.

    Outside Linux, or where /proc or madvise are missing, it does nothing (the pages stay resident
    until the session closes).
    """
    paths = {os.path.realpath(f) for f in files}
    madvise = _madvise()
    if madvise is None or not paths:
        yield
        return
    stop = threading.Event()

    def drop_until_stopped() -> None:
        while not stop.wait(EVERY):
            drop_mapped(paths, madvise)

    thread = threading.Thread(target=drop_until_stopped, name="merge-models-pages", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def drop_mapped(paths: set[str], madvise: Madvise) -> int:
    """Drop the pages of this process's private, readable mappings of `paths`; the bytes of mappings dropped."""
    dropped = 0
    try:
        with open(MAPS, encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.rstrip("\n").split(maxsplit=5)
                if len(fields) < 6 or fields[1][0] != "r" or fields[1][3] != "p" or fields[5] not in paths:
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED) == 0:
                    dropped += end - start
    except OSError:
        pass
    return dropped


@functools.cache
def _madvise() -> Madvise | None:
    """libc's madvise, where there is one and /proc/self/maps says what is mapped (Linux)."""
    if not sys.platform.startswith("linux") or not os.path.exists(MAPS):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise
