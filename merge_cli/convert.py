"""Bring every part to one target: the opsets and IR version they all convert to (the Converted stage)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import first_line, incompatible
from .graphs import DEFAULT_OPSET, all_nodes, copied, default_opset, is_default_domain
from .parts import Part, dedupe_opsets

if TYPE_CHECKING:
    from onnx import NodeProto


@dataclass(frozen=True)
class Target:
    """What every part is converted to."""

    opsets: dict[str, int]
    ir_version: int


def common_target(parts: list[Part], opset: int | None) -> Target:
    """The highest default-domain opset among the parts (or --opset), an ai.onnx.ml opset every part's ops
    are valid in, the highest of other domains; the IR version they all need (before onnxruntime's cap)."""
    import onnx

    versions: dict[str, int] = {}
    for part in parts:
        for entry in part.model.opset_import:
            versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    if opset is not None:
        newest = onnx.defs.onnx_opset_version()
        if not 7 <= opset <= newest:
            raise incompatible(None, f"opset {opset} is outside what the installed onnx converts (7..{newest})")
        versions[""] = opset
    versions.setdefault("", DEFAULT_OPSET)
    if "ai.onnx.ml" in versions:
        versions["ai.onnx.ml"] = common_ml_opset(parts)
    ir = max(p.model.ir_version for p in parts)
    # IR 3 wants every initializer listed as a graph input; the routing and combiner constants are not.
    ir = max(ir, 4, min_ir_for(versions))
    return Target(opsets=dict(sorted(versions.items())), ir_version=ir)


def common_ml_opset(parts: list[Part]) -> int:
    """The highest ai.onnx.ml opset (up to the highest declared) in which every part's ml nodes are valid.

    Not simply the highest: ai.onnx.ml 5 deprecates TreeEnsembleClassifier/Regressor, so raising a
    tree model from 1 to 5 makes the checker and onnxruntime refuse it (see needs_legacy_trees).
    """
    top = max(e.version for p in parts for e in p.model.opset_import if e.domain == "ai.onnx.ml")
    nodes = [(p, n) for p in parts for n in all_nodes(p.model.graph) if n.domain == "ai.onnx.ml"]
    for version in range(top, 0, -1):
        if all(ml_node_fits(n, version) for _, n in nodes):
            return version
    ops = sorted({f"{p.name}: {n.op_type}" for p, n in nodes})
    raise incompatible(None, f"no ai.onnx.ml opset is valid for every model's ops ({', '.join(ops)})",
                       "re-export the models with one ai.onnx.ml opset")


def needs_legacy_trees(parts: list[Part]) -> bool:
    """No ai.onnx.ml opset fits every part's ml nodes, and a part uses TreeEnsemble (only in ml 5): its
    TreeEnsemble is then rewritten as TreeEnsembleRegressor (trees.legacy_tree_ensembles)."""
    nodes = [n for p in parts for n in all_nodes(p.model.graph) if n.domain == "ai.onnx.ml"]
    if not any(n.op_type == "TreeEnsemble" for n in nodes):
        return False
    top = max(e.version for p in parts for e in p.model.opset_import if e.domain == "ai.onnx.ml")
    return not any(all(ml_node_fits(n, version) for n in nodes) for version in range(top, 0, -1))


def ml_node_fits(node: NodeProto, version: int) -> bool:
    """The node's op exists, is not deprecated, and knows all the node's attributes at this ml opset."""
    from onnx import defs

    try:
        schema = defs.get_schema(node.op_type, max_inclusive_version=version, domain="ai.onnx.ml")
    except Exception:  # SchemaError: no such op at this version
        return False
    if schema.deprecated:
        return False
    return {a.name for a in node.attribute} <= set(schema.attributes)


def min_ir_for(opsets: dict[str, int]) -> int:
    from onnx import helper

    try:
        return int(helper.find_min_ir_version_for([helper.make_opsetid(d, v) for d, v in opsets.items()
                                                   if d in ("", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training")]))
    except Exception:
        return 3


def convert_part(part: Part, target: Target) -> Part:
    """The part at the target: its default-domain opset converted with onnx.version_converter (local
    functions inlined first), every opset and the IR version set to the target's."""
    from onnx import version_converter

    model = copied(part.model)
    want = target.opsets[""]
    have = default_opset(model)
    if have is None:
        entry = model.opset_import.add()
        entry.domain, entry.version = "", want
    elif have != want:
        uses_default = any(is_default_domain(n.domain) for n in all_nodes(model.graph))
        if uses_default:
            if model.functions:
                # the converter silently drops local functions; inline them so their bodies convert too
                from onnx import inliner

                model = inliner.inline_local_functions(model)
            try:
                model = version_converter.convert_version(model, want)
            except Exception as e:  # the converter raises RuntimeError, ValueError, or its own errors
                raise incompatible(part.source.path, f"cannot convert opset {have} to {want}: {first_line(e)}",
                                   f"try --opset {have} (or another opset both models convert to)") from None
        dedupe_opsets(model)
        for entry in model.opset_import:
            if entry.domain == "":
                entry.version = want
    for entry in model.opset_import:
        if entry.domain in target.opsets:
            entry.version = target.opsets[entry.domain]
    model.ir_version = target.ir_version
    return replace(part, model=model)


def capped_ir(ir_version: int, target: Target) -> int:
    """--ir-version N: the merged model's IR version, for a runtime older than the parts' files ask for.

    Not below what the opsets need (onnx.helper.find_min_ir_version_for) nor 4 (routing constants
    are not graph inputs), and not above what the installed onnx and onnxruntime load.
    """
    import onnx

    from .runtime import runtime_ir_cap

    floor = max(4, min_ir_for(target.opsets))
    top = min(onnx.IR_VERSION, runtime_ir_cap(onnx.IR_VERSION))
    if ir_version < floor:
        raise incompatible(None, f"--ir-version {ir_version} is below IR {floor}, which opset "
                                 f"{target.opsets.get('', '?')} needs", "lower --opset too, or raise --ir-version")
    if ir_version > top:
        raise incompatible(None, f"--ir-version {ir_version} is above what the installed onnx and onnxruntime "
                                 f"load (IR {top})")
    return ir_version


def ir_raised(models_ir: int, merged_ir: int, combiner_irs: list[int]) -> str:
    """Why the merged model's IR version is above every model's, and how to cap it."""
    combiner_ir = max(combiner_irs, default=0)
    why = f"the onnx combiner declares IR {combiner_ir}" if combiner_ir > models_ir else "the opsets need it"
    return (f"the merged model has IR version {merged_ir}, above the models' {models_ir} ({why}); "
            f"an older onnxruntime may not load it: --ir-version {models_ir} caps it")
