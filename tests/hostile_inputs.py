"""Bad inputs of the second hostile round (issue 12), each a class: runaway sizes, silently wrong
numbers, names and paths that blame the wrong file, and what used to be exit 70.

Run by tests/test_bad_inputs.py with the same contract as tests/bad_inputs.py; only the cases with
json=True run a second time with --json, to keep the suite fast.

    python tests/hostile_inputs.py DIR     # write every case into DIR/<case>/ to try by hand
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from bad_inputs import (  # noqa: E402
    GOOD_JSON,
    GOOD_TOML,
    GOOD_YAML,
    OUT,
    Case,
    _mapping_text,
    _with_data,
    external_mlp,
    make_regressor,
    mapping_doc,
    merge_args,
    save,
    two_regressors,
    with_a,
)
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from merge_cli.errors import ExitCode  # noqa: E402

HOSTILE_CASES: list[Case] = []


def case(code: ExitCode, file: str, problem: str, hint: bool = False,
         json: bool = False) -> Callable[[Callable[[Path], list[str]]], Callable[[Path], list[str]]]:
    def register(build: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
        HOSTILE_CASES.append(Case(build.__name__, build, code, file, problem, hint, json))
        return build

    return register


def _usage(name: str, problem: str, *extra: str, json: bool = False) -> None:
    HOSTILE_CASES.append(Case(name, lambda d: [*two_regressors(d), *extra], ExitCode.USAGE, "", problem,
                              json=json))


def _doc(name: str, code: ExitCode, problem: str, edit: Callable[[dict[str, Any]], None], fmt: str = "json",
         hint: bool = False, json: bool = False, **kwargs: Any) -> None:
    def build(d: Path) -> list[str]:
        doc = mapping_doc()
        edit(doc)
        return two_regressors(d, doc=doc, mapping=f"map.{fmt}", **kwargs)

    HOSTILE_CASES.append(Case(name, build, code, f"map.{fmt}", problem, hint, json))


def _yaml(name: str, problem: str, text: str, json: bool = False) -> None:
    def build(d: Path) -> list[str]:
        save(make_regressor(), d / "a.onnx")
        save(make_regressor(weight=-1.0), d / "b.onnx")
        (d / "map.yaml").write_text(text)
        return merge_args(d, "map.yaml")

    HOSTILE_CASES.append(Case(name, build, ExitCode.BAD_INPUT, "map.yaml", problem, json=json))


# ---------------------------------------------------------------------------- absurd sizes and tolerances

_usage("rows_over_the_cap", "--rows must be between 1 and", "--rows", "100000000", json=True)
_usage("rows_10_to_the_12", "--rows must be between 1 and", "--rows", "1000000000000")
_usage("rows_in_exponent_notation", "'1e12' is not a valid integer", "--rows", "1e12")
_usage("atol_nan", "--atol must be a finite number >= 0", "--atol", "nan", json=True)
_usage("atol_negative", "--atol must be a finite number >= 0", "--atol", "-1")
_usage("atol_infinite", "--atol must be a finite number >= 0", "--atol", "inf", json=True)
_usage("rtol_minus_infinity", "--rtol must be a finite number >= 0", "--rtol", "-inf")

# ---------------------------------------------------------------------------- weights

_usage("weights_all_zero", "--weights: combiner weighted: every weight is 0", "--weights", "0,0", "--combiner",
       "weighted", json=True)
_usage("weights_infinite", "--weights: 'inf' must be finite", "--weights", "inf,1")
_usage("weights_nan", "--weights: 'nan' must be finite", "--weights", "nan,1")
_doc("mapping_weights_all_zero_vote", ExitCode.BAD_INPUT, "combiner vote: every weight is 0",
     lambda doc: (doc["models"]["a"].update(weight=0), doc["models"]["b"].update(weight=0.0),
                  doc["combiner"].update(kind="vote")), hint=True)
_doc("mapping_weight_infinite", ExitCode.BAD_INPUT, "models.a.weight: must be a finite number",
     lambda doc: doc["models"]["a"].update(weight=1e999), fmt="yaml")

# ---------------------------------------------------------------------------- values that do not fit


def _classes(labels: list[int]) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        for m in ("a", "b"):
            doc["models"][m] |= {"task": "classification", "classes": labels}

    return edit


_doc("class_label_2_to_the_63", ExitCode.BAD_INPUT, "models.a.classes[1]: class label 9223372036854775808",
     _classes([0, 2**63]), json=True)
_doc("class_label_below_int64", ExitCode.BAD_INPUT, "does not fit in int64", _classes([-(2**63) - 1, 0]))
_doc("missing_label_2_to_the_70", ExitCode.BAD_INPUT, "combiner.missing_label: 1180591620717411303424",
     lambda doc: doc.update(combiner={"kind": "gate", "missing_label": 2**70}))

# ---------------------------------------------------------------------------- YAML

_yaml("yaml_key_that_is_a_list", "a key must be a string, not a list or table (line 6)",
      GOOD_YAML + "? [x, y]\n: 1\n", json=True)
_yaml("yaml_integer_model_name", "a key must be a string, not number 1",
      "version: 1\ninput: {columns: [A, B, C, D]}\nmodels:\n  1: {path: a.onnx, columns: [A, B]}\n"
      "  b: {path: b.onnx, columns: [C, D]}\n")
_yaml("yaml_null_key", "a key must be a string, not null",
      "version: 1\ninput: {columns: [A, B, C, D]}\nmodels:\n  ~: {path: a.onnx, columns: [A, B]}\n")
_yaml("yaml_merge_key_then_a_duplicate", "duplicate key 'path'",
      "version: 1\ninput: {columns: [A, B, C, D]}\nmodels:\n  a: &base {path: a.onnx, columns: [A, B]}\n"
      "  b:\n    <<: *base\n    path: b.onnx\n    path: b.onnx\n")

# ---------------------------------------------------------------------------- --data columns that are not numbers


def _rows_with(target: list[Any], kind: str | None = None,
               names: tuple[str, ...] = ("A", "B", "C", "D", "y")) -> Callable[[Path], None]:
    """A Parquet file of 2 rows: float columns, then the target column (of pyarrow type `kind`) last."""
    def write(p: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = [pa.array([1.0, 2.0])] * (len(names) - 1) + [pa.array(target, getattr(pa, kind)() if kind else None)]
        pq.write_table(pa.Table.from_arrays(columns, names=list(names)), p)

    return write


@case(ExitCode.BAD_INPUT, "rows.csv", "target column 'y' holds labels ('cat' on data row 2)", hint=True, json=True)
def data_target_of_labels_for_regressors(d: Path) -> list[str]:
    """Used to be exit 70 (float('cat') while scoring); dates read by pyarrow end up here too."""
    return _with_data(d, "rows.csv", lambda p: p.write_text("A,B,C,D,y\n1,2,3,4,1.5\n2,3,4,5,cat\n"))


@case(ExitCode.BAD_INPUT, "rows.parquet", "names column 'A' 2 times", hint=True)
def data_parquet_names_a_column_twice(d: Path) -> list[str]:
    """pyarrow takes Parquet columns by name: a repeated name was a KeyError, exit 70."""
    return _with_data(d, "rows.parquet", _rows_with([1.0, 2.0], names=("A", "B", "C", "D", "A", "y")))


@case(ExitCode.BAD_INPUT, "rows.parquet", "column 'y' has type list<element: double>", hint=True, json=True)
def data_parquet_target_of_lists(d: Path) -> list[str]:
    return _with_data(d, "rows.parquet", _rows_with([[1.0], [2.0]]))


@case(ExitCode.BAD_INPUT, "rows.parquet", "column 'y' has type binary", hint=True)
def data_parquet_target_of_bytes_that_are_not_utf8(d: Path) -> list[str]:
    return _with_data(d, "rows.parquet", _rows_with([b"\xff\xfe", b"a"], "binary"))


@case(ExitCode.BAD_INPUT, "rows.npz", "y holds bytes that are not UTF-8 text", json=True)
def data_npz_target_of_bytes_that_are_not_utf8(d: Path) -> list[str]:
    """A dtype S array was decoded as ASCII: UnicodeDecodeError, exit 70."""
    return _with_data(d, "rows.npz", lambda p: np.savez(p, X=np.ones((2, 4)), y=np.array([b"\xff", b"a"])))


# ---------------------------------------------------------------------------- numbers past what Python converts

_doc("mapping_weight_past_the_largest_float", ExitCode.BAD_INPUT, "models.a.weight: must be a finite number, not "
     "number 100000... (401 digits)", lambda doc: doc["models"]["a"].update(weight=10**400), json=True)
_5000_DIGITS = "9" * 5000  # past Python's 4300-digit limit for int(str): the parsers raised ValueError, exit 70
for _name, _text in [("map.toml", GOOD_TOML.replace('"version" = 1', f'"version" = {_5000_DIGITS}')),
                     ("map.json", GOOD_JSON.replace('"version": 1', f'"version": {_5000_DIGITS}')),
                     ("map.yaml", GOOD_YAML.replace("columns: [A, B]", f"columns: [{_5000_DIGITS}, B]"))]:
    assert _5000_DIGITS in _text
    HOSTILE_CASES.append(Case(f"mapping_integer_of_5000_digits_{_name[4:]}", _mapping_text(_name, _text),
                              ExitCode.BAD_INPUT, _name, "integer string conversion", json=_name == "map.json"))


# "\ud800" (a lone UTF-16 surrogate) has no UTF-8 form: a column or input name with one failed when the
# merged file was written, exit 70. An emoji's surrogate pair ("\ud83d\ude00") is one character and merges.
for _name, _text in [("map.json", GOOD_JSON.replace('"A"', '"\\ud800"')),
                     ("map.yaml", GOOD_YAML.replace("[A, B, C, D]", '["\\ud800", B, C, D]'))]:
    assert "\\ud800" in _text
    HOSTILE_CASES.append(Case(f"mapping_column_with_a_lone_surrogate_{_name[4:]}", _mapping_text(_name, _text),
                              ExitCode.BAD_INPUT, _name, "holds a lone surrogate", hint=True, json=_name == "map.json"))


@case(ExitCode.BAD_INPUT, "loop.toml", "too many levels of symbolic links")
def mapping_is_a_symlink_loop(d: Path) -> list[str]:
    """It was 'no such mapping file' (Path.exists is False for a loop)."""
    two_regressors(d)
    (d / "loop.toml").symlink_to("loop.toml")
    return merge_args(d, "loop.toml")


# ---------------------------------------------------------------------------- an onnx combiner whose shapes do not fit


def _combiner_of(inputs: list[Any], output: list[Any]) -> Callable[[Path], list[str]]:
    """[combiner] kind = "onnx": s = a + b, with a and b declared `inputs` and s declared `output`."""
    def build(d: Path) -> list[str]:
        graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["s"])], "c",
                                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, inputs) for n in "ab"],
                                  [helper.make_tensor_value_info("s", TensorProto.FLOAT, output)])
        save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), d / "c.onnx")
        return two_regressors(d, doc=mapping_doc(combiner={"kind": "onnx", "path": "c.onnx"}))

    return build


HOSTILE_CASES += [  # both failed the merged graph's checker: exit 3 blaming the output file
    Case("onnx_combiner_input_wider_than_the_model_output", _combiner_of(["N", 3], ["N", 3]), ExitCode.INCOMPATIBLE,
         "c.onnx", "the combiner's input 'a' is [N, 3], but a gives [N, 1]", hint=True, json=True),
    Case("onnx_combiner_output_its_nodes_contradict", _combiner_of(["N", 1], ["N", 10**12]), ExitCode.BAD_INPUT,
         "c.onnx", "fails onnx.checker"),
]


# ---------------------------------------------------------------------------- declared sizes no model runs on


def _with_input(shape: list[Any]) -> Callable[[Path], list[str]]:
    """a.onnx declares its input x with `shape` (its graph still takes [N, 2])."""
    def build(d: Path) -> list[str]:
        a = make_regressor()
        dims = a.graph.input[0].type.tensor_type.shape.dim
        del dims[:]
        for size in shape:
            dims.add().dim_value = size
        return two_regressors(d, a=a)

    return build


HOSTILE_CASES += [
    Case("model_fixes_a_batch_of_10_to_the_12", _with_input([10**12, 2]), ExitCode.BAD_INPUT, "a.onnx",
         "fix a batch of 1000000000000 rows", hint=True, json=True),  # was a 14.6 TiB MemoryError, exit 70
    Case("model_input_of_10_to_the_10_values_per_row", _with_input([1, 100_000, 100_000]), ExitCode.BAD_INPUT,
         "a.onnx", "10000000000 values per row"),
]


def _huge_tensor_input(doc: dict[str, Any]) -> None:
    doc["inputs"] = {"img": {"shape": ["N", 2**40, 2**40]}, "features": doc.pop("input")}


_doc("mapping_tensor_of_2_to_the_80_values_per_row", ExitCode.BAD_INPUT, "inputs.img.shape: [N, 1099511627776, "
     "1099511627776] is 1208925819614629174706176 values per row", _huge_tensor_input, fmt="toml", hint=True,
     json=True)  # was exit 70 (a reshape of 2^80 values), and [N, 1e5, 1e5] a 298 GiB MemoryError


# ---------------------------------------------------------------------------- the file to blame

_doc("input_name_inside_a_model_prefix", ExitCode.BAD_INPUT, "input.name: 'a/x' starts with 'a/'",
     lambda doc: doc["input"].update(name="a/x"), fmt="toml", hint=True, json=True)
_doc("input_name_is_the_output_name", ExitCode.INCOMPATIBLE, "'prediction' is already used by the merged input",
     lambda doc: doc["input"].update(name="prediction"), fmt="toml", hint=True)


@case(ExitCode.CANNOT_WRITE, "newdir/", "names a directory", hint=True, json=True)
def output_with_a_trailing_slash(d: Path) -> list[str]:
    args = two_regressors(d)
    return [*args[:-3], f"{d}/newdir/", *args[-2:]]  # str(Path) would drop the slash


@case(ExitCode.CANNOT_WRITE, "newdir/", "names a directory", hint=True)
def output_an_existing_directory_with_a_trailing_slash(d: Path) -> list[str]:
    args = two_regressors(d)
    (d / "newdir").mkdir()
    return [*args[:-3], f"{d}/newdir/", *args[-2:]]


@case(ExitCode.CANNOT_WRITE, "newdir/.", "names a directory", hint=True, json=True)
def output_a_folder_and_a_dot(d: Path) -> list[str]:
    """Path('newdir/.') is Path('newdir'): a file named newdir was written; '.' and '' were exit 70."""
    args = two_regressors(d)
    return [*args[:-3], f"{d}/newdir/.", *args[-2:]]


@case(ExitCode.CANNOT_WRITE, "newdir/", "names a directory", hint=True)
def init_out_with_a_trailing_slash(d: Path) -> list[str]:
    """init's --out was a typer Path, which drops the slash: it wrote a file named newdir."""
    save(make_regressor(), d / "a.onnx")
    return ["init", str(d / "a.onnx"), "--out", f"{d}/newdir/"]


@case(ExitCode.BAD_INPUT, "header.csv", "not a regular file", hint=True)
def init_columns_from_procfs(d: Path) -> list[str]:
    """--columns-from read /proc/self/environ (the process's environment) as a header; its error lines
    could show names from it. It is read through --data's guards now."""
    save(make_regressor(), d / "a.onnx")
    (d / "header.csv").symlink_to("/proc/self/environ")
    return ["init", str(d / "a.onnx"), "--columns-from", str(d / "header.csv"), "--out", str(d / "f.toml")]


@case(ExitCode.CANNOT_WRITE, "header.csv", "would overwrite the input", hint=True)
def init_out_is_its_columns_from_file(d: Path) -> list[str]:
    """With --force, init replaced the CSV it had just read the column names from."""
    save(make_regressor(), d / "a.onnx")
    (d / "header.csv").write_text("A,B,y\n")
    return ["init", str(d / "a.onnx"), "--columns-from", str(d / "header.csv"), "--out", str(d / "header.csv"),
            "--force"]


# Linux allows any bytes in a file name; Python keeps the non-UTF-8 ones as surrogates, which provenance and
# --json could not encode (exit 70; --data's name made a --json document that was not UTF-8). The error
# line shows the name escaped ('\udcff.onnx'), so these cases check the message, not the file prefix.
@case(ExitCode.BAD_INPUT, "", "the path is not UTF-8 text", hint=True, json=True)
def model_argument_named_with_a_byte_that_is_not_utf8(d: Path) -> list[str]:
    args = two_regressors(d)
    (d / "\udcff.onnx").write_bytes((d / "a.onnx").read_bytes())
    return [*args, str(d / "\udcff.onnx"), str(d / "b.onnx")]


@case(ExitCode.CANNOT_WRITE, "", "the path is not UTF-8 text", hint=True)
def output_named_with_a_byte_that_is_not_utf8(d: Path) -> list[str]:
    args = two_regressors(d)
    return [*args[:-3], str(d / "\udcfd.onnx"), *args[-2:]]


@case(ExitCode.CANNOT_WRITE, "/".join(["x" * 200] * 25), "the path is too long", hint=True)
def output_longer_than_path_max(d: Path) -> list[str]:
    two_regressors(d)
    return merge_args(d, out="/".join(["x" * 200] * 25))


@case(ExitCode.CANNOT_WRITE, "x" * 300 + "/merged.onnx", "File name too long")
def output_folder_name_longer_than_name_max(d: Path) -> list[str]:
    two_regressors(d)
    return merge_args(d, out="x" * 300 + "/merged.onnx")


# ---------------------------------------------------------------------------- malformed trees, unverified


def ml5_tree(branches: int) -> onnx.ModelProto:
    """An ai.onnx.ml 5 TreeEnsemble: one complete binary tree of `branches` branch nodes on x[:, 0..1]."""
    true_ids, false_ids, true_leaf, false_leaf, leaves = [], [], [], [], []
    for i in range(branches):
        for child, ids, leafs in ((2 * i + 1, true_ids, true_leaf), (2 * i + 2, false_ids, false_leaf)):
            if child < branches:
                ids.append(child)
                leafs.append(0)
            else:
                ids.append(len(leaves))
                leafs.append(1)
                leaves.append(float(len(leaves) % 7))
    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", name="tree", aggregate_function=1, n_targets=1,
        post_transform=0, tree_roots=[0], nodes_featureids=[i % 2 for i in range(branches)],
        nodes_splits=numpy_helper.from_array(np.linspace(-1, 1, branches).astype(np.float32)),
        nodes_modes=numpy_helper.from_array(np.zeros(branches, np.uint8)), nodes_truenodeids=true_ids,
        nodes_trueleafs=true_leaf, nodes_falsenodeids=false_ids, nodes_falseleafs=false_leaf,
        leaf_targetids=[0] * len(leaves), leaf_weights=numpy_helper.from_array(np.array(leaves, np.float32)))
    graph = helper.make_graph([node], "tree", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21),
                                                                 helper.make_opsetid("ai.onnx.ml", 5)])


def old_tree() -> onnx.ModelProto:
    """A TreeEnsembleRegressor (ai.onnx.ml 3): next to it, an ml 5 tree is rewritten to the old op."""
    node = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1, nodes_treeids=[0, 0, 0],
        nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0], nodes_values=[0.0, 0.0, 0.0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"], nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0],
        target_treeids=[0, 0], target_nodeids=[1, 2], target_ids=[0, 0], target_weights=[1.0, 2.0])
    graph = helper.make_graph([node], "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])])
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17),
                                                                helper.make_opsetid("ai.onnx.ml", 3)])


def _broken_tree(edit: Callable[[onnx.NodeProto], None]) -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        tree = ml5_tree(7)
        edit(tree.graph.node[0])
        return [*two_regressors(d, a=tree, b=old_tree()), "--no-verify"]

    return build


def _set_ints(name: str, values: list[int]) -> Callable[[onnx.NodeProto], None]:
    def edit(node: onnx.NodeProto) -> None:
        next(a for a in node.attribute if a.name == name).ints[:] = values

    return edit


HOSTILE_CASES += [
    Case("ml5_tree_leaf_targets_cut_short_unverified", _broken_tree(_set_ints("leaf_targetids", [0])),
         ExitCode.BAD_INPUT, "a.onnx", "TreeEnsemble node 'tree' is malformed", json=True),
    Case("ml5_tree_child_out_of_range_unverified", _broken_tree(_set_ints("nodes_truenodeids", [1, 3, 99, 0, 2, 4, 6])),
         ExitCode.BAD_INPUT, "a.onnx", "out of range"),
    Case("ml5_tree_negative_child_unverified", _broken_tree(_set_ints("nodes_falsenodeids", [-1, 4, 6, 1, 3, 5, 7])),
         ExitCode.BAD_INPUT, "a.onnx", "out of range"),
    Case("ml5_tree_short_attribute_unverified", _broken_tree(_set_ints("nodes_featureids", [0])),
         ExitCode.BAD_INPUT, "a.onnx", "differ in length"),
]


def stack_of_identical_parts_with_alpha_0(d: Path) -> list[str]:
    """Two identical parts on the same columns: with alpha = 0 the ridge system is singular (was exit 70)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4))
    lines = ["A,B,C,D,y", *(",".join(f"{v:.6f}" for v in (*r, r[0] + r[1])) for r in x)]
    (d / "rows.csv").write_text("\n".join(lines) + "\n")
    doc = mapping_doc()
    doc["models"]["b"]["columns"] = ["A", "B"]
    doc["combiner"] = {"kind": "stack", "data": "rows.csv", "target": "y", "alpha": 0.0, "folds": 2}
    return two_regressors(d, b=make_regressor(), doc=doc)


HOSTILE_CASES.append(Case("stack_of_identical_parts_with_alpha_0", stack_of_identical_parts_with_alpha_0,
                          ExitCode.BAD_INPUT, "map.toml", "combiner.alpha = 0: the stack's fit has no unique solution",
                          hint=True, json=True))


def stack_passing_through_a_column_that_is_never_finite(d: Path) -> list[str]:
    """passthrough = "all" with one column NaN on every row: no row is left to fit on (was exit 70)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4))
    lines = ["A,B,C,D,y", *(",".join(["nan", *(f"{v:.6f}" for v in r[1:]), f"{r[1] + r[2]:.6f}"]) for r in x)]
    (d / "rows.csv").write_text("\n".join(lines) + "\n")
    doc = mapping_doc()
    doc["combiner"] = {"kind": "stack", "data": "rows.csv", "target": "y", "passthrough": "all", "folds": 2}
    return two_regressors(d, doc=doc)


HOSTILE_CASES.append(Case("stack_passing_through_a_column_that_is_never_finite",
                          stack_passing_through_a_column_that_is_never_finite, ExitCode.BAD_INPUT, "rows.csv",
                          "0 of its 40 rows with a target have finite values", hint=True, json=True))


# ---------------------------------------------------------------------------- verify on a forged merged file


def _merged(d: Path, *extra: str) -> Path:
    """d/merged.onnx merged from d/a.onnx and d/b.onnx (sources recorded beside it)."""
    from merge_cli.cli import main

    args = two_regressors(d)
    args[args.index("--rows") + 1] = "4"
    assert main([*args, "--quiet", *extra]) == 0
    return d / "merged.onnx"


def _forged(edit: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
            raw: dict[str, str] | None = None) -> Callable[[Path], list[str]]:
    """verify on merged.onnx whose recorded mapping and sources `edit` changed (or `raw` replaced)."""

    def build(d: Path) -> list[str]:
        merged = _merged(d)
        model = onnx.load(merged)
        props = {p.key: p.value for p in model.metadata_props}
        mapping, sources = json.loads(props["merge_models.mapping"]), json.loads(props["merge_models.sources"])
        if edit is not None:
            edit(mapping, sources)
        props |= {"merge_models.mapping": json.dumps(mapping), "merge_models.sources": json.dumps(sources)}
        props |= raw or {}
        del model.metadata_props[:]
        helper.set_model_props(model, props)
        save(model, merged)
        return ["verify", str(merged), "--rows", "4"]

    return build


def _source_file(value: Any) -> Callable[[dict[str, Any], list[dict[str, Any]]], None]:
    def edit(mapping: dict[str, Any], sources: list[dict[str, Any]]) -> None:
        sources[0]["file"] = value
        mapping["models"]["a"]["path"] = value if isinstance(value, str) else "a.onnx"

    return edit


def _combiner(entry: dict[str, Any]) -> Callable[[dict[str, Any], list[dict[str, Any]]], None]:
    return lambda mapping, sources: mapping.update(combiner=entry)


def _symlinked_source(d: Path) -> list[str]:
    args = _forged(_source_file("link.onnx"))(d)
    (d / "link.onnx").symlink_to("/etc/passwd")
    return args


OUTSIDE = "outside the merged file's folder"
HOSTILE_CASES += [
    Case("verify_forged_source_etc_passwd", _forged(_source_file("/etc/passwd")), ExitCode.BAD_INPUT, OUT, OUTSIDE,
         hint=True, json=True),
    Case("verify_forged_source_dotdot", _forged(_source_file("../../a.onnx")), ExitCode.BAD_INPUT, OUT, OUTSIDE,
         hint=True),
    Case("verify_forged_source_symlink_out", _symlinked_source, ExitCode.BAD_INPUT, OUT, OUTSIDE, hint=True),
    Case("verify_forged_onnx_combiner_etc_passwd", _forged(_combiner({"kind": "onnx", "path": "/etc/passwd"})),
         ExitCode.BAD_INPUT, OUT, OUTSIDE, hint=True, json=True),
    Case("verify_forged_stack_data_outside", _forged(_combiner({"kind": "stack", "data": "../outside.csv",
                                                                "target": "y", "folds": 2, "alpha": 1.0,
                                                                "passthrough": []})),
         ExitCode.BAD_INPUT, OUT, OUTSIDE, hint=True),
    Case("verify_provenance_nested_100k_deep", _forged(raw={"merge_models.mapping": "[" * 100_000 + "]" * 100_000}),
         ExitCode.BAD_INPUT, OUT, "nested more than", json=True),
    Case("verify_sources_nested_100k_deep", _forged(raw={"merge_models.sources": "[" * 100_000 + "]" * 100_000}),
         ExitCode.BAD_INPUT, OUT, "nested more than"),
    Case("verify_sources_of_wrong_types", _forged(raw={"merge_models.sources": '[{"model": 1, "file": [], '
                                                                                 '"sha256": 5}]'}),
         ExitCode.BAD_INPUT, OUT, "not a list of sources"),
    Case("verify_mapping_of_wrong_types", _forged(raw={"merge_models.mapping": '{"models": [1, 2], "input": 3}'}),
         ExitCode.BAD_INPUT, OUT, "is not a mapping merge-models wrote"),
    Case("verify_provenance_with_nan", _forged(raw={"merge_models.sources": '[{"model": "a", "file": "a.onnx", '
                                                                              '"sha256": NaN}]'}),
         ExitCode.BAD_INPUT, OUT, "NaN is not JSON"),
]


def _sparse_terabyte_of_data(d: Path) -> list[str]:
    """a.bin holds the 3.6 kB the model reads, then is extended (sparse) to 1 TiB: provenance hashed all of
    it (ten minutes of zeros) before the merge could finish."""
    def write(p: Path) -> None:
        external_mlp(d)
        with open(d / "a.bin", "r+b") as f:
            f.truncate(2**40)

    return with_a(d, write)


HOSTILE_CASES.append(Case("external_data_file_of_a_sparse_terabyte", _sparse_terabyte_of_data, ExitCode.BAD_INPUT,
                          "a.onnx", "external data file 'a.bin' is 1099511627776 bytes but the model's tensors read",
                          hint=True, json=True))


def changed_external_weights(d: Path) -> list[str]:
    """a.onnx reads its weights from a.bin; a.bin changes after the merge, a.onnx does not."""
    from merge_cli.cli import main

    args = with_a(d, lambda p: external_mlp(d))
    args[args.index("--rows") + 1] = "4"
    assert main([*args, "--quiet"]) == 0
    data = bytearray((d / "a.bin").read_bytes())
    data[100] ^= 0xFF
    (d / "a.bin").write_bytes(bytes(data))
    return ["verify", str(d / OUT), "--rows", "4"]


HOSTILE_CASES.append(Case("verify_sees_changed_external_weights", changed_external_weights, ExitCode.BAD_INPUT,
                          "a.bin", "external data of model 'a' has changed since the merge", hint=True, json=True))


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for c in HOSTILE_CASES:
        where = root / c.name
        where.mkdir(parents=True)
        print(f"{c.name}: merge-models {' '.join(c.build(where))}   # expect exit {int(c.code)}")

