"""Scores of predictions against known targets, in numpy: accuracy, log-loss, ROC AUC; RMSE, MAE, R^2."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import bad_input

LOG_LOSS_EPS = 1e-15  # as sklearn.metrics.log_loss clips: a confident miss costs 34.5, not infinity


def score(task: str, y: np.ndarray, out: np.ndarray, classes: int) -> dict[str, float | None]:
    """Classifiers: y = class indices, out = probabilities [N, K]; regressors: y = values, out = [N] or [N, 1]."""
    if task == "classification":
        return classification_scores(y, out, np.argmax(out, axis=1))
    return regression_scores(y, out.reshape(len(y)))


def classification_scores(y: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray) -> dict[str, float | None]:
    """y and predicted are class indices; probabilities are columns in class order."""
    p = probabilities.astype(np.float64)
    picked = p[np.arange(len(y)), y]
    scores: dict[str, float | None] = {
        "accuracy": float(np.mean(predicted == y)),
        "log_loss": float(-np.mean(np.log(np.clip(picked, LOG_LOSS_EPS, 1.0)))),
        "roc_auc": None,
    }
    if p.shape[1] == 2:
        scores["roc_auc"] = roc_auc(y == 1, p[:, 1])
    elif p.shape[1] > 2:  # one-vs-rest, macro average: scikit-learn's roc_auc_score(multi_class="ovr")
        per_class = [roc_auc(y == k, p[:, k]) for k in range(p.shape[1])]
        known = [a for a in per_class if a is not None]
        scores["roc_auc"] = float(np.mean(known)) if known else None
    return scores


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); None with one class only."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [len(values)]]) - 1
    mean_rank = (first + last) / 2 + 1
    ranks = np.empty(len(values))
    ranks[order] = mean_rank[group]
    return ranks


def regression_scores(y: np.ndarray, predicted: np.ndarray) -> dict[str, float | None]:
    """RMSE, MAE and R^2, computed on values scaled by their largest magnitude so that targets near the
    float64 limit (1e300) do not overflow to inf/NaN; a score that still is not finite is None (JSON has no NaN)."""
    y = y.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        error = predicted.astype(np.float64) - y
        scale = float(np.max(np.abs(error), initial=0.0))
        y_scale = float(np.max(np.abs(y), initial=0.0)) or 1.0
        spread = y / y_scale - np.mean(y / y_scale)
        e = error / scale if scale > 0 and math.isfinite(scale) else error
        unit = scale if scale > 0 and math.isfinite(scale) else 1.0
        sse, total = float(np.sum(e ** 2)), float(np.sum(spread ** 2))
        r2 = 1.0 - sse * (unit / y_scale) ** 2 / total if total > 0 else None
        return {
            "rmse": _finite(unit * math.sqrt(sse / len(y))),
            "mae": _finite(unit * float(np.mean(np.abs(e)))),
            "r2": _finite(r2),
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# ---------------------------------------------------------------------------- a table of models on real rows


@dataclass(frozen=True)
class Predictions:
    """One model's outputs on the rows: probabilities [N, K] (with labels) or predictions [N]."""

    name: str
    values: np.ndarray
    labels: np.ndarray | None = None  # class labels, when the model gives them itself


@dataclass(frozen=True)
class ScoreTable:
    """Each part alone and the merged model, scored on the same real rows."""

    data: Path
    target: str
    task: str
    rows: int
    models: list[dict[str, Any]]  # {"model", "rows" scored, metrics...}
    in_sample: bool = False  # the stack was fitted on these rows

    def to_dict(self) -> dict[str, Any]:
        return {"data": str(self.data), "target": self.target, "task": self.task, "rows": self.rows,
                "in_sample": self.in_sample, "models": self.models}


def class_indices(y: np.ndarray, classes: tuple[int, ...] | tuple[str, ...], path: Path) -> np.ndarray:
    """Targets as indices into `classes` (-1 where the target is missing); unknown labels are an error.

    Each distinct value is looked up once (np.unique), not each of a million rows in Python."""
    lookup = {str(c): i for i, c in enumerate(classes)}
    values, inverse = np.unique(y, return_inverse=True)
    table = np.empty(len(values), dtype=np.int64)
    for k, v in enumerate(values.tolist()):
        if isinstance(v, float):
            if np.isnan(v):
                table[k] = -1
                continue
            key = str(int(v)) if v.is_integer() else str(v)
        else:
            key = str(v)
        if key not in lookup:
            row = int(np.argmax(inverse.reshape(-1) == k))
            shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
            raise bad_input(path, f"target {key!r} on data row {row + 1} is not one of the classes ({shown})",
                            "the target column must hold the models' class labels")
        table[k] = lookup[key]
    return table[inverse.reshape(-1)]


def _is_number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def score_table(data: Path, target: str, y: np.ndarray, task: str, classes: tuple[int, ...] | tuple[str, ...] | None,
                models: list[Predictions], in_sample: bool = False) -> ScoreTable:
    """Score every model on the rows whose target is known and whose outputs are finite."""
    if task == "classification":
        assert classes is not None
        truth = class_indices(y, classes, data)
        known = truth >= 0
    elif y.dtype.kind in "OUS":  # text labels: regressors have no classes to compare them with
        row, label = next((i, v) for i, v in enumerate(y.tolist()) if not _is_number(v))
        raise bad_input(data, f"target column {target!r} holds labels ({str(label)[:40]!r} on data row {row + 1}), "
                        "but the models are regressors", "give the column of true values (--target NAME)")
    else:
        truth = y.astype(np.float64)
        known = np.isfinite(truth)
    entries: list[dict[str, Any]] = []
    for m in models:
        values = m.values.astype(np.float64).reshape(len(y), -1)
        ok = known & np.isfinite(values).all(axis=1)
        entry: dict[str, Any] = {"model": m.name, "rows": int(ok.sum())}
        if ok.any() and task == "classification":
            assert classes is not None
            if m.labels is not None:
                predicted = class_indices(m.labels[ok], classes, data)
            else:
                predicted = np.argmax(values[ok], axis=1)
            entry |= classification_scores(truth[ok], values[ok], predicted)
        elif ok.any():
            entry |= regression_scores(truth[ok], values[ok, 0])
        entries.append(entry)
    return ScoreTable(data, target, task, int(known.sum()), entries, in_sample)
