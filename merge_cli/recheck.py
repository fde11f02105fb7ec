"""Re-verify a merged file against its sources, found through its provenance: the `verify` command.

The request is rebuilt from what the merged file records (provenance.py); `pipeline.build` makes the
graph exactly as `merge` does, and the merged file on disk is checked with the same verification
`merge` runs before it writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import __version__
from .comparison import VerifyReport
from .errors import ExitCode, MergeError, bad_input, usage
from .graphs import default_opset
from .mapping import FeatureMapping
from .model_io import hash_in_background, load_model, sha256_file
from .pipeline import Built, Stopwatch, build, verify_built
from .provenance import STACK_FIT, STACK_FIT_KEY, VERSION_KEY, check_inside, recorded_mapping, recorded_sources
from .request import DEFAULT_ATOL, DEFAULT_ROWS, DEFAULT_RTOL, MergeRequest


@dataclass(frozen=True)
class Source:
    """One source model of the merged file, where it was found, and its checked sha256."""

    model: str
    path: Path
    recorded: str  # the file name recorded in the merged file (relative to its folder)
    sha256: str


@dataclass(frozen=True)
class RecheckResult:
    """What `verify` found; `to_dict()` is its --json document (status "error" when outputs differ)."""

    merged: Path
    made_by: str | None  # the merge-models version that wrote the file
    mapping: FeatureMapping
    sources: list[Source]  # in mapping order
    outputs: list[str]
    data: Path | None
    data_rows: int
    verification: VerifyReport
    seconds: float
    stack_fit: str | None = None  # the stack fit version the file records (None: not a stack, or merged before 3)

    @property
    def passed(self) -> bool:
        return self.verification.passed

    def failure(self) -> tuple[str, str]:
        """Why verification failed, and what to do. A stack fitted by another version of the fit cannot be
        reproduced by refitting it here, so its differing outputs say nothing about the file: say that instead."""
        if self.mapping.combiner.kind == "stack" and self.stack_fit != STACK_FIT:
            recorded = f"stack fit {self.stack_fit}" if self.stack_fit else "a stack fit from before versions were recorded"
            return (f"was merged by an older merge-models ({recorded}; this one refits the stack with version "
                    f"{STACK_FIT}, which gives other weights on the same rows), so verify cannot reproduce it",
                    "merge it again with this merge-models (same mapping and rows), then verify the new file")
        return (self.verification.failure(),
                "the merged file no longer computes what its sources and mapping compute; merge again")

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
    sources_dir: Path | None = None,
    rows: int = DEFAULT_ROWS,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    progress: Callable[[str], None] | None = None,
    from_cli: bool = False,
) -> RecheckResult:
    """Rebuild the parts and combiner of `merged` from its provenance and verify the file against them.

    `sources` maps model names to files that replace the recorded ones (moved sources); `sources_dir` is a
    folder where moved sources are looked up by their recorded file name. A missing or changed source is a
    MergeError (exit 3) naming every such source; outputs that differ give a result whose `passed` is False.
    """
    start, step = time.perf_counter(), Stopwatch(progress)
    MergeRequest(Path(), rows=rows, atol=atol, rtol=rtol, from_cli=from_cli)  # the options' checks, before any work
    with step("read provenance"):
        proto = load_model(merged).proto
        props = {p.key: p.value for p in proto.metadata_props}
        mapping = recorded_mapping(props, merged, sources_dir)
        found = find_sources(props, mapping, merged, dict(sources or {}), sources_dir, from_cli)
        mapping = replace(mapping, models=tuple(replace(m, path=s.path) for m, s in zip(mapping.models, found,
                                                                                        strict=True)))
        merged_outputs = [o.name for o in proto.graph.output]
        keep_outputs = any(o.startswith(f"{m.name}/") for o in merged_outputs for m in mapping.models)
    request = MergeRequest(mapping, merged, keep_outputs=keep_outputs, rows=rows, atol=atol, rtol=rtol,
                           opset=default_opset(proto), data=data, from_cli=from_cli)
    built = build(request, mapping, step)
    check_data_files(props, merged, built)
    expected_outputs = [o.name for o in built.model.graph.output]
    if merged_outputs != expected_outputs:
        raise MergeError(ExitCode.VERIFY_FAILED, merged,
                         f"its outputs are {', '.join(merged_outputs)} but its sources and mapping give "
                         f"{', '.join(expected_outputs)}", "re-run `merge-models merge` to rebuild it")
    with step("verify"):
        report = verify_built(merged, built)
    return RecheckResult(merged, props.get(VERSION_KEY), mapping, found, merged_outputs, data,
                         0 if built.rows is None else len(built.rows.features), report, time.perf_counter() - start,
                         props.get(STACK_FIT_KEY))


def find_sources(props: dict[str, str], mapping: FeatureMapping, merged: Path, moved: dict[str, Path],
                 folder: Path | None = None, from_cli: bool = True) -> list[Source]:
    """Each model's source file (recorded, moved, or found by name in `folder`), checked against its sha256.

    Every missing or changed source is named in one error, so one run tells the user all that moved.
    """
    recorded = {s["model"]: s for s in recorded_sources(props, merged)}
    names = [m.name for m in mapping.models]
    flag = "--source" if from_cli else "sources="
    unknown = sorted(set(moved) - set(names))
    if unknown:
        raise usage(None, f"{flag} {unknown[0]}=...: {merged.name} has no model {unknown[0]!r}",
                    f"its models are: {', '.join(names)}")
    if folder is not None and not folder.is_dir():
        raise bad_input(folder, "is not a folder of source models")
    found: list[Source] = []
    problems: list[tuple[Path, str, str]] = []  # (file, what is wrong, model)
    located = []
    for m in mapping.models:
        entry = recorded.get(m.name)
        if entry is None:
            raise bad_input(merged, f"its provenance records no source file for model {m.name!r}")
        located.append((m, entry, *_source_path(m.name, entry["file"], merged, moved, folder, flag)))
    hashes = hash_in_background([path for *_, path, _ in located if path.is_file()])  # one thread per core
    for m, entry, path, where in located:
        if path not in hashes:
            problems.append((path, f"source of model {m.name!r} not found ({where})", m.name))
            continue
        try:
            digest = hashes[path].result()
        except OSError as e:
            raise bad_input(path, f"cannot read: {e.strerror or e}") from None
        if digest != entry["sha256"]:
            changed = (f"is not the file model {m.name!r} was merged from" if m.name in moved
                       else f"source of model {m.name!r} has changed since the merge")
            problems.append((path, f"{changed} (sha256 {digest[:12]}..., {merged.name} was built from "
                                   f"{entry['sha256'][:12]}...)", m.name))
            continue
        found.append(Source(m.name, path, entry["file"], digest))
    if problems:
        first, message, name = problems[0]
        also = "".join(f"; also {path}: {text}" for path, text, _ in problems[1:])
        point = f"{flag} {name}=PATH" if from_cli else f"{flag}{{{name!r}: PATH}}"
        folder_option = "--source FOLDER" if from_cli else "sources_dir=FOLDER"
        raise bad_input(first, message + also, f"pass {point} (one per moved model) or {folder_option} where the "
                        "original files are, or merge again")
    return found


def _source_path(name: str, recorded: str, merged: Path, moved: dict[str, Path], folder: Path | None,
                 flag: str) -> tuple[Path, str]:
    """Where model `name`'s source should be, and how that was decided (for the error if it is not there)."""
    if name in moved:
        return moved[name], f"given as {flag} {name}={moved[name]}"
    folder_flag = "--source FOLDER" if flag == "--source" else "sources_dir=FOLDER"
    hint = f"pass {flag} {name}=PATH or {folder_flag}, where the files it was merged from are"
    if folder is not None:
        base = Path(recorded).name
        if base in ("", ".", ".."):
            raise bad_input(merged, f"its provenance records model {name!r}'s source as {recorded!r}, not a file name",
                            hint)
        return folder / base, f"looked up by its recorded name {base!r} in {folder}"
    # recorded relative to the merged file's real folder (mapping.canonical resolves both), and kept inside it
    path = _shown(Path(os.path.normpath(check_inside(merged, f"model {name!r}'s source", recorded, hint))))
    return path, f"recorded as {recorded!r}, relative to {merged.name}"


def check_data_files(props: dict[str, str], merged: Path, built: Built) -> None:
    """The external data files each source model reads, against the sha256 the merge recorded (files
    merged before this was recorded have no list: nothing to compare)."""
    recorded = {s["model"]: s.get("data", []) for s in recorded_sources(props, merged)}
    for spec, loaded in zip(built.mapping.models, built.loaded, strict=False):
        wanted = {d["file"]: d["sha256"] for d in recorded.get(spec.name, [])}
        folder = loaded.path.parent
        for f in loaded.data_files:
            name = f.relative_to(folder).as_posix() if f.is_relative_to(folder) else f.name
            digest = sha256_file(f)
            if name in wanted and digest != wanted[name]:
                raise bad_input(f, f"external data of model {spec.name!r} has changed since the merge (sha256 "
                                f"{digest[:12]}..., {merged.name} was built from {wanted[name][:12]}...)",
                                "merge again, or restore the weights it was merged from")
        missing = sorted(set(wanted) - {f.relative_to(folder).as_posix() if f.is_relative_to(folder) else f.name
                                        for f in loaded.data_files})
        if missing:
            raise bad_input(loaded.path, f"model {spec.name!r} no longer reads the external data {missing[0]!r} it "
                            "was merged with", "merge again, or restore the file it was merged from")


def _shown(path: Path) -> Path:
    """A path relative to the working directory when it is below it (shorter errors), else absolute."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except ValueError:
        return path
