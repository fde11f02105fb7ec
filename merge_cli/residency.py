"""Memory-mapped weights given back to the kernel while onnxruntime runs on them.

Verification sessions memory-map the weights from the files they sit in (runtime.file_session). A run
touches every weight once, and every page it touched stays resident until the session is closed: the
merged file's weights all at once, plus ~120 MiB of interpreter and libraries (the 2 x 200 MB pair:
508 MiB peak RSS, 1.32x the inputs). A page of a private file mapping that was never written can be
dropped at any time: it stays in the page cache, and if still in use it is mapped again at its next
access (a minor fault). So while a run goes on, a thread drops the mapped pages of the files it reads
ten times a second once the run has read them through, and the process holds about the weights
it is reading (the 200 MB pair: peak RSS 505 -> 308-440 MB; the 1.1 GB pair: 2372 -> 698 MB).

onnxruntime maps external data read-write and private, and never writes a weight (initializers are
constant inputs to its kernels); a mapping with a written, copy-on-write page is left alone all the same:
dropping it would bring back the file's bytes.
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
EVERY = 0.1  # seconds between two passes (each reads /proc/self/smaps: ~5 ms)
SMAPS = "/proc/self/smaps"
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
    """Drop the pages of this process's mappings of `paths` that the run has read through: private,
    readable, every page resident (a weight read to its end is one its MatMul is done with: dropping
    one still being read made the run fault its pages back in, up to 1.9x the time), none written
    (no anonymous copy-on-write page: the file holds every byte). Returns the bytes dropped."""
    dropped = 0
    mapping: tuple[int, int] | None = None  # the current mapping, while it is one of `paths`
    rss = anonymous = -1

    def drop() -> int:
        if mapping is None or anonymous != 0 or rss * 1024 != mapping[1] - mapping[0]:
            return 0
        ok = madvise(ctypes.c_void_p(mapping[0]), ctypes.c_size_t(mapping[1] - mapping[0]), MADV_DONTNEED) == 0
        return mapping[1] - mapping[0] if ok else 0

    try:
        with open(SMAPS, encoding="utf-8", errors="replace") as smaps:
            for line in smaps:
                fields = line.rstrip("\n").split(maxsplit=5)
                if fields[0] == "Rss:":
                    rss = int(fields[1])
                elif fields[0] == "Anonymous:":
                    anonymous = int(fields[1])
                elif "-" in fields[0] and len(fields) >= 5 and len(fields[1]) == 4:  # a mapping's first line
                    dropped += drop()
                    private = fields[1][0] == "r" and fields[1][3] == "p"
                    lo, hi = fields[0].split("-")
                    mapping = (int(lo, 16), int(hi, 16)) if private and len(fields) == 6 and fields[5] in paths else None
                    rss = anonymous = -1
            dropped += drop()
    except (OSError, ValueError):
        pass
    return dropped


@functools.cache
def _madvise() -> Madvise | None:
    """libc's madvise, where there is one and /proc/self/maps says what is mapped (Linux)."""
    if not sys.platform.startswith("linux") or not os.path.exists(SMAPS):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise
