"""The --data reader (merge_cli/data.py): CSV by pyarrow and by numpy alone, .npz, Parquet; targets; scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bad_inputs import make_regressor, mapping_doc, save, write_doc
from conftest import run_model

from merge_cli import data
from merge_cli.data import read_data, resolve_target
from merge_cli.errors import ExitCode, MergeError
from merge_cli.inputs import TensorInput
from merge_cli.mapping import InputSpec

FEATURES = InputSpec("features", ("A", "B", "C"))


@pytest.fixture(params=["pyarrow", "numpy"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every CSV test runs twice: with pyarrow, and with numpy alone (pyarrow hidden)."""
    if request.param == "numpy":
        monkeypatch.setattr(data, "_arrow", lambda: None)
    return str(request.param)


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def test_csv_columns_by_name_in_the_inputs_order_with_a_numeric_target(tmp_path: Path, engine: str) -> None:
    path = write(tmp_path / "rows.csv", "C,y,A,B\n3,0.5,1,2\n6,1e300,4,5\n")
    rows = read_data(path, [FEATURES], "y")
    np.testing.assert_array_equal(rows.features, [[1, 2, 3], [4, 5, 6]])
    assert rows.features.dtype == np.float64 and len(rows) == 2
    np.testing.assert_array_equal(rows.target, [0.5, 1e300])
    assert rows.target_name == "y"
    assert read_data(path, [FEATURES]).target is None  # no target asked for: none read


@pytest.mark.parametrize("cell", ["", "nan", "NaN", "NA", "N/A", "null", "None", " "])
def test_missing_cells_are_nan(tmp_path: Path, engine: str, cell: str) -> None:
    path = write(tmp_path / "rows.csv", f"A,B,C,y\n1,{cell},3,{cell}\n4,5,6,1\n")
    rows = read_data(path, [FEATURES], "y")
    assert np.isnan(rows.features[0, 1]) and rows.features[1, 1] == 5
    assert np.isnan(rows.target[0]) and rows.target[1] == 1  # type: ignore[index]


def test_string_labels_quotes_blank_lines_crlf_bom_and_tsv(tmp_path: Path, engine: str) -> None:
    path = write(tmp_path / "rows.csv", '\ufeffA,B,C,name,y\r\n1,2,3,"Smith, J",cat\r\n\r\n4,"5",6,x,dog\r\n')
    rows = read_data(path, [FEATURES], "y")
    np.testing.assert_array_equal(rows.features, [[1, 2, 3], [4, 5, 6]])
    assert list(rows.target) == ["cat", "dog"] and rows.target.dtype == object  # type: ignore[union-attr]
    tsv = write(tmp_path / "rows.tsv", "A\tB\tC\n1\t2\t3\n")
    np.testing.assert_array_equal(read_data(tsv, [FEATURES]).features, [[1, 2, 3]])


def test_text_columns_are_read_as_text(tmp_path: Path, engine: str) -> None:
    """Ready for string inputs: a text table's cells stay strings (empty = missing); numbers beside them."""
    colors = InputSpec("colors", ("color",), "string")  # type: ignore[arg-type]
    path = write(tmp_path / "rows.csv", "A,color,B,C\n1,red,2,3\n4,,5,6\n")
    rows = read_data(path, [FEATURES, colors])
    assert rows.inputs["colors"].tolist() == [["red"], [""]]
    np.testing.assert_array_equal(rows.inputs["features"], [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize(("text", "fragment"), [
    ("A,B,C\n1,2,3\n4,oops,6\n", "line 3: column 'B': 'oops' is not a number"),
    ("A,B,C\n1,2,3\n4,5,6,7\n", "line 3: 4 cells, the header has 3"),
    ("A,B,C\n1,2,3\n4,5\n", "line 3: 2 cells, the header has 3"),
    ("A,B\n1,2\n", "has no column 'C'"),
    ("A,B,C\n", "has no rows"),
    ("", "is empty"),
    ("A,B,C\n1,2,3\n", "unknown data format '.xlsx'"),
    ("A,B,C\n1,2,\xff\n", "not valid UTF-8"),
])
def test_bad_csv_files_say_what_and_where(tmp_path: Path, engine: str, text: str, fragment: str) -> None:
    path = tmp_path / ("rows.xlsx" if "xlsx" in fragment else "rows.csv")
    path.write_bytes(text.encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
    with pytest.raises(MergeError) as e:
        read_data(path, [FEATURES])
    assert e.value.code == ExitCode.BAD_INPUT and fragment in e.value.message and e.value.file == str(path)


def test_a_long_header_line_is_refused_before_it_is_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MAX_HEADER", 64)
    path = write(tmp_path / "rows.csv", "A,B,C," + "x" * 100 + "\n1,2,3,4\n")
    for read in (lambda: read_data(path, [FEATURES]), lambda: resolve_target(path, [FEATURES], None)):
        with pytest.raises(MergeError, match="header line is longer than 0 MiB"):
            read()


def test_the_target_is_resolved_in_one_place(tmp_path: Path) -> None:
    one = write(tmp_path / "one.csv", "A,B,C,label\n1,2,3,0\n")
    two = write(tmp_path / "two.csv", "A,id,B,C,label\n1,9,2,3,0\n")
    assert resolve_target(one, [FEATURES], None) == "label"
    assert resolve_target(two, [FEATURES], "label") == "label"
    assert resolve_target(two, [FEATURES], None, strict=False) is None  # verify: it scores nothing
    with pytest.raises(MergeError) as e:
        resolve_target(two, [FEATURES], None)
    assert e.value.code == ExitCode.USAGE and e.value.message == "2 non-input columns (id, label): pass --target"
    with pytest.raises(MergeError, match="no target column 'y'"):
        resolve_target(one, [FEATURES], "y")
    npz = tmp_path / "rows.npz"
    np.savez(npz, X=np.ones((2, 3)), y=np.zeros(2), ids=np.arange(2))
    assert resolve_target(npz, [FEATURES], None) == "y"


def test_npz_whole_per_input_or_column_by_column(tmp_path: Path) -> None:
    X, y = np.arange(6.0).reshape(2, 3), np.array(["a", "b"])
    for name, arrays in [("x", {"X": X}), ("named", {"features": X}), ("columns", {"A": X[:, 0], "B": X[:, 1], "C": X[:, 2]}),
                         ("fortran", {"X": np.asfortranarray(X)})]:
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays, y=y)
        rows = read_data(path, [FEATURES], "y")
        np.testing.assert_array_equal(rows.features, X)
        assert list(rows.target) == ["a", "b"]  # type: ignore[arg-type]
    with pytest.raises(MergeError, match="X has shape \\[2, 2\\]; the merged input takes \\[N, 3\\]"):
        np.savez(tmp_path / "narrow.npz", X=X[:, :2])
        read_data(tmp_path / "narrow.npz", [FEATURES])


def test_tensor_inputs_come_whole_from_npz(tmp_path: Path) -> None:
    """Ready for several inputs: a tensor by its name (fixed dimensions checked) beside a table."""
    image = TensorInput("image", "float32", ("N", 1, 2, 2))
    pixels, X = np.arange(24.0).reshape(6, 1, 2, 2), np.ones((6, 3))
    path = tmp_path / "rows.npz"
    np.savez(path, image=pixels, features=X, y=np.arange(6))
    rows = read_data(path, [image, FEATURES], "y")
    np.testing.assert_array_equal(rows.inputs["image"], pixels)
    np.testing.assert_array_equal(rows.inputs["features"], X)
    with pytest.raises(MergeError, match="image has shape \\[6, 1, 2, 2\\]; the input takes \\['N', 1, 3, 3\\]"):
        read_data(path, [TensorInput("image", "float32", ("N", 1, 3, 3)), FEATURES])
    np.savez(tmp_path / "words.npz", image=np.full((6, 1, 2, 2), "w"), features=X)
    with pytest.raises(MergeError, match="image has dtype <U1; the input takes float32"):
        read_data(tmp_path / "words.npz", [image, FEATURES])
    with pytest.raises(MergeError, match="is a tensor, which a table of columns cannot hold"):
        read_data(write(tmp_path / "rows.csv", "A,B,C\n1,2,3\n"), [image, FEATURES])


def test_parquet_columns_by_name(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"C": [3.0, 6.0], "A": [1, 4], "B": [2.0, None], "y": ["u", "v"]}), path)
    rows = read_data(path, [FEATURES], resolve_target(path, [FEATURES], None))
    np.testing.assert_array_equal(rows.features, [[1, 2, 3], [4, np.nan, 6]])
    assert list(rows.target) == ["u", "v"] and rows.target_name == "y"  # type: ignore[arg-type]


def test_integers_past_2_to_53_are_rounded_as_a_csvs_digits_are(tmp_path: Path, engine: str) -> None:
    """pyarrow reads such a CSV column as int64 (a Parquet file may store uint64): its safe cast to float64
    refused them, exit 70."""
    big = [10**18, 2**63 - 1]
    rows = read_data(write(tmp_path / "rows.csv", f"A,B,C,y\n1,2,3,{big[0]}\n4,5,6,{big[1]}\n"), [FEATURES], "y")
    np.testing.assert_array_equal(rows.target, np.array(big, dtype=np.float64))


def test_parquet_integers_past_2_to_53_are_rounded_too(tmp_path: Path) -> None:
    big = [10**18, 2**63 - 1]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"A": pa.array([2**64 - 1, 1], pa.uint64()), "B": [2.0, 5.0], "C": [3.0, 6.0],
                             "y": pa.array(big, pa.int64())}), path)
    rows = read_data(path, [FEATURES], "y")
    np.testing.assert_array_equal(rows.features[:, 0], [2.0**64, 1.0])
    np.testing.assert_array_equal(rows.target, np.array(big, dtype=np.float64))


def test_parquet_without_pyarrow_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"A": [1.0], "B": [2.0], "C": [3.0]}), path)
    monkeypatch.setattr(data, "_arrow", lambda: None)
    with pytest.raises(MergeError) as e:
        read_data(path, [FEATURES])
    assert "needs pyarrow" in e.value.message and "merge-models[data]" in (e.value.hint or "")


# ---------------------------------------------------------------------------- through the CLI


def two_models(d: Path) -> Path:
    save(make_regressor(), d / "a.onnx")
    save(make_regressor(weight=-1.0), d / "b.onnx")
    return write_doc(d / "map.toml", mapping_doc(combiner={"kind": "mean"}))


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
def test_scores_from_each_format_match_numpy(cli, tmp_path: Path, suffix: str) -> None:
    mapping = two_models(tmp_path)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    y = X.sum(axis=1) * 0.3
    path = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        np.savetxt(path, np.column_stack([X, y]), delimiter=",", header="A,B,C,D,t", comments="", fmt="%.9g")
    elif suffix == ".parquet":
        pq.write_table(pa.table({"A": X[:, 0], "B": X[:, 1], "C": X[:, 2], "D": X[:, 3], "t": y}), path)
    else:
        np.savez(path, X=X, y=y)
    out = tmp_path / "m.onnx"
    result = cli("merge", "--map", mapping, "--out", out, "--rows", "16", "--data", path, "--json")
    assert result.code == 0, result.stderr
    scores = {m["model"]: m for m in result.json["scores"]["models"]}
    merged = run_model(out, {"features": X})["prediction"].reshape(-1)
    target = y.astype(np.float32).astype(np.float64)
    assert scores["merged"]["rmse"] == pytest.approx(np.sqrt(np.mean((merged - target) ** 2)), rel=1e-6)
    assert result.json["verification"]["rows"] == 16 + 40


def test_huge_targets_keep_the_json_strict(cli, tmp_path: Path) -> None:
    """Targets of 1e300 (and 1e308 either side) once made NaN/Infinity in --json: scores are finite or null."""
    mapping = two_models(tmp_path)
    path = write(tmp_path / "rows.csv", "A,B,C,D,t\n1,2,3,4,1e300\n2,3,4,5,-1e300\n0,1,0,1,1e308\n1,1,1,1,-1e308\n")
    result = cli("merge", "--map", mapping, "--out", tmp_path / "m.onnx", "--rows", "16", "--data", path, "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    merged = next(m for m in doc["scores"]["models"] if m["model"] == "merged")
    assert merged["rows"] == 4 and merged["rmse"] == pytest.approx(1e308 / np.sqrt(2), rel=1e-6)  # sum of squares: 1e616
    assert merged["mae"] == pytest.approx((1e300 + 1e308) / 2, rel=1e-6) and merged["r2"] == pytest.approx(0.0, abs=1e-9)
    few = write(tmp_path / "few.csv", "A,B,C,D,t\n1,2,3,4,1e300\n2,3,4,5,-1e300\n")
    result = cli("merge", "--map", mapping, "--out", tmp_path / "m2.onnx", "--rows", "16", "--data", few, "--json")
    merged = next(m for m in result.json["scores"]["models"] if m["model"] == "merged")
    assert merged["rmse"] == pytest.approx(1e300, rel=1e-9) and merged["r2"] == pytest.approx(0.0, abs=1e-9)
    result = cli("merge", "--map", mapping, "--out", tmp_path / "m2.onnx", "--rows", "16", "--data", few)
    table = result.stdout[result.stdout.index("scores on"):result.stdout.index("wrote")]  # once 300 digits per cell
    assert "1e+300" in table and max(map(len, table.splitlines())) < 100


def test_stack_from_the_command_line_resolves_the_target_from_the_data(cli, tmp_path: Path) -> None:
    mapping = two_models(tmp_path)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 4))
    path = tmp_path / "rows.csv"
    np.savetxt(path, np.column_stack([X, X[:, 0] - X[:, 3]]), delimiter=",", header="A,B,C,D,t", comments="")
    result = cli("merge", "--map", mapping, "--out", tmp_path / "s.onnx", "--rows", "16", "--combiner", "stack",
                 "--data", path, "--json")
    assert result.code == 0, result.stderr
    assert result.json["scores"]["target"] == "t" and result.json["stack"]["rows"] == 60


def test_verify_reads_rows_with_several_extra_columns_without_a_target(cli, tmp_path: Path) -> None:
    """verify scores nothing: an id beside the target is no reason to stop it (merge asks for --target)."""
    mapping = two_models(tmp_path)
    path = write(tmp_path / "rows.csv", "id,A,B,C,D,t\n7,1,2,3,4,0.5\n8,2,3,4,5,nan\n")
    out = tmp_path / "m.onnx"
    assert cli("merge", "--map", mapping, "--out", out, "--rows", "16").code == 0
    result = cli("verify", out, "--data", path, "--rows", "16", "--json")
    assert result.code == 0, result.stderr
    assert result.json["data"]["rows"] == 2 and result.json["verification"]["rows"] == 16 + 2
    refused = cli("merge", "--map", mapping, "--out", tmp_path / "n.onnx", "--rows", "16", "--data", path)
    assert refused.code == 2 and "2 non-input columns (id, t): pass --target" in refused.error_lines[0]
    scored = cli("merge", "--map", mapping, "--out", tmp_path / "n.onnx", "--rows", "16", "--data", path,
                 "--target", "t", "--json")
    assert scored.code == 0 and scored.json["scores"]["rows"] == 1  # the NaN target is left out


def test_an_npz_member_that_inflates_far_beyond_its_size_is_refused(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A zip bomb: zeros deflate ~1000x, so a small file could declare gigabytes and hold them."""
    from merge_cli import npz

    monkeypatch.setattr(npz, "INFLATE_FLOOR", 1 << 20)
    path = tmp_path / "rows.npz"
    np.savez_compressed(path, X=np.zeros((200_000, 3)))  # 4.8 MB of zeros in a few kB
    with pytest.raises(MergeError, match="more than 200x is not data") as e:
        read_data(path, [FEATURES])
    assert e.value.code == ExitCode.BAD_INPUT and e.value.file == str(path)
    np.savez_compressed(path, X=np.random.default_rng(0).normal(size=(200_000, 3)))  # real numbers: ~1.1x
    assert len(read_data(path, [FEATURES])) == 200_000
