"""What a merged file records about how it was made, and reading it back (`verify` rebuilds from it).

The merged file's metadata holds the tool version, the resolved mapping (`merge_models.mapping`,
canonical JSON with paths relative to the merged file's folder) and each source's file and sha256
(`merge_models.sources`, in mapping order).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import bad_input
from .mapping import FeatureMapping, canonical, canonical_json, parse_mapping

if TYPE_CHECKING:
    from onnx import ModelProto

    from .parts import Part

MAPPING_KEY = "merge_models.mapping"
SOURCES_KEY = "merge_models.sources"
VERSION_KEY = "merge_models.version"


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
    props = {
        VERSION_KEY: __version__,
        MAPPING_KEY: canonical_json(resolved),
        SOURCES_KEY: canonical_json(sources),
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


def recorded_mapping(props: dict[str, str], merged: Path) -> FeatureMapping:
    """The resolved mapping recorded in the merged file, validated like a mapping file, models in mapping order."""
    text = props.get(MAPPING_KEY)
    if text is None:
        raise bad_input(merged, f"has no merge-models provenance (no {MAPPING_KEY} in its metadata)",
                        "verify checks files written by `merge-models merge`")
    try:
        doc = mapping_document(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise bad_input(merged, f"its {MAPPING_KEY} metadata is not a mapping merge-models wrote: {e}") from None
    mapping = parse_mapping(doc, merged.resolve())  # paths are relative to the merged file's real folder
    # canonical JSON sorts the models by name; the sources list keeps the order they were merged in
    order = [s["model"] for s in recorded_sources(props, merged)]
    if sorted(order) == sorted(m.name for m in mapping.models):
        mapping = replace(mapping, models=tuple(mapping.model(name) for name in order))
    return mapping


def recorded_sources(props: dict[str, str], merged: Path) -> list[dict[str, Any]]:
    """The merged file's sources list: model, file (relative to the merged file's folder), sha256, bytes."""
    try:
        sources = json.loads(props.get(SOURCES_KEY, "[]"))
        if not isinstance(sources, list) or not all(isinstance(s, dict) and isinstance(s["model"], str)
                                                    for s in sources):
            raise ValueError("not a list of sources")
    except (ValueError, KeyError, TypeError) as e:
        raise bad_input(merged, f"its {SOURCES_KEY} metadata is not what merge-models writes: {e}") from None
    return sources


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
