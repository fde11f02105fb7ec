"""What onnxruntime would crash on or never finish: refused before it runs (exit 3 naming the model).

Verification runs every model in this process, so a model that kills onnxruntime would kill the merge
with no error line, and one that never finishes would hang it. Two such cases are known and checked
on the model's structure before a session is made; `--no-verify` still merges them (nothing runs them).

- A tree deeper than onnxruntime can lay out: it recurses once per level when it creates the session.
- A `Loop` that can never stop: it stops when its trip count M runs out or its body says to stop, and
  a body whose condition can never turn false (a constant true, or its own condition input handed
  back), started with a true condition, runs M times - forever when M is absent. A few hundred million
  iterations of even the smallest body take onnxruntime minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .errors import MergeError
from .graphs import all_nodes

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto, NodeProto, TensorProto

# onnxruntime lays a tree out recursively when it creates the session, ~700 bytes of stack per level:
# a tree 12,000 levels deep overflows the 8 MiB main-thread stack and kills the process (SIGSEGV).
MAX_TREE_DEPTH = 4096
TREE_OPS = {"TreeEnsemble", "TreeEnsembleRegressor", "TreeEnsembleClassifier"}


def refuse_what_cannot_run(model_bytes: bytes, on_error: Callable[[str], MergeError]) -> None:
    """Refuse, before onnxruntime sees it, a tree deeper than it can lay out without crashing, and a
    Loop it would never finish (endless_loop).

    Only a model that mentions a tree op or a Loop at all is parsed for this (a substring test on its bytes).
    """
    if b"TreeEnsemble" not in model_bytes and b"Loop" not in model_bytes:
        return
    from onnx import ModelProto

    model = ModelProto()
    try:
        model.ParseFromString(model_bytes)
    except Exception:  # noqa: BLE001 - onnxruntime will say what is wrong with it
        return
    limit = max_tree_depth()
    nodes = [n for g in (model.graph, *model.functions) for n in all_nodes(g)]
    for node in nodes:
        if node.op_type in TREE_OPS and node.domain == "ai.onnx.ml":
            depth = tree_depth(node)
            if depth > limit:
                named = f" {node.name!r}" if node.name else ""
                raise on_error(f"its {node.op_type}{named} has a tree {depth} levels deep; onnxruntime crashes "
                               f"laying out trees that deep (more than {limit} levels are refused)")
    endless = endless_loop(model, nodes) if b"Loop" in model_bytes else None
    if endless:
        raise on_error(endless)


def max_tree_depth() -> int:
    """MAX_TREE_DEPTH, or less when the stack is smaller than the usual 8 MiB (ulimit -s)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return MAX_TREE_DEPTH
    return min(MAX_TREE_DEPTH, soft // 2048)


def tree_depth(node: NodeProto) -> int:
    """The deepest branch of any tree of a TreeEnsemble* node (levels of branch nodes; cycles cut)."""
    attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
    if node.op_type == "TreeEnsemble":  # ai.onnx.ml 5: branch nodes only; a child is a leaf when *leafs says so
        true_ids, false_ids = attrs.get("nodes_truenodeids", []), attrs.get("nodes_falsenodeids", [])
        true_leaf, false_leaf = attrs.get("nodes_trueleafs", []), attrs.get("nodes_falseleafs", [])
        children: dict[object, list[object]] = {}
        for i in range(min(len(true_ids), len(false_ids), len(true_leaf), len(false_leaf))):
            children[i] = [c for c, leaf in ((true_ids[i], true_leaf[i]), (false_ids[i], false_leaf[i])) if not leaf]
        roots: list[object] = list(attrs.get("tree_roots", []))
    else:  # ml 1-3: every node numbered within its tree, leaves too
        trees, ids = attrs.get("nodes_treeids", []), attrs.get("nodes_nodeids", [])
        true_ids, false_ids = attrs.get("nodes_truenodeids", []), attrs.get("nodes_falsenodeids", [])
        modes = next((list(a.strings) for a in node.attribute if a.name == "nodes_modes"), [])
        children = {}
        for i in range(min(len(trees), len(ids), len(true_ids), len(false_ids), len(modes))):
            if modes[i] != b"LEAF":
                children[(trees[i], ids[i])] = [(trees[i], true_ids[i]), (trees[i], false_ids[i])]
        has_parent = {c for kids in children.values() for c in kids}
        roots = [n for n in children if n not in has_parent]
    depth, level, seen = 0, [r for r in roots if r in children], set(roots)
    while level:
        depth += 1
        following = []
        for n in level:
            for c in children.get(n, ()):
                if c in children and c not in seen:
                    seen.add(c)
                    following.append(c)
        level = following
    return depth


MAX_TRIPS = 100_000_000  # more iterations than this, with nothing that can stop them early, is refused


def endless_loop(model: ModelProto, nodes: list[NodeProto]) -> str | None:
    """What is wrong with the first Loop among `nodes` (every node of `model`, at any depth) that cannot stop
    before MAX_TRIPS iterations, or None."""
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
