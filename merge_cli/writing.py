"""Write the merged model atomically: --out checked before any work, staged beside it, renamed into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import bad_input, cannot_write
from .process import interrupts_deferred
from .wire import PROTOBUF_LIMIT, InputChanged

if TYPE_CHECKING:
    from onnx import ModelProto

PATH_MAX = 4096  # Linux's; the staging folder's name (_STAGING_NAME_MAX) comes on top of --out's
_STAGING_NAME_MAX = 96


def output_path(out: str | os.PathLike[str], example: str = "merged.onnx") -> Path:
    """--out as a file path: 'newdir/' names a directory (Path() would drop the slash and write a file
    named newdir), and a path the system cannot open is refused before any work."""
    text = os.fspath(out)
    if text.endswith(("/", os.sep)):
        raise cannot_write(text, "ends with '/', so it names a directory; --out is the file to write",
                           f"give a file name, e.g. --out {text}{example}")
    if os.path.basename(text) in ("", ".", ".."):  # Path('new/.') is Path('new'): a file named new, as 'new/' was
        raise cannot_write(text or "''", "names a directory; --out is the file to write",
                           f"give a file name, e.g. --out {example}")
    path = Path(text)
    if len(os.fsencode(os.path.abspath(data_path(path)))) + _STAGING_NAME_MAX >= PATH_MAX:
        raise cannot_write(text, f"the path is too long (over {PATH_MAX} bytes with '.data' added for external "
                           "data)", "choose a shorter --out")
    return path


def check_output_path(out: Path, inputs: list[Path]) -> None:
    """Refuse, before any work, an output that cannot be written or would overwrite an input."""
    try:
        _check_output_path(out, inputs)
    except OSError as e:  # a name too long for the file system, a folder we may not look into...
        raise cannot_write(out, e.strerror or str(e)) from None


def _check_output_path(out: Path, inputs: list[Path]) -> None:
    parent = _existing_ancestor(out.parent)  # folders still missing are made when the output is written
    if not parent.is_dir():
        raise cannot_write(out, f"{str(parent)!r} is not a directory")
    if out.is_dir():
        raise cannot_write(out, "is a directory", "give a file name, e.g. --out merged.onnx")
    try:
        mode = os.lstat(out).st_mode
    except OSError:
        mode = None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        # a device, pipe or socket (--out /dev/stdout): the rename into place would replace it
        raise cannot_write(out, "is not a regular file (a device, pipe or socket)", "give a file name, e.g. --out merged.onnx")
    if len(os.fsencode(data_path(out).name)) > _name_max(parent):
        raise cannot_write(out, "the file name is too long (with '.data' added for external data)",
                           "choose a shorter --out")
    data = data_path(out)
    for candidate in (out, data):
        for inp in inputs:
            if _would_overwrite(candidate, inp):
                raise cannot_write(out, f"would overwrite the input {str(inp)!r}", "choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise cannot_write(out, f"directory {str(parent)!r} is not writable")


def _existing_ancestor(folder: Path) -> Path:
    """The folder itself, or the nearest folder above it that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def data_path(out: Path) -> Path:
    """Where a model's external data goes: beside it, named after it."""
    return out.with_name(out.name + ".data")


def _would_overwrite(out: Path, inp: Path) -> bool:
    """Writing `out` would replace `inp`: the same file on disk (a hard or symbolic link counts), or the same
    absolute path when one does not exist yet."""
    try:
        if out.exists() and inp.exists():
            return os.path.samefile(out, inp)
    except OSError:
        pass
    return os.path.abspath(out) == os.path.abspath(inp)


@contextmanager
def scratch_dir(parent: Path | None, prefix: str, suffix: str = "",
                on_error: Callable[[OSError], Exception] | None = None) -> Iterator[Path]:
    """A private directory, removed whatever happens: Ctrl-C while it is made or removed too
    (tempfile.TemporaryDirectory leaks it when the interrupt lands inside mkdtemp or rmtree)."""
    tmp: Path | None = None
    try:
        with interrupts_deferred():  # a Ctrl-C held here is raised with tmp set, so the finally removes it
            try:
                tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
            except OSError as e:
                if on_error is None:
                    raise
                raise on_error(e) from None
        yield tmp
    finally:
        if tmp is not None:
            with interrupts_deferred():
                shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A private directory beside `out` for the files being written; removed whatever happens.

    `out`'s folder is made if it is missing (as `mkdir -p` would), and removed again, if still empty,
    when nothing was written: `--out build/merged.onnx` works on a fresh clone.

    Its name carries the process id: a merge killed with SIGKILL cannot clean up, so the next merge
    to the same --out removes the staging folders of processes that no longer exist.
    """
    made = make_folders(out.parent)
    prefix = f".{out.name[:64]}."
    remove_stale_staging(out.parent, prefix)
    try:
        with scratch_dir(out.parent, f"{prefix}{os.getpid()}.", ".tmp", lambda e: cannot_write(
                out, f"cannot create a temporary folder in {str(out.parent)!r}: {e.strerror}")) as tmp:
            yield tmp
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def make_folders(folder: Path) -> list[Path]:
    """Make `folder` and the missing folders above it; return the ones made, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir()
        except FileExistsError:
            pass
        except OSError as e:
            raise cannot_write(made, f"cannot create the folder: {e.strerror}") from None
    return missing[::-1]


def remove_stale_staging(folder: Path, prefix: str) -> None:
    """Remove `<prefix><pid>.<random>.tmp` folders whose process is gone (killed before it could clean up)."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder / name, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user's process
        return True
    return True


EXTERNAL_MARGIN = 64 * 1024 * 1024  # headroom under protobuf's 2 GiB for the graph itself


def needs_external_data(size: int) -> bool:
    """A model of `size` bytes (skeleton, provenance and weights) is too big for one protobuf file."""
    return size > PROTOBUF_LIMIT - EXTERNAL_MARGIN


def write_model(model: ModelProto, staged: Path, external: bool,
                finish: Callable[[ModelProto], None] | None = None) -> list[Path]:
    """Write model (and its data file when external) into the staging dir; return the files written.

    The files are always new (the staging dir is fresh), so a stale data file is replaced at commit,
    never appended to. `finish(model)` is called once the weights are copied, before the rest of the
    model is serialized.
    """
    from .wire import write_single_file, write_with_external_data

    files = [staged]
    try:
        if external:
            data = data_path(staged)
            with open(staged, "xb") as f, open(data, "xb") as d:
                write_with_external_data(model, f, d, data.name, finish=finish)
                os.fsync(d.fileno())  # on disk before the rename, so a crash never leaves a named empty file
                os.fsync(f.fileno())
            files.append(data)
        else:
            with open(staged, "xb") as f:
                write_single_file(model, f, finish)
                os.fsync(f.fileno())
    except InputChanged as e:  # the weights' source, not the output, is at fault
        raise bad_input(e.path, e.problem, "leave the input files alone while a merge runs") from None
    except OSError as e:
        raise cannot_write(staged.parent.parent / staged.name, f"cannot write: {e.strerror or e}") from None
    return files


def commit(files: list[Path], out: Path) -> list[Path]:
    """Rename staged files into place, data file first so the model never points at a missing file.

    Every target is checked before anything moves, and Ctrl-C waits until all are in place.
    """
    targets = [out.parent / f.name for f in files]
    for target in targets:
        if target.is_dir() and not target.is_symlink():
            raise cannot_write(target, "is a directory", f"remove it or choose another --out than {out.name!r}")
    with interrupts_deferred():
        for staged, target in reversed(list(zip(files, targets, strict=True))):
            try:
                os.replace(staged, target)
            except OSError as e:
                raise cannot_write(target, f"cannot move into place: {e.strerror}") from None
    return targets
