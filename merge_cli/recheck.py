"""Re-verify a merged file against its sources, found through its provenance: the `verify` command.

The merged file records the resolved mapping (`merge_models.mapping`, canonical JSON with paths
relative to the merged file's folder) and each source's file and sha256 (`merge_models.sources`).
The parts and the combiner are rebuilt from those exactly as `merge` builds them, and the merged
file on disk is checked with the same verification `merge` runs before it writes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ExitCode, MergeError, bad_input, usage
from .mapping import FeatureMapping, parse_mapping
from .model_io import load_model, sha256_file
from .normalize import default_opset
from .pipeline import Stopwatch, build_model, convert_parts, read_parts, verify_parts
from .prepare import fit_combiner, prepare_combiner
from .verify import DEFAULT_ATOL, DEFAULT_ROWS, DEFAULT_RTOL, VerifyReport, check_options

MAPPING_KEY = "merge_models.mapping"
SOURCES_KEY = "merge_models.sources"
VERSION_KEY = "merge_models.version"


@dataclass(frozen=True)
class Source:
    """One source model of the merged file, where it was found, and its checked sha256."""

    model: str
    path: Path
    recorded: str  # the file name recorded in the merged file (relative to its folder)
    sha256: str


@dataclass
class RecheckResult:
    """What `verify` found; `to_dict()` is its --json document (status "error" when outputs differ)."""

    merged: Path
    made_by: str | None  # the merge-models version that wrote the file
    mapping: FeatureMapping
    sources: list[Source]
    outputs: list[str]
    data: Path | None
    data_rows: int
    verification: VerifyReport
    seconds: float

    @property
    def passed(self) -> bool:
        return self.verification.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.passed else "error",
            "merged": str(self.merged),
            "made_by": self.made_by,
            "checked_by": __version__,
            "combiner": self.mapping.combiner.kind,
            "sources": [{"model": s.model, "path": str(s.path), "recorded": s.recorded, "sha256": s.sha256}
                        for s in self.sources],
            "outputs": self.outputs,
            "data": {"path": str(self.data), "rows": self.data_rows} if self.data else None,
            "verification": self.verification.to_dict(),
            "seconds": round(self.seconds, 4),
        }


def verify_merged(
    merged: Path,
    *,
    data: Path | None = None,
    sources: Mapping[str, Path] | None = None,
    rows: int = DEFAULT_ROWS,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    progress: Callable[[str], None] | None = None,
) -> RecheckResult:
    """Rebuild the parts and combiner of `merged` from its provenance and verify the file against them.

    `sources` maps model names to files that replace the recorded ones (moved sources). A missing or
    changed source is a MergeError (exit 3); outputs that differ give a result whose `passed` is False.
    """
    start = time.perf_counter()
    step = Stopwatch({}, progress)
    check_options(rows, atol, rtol)
    with step("read provenance"):
        loaded = load_model(merged)
        props = {p.key: p.value for p in loaded.proto.metadata_props}
        spec = mapping_from_provenance(props, merged)
        found = find_sources(props, spec, merged, dict(sources or {}))
        spec = replace(spec, models=tuple(replace(m, path=s.path) for m, s in zip(spec.models, found, strict=True)))
        merged_outputs = [o.name for o in loaded.proto.graph.output]
        opset = default_opset(loaded.proto)
    with step("load"):
        parts = read_parts(spec, [load_model(m.path) for m in spec.models])
        real_rows = None
        if data is not None:
            from .data import read_data

            real_rows = read_data(data, [spec.input]).features.astype(spec.input.dtype)
    with step("convert"):
        prepared, _ = prepare_combiner(spec, None, None)  # the user's combiner graph
        target = convert_parts(parts, opset, spec, prepared)
        prepared = fit_combiner(spec, parts, prepared, None)  # the stack, refitted on its recorded data
    with step("splice"):
        keep_outputs = any(o.startswith(f"{p.name}/") for o in merged_outputs for p in parts)
        model, heads = build_model(parts, spec, target, keep_outputs, prepared)
        expected_outputs = [o.name for o in model.graph.output]
    if merged_outputs != expected_outputs:
        raise MergeError(ExitCode.VERIFY_FAILED, merged,
                         f"its outputs are {', '.join(merged_outputs)} but its sources and mapping give "
                         f"{', '.join(expected_outputs)}", "re-run `merge-models merge` to rebuild it")
    with step("verify"):
        report = verify_parts(merged, parts, spec, heads, keep_outputs, rows, atol, rtol, real_rows, prepared)
    return RecheckResult(merged, props.get(VERSION_KEY), spec, found, merged_outputs, data,
                         0 if real_rows is None else len(real_rows), report, time.perf_counter() - start)


def mapping_from_provenance(props: dict[str, str], merged: Path) -> FeatureMapping:
    """The resolved mapping recorded in the merged file, validated like a mapping file."""
    text = props.get(MAPPING_KEY)
    if text is None:
        raise bad_input(merged, f"has no merge-models provenance (no {MAPPING_KEY} in its metadata)",
                        "verify checks files written by `merge-models merge`")
    try:
        canonical = json.loads(text)
        doc = mapping_document(canonical)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise bad_input(merged, f"its {MAPPING_KEY} metadata is not a mapping merge-models wrote: {e}") from None
    return parse_mapping(doc, merged.resolve())  # paths are relative to the merged file's real folder


def mapping_document(canonical: dict[str, Any]) -> dict[str, Any]:
    """A canonical mapping (mapping.canonical) back in the mapping-file schema."""
    models = {}
    for name, entry in canonical["models"].items():
        model = {k: v for k, v in entry.items() if k != "inputs"}
        routes = entry["inputs"]
        if len(routes) == 1 and routes[0]["input"] is None:
            model["columns"] = routes[0]["columns"]
        else:
            model["inputs"] = {r["input"]: r["columns"] for r in routes}
        models[name] = model
    combiner = {k: v for k, v in canonical["combiner"].items() if v is not None}
    return {"version": canonical["version"], "input": canonical["input"], "models": models, "combiner": combiner}


def find_sources(props: dict[str, str], spec: FeatureMapping, merged: Path, moved: dict[str, Path]) -> list[Source]:
    """Each model's source file (recorded, or moved with --source NAME=PATH), checked against its sha256."""
    try:
        recorded = {s["model"]: s for s in json.loads(props.get(SOURCES_KEY, "[]"))}
    except (ValueError, KeyError, TypeError) as e:
        raise bad_input(merged, f"its {SOURCES_KEY} metadata is not what merge-models writes: {e}") from None
    names = [m.name for m in spec.models]
    unknown = sorted(set(moved) - set(names))
    if unknown:
        raise usage(None, f"--source {unknown[0]}=...: {merged.name} has no model {unknown[0]!r}",
                    f"its models are: {', '.join(names)}")
    found = []
    for m in spec.models:
        entry = recorded.get(m.name)
        if entry is None:
            raise bad_input(merged, f"its provenance records no source file for model {m.name!r}")
        if m.name in moved:
            path = moved[m.name]
            where = f"given as --source {m.name}={path}"
        else:  # recorded relative to the merged file's real folder (mapping.canonical resolves both)
            path = _shown(Path(os.path.normpath(merged.resolve().parent / entry["file"])))
            where = f"recorded as {entry['file']!r}, relative to {merged.name}"
        if not path.is_file():
            raise bad_input(path, f"source of model {m.name!r} not found ({where})",
                            f"pass --source {m.name}=PATH to point at the file the model was merged from")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            problem = (f"is not the file model {m.name!r} was merged from" if m.name in moved
                       else f"source of model {m.name!r} has changed since the merge")
            raise bad_input(path, f"{problem} (sha256 {digest[:12]}..., {merged.name} was built from "
                            f"{entry['sha256'][:12]}...)", f"pass --source {m.name}=PATH to the original file, "
                            "or merge again")
        found.append(Source(m.name, path, entry["file"], digest))
    return found


def _shown(path: Path) -> Path:
    """A path relative to the working directory when it is below it (shorter errors), else absolute."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path
