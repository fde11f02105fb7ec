"""Many routes from one table in one Split node: onnxruntime pays per node when it makes a session.

10,000 one-column inputs fed by a Slice each took ~3 s to open in onnxruntime (and ~12 s with the
verifier's options), growing faster than linear; one Split with 10,000 outputs opens in 0.3 s and
copies the same bytes per run. A Split cuts its input whole, so each Split takes a "layer" of routes
whose columns are consecutive runs that do not overlap; the columns between them become outputs
nobody reads. One column each for [N] inputs: the transposed table, flattened, cut in equal parts
(10,000 Gathers: 5 s to open; Transpose, Reshape and Split: 0.3 s, and faster runs).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .graphs import INPUT_TYPE_OF_DTYPE

if TYPE_CHECKING:
    from .inputs import TableInput
    from .splice import Spliced

# Fewer routes from one table keep a Slice each: as fast to run, and small merges (the golden files)
# keep their graphs.
MANY_ROUTES = 32


@dataclass(frozen=True)
class Segment:
    """A route that a Split can feed: columns start..end-1 of a table, into the tensor `target`."""

    start: int
    end: int
    target: str


@dataclass(frozen=True)
class SplitCandidate:
    """A route of consecutive columns of one table into an [N, k] input of type `elem_type` (or of one
    column into an [N] input: `flat`)."""

    table: TableInput
    elem_type: int
    segment: Segment
    flat: bool = False


def layers(segments: list[Segment]) -> list[list[Segment]]:
    """The segments in as few layers of non-overlapping segments as they allow, each in column order.

    Interval partitioning: taken by start, each goes to the layer that became free first; two models
    reading the same columns make two layers, whatever their count.
    """
    out: list[list[Segment]] = []
    free: list[tuple[int, int]] = []  # (end of the layer's last segment, layer index)
    for s in sorted(segments, key=lambda s: (s.start, s.end)):
        if free and free[0][0] <= s.start:
            _, i = heapq.heappop(free)
        else:
            i = len(out)
            out.append([])
        out[i].append(s)
        heapq.heappush(free, (s.end, i))
    return out


def worth_a_split(layer: list[Segment], width: int) -> bool:
    """Many routes, and at least half the table read: a Split copies every column, read or not."""
    return len(layer) >= MANY_ROUTES and 2 * sum(s.end - s.start for s in layer) >= width


def split_routes(out: Spliced, candidates: list[SplitCandidate], opset: int) -> set[str]:
    """Add a Split per layer of many routes (a Cast first, once, where the table has another type);
    the targets they feed, which need no route of their own."""
    groups: dict[tuple[str, int, bool], list[SplitCandidate]] = {}
    for c in candidates:
        groups.setdefault((c.table.name, c.elem_type, c.flat), []).append(c)
    fed: set[str] = set()
    casts: dict[tuple[str, int], str] = {}
    for group in groups.values():
        table, elem_type, flat = group[0].table, group[0].elem_type, group[0].flat
        chosen = [layer for layer in layers([c.segment for c in group]) if worth_a_split(layer, len(table.columns))]
        if not chosen or (flat and opset < 5):  # Reshape-1 (opset < 5) takes no shape input: Gathers then
            continue
        source = table.name
        if INPUT_TYPE_OF_DTYPE[table.dtype] != elem_type:
            if (table.name, elem_type) not in casts:
                casts[table.name, elem_type] = _cast(out, table.name, elem_type)
            source = casts[table.name, elem_type]
        for layer in chosen:
            if flat:
                _split_flat(out, source, layer, len(table.columns), opset)
            else:
                _split(out, source, layer, len(table.columns), opset)
            fed.update(s.target for s in layer)
    return fed


def _cast(out: Spliced, source: str, elem_type: int) -> str:
    """The whole table cast once (a Cast of each route's columns gives the same numbers)."""
    from onnx import TensorProto, helper

    kind = str(TensorProto.DataType.Name(elem_type)).lower()
    result = out.fresh(f"{source}.{kind}")
    out.nodes.append(helper.make_node("Cast", [source], [result], to=elem_type, name=out.fresh(f"cast.{source}.{kind}")))
    return result


def _split(out: Spliced, source: str, layer: list[Segment], width: int, opset: int) -> None:
    """One Split of `source` [N, width] along the columns: an output per segment, named as its target,
    and one per gap between them."""
    from onnx import helper, numpy_helper

    outputs: list[str] = []
    sizes: list[int] = []
    at = 0
    for s in [*layer, Segment(width, width, "")]:
        if s.start > at:
            outputs.append(out.fresh(f"{source}.unread.{at}"))
            sizes.append(s.start - at)
        if s.target:
            outputs.append(s.target)
            sizes.append(s.end - s.start)
        at = s.end
    name = out.fresh(f"route.{source}.split")
    if opset >= 13:
        split = out.fresh(f"{source}.split")
        out.initializers.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), split))
        out.nodes.append(helper.make_node("Split", [source, split], outputs, axis=1, name=name))
    else:  # Split-1 .. Split-11 take the sizes as an attribute
        out.nodes.append(helper.make_node("Split", [source], outputs, axis=1, split=sizes, name=name))


def _split_flat(out: Spliced, source: str, layer: list[Segment], width: int, opset: int) -> None:
    """Each column of `source` [N, width] as an [N] tensor: the columns-first table (one Transpose, shared
    with the routes that gather rows of it), flattened, in `width` equal parts; one output per column."""
    from onnx import helper, numpy_helper

    columns_first = out.columns_first.get(source)
    if columns_first is None:
        columns_first = out.columns_first[source] = out.fresh(f"{source}.columns_first")
        out.nodes.append(helper.make_node("Transpose", [source], [columns_first], perm=[1, 0],
                                          name=out.fresh(f"route.{source}.transpose")))
    flat, shape = out.fresh(f"{source}.flat"), out.fresh(f"{source}.flat_shape")
    out.initializers.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), shape))
    out.nodes.append(helper.make_node("Reshape", [columns_first, shape], [flat], name=out.fresh(f"route.{source}.flat")))
    targets = {s.start: s.target for s in layer}
    outputs = [targets.get(c) or out.fresh(f"{source}.unread.{c}") for c in range(width)]
    split = helper.make_node("Split", [flat], outputs, axis=0, name=out.fresh(f"route.{source}.split"))
    if opset >= 18:  # Split-18 wants the count of equal parts said; before, equal parts are the default
        split.attribute.append(helper.make_attribute("num_outputs", width))
    out.nodes.append(split)
