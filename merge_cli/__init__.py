"""merge-models: merge trained ONNX models into one model, verified with onnxruntime.

The Python API is `merge` (what `merge-models merge` does); failures raise `MergeError`, whose
`code` is the command line's exit code. Importing this package is cheap: onnx, onnxruntime and
numpy are imported when `merge` runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ExitCode, MergeError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .pipeline import MergeResult

PathLike = str | os.PathLike[str]


def merge(
    mapping: PathLike,
    out: PathLike,
    models: Sequence[PathLike] = (),
    *,
    combiner: str | None = None,
    weights: Sequence[float] | None = None,
    keep_outputs: bool = False,
    verify: bool = True,
    rows: int = 256,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    opset: int | None = None,
    external_data: bool = False,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> MergeResult:
    """Merge the models of a feature-mapping file into `out`, as `merge-models merge` does.

    The arguments are the command line's: `models` replace the mapping's paths in order (MODEL ...),
    `combiner` (--combiner), `weights` (--weights), `keep_outputs` (--keep-outputs), `verify=False`
    (--no-verify), `rows`, `atol`, `rtol`, `opset`, `external_data` (--external-data). `progress` is
    called with each step's name ("load", "convert", "verify", "write", ...) as it starts; further
    keyword options go to merge_cli.pipeline.merge.

    Returns the MergeResult (`.output`, `.files`, `.models`, `.outputs`, `.verification`, and
    `.to_dict()`, the `--json` document). Raises MergeError (`.code`, `.file`, `.message`, `.hint`)
    for every user-facing problem; nothing is written then.
    """
    from pathlib import Path

    from .pipeline import merge as run_merge

    return run_merge(
        Path(mapping), Path(out), [Path(m) for m in models],
        combiner=combiner, weights=weights, keep_outputs=keep_outputs, verify_output=verify, rows=rows,
        atol=atol, rtol=rtol, opset=opset, external_data=external_data, progress=progress, **options,
    )


__all__ = ["__version__", "merge", "MergeError", "ExitCode"]
