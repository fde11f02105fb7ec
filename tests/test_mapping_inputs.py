"""`[inputs.<name>]` mappings: typed tables and whole tensors, and the bindings of model inputs to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from merge_cli.errors import ExitCode, MergeError
from merge_cli.inputs import TableInput, TensorInput
from merge_cli.mapping import Route, canonical, parse_mapping

SOURCE = Path("/tmp/m.toml")


def good() -> dict[str, Any]:
    return {
        "version": 1,
        "inputs": {
            "numbers": {"columns": ["price", "weight"], "dtype": "float32"},
            "labels": {"columns": ["color", "city"], "dtype": "string"},
            "codes": {"columns": ["size"], "dtype": "int64"},
            "image": {"dtype": "float32", "shape": ["N", 1, 8, 8]},
        },
        "models": {
            "pipe": {"path": "p.onnx", "inputs": {"color": ["color"], "price": ["price"], "size": "codes"}},
            "cnn": {"path": "c.onnx", "input": "image"},
            "fusion": {"path": "f.onnx", "inputs": {"image": "image", "meta": ["weight", "size"]}},
            "ordinal": {"path": "o.onnx", "columns": ["city", "color"]},
        },
    }


def test_inputs_are_typed_tables_and_tensors_in_file_order() -> None:
    mapping = parse_mapping(good(), SOURCE)
    assert mapping.inputs.items == (
        TableInput("numbers", ("price", "weight"), "float32"),
        TableInput("labels", ("color", "city"), "string"),
        TableInput("codes", ("size",), "int64"),
        TensorInput("image", "float32", ("N", 1, 8, 8)),
    )
    assert mapping.inputs.columns == ("price", "weight", "color", "city", "size")  # numbered across tables


def test_bindings_are_columns_across_tables_or_whole_inputs() -> None:
    mapping = parse_mapping(good(), SOURCE)
    assert mapping.model("pipe").routes == (Route("color", (2,)), Route("price", (0,)), Route("size", (4,)))
    assert mapping.model("cnn").routes == (Route(None, (), whole="image"),)
    # a numeric model input may take columns of numeric tables of different dtypes (cast to its type)
    assert mapping.model("fusion").routes == (Route("image", (), whole="image"), Route("meta", (1, 4)))
    assert mapping.model("ordinal").routes == (Route(None, (3, 2)),)


def test_canonical_form_round_trips_through_the_mapping_schema() -> None:
    mapping = parse_mapping(good(), SOURCE)
    doc = canonical(mapping, SOURCE.parent)
    assert doc["inputs"]["image"] == {"dtype": "float32", "shape": ["N", 1, 8, 8]}
    assert doc["models"]["cnn"]["inputs"] == [{"input": None, "whole": "image"}]
    assert doc["models"]["pipe"]["inputs"][0] == {"input": "color", "columns": ["color"]}


def test_a_one_table_input_mapping_is_the_one_table_of_inputs() -> None:
    doc = {"input": {"columns": ["A", "B"]}, "models": {"a": {"path": "a.onnx", "columns": ["B"]}}}
    mapping = parse_mapping(doc, SOURCE)
    assert mapping.input == TableInput("features", ("A", "B"), "float32")
    assert mapping.inputs.items == (mapping.input,)
    assert "input" in canonical(mapping, SOURCE.parent)  # merged files record [input] mappings as before


def _change(path: str, value: Any) -> Any:
    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            doc = doc[key]
        if value is None:
            del doc[last]
        else:
            doc[last] = value
    return apply


# (id, change, fragments of the error line, fragment of the hint)
RULES = [
    ("unknown-merged-input", _change("models.cnn.input", "imag"), ["models.cnn.input", "unknown merged input 'imag'"],
     "numbers, labels, codes, image"),
    ("unknown-merged-input-in-inputs", _change("models.fusion.inputs.image", "picture"),
     ["models.fusion.inputs.image", "unknown merged input 'picture'"], "image"),
    ("column-in-two-tables", _change("inputs.codes.columns", ["size", "price"]),
     ["inputs.codes.columns[1]", "'price' is also in inputs.numbers"], "unique across all"),
    ("string-and-number-columns", _change("models.ordinal.columns", ["city", "price"]),
     ["models.ordinal.columns[1]", "'price' is float32 but 'city' is string"], "separate inputs"),
    ("unknown-dtype", _change("inputs.codes.dtype", "int8"), ["inputs.codes.dtype", "'int8'"], "string"),
    ("tensor-with-columns-key-typo", _change("inputs.image.colums", ["x"]), ["inputs.image.colums: unknown key"],
     "dtype and shape"),
    ("table-with-shape", _change("inputs.codes.shape", ["N", 1]), ["inputs.codes.shape: unknown key"], "columns"),
    ("bad-shape", _change("inputs.image.shape", ["N", 0, 8, 8]), ["inputs.image.shape[1]", "positive size"], None),
    ("input-and-inputs", _change("input", {"columns": ["A"]}), ["input", "not both"], "[inputs.features]"),
    ("input-and-columns", _change("models.cnn.columns", ["price"]), ["models.cnn", "exactly one of columns, input"],
     None),
    ("unbound-tensor-without-shape", _change("inputs.image.shape", None),
     ["inputs.image", "no model is bound"], None),
    ("string-passthrough", _change("combiner", {"kind": "stack", "data": "d.csv", "target": "y",
                                                "passthrough": ["price", "color"]}),
     ["combiner.passthrough", "'color' is a string column"], "numeric columns only"),
]


@pytest.mark.parametrize("case", RULES, ids=[r[0] for r in RULES])
def test_inputs_rule(case: tuple[Any, ...]) -> None:
    name, change, fragments, hint = case
    doc = good()
    if name == "unbound-tensor-without-shape":
        doc["models"]["cnn"]["input"] = "numbers"
        doc["models"]["fusion"]["inputs"]["image"] = ["price"]
    change(doc)
    with pytest.raises(MergeError) as caught:
        parse_mapping(doc, SOURCE)
    error = caught.value
    assert error.code == ExitCode.BAD_INPUT
    for fragment in fragments:
        assert fragment in error.message, (fragment, error.message)
    if hint is not None:
        assert error.hint is not None and hint in error.hint, (hint, error.hint)
