"""Bring each part to the common target: one opset per domain, tensor outputs, a known head, one opset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import bad_input, first_line, incompatible
from .mapping import ModelSpec
from .model_io import LoadedModel, check_model
from .naming import unique_name

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto

Dim = int | str | None
Shape = tuple[Dim, ...] | None  # None: rank unknown
Classes = tuple[int, ...] | tuple[str, ...]

FLOAT, INT32, INT64, STRING, DOUBLE = 1, 6, 7, 8, 11
LABEL_TYPES = (INT64, INT32, STRING)
SCORE_TYPES = (FLOAT, DOUBLE, 10, 16)  # float, double, float16, bfloat16
CLASSIFIER_OPS = {"LinearClassifier", "TreeEnsembleClassifier", "SVMClassifier"}
CLASS_ATTRS = ("classlabels_int64s", "classlabels_ints", "classlabels_strings")
# Ops a label goes through unchanged on its way out (skl2onnx: ArgMax -> ArrayFeatureExtractor -> Reshape -> Cast).
LABEL_PASS_THROUGH = {"Identity", "Cast", "CastLike", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
DEFAULT_OPSET = 17  # for parts that declare no default-domain opset at all (e.g. XGBoost via onnxmltools)
AVERAGING = ("mean", "weighted", "sum", "max", "min", "vote")  # combiners that need all parts to mean the same
PROBE_ROWS = 3  # batch size of the one run that checks declared output shapes (no converter bakes in 3)
NUMPY_OF_TYPE = {FLOAT: np.float32, DOUBLE: np.float64, 10: np.float16, INT32: np.int32, INT64: np.int64,
                 9: np.bool_, STRING: np.object_}

# What one run of the original file says about its outputs: name -> (shape, element type or None if unknown).
Observed = dict[str, tuple[tuple[int, ...], int | None]]
Observer = Callable[["Part"], Observed | None]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    elem_type: int
    shape: Shape

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def width(self) -> int | None:
        """The last dimension of a rank-2 tensor, 1 for a rank-1 tensor (one value per row)."""
        if self.shape is None:
            return None
        if len(self.shape) == 1:
            return 1
        last = self.shape[-1]
        return last if isinstance(last, int) else None


@dataclass(frozen=True)
class Target:
    """What every part is converted to."""

    opsets: dict[str, int]
    ir_version: int


@dataclass(frozen=True)
class HeadAdapter:
    """How a part's head is brought to the common form, in its graph and (for verification) on its file's output.

    In this order: [N] -> [N, 1]; a positive-class probability [N, 1] -> [N, 2] = [1 - p, p]; columns
    reordered into the common class order (column i of the result is column order[i] of the input).
    """

    source: str  # the original output the adapted head is computed from
    unsqueeze: bool = False
    binary: bool = False
    order: tuple[int, ...] | None = None

    def numpy(self, value: np.ndarray) -> np.ndarray:
        if self.unsqueeze:
            value = value.reshape(len(value), 1)
        if self.binary:
            value = np.concatenate([value.dtype.type(1) - value, value], axis=1)
        if self.order is not None:
            value = value[:, list(self.order)]
        return value


@dataclass
class Part:
    """One model, normalized: what it reads, what it gives the combiner, and its graph."""

    spec: ModelSpec
    source: LoadedModel
    model: ModelProto
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]  # every tensor output, after ZipMap removal
    head: TensorInfo  # the output fed to the combiner (a classifier's probabilities)
    label: TensorInfo | None = None
    classes: Classes | None = None  # after align_heads: the common class order of all classifiers
    task: Literal["classification", "regression"] = "regression"
    zipmaps: dict[str, str] = field(default_factory=dict)  # ZipMap output -> the tensor that fed it
    zipmap_classes: dict[str, Classes] = field(default_factory=dict)  # that tensor -> the ZipMap's labels
    opset_from: int | None = None
    batch: int | None = None  # a fixed batch size its inputs declare
    adapter: HeadAdapter | None = None  # set by align_heads when the head had to be reshaped or reordered
    unzipped: ModelProto | None = None  # the file as read, ZipMaps cut off: run where onnxruntime refuses the file

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def head_output(self) -> str:
        """The model's own output that feeds the combiner (before align_heads reshaped or reordered it)."""
        return self.adapter.source if self.adapter is not None else self.head.name


# ---------------------------------------------------------------------------- reading a part


def check_versions(loaded: LoadedModel) -> None:
    """Refuse IR versions and opsets newer than the installed onnx knows, before the checker trips on them."""
    import onnx

    model, path = loaded.proto, loaded.path
    if model.ir_version < 3:
        raise bad_input(path, f"IR version {model.ir_version} is not supported (3 and newer are)",
                        "re-export the model with a current converter")
    if model.ir_version > onnx.IR_VERSION:
        raise bad_input(path, f"IR version {model.ir_version} is newer than the installed onnx "
                        f"{onnx.__version__} supports ({onnx.IR_VERSION})", "upgrade onnx, or re-export with an older IR")
    newest = {"": onnx.defs.onnx_opset_version(), "ai.onnx.ml": max_ml_opset()}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        if domain in newest and entry.version > newest[domain]:
            raise bad_input(path, f"opset {domain or 'ai.onnx'} {entry.version} is newer than the installed onnx "
                            f"{onnx.__version__} supports ({newest[domain]})", "upgrade onnx, or re-export with an older opset")


def max_ml_opset() -> int:
    from onnx.helper import OP_SET_ID_VERSION_MAP

    return max(v for (d, v) in OP_SET_ID_VERSION_MAP if d == "ai.onnx.ml")


def dedupe_opsets(model: ModelProto) -> None:
    """Keep one opset_import per domain (the highest): some skl2onnx files list the default domain twice."""
    best: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        best[domain] = max(best.get(domain, 0), entry.version)
    del model.opset_import[:]
    for domain, version in sorted(best.items()):
        entry = model.opset_import.add()
        entry.domain, entry.version = domain, version


def default_opset(model: ModelProto) -> int | None:
    return next((e.version for e in model.opset_import if e.domain == ""), None)


def tensor_info(vi: ValueInfoProto) -> TensorInfo | None:
    """Name, element type and shape of a tensor ValueInfo; None for sequences, maps and the like."""
    if vi.type.WhichOneof("value") != "tensor_type":
        return None
    tt = vi.type.tensor_type
    shape: Shape = None
    if tt.HasField("shape"):
        dims: list[Dim] = []
        for d in tt.shape.dim:
            kind = d.WhichOneof("value")
            if kind == "dim_value":
                dims.append(d.dim_value)
            elif kind == "dim_param" and not d.dim_param.startswith("unk__"):  # shape inference's made-up names
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorInfo(vi.name, tt.elem_type, shape)


def remove_zipmaps(model: ModelProto) -> dict[str, tuple[str, Classes]]:
    """Replace each ZipMap graph output by the tensor feeding it; return output -> (tensor, class labels).

    The repointed output's type is left empty here: read_part fills it in from shape inference
    (a ZipMap's input is float64 in skl2onnx's DoubleTensorType models).
    """
    outputs = {o.name: i for i, o in enumerate(model.graph.output)}
    removed: dict[str, tuple[str, Classes]] = {}
    keep = []
    for node in model.graph.node:
        if node.op_type == "ZipMap" and node.domain == "ai.onnx.ml" and node.output[0] in outputs:
            removed[node.output[0]] = (node.input[0], node_classes(node) or ())
            continue
        keep.append(node)
    if not removed:
        return removed
    del model.graph.node[:]
    model.graph.node.extend(keep)
    for out_name, (tensor, _) in removed.items():
        # Repoint the graph output or the version converter fails with "Output ... is undefined".
        vi = model.graph.output[outputs[out_name]]
        vi.Clear()
        vi.name = tensor
    seen: set[str] = set()
    unique = []
    for out in model.graph.output:
        if out.name not in seen:  # two ZipMaps fed by one tensor
            seen.add(out.name)
            unique.append(type(out).FromString(out.SerializeToString()))
    del model.graph.output[:]
    model.graph.output.extend(unique)
    return removed


def inferred_outputs(model: ModelProto) -> dict[str, TensorInfo]:
    """Output types and shapes as onnx shape inference sees them, ignoring what the outputs declare."""
    import onnx

    copy = type(model)()
    copy.CopyFrom(model)
    for out in copy.graph.output:
        out.type.Clear()  # a wrong declaration (LightGBM's label [1]) must not override what inference finds
    if default_opset(copy) is None:
        copy.opset_import.add(domain="", version=DEFAULT_OPSET)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy)
    except Exception:  # inference is a help, not a requirement
        return {}
    found = {}
    for out in inferred.graph.output:
        info = tensor_info(out)
        if info is not None:
            found[out.name] = info
    return found


def trusted_shape(declared: Shape, inferred: Shape, fixed_batch: bool) -> Shape:
    """Inferred dims over declared ones; a declared fixed first dim of a dynamic-batch model is not believed."""
    if inferred is None or (declared is not None and len(declared) != len(inferred)):
        shape = declared if inferred is None else inferred
    elif declared is None:
        shape = inferred
    else:
        shape = tuple(i if isinstance(i, int) else d if d is not None else i for d, i in zip(declared, inferred,
                                                                                              strict=True))
    if shape and not fixed_batch and isinstance(shape[0], int):
        shape = (None, *shape[1:])
    return shape


def checked_model(loaded: LoadedModel) -> ModelProto:
    """The loaded proto once it passes what every model file must (versions this onnx knows, onnx.checker),
    with one opset_import per domain."""
    check_versions(loaded)
    dedupe_opsets(loaded.proto)
    check_model(loaded.proto, loaded.refs, loaded.path, full=False)
    return loaded.proto


def fed_inputs(graph: GraphProto) -> list[ValueInfoProto]:
    """The graph inputs a caller feeds: not those that name an initializer (IR 3 lists every one as an input)."""
    initializers = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    return [vi for vi in graph.input if vi.name not in initializers]


def read_part(spec: ModelSpec, loaded: LoadedModel, observe: Observer | None = None) -> Part:
    """Work out a part's inputs, its head output, and whether it is a classifier (and its classes).

    `observe` runs the original file once (see runtime.observe_outputs): where the output shapes it gives
    differ from what the file declares or shape inference says, the run wins.
    """
    model = checked_model(loaded)
    zipmaps = remove_zipmaps(model)
    inputs = []
    for vi in fed_inputs(model.graph):
        info = tensor_info(vi)
        if info is None:
            raise incompatible(loaded.path, f"input {vi.name!r} is not a tensor; only tensor inputs can be routed")
        inputs.append(info)
    if not inputs:
        raise bad_input(loaded.path, "the model has no inputs: there is nothing to route columns to")
    batch = fixed_batch(inputs, loaded.path)

    fed = {tensor: classes for tensor, classes in zipmaps.values()}
    inferred = inferred_outputs(model)
    outputs = []
    for out in model.graph.output:
        declared = tensor_info(out)
        if declared is None and out.name not in fed:
            continue  # a sequence or map output: not combinable, left as it is
        guess = inferred.get(out.name)
        elem_type = (guess.elem_type if guess and guess.elem_type else declared.elem_type if declared else FLOAT)
        shape = trusted_shape(declared.shape if declared else None, guess.shape if guess else None, batch is not None)
        if out.name in fed and shape is None:
            shape = (None, len(fed[out.name]))
        outputs.append(TensorInfo(out.name, elem_type, shape))
    if not outputs:
        raise incompatible(loaded.path, "the model has no tensor outputs to combine")
    part = Part(spec, loaded, model, inputs, outputs, head=outputs[0],
                zipmaps={k: v[0] for k, v in zipmaps.items()}, zipmap_classes=fed,
                opset_from=default_opset(model), batch=batch)
    declare_outputs(model, part.outputs)
    if zipmaps:
        part.unzipped = type(model)()
        part.unzipped.CopyFrom(model)
    observed = observe(part) if observe is not None else None
    if observed:
        part.outputs = [believe_run(o, observed.get(o.name), batch, o.name in fed) for o in part.outputs]
        declare_outputs(model, part.outputs)
    choose_head(part)
    return part


def fixed_batch(inputs: list[TensorInfo], path: Path) -> int | None:
    """The batch size the inputs fix (their first dimension), or None when it is symbolic or unnamed."""
    sizes = {i.shape[0] for i in inputs if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
    if len(sizes) > 1:
        raise incompatible(path, f"the model's inputs fix different batch sizes ({sorted(sizes)})",
                           "re-export the model with a dynamic batch dimension")
    return sizes.pop() if sizes else None


def believe_run(info: TensorInfo, seen: tuple[tuple[int, ...], int | None] | None, batch: int | None,
                zipmap: bool) -> TensorInfo:
    """The output as one run of the original file shows it; the batch axis stays symbolic unless fixed."""
    if seen is None:
        return info
    shape, elem_type = seen
    dims: list[Dim] = list(shape)
    if batch is None and dims and dims[0] == PROBE_ROWS:
        dims[0] = info.shape[0] if info.shape and isinstance(info.shape[0], str) else None
    # ZipMap values come back as Python floats whatever the tensor was: keep the inferred type for those.
    keep_type = zipmap or elem_type is None
    return TensorInfo(info.name, info.elem_type if keep_type else elem_type, tuple(dims))  # type: ignore[arg-type]


def declare_outputs(model: ModelProto, outputs: list[TensorInfo]) -> None:
    """Make the graph's outputs declare the types and shapes we trust (--keep-outputs shows them)."""
    from onnx import helper

    by_name = {o.name: o for o in outputs}
    for out in model.graph.output:
        info = by_name.get(out.name)
        if info is not None:
            out.CopyFrom(helper.make_tensor_value_info(info.name, info.elem_type, info.shape))


def choose_head(part: Part) -> None:
    """The output fed to the combiner: `output`, else a classifier's probabilities, else the only output."""
    spec, path = part.spec, part.source.path
    by_name = {o.name: o for o in part.outputs}
    labels = [o for o in part.outputs if o.elem_type in LABEL_TYPES and (o.rank in (None, 1) or o.shape
                                                                          and len(o.shape) == 2 and o.shape[1] == 1)]
    scores = [o for o in part.outputs if o.elem_type in SCORE_TYPES]
    wanted = part.zipmaps.get(spec.output, spec.output) if spec.output else None
    if wanted is not None and wanted not in by_name:
        names = ", ".join(sorted(set(by_name) | set(part.zipmaps)))
        raise incompatible(path, f"models.{spec.name}.output: no tensor output {spec.output!r}",
                           f"this model's outputs are: {names}")

    said = spec.task == "classification" or (spec.task is None and spec.classes is not None)
    is_classifier = said or (spec.task is None and bool(labels) and bool(scores))
    if not is_classifier:
        if wanted is None:
            if len(part.outputs) != 1:
                names = ", ".join(o.name for o in part.outputs)
                raise incompatible(path, f"the model has {len(part.outputs)} outputs ({names}) and none is chosen",
                                   f'set output = "<name>" in [models.{spec.name}]')
            wanted = part.outputs[0].name
        part.head = by_name[wanted]
        if part.head.elem_type not in SCORE_TYPES:
            raise incompatible(path, f"output {wanted!r} is not a floating-point tensor; only scores can be combined")
        return

    part.task = "classification"
    if wanted is None:
        if not scores:
            raise incompatible(path, "classifier without a floating-point probability output",
                               f'name its probability output with output = "<name>" in [models.{spec.name}]')
        wanted = probability_output(scores, part.zipmap_classes)
    part.head = by_name[wanted]
    if part.head.elem_type not in SCORE_TYPES:
        raise incompatible(path, f"output {wanted!r} is not a floating-point tensor; "
                           "only probabilities can be combined")
    part.label = labels[0] if labels else None
    part.classes = find_classes(part)


def probability_output(scores: list[TensorInfo], zipmap_classes: dict[str, Classes]) -> str:
    """Of a classifier's float outputs: the one a ZipMap wrapped, else one named like probabilities, else the first."""
    for s in scores:
        if s.name in zipmap_classes:
            return s.name
    for s in scores:
        if "prob" in s.name.lower():
            return s.name
    return scores[0].name


def find_classes(part: Part) -> Classes:
    """The labels of the head's columns: the mapping, a ZipMap, the label output's source, a classifier node."""
    spec, path, head = part.spec, part.source.path, part.head
    classes = spec.classes or part.zipmap_classes.get(head.name)
    if not classes and part.label is not None:
        classes = classes_from_label(part.model, part.label.name, part.source.refs)
    if not classes:
        classes = next((c for n in part.model.graph.node if n.domain == "ai.onnx.ml" and n.op_type in CLASSIFIER_OPS
                        if (c := node_classes(n))), None)
    width = head.width
    if not classes:
        if part.label is not None or width is None:
            raise incompatible(path, "cannot find this classifier's class labels",
                               f"add classes = [...] to [models.{spec.name}] in the mapping")
        classes = (0, 1) if width == 1 else tuple(range(width))  # a single column is the positive class's
    if width is not None and width != len(classes) and not (width == 1 and len(classes) == 2):
        shown = f"[N, {width}]" if head.rank == 2 else "[N]"
        raise incompatible(path, f"probability output {head.name!r} is {shown} but the model has "
                           f"{len(classes)} classes {list(classes)}",
                           f"set classes = [...] in [models.{spec.name}] to one label per column")
    if len(set(classes)) != len(classes):
        raise incompatible(path, f"class labels repeat: {list(classes)}")
    return classes


def node_classes(node: NodeProto) -> Classes | None:
    """Class labels from a ZipMap's or an ai.onnx.ml classifier's attributes."""
    for attr in node.attribute:
        if attr.name in CLASS_ATTRS:
            if attr.ints:
                return tuple(int(i) for i in attr.ints)
            if attr.strings:
                return tuple(s.decode() for s in attr.strings)
    return None


def classes_from_label(model: ModelProto, label: str, refs: Any) -> Classes | None:
    """Follow the label output back to a classifier node or to a constant it gathers from.

    skl2onnx's float64 LogisticRegression and MLP keep their labels in an initializer that
    ArrayFeatureExtractor(classes, ArgMax(probabilities)) picks from.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    constants: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = value
    name = label
    for _ in range(len(graph.node)):
        node = producer.get(name)
        if node is None:
            return None
        if node.domain == "ai.onnx.ml" and node.op_type in CLASSIFIER_OPS and node.output[0] == name:
            return node_classes(node)
        if node.op_type in ("ArrayFeatureExtractor", "Gather") and node.input[0] in constants:
            values = tensor_values(constants[node.input[0]], refs).reshape(-1)
            if values.dtype.kind in "iu":
                return tuple(int(v) for v in values)
            if values.dtype.kind in "OSU":
                return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)
            return None
        if node.op_type not in LABEL_PASS_THROUGH:
            return None
        name = node.input[0]
    return None


def tensor_values(tensor: TensorProto, refs: Any) -> np.ndarray:
    """A small tensor's values, also when the loader kept its bytes by reference."""
    from onnx import numpy_helper

    from .wire import read_range, ref_of

    ref = ref_of(tensor, refs)
    if ref is None:
        return numpy_helper.to_array(tensor)
    copy = type(tensor)()
    copy.CopyFrom(tensor)
    del copy.external_data[:]
    copy.data_location = type(tensor).DEFAULT
    copy.raw_data = read_range(ref)
    return numpy_helper.to_array(copy)


# ---------------------------------------------------------------------------- converting


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
    tree model from 1 to 5 makes the checker and onnxruntime refuse it. A part that uses TreeEnsemble
    (only in 5) next to one that uses the old tree ops gets its TreeEnsemble rewritten as
    TreeEnsembleRegressor (see legacy_tree_ensembles).
    """
    declared = [e.version for p in parts for e in p.model.opset_import if e.domain == "ai.onnx.ml"]
    top = max(declared)
    nodes = [(p, n) for p in parts for n in all_nodes(p.model.graph) if n.domain == "ai.onnx.ml"]
    for version in range(top, 0, -1):
        if all(ml_node_fits(n, version) for _, n in nodes):
            return version
    if any(n.op_type == "TreeEnsemble" for _, n in nodes):
        for part in parts:
            legacy_tree_ensembles(part)
        nodes = [(p, n) for p in parts for n in all_nodes(p.model.graph) if n.domain == "ai.onnx.ml"]
        for version in range(min(top, 4), 0, -1):
            if all(ml_node_fits(n, version) for _, n in nodes):
                return version
    ops = sorted({f"{p.name}: {n.op_type}" for p, n in nodes})
    raise incompatible(None, f"no ai.onnx.ml opset is valid for every model's ops ({', '.join(ops)})",
                       "re-export the models with one ai.onnx.ml opset")


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


def convert_part(part: Part, target: Target) -> None:
    """Convert the default-domain opset with onnx.version_converter (inlining local functions first)."""
    from onnx import version_converter

    model = part.model
    want = target.opsets[""]
    have = default_opset(model)
    if have is None:
        entry = model.opset_import.add()
        entry.domain, entry.version = "", want
    elif have != want:
        uses_default = any(n.domain in ("", "ai.onnx") for n in all_nodes(model.graph))
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
    part.model = model


def subgraphs(node: NodeProto) -> list[GraphProto]:
    """The graphs a node holds in its attributes (If's branches, Loop's and Scan's bodies)."""
    return [g for attr in node.attribute for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]


def all_nodes(graph: GraphProto) -> list[NodeProto]:
    """Every node of the graph and of its subgraphs, at any depth (each followed by its subgraphs' nodes)."""
    out = []
    for node in graph.node:
        out.append(node)
        for g in subgraphs(node):
            out.extend(all_nodes(g))
    return out


def graph_names(graph: GraphProto) -> set[str]:
    """Every name the graph uses, at every scope: values, initializers, and nodes' inputs, outputs and names.

    A fresh name must avoid all of them: a subgraph's name may not shadow one of an outer scope either.
    """
    names = {vi.name for vi in (*graph.input, *graph.output, *graph.value_info)}
    names |= {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
        for g in subgraphs(node):
            names |= graph_names(g)
    names.discard("")
    return names


# ---------------------------------------------------------------------------- ai.onnx.ml 5 trees

# TreeEnsemble's integer enums, and the strings TreeEnsembleRegressor spells them with.
_MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ")
_POST = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")
_AGGREGATE = ("AVERAGE", "SUM", "MIN", "MAX")


def legacy_tree_ensembles(part: Part) -> None:
    """Rewrite ai.onnx.ml 5 TreeEnsemble nodes as TreeEnsembleRegressor (ml 3), which every other tree part uses.

    TreeEnsemble lists only branch nodes and keeps leaves apart; TreeEnsembleRegressor numbers every
    node of a tree, leaves included. TreeEnsembleRegressor returns float32, so a float64 ensemble gets
    a Cast back to float64 (its thresholds stay float64 through nodes_values_as_tensor).
    """
    from onnx import helper, numpy_helper

    graph = part.model.graph
    if not any(n.op_type == "TreeEnsemble" and n.domain == "ai.onnx.ml" for n in graph.node):
        return
    types = {o.name: o.elem_type for o in part.outputs} | {i.name: i.elem_type for i in part.inputs}
    inferred = {vi.name: tensor_info(vi) for vi in _inferred_value_infos(part.model)}
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


def _inferred_value_infos(model: ModelProto) -> list[ValueInfoProto]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return []
    return [*inferred.graph.input, *inferred.graph.value_info]


def _regressor_attributes(a: dict[str, Any], numpy_helper: Any, double: bool) -> dict[str, Any]:
    """TreeEnsemble (ml 5) attributes -> the equivalent TreeEnsembleRegressor attributes.

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


# ---------------------------------------------------------------------------- aligning the heads


def check_batches(parts: list[Part], source: Path) -> tuple[int | None, list[str]]:
    """The merged model's fixed batch size (None: any), and a warning per part that fixes one."""
    fixed = {p.batch for p in parts if p.batch is not None}
    if len(fixed) > 1:
        shown = ", ".join(f"{p.name} exactly {p.batch}" for p in parts if p.batch is not None)
        raise incompatible(source, f"the models fix different batch sizes ({shown} rows per run)",
                           "re-export them with a dynamic batch dimension")
    warnings = []
    for p in parts:
        if p.batch is not None:
            first = next(i for i in p.inputs if i.shape)
            shown = "[" + ", ".join(str(d) if d is not None else "?" for d in first.shape or ()) + "]"
            warnings.append(f"models.{p.name}: {p.source.path.name} has a fixed batch size of {p.batch} "
                            f"(input {first.name!r} is {shown}), so the merged model takes exactly {p.batch} "
                            f"row{'s' if p.batch != 1 else ''} per run; re-export it with a dynamic batch "
                            "dimension to lift this")
    return (fixed.pop() if fixed else None), warnings


def align_heads(parts: list[Part], kind: str, opset: int, source: Path) -> None:
    """Give every head the same layout, in the part's own graph (after conversion, before prefixing).

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
        for p in classifiers:
            assert p.classes is not None
            binary = p.head.width == 1 and len(common) == 2
            order = tuple(p.classes.index(c) for c in common)
            adapter = HeadAdapter(p.head.name, unsqueeze=p.head.rank == 1, binary=binary,
                                  order=order if order != tuple(range(len(common))) else None)
            apply_adapter(p, adapter, opset)
            p.classes = common
    ranks = {p.head.rank for p in others}
    if ranks == {1, 2} and all(p.head.width == 1 for p in others):
        for p in others:
            if p.head.rank == 1:
                apply_adapter(p, HeadAdapter(p.head.name, unsqueeze=True), opset)


def _toml(classes: Classes) -> str:
    return "[" + ", ".join(f'"{c}"' if isinstance(c, str) else str(c) for c in classes) + "]"


def apply_adapter(part: Part, adapter: HeadAdapter, opset: int) -> None:
    """Append the adapter's nodes to the part's graph; its head becomes their result."""
    if not (adapter.unsqueeze or adapter.binary or adapter.order is not None):
        return
    from onnx import helper, numpy_helper

    graph = part.model.graph
    taken = graph_names(graph)

    def fresh(base: str) -> str:
        return unique_name(base, taken)

    def const(value: np.ndarray, base: str) -> str:
        name = fresh(base)
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = fresh(base)
        graph.node.append(helper.make_node(op, inputs, [out], name=fresh(f"align.{base}"), **attrs))
        return out

    head = part.head
    x, width = head.name, head.width
    batch = head.shape[0] if head.shape else None
    if adapter.unsqueeze:
        if opset >= 13:
            x = node("Unsqueeze", [x, const(np.array([1], dtype=np.int64), f"{head.name}.axes")],
                     f"{head.name}.column")
        else:
            x = node("Unsqueeze", [x], f"{head.name}.column", axes=[1])
        width = 1
    if adapter.binary:
        one = const(np.array(1, dtype=NUMPY_OF_TYPE.get(head.elem_type, np.float32)), f"{head.name}.one")
        negative = node("Sub", [one, x], f"{head.name}.negative")
        x = node("Concat", [negative, x], f"{head.name}.binary", axis=1)
        width = 2
    if adapter.order is not None:
        x = node("Gather", [x, const(np.array(adapter.order, dtype=np.int64), f"{head.name}.order")],
                 f"{head.name}.aligned", axis=1)
    part.head = TensorInfo(x, head.elem_type, (batch, width))
    part.adapter = adapter
