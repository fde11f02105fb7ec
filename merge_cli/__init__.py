"""merge-models: merge trained ONNX models into one model, verified with onnxruntime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .pipeline import MergeResult


def merge(*args: Any, **kwargs: Any) -> MergeResult:
    """Merge models as `merge-models merge` does; see merge_cli.pipeline.merge for the options."""
    from .pipeline import merge as _merge

    return _merge(*args, **kwargs)


__all__ = ["__version__", "merge"]
