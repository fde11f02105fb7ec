"""Give every part's head the same layout: one class order, [N, 2] for binary, [N, 1] next to [N, 1]."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .builder import Builder
from .errors import incompatible
from .graphs import NUMPY_OF_TYPE, SCORE_TYPES, Classes, TensorInfo, copied, graph_names
from .naming import unique_name
from .parts import HeadAdapter, Part

AVERAGING = ("mean", "weighted", "sum", "max", "min", "vote")  # combiners that need all parts to mean the same


def align_heads(parts: list[Part], kind: str, opset: int, source: Path) -> list[Part]:
    """The parts with every head in the same layout, in each part's graph (after conversion, before prefixing).

    Classifiers: one set of classes, columns in the first classifier's class order, [N, 2] for a
    binary model that gives only the positive class. Regressors: [N] next to [N, 1] becomes [N, 1].
    `concat` puts outputs side by side as they are, so only regressors' ranks are aligned there.
    """
    classifiers = [p for p in parts if p.task == "classification"]
    others = [p for p in parts if p.task != "classification"]
    if classifiers and kind != "concat":
        common = classifiers[0].classes
        assert common is not None
        for p in others if kind in AVERAGING else ():
            if p.head.width in (1, len(common)) and p.head.elem_type in SCORE_TYPES:
                raise incompatible(source, f"{p.name} looks like a classifier without labels (output "
                                   f"{p.head.name!r}) next to classifier {classifiers[0].name}",
                                   f"add classes = {_toml(common)} (its columns' labels, in order) or "
                                   f'task = "classification" to [models.{p.name}]')
        for p in classifiers:
            assert p.classes is not None
            if set(p.classes) != set(common):
                raise incompatible(source, f"the classifiers have different classes: {classifiers[0].name} has "
                                   f"{list(common)}, {p.name} has {list(p.classes)}",
                                   "merge classifiers trained on the same classes, or set classes = [...] in "
                                   "[models.<name>] where a model's labels were read wrongly")
        aligned = {p.name: replace(with_adapter(p, class_adapter(p, common), opset), classes=common)
                   for p in classifiers}
        parts = [aligned.get(p.name, p) for p in parts]
    ranks = {p.head.rank for p in others}
    if ranks == {1, 2} and all(p.head.width == 1 for p in others):
        parts = [with_adapter(p, HeadAdapter(p.head.name, unsqueeze=True), opset)
                 if p.task != "classification" and p.head.rank == 1 else p for p in parts]
    return parts


def class_adapter(part: Part, common: Classes) -> HeadAdapter:
    """A classifier's head in the common class order, as [N, K] (from [N] or a binary model's [N, 1])."""
    assert part.classes is not None
    binary = part.head.width == 1 and len(common) == 2
    order = tuple(part.classes.index(c) for c in common)
    return HeadAdapter(part.head.name, unsqueeze=part.head.rank == 1, binary=binary,
                       order=order if order != tuple(range(len(common))) else None)


def _toml(classes: Classes) -> str:
    return "[" + ", ".join(f'"{c}"' if isinstance(c, str) else str(c) for c in classes) + "]"


def with_adapter(part: Part, adapter: HeadAdapter, opset: int) -> Part:
    """The part with the adapter's nodes appended to (a copy of) its graph; its head is their result."""
    if not (adapter.unsqueeze or adapter.binary or adapter.order is not None):
        return part
    model = copied(part.model)
    taken = graph_names(model.graph)
    b = Builder(lambda base: unique_name(base, taken), opset, node_prefix="align.")
    head = part.head
    x, width = head.name, head.width
    batch = head.shape[0] if head.shape else None
    if adapter.unsqueeze:
        x = b.unsqueeze(x, [1], f"{head.name}.column", axes_base=f"{head.name}.axes")
        width = 1
    if adapter.binary:
        one = b.const(np.array(1, dtype=NUMPY_OF_TYPE.get(head.elem_type, np.float32)), f"{head.name}.one")
        negative = b.node("Sub", [one, x], f"{head.name}.negative")
        x = b.node("Concat", [negative, x], f"{head.name}.binary", axis=1)
        width = 2
    if adapter.order is not None:
        order = b.const(np.array(adapter.order, dtype=np.int64), f"{head.name}.order")
        x = b.node("Gather", [x, order], f"{head.name}.aligned", axis=1)
    model.graph.node.extend(b.graph.nodes)
    model.graph.initializer.extend(b.graph.initializers)
    return replace(part, model=model, head=TensorInfo(x, head.elem_type, (batch, width)), adapter=adapter)
