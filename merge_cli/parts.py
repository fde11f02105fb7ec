"""Each model file as a Part: what it reads, its outputs, the head it feeds the combiner, its classes (the Parts stage)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import bad_input, incompatible
from .graphs import (
    DEFAULT_OPSET,
    FLOAT,
    LABEL_TYPES,
    MAX_ROW_VALUES,
    SCORE_TYPES,
    Classes,
    Dim,
    Shape,
    Task,
    TensorInfo,
    copied,
    default_opset,
    fed_inputs,
    is_default_domain,
    row_values,
    shape_text,
    tensor_info,
)
from .mapping import ModelSpec
from .model_io import LoadedModel, check_model

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto, NodeProto, TensorProto

CLASSIFIER_OPS = {"LinearClassifier", "TreeEnsembleClassifier", "SVMClassifier"}
CLASS_ATTRS = ("classlabels_int64s", "classlabels_ints", "classlabels_strings")
# Ops a label goes through unchanged on its way out (skl2onnx: ArgMax -> ArrayFeatureExtractor -> Reshape -> Cast).
LABEL_PASS_THROUGH = {"Identity", "Cast", "CastLike", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
MAX_BATCH_VALUES = MAX_ROW_VALUES  # values in one run of a fixed-batch model: its verification cannot take fewer rows
PROBE_ROWS = 3  # batch size of the one run that checks declared output shapes (no converter bakes in 3)

# What one run of the original file says about its outputs: name -> (shape, element type or None if unknown).
Observed = dict[str, tuple[tuple[int, ...], int | None]]
Observer = Callable[["Part"], Observed | None]


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


@dataclass(frozen=True)
class Part:
    """One model as the merge sees it: what it reads, what it gives the combiner, and its own graph.

    Frozen: each stage returns a new Part (read_part, convert.convert_part, heads.align_heads,
    splice.prefixed) around a model of its own, so a Part says which stage made it by where it came from.
    """

    spec: ModelSpec
    source: LoadedModel  # the file as read: never changed
    model: ModelProto  # this part's own copy: ZipMaps cut off, outputs declared as trusted
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]  # every tensor output, after ZipMap removal
    head: TensorInfo  # the output fed to the combiner (a classifier's probabilities)
    label: TensorInfo | None = None
    classes: Classes | None = None  # after align_heads: the common class order of all classifiers
    task: Task = "regression"
    zipmaps: Mapping[str, str] = field(default_factory=dict)  # ZipMap output -> the tensor that fed it
    zipmap_classes: Mapping[str, Classes] = field(default_factory=dict)  # that tensor -> the ZipMap's labels
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
    outputs = trusted_outputs(model, fed, batch is not None)
    if not outputs:
        raise incompatible(loaded.path, "the model has no tensor outputs to combine")
    declare_outputs(model, outputs)
    part = Part(spec, loaded, model, tuple(inputs), tuple(outputs), head=outputs[0],
                zipmaps={k: v[0] for k, v in zipmaps.items()}, zipmap_classes=fed,
                opset_from=default_opset(model), batch=batch, unzipped=copied(model) if zipmaps else None)
    observed = observe(part) if observe is not None else None
    if observed:
        outputs = [believe_run(o, observed.get(o.name), batch, o.name in fed) for o in part.outputs]
        declare_outputs(model, outputs)
        part = replace(part, outputs=tuple(outputs))
    return choose_head(part)


def trusted_outputs(model: ModelProto, fed: Mapping[str, Classes], fixed: bool) -> list[TensorInfo]:
    """Each tensor output (a ZipMap's too, as the tensor it wrapped) with the type and shape we trust:
    shape inference's over the declared ones (LightGBM declares its label [1])."""
    inferred = inferred_outputs(model)
    outputs = []
    for out in model.graph.output:
        declared = tensor_info(out)
        if declared is None and out.name not in fed:
            continue  # a sequence or map output: not combinable, left as it is
        guess = inferred.get(out.name)
        elem_type = (guess.elem_type if guess and guess.elem_type else declared.elem_type if declared else FLOAT)
        shape = trusted_shape(declared.shape if declared else None, guess.shape if guess else None, fixed)
        if out.name in fed and shape is None:
            shape = (None, len(fed[out.name]))
        outputs.append(TensorInfo(out.name, elem_type, shape))
    return outputs


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
        domain = "" if is_default_domain(entry.domain) else entry.domain
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
        domain = "" if is_default_domain(entry.domain) else entry.domain
        best[domain] = max(best.get(domain, 0), entry.version)
    del model.opset_import[:]
    for domain, version in sorted(best.items()):
        entry = model.opset_import.add()
        entry.domain, entry.version = domain, version


def checked_model(loaded: LoadedModel) -> ModelProto:
    """A copy of the loaded proto once it passes what every model file must (versions this onnx knows,
    onnx.checker), with one opset_import per domain."""
    check_versions(loaded)
    model = copied(loaded.proto)  # the loaded proto stays as read from disk
    dedupe_opsets(model)
    check_model(model, loaded.path, full=False)
    forget_negative_sizes(model.graph)
    return model


def forget_negative_sizes(graph: GraphProto) -> None:
    """A negative size (some converters write -1 for "any") becomes an unnamed one, as tensor_info reads
    it: left in, the merged graph's checker would compare it with the routed width and blame the output."""
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.type.WhichOneof("value") == "tensor_type" and vi.type.tensor_type.HasField("shape"):
            for d in vi.type.tensor_type.shape.dim:
                if d.WhichOneof("value") == "dim_value" and d.dim_value < 0:
                    d.ClearField("dim_value")


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


def fixed_batch(inputs: list[TensorInfo], path: Path) -> int | None:
    """The batch size the inputs fix (their first dimension), or None when it is symbolic or unnamed.

    Sizes no model runs on are refused here, before anything allocates them: more than MAX_ROW_VALUES
    values in one row of an input, or a fixed batch whose rows hold more than MAX_BATCH_VALUES."""
    for i in inputs:
        if i.shape and row_values(i.shape) > MAX_ROW_VALUES:
            raise bad_input(path, f"input {i.name!r} is {shape_text(i.shape)}: {row_values(i.shape)} values per row; "
                            f"more than {MAX_ROW_VALUES} is refused")
    sizes = {i.shape[0] for i in inputs if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
    if len(sizes) > 1:
        raise incompatible(path, f"the model's inputs fix different batch sizes ({sorted(sizes)})",
                           "re-export the model with a dynamic batch dimension")
    batch = sizes.pop() if sizes else None
    if batch is not None and batch * sum(row_values(i.shape or ()) for i in inputs) > MAX_BATCH_VALUES:
        raise bad_input(path, f"the inputs fix a batch of {batch} rows ({', '.join(shape_text(i.shape) for i in inputs)}"
                        f"): more than {MAX_BATCH_VALUES} values per run is refused",
                        "re-export the model with a dynamic batch dimension")
    return batch


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
            shown = shape_text(first.shape or ())
            warnings.append(f"models.{p.name}: {p.source.path.name} has a fixed batch size of {p.batch} "
                            f"(input {first.name!r} is {shown}), so the merged model takes exactly {p.batch} "
                            f"row{'s' if p.batch != 1 else ''} per run; re-export it with a dynamic batch "
                            "dimension to lift this")
    return (fixed.pop() if fixed else None), warnings


# ---------------------------------------------------------------------------- the head and its classes


def choose_head(part: Part) -> Part:
    """The part with its head chosen: `output`, else a classifier's probabilities, else the only output;
    a classifier also with its label output and classes."""
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
        if by_name[wanted].elem_type not in SCORE_TYPES:
            raise incompatible(path, f"output {wanted!r} is not a floating-point tensor; only scores can be combined")
        return replace(part, head=by_name[wanted])

    if wanted is None:
        if not scores:
            raise incompatible(path, "classifier without a floating-point probability output",
                               f'name its probability output with output = "<name>" in [models.{spec.name}]')
        wanted = probability_output(scores, part.zipmap_classes)
    if by_name[wanted].elem_type not in SCORE_TYPES:
        raise incompatible(path, f"output {wanted!r} is not a floating-point tensor; "
                           "only probabilities can be combined")
    part = replace(part, task="classification", head=by_name[wanted], label=labels[0] if labels else None)
    return replace(part, classes=find_classes(part))


def probability_output(scores: list[TensorInfo], zipmap_classes: Mapping[str, Classes]) -> str:
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
        classes = classes_from_label(part.model, part.label.name)
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


def classes_from_label(model: ModelProto, label: str) -> Classes | None:
    """Follow the label output back to a classifier node or to a constant it gathers from.

    skl2onnx's float64 LogisticRegression and MLP keep their labels in an initializer that
    ArrayFeatureExtractor(classes, ArgMax(probabilities)) picks from.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    constants: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and is_default_domain(node.domain):
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
            values = tensor_values(constants[node.input[0]]).reshape(-1)
            if values.dtype.kind in "iu":
                return tuple(int(v) for v in values)
            if values.dtype.kind in "OSU":
                return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)
            return None
        if node.op_type not in LABEL_PASS_THROUGH:
            return None
        name = node.input[0]
    return None


def tensor_values(tensor: TensorProto) -> np.ndarray:
    """A small tensor's values, also when the loader kept its bytes by reference."""
    from onnx import numpy_helper

    from .wire import read_range, ref_of

    ref = ref_of(tensor)
    if ref is None:
        return numpy_helper.to_array(tensor)
    copy = type(tensor)()
    copy.CopyFrom(tensor)
    del copy.external_data[:]
    copy.data_location = type(tensor).DEFAULT
    copy.raw_data = read_range(ref)
    return numpy_helper.to_array(copy)
