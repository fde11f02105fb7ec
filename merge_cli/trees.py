"""Rewrite ai.onnx.ml 5 TreeEnsemble nodes as TreeEnsembleRegressor, for parts merged with ml-3 tree models."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import bad_input, first_line, incompatible
from .graphs import DOUBLE, FLOAT, copied, tensor_info
from .parts import Part

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto, ValueInfoProto

# TreeEnsemble's integer enums, and the strings TreeEnsembleRegressor spells them with.
_MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ")
_POST = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")
_AGGREGATE = ("AVERAGE", "SUM", "MIN", "MAX")


def legacy_tree_ensembles(part: Part) -> Part:
    """Rewrite ai.onnx.ml 5 TreeEnsemble nodes as TreeEnsembleRegressor (ml 3), which every other tree part uses.

    TreeEnsemble lists only branch nodes and keeps leaves apart; TreeEnsembleRegressor numbers every
    node of a tree, leaves included. TreeEnsembleRegressor returns float32, so a float64 ensemble gets
    a Cast back to float64 (its thresholds stay float64 through nodes_values_as_tensor).
    """
    from onnx import helper, numpy_helper

    if not any(n.op_type == "TreeEnsemble" and n.domain == "ai.onnx.ml" for n in part.model.graph.node):
        return part
    model = copied(part.model)
    graph = model.graph
    types = {o.name: o.elem_type for o in part.outputs} | {i.name: i.elem_type for i in part.inputs}
    inferred = {vi.name: tensor_info(vi) for vi in _inferred_value_infos(model)}
    nodes: list[NodeProto] = []
    for node in graph.node:
        if node.op_type != "TreeEnsemble" or node.domain != "ai.onnx.ml":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if "membership_values" in attrs:
            raise incompatible(part.source.path, "a TreeEnsemble with set-membership splits cannot be expressed in "
                               "the ai.onnx.ml opset the other models need",
                               "re-export this model with ai.onnx.ml opset 3 (TreeEnsembleRegressor)")
        info = inferred.get(node.input[0])
        in_type = types.get(node.input[0]) or (info.elem_type if info else FLOAT)
        try:
            new = _regressor_attributes(attrs, numpy_helper, double=in_type == DOUBLE)
        except (KeyError, IndexError, ValueError, TypeError) as e:  # onnxruntime would refuse it too; --no-verify skips that
            raise bad_input(part.source.path, f"TreeEnsemble node {node.name!r} is malformed: "
                            f"{type(e).__name__} {first_line(e)}") from None
        out = node.output[0]
        raw = out if in_type == FLOAT else f"{out}.float32"
        nodes.append(helper.make_node("TreeEnsembleRegressor", list(node.input), [raw], name=node.name,
                                      domain="ai.onnx.ml", **new))
        if raw != out:
            nodes.append(helper.make_node("Cast", [raw], [out], name=f"{node.name}.cast", to=in_type))
    del graph.node[:]
    graph.node.extend(nodes)
    return replace(part, model=model)


def _inferred_value_infos(model: ModelProto) -> list[ValueInfoProto]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return []
    return [*inferred.graph.input, *inferred.graph.value_info]


def _regressor_attributes(a: dict[str, Any], numpy_helper: Any, double: bool) -> dict[str, Any]:
    """TreeEnsemble (ml 5) attributes -> the equivalent TreeEnsembleRegressor attributes.

    One function over ~70 lines on purpose: it walks the attribute lists once, and split up, a dozen
    parallel lists would travel between the pieces.

    onnxruntime wants thresholds of the input's type: float lists for float32, *_as_tensor (ml 3) for float64.
    """
    splits = numpy_helper.to_array(a["nodes_splits"]).astype(np.float64)
    modes = numpy_helper.to_array(a["nodes_modes"]).astype(int)
    weights = numpy_helper.to_array(a["leaf_weights"]).astype(np.float64)
    hitrates = numpy_helper.to_array(a["nodes_hitrates"]) if "nodes_hitrates" in a else None
    missing = list(a.get("nodes_missing_value_tracks_true", [0] * len(splits)))
    roots = list(a["tree_roots"])
    sizes = {0: len(splits), 1: len(weights)}  # branch nodes, leaves: every index must be in range
    for name, count in (("nodes_truenodeids", 0), ("nodes_falsenodeids", 0), ("tree_roots", 0)):
        leafs = a.get(name.replace("nodeids", "leafs"), []) if name != "tree_roots" else []
        for j, child in enumerate(a[name]):
            bound = sizes[int(leafs[j])] if j < len(leafs) and leafs[j] else sizes[count]
            if not 0 <= child < bound:
                raise ValueError(f"{name}[{j}] = {child} is out of range")
    if not all(len(a[k]) == len(splits) for k in ("nodes_featureids", "nodes_truenodeids", "nodes_falsenodeids",
                                                  "nodes_trueleafs", "nodes_falseleafs")) or len(modes) != len(splits):
        raise ValueError("its node attributes differ in length")
    out: dict[str, list[Any]] = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids",
                                                 "nodes_values", "nodes_modes", "nodes_truenodeids",
                                                 "nodes_falsenodeids", "nodes_missing_value_tracks_true",
                                                 "nodes_hitrates", "target_treeids", "target_nodeids",
                                                 "target_ids", "target_weights")}
    for tree, root in enumerate(roots):
        ids: dict[tuple[str, int], int] = {}  # ("node"|"leaf", index) -> node id within this tree
        order: list[tuple[str, int]] = [("node", root)]
        queued = set(order)  # `key in order` made a 30,000-node tree quadratic (87 s)
        while len(ids) < len(order):
            kind, i = order[len(ids)]
            ids[(kind, i)] = len(ids)
            if kind == "node":
                for child, leaf in ((a["nodes_truenodeids"][i], a["nodes_trueleafs"][i]),
                                    (a["nodes_falsenodeids"][i], a["nodes_falseleafs"][i])):
                    key = ("leaf" if leaf else "node", child)
                    if key not in queued:
                        order.append(key)
                        queued.add(key)
        for (kind, i), nid in ids.items():
            out["nodes_treeids"].append(tree)
            out["nodes_nodeids"].append(nid)
            if kind == "node":
                true = ("leaf" if a["nodes_trueleafs"][i] else "node", a["nodes_truenodeids"][i])
                false = ("leaf" if a["nodes_falseleafs"][i] else "node", a["nodes_falsenodeids"][i])
                out["nodes_featureids"].append(a["nodes_featureids"][i])
                out["nodes_values"].append(splits[i])
                out["nodes_modes"].append(_MODES[modes[i]])
                out["nodes_truenodeids"].append(ids[true])
                out["nodes_falsenodeids"].append(ids[false])
                out["nodes_missing_value_tracks_true"].append(missing[i])
                out["nodes_hitrates"].append(float(hitrates[i]) if hitrates is not None else 1.0)
            else:
                for k in ("nodes_featureids", "nodes_truenodeids", "nodes_falsenodeids",
                          "nodes_missing_value_tracks_true"):
                    out[k].append(0)
                out["nodes_values"].append(0.0)
                out["nodes_modes"].append("LEAF")
                out["nodes_hitrates"].append(1.0)
                out["target_treeids"].append(tree)
                out["target_nodeids"].append(nid)
                out["target_ids"].append(a["leaf_targetids"][i])
                out["target_weights"].append(float(weights[i]))
    attrs: dict[str, Any] = dict(out)
    if double:
        for name in ("nodes_values", "target_weights"):
            attrs[f"{name}_as_tensor"] = numpy_helper.from_array(np.array(attrs.pop(name), dtype=np.float64))
    attrs["n_targets"] = a.get("n_targets", 1)
    attrs["aggregate_function"] = _AGGREGATE[a.get("aggregate_function", 1)]
    attrs["post_transform"] = _POST[a.get("post_transform", 0)]
    return attrs
