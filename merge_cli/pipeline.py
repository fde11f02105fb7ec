"""The product on one screen: request -> mapping -> loaded -> parts -> converted -> merged graph -> written -> verified.

`merge` and `verify` (recheck.py) share `build`: the same stages make the graph they check.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .combiners import reference
from .combining import Head, Prepared
from .comparison import PartRuns, VerifyReport, run_references, verify
from .convert import Target, capped_ir, common_target, convert_part, ir_raised, needs_legacy_trees
from .errors import ExitCode, MergeError, bad_input
from .heads import align_heads
from .mapping import FeatureMapping, apply_overrides, load_mapping
from .model_io import LoadedModel, check_model, hash_in_background, load_model, sha256_file
from .parts import Part, check_batches, read_part
from .prepare import data_defaults, fit_combiner, part_rows, prepare_combiner, score_rows
from .process import in_background
from .provenance import provenance, provenance_bytes, set_provenance
from .request import MergeRequest
from .result import MergeResult, ModelReport, input_entry, output_entry
from .runtime import observe_outputs, rows_for_width
from .splice import merged_model, prefixed
from .trees import legacy_tree_ensembles
from .verification import check_typed_support, fitted_tolerances, rows_to_verify
from .wire import payload_bytes
from .writing import check_output_path, commit, needs_external_data, staging_dir, write_model

if TYPE_CHECKING:
    import numpy as np
    from onnx import ModelProto

    from .data import Rows

Progress = Callable[[str], None]
REFERENCES = "merge-models-references"  # the thread the original files run on during the write


@dataclass(frozen=True)
class Built:
    """The merged graph (weights still by reference, no provenance yet) and what checking it needs."""

    request: MergeRequest
    mapping: FeatureMapping
    parts: tuple[Part, ...]  # converted, heads aligned, prefixed with `<model>/`
    target: Target
    model: ModelProto
    heads: tuple[Head, ...]
    prepared: Prepared  # the fitted stack, the user's combiner graph
    rows: Rows | None  # the --data rows
    warnings: tuple[str, ...]
    loaded: tuple[LoadedModel, ...]  # every file whose weights the model refers to


def merge(request: MergeRequest, progress: Progress | None = None) -> MergeResult:
    """Merge the request's models into `request.out` and (unless request.verify is False) prove it with onnxruntime.

    Raises MergeError (with its exit code) for every user-facing problem; nothing is written then.
    """
    start, step = time.perf_counter(), Stopwatch(progress)
    out = request.out
    with step("read mapping"):
        mapping = read_mapping(request)
        check_output_path(out, input_files(mapping, request))
        check_typed_support(mapping)
    hashes = hash_in_background([m.path for m in mapping.models])  # read once the weights are copied
    built = build(request, mapping, step)
    data_files = [f for lm in built.loaded for f in lm.data_files]
    hashes |= hash_in_background(data_files)  # the weights' .data files, known once loaded, hashed meanwhile too
    check_output_path(out, input_files(mapping, request) + data_files)
    check_model(built.model, out, full=True)
    size = built.model.ByteSize() + provenance_bytes(mapping, built.parts, out) + payload_bytes(built.model)
    external = request.external_data or needs_external_data(size)
    report = scores = None
    # the parts' runs do not need the merged file, and onnxruntime releases the GIL while it computes, as the
    # writer does while the kernel copies the weights: the parts run while the merged file is written
    # (2 x 1.1 GB pair: the verified merge 3.21x -> 2.90x its --no-verify)
    references = in_background(functools.partial(reference_runs, built), REFERENCES) if request.verify else None
    with staging_dir(out) as tmp:
        # the parts run on the verification rows meanwhile; provenance (the sources' sha256, hashed
        # meanwhile) goes in once the weights are copied
        with step("write"):
            digest = functools.partial(_digest, hashes)
            files = write_model(built.model, tmp / out.name, external,
                                finish=lambda m: set_provenance(m, provenance(mapping, built.parts, out, digest)))
        if request.verify:
            with step("verify"):
                report = verify_written(files[0], built, references)
        if built.rows is not None and built.rows.target is not None:
            with step("score"):
                scores = score_rows(files[0], list(built.parts), list(built.heads), mapping, built.rows,
                                    report.runs if report is not None else None)
        placed = commit(files, out)
    stack = built.prepared.stack
    return MergeResult(
        output=out, files=placed, combiner=mapping.combiner.kind,
        models=[ModelReport.of(p, mapping.inputs.columns, built.target) for p in built.parts],
        inputs=[input_entry(i, mapping) for i in built.model.graph.input],
        outputs=[output_entry(o) for o in built.model.graph.output],
        opsets=built.target.opsets, ir_version=built.target.ir_version, verification=report,
        seconds=time.perf_counter() - start, stages=step.stages, scores=scores,
        warnings=list(built.warnings) + list(stack.warnings if stack else ()),
        stack=stack.to_dict(mapping.inputs.columns) if stack else None,
    )


def read_mapping(request: MergeRequest) -> FeatureMapping:
    """The mapping file with the request's MODEL paths, combiner, weights and --data applied.

    `verify`'s request carries the resolved mapping the merged file records: it is used as it is.
    """
    if isinstance(request.mapping, FeatureMapping):
        return request.mapping
    return apply_overrides(data_defaults(load_mapping(request.mapping), request.data, request.target), request)


def build(request: MergeRequest, mapping: FeatureMapping, step: Stopwatch | None = None) -> Built:
    """Load, read, convert and splice the parts and append the combiner: the merged graph, not yet written."""
    step = step or Stopwatch(None)
    with step("load"):
        loaded = [load_model(m.path) for m in mapping.models]
        observe = functools.partial(observe_outputs, strict=request.verify)
        parts = [read_part(m, lm, observe) for m, lm in zip(mapping.models, loaded, strict=True)]
        _, warnings = check_batches(parts, mapping.source)
        width = len(mapping.inputs.columns)
        if request.verify and rows_for_width(request.rows, width) < request.rows:
            warnings.append(f"verifying on {rows_for_width(request.rows, width)} random rows, not {request.rows}: "
                            f"{width} columns are too wide for more in memory")
        prepared, rows = prepare_combiner(mapping, request.data, request.target)
    with step("convert"):
        models_ir = max(p.model.ir_version for p in parts)
        converted = convert_parts(parts, request.opset, mapping, prepared, request.ir_version)
    parts, target, prepared = list(converted.parts), converted.target, converted.prepared
    if request.ir_version is None and target.ir_version > models_ir:  # raised, not asked for
        warnings.append(ir_raised(models_ir, target.ir_version, [p.model.ir_version for p in prepared.parts()]))
    if mapping.combiner.kind == "stack":
        with step("fit"):
            prepared = fit_combiner(mapping, parts, prepared, rows)
    with step("splice"):
        model, heads = merged_model(parts, mapping, target, request.keep_outputs, prepared)
    return Built(request, mapping, tuple(parts), target, model, tuple(heads), prepared, rows, tuple(warnings),
                 (*loaded, *prepared.sources()))


def verify_written(merged: Path, built: Built, references: Future[PartRuns] | None = None) -> VerifyReport:
    """The Verified stage: the written file against the original files plus the combiner, in onnxruntime."""
    report = verify_built(merged, built, references)
    if not report.passed:
        error = MergeError(ExitCode.VERIFY_FAILED, built.request.out, report.failure(), report.hint())
        error.details = {"verification": report.to_dict()}
        raise error
    return report


def reference_runs(built: Built) -> PartRuns:
    """The original files run on the request's seeded random rows (and the --data rows)."""
    mapping, parts = built.mapping, list(built.parts)
    rows = rows_to_verify(built.request.rows, mapping, parts, list(built.heads), built.model, built.rows)
    return run_references(parts, rows, part_rows(mapping))


def verify_built(merged: Path, built: Built, references: Future[PartRuns] | None = None) -> VerifyReport:
    """Verify `merged` against the parts + combiner on the rows of `references` (default: start them now).

    A failure to run the merged file names it as the request gave it (`out`), not a staged copy.
    """
    request, mapping, parts = built.request, built.mapping, list(built.parts)

    def expected_of(outputs: list[dict[str, np.ndarray]], batch: np.ndarray) -> dict[str, np.ndarray]:
        arrays = [o[p.head.name] for p, o in zip(parts, outputs, strict=True)]
        expected = reference(mapping.combiner, list(built.heads), arrays, batch, built.prepared)
        if request.keep_outputs:
            for part, values in zip(parts, outputs, strict=True):
                expected.update({f"{part.name}/{name}": value for name, value in values.items()})
        return expected

    atol, rtol, why = fitted_tolerances(request.atol, request.rtol, list(built.heads))
    try:
        runs = references or in_background(functools.partial(reference_runs, built), REFERENCES)
        return replace(verify(merged, parts, expected_of, runs.result, atol, rtol), tolerance_from=why)
    except MergeError as e:
        e.file = str(request.out) if e.code == ExitCode.VERIFY_FAILED else e.file
        raise


@dataclass(frozen=True)
class Converted:
    """The parts at one target (opsets, IR version), their heads aligned, their names under `<model>/`."""

    parts: tuple[Part, ...]
    target: Target
    prepared: Prepared  # the user's combiner graph converted and prefixed the same way


def convert_parts(parts: list[Part], opset: int | None, mapping: FeatureMapping, prepared: Prepared,
                  ir_version: int | None = None) -> Converted:
    """Convert every part to the common opset and IR version, align the heads the combiner reads
    (class order, [N, 2] for binary, [N, 1] for regressors), then prefix its names with `<model>/`.
    A user's combiner graph (kind = "onnx") is converted and prefixed the same way."""
    from .runtime import runtime_ir_cap  # looked up per call: tests lower the cap

    every = parts + prepared.parts()
    if needs_legacy_trees(every):
        every = [legacy_tree_ensembles(p) for p in every]
    wanted = common_target(every, opset)
    target = replace(wanted, ir_version=min(wanted.ir_version, runtime_ir_cap(wanted.ir_version)))
    if ir_version is not None:
        target = replace(target, ir_version=capped_ir(ir_version, target))
    every = [convert_part(p, target) for p in every]
    aligned = align_heads(every[:len(parts)], mapping.combiner.kind, target.opsets[""], mapping.source)
    every = [prefixed(p) for p in aligned + every[len(parts):]]
    return Converted(tuple(every[:len(parts)]), target, prepared.with_parts(every[len(parts):]))


def input_files(mapping: FeatureMapping, request: MergeRequest) -> list[Path]:
    """Every file the merge reads: the output must not overwrite any of them."""
    files = [mapping.source, *(m.path for m in mapping.models)]
    files += [p for p in (mapping.combiner.data, mapping.combiner.path, request.data) if p is not None]
    return files


def _digest(hashes: dict[Path, Future[str]], path: Path) -> str:
    try:
        return hashes[path].result() if path in hashes else sha256_file(path)
    except OSError as e:
        raise bad_input(path, f"cannot read: {e.strerror or e}") from None


class Stopwatch:
    """Times named stages (`stages`) and tells the progress callback when each starts."""

    def __init__(self, progress: Progress | None) -> None:
        self.stages: dict[str, float] = {}
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
