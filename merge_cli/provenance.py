"""What a merged file records about how it was made, and reading it back (`verify` rebuilds from it).

The merged file's metadata holds the tool version, the resolved mapping (`merge_models.mapping`,
canonical JSON with paths relative to the merged file's folder) and each source's file and sha256
(`merge_models.sources`, in mapping order); a stack also records the version of its fit
(`merge_models.stack_fit`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import MergeError, bad_input, first_line
from .mapping import FeatureMapping, canonical, canonical_json, parse_mapping

if TYPE_CHECKING:
    from onnx import ModelProto

    from .parts import Part

MAPPING_KEY = "merge_models.mapping"
SOURCES_KEY = "merge_models.sources"
VERSION_KEY = "merge_models.version"
STACK_FIT_KEY = "merge_models.stack_fit"
STACK_FIT = "3"  # the stack's fit, numbered: bump it whenever the same rows would give a stack other weights
# (1: mean probability features, 2: per-part log-probabilities and the residual MLP, 3: the pool prior).
# Files merged before 3 record none. `verify` refits the stack, so it can only reproduce a file of its own.
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_DEPTH = 64  # a recorded mapping nests 5 levels deep


def provenance(mapping: FeatureMapping, parts: Sequence[Part], out: Path,
               digest: Callable[[Path], str]) -> dict[str, str]:
    """Tool version, the resolved mapping and each source's sha256, for `verify` and for people."""
    resolved = canonical(mapping, out.parent)
    sources = [{
        "model": part.name,
        "file": resolved["models"][part.name]["path"],
        "sha256": digest(part.source.path),
        "bytes": part.source.path.stat().st_size,
    } for part in parts]
    for source, part in zip(sources, parts, strict=True):  # the weights the model reads, not only its .onnx
        if part.source.data_files:
            folder = part.source.path.parent
            source["data"] = [{"file": f.relative_to(folder).as_posix() if f.is_relative_to(folder) else f.name,
                               "sha256": digest(f)} for f in part.source.data_files]
    props = {
        VERSION_KEY: __version__,
        MAPPING_KEY: canonical_json(resolved),
        SOURCES_KEY: canonical_json(sources),
        **({STACK_FIT_KEY: STACK_FIT} if mapping.combiner.kind == "stack" else {}),
    }
    for part in parts:
        for p in part.model.metadata_props:
            props[f"{part.name}/{p.key}"] = p.value
    return dict(sorted(props.items()))


def set_provenance(model: ModelProto, props: dict[str, str]) -> None:
    from onnx import helper

    helper.set_model_props(model, props)


def provenance_bytes(mapping: FeatureMapping, parts: Sequence[Part], out: Path) -> int:
    """The provenance's serialized size before the hashes are known (a sha256 is always 64 hex digits)."""
    from onnx import ModelProto

    model = ModelProto()
    set_provenance(model, provenance(mapping, parts, out, lambda path: "0" * 64))
    return int(model.ByteSize())


# ---------------------------------------------------------------------------- reading it back


def recorded_mapping(props: dict[str, str], merged: Path, sources_dir: Path | None = None) -> FeatureMapping:
    """The resolved mapping recorded in the merged file, validated like a mapping file, models in mapping order.

    The combiner's files (a stack's data, an onnx combiner) must be inside the merged file's folder, or
    are looked up by their recorded name in `sources_dir` when that is given (verify --source FOLDER)."""
    text = props.get(MAPPING_KEY)
    if text is None:
        raise bad_input(merged, f"has no merge-models provenance (no {MAPPING_KEY} in its metadata)",
                        "verify checks files written by `merge-models merge`")
    try:
        doc = mapping_document(_loads(text))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
        raise bad_input(merged, f"its {MAPPING_KEY} metadata is not a mapping merge-models wrote: "
                        f"{first_line(e) if not isinstance(e, RecursionError) else 'nested too deeply'}") from None
    mapping = parse_mapping(doc, merged.resolve())  # paths are relative to the merged file's real folder
    files = {key: _combiner_file(doc["combiner"][key], key, merged, sources_dir) for key in ("data", "path")
             if getattr(mapping.combiner, key) is not None}
    mapping = replace(mapping, combiner=replace(mapping.combiner, data=files.get("data", mapping.combiner.data),
                                                path=files.get("path", mapping.combiner.path)))
    # canonical JSON sorts the models by name; the sources list keeps the order they were merged in
    order = [s["model"] for s in recorded_sources(props, merged)]
    if sorted(order) == sorted(m.name for m in mapping.models):
        mapping = replace(mapping, models=tuple(mapping.model(name) for name in order))
    return mapping


def _combiner_file(recorded: str, key: str, merged: Path, sources_dir: Path | None) -> Path:
    """A stack's data or an onnx combiner: inside the merged file's folder, else by name in `sources_dir`."""
    try:
        return check_inside(merged, f"the combiner's {key} file", recorded,
                            "pass --source FOLDER, the folder of the files it was merged from")
    except MergeError:
        if sources_dir is None:
            raise
        return sources_dir / PurePosixPath(recorded).name


def recorded_sources(props: dict[str, str], merged: Path) -> list[dict[str, Any]]:
    """The merged file's sources list: model, file (relative to the merged file's folder), sha256, bytes."""
    try:
        sources = _loads(props.get(SOURCES_KEY, "[]"))
        if not isinstance(sources, list) or not all(_is_source(s) for s in sources):
            raise ValueError("not a list of sources (model, file, sha256, data)")
    except (ValueError, RecursionError) as e:
        raise bad_input(merged, f"its {SOURCES_KEY} metadata is not what merge-models writes: "
                        f"{first_line(e) if not isinstance(e, RecursionError) else 'nested too deeply'}") from None
    return sources


def _is_source(s: Any) -> bool:
    def file_entry(e: Any) -> bool:
        return (isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("sha256"), str)
                and SHA256.fullmatch(e["sha256"]) is not None)

    return (file_entry(s) and isinstance(s.get("model"), str)
            and (isinstance(s.get("data", []), list) and all(file_entry(d) for d in s.get("data", []))))


def _loads(text: str) -> Any:
    """Strict JSON, refused early when nested past what merge-models writes (100,000 '[' would recurse)."""
    depth = 0
    for c in text:  # a cheap bound: brackets outside strings never nest deeper than the bracket count
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                break
        elif c in "]}":
            depth -= 1
    if depth > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def check_inside(merged: Path, what: str, recorded: str, hint: str) -> Path:
    """A path the provenance records, resolved in the merged file's real folder and refused unless it stays
    there: a forged file must not make `verify` open, hash or report on any file it names (as with
    external data). Nothing outside is touched: the same error whether it exists or not."""
    folder = merged.resolve().parent
    pure = PurePosixPath(recorded)
    path = folder / recorded
    inside = bool(recorded) and not pure.is_absolute() and "\\" not in recorded and ".." not in pure.parts \
        and "\0" not in recorded
    try:
        inside = inside and path.resolve().is_relative_to(folder)  # a symbolic link inside may point out
    except (OSError, RuntimeError):  # a symbolic link loop
        inside = False
    if not inside:
        raise bad_input(merged, f"its provenance records {what} as {recorded!r}, outside the merged file's folder; "
                        "verify does not follow it", hint or "keep the files it was merged from beside it")
    return path


def mapping_document(resolved: dict[str, Any]) -> dict[str, Any]:
    """A canonical mapping (mapping.canonical) back in the mapping-file schema."""
    models = {}
    for name, entry in resolved["models"].items():
        model = {k: v for k, v in entry.items() if k != "inputs"}
        routes = entry["inputs"]
        if len(routes) == 1 and routes[0]["input"] is None:
            model["input" if "whole" in routes[0] else "columns"] = routes[0].get("whole", routes[0].get("columns"))
        else:
            model["inputs"] = {r["input"]: r["whole"] if "whole" in r else r["columns"] for r in routes}
        models[name] = model
    combiner = {k: v for k, v in resolved["combiner"].items() if v is not None}
    inputs = {"inputs": resolved["inputs"]} if "inputs" in resolved else {"input": resolved["input"]}
    return {"version": resolved["version"], **inputs, "models": models, "combiner": combiner}
