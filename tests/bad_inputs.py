"""Bad inputs for `merge-models merge`, generated fresh into a directory: each case says what must happen.

A case writes its files (models, mapping, data files, links) into an empty directory and returns the
command line. `tests/test_bad_inputs.py` runs the real CLI on every case and checks the contract:
the exit code, one `error: <file>: <problem>` line (plus `hint:` where there is a fix), no
traceback, inputs byte-identical afterwards, nothing left behind. Nothing here is committed as a
fixture, so the suite also runs on bad inputs that are not in the repository.

    python tests/bad_inputs.py DIR     # write every case into DIR/<case>/ to try by hand
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from merge_cli.errors import ExitCode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_mlp  # noqa: E402
from conftest import to_toml as toml  # noqa: E402
from conftest import write_mapping as write_doc  # noqa: E402

COLUMNS = ["A", "B", "C", "D"]
OUT = "merged.onnx"
HIDDEN = 300  # a [2, 300] float weight is 2400 bytes: large enough to be read by reference


@dataclass(frozen=True)
class Case:
    """One bad input: how to make it, and what the CLI must answer."""

    name: str
    build: Callable[[Path], list[str]]  # writes files into an empty directory, returns the CLI arguments
    code: ExitCode
    file: str  # the file the error line names, relative to the case directory
    problem: str  # a fragment of the error message (case-insensitive)
    hint: bool = False  # a `hint:` line must follow
    json: bool = True  # also run with --json (tests/hostile_inputs.py runs a representative subset so)


CASES: list[Case] = []


def case(code: ExitCode, file: str, problem: str, hint: bool = False) -> Callable[[Callable[[Path], list[str]]],
                                                                                    Callable[[Path], list[str]]]:
    def register(build: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
        CASES.append(Case(build.__name__, build, code, file, problem, hint))
        return build

    return register


# ---------------------------------------------------------------------------- valid pieces


def make_regressor(width: int = 2, out_dims: list[int] | None = None, *, weight: float = 0.5,
                   opset: int = 17, ir: int = 8, out_name: str = "y") -> onnx.ModelProto:
    """y = x @ W, x [N, width], y [N, *out_dims]: a small valid model with its weight inline."""
    out_dims = [1] if out_dims is None else out_dims
    cols = int(np.prod(out_dims)) if out_dims else 1
    w = numpy_helper.from_array(np.full((width, cols), weight, np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["flat"], name="matmul")]
    shape = numpy_helper.from_array(np.array([-1, *out_dims], np.int64), "shape")
    nodes.append(helper.make_node("Reshape", ["flat", "shape"], [out_name], name="reshape"))
    graph = helper.make_graph(nodes, "regressor", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", *out_dims])],
                              initializer=[w, shape])
    return helper.make_model(graph, ir_version=ir, opset_imports=[helper.make_opsetid("", opset)])


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Write the proto as it is (no checker, no external-data conversion): bad models must stay bad."""
    path.write_bytes(model.SerializeToString())
    return path


def save_external(model: onnx.ModelProto, path: Path, location: str) -> Path:
    """Save with every initializer over 1 KiB in one external file `location` beside the model."""
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)
    return path


def set_external(tensor: TensorProto, **entries: str) -> None:
    """Replace a tensor's external_data entries (location, offset, length) and mark it external."""
    del tensor.external_data[:]
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")


def mapping_doc(models: dict[str, dict[str, Any]] | None = None, **top: Any) -> dict[str, Any]:
    models = {"a": {"path": "a.onnx", "columns": ["A", "B"]},
              "b": {"path": "b.onnx", "columns": ["C", "D"]}} if models is None else models
    return {"version": 1, "input": {"name": "features", "columns": COLUMNS}, "models": models,
            "combiner": {"kind": "mean"}, **top}


def merge_args(d: Path, mapping: str = "map.toml", *extra: str | Path, out: str | Path = OUT) -> list[str]:
    return ["merge", "--map", str(d / mapping), "--out", str(d / out), "--rows", "16", *map(str, extra)]


def two_regressors(d: Path, a: onnx.ModelProto | None = None, b: onnx.ModelProto | None = None,
                   doc: dict[str, Any] | None = None, mapping: str = "map.toml") -> list[str]:
    """The usual setup: a.onnx on [A, B], b.onnx on [C, D], mean; either part or the mapping replaced."""
    save(a if a is not None else make_regressor(), d / "a.onnx")
    save(b if b is not None else make_regressor(weight=-1.0), d / "b.onnx")
    write_doc(d / mapping, doc if doc is not None else mapping_doc())
    return merge_args(d, mapping)


def with_a(d: Path, write_a: Callable[[Path], object]) -> list[str]:
    """The usual setup with a.onnx written by `write_a` (bytes, links, external data...)."""
    save(make_regressor(weight=-1.0), d / "b.onnx")
    write_doc(d / "map.toml", mapping_doc())
    write_a(d / "a.onnx")
    return merge_args(d)


def external_mlp(d: Path, edit: Callable[[onnx.ModelProto], None] | None = None, location: str = "a.bin") -> Path:
    """a.onnx whose weights live in `location`; `edit` changes the saved proto's external-data entries."""
    save_external(make_mlp(), d / "a.onnx", location)
    if edit is not None:
        model = onnx.load(d / "a.onnx", load_external_data=False)
        edit(model)
        save(model, d / "a.onnx")
    return d / "a.onnx"


def protobuf_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested_if_model(depth: int) -> bytes:
    """A ModelProto whose graph nests `depth` If-branch subgraphs: valid wire format, too deep to parse."""
    graph = b""
    for _ in range(depth):
        attribute = protobuf_field(1, b"then_branch") + protobuf_field(6, graph) + bytes([20 << 3, 5])  # type GRAPH
        node = protobuf_field(1, b"cond") + protobuf_field(2, b"out") + protobuf_field(4, b"If") + protobuf_field(
            5, attribute)
        graph = protobuf_field(1, node) + protobuf_field(2, b"g")
    ir_version = bytes([1 << 3, 8])
    opset = protobuf_field(8, protobuf_field(1, b"") + bytes([2 << 3, 17]))
    return ir_version + opset + protobuf_field(7, graph)


# ---------------------------------------------------------------------------- model files


@case(ExitCode.BAD_INPUT, "map.toml", "models.a.path: no such file", hint=True)
def missing_model(d: Path) -> list[str]:
    return with_a(d, lambda p: None)


@case(ExitCode.BAD_INPUT, "a.onnx", "directory")
def model_is_a_directory(d: Path) -> list[str]:
    return with_a(d, lambda p: p.mkdir())


@case(ExitCode.BAD_INPUT, "a.onnx", "empty")
def empty_model_file(d: Path) -> list[str]:
    return with_a(d, lambda p: p.write_bytes(b""))


@case(ExitCode.BAD_INPUT, "a.onnx", "not an ONNX model")
def random_bytes(d: Path) -> list[str]:
    return with_a(d, lambda p: p.write_bytes(np.random.default_rng(4).bytes(4096)))


@case(ExitCode.BAD_INPUT, "a.onnx", "not an ONNX model")
def truncated_model(d: Path) -> list[str]:
    data = make_mlp().SerializeToString()
    return with_a(d, lambda p: p.write_bytes(data[: len(data) // 2]))


@case(ExitCode.BAD_INPUT, "a.onnx", "not an ONNX model")
def truncated_in_the_header(d: Path) -> list[str]:
    data = make_mlp().SerializeToString()
    return with_a(d, lambda p: p.write_bytes(data[:7]))


@case(ExitCode.BAD_INPUT, "a.onnx", "not an ONNX model", hint=True)
def graph_proto_passed_as_model(d: Path) -> list[str]:
    return with_a(d, lambda p: p.write_bytes(make_regressor().graph.SerializeToString()))


@case(ExitCode.BAD_INPUT, "a.onnx", "not an ONNX model")
def text_file_passed_as_model(d: Path) -> list[str]:
    text = onnx.printer.to_text(make_regressor())
    return with_a(d, lambda p: p.write_text(text))


@case(ExitCode.BAD_INPUT, "map.toml", "not an ONNX model")
def mapping_passed_as_model(d: Path) -> list[str]:
    args = two_regressors(d)
    return [*args, str(d / "map.toml"), str(d / "b.onnx")]


@case(ExitCode.BAD_INPUT, "a.onnx", "nested too deeply")
def nesting_past_protobuf_depth_limit(d: Path) -> list[str]:
    return with_a(d, lambda p: p.write_bytes(nested_if_model(120)))


@case(ExitCode.BAD_INPUT, "a.onnx", "IR version 99", hint=True)
def ir_version_newer_than_onnx(d: Path) -> list[str]:
    return two_regressors(d, a=make_regressor(ir=99))


@case(ExitCode.BAD_INPUT, "a.onnx", "IR version 2")
def ir_version_too_old(d: Path) -> list[str]:
    return two_regressors(d, a=make_regressor(ir=2))


@case(ExitCode.BAD_INPUT, "a.onnx", "opset ai.onnx 99", hint=True)
def opset_newer_than_onnx(d: Path) -> list[str]:
    return two_regressors(d, a=make_regressor(opset=99))


@case(ExitCode.BAD_INPUT, "a.onnx", "opset ai.onnx.ml 99", hint=True)
def ml_opset_newer_than_onnx(d: Path) -> list[str]:
    model = make_regressor()
    model.opset_import.add(domain="ai.onnx.ml", version=99)
    return two_regressors(d, a=model)


@case(ExitCode.BAD_INPUT, "a.onnx", "FrobnicateAll")
def unknown_op(d: Path) -> list[str]:
    model = make_regressor()
    model.graph.node[0].op_type = "FrobnicateAll"
    return two_regressors(d, a=model)


@case(ExitCode.BAD_INPUT, "a.onnx", "onnxruntime cannot load this model")
def unknown_op_in_a_custom_domain(d: Path) -> list[str]:
    model = make_regressor()
    model.graph.node[0].op_type = "Frobnicate"
    model.graph.node[0].domain = "com.example"
    model.opset_import.add(domain="com.example", version=1)
    return two_regressors(d, a=model)


@case(ExitCode.BAD_INPUT, "a.onnx", "onnxruntime cannot load this model")
def op_newer_than_onnxruntime_implements(d: Path) -> list[str]:
    """onnx 1.23 knows Swish at opset 28; onnxruntime 1.32 has no kernel for it: onnx accepts what cannot run."""
    model = make_regressor(opset=28, ir=13)
    model.graph.node[0].output[0] = "pre"
    model.graph.node.insert(1, helper.make_node("Swish", ["pre"], ["flat"], name="swish"))
    return two_regressors(d, a=model)


@case(ExitCode.BAD_INPUT, "a.onnx", "onnxruntime cannot run this model")
def model_fails_when_run(d: Path) -> list[str]:
    """Loads, but its Reshape fails on 16 rows: onnxruntime also logs that from C++ straight to fd 2."""
    model = make_regressor()
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([-1, 5], np.int64), "shape"))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    return two_regressors(d, a=model, b=make_regressor(out_dims=[5]))


@case(ExitCode.BAD_INPUT, "a.onnx", "not valid UTF-8")
def invalid_utf8_in_a_tensor_name(d: Path) -> list[str]:
    data = make_regressor(out_name="y_\x01\x01").SerializeToString().replace(b"y_\x01\x01", b"y_\xff\xfe")
    return with_a(d, lambda p: p.write_bytes(data))


@case(ExitCode.BAD_INPUT, "a.onnx", "not valid UTF-8")
def invalid_utf8_in_a_node_name(d: Path) -> list[str]:
    model = make_regressor()
    model.graph.node[0].name = "node_\x01\x01"
    data = model.SerializeToString().replace(b"node_\x01\x01", b"node_\xc3\x28")
    return with_a(d, lambda p: p.write_bytes(data))


def _huge(model: onnx.ModelProto, keep: str) -> onnx.ModelProto:
    w = model.graph.initializer[0]
    w.dims[:] = [1 << 40, 1]
    if keep == "none":
        w.ClearField("raw_data")
        w.ClearField("float_data")
    elif keep == "float_data":
        w.ClearField("raw_data")
        w.float_data[:] = [0.5, 0.5]
    return model


@case(ExitCode.BAD_INPUT, "a.onnx", "unknown element type 29", hint=True)
def unknown_element_type_of_an_input(d: Path) -> list[str]:
    """elem_type is a plain int32: protobuf and onnx.checker both let 29 through (found by test_fuzz.py)."""
    model = make_regressor()
    model.graph.input[0].type.tensor_type.elem_type = 29
    return two_regressors(d, a=model)


@case(ExitCode.BAD_INPUT, "a.onnx", "unknown element type 99", hint=True)
def unknown_element_type_of_a_weight(d: Path) -> list[str]:
    model = make_regressor()
    model.graph.initializer[0].data_type = 99
    return two_regressors(d, a=model)


@case(ExitCode.BAD_INPUT, "a.onnx", "'W'")
def initializer_with_huge_dims_and_no_data(d: Path) -> list[str]:
    return two_regressors(d, a=_huge(make_regressor(), "none"))


@case(ExitCode.BAD_INPUT, "a.onnx", "'W'")
def initializer_with_huge_dims_and_two_floats(d: Path) -> list[str]:
    return two_regressors(d, a=_huge(make_regressor(), "float_data"))


@case(ExitCode.BAD_INPUT, "a.onnx", "'W'")
def initializer_with_huge_dims_and_8_raw_bytes(d: Path) -> list[str]:
    return two_regressors(d, a=_huge(make_regressor(), "raw_data"))


@case(ExitCode.BAD_INPUT, "a.onnx", "'W1'")
def referenced_weight_with_wrong_dims(d: Path) -> list[str]:
    model = make_mlp()
    model.graph.initializer[0].dims[:] = [2, HIDDEN + 1]
    return with_a(d, lambda p: save(model, p))


@case(ExitCode.VERIFY_FAILED, OUT, "non-finite")
def nan_weights(d: Path) -> list[str]:
    return two_regressors(d, a=make_regressor(weight=float("nan")))


@case(ExitCode.VERIFY_FAILED, OUT, "non-finite")
def inf_weights(d: Path) -> list[str]:
    return two_regressors(d, a=make_regressor(weight=float("inf")))


@case(ExitCode.VERIFY_FAILED, OUT, "non-finite")
def nan_in_both_models(d: Path) -> list[str]:
    nan = make_regressor(weight=float("nan"))
    return two_regressors(d, a=nan, b=nan)


@case(ExitCode.BAD_INPUT, "a.onnx", "no inputs")
def model_with_no_inputs(d: Path) -> list[str]:
    node = helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones((1, 1), np.float32)))
    graph = helper.make_graph([node], "const", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    return two_regressors(d, a=helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]))


def _two_input_model() -> onnx.ModelProto:
    return onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        two (float[N, 1] p, float[N, 1] q) => (float[N, 1] y) { y = Add(p, q) }
    """)


@case(ExitCode.INCOMPATIBLE, "a.onnx", "2 inputs", hint=True)
def unexpected_extra_input(d: Path) -> list[str]:
    return two_regressors(d, a=_two_input_model())


@case(ExitCode.INCOMPATIBLE, "a.onnx", "no input 'nope'", hint=True)
def wrong_input_name(d: Path) -> list[str]:
    doc = mapping_doc()
    doc["models"]["a"] = {"path": "a.onnx", "inputs": {"p": ["A"], "nope": ["B"]}}
    return two_regressors(d, a=_two_input_model(), doc=doc)


@case(ExitCode.INCOMPATIBLE, "a.onnx", "get no columns", hint=True)
def input_left_unfed(d: Path) -> list[str]:
    doc = mapping_doc()
    doc["models"]["a"] = {"path": "a.onnx", "inputs": {"p": ["A"]}}
    return two_regressors(d, a=_two_input_model(), doc=doc)


@case(ExitCode.INCOMPATIBLE, "map.toml", "takes 2 columns but 3", hint=True)
def width_mismatch(d: Path) -> list[str]:
    doc = mapping_doc()
    doc["models"]["a"]["columns"] = ["A", "B", "C"]
    return two_regressors(d, doc=doc)


@case(ExitCode.INCOMPATIBLE, "map.toml", "different shapes", hint=True)
def outputs_with_different_shapes(d: Path) -> list[str]:
    return two_regressors(d, a=make_regressor(out_dims=[3]), b=make_regressor(out_dims=[2, 2]))


@case(ExitCode.INCOMPATIBLE, "map.toml", "different shapes", hint=True)
def broadcast_trap_n1_vs_n2(d: Path) -> list[str]:
    return two_regressors(d, a=make_regressor(out_dims=[1]), b=make_regressor(out_dims=[2]))


@case(ExitCode.INCOMPATIBLE, "map.toml", "different classes", hint=True)
def classifiers_with_different_classes(d: Path) -> list[str]:
    doc = mapping_doc()
    doc["models"]["a"] |= {"task": "classification", "classes": [0, 1]}
    doc["models"]["b"] |= {"task": "classification", "classes": [1, 2]}
    return two_regressors(d, a=make_regressor(out_dims=[2]), b=make_regressor(out_dims=[2]), doc=doc)


@case(ExitCode.INCOMPATIBLE, "map.toml", "classifier", hint=True)
def classifier_with_regressor(d: Path) -> list[str]:
    doc = mapping_doc()
    doc["models"]["a"] |= {"task": "classification", "classes": [0, 1]}
    doc["models"]["b"] |= {"task": "regression"}
    return two_regressors(d, a=make_regressor(out_dims=[2]), b=make_regressor(out_dims=[2]), doc=doc)


@case(ExitCode.INCOMPATIBLE, "a.onnx", "no tensor output 'nope'", hint=True)
def unknown_output_name(d: Path) -> list[str]:
    doc = mapping_doc()
    doc["models"]["a"]["output"] = "nope"
    return two_regressors(d, doc=doc)


@case(ExitCode.BAD_INPUT, "a.onnx", "GiB", hint=True)
def model_file_over_2_gib(d: Path) -> list[str]:
    def sparse(p: Path) -> None:
        with open(p, "wb") as f:
            f.truncate(2**31 + 1)  # a sparse file: no real disk used, and it must not be read

    return with_a(d, sparse)


# ---------------------------------------------------------------------------- mapping files


def _mapping_text(name: str, text: str | bytes) -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        save(make_regressor(), d / "a.onnx")
        save(make_regressor(weight=-1.0), d / "b.onnx")
        path = d / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return merge_args(d, name)

    return build


def _mapping_case(name: str, code: ExitCode, file: str, problem: str, text: str | bytes, hint: bool = False) -> None:
    CASES.append(Case(name, _mapping_text(file, text), code, file, problem, hint))


GOOD_TOML = toml(mapping_doc())
GOOD_JSON = json.dumps(mapping_doc())
GOOD_YAML = "version: 1\ninput: {columns: [A, B, C, D]}\nmodels:\n  a: {path: a.onnx, columns: [A, B]}\n" \
            "  b: {path: b.onnx, columns: [C, D]}\n"

_mapping_case("toml_syntax_error", ExitCode.BAD_INPUT, "map.toml", "invalid TOML", GOOD_TOML.replace("]\n", "\n", 1))
_mapping_case("json_syntax_error", ExitCode.BAD_INPUT, "map.json", "invalid JSON", GOOD_JSON[:-1])
_mapping_case("yaml_syntax_error", ExitCode.BAD_INPUT, "map.yaml", "invalid YAML", GOOD_YAML + "  c: [unclosed\n")
_mapping_case("toml_with_bom", ExitCode.BAD_INPUT, "map.toml", "byte-order mark", b"\xef\xbb\xbf" + GOOD_TOML.encode(),
              hint=True)
_mapping_case("json_with_bom", ExitCode.BAD_INPUT, "map.json", "byte-order mark", b"\xef\xbb\xbf" + GOOD_JSON.encode(),
              hint=True)
_mapping_case("toml_invalid_utf8", ExitCode.BAD_INPUT, "map.toml", "not valid UTF-8",
              GOOD_TOML.replace('"A"', '"\udcff"', 1).encode("utf-8", "surrogateescape"), hint=True)
_mapping_case("yaml_invalid_utf8", ExitCode.BAD_INPUT, "map.yaml", "not valid UTF-8",
              GOOD_YAML.encode() + b"# \xc0\xaf\n", hint=True)
_mapping_case("json_utf16", ExitCode.BAD_INPUT, "map.json", "UTF-8", GOOD_JSON.encode("utf-16"))
_mapping_case("json_duplicate_key", ExitCode.BAD_INPUT, "map.json", "duplicate key 'models'",
              GOOD_JSON[:-1] + ', "models": {}}')
_mapping_case("yaml_duplicate_key", ExitCode.BAD_INPUT, "map.yaml", "duplicate key 'a'",
              GOOD_YAML + "  a: {path: b.onnx, columns: [C]}\n")
_mapping_case("json_nan", ExitCode.BAD_INPUT, "map.json", "NaN",
              GOOD_JSON.replace('"b.onnx"', '"b.onnx", "weight": NaN'))
_mapping_case("json_infinity", ExitCode.BAD_INPUT, "map.json", "Infinity",
              GOOD_JSON.replace('"b.onnx"', '"b.onnx", "weight": -Infinity'))
_mapping_case("yaml_nan", ExitCode.BAD_INPUT, "map.yaml", "finite number",
              GOOD_YAML.replace("b.onnx,", "b.onnx, weight: .nan,"))
_mapping_case("json_deep_nesting", ExitCode.BAD_INPUT, "map.json", "nested too deeply",
              '{"version": 1, "input": ' + "[" * 200_000 + "]" * 200_000 + "}")
_mapping_case("toml_deep_nesting", ExitCode.BAD_INPUT, "map.toml", "nested too deeply",
              "x = " + "[" * 50_000 + "]" * 50_000 + "\n")
_mapping_case("yaml_deep_nesting", ExitCode.BAD_INPUT, "map.yaml", "nested too deeply",
              "x: " + "[" * 50_000 + "]" * 50_000 + "\n")
_mapping_case("yaml_alias_expansion", ExitCode.BAD_INPUT, "map.yaml", "unknown key",
              "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
                  f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)))
_mapping_case("yaml_python_tag", ExitCode.BAD_INPUT, "map.yaml", "invalid YAML",
              "version: !!python/object/apply:os.system ['true']\n")
_mapping_case("top_level_is_a_list", ExitCode.BAD_INPUT, "map.json", "top level", "[1, 2]")
_mapping_case("unknown_mapping_format", ExitCode.BAD_INPUT, "map.ini", "unknown mapping format", GOOD_TOML, hint=True)
_mapping_case("empty_mapping_file", ExitCode.BAD_INPUT, "map.toml", "input", "")


def _doc_case(name: str, code: ExitCode, problem: str, edit: Callable[[dict[str, Any]], None], hint: bool = False,
              fmt: str = "toml") -> None:
    def build(d: Path) -> list[str]:
        doc = mapping_doc()
        edit(doc)
        return two_regressors(d, doc=doc, mapping=f"map.{fmt}")

    CASES.append(Case(name, build, code, f"map.{fmt}", problem, hint))


def _columns(model: str, columns: list[Any]) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["models"][model].update(columns=columns)


_doc_case("unknown_column", ExitCode.BAD_INPUT, "unknown column 'Z'", _columns("a", ["A", "Z"]), hint=True)
_doc_case("duplicate_column", ExitCode.BAD_INPUT, "repeated", _columns("a", ["A", 0]), hint=True)
_doc_case("out_of_range_column", ExitCode.BAD_INPUT, "index 4 is out of range", _columns("a", [0, 4]), hint=True)
_doc_case("negative_column", ExitCode.BAD_INPUT, "index -1 is out of range", _columns("b", [-1, 2]), hint=True,
          fmt="json")
_doc_case("float_column", ExitCode.BAD_INPUT, "not number 1.0", _columns("a", [1.0, 2]), fmt="json")
_doc_case("boolean_column", ExitCode.BAD_INPUT, "not boolean true", _columns("a", [True, 2]), fmt="yaml")
_doc_case("columns_not_a_list", ExitCode.BAD_INPUT, "non-empty list", _columns("a", "A"))
_doc_case("empty_columns", ExitCode.BAD_INPUT, "non-empty list", _columns("a", []))
_doc_case("unknown_key", ExitCode.BAD_INPUT, "models.a.colums: unknown key",
          lambda doc: doc["models"]["a"].update(colums=["A"]), hint=True)
_doc_case("input_columns_repeat", ExitCode.BAD_INPUT, "listed twice",
          lambda doc: doc["input"].update(columns=["A", "B", "A", "D"]), hint=True)
_doc_case("unsupported_version", ExitCode.BAD_INPUT, "unsupported version 2", lambda doc: doc.update(version=2),
          hint=True)
_doc_case("model_without_path", ExitCode.BAD_INPUT, "models.a.path: missing",
          lambda doc: doc["models"]["a"].pop("path"), hint=True)
_doc_case("path_is_a_number", ExitCode.BAD_INPUT, "models.a.path", lambda doc: doc["models"]["a"].update(path=7))
_doc_case("weighted_without_weights", ExitCode.BAD_INPUT, "no weight for a, b",
          lambda doc: doc["combiner"].update(kind="weighted"), hint=True)
_doc_case("negative_weight", ExitCode.BAD_INPUT, "models.b.weight", lambda doc: doc["models"]["b"].update(weight=-1))
_doc_case("unknown_combiner", ExitCode.BAD_INPUT, "unknown combiner 'median'",
          lambda doc: doc["combiner"].update(kind="median"), hint=True)
_doc_case("model_name_with_a_slash", ExitCode.BAD_INPUT, "graph prefix",
          lambda doc: doc["models"].update({"x/y": doc["models"].pop("a")}), hint=True)


@case(ExitCode.BAD_INPUT, "map.toml", "no such mapping file")
def missing_mapping(d: Path) -> list[str]:
    save(make_regressor(), d / "a.onnx")
    return merge_args(d)


@case(ExitCode.BAD_INPUT, "map.toml", "over 16777216 bytes")
def mapping_from_a_pipe_that_never_ends(d: Path) -> list[str]:
    """A pipe has no size to check first: reading must stop anyway (17 MB are offered here, for a test
    that fails rather than eats memory if the cap ever goes; /dev/zero is the case that matters)."""
    two_regressors(d)
    (d / "map.toml").unlink()
    os.mkfifo(d / "map.toml")
    threading.Thread(target=_feed_fifo, args=(d / "map.toml", b"# comment\n" * 1_700_000), daemon=True).start()
    return merge_args(d)


def _feed_fifo(path: Path, data: bytes) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds once the reader has opened it
        except OSError:
            time.sleep(0.005)
            continue
        os.set_blocking(fd, True)
        try:
            os.write(fd, data)
        except BrokenPipeError:  # the reader stopped early, as it should
            pass
        finally:
            os.close(fd)
        return


@case(ExitCode.BAD_INPUT, "rows.csv", "not a regular file")
def data_file_is_a_device(d: Path) -> list[str]:
    args = two_regressors(d)
    (d / "rows.csv").symlink_to("/dev/null")  # safe to test with; /dev/zero used to be read until memory ran out
    return [*args, "--data", str(d / "rows.csv")]


# ---------------------------------------------------------------------------- --data files (merge_cli/data.py)


def _with_data(d: Path, name: str, write: Callable[[Path], object], *extra: str) -> list[str]:
    args = two_regressors(d)
    write(d / name)
    return [*args, "--data", str(d / name), *extra]


def _npz(path: Path, members: dict[str, bytes]) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(f"{name}.npy", data)


def _npy(array: np.ndarray, shape: tuple[int, ...] | None = None) -> bytes:
    """The .npy bytes of `array`, with `shape` declared in its header instead of the real one."""
    import io

    header = np.lib.format.header_data_from_array_1_0(array) | ({"shape": shape} if shape else {})
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + array.tobytes()


@case(ExitCode.BAD_INPUT, "rows.csv", "not a regular file")
def data_file_is_procfs(d: Path) -> list[str]:
    """procfs files say they are regular (of size 0): /proc/self/pagemap would be read for terabytes."""
    return _with_data(d, "rows.csv", lambda p: p.symlink_to("/proc/self/pagemap"))


@case(ExitCode.BAD_INPUT, "rows.csv", "not a regular file")
def data_file_is_a_fifo(d: Path) -> list[str]:
    """No writer on the other end: opening it must not wait for one."""
    return _with_data(d, "rows.csv", lambda p: os.mkfifo(p))


@case(ExitCode.BAD_INPUT, "rows.npz", "declares shape [600000000, 4]")
def data_npz_declares_a_huge_array(d: Path) -> list[str]:
    rows = np.zeros((1000, 4))
    return _with_data(d, "rows.npz", lambda p: _npz(p, {"X": _npy(rows, (600_000_000, 4))}))


@case(ExitCode.BAD_INPUT, "rows.npz", "python objects")
def data_npz_object_array(d: Path) -> list[str]:
    rows = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=object)
    return _with_data(d, "rows.npz", lambda p: np.savez(p, X=rows))


@case(ExitCode.BAD_INPUT, "rows.npz", "python objects")
def data_npz_object_target(d: Path) -> list[str]:
    y = np.array([1.0, "a"], dtype=object)
    return _with_data(d, "rows.npz", lambda p: np.savez(p, X=np.ones((2, 4)), y=y))


@case(ExitCode.BAD_INPUT, "rows.npz", "is a .npy file", hint=True)
def data_npy_named_npz(d: Path) -> list[str]:
    return _with_data(d, "rows.npz", lambda p: p.write_bytes(_npy(np.ones((3, 4)))))


@case(ExitCode.BAD_INPUT, "rows.npz", "not a .npz archive", hint=True)
def data_npz_truncated(d: Path) -> list[str]:
    def write(p: Path) -> None:
        np.savez(p, X=np.ones((50, 4)))
        p.write_bytes(p.read_bytes()[:300])

    return _with_data(d, "rows.npz", write)


@case(ExitCode.BAD_INPUT, "rows.npz", "cannot read x")
def data_npz_corrupt_member(d: Path) -> list[str]:
    def write(p: Path) -> None:
        np.savez_compressed(p, X=np.arange(4000.0).reshape(1000, 4))
        data = bytearray(p.read_bytes())
        data[200:260] = b"\xff" * 60  # inside the deflated data: a zlib error or a bad CRC
        p.write_bytes(bytes(data))

    return _with_data(d, "rows.npz", write)


@case(ExitCode.BAD_INPUT, "rows.csv", "header line is longer than 16 MiB")
def data_csv_header_too_long(d: Path) -> list[str]:
    """One header line of 17 MiB: refused before it is parsed (a 300 MB one used to take 7 GB)."""
    return _with_data(d, "rows.csv", lambda p: p.write_bytes(b"A,B,C,D," + b"x" * (17 << 20) + b"\n1,2,3,4,5\n"))


@case(ExitCode.BAD_INPUT, "rows.csv", "field larger than field limit")
def data_csv_one_huge_cell(d: Path) -> list[str]:
    """A 20 MiB cell: never a 4-bytes-per-character text array of it per row and column."""
    return _with_data(d, "rows.csv", lambda p: p.write_bytes(b"A,B,C,D\n1,2,3,4\n1,2,3," + b"7" * (20 << 20) + b"x\n"))


@case(ExitCode.USAGE, "rows.csv", "2 non-input columns (id, target): pass --target", hint=True)
def data_with_two_candidate_targets(d: Path) -> list[str]:
    """An id beside the target: scoring is not silently skipped, the user says which is the target."""
    return _with_data(d, "rows.csv", lambda p: p.write_text("A,B,id,C,D,target\n1,2,7,3,4,0.5\n"))


@case(ExitCode.USAGE, "rows.csv", "--combiner stack needs a target column", hint=True)
def stack_from_the_command_line_on_rows_without_a_target(d: Path) -> list[str]:
    return _with_data(d, "rows.csv", lambda p: p.write_text("A,B,C,D\n1,2,3,4\n"), "--combiner", "stack")


@case(ExitCode.BAD_INPUT, "rows.parquet", "cannot read parquet")
def data_parquet_is_not_parquet(d: Path) -> list[str]:
    return _with_data(d, "rows.parquet", lambda p: p.write_bytes(b"A,B,C,D\n1,2,3,4\n"))


@case(ExitCode.BAD_INPUT, "map.toml", "directory")
def mapping_is_a_directory(d: Path) -> list[str]:
    (d / "map.toml").mkdir()
    return merge_args(d)


# ---------------------------------------------------------------------------- the output


@case(ExitCode.CANNOT_WRITE, "a.onnx/missing/merged.onnx", "not a directory")
def output_directory_missing_under_a_file(d: Path) -> list[str]:
    two_regressors(d)
    return merge_args(d, out="a.onnx/missing/merged.onnx")


@case(ExitCode.CANNOT_WRITE, "a.onnx/merged.onnx", "not a directory")
def output_directory_is_a_file(d: Path) -> list[str]:
    two_regressors(d)
    return merge_args(d, out="a.onnx/merged.onnx")


@case(ExitCode.CANNOT_WRITE, "out", "is a directory", hint=True)
def output_is_a_directory(d: Path) -> list[str]:
    two_regressors(d)
    (d / "out").mkdir()
    return merge_args(d, out="out")


@case(ExitCode.CANNOT_WRITE, "m" * 250 + ".onnx", "too long", hint=True)
def output_name_too_long_for_its_data_file(d: Path) -> list[str]:
    two_regressors(d)
    return merge_args(d, out="m" * 250 + ".onnx")


@case(ExitCode.CANNOT_WRITE, "a.onnx", "would overwrite the input", hint=True)
def output_equals_a_model(d: Path) -> list[str]:
    two_regressors(d)
    return merge_args(d, out="a.onnx")


@case(ExitCode.CANNOT_WRITE, "map.toml", "would overwrite the input", hint=True)
def output_equals_the_mapping(d: Path) -> list[str]:
    two_regressors(d)
    return merge_args(d, out="map.toml")


@case(ExitCode.CANNOT_WRITE, "sub/../a.onnx", "would overwrite the input", hint=True)
def output_equals_a_model_by_another_path(d: Path) -> list[str]:
    two_regressors(d)
    (d / "sub").mkdir()
    return merge_args(d, out="sub/../a.onnx")


@case(ExitCode.CANNOT_WRITE, "link.onnx", "would overwrite the input", hint=True)
def output_is_a_symlink_to_a_model(d: Path) -> list[str]:
    two_regressors(d)
    (d / "link.onnx").symlink_to("a.onnx")
    return merge_args(d, out="link.onnx")


@case(ExitCode.CANNOT_WRITE, "merged.onnx", "would overwrite the input", hint=True)
def output_data_file_is_an_input_data_file(d: Path) -> list[str]:
    args = with_a(d, lambda p: external_mlp(d, location="merged.onnx.data"))
    return [*args, "--external-data"]


@case(ExitCode.CANNOT_WRITE, "merged.onnx.data", "is a directory", hint=True)
def output_data_file_is_a_directory(d: Path) -> list[str]:
    args = two_regressors(d)
    (d / "merged.onnx.data").mkdir()
    return [*args, "--external-data"]


@case(ExitCode.VERIFY_FAILED, OUT, "non-finite")
def stale_data_file_beside_a_failed_output(d: Path) -> list[str]:
    args = two_regressors(d, a=make_regressor(weight=float("nan")))
    (d / "merged.onnx.data").write_bytes(b"stale weights from an earlier merge")
    (d / OUT).write_bytes(b"an earlier merged model")
    return [*args, "--external-data"]


# ---------------------------------------------------------------------------- external data


def _location(value: str, model: str = "a.onnx") -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        return with_a(d, lambda p: external_mlp(d, lambda m: set_external(
            m.graph.initializer[0], location=value, length=str(2 * HIDDEN * 4))))

    return build


CASES.append(Case("external_absolute_path", _location("/etc/hostname"), ExitCode.BAD_INPUT, "a.onnx", "is absolute",
                  hint=True))
CASES.append(Case("external_windows_absolute_path", _location("C:\\data\\a.bin"), ExitCode.BAD_INPUT, "a.onnx",
                  "is absolute", hint=True))
CASES.append(Case("external_dotdot", _location("../secret.bin"), ExitCode.BAD_INPUT, "a.onnx", "contains '..'",
                  hint=True))
CASES.append(Case("external_dotdot_inside", _location("sub/../../a.bin"), ExitCode.BAD_INPUT, "a.onnx",
                  "contains '..'", hint=True))
CASES.append(Case("external_backslash", _location(r"sub\a.bin"), ExitCode.BAD_INPUT, "a.onnx", "backslash",
                  hint=True))
CASES.append(Case("external_onnxruntime_memory_tag", _location("*/_ORT_MEM_ADDR_/*"), ExitCode.BAD_INPUT, "a.onnx",
                  "in-memory address", hint=True))
CASES.append(Case("external_empty_location", _location(""), ExitCode.BAD_INPUT, "a.onnx", "is empty", hint=True))
CASES.append(Case("external_location_is_the_folder", _location("."), ExitCode.BAD_INPUT, "a.onnx",
                  "not a regular file", hint=True))
CASES.append(Case("external_missing_file", _location("nowhere.bin"), ExitCode.BAD_INPUT, "a.onnx", "does not exist",
                  hint=True))


@case(ExitCode.BAD_INPUT, "a.onnx", "is absolute", hint=True)
def inline_weights_that_also_claim_an_external_location(d: Path) -> list[str]:
    """raw_data and an external location at once: onnxruntime would read the location, so it is vetted."""
    model = make_mlp()
    w1 = model.graph.initializer[0]
    entry = w1.external_data.add()
    entry.key, entry.value = "location", "/etc/hostname"
    w1.data_location = TensorProto.EXTERNAL
    return with_a(d, lambda p: save(model, p))


@case(ExitCode.BAD_INPUT, "a.onnx", "symbolic link", hint=True)
def external_data_file_is_a_symlink(d: Path) -> list[str]:
    def write(p: Path) -> None:
        external_mlp(d, location="real.bin")
        (d / "a.bin").symlink_to("real.bin")
        model = onnx.load(p, load_external_data=False)
        for t in model.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                t.external_data[0].value = "a.bin"
        save(model, p)

    return with_a(d, write)


@case(ExitCode.BAD_INPUT, "models/a.onnx", "symbolic link", hint=True)
def external_data_through_a_symlinked_directory(d: Path) -> list[str]:
    (d / "models").mkdir()
    (d / "elsewhere").mkdir()
    (d / "models" / "w").mkdir()
    external_mlp(d / "models", location="w/a.bin")
    (d / "models" / "w" / "a.bin").rename(d / "elsewhere" / "a.bin")
    (d / "models" / "w").rmdir()
    (d / "models" / "w").symlink_to(d / "elsewhere")
    save(make_regressor(weight=-1.0), d / "b.onnx")
    doc = mapping_doc()
    doc["models"]["a"]["path"] = "models/a.onnx"
    write_doc(d / "map.toml", doc)
    return merge_args(d)


@case(ExitCode.BAD_INPUT, "a.onnx", "hard link", hint=True)
def external_data_file_is_a_hard_link(d: Path) -> list[str]:
    def write(p: Path) -> None:
        external_mlp(d, location="a.bin")
        (d / "secret").mkdir()
        os.link(d / "a.bin", d / "secret" / "copy.bin")

    return with_a(d, write)


@case(ExitCode.BAD_INPUT, "a.onnx", "not a regular file", hint=True)
def external_data_file_is_a_fifo(d: Path) -> list[str]:
    def write(p: Path) -> None:
        external_mlp(d, location="a.bin")
        (d / "a.bin").unlink()
        os.mkfifo(d / "a.bin")  # opening it would block forever

    return with_a(d, write)


def _range(offset: str | None, length: str | None) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        entries = {"location": "a.bin"}
        if offset is not None:
            entries["offset"] = offset
        if length is not None:
            entries["length"] = length
        set_external(model.graph.initializer[0], **entries)

    return edit


def _range_case(name: str, offset: str | None, length: str | None, problem: str) -> None:
    CASES.append(Case(name, lambda d: with_a(d, lambda p: external_mlp(d, _range(offset, length))),
                      ExitCode.BAD_INPUT, "a.onnx", problem))


_range_case("external_offset_past_the_end", "1000000", "2400", "outside 'a.bin'")
_range_case("external_length_past_the_end", "0", "99999999", "outside 'a.bin'")
_range_case("external_negative_offset", "-8", "2400", "non-negative integers")
_range_case("external_length_not_a_number", "0", "lots", "non-negative integers")
_range_case("external_length_with_underscores", "0", "2_400", "non-negative integers")
_range_case("external_length_too_short_for_dims", "0", "16", "need 2400 bytes")
_range_case("external_huge_offset", str(2**62), "2400", "outside 'a.bin'")
_range_case("external_offset_too_long_for_int64", str(2**70), "2400", "non-negative integers")


def _sparse_values(location: str) -> onnx.SparseTensorProto:
    values = numpy_helper.from_array(np.ones(300, np.float32), "S_values")
    set_external(values, location=location, length="1200")
    indices = numpy_helper.from_array(np.arange(300, dtype=np.int64), "S_indices")
    return helper.make_sparse_tensor(values, indices, [2, 300])


@case(ExitCode.BAD_INPUT, "a.onnx", "is absolute", hint=True)
def external_sparse_initializer_absolute(d: Path) -> list[str]:
    def write(p: Path) -> None:
        model = make_regressor()
        model.graph.sparse_initializer.append(_sparse_values("/etc/hostname"))
        save(model, p)

    return with_a(d, write)


@case(ExitCode.BAD_INPUT, "a.onnx", "contains '..'", hint=True)
def external_sparse_constant_dotdot(d: Path) -> list[str]:
    def write(p: Path) -> None:
        model = make_regressor()
        node = helper.make_node("Constant", [], ["unused"], sparse_value=_sparse_values("../a.bin"))
        model.graph.node.insert(0, node)
        save(model, p)

    return with_a(d, write)


@case(ExitCode.BAD_INPUT, "a.onnx", "symbolic link", hint=True)
def external_data_in_a_subgraph_through_a_symlink(d: Path) -> list[str]:
    def write(p: Path) -> None:
        (d / "data.bin").write_bytes(np.ones(300, np.float32).tobytes())
        (d / "link.bin").symlink_to("data.bin")
        const = numpy_helper.from_array(np.ones((1, 300), np.float32), "C")
        set_external(const, location="link.bin", length="1200")
        branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=const)], "then",
                                   [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 300])])
        model = make_regressor()
        model.graph.node.append(helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch))
        model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
        save(model, p)

    return with_a(d, write)


# ---------------------------------------------------------------------------- the other commands read models the same way


@case(ExitCode.BAD_INPUT, "a.onnx", "not an ONNX model")
def inspect_random_bytes(d: Path) -> list[str]:
    (d / "a.onnx").write_bytes(np.random.default_rng(5).bytes(3000))
    return ["inspect", str(d / "a.onnx")]


@case(ExitCode.BAD_INPUT, "a.onnx", "symbolic link", hint=True)
def inspect_external_data_through_a_symlink(d: Path) -> list[str]:
    external_mlp(d, location="real.bin")
    (d / "a.bin").symlink_to("real.bin")
    model = onnx.load(d / "a.onnx", load_external_data=False)
    for t in model.graph.initializer:
        t.external_data[0].value = "a.bin"
    save(model, d / "a.onnx")
    return ["inspect", str(d / "a.onnx")]


@case(ExitCode.BAD_INPUT, "a.onnx", "nested too deeply")
def init_with_a_too_deep_model(d: Path) -> list[str]:
    (d / "a.onnx").write_bytes(nested_if_model(120))
    save(make_regressor(), d / "b.onnx")
    return ["init", str(d / "a.onnx"), str(d / "b.onnx"), "--out", str(d / "features.toml")]


@case(ExitCode.BAD_INPUT, "merged.onnx", "not an ONNX model")
def verify_a_truncated_merged_file(d: Path) -> list[str]:
    (d / "merged.onnx").write_bytes(make_mlp().SerializeToString()[:500])
    return ["verify", str(d / "merged.onnx")]


@case(ExitCode.BAD_INPUT, "merged.onnx", "no merge-models provenance", hint=True)
def verify_a_model_that_was_not_merged(d: Path) -> list[str]:
    save(make_regressor(), d / "merged.onnx")
    return ["verify", str(d / "merged.onnx")]


# ---------------------------------------------------------------------------- command line


def _usage_case(name: str, problem: str, *extra: str) -> None:
    CASES.append(Case(name, lambda d: [*two_regressors(d), *extra], ExitCode.USAGE, "", problem))


_usage_case("rows_zero", "--rows must be between 1 and", "--rows", "0")
_usage_case("weights_not_numbers", "--weights", "--weights", "0.5,x")
_usage_case("weights_count", "--weights has 1 value for 2 models", "--weights", "1")
_usage_case("unknown_combiner_option", "unknown combiner 'median'", "--combiner", "median")
_usage_case("unknown_option", "--frobnicate", "--frobnicate")


@case(ExitCode.USAGE, "map.toml", "1 MODEL argument but the mapping names 2 models (a, b)", hint=True)
def fewer_model_arguments_than_models(d: Path) -> list[str]:
    args = two_regressors(d)
    return [*args, str(d / "a.onnx")]


@case(ExitCode.USAGE, "map.toml", "3 MODEL arguments", hint=True)
def more_model_arguments_than_models(d: Path) -> list[str]:
    args = two_regressors(d)
    return [*args, str(d / "a.onnx"), str(d / "b.onnx"), str(d / "b.onnx")]


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for c in CASES:
        where = root / c.name
        where.mkdir(parents=True)
        args = c.build(where)
        print(f"{c.name}: merge-models {' '.join(args)}   # expect exit {int(c.code)}")
