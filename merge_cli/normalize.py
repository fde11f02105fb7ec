"""Bring each part to the common target: one opset per domain, tensor outputs, a known head, one opset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import bad_input, incompatible
from .mapping import ModelSpec
from .model_io import LoadedModel, check_model

if TYPE_CHECKING:
    from onnx import ModelProto, ValueInfoProto

Dim = int | str | None
Shape = tuple[Dim, ...] | None  # None: rank unknown

FLOAT, INT32, INT64, STRING, DOUBLE = 1, 6, 7, 8, 11
LABEL_TYPES = (INT64, INT32, STRING)
SCORE_TYPES = (FLOAT, DOUBLE, 10, 16)  # float, double, float16, bfloat16
CLASSIFIER_OPS = {"LinearClassifier", "TreeEnsembleClassifier", "SVMClassifier", "TreeEnsemble"}
CLASS_ATTRS = ("classlabels_int64s", "classlabels_ints", "classlabels_strings")
DEFAULT_OPSET = 17  # for parts that declare no default-domain opset at all (e.g. XGBoost via onnxmltools)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    elem_type: int
    shape: Shape

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


@dataclass(frozen=True)
class Target:
    """What every part is converted to."""

    opsets: dict[str, int]
    ir_version: int


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
    classes: tuple[int, ...] | tuple[str, ...] | None = None
    task: Literal["classification", "regression"] = "regression"
    zipmaps: dict[str, str] = field(default_factory=dict)  # ZipMap output -> the tensor that fed it
    opset_from: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name


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
            dims.append(d.dim_value if kind == "dim_value" else d.dim_param if kind == "dim_param" else None)
        shape = tuple(dims)
    return TensorInfo(vi.name, tt.elem_type, shape)


def remove_zipmaps(model: ModelProto) -> dict[str, tuple[str, tuple[int, ...] | tuple[str, ...]]]:
    """Replace each ZipMap graph output by the tensor feeding it; return output -> (tensor, class labels)."""
    from onnx import helper

    outputs = {o.name: i for i, o in enumerate(model.graph.output)}
    removed: dict[str, tuple[str, tuple[int, ...] | tuple[str, ...]]] = {}
    keep = []
    for node in model.graph.node:
        if node.op_type == "ZipMap" and node.domain == "ai.onnx.ml" and node.output[0] in outputs:
            attrs = {a.name: a for a in node.attribute}
            if "classlabels_int64s" in attrs:
                classes: tuple[int, ...] | tuple[str, ...] = tuple(attrs["classlabels_int64s"].ints)
            else:
                classes = tuple(s.decode() for s in attrs["classlabels_strings"].strings)
            removed[node.output[0]] = (node.input[0], classes)
            continue
        keep.append(node)
    if not removed:
        return removed
    del model.graph.node[:]
    model.graph.node.extend(keep)
    for out_name, (tensor, classes) in removed.items():
        vi = model.graph.output[outputs[out_name]]
        # Repoint the graph output or the version converter fails with "Output ... is undefined".
        vi.CopyFrom(helper.make_tensor_value_info(tensor, FLOAT, [None, len(classes)]))
    unique: dict[str, ValueInfoProto] = {}
    for out in model.graph.output:
        unique.setdefault(out.name, type(out).FromString(out.SerializeToString()))
    if len(unique) != len(model.graph.output):  # two ZipMaps fed by one tensor
        del model.graph.output[:]
        model.graph.output.extend(unique.values())
    _fix_probability_types(model, removed)
    return removed


def _fix_probability_types(model: ModelProto, removed: dict[str, tuple[str, tuple[int, ...] | tuple[str, ...]]]) -> None:
    """A ZipMap's input may be float64 (DoubleTensorType models): take its declared type when the graph has one."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return
    types = {vi.name: vi for vi in (*inferred.graph.value_info, *inferred.graph.output)}
    for out in model.graph.output:
        if any(out.name == t for t, _ in removed.values()) and out.name in types:
            info = tensor_info(types[out.name])
            if info is not None and info.elem_type:
                out.type.tensor_type.elem_type = info.elem_type


def read_part(spec: ModelSpec, loaded: LoadedModel) -> Part:
    """Work out a part's inputs, its head output, and whether it is a classifier (and its classes)."""
    import onnx

    model = loaded.proto
    check_versions(loaded)
    dedupe_opsets(model)
    check_model(model, loaded.refs, loaded.path, full=False)
    zipmaps = remove_zipmaps(model)
    initializers = {t.name for t in model.graph.initializer} | {
        s.values.name for s in model.graph.sparse_initializer
    }
    inputs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        info = tensor_info(vi)
        if info is None:
            raise incompatible(loaded.path, f"input {vi.name!r} is not a tensor; only tensor inputs can be routed")
        inputs.append(info)
    if not inputs:
        raise bad_input(loaded.path, "the model has no inputs: there is nothing to route columns to")

    declared = {o.name: tensor_info(o) for o in model.graph.output}
    missing = [n for n, i in declared.items() if i is not None and (i.shape is None or not i.elem_type)]
    if missing:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            for o in inferred.graph.output:
                if o.name in missing:
                    declared[o.name] = tensor_info(o)
        except Exception:
            pass
    outputs = [i for i in declared.values() if i is not None]
    if not outputs:
        raise incompatible(loaded.path, "the model has no tensor outputs to combine")
    part = Part(spec, loaded, model, inputs, outputs, head=outputs[0],
                zipmaps={k: v[0] for k, v in zipmaps.items()}, opset_from=default_opset(model))
    choose_head(part, {k: v[1] for k, v in zipmaps.items()})
    return part


def choose_head(part: Part, zipmap_classes: dict[str, tuple[int, ...] | tuple[str, ...]]) -> None:
    """The output fed to the combiner: `output`, else a classifier's probabilities, else the only output."""
    spec, path = part.spec, part.source.path
    by_name = {o.name: o for o in part.outputs}
    labels = [o for o in part.outputs if o.elem_type in LABEL_TYPES and (o.rank in (None, 1) or o.shape == (None,))]
    scores = [o for o in part.outputs if o.elem_type in SCORE_TYPES]
    wanted = part.zipmaps.get(spec.output, spec.output) if spec.output else None
    if wanted is not None and wanted not in by_name:
        names = ", ".join(sorted(set(by_name) | set(part.zipmaps)))
        raise incompatible(path, f"models.{spec.name}.output: no tensor output {spec.output!r}",
                           f"this model's outputs are: {names}")

    is_classifier = spec.task == "classification" or (spec.task is None and bool(labels) and len(scores) == 1)
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
            raise incompatible(path, "classifier without a floating-point probability output")
        wanted = scores[0].name
    part.head = by_name[wanted]
    part.label = labels[0] if labels else None
    classes = spec.classes
    if classes is None:
        classes = next(iter(zipmap_classes.values()), None) or classes_from_nodes(part.model)
    if classes is None:
        width = part.head.shape[-1] if part.head.shape else None
        if part.label is None and isinstance(width, int):
            classes = tuple(range(width))
        else:
            raise incompatible(path, "cannot find this classifier's class labels",
                               f"add classes = [...] to [models.{spec.name}] in the mapping")
    part.classes = classes


def classes_from_nodes(model: ModelProto) -> tuple[int, ...] | tuple[str, ...] | None:
    """Class labels from an ai.onnx.ml classifier node's attributes."""
    for node in model.graph.node:
        if node.domain == "ai.onnx.ml" and node.op_type in CLASSIFIER_OPS:
            for attr in node.attribute:
                if attr.name in CLASS_ATTRS:
                    if attr.ints:
                        return tuple(attr.ints)
                    if attr.strings:
                        return tuple(s.decode() for s in attr.strings)
    return None


# ---------------------------------------------------------------------------- converting


def common_target(parts: list[Part], opset: int | None, ir_cap: int) -> Target:
    """The highest default-domain opset among the parts (or --opset), the highest of other domains."""
    import onnx

    versions: dict[str, int] = {}
    for part in parts:
        for entry in part.model.opset_import:
            versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    if opset is not None:
        newest = onnx.defs.onnx_opset_version()
        if not 7 <= opset <= newest:
            raise incompatible(None, f"--opset {opset} is outside what the installed onnx converts (7..{newest})")
        versions[""] = opset
    versions.setdefault("", DEFAULT_OPSET)
    ir = max(p.model.ir_version for p in parts)
    ir = max(ir, _min_ir_for(versions))
    return Target(opsets=dict(sorted(versions.items())), ir_version=min(ir, ir_cap))


def _min_ir_for(opsets: dict[str, int]) -> int:
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
        uses_default = any(n.domain in ("", "ai.onnx") for n in _all_nodes(model.graph))
        if uses_default:
            if model.functions:
                # the converter silently drops local functions; inline them so their bodies convert too
                from onnx import inliner

                model = inliner.inline_local_functions(model)
            try:
                model = version_converter.convert_version(model, want)
            except Exception as e:  # the converter raises RuntimeError, ValueError, or its own errors
                message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise incompatible(part.source.path, f"cannot convert opset {have} to {want}: {message}",
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


def _all_nodes(graph: Any) -> list[Any]:
    out = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            if attr.HasField("g"):
                out.extend(_all_nodes(attr.g))
            for g in attr.graphs:
                out.extend(_all_nodes(g))
    return out
