"""Does `stack` keep what the parts learned? A small re-run of issue 15's comparison (`make stack-experiment`).

Each cell: a dataset, a column split between two parts of one model family, 3 seeds. Rows are split
50/25/25: the parts train on the first half (each on its own columns), every combiner is fitted on
the calibration quarter, and everything is scored on the test quarter. Compared on test rows:

- best part: the part with the lower loss on the calibration rows, alone
- stack linear / stack auto: merge_cli's stack fit (learner = "linear" / "auto"), passthrough = "all",
  on the parts' outputs (the same numbers the merged ONNX graph computes; the tests check that graph)
- sklearn: StackingClassifier/Regressor on the same frozen parts, passthrough=True (every column, scaled)
- retrained: one model of the parts' family trained on all columns of the parts' rows (the ceiling
  a merge cannot reach without the raw training data)

Classifiers are scored by log-loss, regressors by RMSE (lower is better for both); a second table gives
the classifiers' accuracy (higher is better).
Usage: .venv/bin/python benchmarks/stack_experiment.py [--seeds 3] [--cells digits-weak-lgbm,...]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_digits, load_iris, load_wine, make_friedman1
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    StackingClassifier,
    StackingRegressor,
)
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from merge_cli import stacking

Data = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Cell:
    name: str
    data: Callable[[int], Data]
    split: Callable[[int, int], tuple[list[int], list[int]]]  # (width, seed) -> the two parts' columns
    family: Callable[[int], Any]  # seed -> an unfitted model
    classify: bool
    interacting: bool = False


def halves(width: int, seed: int) -> tuple[list[int], list[int]]:
    return list(range(width // 2)), list(range(width // 2, width))


def weak(width: int, seed: int) -> tuple[list[int], list[int]]:
    """A random two thirds of the columns for the first part, the remaining third for the weak second."""
    order = np.random.default_rng(seed).permutation(width)
    cut = (2 * width) // 3
    return sorted(order[:cut].tolist()), sorted(order[cut:].tolist())


def lgbm(seed: int) -> Any:
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=100, learning_rate=0.1, num_leaves=15, random_state=seed, verbose=-1)


def mlp(seed: int) -> Any:
    return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=600, random_state=seed))


def rf(seed: int) -> Any:
    return RandomForestClassifier(n_estimators=100, random_state=seed)


def hgb_classifier(seed: int) -> Any:
    return HistGradientBoostingClassifier(max_iter=200, random_state=seed)


def hgb_regressor(seed: int) -> Any:
    return HistGradientBoostingRegressor(max_iter=200, random_state=seed)


def loaded(loader: Callable[[], Any]) -> Callable[[int], Data]:
    return lambda seed: (loader().data.astype(np.float64), loader().target)


def product_classes(seed: int) -> Data:
    """Six standard-normal columns; the label's log-odds shift by 3 where u * v > 1 (u = column 0, v = column 3)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4000, 6))
    logit = 0.8 * x[:, 1] - 0.8 * x[:, 4] + 0.5 * x[:, 2] - 1.0 + 3.0 * (x[:, 0] * x[:, 3] > 1)
    return x, (rng.random(4000) < 1 / (1 + np.exp(-logit))).astype(np.int64)


def friedman(seed: int) -> Data:
    return make_friedman1(4000, n_features=10, noise=1.0, random_state=seed)


def product_regression(seed: int) -> Data:
    """y = a + b + 2 a b + noise, a from the first three columns, b from the last three."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4000, 6))
    a, b = x[:, 0] + 0.5 * x[:, 1] - 0.5 * x[:, 2], x[:, 3] - 0.5 * x[:, 4] + 0.5 * x[:, 5]
    return x, a + b + 2 * a * b + rng.standard_normal(4000)


def interleaved(width: int, seed: int) -> tuple[list[int], list[int]]:
    return list(range(0, width, 2)), list(range(1, width, 2))


CELLS = [
    Cell("digits-weak-lgbm", loaded(load_digits), weak, lgbm, True),
    Cell("digits-weak-mlp", loaded(load_digits), weak, mlp, True),
    Cell("iris-halves-rf", loaded(load_iris), halves, rf, True),
    Cell("wine-weak-mlp", loaded(load_wine), weak, mlp, True),
    Cell("uv-classes-hgb", product_classes, halves, hgb_classifier, True, interacting=True),
    Cell("friedman1-hgb", friedman, interleaved, hgb_regressor, False, interacting=True),
    Cell("axb-regression-hgb", product_regression, halves, hgb_regressor, False, interacting=True),
]


def on_columns(model: Any, columns: list[int]) -> Any:
    return make_pipeline(ColumnTransformer([("cols", "passthrough", columns)]), model)


def outputs(parts: list[Any], x: np.ndarray, classify: bool) -> list[np.ndarray]:
    return [p.predict_proba(x) if classify else p.predict(x).reshape(-1, 1) for p in parts]


def metric(classify: bool, y: np.ndarray, out: np.ndarray) -> float:
    if classify:
        return float(log_loss(y, np.clip(out, 1e-15, 1), labels=np.arange(out.shape[1])))
    return float(np.sqrt(np.mean((out.reshape(-1) - y) ** 2)))


def accuracy(y: np.ndarray, out: np.ndarray) -> float:
    return float(np.mean(np.argmax(out, axis=1) == y))


def run(cell: Cell, seed: int) -> dict[str, float]:
    x, y = cell.data(seed)
    strat = y if cell.classify else None
    train, rest = train_test_split(np.arange(len(y)), train_size=0.5, random_state=seed, stratify=strat)
    calib, test = train_test_split(rest, train_size=0.5, random_state=seed, stratify=y[rest] if cell.classify else None)
    if cell.classify:  # class indices 0..K-1, as the stack fit takes them
        y = np.searchsorted(np.unique(y), y)
    columns = cell.split(x.shape[1], seed)
    parts = [on_columns(cell.family(seed), c).fit(x[train], y[train]) for c in columns]
    names = ["a", "b"]
    k = len(np.unique(y)) if cell.classify else 1
    task = "classification" if cell.classify else "regression"
    out_calib, out_test = outputs(parts, x[calib], cell.classify), outputs(parts, x[test], cell.classify)
    row: dict[str, float] = {}
    best = min(range(2), key=lambda i: metric(cell.classify, y[calib], out_calib[i]))
    row["best part"] = metric(cell.classify, y[test], out_test[best])
    shown: dict[str, np.ndarray] = {"best part": out_test[best]}  # classifiers' probabilities, for the accuracy
    every = tuple(range(x.shape[1]))
    for learner in ("linear", "auto"):
        started = time.perf_counter()
        model = stacking.fit_stack(task, out_calib, x[calib], y[calib], names, every, None, 5, k, learner)
        shown[f"stack {learner}"] = stacking.apply(model, out_test, x[test])
        row[f"stack {learner}"] = metric(cell.classify, y[test], shown[f"stack {learner}"])
        row[f"chosen {learner}"] = model.chosen  # type: ignore[assignment]
        row[f"fit s {learner}"] = time.perf_counter() - started
    frozen = [(n, FrozenEstimator(p)) for n, p in zip(names, parts, strict=True)]
    if cell.classify:
        sk = StackingClassifier(frozen, LogisticRegression(max_iter=5000), passthrough=True)
        sk_final = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        sk.set_params(final_estimator=sk_final).fit(x[calib], y[calib])
        shown["sklearn"] = sk.predict_proba(x[test])
        retrained = clone(cell.family(seed)).fit(x[train], y[train])
        shown["retrained"] = retrained.predict_proba(x[test])
        row["sklearn"], row["retrained"] = metric(True, y[test], shown["sklearn"]), metric(True, y[test], shown["retrained"])
        row.update({f"accuracy {c}": accuracy(y[test], out) for c, out in shown.items()})
    else:
        sk = StackingRegressor(frozen, make_pipeline(StandardScaler(), RidgeCV()), passthrough=True)
        sk.fit(x[calib], y[calib])
        row["sklearn"] = metric(False, y[test], sk.predict(x[test]))
        retrained = clone(cell.family(seed)).fit(x[train], y[train])
        row["retrained"] = metric(False, y[test], retrained.predict(x[test]))
    return row


COLUMNS = ["best part", "stack linear", "stack auto", "sklearn", "retrained"]


def gap_verdict(name: str, metric: str, mean: dict[str, float], closed: float) -> str:
    """Half the gap between sklearn's stacking and the retrained model closed; where sklearn already beats the
    retrained model there is no gap, and the target is met when the stack beats both."""
    if not np.isnan(closed):
        return f"{name} ({metric}): gap closed {closed:.2f} (target >= 0.5): {'met' if closed >= 0.5 else 'NOT met'}"
    ahead = mean["stack auto"] <= min(mean["sklearn"], mean["retrained"])
    return (f"{name} ({metric}): no gap (sklearn {mean['sklearn']:.4f} already beats retrained {mean['retrained']:.4f}); "
            f"stack auto {mean['stack auto']:.4f} {'beats both: met' if ahead else 'does not beat both: NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cells", default=",".join(c.name for c in CELLS))
    args = parser.parse_args()
    wanted = args.cells.split(",")
    warnings.filterwarnings("ignore")
    print(f"| cell (metric, mean of {args.seeds} seeds) | " + " | ".join(COLUMNS)
          + " | auto - best part | gap closed | auto chose | fit s |")
    print("|" + " --- |" * (len(COLUMNS) + 5))
    verdicts: list[str] = []
    accuracies: list[str] = []
    relative: list[tuple[float, float]] = []  # (auto / sklearn, linear / sklearn) per cell
    for cell in (c for c in CELLS if c.name in wanted):
        rows = [run(cell, seed) for seed in range(args.seeds)]
        mean = {c: float(np.mean([r[c] for r in rows])) for c in COLUMNS}
        chose = ",".join(str(r["chosen auto"]) for r in rows)
        fit_s = float(np.mean([r["fit s auto"] for r in rows]))
        gap = mean["sklearn"] - mean["retrained"]
        closed = (mean["sklearn"] - mean["stack auto"]) / gap if gap > 0 else float("nan")
        unit = "log-loss" if cell.classify else "RMSE"
        print(f"| {cell.name} ({unit}) | " + " | ".join(f"{mean[c]:.4f}" for c in COLUMNS)
              + f" | {mean['stack auto'] - mean['best part']:+.4f} | {closed:.2f} | {chose} | {fit_s:.2f} |", flush=True)
        if cell.classify:
            accuracies.append(f"| {cell.name} | " + " | ".join(f"{np.mean([r[f'accuracy {c}'] for r in rows]):.4f}"
                                                              for c in COLUMNS) + " |")
        relative.append((mean["stack auto"] / mean["sklearn"], mean["stack linear"] / mean["sklearn"]))
        if cell.interacting:
            verdicts.append(gap_verdict(cell.name, "log-loss" if cell.classify else "RMSE", mean, closed))
            if cell.classify:  # the same on accuracy (higher is better: the losses are 1 - accuracy)
                errors = {c: 1 - float(np.mean([r[f"accuracy {c}"] for r in rows])) for c in COLUMNS}
                gap = errors["sklearn"] - errors["retrained"]
                verdicts.append(gap_verdict(cell.name, "accuracy", errors, (errors["sklearn"] - errors["stack auto"]) / gap
                                            if gap > 0 else float("nan")))
        else:
            over = mean["stack auto"] - mean["best part"]
            verdicts.append(f"{cell.name}: auto - best part {over:+.4f} (target <= +0.005): "
                            f"{'met' if over <= 0.005 else 'NOT met'}")
    auto, linear = (float(np.exp(np.mean(np.log([r[i] for r in relative])))) for i in (0, 1))
    verdicts.append(f"all cells: stack auto / sklearn = {auto:.3f} (geometric mean of the loss ratios; "
                    f"target <= 1): {'met' if auto <= 1 else 'NOT met'}; stack linear / sklearn = {linear:.3f}")
    print()
    print(f"| accuracy (classifiers, mean of {args.seeds} seeds) | " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * (len(COLUMNS) + 1))
    print("\n".join(accuracies))
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
