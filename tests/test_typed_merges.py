"""Models that do not read one float table merge through the real CLI from their `[inputs.*]` mapping:
string and int64 categories, whole image and token-id tensors, an image + tabular model.

Every expected number comes from running the ORIGINAL files separately in onnxruntime on the
datasets' rows (make_fixtures.typed_data) and combining them here in numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from conftest import run_model, write_mapping
from make_fixtures import TYPED, TYPED_INPUTS, typed_data, typed_feed

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOL = 1e-5


def typed_mapping(names: list[str], combiner: str = "mean") -> dict[str, Any]:
    """The `[inputs.*]` mapping of these fixtures: their dataset's inputs that they read, each bound as TYPED says."""
    dataset = TYPED[names[0]].dataset
    used = {s if isinstance(s, str) else table for n in names for _, s in TYPED[n].inputs
            for table, (_, columns) in TYPED_INPUTS[dataset].items() if s == table or (columns and s[0] in columns)}
    inputs = {name: ({"columns": list(columns), "dtype": dtype} if columns else {"dtype": dtype})
              for name, (dtype, columns) in TYPED_INPUTS[dataset].items() if name in used}
    models: dict[str, Any] = {}
    for name in names:
        fixture = TYPED[name]
        binding = {k: s if isinstance(s, str) else list(s) for k, s in fixture.inputs}
        if len(binding) > 1:
            entry: dict[str, Any] = {"inputs": binding}
        else:
            (value,) = binding.values()
            entry = {"input": value} if isinstance(value, str) else {"columns": value}
        models[name] = {"path": str(FIXTURES / f"{name}.onnx"), **entry, **dict(fixture.mapping)}
    return {"version": 1, "inputs": inputs, "models": models, "combiner": {"kind": combiner}}


def probabilities(name: str) -> np.ndarray:
    """The original file's class probabilities on every row of its dataset, [N, K] in its classes' order."""
    session = ort.InferenceSession(str(FIXTURES / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, typed_feed(name))
    for value in outputs:
        if isinstance(value, list):  # ZipMap
            return np.array([[row[c] for c in TYPED[name].classes] for row in value], dtype=np.float32)
    return next(np.asarray(v) for v in outputs if np.asarray(v).ndim == 2)


def merged_feed(dataset: str, out: Path) -> dict[str, np.ndarray]:
    inputs, _ = typed_data(dataset)
    names = [i.name for i in ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_inputs()]
    return {n: inputs[n] for n in names}


def expected(names: list[str], combiner: str) -> tuple[np.ndarray, np.ndarray]:
    """What the combiner computes from the originals' probabilities: (probabilities, label)."""
    ps = [probabilities(n).astype(np.float64) for n in names]
    classes = np.array(TYPED[names[0]].classes)
    if combiner == "mean":
        p = sum(ps) / len(ps)
        return p, classes[np.argmax(p, axis=1)]
    k = ps[0].shape[1]
    share = sum((np.argmax(p, axis=1)[:, None] == np.arange(k)).astype(np.float64) for p in ps) / len(ps)
    tie_break = np.where(share >= share.max(axis=1, keepdims=True) - 1e-6, sum(ps), -np.inf)
    return share, classes[np.argmax(tie_break, axis=1)]


CASES = [
    ("string one-hot + numeric", ["shop_onehot_str", "shop_lr"]),
    ("int64 one-hot + string ordinal", ["shop_onehot_int", "shop_ordinal_str"]),
    ("two CNNs on one image", ["digits_cnn", "digits_cnn_dynamo"]),
    ("image + tabular model, tabular model", ["digits_fusion", "digits_stats_lr"]),
    ("token ids + CNN", ["digits_tokens", "digits_cnn"]),
]


@pytest.mark.parametrize("combiner", ["mean", "vote"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_typed_inputs_merge_and_equal_the_originals(cli, tmp_path: Path, case: Any, combiner: str) -> None:
    _, names = case
    mapping = write_mapping(tmp_path / "m.toml", typed_mapping(names, combiner))
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--json")
    assert result.code == 0, result.stderr
    doc = result.json
    assert doc["verification"]["passed"] and doc["verification"]["max_abs_error"] <= TOL
    assert doc["verification"]["tolerance_from"] is None and doc["verification"]["atol"] == TOL  # float32 parts
    assert [i["name"] for i in doc["inputs"]] == list(typed_mapping(names)["inputs"])
    got = run_model(out, merged_feed(TYPED[names[0]].dataset, out))
    want_p, want_label = expected(names, combiner)
    np.testing.assert_allclose(got["probabilities"], want_p, atol=TOL, rtol=0)
    np.testing.assert_array_equal(got["label"], want_label)


def test_json_lists_each_merged_input_with_dtype_shape_and_columns(cli, tmp_path: Path) -> None:
    mapping = write_mapping(tmp_path / "m.toml", typed_mapping(["digits_fusion", "digits_cnn"]))
    result = cli("merge", "--map", mapping, "--out", tmp_path / "merged.onnx", "--json")
    assert result.code == 0, result.stderr
    image, stats = result.json["inputs"]
    assert image == {"name": "image", "dtype": "float32", "shape": ["N", 1, 8, 8], "columns": None}
    assert stats["dtype"] == "float32" and stats["columns"] == list(TYPED_INPUTS["digits"]["stats"][1])
    fusion = next(m for m in result.json["models"] if m["name"] == "digits_fusion")
    assert fusion["tensors"] == ["image"] and fusion["columns"] == ["ink", "top", "left"]


def test_verification_draws_the_categories_the_models_carry(cli, tmp_path: Path, monkeypatch) -> None:
    import merge_cli.draws

    drawn: list[np.ndarray] = []
    real = merge_cli.draws.typed_rows
    monkeypatch.setattr(merge_cli.draws, "typed_rows", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    mapping = write_mapping(tmp_path / "m.toml", typed_mapping(["shop_ordinal_str", "shop_onehot_int"]))
    assert cli("merge", "--map", mapping, "--out", tmp_path / "merged.onnx").code == 0
    (rows,) = drawn
    colors, cities = set(rows["labels"][:, 0]), set(rows["labels"][:, 1])
    known = {"black", "blue", "green", "red", "Lima", "Oslo", "Paris"}  # both LabelEncoders read both columns
    assert colors >= known and cities >= known and len(colors - known) == 1  # and one value neither knows
    assert set(rows["codes"][:, 0].tolist()) == {1, 2, 3, 4, 5, 6}  # the int one-hot's codes and one more


def _bad(doc: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


# (id, fixtures, change to their mapping, exit code, fragments of the error line, fragment of the hint)
BAD = [
    ("unknown merged input", ["digits_cnn", "digits_cnn_dynamo"], (["models", "digits_cnn", "input"], "picture"), 3,
     ["models.digits_cnn.input", "unknown merged input 'picture'"], "image"),
    ("string column into a float input", ["shop_onehot_str", "shop_lr"],
     (["models", "shop_lr", "columns"], ["price", "color"]), 3, ["models.shop_lr.columns[1]", "'color' is string"],
     "separate inputs"),
    ("string column alone into a float input", ["shop_onehot_str", "shop_lr"],
     (["models", "shop_onehot_str", "inputs", "price"], ["city"]), 4,
     ["models.shop_onehot_str.inputs.price", "string column 'city' cannot feed float input 'price'"], "numeric"),
    ("image into a columns input", ["digits_cnn", "digits_fusion"],
     (["models", "digits_cnn"], {"path": str(FIXTURES / "digits_cnn.onnx"), "columns": ["ink"],
                                 "classes": list(range(10))}), 4,
     ["models.digits_cnn.columns", "[batch, 1, 8, 8]"], "input = "),
    ("tensor into a table model", ["digits_cnn", "digits_stats_lr"],
     (["models", "digits_stats_lr"], {"path": str(FIXTURES / "digits_stats_lr.onnx"), "input": "image"}), 4,
     ["models.digits_stats_lr.input", "[?, 6]", "[N, 1, 8, 8]"], "same shape"),
    ("mismatched image shapes", ["digits_cnn", "digits_cnn_dynamo"], (["inputs", "image", "shape"], ["N", 3, 8, 8]),
     4, ["models.digits_cnn.input", "[batch, 1, 8, 8]", "[N, 3, 8, 8]", "inputs.image.shape"], "same shape"),
    ("a column in two tables", ["shop_onehot_str", "shop_lr"],
     (["inputs", "labels", "columns"], ["color", "price"]), 3, ["inputs.labels.columns[1]", "also in inputs.numbers"],
     "unique"),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_bindings_are_one_error_line_naming_the_key(cli, tmp_path: Path, case: Any) -> None:
    _, names, (path, value), code, fragments, hint = case
    mapping = write_mapping(tmp_path / "m.toml", _bad(typed_mapping(names), path, value))
    result = cli("merge", "--map", mapping, "--out", tmp_path / "merged.onnx")
    assert result.code == code, result.stderr
    (line,) = result.error_lines
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert "hint: " in result.stderr and hint in result.stderr.split("hint: ", 1)[1]
    assert "Traceback" not in result.stderr and not (tmp_path / "merged.onnx").exists()


def test_verify_rechecks_a_typed_merge_from_its_provenance(cli, tmp_path: Path) -> None:
    mapping = write_mapping(tmp_path / "m.toml", typed_mapping(["digits_fusion", "digits_tokens", "digits_cnn"]))
    out = tmp_path / "merged.onnx"
    assert cli("merge", "--map", mapping, "--out", out).code == 0
    result = cli("verify", out, "--source", FIXTURES, "--json")  # the sources are not beside the merged file
    assert result.code == 0, result.stderr
    assert result.json["verification"]["passed"] and result.json["verification"]["max_abs_error"] <= TOL


def test_stack_passthrough_on_typed_inputs_is_refused_with_a_hint(cli, tmp_path: Path) -> None:
    doc = typed_mapping(["shop_onehot_str", "shop_lr"])
    doc["combiner"] = {"kind": "stack", "data": "rows.csv", "target": "y", "passthrough": ["price"]}
    result = cli("merge", "--map", write_mapping(tmp_path / "s.toml", doc), "--out", tmp_path / "merged.onnx")
    assert result.code == 4 and "combiner.passthrough" in result.error_lines[0] and "hint: drop passthrough" in result.stderr


def test_stack_learns_from_typed_rows(cli, tmp_path: Path) -> None:
    digits, labels = typed_data("digits")
    np.savez(tmp_path / "rows.npz", image=digits["image"][1200:1400], stats=digits["stats"][1200:1400],
             y=labels[1200:1400])
    doc = typed_mapping(["digits_fusion", "digits_stats_lr"])
    doc["combiner"] = {"kind": "stack", "data": "rows.npz", "target": "y", "folds": 3}
    result = cli("merge", "--map", write_mapping(tmp_path / "m.toml", doc), "--out", tmp_path / "merged.onnx", "--json")
    assert result.code == 0, result.stderr
    assert result.json["verification"]["passed"] and result.json["verification"]["max_abs_error"] <= TOL
    assert result.json["stack"]["rows"] == 200


INIT_PAIRS = [(a, b) for _, (a, b) in CASES] + [("shop_ordinal_str", "digits_tokens")]


@pytest.mark.parametrize("pair", INIT_PAIRS, ids=["+".join(p) for p in INIT_PAIRS])
def test_init_writes_an_inputs_mapping_that_merges_as_written(cli, tmp_path: Path, pair: tuple[str, str]) -> None:
    mapping = tmp_path / "m.toml"
    made = cli("init", *(FIXTURES / f"{n}.onnx" for n in pair), "--out", mapping, "--json")
    assert made.code == 0, made.stderr
    assert "[inputs." in mapping.read_text() and "[input]" not in mapping.read_text()
    result = cli("merge", "--map", mapping, "--out", tmp_path / "merged.onnx", "--json")
    assert result.code == 0, result.stderr
    assert result.json["verification"]["passed"] and result.json["verification"]["max_abs_error"] <= TOL
    declared = {i["name"]: i for i in made.json["inputs"]}
    assert [i["name"] for i in result.json["inputs"]] == list(declared)
    if pair == ("digits_cnn", "digits_cnn_dynamo"):  # one image input, shared
        assert declared == {"image": {"name": "image", "dtype": "float32", "columns": None, "shape": ["N", 1, 8, 8]}}


def test_inspect_says_how_each_input_can_be_bound(cli) -> None:
    fusion = cli("inspect", FIXTURES / "digits_fusion.onnx", "--json").json["inputs"]
    assert [i["binding"] for i in fusion] == ["whole: a float32 tensor [inputs.*]", "3 columns of a float32 table"]
    pipeline = cli("inspect", FIXTURES / "shop_onehot_int.onnx", "--json").json["inputs"]
    assert pipeline[0]["binding"] == "1 column of an int64 table"
    tokens = cli("inspect", FIXTURES / "digits_tokens.onnx")
    assert "whole: an int64 tensor" in tokens.stdout


def test_data_rows_verify_and_score_typed_merges(cli, tmp_path: Path) -> None:
    """--data: a CSV whose string columns are read as text, and an .npz with one array per merged input."""
    import csv

    inputs, y = typed_data("shop")
    rows = tmp_path / "shop.csv"
    with open(rows, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["price", "weight", "color", "city", "size", "y"])
        writer.writerows([*inputs["numbers"][i], *inputs["labels"][i], *inputs["codes"][i], y[i]] for i in range(60))
    mapping = write_mapping(tmp_path / "m.toml", typed_mapping(["shop_onehot_str", "shop_ordinal_str", "shop_onehot_int"]))
    result = cli("merge", "--map", mapping, "--out", tmp_path / "shop.onnx", "--data", rows, "--json")
    assert result.code == 0, result.stderr
    assert result.json["verification"]["rows"] == 256 + 60 and result.json["verification"]["max_abs_error"] <= TOL
    merged = next(m for m in result.json["scores"]["models"] if m["model"] == "merged")
    want_p, want_label = expected(["shop_onehot_str", "shop_ordinal_str", "shop_onehot_int"], "mean")
    assert merged["rows"] == 60 and merged["accuracy"] == pytest.approx(np.mean(want_label[:60] == y[:60]))

    digits, labels = typed_data("digits")
    npz = tmp_path / "digits.npz"
    np.savez(npz, image=digits["image"][:50], stats=digits["stats"][:50], y=labels[:50])
    mapping = write_mapping(tmp_path / "d.toml", typed_mapping(["digits_fusion", "digits_cnn"], "vote"))
    result = cli("merge", "--map", mapping, "--out", tmp_path / "digits.onnx", "--data", npz, "--json")
    assert result.code == 0, result.stderr
    merged = next(m for m in result.json["scores"]["models"] if m["model"] == "merged")
    _, want_label = expected(["digits_fusion", "digits_cnn"], "vote")
    assert merged["accuracy"] == pytest.approx(np.mean(want_label[:50] == labels[:50]))


OPEN_SIZES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,H,W] image) => (float[N,3] y)
{
  y = ReduceMean <axes = [2, 3], keepdims = 0> (image)
}
"""


def test_a_tensor_with_open_sizes_needs_its_shape_in_the_mapping(cli, tmp_path: Path) -> None:
    from conftest import save_text_model

    model = save_text_model(tmp_path / "pool.onnx", OPEN_SIZES)
    mapping = tmp_path / "m.toml"
    assert cli("init", model, "--out", mapping).code == 0
    assert "give them in shape" in mapping.read_text()
    result = cli("merge", "--map", mapping, "--out", tmp_path / "merged.onnx")
    assert result.code == 4 and "inputs.image: verification needs its sizes" in result.error_lines[0]
    assert 'hint: give them: shape = ["N", ...]' in result.stderr
    mapping.write_text(mapping.read_text().replace('shape = ["N", 3, "H", "W"]', 'shape = ["N", 3, 5, 7]'))
    result = cli("merge", "--map", mapping, "--out", tmp_path / "merged.onnx", "--json")
    assert result.code == 0, result.stderr
    assert result.json["inputs"][0]["shape"] == ["N", 3, 5, 7]
    image = np.random.default_rng(0).standard_normal((4, 3, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(run_model(tmp_path / "merged.onnx", {"image": image})["prediction"],
                               image.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_gate_on_typed_inputs_drops_models_with_empty_strings_or_nan(cli, tmp_path: Path) -> None:
    """gate: an empty string or NaN in a model's columns leaves it out of that row; tensors are always present."""
    mapping = write_mapping(tmp_path / "m.toml", typed_mapping(["shop_onehot_str", "shop_lr"], "gate"))
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--json")
    assert result.code == 0, result.stderr
    assert result.json["verification"]["passed"] and result.json["verification"]["max_abs_error"] <= TOL
    inputs, _ = typed_data("shop")
    labels, numbers = inputs["labels"][:30].copy(), inputs["numbers"][:30].copy()
    labels[:10, 0] = ""  # no color: only shop_lr can serve these rows
    numbers[10:20, 0] = np.nan  # no price: neither model can
    got = run_model(out, {"numbers": numbers, "labels": labels})
    onehot, lr = probabilities("shop_onehot_str")[:30], probabilities("shop_lr")[:30]
    np.testing.assert_allclose(got["probabilities"][:10], lr[:10], atol=TOL, rtol=0)
    assert np.isnan(got["probabilities"][10:20]).all() and (got["label"][10:20] == -1).all()
    np.testing.assert_allclose(got["probabilities"][20:], (onehot[20:] + lr[20:]) / 2, atol=TOL, rtol=0)

    mapping = write_mapping(tmp_path / "d.toml", typed_mapping(["digits_fusion", "digits_cnn"], "gate"))
    assert cli("merge", "--map", mapping, "--out", out).code == 0
    digits, _ = typed_data("digits")
    stats = digits["stats"][:20].copy()
    stats[:10, 0] = np.nan  # no ink: the fusion model is out, the CNN (image only) always serves
    got = run_model(out, {"image": digits["image"][:20], "stats": stats})
    fusion, cnn = probabilities("digits_fusion")[:20], probabilities("digits_cnn")[:20]
    np.testing.assert_allclose(got["probabilities"][:10], cnn[:10], atol=TOL, rtol=0)
    np.testing.assert_allclose(got["probabilities"][10:], (fusion[10:] + cnn[10:]) / 2, atol=TOL, rtol=0)


WEIGHTS = {0: 3.0, 1: 1.0}  # the first model's vote counts three times the second's


def combined(names: list[str], combiner: str) -> dict[str, np.ndarray]:
    """What weighted, sum, max, min and concat compute from the originals' probabilities, in numpy."""
    ps = [probabilities(n).astype(np.float64) for n in names]
    if combiner == "concat":
        return {"prediction": np.concatenate(ps, axis=1)}
    if combiner == "weighted":
        p = sum(WEIGHTS[i] * q for i, q in enumerate(ps)) / sum(WEIGHTS.values())
    else:
        p = {"sum": sum(ps), "max": np.maximum.reduce(ps), "min": np.minimum.reduce(ps)}[combiner]
        total = p.sum(axis=1, keepdims=True)  # renormalised to rows of probabilities; a row of zeros is uniform
        p = np.where(total > 0, p / np.where(total > 0, total, 1), 1 / p.shape[1])
    return {"probabilities": p, "label": np.array(TYPED[names[0]].classes)[np.argmax(p, axis=1)]}


MORE_CASES = [CASES[0], CASES[3]]  # a string one-hot + numeric pair; an image + tabular model and a tabular one


@pytest.mark.parametrize("combiner", ["weighted", "sum", "max", "min", "concat"])
@pytest.mark.parametrize("case", MORE_CASES, ids=[c[0] for c in MORE_CASES])
def test_other_combiners_on_typed_inputs_equal_the_originals(cli, tmp_path: Path, case: Any, combiner: str) -> None:
    _, names = case
    doc = typed_mapping(names, combiner)
    if combiner == "weighted":
        for i, name in enumerate(names):
            doc["models"][name]["weight"] = WEIGHTS[i]
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", write_mapping(tmp_path / "m.toml", doc), "--out", out, "--json")
    assert result.code == 0, result.stderr
    assert result.json["verification"]["passed"] and result.json["verification"]["max_abs_error"] <= TOL
    got = run_model(out, merged_feed(TYPED[names[0]].dataset, out))
    want = combined(names, combiner)
    assert set(got) == set(want)
    for name, value in want.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[name], value, atol=TOL, rtol=0)
        else:
            np.testing.assert_array_equal(got[name], value)


def half_precision(source: Path, out: Path) -> Path:
    """`source` computing in float16: its float initializers and constants as float16, a Cast after each input,
    float16 outputs (a hand conversion, as onnxconverter-common's would be)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(source)
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            half = numpy_helper.to_array(init).astype(np.float16)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(half, init.name))
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
    for port in graph.input:
        for node in graph.node:
            node.input[:] = [f"{port.name}_fp16" if x == port.name else x for x in node.input]
        graph.node.insert(0, helper.make_node("Cast", [port.name], [f"{port.name}_fp16"], to=TensorProto.FLOAT16))
    for port in graph.output:
        port.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model)
    onnx.save(model, out)
    return out


FP16_FLOOR = 4 * 2.0 ** -10  # 4 ulps of float16 at 1, the scale of probabilities


def fp16_mapping(tmp_path: Path) -> Path:
    doc = typed_mapping(["digits_cnn", "digits_cnn_dynamo"])
    doc["models"]["digits_cnn"]["path"] = str(half_precision(FIXTURES / "digits_cnn.onnx", tmp_path / "cnn16.onnx"))
    return write_mapping(tmp_path / "m.toml", doc)


def test_a_float16_part_is_verified_at_float16_precision(cli, tmp_path: Path) -> None:
    """fp16 CNN + fp32 CNN: the merge is right, but the float16 part's kernels differ in the merged graph by
    more than 1e-5; the default tolerances rise to a few float16 ulps and the report says why."""
    mapping, out = fp16_mapping(tmp_path), tmp_path / "merged.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--json")
    assert result.code == 0, result.stderr
    v = result.json["verification"]
    assert v["passed"] and v["atol"] == v["rtol"] == FP16_FLOOR and v["max_abs_error"] <= FP16_FLOOR
    assert "digits_cnn computes in float16" in v["tolerance_from"]
    half = ort.InferenceSession(str(tmp_path / "cnn16.onnx"), providers=["CPUExecutionProvider"])
    p16 = half.run(None, typed_feed("digits_cnn"))[0].astype(np.float64)
    want = (p16 + probabilities("digits_cnn_dynamo").astype(np.float64)) / 2
    got = run_model(out, merged_feed("digits", out))
    np.testing.assert_allclose(got["probabilities"], want, atol=FP16_FLOOR, rtol=0)
    assert "computes in float16" in cli("merge", "--map", mapping, "--out", tmp_path / "m2.onnx").stdout

    wider = cli("merge", "--map", mapping, "--out", tmp_path / "wide.onnx", "--atol", "0.01", "--json")
    assert wider.code == 0 and wider.json["verification"]["atol"] == 0.01  # the user's larger tolerance wins
    assert wider.json["verification"]["rtol"] == FP16_FLOOR


def test_a_wrong_float16_merge_still_fails(cli, tmp_path: Path, monkeypatch) -> None:
    """The reference mean off by 1%: well above the float16 tolerance, so verification refuses the merge."""
    import merge_cli.combiners

    real = merge_cli.combiners.mean_of
    monkeypatch.setattr(merge_cli.combiners, "mean_of", lambda xs: real(xs) * np.float32(1.01))
    out = tmp_path / "merged.onnx"
    result = cli("merge", "--map", fp16_mapping(tmp_path), "--out", out)
    assert result.code == 1, result.stderr
    (line,) = result.error_lines
    assert "merged outputs differ" in line and "computes in float16" in line and f"atol={FP16_FLOOR:g}" in line
    assert not out.exists()


@pytest.mark.parametrize("cell, what", [("", "the cell is missing"), ("2.5", "the cell is 2.5")])
def test_a_bad_cell_in_an_int_column_of_data_names_file_line_and_column(cli, tmp_path: Path, cell: str,
                                                                          what: str) -> None:
    import csv

    inputs, y = typed_data("shop")
    rows = tmp_path / "shop.csv"
    with open(rows, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["price", "weight", "color", "city", "size", "y"])
        for i in range(8):
            writer.writerow([*inputs["numbers"][i], *inputs["labels"][i], cell if i == 4 else inputs["codes"][i, 0],
                             y[i]])
    mapping = write_mapping(tmp_path / "m.toml", typed_mapping(["shop_onehot_str", "shop_onehot_int"]))
    result = cli("merge", "--map", mapping, "--out", tmp_path / "merged.onnx", "--data", rows)
    assert result.code == 3, result.stderr
    (line,) = result.error_lines
    assert line.startswith(f"error: {rows}: line 6, column 'size': {what}, but inputs.codes is int64"), line
    assert "hint: " in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "merged.onnx").exists()
