"""The merge, end to end: mapping -> parts -> spliced graph + combiner -> checked, verified, written."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .combiners import Head, Prepared, build_combiner, reference
from .errors import ExitCode, MergeError, bad_input, incompatible
from .mapping import FeatureMapping, apply_overrides, canonical, canonical_json, load_mapping
from .model_io import (
    LoadedModel,
    check_model,
    check_output_path,
    commit,
    hash_in_background,
    load_model,
    output_path,
    staging_dir,
    write_model,
)
from .normalize import Part, Target, align_heads, check_batches, common_target, convert_part, read_part
from .prepare import data_defaults, fit_combiner, part_rows, prepare_combiner, score_rows, verification_batches
from .scores import ScoreTable
from .splice import assemble, prefix_model, splice
from .verify import (
    DEFAULT_ATOL,
    DEFAULT_ROWS,
    DEFAULT_RTOL,
    VerifyReport,
    check_options,
    observe_outputs,
    random_rows,
    rows_for_width,
    runtime_ir_cap,
    verify,
)
from .wire import PROTOBUF_LIMIT, Refs, payload_bytes

if TYPE_CHECKING:
    from onnx import ModelProto

Progress = Callable[[str], None]
EXTERNAL_MARGIN = 64 * 1024 * 1024  # headroom under protobuf's 2 GiB for the graph itself


@dataclass
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


@dataclass
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "output": str(self.output),
            "files": [{"path": str(f), "bytes": f.stat().st_size} for f in self.files],
            "models": [vars(m) for m in self.models],
            "combiner": self.combiner,
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


def merge(
    mapping: str | Path,
    out: str | Path,
    models: Sequence[str | Path] = (),
    *,
    combiner: str | None = None,
    weights: Sequence[float] | None = None,
    keep_outputs: bool = False,
    verify_output: bool = True,
    rows: int = DEFAULT_ROWS,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    opset: int | None = None,
    external_data: bool = False,
    progress: Progress | None = None,
    data: str | Path | None = None,
    target: str | None = None,
) -> MergeResult:
    """Merge the mapping's models into `out` and (unless verify_output=False) prove it with onnxruntime.

    `data` (CSV or .npz) adds real rows to the verification and, with a `target` column (the one
    non-input column by default), scores each part and the merged model on them.
    Raises MergeError (with its exit code) for every user-facing problem.
    """
    start = time.perf_counter()
    stages: dict[str, float] = {}
    step = Stopwatch(stages, progress)
    out = output_path(out)
    check_options(rows, atol, rtol)

    with step("read mapping"):
        spec = apply_overrides(data_defaults(load_mapping(Path(mapping)), data, target), [Path(m) for m in models],
                               combiner, list(weights) if weights is not None else None)
        check_output_path(out, input_files(spec) + ([Path(data)] if data is not None else []))
    hashes = hash_in_background([m.path for m in spec.models])  # read by set_provenance, after the copy
    with step("load"):
        loaded = [load_model(m.path) for m in spec.models]
        check_output_path(out, input_files(spec) + [f for m in loaded for f in m.data_files])
        parts = read_parts(spec, loaded, strict=verify_output)
        _, warnings = check_batches(parts, spec.source)
        if verify_output and rows_for_width(rows, len(spec.input.columns)) < rows:
            warnings.append(f"verifying on {rows_for_width(rows, len(spec.input.columns))} random rows, not {rows}: "
                            f"{len(spec.input.columns)} columns are too wide for more in memory")
        prepared, rows_data = prepare_combiner(spec, Path(data) if data is not None else None, target)
    with step("convert"):
        common = convert_parts(parts, opset, spec, prepared)
    if spec.combiner.kind == "stack":
        with step("fit"):
            prepared = fit_combiner(spec, parts, prepared, rows_data)
    with step("splice"):
        model, heads = build_model(parts, spec, common, keep_outputs, prepared)
        refs: Refs = {k: v for lm in loaded + prepared.sources() for k, v in lm.refs.items()}
        check_model(model, refs, out, full=True)
    size = model.ByteSize() + provenance_bytes(spec, parts, out) + payload_bytes(model, refs)
    external = external_data or size > PROTOBUF_LIMIT - EXTERNAL_MARGIN
    report = None
    with staging_dir(out) as tmp:
        with step("write"):
            # provenance (sha256 of the sources, hashed meanwhile) goes in once the weights are copied
            files = write_model(model, refs, tmp / out.name, external,
                                finish=lambda m: set_provenance(m, spec, parts, out, hashes))
        if verify_output:
            with step("verify"):
                real = rows_data.features.astype(spec.input.dtype) if rows_data is not None else None
                try:
                    report = verify_parts(files[0], parts, spec, heads, keep_outputs, rows, atol, rtol, real, prepared)
                except MergeError as e:  # name the output as the user gave it, not the staged copy
                    e.file = str(out) if e.code == ExitCode.VERIFY_FAILED else e.file
                    raise
            if not report.passed:
                error = MergeError(ExitCode.VERIFY_FAILED, out, report.failure(),
                                   "nothing was written; raise --atol/--rtol if the difference is acceptable")
                error.details = {"verification": report.to_dict()}
                raise error
        scores = None
        if rows_data is not None and rows_data.target is not None:
            with step("score"):
                scores = score_rows(files[0], parts, heads, spec, rows_data)
        placed = commit(files, out)
    return MergeResult(
        output=out,
        files=placed,
        models=[model_report(p, spec, common) for p in parts],
        combiner=spec.combiner.kind,
        outputs=[_output_entry(o) for o in model.graph.output],
        opsets=common.opsets,
        ir_version=common.ir_version,
        verification=report,
        seconds=time.perf_counter() - start,
        stages=stages,
        warnings=warnings,
        scores=scores,
        stack=prepared.stack.to_dict(spec.input.columns) if prepared.stack else None,
    )


def input_files(spec: FeatureMapping) -> list[Path]:
    files = [spec.source, *(m.path for m in spec.models)]
    files += [p for p in (spec.combiner.data, spec.combiner.path) if p is not None]
    return files


def read_parts(spec: FeatureMapping, loaded: list[LoadedModel], strict: bool = True) -> list[Part]:
    """Each loaded model as a part: its inputs, outputs, head and classes (see normalize.read_part).

    Each original file is run once in onnxruntime to see its real output shapes; `strict`: a file
    onnxruntime cannot run is an error now rather than at verification.
    """
    observe = functools.partial(observe_outputs, strict=strict)
    return [read_part(m, lm, observe) for m, lm in zip(spec.models, loaded, strict=True)]


def convert_parts(parts: list[Part], opset: int | None, spec: FeatureMapping,
                  prepared: Prepared | None = None) -> Target:
    """Convert every part to the common opset and IR version, align the heads the combiner reads
    (class order, [N, 2] for binary, [N, 1] for regressors), then prefix its names with `<model>/`.
    A user's combiner graph (kind = "onnx") is converted and prefixed the same way."""
    extra = prepared.parts() if prepared else []
    wanted = common_target(parts + extra, opset)
    target = replace(wanted, ir_version=min(wanted.ir_version, runtime_ir_cap(wanted.ir_version)))
    for part in parts + extra:
        convert_part(part, target)
    align_heads(parts, spec.combiner.kind, target.opsets[""], spec.source)
    for part in parts + extra:
        prefix_model(part.model, f"{part.name}/")
    return target


def build_model(parts: list[Part], spec: FeatureMapping, target: Target, keep_outputs: bool,
                prepared: Prepared | None = None) -> tuple[ModelProto, list[Head]]:
    """The merged ModelProto (weights still by reference, provenance not yet set) and its combiner's heads."""
    from onnx import helper

    spliced = splice(parts, spec)
    heads = [Head.of(p) for p in parts]
    combined = build_combiner(spec, heads, spliced.fresh, target.opsets[""], prepared)
    if combined.routes_read:  # gate: the parts read the input with NaN filled in
        for node in spliced.nodes:
            node.input[:] = [combined.routes_read if x == spec.input.name else x for x in node.input]
    spliced.value_info.extend(combined.value_info)
    spliced.sparse_initializers.extend(combined.sparse_initializers)
    spliced.functions.extend(combined.functions)
    outputs = list(combined.outputs)
    if keep_outputs:
        for part in parts:
            tensors = {f"{part.name}/{o.name}" for o in part.outputs}
            outputs.extend(o for o in part.model.graph.output if o.name in tensors)
    graph = assemble(spliced, combined.nodes, combined.initializers, outputs, "merged")
    model = helper.make_model(
        graph,
        ir_version=target.ir_version,
        opset_imports=[helper.make_opsetid(d, v) for d, v in target.opsets.items()],
        producer_name="merge-models",
        producer_version=__version__,
        doc_string=f"{spec.combiner.kind} of {', '.join(p.name for p in parts)}, merged by merge-models",
    )
    model.functions.extend(spliced.functions)
    _used_function_domains(model, target)
    return model, heads


def _used_function_domains(model: ModelProto, target: Target) -> None:
    """Local functions' domains need an opset_import entry too (one per domain)."""
    known = {e.domain for e in model.opset_import}
    for function in model.functions:
        if function.domain not in known:
            model.opset_import.add(domain=function.domain, version=1)
            known.add(function.domain)


def set_provenance(model: ModelProto, spec: FeatureMapping, parts: list[Part], out: Path,
                   hashes: dict[Path, Future[str]]) -> None:
    from onnx import helper

    helper.set_model_props(model, provenance(spec, parts, out, lambda path: _digest(hashes[path], path)))


def provenance_bytes(spec: FeatureMapping, parts: list[Part], out: Path) -> int:
    """The provenance's serialized size before the hashes are known (a sha256 is always 64 hex digits)."""
    from onnx import ModelProto, helper

    model = ModelProto()
    helper.set_model_props(model, provenance(spec, parts, out, lambda path: "0" * 64))
    return model.ByteSize()


def provenance(spec: FeatureMapping, parts: list[Part], out: Path, digest: Callable[[Path], str]) -> dict[str, str]:
    """Tool version, the resolved mapping and each source's sha256, for `verify` and for people."""
    mapping = canonical(spec, out.parent)
    sources = []
    for part in parts:
        lm: LoadedModel = part.source
        sources.append({
            "model": part.name,
            "file": mapping["models"][part.name]["path"],
            "sha256": digest(lm.path),
            "bytes": lm.path.stat().st_size,
        })
    props = {
        "merge_models.version": __version__,
        "merge_models.mapping": canonical_json(mapping),
        "merge_models.sources": canonical_json(sources),
    }
    for part in parts:
        for p in part.model.metadata_props:
            props[f"{part.name}/{p.key}"] = p.value
    return dict(sorted(props.items()))


def _digest(future: Future[str], path: Path) -> str:
    try:
        return future.result()
    except OSError as e:
        raise bad_input(path, f"cannot read: {e.strerror or e}") from None


def verify_parts(merged: Path, parts: list[Part], spec: FeatureMapping, heads: list[Head], keep_outputs: bool,
                 rows: int, atol: float, rtol: float, data: np.ndarray | None = None,
                 prepared: Prepared | None = None) -> VerifyReport:
    """Verify `merged` on `rows` seeded random rows (and the given real rows) against the parts + combiner."""

    def expected_of(outputs: list[dict[str, np.ndarray]], batch: np.ndarray) -> dict[str, np.ndarray]:
        arrays = [o[p.head.name] for p, o in zip(parts, outputs, strict=True)]
        expected = reference(spec.combiner, heads, arrays, batch, prepared)
        if keep_outputs:
            for part, values in zip(parts, outputs, strict=True):
                for name, value in values.items():
                    expected[f"{part.name}/{name}"] = value
        return expected

    batches = verification_batches(spec, heads, random_rows(rows, len(spec.input.columns), spec.input.dtype), data)
    return verify(merged, parts, expected_of, batches, atol, rtol, part_rows(spec))


def model_report(part: Part, spec: FeatureMapping, target: Target) -> ModelReport:
    return ModelReport(
        name=part.name,
        path=str(part.source.path),
        columns=[spec.input.columns[c] for c in part.spec.columns],
        task=part.task,
        head=part.head_output,
        classes=list(part.classes) if part.classes is not None else None,
        opset_from=part.opset_from,
        opset_to=target.opsets[""],
        bytes=part.source.size,
    )


def _output_entry(vi: Any) -> dict[str, Any]:
    from onnx import TensorProto

    from .normalize import tensor_info

    info = tensor_info(vi)
    if info is None:
        return {"name": vi.name, "type": "non-tensor", "shape": None}
    shape = None if info.shape is None else [d if isinstance(d, int) else (d or "?") for d in info.shape]
    return {"name": info.name, "type": TensorProto.DataType.Name(info.elem_type).lower(), "shape": shape}


class Stopwatch:
    """Times named stages and tells the progress callback when each starts."""

    def __init__(self, stages: dict[str, float], progress: Progress | None) -> None:
        self.stages = stages
        self.progress = progress
        self.name = ""

    def __call__(self, name: str) -> Stopwatch:
        self.name = name
        return self

    def __enter__(self) -> None:
        if self.progress:
            self.progress(self.name)
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.stages[self.name] = time.perf_counter() - self.started


__all__ = ["MergeResult", "merge", "incompatible"]
