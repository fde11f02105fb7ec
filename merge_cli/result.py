"""What a merge reports: the MergeResult the Python API returns and whose `to_dict()` is the `--json` document."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnx import ValueInfoProto

    from .comparison import VerifyReport
    from .convert import Target
    from .mapping import FeatureMapping
    from .parts import Part
    from .scores import ScoreTable


@dataclass(frozen=True)
class ModelReport:
    name: str
    path: str
    columns: list[str]
    task: str
    head: str
    classes: list[Any] | None
    opset_from: int | None
    opset_to: int
    bytes: int
    tensors: list[str] = field(default_factory=list)  # merged tensor inputs it reads whole

    @staticmethod
    def of(part: Part, columns: tuple[str, ...], target: Target) -> ModelReport:
        return ModelReport(
            name=part.name,
            path=str(part.source.path),
            columns=[columns[c] for c in part.spec.columns],
            task=part.task,
            head=part.head_output,
            classes=list(part.classes) if part.classes is not None else None,
            opset_from=part.opset_from,
            opset_to=target.opsets[""],
            bytes=part.source.size,
            tensors=[r.whole for r in part.spec.routes if r.whole is not None],
        )


@dataclass(frozen=True)
class MergeResult:
    """What a merge produced; `to_dict()` is the `--json` document."""

    output: Path
    files: list[Path]
    models: list[ModelReport]
    combiner: str
    outputs: list[dict[str, Any]]
    opsets: dict[str, int]
    ir_version: int
    verification: VerifyReport | None
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    scores: ScoreTable | None = None  # --data rows with a target: each part and the merged model
    stack: dict[str, Any] | None = None  # how the stack was fitted and its cross-validated scores
    inputs: list[dict[str, Any]] = field(default_factory=list)  # the merged inputs: name, dtype, shape, columns

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "output": str(self.output),
            "files": [{"path": str(f), "bytes": f.stat().st_size} for f in self.files],
            "models": [vars(m) for m in self.models],
            "combiner": self.combiner,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "opsets": self.opsets,
            "ir_version": self.ir_version,
            "verification": self.verification.to_dict() if self.verification else None,
            "seconds": round(self.seconds, 4),
            "stages": {k: round(v, 4) for k, v in self.stages.items()},
            "warnings": self.warnings,
            "scores": self.scores.to_dict() if self.scores else None,
            "stack": self.stack,
        }


def output_entry(vi: ValueInfoProto) -> dict[str, Any]:
    """A merged output as --json shows it: name, element type, shape ("?" for an unknown dimension)."""
    from onnx import TensorProto

    from .graphs import tensor_info

    info = tensor_info(vi)
    if info is None:
        return {"name": vi.name, "type": "non-tensor", "shape": None}
    shape = None if info.shape is None else [d if isinstance(d, int) else (d or "?") for d in info.shape]
    return {"name": info.name, "type": TensorProto.DataType.Name(info.elem_type).lower(), "shape": shape}


def input_entry(vi: ValueInfoProto, mapping: FeatureMapping) -> dict[str, Any]:
    """A merged input for --json: its name, dtype, shape and (for a table) its columns."""
    from .inputs import TableInput

    entry = output_entry(vi)
    item = mapping.inputs.named(vi.name)
    return {"name": vi.name, "dtype": item.dtype if item else entry["type"], "shape": entry["shape"],
            "columns": list(item.columns) if isinstance(item, TableInput) else None}
