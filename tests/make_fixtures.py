"""Train tiny models on columns of three scikit-learn datasets and write them with real converters.

Each fixture is one model trained on its own columns of one dataset (wine: 3 classes, breast cancer:
2 classes, diabetes: regression), written the way its converter writes it by default (ZipMap and
all), so tests can merge any two fixtures of a dataset. FIXTURES below says which columns each was
trained on and which classes its probability columns stand for; tests import it (this module imports
no converter at import time).

TYPED below are models whose inputs are not one float table (string and int64 categories, whole
image and token-id tensors, several inputs); TYPED_INPUTS says what merged inputs their datasets give
and typed_data() makes their rows.

    .venv/bin/python tests/make_fixtures.py            # skl2onnx + onnxmltools fixtures
    /tmp/torchenv/bin/python tests/make_fixtures.py --torch
                                                      # torch.onnx.export fixtures: a throwaway venv with
                                                      # torch==2.13.0, onnx, onnxscript, scikit-learn
                                                      # (or `pip install torch==2.13.0 onnxscript` in .venv)
"""

from __future__ import annotations

import functools
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent / "fixtures"
DATASETS = ("wine", "cancer", "diabetes")
WINE_NAMES = ("class_0", "class_1", "class_2")


@dataclass(frozen=True)
class Fixture:
    """One committed model: where it comes from and what it was trained on."""

    dataset: str
    columns: tuple[int, ...]  # the dataset's columns, in the order the model reads them
    converter: str  # skl2onnx | onnxmltools | torch
    classes: tuple[Any, ...] | None = None  # what its probability columns stand for, in order
    per_column: bool = False  # one [N, 1] input per column, named after the column
    mapping: tuple[tuple[str, Any], ...] = ()  # what a mapping must say about it (torch: no labels in the file)
    runs: bool = True  # False: onnxruntime refuses the file as its converter writes it
    note: str = ""


def _cols(a: int, b: int) -> tuple[int, ...]:
    return tuple(range(a, b))


FIXTURES: dict[str, Fixture] = {
    # wine: 13 columns, classes 0, 1, 2
    "wine_lr_zipmap": Fixture("wine", _cols(0, 7), "skl2onnx", (0, 1, 2),
                              note="Pipeline(StandardScaler, LogisticRegression), ZipMap, opset 9"),
    "wine_rf": Fixture("wine", _cols(6, 13), "skl2onnx", (0, 1, 2), note="RandomForest, zipmap=False, opset 15"),
    "wine_gb_reversed": Fixture("wine", tuple(range(12, 3, -1)), "skl2onnx", (0, 1, 2),
                                note="GradientBoosting, ZipMap, columns in reverse order, opset 13"),
    "wine_mlp": Fixture("wine", (1, 3, 5, 7, 9, 11), "skl2onnx", (0, 1, 2),
                        note="Pipeline(StandardScaler, MLPClassifier), zipmap=False, opset 21"),
    "wine_ct": Fixture("wine", (0, 2, 4, 6, 8), "skl2onnx", (0, 1, 2), per_column=True,
                       note="ColumnTransformer pipeline, one [N, 1] input per column, ZipMap, opset 17"),
    "wine_lr_double": Fixture("wine", _cols(5, 13), "skl2onnx", (0, 1, 2),
                              note="LogisticRegression on DoubleTensorType (float64), ZipMap"),
    "wine_lgbm": Fixture("wine", _cols(0, 9), "onnxmltools", (0, 1, 2), note="LightGBM classifier, ZipMap"),
    "wine_xgb": Fixture("wine", _cols(4, 13), "onnxmltools", (0, 1, 2),
                        note="XGBoost classifier: no default-domain opset"),
    "wine_rf_str": Fixture("wine", _cols(0, 7), "skl2onnx", WINE_NAMES, note="RandomForest, string labels, ZipMap"),
    "wine_lr_str": Fixture("wine", _cols(6, 13), "skl2onnx", WINE_NAMES,
                           note="LogisticRegression, string labels, zipmap=False"),
    "wine_torch_dynamo": Fixture("wine", _cols(0, 13), "torch", (2, 0, 1), mapping=(("classes", [2, 0, 1]),),
                                 note="MLP + softmax, torch.onnx.export(dynamo=True); trained on labels "
                                      "encoded 2, 0, 1 so its columns are in another order"),
    # breast cancer: 30 columns, classes 0, 1
    "cancer_lr_zipmap": Fixture("cancer", _cols(0, 15), "skl2onnx", (0, 1),
                                note="Pipeline(StandardScaler, LogisticRegression), ZipMap, opset 7 (IR 3)"),
    "cancer_lr_double": Fixture("cancer", _cols(10, 30), "skl2onnx", (0, 1),
                                note="LogisticRegression on DoubleTensorType, zipmap=False: class labels only in "
                                     "an initializer the label output gathers from"),
    "cancer_svc": Fixture("cancer", _cols(5, 15), "skl2onnx", (0, 1),
                          note="Pipeline(StandardScaler, SVC(probability=True)), zipmap=False"),
    "cancer_lgbm": Fixture("cancer", _cols(15, 30), "onnxmltools", (0, 1), note="LightGBM binary classifier, ZipMap"),
    "cancer_xgb_reversed": Fixture("cancer", tuple(range(29, 14, -1)), "onnxmltools", (0, 1),
                                   note="XGBoost binary classifier, columns in reverse order"),
    "cancer_torch_classic": Fixture("cancer", _cols(0, 10), "torch", (0, 1), mapping=(("classes", [0, 1]),),
                                    note="MLP + sigmoid, [N, 1] positive-class probability, "
                                         "torch.onnx.export(dynamo=False) with a dynamic batch axis"),
    "cancer_torch_fixed": Fixture("cancer", _cols(20, 30), "torch", (0, 1),
                                  mapping=(("task", "classification"), ("classes", [0, 1])),
                                  note="MLP + sigmoid squeezed to [N], torch.onnx.export(dynamo=False) "
                                       "without dynamic axes: the batch is fixed at 1"),
    # diabetes: 10 columns, regression
    "diabetes_gbr": Fixture("diabetes", _cols(0, 6), "skl2onnx", note="GradientBoostingRegressor, opset 13"),
    "diabetes_lgbm": Fixture("diabetes", _cols(4, 10), "onnxmltools", note="LightGBM regressor"),
    "diabetes_xgb_reversed": Fixture("diabetes", tuple(range(9, 2, -1)), "onnxmltools",
                                     note="XGBoost regressor, columns in reverse order"),
    "diabetes_linreg_double": Fixture("diabetes", _cols(0, 10), "skl2onnx",
                                      note="LinearRegression on DoubleTensorType (float64)"),
    "diabetes_gbr_double": Fixture("diabetes", _cols(0, 6), "skl2onnx", runs=False,
                                   note="GradientBoostingRegressor on DoubleTensorType: its TreeEnsembleRegressor "
                                        "declares a float64 output, which onnxruntime refuses to load"),
    "diabetes_torch_dynamo": Fixture("diabetes", _cols(2, 9), "torch",
                                     note="MLP regressor with a [N] output, torch.onnx.export(dynamo=True)"),
}


def load(dataset: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The whole dataset: float64 rows, targets, column names."""
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

    data = {"wine": load_wine, "cancer": load_breast_cancer, "diabetes": load_diabetes}[dataset]()
    names = [str(n).replace(" ", "_").replace("/", "_") for n in data.feature_names]
    return np.asarray(data.data, dtype=np.float64), np.asarray(data.target), names


# ---------------------------------------------------------------------------- skl2onnx, onnxmltools


def make_converter_fixtures() -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, RandomForestClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler
    from sklearn.svm import SVC

    def skl(name: str, model: Any, dtype: type = np.float32, opset: int | None = None, **options: Any) -> None:
        X, y, _ = fixture_data(name)
        model.fit(X, y)
        target = {"": opset, "ai.onnx.ml": 1} if opset else None
        onx = to_onnx(model, X[:1].astype(dtype), options=options or None, target_opset=target)
        save(name, onx)

    lr = lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))  # noqa: E731
    skl("wine_lr_zipmap", lr(), opset=9)
    skl("wine_rf", RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0), opset=15, zipmap=False)
    skl("wine_gb_reversed", GradientBoostingClassifier(n_estimators=8, max_depth=2, random_state=0), opset=13)
    skl("wine_mlp", make_pipeline(StandardScaler(), MLPClassifier((8,), max_iter=2000, random_state=0)),
        opset=21, zipmap=False)
    skl("wine_lr_double", lr(), dtype=np.float64)
    skl("wine_rf_str", RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0))
    skl("wine_lr_str", lr(), zipmap=False)
    skl("cancer_lr_zipmap", lr(), opset=7)
    skl("cancer_lr_double", lr(), dtype=np.float64, zipmap=False)
    skl("cancer_svc", make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)), zipmap=False)
    skl("diabetes_gbr", GradientBoostingRegressor(n_estimators=10, max_depth=2, random_state=0), opset=13)
    skl("diabetes_linreg_double", LinearRegression(), dtype=np.float64)
    skl("diabetes_gbr_double", GradientBoostingRegressor(n_estimators=10, max_depth=2, random_state=0),
        dtype=np.float64)

    # one [N, 1] input per column, named after it, as skl2onnx writes a ColumnTransformer pipeline for a DataFrame
    X, y, names = fixture_data("wine_ct")
    ct = Pipeline([("columns", ColumnTransformer([("scaled", StandardScaler(), [0, 1, 2]),
                                                  ("ranged", MinMaxScaler(), [3, 4])])),
                   ("lr", LogisticRegression(max_iter=2000))]).fit(X, y)
    save("wine_ct", to_onnx(ct, initial_types=[(n, FloatTensorType([None, 1])) for n in names],
                            target_opset={"": 17, "ai.onnx.ml": 1}))

    import lightgbm
    import xgboost
    from onnxmltools import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat

    def ml(name: str, model: Any) -> None:
        X, y, _ = fixture_data(name)
        model.fit(X.astype(np.float32), y)
        convert = convert_lightgbm if isinstance(model, lightgbm.LGBMModel) else convert_xgboost
        save(name, convert(model, initial_types=[("input", MLFloat([None, X.shape[1]]))]))

    small = {"n_estimators": 8, "random_state": 0}
    ml("wine_lgbm", lightgbm.LGBMClassifier(num_leaves=7, verbose=-1, **small))
    ml("wine_xgb", xgboost.XGBClassifier(max_depth=3, **small))
    ml("cancer_lgbm", lightgbm.LGBMClassifier(num_leaves=7, verbose=-1, **small))
    ml("cancer_xgb_reversed", xgboost.XGBClassifier(max_depth=3, **small))
    ml("diabetes_lgbm", lightgbm.LGBMRegressor(num_leaves=7, verbose=-1, **small))
    ml("diabetes_xgb_reversed", xgboost.XGBRegressor(max_depth=3, **small))


def fixture_data(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A fixture's training rows (its columns, in its order), targets (as its classes say), column names."""
    fixture = FIXTURES[name]
    X, y, names = load(fixture.dataset)
    if fixture.classes and isinstance(fixture.classes[0], str):
        y = np.array(WINE_NAMES)[y]
    return X[:, list(fixture.columns)], y, [names[c] for c in fixture.columns]


def save(name: str, model: Any) -> None:
    # Converters list opset_import in set order and onnxmltools names graphs with a random uuid, both of
    # which change from run to run: sort the one and pin the other, so the files are reproducible.
    if re.fullmatch("[0-9a-f]{32}", model.graph.name):
        model.graph.name = name
    imports = sorted((e.domain, e.version) for e in model.opset_import)
    del model.opset_import[:]
    for domain, version in imports:
        model.opset_import.add(domain=domain, version=version)
    path = HERE / f"{name}.onnx"
    path.write_bytes(model.SerializeToString(deterministic=True))
    print(f"{path.name}: {path.stat().st_size} bytes")


# ---------------------------------------------------------------------------- torch


def make_torch_fixtures() -> None:
    import torch

    torch.manual_seed(0)

    def train(X: np.ndarray, y: np.ndarray, outputs: int, loss: str) -> torch.nn.Module:
        mean, std = X.mean(axis=0), X.std(axis=0) + 1e-9
        net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, outputs))
        xs = torch.tensor((X - mean) / std, dtype=torch.float32)
        ys = torch.tensor(y, dtype=torch.long if loss == "ce" else torch.float32)
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(300):
            opt.zero_grad()
            out = net(xs)
            if loss == "ce":
                value = torch.nn.functional.cross_entropy(out, ys)
            elif loss == "bce":
                value = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], ys)
            else:
                value = torch.nn.functional.mse_loss(out[:, 0], ys)
            value.backward()
            opt.step()
        return Standardized(net, mean, std)

    class Standardized(torch.nn.Module):
        """The network with its input scaling inside, as users export it."""

        def __init__(self, net: torch.nn.Module, mean: np.ndarray, std: np.ndarray) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - self.mean) / self.std)

    class Head(torch.nn.Module):
        def __init__(self, body: torch.nn.Module, kind: str, scale: float = 1.0, shift: float = 0.0) -> None:
            super().__init__()
            self.body, self.kind, self.scale, self.shift = body, kind, scale, shift

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.body(x)
            if self.kind == "softmax":
                return torch.softmax(out, dim=1)
            if self.kind == "sigmoid":
                return torch.sigmoid(out)
            if self.kind == "sigmoid_flat":
                return torch.sigmoid(out)[:, 0]
            return out[:, 0] * self.scale + self.shift

    def export(name: str, model: torch.nn.Module, width: int, dynamo: bool, batch: str | None = "batch") -> None:
        model.eval()
        path = HERE / f"{name}.onnx"
        example = (torch.zeros(1 if batch is None else 4, width),)
        if dynamo:
            shapes = {"x": {0: torch.export.Dim(batch)}} if batch else None
            torch.onnx.export(model, example, str(path), dynamo=True, external_data=False, dynamic_shapes=shapes)
        else:
            axes = {"input": {0: batch}, "output": {0: batch}} if batch else None
            torch.onnx.export(model, example, str(path), dynamo=False, input_names=["input"],
                              output_names=["output"], dynamic_axes=axes)
        print(f"{path.name}: {path.stat().st_size} bytes")

    X, y, _ = fixture_data("wine_torch_dynamo")
    encoded = np.array([1, 2, 0])[y]  # class 2 -> column 0, class 0 -> column 1, class 1 -> column 2
    export("wine_torch_dynamo", Head(train(X, encoded, 3, "ce"), "softmax"), X.shape[1], dynamo=True)
    X, y, _ = fixture_data("cancer_torch_classic")
    export("cancer_torch_classic", Head(train(X, y, 1, "bce"), "sigmoid"), X.shape[1], dynamo=False)
    X, y, _ = fixture_data("cancer_torch_fixed")
    export("cancer_torch_fixed", Head(train(X, y, 1, "bce"), "sigmoid_flat"), X.shape[1], dynamo=False, batch=None)
    X, y, _ = fixture_data("diabetes_torch_dynamo")
    net = train(X, (y - y.mean()) / y.std(), 1, "mse")
    export("diabetes_torch_dynamo", Head(net, "flat", float(y.std()), float(y.mean())), X.shape[1], dynamo=True)


# ---------------------------------------------------------------------------- typed inputs


@dataclass(frozen=True)
class TypedFixture:
    """A committed model whose inputs are not one float table: what feeds each of its inputs."""

    dataset: str  # shop | digits: see TYPED_INPUTS and typed_data
    inputs: tuple[tuple[str, str | tuple[str, ...]], ...]  # model input -> a whole merged input, or table columns
    converter: str  # skl2onnx | torch
    classes: tuple[Any, ...]
    mapping: tuple[tuple[str, Any], ...] = ()
    note: str = ""


STATS = ("ink", "top", "bottom", "left", "right", "center")  # digits: mean ink of the whole image and of parts

# dataset -> its merged inputs in order: name -> (dtype, table columns, or None for a whole tensor)
TYPED_INPUTS: dict[str, dict[str, tuple[str, tuple[str, ...] | None]]] = {
    "shop": {"numbers": ("float32", ("price", "weight")), "labels": ("string", ("color", "city")),
             "codes": ("int64", ("size",))},
    "digits": {"image": ("float32", None), "stats": ("float32", STATS), "tokens": ("int64", None)},
}
DIGITS = tuple(range(10))

TYPED: dict[str, TypedFixture] = {
    "shop_onehot_str": TypedFixture("shop", (("color", ("color",)), ("price", ("price",)), ("weight", ("weight",))),
                                    "skl2onnx", (0, 1),
                                    note="ColumnTransformer(OneHotEncoder on a string column, StandardScaler) + "
                                         "LogisticRegression, one [N, 1] input per DataFrame column, ZipMap"),
    "shop_onehot_int": TypedFixture("shop", (("size", ("size",)), ("weight", ("weight",))), "skl2onnx", (0, 1),
                                    note="ColumnTransformer(OneHotEncoder on an int64 column, passthrough) + "
                                         "RandomForest, zipmap=False"),
    "shop_ordinal_str": TypedFixture("shop", (("labels", ("city", "color")),), "skl2onnx", (0, 1),
                                     note="OrdinalEncoder (ONNX LabelEncoder keys_strings) on a [N, 2] string "
                                          "input + DecisionTree, zipmap=False"),
    "shop_lr": TypedFixture("shop", (("X", ("price", "weight")),), "skl2onnx", (0, 1),
                            note="LogisticRegression on two float columns, ZipMap: the numeric partner"),
    "digits_cnn": TypedFixture("digits", (("image", "image"),), "torch", DIGITS, (("classes", list(DIGITS)),),
                               note="Conv-ReLU-MaxPool-Linear-softmax on [N, 1, 8, 8], torch.onnx.export(dynamo=False)"),
    "digits_cnn_dynamo": TypedFixture("digits", (("image", "image"),), "torch", DIGITS, (("classes", list(DIGITS)),),
                                      note="two Conv-ReLU, Linear, softmax on [N, 1, 8, 8], "
                                           "torch.onnx.export(dynamo=True)"),
    "digits_fusion": TypedFixture("digits", (("image", "image"), ("meta", ("ink", "top", "left"))), "torch", DIGITS,
                                  (("classes", list(DIGITS)),),
                                  note="image [N, 1, 8, 8] + meta [N, 3] columns, two inputs, dynamo=False"),
    "digits_tokens": TypedFixture("digits", (("tokens", "tokens"),), "torch", DIGITS, (("classes", list(DIGITS)),),
                                  note="int64 token ids [N, 16] (a 4x4 image, 17 levels): Embedding, mean, "
                                       "Linear, softmax, dynamo=False"),
    "digits_stats_lr": TypedFixture("digits", (("X", STATS),), "skl2onnx", DIGITS,
                                    note="LogisticRegression on the six ink statistics, zipmap=False"),
}


@functools.cache
def typed_data(dataset: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every merged input of a TYPED dataset (tables [N, k], string ones as object arrays) and the targets.

    Cached: callers must not change the arrays."""
    if dataset == "shop":
        rng = np.random.default_rng(7)
        n = 400
        color = rng.choice(["red", "green", "blue", "black"], n)
        city = rng.choice(["Paris", "Lima", "Oslo"], n)
        size = rng.integers(1, 6, n)
        price = rng.gamma(3.0, 10.0, n)
        weight = rng.normal(2.0, 0.5, n)
        score = (0.04 * price - 0.8 * weight + np.select([color == "red", color == "blue"], [1.5, -1.0], 0.0)
                 + 0.6 * (size - 3) + np.where(city == "Oslo", 1.0, 0.0) + rng.normal(0, 0.7, n))
        inputs = {"numbers": np.stack([price, weight], axis=1).astype(np.float32),
                  "labels": np.stack([color, city], axis=1).astype(object),
                  "codes": size.reshape(-1, 1).astype(np.int64)}
        return inputs, (score > np.median(score)).astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    image = digits.images.astype(np.float32).reshape(-1, 1, 8, 8)
    pixels = digits.images / 16.0
    stats = np.stack([pixels.mean(axis=(1, 2)), pixels[:, :4].mean(axis=(1, 2)), pixels[:, 4:].mean(axis=(1, 2)),
                      pixels[:, :, :4].mean(axis=(1, 2)), pixels[:, :, 4:].mean(axis=(1, 2)),
                      pixels[:, 2:6, 2:6].mean(axis=(1, 2))], axis=1).astype(np.float32)
    tokens = np.rint(digits.images.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4))).astype(np.int64).reshape(-1, 16)
    return {"image": image, "stats": stats, "tokens": tokens}, np.asarray(digits.target, dtype=np.int64)


def typed_column(dataset: str, column: str) -> np.ndarray:
    """One table column of a TYPED dataset as an [N, 1] array."""
    inputs, _ = typed_data(dataset)
    for name, (_, columns) in TYPED_INPUTS[dataset].items():
        if columns is not None and column in columns:
            return inputs[name][:, [columns.index(column)]]
    raise KeyError(column)


def typed_feed(name: str) -> dict[str, np.ndarray]:
    """What each input of a TYPED fixture reads, on every row of its dataset (its own dtypes)."""
    fixture = TYPED[name]
    inputs, _ = typed_data(fixture.dataset)
    feed = {}
    for model_input, source in fixture.inputs:
        if isinstance(source, str):
            feed[model_input] = inputs[source]
        else:
            feed[model_input] = np.concatenate([typed_column(fixture.dataset, c) for c in source], axis=1)
    return feed


def make_typed_converter_fixtures() -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    onnx_type = {"O": StringTensorType, "i": Int64TensorType, "f": FloatTensorType}

    def typed(name: str, model: Any, **options: Any) -> None:
        feed = typed_feed(name)
        _, y = typed_data(TYPED[name].dataset)
        # a DataFrame-like [N, k] object array keeps each column's type for the ColumnTransformer
        X = np.concatenate([v.astype(object) for v in feed.values()], axis=1)
        model.fit(X if len(feed) > 1 else next(iter(feed.values())), y)
        types = [(k, onnx_type[v.dtype.kind]([None, v.shape[1]])) for k, v in feed.items()]
        save(name, to_onnx(model, initial_types=types, options=options or None,
                           target_opset={"": 17, "ai.onnx.ml": 3}))

    lr = LogisticRegression(max_iter=2000)
    typed("shop_onehot_str", Pipeline([("columns", ColumnTransformer([
        ("color", OneHotEncoder(handle_unknown="ignore"), [0]), ("scaled", StandardScaler(), [1, 2])])),
        ("lr", lr)]))
    typed("shop_onehot_int", Pipeline([("columns", ColumnTransformer([
        ("size", OneHotEncoder(handle_unknown="ignore"), [0]), ("rest", "passthrough", [1])])),
        ("rf", RandomForestClassifier(n_estimators=6, max_depth=4, random_state=0))]), zipmap=False)
    typed("shop_ordinal_str", Pipeline([("codes", OrdinalEncoder()),
                                        ("tree", DecisionTreeClassifier(max_depth=4, random_state=0))]), zipmap=False)
    typed("shop_lr", LogisticRegression(max_iter=2000))
    typed("digits_stats_lr", Pipeline([("scaled", StandardScaler()), ("lr", LogisticRegression(max_iter=2000))]),
          zipmap=False)


def make_typed_torch_fixtures() -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    inputs, y = typed_data("digits")
    train = slice(0, 1200)  # the rows after these are held out (samples/images scores on them)

    class Probabilities(nn.Module):
        """A network over named inputs with a softmax on top, as users export a classifier."""

        def __init__(self, body: nn.Module) -> None:
            super().__init__()
            self.body = body

        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.body(*xs), dim=1)

    class Fusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
            self.head = nn.Linear(4 * 16 + 3, 10)

        def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([self.conv(image / 16.0), meta], dim=1))

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(17, 8)
            self.head = nn.Linear(8, 10)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(tokens).mean(dim=1))

    class Scaled(nn.Module):
        def __init__(self, body: nn.Module) -> None:
            super().__init__()
            self.body = body

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.body(image / 16.0)

    def fit(net: nn.Module, xs: list[torch.Tensor], steps: int = 150) -> nn.Module:
        target = torch.tensor(y[train])
        opt = torch.optim.Adam(net.parameters(), lr=0.02)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(net(*[x[train] for x in xs]), target).backward()
            opt.step()
        return Probabilities(net).eval()

    def export(name: str, model: nn.Module, xs: list[torch.Tensor], names: list[str], dynamo: bool) -> None:
        path = HERE / f"{name}.onnx"
        example = tuple(x[:4] for x in xs)
        if dynamo:
            batch = torch.export.Dim("batch")
            torch.onnx.export(model, example, str(path), dynamo=True, external_data=False, input_names=names,
                              output_names=["probabilities"], dynamic_shapes=(tuple({0: batch} for _ in xs),))
        else:
            axes = {n: {0: "batch"} for n in [*names, "probabilities"]}
            torch.onnx.export(model, example, str(path), dynamo=False, input_names=names,
                              output_names=["probabilities"], dynamic_axes=axes)
        print(f"{path.name}: {path.stat().st_size} bytes")

    image = torch.tensor(inputs["image"])
    meta = torch.tensor(inputs["stats"][:, [STATS.index(c) for c in ("ink", "top", "left")]])
    tokens = torch.tensor(inputs["tokens"])
    cnn = Scaled(nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                               nn.Linear(6 * 16, 10)))
    export("digits_cnn", fit(cnn, [image]), [image], ["image"], dynamo=False)
    deeper = Scaled(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(8 * 16, 10)))
    export("digits_cnn_dynamo", fit(deeper, [image]), [image], ["image"], dynamo=True)
    export("digits_fusion", fit(Fusion(), [image, meta]), [image, meta], ["image", "meta"], dynamo=False)
    export("digits_tokens", fit(Tokens(), [tokens], steps=300), [tokens], ["tokens"], dynamo=False)


def main(argv: list[str]) -> None:
    HERE.mkdir(exist_ok=True)
    warnings.simplefilter("ignore")  # convergence and deprecation chatter from the trainers
    if "--torch" in argv:
        make_torch_fixtures()
        make_typed_torch_fixtures()
    else:
        make_converter_fixtures()
        make_typed_converter_fixtures()


if __name__ == "__main__":
    main(sys.argv[1:])
