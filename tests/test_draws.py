"""Verification rows per merged input: categories read from the models, so their branches are really taken."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from conftest import run_model

from merge_cli.draws import (
    NONE,
    Categories,
    column_categories,
    input_categories,
    table_rows,
    tensor_values,
)
from merge_cli.inputs import TableInput
from merge_cli.runtime import random_rows

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def categories_of(name: str) -> dict[str, Categories]:
    return input_categories(onnx.load(FIXTURES / f"{name}.onnx"))


def test_categories_come_from_the_encoders_each_input_reaches() -> None:
    onehot = categories_of("shop_onehot_str")
    assert onehot["color"].strings == {"black", "blue", "green", "red"}
    assert onehot["price"] == NONE and onehot["weight"] == NONE
    assert categories_of("shop_onehot_int")["size"].ints == {1, 2, 3, 4, 5}
    # a [N, 2] input split by ArrayFeatureExtractor into two LabelEncoders: both key sets
    assert categories_of("shop_ordinal_str")["labels"].strings == {"Lima", "Oslo", "Paris", "black", "blue", "green",
                                                                   "red"}
    assert categories_of("digits_tokens")["tokens"].index_bound == 17  # Gather into a [17, 8] embedding
    assert categories_of("digits_cnn")["image"] == NONE


def test_string_columns_take_every_known_category_and_one_unknown() -> None:
    table = TableInput("labels", ("color", "city"), "string")
    found = categories_of("shop_onehot_str")["color"]
    per_column = column_categories([(found, [0])], 2)
    rows = table_rows(256, table, per_column)
    assert rows.shape == (256, 2) and rows.dtype == object
    assert set(rows[:, 0]) == found.strings | {"<unknown>"}
    assert len(set(rows[:, 1])) > 1  # no categories known: still not one constant


def test_a_string_model_really_takes_its_branches_on_drawn_rows() -> None:
    table = TableInput("labels", ("color",), "string")
    colors = table_rows(256, table, [categories_of("shop_onehot_str")["color"]])
    fixed = np.ones((256, 1), np.float32)
    out = run_model(FIXTURES / "shop_onehot_str.onnx", {"color": colors, "price": fixed, "weight": fixed})
    probabilities = {round(row[1], 6) for row in out["output_probability"]}
    assert len(probabilities) == 5  # one per known color and one for the unknown: each one-hot branch taken


def test_int_columns_take_the_known_codes_and_one_more() -> None:
    found = categories_of("shop_onehot_int")["size"]
    rows = table_rows(200, TableInput("codes", ("size",), "int64"), [found])
    assert rows.dtype == np.int64
    assert set(rows[:, 0].tolist()) == {1, 2, 3, 4, 5, 6}


def test_an_encoder_that_refuses_unknown_values_is_never_given_one() -> None:
    strict = Categories(strings=frozenset({"a", "b"}), refuses_unknown=True)
    rows = table_rows(100, TableInput("t", ("c",), "string"), [strict])
    assert set(rows[:, 0]) == {"a", "b"}


def test_token_ids_stay_inside_the_embedding_and_the_model_runs() -> None:
    found = categories_of("digits_tokens")["tokens"]
    tokens = tensor_values(64, "int64", ["batch", 16], found)
    assert tokens.shape == (64, 16) and tokens.dtype == np.int64
    assert tokens.min() >= 0 and tokens.max() == 16
    session = ort.InferenceSession(str(FIXTURES / "digits_tokens.onnx"), providers=["CPUExecutionProvider"])
    assert np.isfinite(session.run(None, {"tokens": tokens})[0]).all()


def test_image_tensors_are_mixed_scale_numbers_of_the_shape() -> None:
    image = tensor_values(8, "float32", ["N", 1, 8, 8], NONE)
    assert image.shape == (8, 1, 8, 8) and image.dtype == np.float32
    assert len(np.unique(image)) == image.size


def test_float_tables_are_drawn_as_verification_always_drew_them() -> None:
    table = TableInput("features", ("A", "B", "C"), "float64")
    np.testing.assert_array_equal(table_rows(50, table, [NONE] * 3), random_rows(50, 3, "float64"))
