"""A new user's first hour (issue 13): the rough edges met on a fresh clone, each driven through the CLI."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES, rows, run_model, save_text_model, write_mapping

from merge_cli.errors import ExitCode

ROWS = SAMPLES / "rows.csv"


# ---------------------------------------------------------------------------- 4: --out in a folder not made yet


def test_the_output_folder_is_made_when_missing(cli, tmp_path: Path) -> None:
    out = tmp_path / "build" / "deeper" / "merged.onnx"
    result = cli("merge", "--map", SAMPLES / "features.toml", "--out", out)
    assert result.code == 0, result.stderr
    X = rows(8, 30)
    got = run_model(out, {"features": X})["probabilities"]
    a = run_model(SAMPLES / "model_a.onnx", {"X": X[:, :15]})["probabilities"]
    b = run_model(SAMPLES / "model_b.onnx", {"X": X[:, 15:]})["probabilities"]
    np.testing.assert_allclose(got, (a + b) / 2, atol=1e-6)
    init = cli("init", SAMPLES / "model_a.onnx", "--out", tmp_path / "maps" / "a.toml")
    assert init.code == 0 and (tmp_path / "maps" / "a.toml").is_file()


def test_a_failed_merge_leaves_no_folder_behind(cli, tmp_path: Path) -> None:
    save_text_model(tmp_path / "inf.onnx", """
        <ir_version: 8, opset_import: ["" : 17]>
        inf (float[N, 2] x) => (float[N, 2] y) {
            zero = Constant <value = float {0.0}> ()
            y = Div (x, zero)
        }""")
    write_mapping(tmp_path / "inf.toml", {"input": {"columns": ["p", "q"]},
                                          "models": {"inf": {"path": "inf.onnx", "columns": ["p", "q"]}}})
    result = cli("merge", "--map", tmp_path / "inf.toml", "--out", tmp_path / "new" / "deeper" / "m.onnx")
    assert result.code == ExitCode.VERIFY_FAILED
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------- 9: piped output is not wrapped


def test_piped_output_is_not_wrapped_at_80_columns(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    out = tmp_path / ("a_merged_model_with_a_name_long_enough_to_pass_eighty_columns_on_its_own" + "_x" * 10 + ".onnx")
    result = cli("merge", "--map", SAMPLES / "features.toml", "--out", out)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"wrote {out} (" in lines[-1]  # one line, however long
    assert any(line.endswith("15 columns (compactness error .. worst fractal dimension)") for line in lines)
    monkeypatch.setenv("COLUMNS", "80")  # a width asked for: tables are cut to it, plain lines still not wrapped
    lines = cli("merge", "--map", SAMPLES / "features.toml", "--out", out).stdout.splitlines()
    assert any(line.endswith("(compactness error .. worst fracta…") for line in lines)
    assert f"wrote {out} (" in lines[-1]


# ---------------------------------------------------------------------------- 13: init --columns-from


def test_init_names_the_columns_from_a_csv_header(cli, tmp_path: Path) -> None:
    mapping = tmp_path / "features.toml"
    result = cli("init", SAMPLES / "model_a.onnx", SAMPLES / "model_b.onnx", "--columns-from", ROWS, "--out", mapping)
    assert result.code == 0, result.stderr
    header = ROWS.read_text().splitlines()[0].split(",")
    doc = tomllib.loads(mapping.read_text())
    assert doc["input"]["columns"] == header[:30]
    assert doc["models"]["model_a"]["columns"] == header[:15]
    assert doc["models"]["model_b"]["columns"] == header[15:30]
    assert "not read by any model: target" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["features.toml"]  # its temporary name was left beside it
    merged = cli("merge", "--map", mapping, "--out", tmp_path / "m.onnx", "--data", ROWS, "--json")
    assert merged.code == 0, merged.stderr
    assert merged.json["scores"]["models"][-1]["accuracy"] == pytest.approx(0.9532, abs=1e-4)  # as samples/features.toml


def test_init_columns_from_same_width_models_share_the_first_columns(cli, tmp_path: Path) -> None:
    csv = tmp_path / "wide.csv"
    csv.write_text(",".join(f"f{i}" for i in range(15)) + ",y\n")
    result = cli("init", SAMPLES / "model_a.onnx", SAMPLES / "model_b.onnx", "--columns-from", csv, "--out", "-")
    assert result.code == 0, result.stderr
    doc = tomllib.loads(result.stdout)
    assert doc["models"]["model_a"]["columns"] == doc["models"]["model_b"]["columns"] == [f"f{i}" for i in range(15)]


@pytest.mark.parametrize("header, message", [
    ("a,b,c\n", "the header has 3 columns; the models read 15 + 15 = 30 in turn"),
    ("", "has no header row"),
    ("a,a" + ",x" * 40 + "\n", "more than once"),
    ("," * (17 << 20) + "\n", "the header line is longer than 16 MiB"),  # was read whole
    (",".join(["x"] * 1_000_000) + "\n", "the header names 'x' more than once"),  # was counted name by name: hours
])
def test_init_columns_from_errors(cli, tmp_path: Path, header: str, message: str) -> None:
    csv = tmp_path / "h.csv"
    csv.write_text(header)
    result = cli("init", SAMPLES / "model_a.onnx", SAMPLES / "model_b.onnx", "--columns-from", csv,
                 "--out", tmp_path / "f.toml")
    assert result.code in (ExitCode.BAD_INPUT, ExitCode.INCOMPATIBLE)
    assert len(result.error_lines) == 1 and message in result.error_lines[0] and str(csv) in result.error_lines[0]
    assert not (tmp_path / "f.toml").exists()


# ---------------------------------------------------------------------------- 1-3, 15: help, defaults, completion

HELP = {  # each command: its usage line, and every argument and option its help must describe
    "merge": ("merge-models merge [OPTIONS] [MODEL]...",
              ["[MODEL]...", "--map", "--out", "--combiner", "--weights", "--keep-outputs", "--verify", "--rows",
               "--data", "--target", "--atol", "--rtol", "--opset", "--external-data", "--json", "--quiet", "--debug"]),
    "init": ("merge-models init [OPTIONS] MODEL...", ["MODEL...", "--out", "--columns-from", "--force", "--json"]),
    "inspect": ("merge-models inspect [OPTIONS] MODEL", ["MODEL", "--json", "--quiet", "--debug"]),
    "verify": ("merge-models verify [OPTIONS] MERGED", ["MERGED", "--data", "--source", "--rows", "--atol", "--rtol"]),
}
DEFAULTS = {"merge": ["[default: features.toml]", "[default: merged.onnx]", "[default: 256]", "[default: 1e-05]",
                      "(default: the highest among the models)", "(default: [combiner] kind in the mapping, else mean)",
                      "(default: the paths in the mapping)", "(default: the one column that is not an input"],
            "init": ["[default: features.toml]", "default: placeholder names"],
            "verify": ["[default: 256]", "[default: 1e-05]"], "inspect": []}


def described(help_text: str, name: str) -> bool:
    """`name` starts a line of the help (after its short form) and some description follows it."""
    for line in help_text.splitlines():
        words = line.strip().replace(",", "").split()
        if name in words[:3] and len(words) > words.index(name) + 2:
            return True
    return False


@pytest.mark.parametrize("command", HELP)
def test_help_documents_every_argument_and_default_without_backslashes(command: str) -> None:
    from test_cli_output import console, with_terminal_stderr

    usage, names = HELP[command]
    piped = console(command, "--help").stdout
    code, on_terminal, _ = with_terminal_stderr(command, "--help", cwd=SAMPLES)  # stdout is a pipe there too
    assert code == 0
    for text in (piped, on_terminal):
        assert "\\" not in text and usage in text
        for name in names:
            assert described(text, name), (command, name, text)
        for default in DEFAULTS[command]:
            assert default in " ".join(text.split()), (command, default)


def test_help_on_a_terminal_has_no_backslashes() -> None:
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    exe = Path(sys.executable).with_name("merge-models")
    proc = subprocess.Popen([str(exe), "merge", "--help"], stdout=follower, stderr=follower,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "100"})
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    text = b"".join(chunks).decode()
    assert "[default: 256]" in text and "\\" not in text and "Model files, one per [models.*] table" in " ".join(text.split())


def test_a_missing_default_mapping_says_it_is_the_default(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("merge", "-o", "x.onnx")
    assert result.code == ExitCode.BAD_INPUT
    assert result.error_lines == ["error: features.toml: no such mapping file (the default of --map, which was not given)"]
    assert "hint: pass --map FILE, or write one with `merge-models init MODEL...`" in result.stderr
    (tmp_path / "features.toml").write_text((SAMPLES / "features.toml").read_text().replace(
        'path = "model_', f'path = "{SAMPLES}/model_'))
    assert cli("merge", "-o", "x.onnx", "-q").code == 0 and (tmp_path / "x.onnx").is_file()


def test_shell_completion_offers_the_combiner_kinds() -> None:
    from test_cli_output import console

    env = {"_MERGE_MODELS_COMPLETE": "complete_bash", "COMP_WORDS": "merge-models merge --combiner ", "COMP_CWORD": "3"}
    assert console(env=env).stdout.split() == ["mean", "weighted", "sum", "max", "min", "concat", "vote", "stack",
                                                 "gate", "onnx"]
    env = {**env, "COMP_WORDS": "merge-models merge --combiner s"}
    assert console(env=env).stdout.split() == ["sum", "stack"]


# ---------------------------------------------------------------------------- 5: sum, max, min on classifiers

SURE = """
<ir_version: 8, opset_import: ["" : 17]>
sure (float[N, 1] x) => (float[N, 2] probabilities) {
    big = Constant <value = float {1000.0}> ()
    one = Constant <value = float {1.0}> ()
    scaled = Mul (x, big)
    s = Sigmoid (scaled)
    r = Sub (one, s)
    probabilities = Concat <axis = 1> (%s)
}
"""


@pytest.mark.parametrize("kind", ["sum", "max", "min"])
def test_sum_max_min_on_classifiers_give_probabilities(cli, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "m.onnx"
    result = cli("merge", "--map", SAMPLES / "features.toml", "--out", out, "--combiner", kind, "--data", ROWS, "--json")
    assert result.code == 0, result.stderr
    X = rows(64, 30)
    got = run_model(out, {"features": X})
    a = run_model(SAMPLES / "model_a.onnx", {"X": X[:, :15]})["probabilities"]
    b = run_model(SAMPLES / "model_b.onnx", {"X": X[:, 15:]})["probabilities"]
    raw = {"sum": a + b, "max": np.maximum(a, b), "min": np.minimum(a, b)}[kind]
    np.testing.assert_allclose(got["probabilities"], raw / raw.sum(axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(got["probabilities"].sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(got["label"], np.argmax(raw, axis=1))
    merged, *parts = reversed(result.json["scores"]["models"])
    assert merged["log_loss"] > 0.1  # no longer "better than every part" by not being probabilities


def test_min_of_classifiers_that_disagree_completely_is_uniform(cli, tmp_path: Path) -> None:
    save_text_model(tmp_path / "yes.onnx", SURE % "s, r")
    save_text_model(tmp_path / "no.onnx", SURE % "r, s")
    write_mapping(tmp_path / "map.toml", {
        "input": {"columns": ["x"]},
        "models": {m: {"path": f"{m}.onnx", "columns": ["x"], "classes": [0, 1]} for m in ("yes", "no")},
        "combiner": {"kind": "min"}})
    result = cli("merge", "--map", tmp_path / "map.toml", "--out", tmp_path / "m.onnx")
    assert result.code == 0, result.stderr  # verified against the numpy reference on 256 rows, most of them all-zero
    got = run_model(tmp_path / "m.onnx", {"features": np.array([[1.0], [-1.0], [0.0]], np.float32)})
    np.testing.assert_allclose(got["probabilities"], [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])


# ---------------------------------------------------------------------------- 10: wording

NO_DEFAULT_OPSET = """
<ir_version: 8, opset_import: ["ai.onnx.ml" : 1]>
ml (float[N, 2] x) => (float[N, 1] y) {
    y = ai.onnx.ml.LinearRegressor <coefficients = [1.0, 2.0], intercepts = [0.5]> (x)
}
"""
ONE_WEIGHT = """
<ir_version: 8, opset_import: ["" : 17]>
lin (float[N, 2] x) => (float[N, 1] y) <float[2, 1] w = {1.0, -1.0}> {
    y = MatMul (x, w)
}
"""


def test_summary_and_inspect_wording(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    save_text_model(tmp_path / "ml.onnx", NO_DEFAULT_OPSET)
    save_text_model(tmp_path / "lin.onnx", ONE_WEIGHT)
    write_mapping(tmp_path / "map.toml", {"input": {"columns": ["p", "q"]}, "models": {
        "ml": {"path": "ml.onnx", "columns": ["p", "q"]}, "lin": {"path": "lin.onnx", "columns": ["p", "q"]}}})
    result = cli("merge", "--map", tmp_path / "map.toml", "--out", tmp_path / "m.onnx")
    assert result.code == 0, result.stderr
    assert "None" not in result.stdout and "(converted ml (no ai.onnx opset) -> 17)" in result.stdout
    inspected = cli("inspect", tmp_path / "lin.onnx")
    assert "1 initializer (8 B)" in inspected.stdout
    merged = cli("inspect", tmp_path / "m.onnx")
    assert merged.code == 0 and "..." not in merged.stdout and "…" not in merged.stdout
    big = cli("inspect", SAMPLES / "batch" / "wine" / "a.onnx")
    assert "..." not in big.stdout


def test_multiclass_scores_have_a_one_vs_rest_roc_auc(cli, tmp_path: Path) -> None:
    iris = SAMPLES / "batch" / "iris"
    columns = tomllib.loads((iris / "features.toml").read_text())["input"]["columns"]
    X = np.abs(rows(60, 4, seed=3)) * [2.0, 1.0, 2.5, 0.8] + [5.0, 3.0, 1.0, 0.1]
    y = np.random.default_rng(3).integers(0, 3, 60)
    data = tmp_path / "iris.csv"
    data.write_text(",".join(columns + ["target"]) + "\n" + "\n".join(
        ",".join(map(str, [*x, t])) for x, t in zip(X, y, strict=True)) + "\n")
    out = tmp_path / "iris.onnx"
    result = cli("merge", "--map", iris / "features.toml", "--out", out, "--data", data, "--json")
    assert result.code == 0, result.stderr
    p = run_model(out, {"features": X.astype(np.float32)})["probabilities"].astype(np.float64)

    def pairwise_auc(positive: np.ndarray, score: np.ndarray) -> float:  # the definition, pair by pair
        pos, neg = score[positive], score[~positive]
        return float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))

    expected = np.mean([pairwise_auc(y == k, p[:, k]) for k in range(3)])
    assert result.json["scores"]["models"][-1]["roc_auc"] == pytest.approx(expected, abs=1e-9)
    human = cli("merge", "--map", iris / "features.toml", "--out", out, "--data", data)
    merged_row = [line for line in human.stdout.splitlines() if line.startswith("merged")][0]
    assert merged_row.split()[-1] == f"{expected:.4f}"


# ---------------------------------------------------------------------------- 14: samples/predict.py


def predict(*args: str | Path) -> str:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(SAMPLES / "predict.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_predict_prints_each_parts_accuracy_with_keep_outputs(cli, tmp_path: Path) -> None:
    out = tmp_path / "kept.onnx"
    merged = cli("merge", "--map", SAMPLES / "features.toml", "--out", out, "--keep-outputs", "--data", ROWS, "--json")
    assert merged.code == 0, merged.stderr
    accuracy = {m["model"]: m["accuracy"] for m in merged.json["scores"]["models"]}
    last = predict(out, ROWS).splitlines()[-1]
    assert last == (f"accuracy on 171 rows of {ROWS} (target target): merged {accuracy['merged']:.3f}, "
                    f"a {accuracy['a']:.3f}, b {accuracy['b']:.3f}")


def test_predict_on_a_regressor_with_the_target_first(cli, tmp_path: Path) -> None:
    X = rows(40, 10, seed=5) * 0.05
    target = np.random.default_rng(5).uniform(25, 346, 40)
    data = tmp_path / "diabetes.csv"
    names = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    data.write_text("progression," + ",".join(names) + "\n" + "\n".join(
        ",".join(map(str, [t, *x])) for x, t in zip(X, target, strict=True)) + "\n")
    out = tmp_path / "d.onnx"
    assert cli("merge", "--map", SAMPLES / "batch" / "diabetes" / "features.toml", "--out", out, "-q").code == 0
    prediction = run_model(out, {"features": X.astype(np.float32)})["prediction"].reshape(40)
    rmse = float(np.sqrt(np.mean((prediction - target) ** 2)))
    last = predict(out, data).splitlines()[-1]
    assert last == f"RMSE on 40 rows of {data} (target progression): merged {rmse:.3f}"


# ---------------------------------------------------------------------------- 16: the IR version


def test_an_ir_raised_by_the_combiner_is_said_and_can_be_capped(cli, tmp_path: Path) -> None:
    import onnx

    save_text_model(tmp_path / "comb.onnx", """
        <ir_version: 10, opset_import: ["" : 17]>
        comb (float[N, 2] a, float[N, 2] b) => (float[N, 2] avg) { avg = Mean (a, b) }""")
    doc = tomllib.loads((SAMPLES / "features.toml").read_text())
    for m in doc["models"].values():
        m["path"] = str(SAMPLES / m["path"])
    doc["combiner"] = {"kind": "onnx", "path": "comb.onnx"}
    write_mapping(tmp_path / "map.toml", doc)
    raised = cli("merge", "--map", tmp_path / "map.toml", "--out", tmp_path / "m.onnx")
    assert raised.code == 0, raised.stderr
    assert onnx.load(tmp_path / "m.onnx").ir_version == 10
    assert ("warning: the merged model has IR version 10, above the models' 8 (the onnx combiner declares IR 10); "
            "an older onnxruntime may not load it: --ir-version 8 caps it") in raised.stderr
    capped = cli("merge", "--map", tmp_path / "map.toml", "--out", tmp_path / "m8.onnx", "--ir-version", "8", "--json")
    assert capped.code == 0, capped.stderr
    assert capped.json["ir_version"] == 8 and capped.json["warnings"] == [] and capped.json["verification"]["passed"]
    assert onnx.load(tmp_path / "m8.onnx").ir_version == 8
    X = rows(16, 30)
    a = run_model(SAMPLES / "model_a.onnx", {"X": X[:, :15]})["probabilities"]
    b = run_model(SAMPLES / "model_b.onnx", {"X": X[:, 15:]})["probabilities"]
    np.testing.assert_allclose(run_model(tmp_path / "m8.onnx", {"features": X})["avg"], (a + b) / 2, atol=1e-6)
    too_low = cli("merge", "--map", tmp_path / "map.toml", "--out", tmp_path / "m3.onnx", "--ir-version", "3")
    assert too_low.code == ExitCode.INCOMPATIBLE
    assert too_low.error_lines == ["error: --ir-version 3 is below IR 8, which opset 17 needs"]
    assert not (tmp_path / "m3.onnx").exists()


def test_the_python_api_takes_ir_version(tmp_path: Path) -> None:
    import onnx

    from merge_cli import merge

    result = merge(SAMPLES / "features.toml", tmp_path / "m.onnx", ir_version=9, rows=16)
    assert result.ir_version == 9 and onnx.load(tmp_path / "m.onnx").ir_version == 9
    assert result.warnings == []  # asked for, so not a warning
    assert result.verification is not None and result.verification.passed
