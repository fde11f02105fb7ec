"""Exit codes and the one exception every user-facing failure becomes."""

from __future__ import annotations

import os
import unicodedata
from enum import IntEnum
from pathlib import Path
from typing import Any


class ExitCode(IntEnum):
    """The documented exit statuses (DESIGN.md, "Exit codes")."""

    OK = 0
    VERIFY_FAILED = 1
    USAGE = 2
    BAD_INPUT = 3
    INCOMPATIBLE = 4
    CANNOT_WRITE = 5
    HANGUP = 129  # 128 + SIGHUP: the terminal went away
    INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C
    TERMINATED = 143  # 128 + SIGTERM: kill, systemd, a CI timeout
    INTERNAL = 70


def one_line(text: str) -> str:
    """Text from inputs (keys, names, paths) made safe for one line: control characters, line and
    paragraph separators (str.splitlines splits on \\x1c-\\x1e and \\u2028 too) and terminal escapes
    are shown as escapes instead."""
    if text.isprintable():
        return text
    return "".join(c if c == " " or unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")
                   else c.encode("unicode_escape", "backslashreplace").decode("ascii") for c in text)


MAX_MESSAGE = 1200  # characters of an error message or hint: a 20,000-name list or a 100 kB name is cut short


def shortened(text: str) -> str:
    """The text, or its start and end around a count of what was left out (what is wrong is often said
    after the long name or list that precedes it)."""
    if len(text) <= MAX_MESSAGE:
        return text
    head, tail = MAX_MESSAGE * 2 // 3, MAX_MESSAGE // 4
    return f"{text[:head]} [... {len(text) - head - tail} characters ...] {text[-tail:]}"


def check_path_text(path: str | os.PathLike[str] | None, code: ExitCode = ExitCode.BAD_INPUT) -> None:
    """Refuse a path that is not UTF-8 text (Linux allows any bytes in a name; Python keeps the others as
    surrogates): provenance, --json and the merged file record paths as UTF-8, and failed on it (exit 70,
    or a --json document that was not UTF-8). The folders above a relative path count too."""
    if path is None:
        return
    try:
        os.path.abspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise MergeError(code, os.fspath(path), "the path is not UTF-8 text", "rename it (or the folder holding it): "
                         "merge-models records and prints paths as UTF-8") from None


def first_line(error: BaseException) -> str:
    """A library exception in one line for an error message: its first line, else its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class MergeError(Exception):
    """A user error: printed as one `error: <file>: <problem>` line (plus a hint), never a traceback."""

    def __init__(
        self,
        code: ExitCode,
        file: str | Path | None,
        message: str,
        hint: str | None = None,
    ) -> None:
        message, hint = shortened(one_line(message)), shortened(one_line(hint)) if hint is not None else None
        super().__init__(message)
        self.code = code
        self.file = one_line(str(file)) if file is not None else None
        self.message = message
        self.hint = hint
        self.details: dict[str, Any] = {}  # extra keys for the --json error document (e.g. the verification)

    def line(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"error: {where}{self.message}"

    def to_dict(self) -> dict[str, object]:
        return {
            "code": int(self.code),
            "kind": self.code.name.lower(),
            "file": self.file,
            "message": self.message,
            "hint": self.hint,
        }


def bad_input(file: str | Path | None, message: str, hint: str | None = None) -> MergeError:
    return MergeError(ExitCode.BAD_INPUT, file, message, hint)


def incompatible(file: str | Path | None, message: str, hint: str | None = None) -> MergeError:
    return MergeError(ExitCode.INCOMPATIBLE, file, message, hint)


def cannot_write(file: str | Path | None, message: str, hint: str | None = None) -> MergeError:
    return MergeError(ExitCode.CANNOT_WRITE, file, message, hint)


def usage(file: str | Path | None, message: str, hint: str | None = None) -> MergeError:
    return MergeError(ExitCode.USAGE, file, message, hint)


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised as Ctrl-C is, so that whatever Ctrl-C cleans up is cleaned up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def interrupt_code(error: BaseException | None) -> ExitCode | None:
    """The exit code of the interrupt behind an exception (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), else None.

    In a C extension's import (pybind11's onnx and onnxruntime are imported lazily) Ctrl-C surfaces
    as ImportError("initialization failed") raised from it."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, Signalled):
            return ExitCode(128 + error.signum)
        if isinstance(error, KeyboardInterrupt):
            return ExitCode.INTERRUPTED
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def caused_by_interrupt(error: BaseException | None) -> bool:
    """Whether Ctrl-C (or SIGTERM, SIGHUP) is behind an exception (see interrupt_code)."""
    return interrupt_code(error) is not None
