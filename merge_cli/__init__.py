"""merge-models: merge trained ONNX models into one model, verified with onnxruntime.

The Python API: `merge` (what `merge-models merge` does), `verify` (`merge-models verify`), `inspect`
(`merge-models inspect`), the `MergeRequest` a merge runs from, its `MergeResult`, and `MergeError`,
raised for every user-facing problem (its `code` is the command line's exit code, an `ExitCode`).
Importing this package is cheap: onnx, onnxruntime and numpy are imported when a function runs.
"""

from __future__ import annotations

import os as _os
from collections.abc import Callable as _Callable
from collections.abc import Mapping as _Mapping
from collections.abc import Sequence as _Sequence
from typing import TYPE_CHECKING as _TYPE_CHECKING

from .errors import ExitCode, MergeError
from .request import DEFAULT_ATOL as _ATOL
from .request import DEFAULT_ROWS as _ROWS
from .request import DEFAULT_RTOL as _RTOL
from .request import MergeRequest
from .result import MergeResult

__version__ = "0.1.0"

if _TYPE_CHECKING:
    from .inspection import ModelInfo
    from .recheck import RecheckResult

_PathLike = str | _os.PathLike[str]


def merge(
    mapping: _PathLike | MergeRequest,
    out: _PathLike = "merged.onnx",
    models: _Sequence[_PathLike] = (),
    *,
    combiner: str | None = None,
    weights: str | _Sequence[float] | None = None,
    keep_outputs: bool = False,
    verify: bool = True,
    rows: int = _ROWS,
    atol: float = _ATOL,
    rtol: float = _RTOL,
    opset: int | None = None,
    ir_version: int | None = None,
    external_data: bool = False,
    data: _PathLike | None = None,
    target: str | None = None,
    progress: _Callable[[str], None] | None = None,
) -> MergeResult:
    """Merge the models of a feature-mapping file into `out`, as `merge-models merge` does.

    The arguments are the command line's: `models` replace the mapping's paths in order (MODEL ...),
    `combiner`, `weights` ("0.7,0.3" or [0.7, 0.3]), `keep_outputs`, `verify=False` (--no-verify),
    `rows`, `atol`, `rtol`, `opset`, `ir_version`, `external_data`, `data` (real rows: verified on and scored) and
    `target` (its column of true values). `mapping` may also be a ready MergeRequest (the rest is then
    ignored). `progress` is called with each step's name ("load", "convert", "verify", "write", ...).

    Returns the MergeResult (`.output`, `.files`, `.models`, `.outputs`, `.verification`, and
    `.to_dict()`, the `--json` document). Raises MergeError (`.code`, `.file`, `.message`, `.hint`)
    for every user-facing problem; nothing is written then.
    """
    from pathlib import Path

    from .pipeline import merge as run_merge
    from .request import weights_of
    from .writing import output_path

    if isinstance(mapping, MergeRequest):
        return run_merge(mapping, progress)
    request = MergeRequest(
        Path(mapping), output_path(out), tuple(Path(m) for m in models), combiner=combiner, weights=weights_of(weights),
        keep_outputs=keep_outputs, verify=verify, rows=rows, atol=atol, rtol=rtol, opset=opset,
        ir_version=ir_version, external_data=external_data, data=None if data is None else Path(data), target=target,
    )
    return run_merge(request, progress)


def verify(
    merged: _PathLike,
    *,
    data: _PathLike | None = None,
    sources: _Mapping[str, _PathLike] | None = None,
    sources_dir: _PathLike | None = None,
    rows: int = _ROWS,
    atol: float = _ATOL,
    rtol: float = _RTOL,
    progress: _Callable[[str], None] | None = None,
) -> RecheckResult:
    """Re-check a merged file against its sources, as `merge-models verify` does.

    The sources are found through the provenance the file records; `sources` maps model names to moved
    files, `sources_dir` is a folder holding them under their recorded names. Returns the result
    (`.passed`, `.verification`, `.to_dict()`); a missing or changed source raises MergeError.
    """
    from pathlib import Path

    from .recheck import verify_merged

    return verify_merged(Path(merged), data=None if data is None else Path(data),
                         sources={k: Path(v) for k, v in (sources or {}).items()},
                         sources_dir=None if sources_dir is None else Path(sources_dir),
                         rows=rows, atol=atol, rtol=rtol, progress=progress)


def inspect(model: _PathLike) -> ModelInfo:
    """What a merge sees in one model file, as `merge-models inspect` shows it (`.to_dict()`: its --json)."""
    from pathlib import Path

    from .inspection import describe

    return describe(Path(model))


__all__ = ["ExitCode", "MergeError", "MergeRequest", "MergeResult", "__version__", "inspect", "merge", "verify"]


def __dir__() -> list[str]:
    return sorted(__all__)
