"""Loops that verification could never see the end of: refused before onnxruntime runs them.

A `Loop` stops when its trip count M runs out or when its body says to stop. A body whose condition
can never turn false (a constant true, or its own condition input handed back unchanged), started
with a true condition, runs M times - forever when M is absent. A few hundred million iterations of
even the smallest body take onnxruntime minutes per row batch, so such a loop is refused (exit 3,
naming the model) rather than left to hang the merge; `--no-verify` still merges it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .graphs import all_nodes

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto, NodeProto, TensorProto

MAX_TRIPS = 100_000_000  # more iterations than this, with nothing that can stop them early, is refused


def endless_loop(model: ModelProto) -> str | None:
    """What is wrong with the first Loop that cannot stop before MAX_TRIPS iterations, or None."""
    nodes = all_nodes(model.graph) + [n for f in model.functions for n in f.node]
    constants = _constants(model, nodes)
    for node in nodes:
        if node.op_type != "Loop" or node.domain not in ("", "ai.onnx"):
            continue
        trips = _scalar(constants.get(node.input[0])) if len(node.input) > 0 and node.input[0] else None
        if len(node.input) > 0 and node.input[0] and trips is None:
            continue  # a trip count computed at run time: nothing to say before it runs
        if trips is not None and trips <= MAX_TRIPS:
            continue
        starts_true = len(node.input) < 2 or not node.input[1] or _scalar(constants.get(node.input[1])) == 1
        body = next((a.g for a in node.attribute if a.name == "body"), None)
        if starts_true and body is not None and _never_stops(body, constants):
            named = f" {node.name!r}" if node.name else ""
            count = "without end" if trips is None else f"{trips} times"
            return (f"its Loop{named} runs {count}: its condition never turns false, so onnxruntime would "
                    f"not finish running it (more than {MAX_TRIPS} iterations are refused)")
    return None


def _never_stops(body: GraphProto, constants: dict[str, TensorProto]) -> bool:
    """The body's condition output is a constant true, or its condition input handed back (through Identity)."""
    if len(body.output) < 1 or len(body.input) < 2:
        return False
    cond_in, cond_out = body.input[1].name, body.output[0].name
    producers = {o: n for n in body.node for o in n.output}
    seen = set()
    while cond_out not in seen:
        seen.add(cond_out)
        if cond_out == cond_in:
            return True
        if cond_out in constants:
            return _scalar(constants[cond_out]) == 1
        node = producers.get(cond_out)
        if node is None or node.op_type != "Identity" or not node.input:
            return False
        cond_out = node.input[0]
    return False


def _constants(model: ModelProto, nodes: list[NodeProto]) -> dict[str, TensorProto]:
    """Scalar-sized initializers and Constant node values, by name, from every scope (names are unique)."""
    out: dict[str, TensorProto] = {}
    graphs = [model.graph] + [a.g for n in nodes for a in n.attribute if a.HasField("g")]
    for g in graphs:
        out.update({t.name: t for t in g.initializer if _size(t) == 1})
    for n in nodes:
        if n.op_type == "Constant" and n.output:
            value = next((a.t for a in n.attribute if a.name == "value" and a.HasField("t")), None)
            if value is not None and _size(value) == 1:
                out[n.output[0]] = value
    return out


def _size(t: TensorProto) -> int:
    return int(np.prod(t.dims)) if len(t.dims) else 1


def _scalar(t: TensorProto | None) -> int | None:
    """The integer value of a one-element bool/int tensor, or None."""
    if t is None or t.data_location == 1:  # external data: not read here
        return None
    from onnx import numpy_helper

    try:
        value = numpy_helper.to_array(t).reshape(-1)
    except Exception:  # noqa: BLE001 - a malformed tensor: onnxruntime will say so
        return None
    if value.size != 1 or value.dtype.kind not in "biu":
        return None
    return int(value[0])
