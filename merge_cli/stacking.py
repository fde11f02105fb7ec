"""Fit the `stack` combiner with numpy and choose, by cross-validation, what the merged model ships.

The linear fit (multinomial logistic for classifiers, ridge for regressors) shrinks towards a prior,
not towards zero. Its features are the log of the parts' mean probability, each part's
log-probability and probability (classifiers) or each part's prediction (regressors), then the
passthrough columns, all standardised; the L2 penalty pulls the weights towards the values that
reproduce the prior exactly, and k-fold cross-validation picks the prior and the penalty's strength.
The prior is `mean` or the `pool` (a convex log-linear pool of the log-mean and each part's
log-probabilities; a ridge fit on the parts' predictions for regressors): on a few dozen rows with one
part far better than the other, `mean` is a poor place to shrink towards (iris with a random forest per
half of the columns: the stack lost to the better part by 0.05 of held-out log-loss), and the pool,
with one weight per part, is steady there. Per-part log-probabilities let the fit reproduce one sharp
part (softmax(log p) = p), which a mix of probabilities cannot.

With `learner = "auto"` a small MLP over the same standardised features is fitted on top of the
linear logits (learners.fit_residual): the parts' outputs cannot carry an interaction between a
column only one part sees and a column only the other sees; the MLP can learn it from the columns.

What ships is decided on out-of-fold losses, row by row: the residual MLP only when it beats the
linear fit by more than one standard error of the paired difference, and a part alone only when it
beats the choice that way. One standard error, because on small data (iris: 37 rows) the best
out-of-fold score is optimistic, and picking on it shipped worse models more often than better ones.
A part that beats the shipped combiner by less is reported with a warning. (The classic rule - the
simplest candidate within one standard error of the best, parts first - shipped a part or `mean`
where the learned fit did better on held-out diabetes rows.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graphs import Task
from .learners import Residual, fit_logistic, fit_pool, fit_residual, fit_ridge, softmax
from .scores import score

EPS = 1e-4  # probabilities are clipped to [EPS, 1] before their log: a 0 would be -inf
ALPHAS = tuple(float(a) for a in np.logspace(0, 4, 9))  # as sklearn's C = 1/alpha for the logistic fit
PRIORS = ("mean", "pool")  # what the linear fit is pulled towards; cross-validation picks one
POOL_ALPHA = 0.1  # the pool's L2 strength (towards `mean`): it keeps the pool finite where a part separates the rows
RESIDUAL_ALPHAS = (10.0, 30.0)  # the residual MLP's L2 strengths (its target has unit scale): below 10 it
# overfit 800 rows of a u*v task (log-loss 0.62 at 3, 0.46 at 10, against 0.51 for the linear fit)
REPEATS = 3  # cross-validation repeats (different shuffles) of the linear fit on small data (<= SMALL rows)
SMALL = 1_000
CV_ROWS = 4_000  # the choice is made on at most this many rows (seeded sample): its cost does not grow with N
RESIDUAL_ROWS = 4_000  # the residual MLP is fitted on at most this many rows (seeded sample)
FIT_ROWS = 200_000  # the linear fit uses at most this many rows (seeded sample): its few dozen weights are
# pinned down long before (their standard error shrinks as 1/sqrt(rows): 0.2% of it at 200k), and beyond
# them time and memory stop growing with the rows (1M rows: the fit 15.6 s -> 3 s, peak RSS 1.07 GB -> 0.6 GB)


@dataclass(frozen=True)
class Candidate:
    """One combination the cross-validation compared, with its out-of-fold scores."""

    name: str  # "stack", "stack+mlp", "mean" or a model's name
    loss: float  # mean out-of-fold log-loss (classifiers) or squared error (regressors)
    scores: dict[str, float | None]
    losses: np.ndarray = field(repr=False, compare=False)  # per row, for the paired comparison


@dataclass(frozen=True)
class Linear:
    """((x - mean) / scale) @ coef + intercept: the linear stack's logits or prediction."""

    mean: np.ndarray  # [d]
    scale: np.ndarray  # [d]
    coef: np.ndarray  # [d, K]
    intercept: np.ndarray  # [K]

    def standardised(self, x: np.ndarray) -> np.ndarray:
        return np.asarray((x - self.mean) / self.scale)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.standardised(x) @ self.coef + self.intercept)


@dataclass(frozen=True)
class StackModel:
    """What the stack computes, and how it was chosen.

    "stack": softmax-or-identity(linear(x)); "stack+mlp": softmax-or-identity(linear(x) + residual(z));
    "mean": the parts' mean; a model's name: that part's output alone.
    """

    task: Task
    passthrough: tuple[int, ...]  # merged-input columns appended to the features
    chosen: str
    alpha: float | None  # the L2 strength of the linear fit
    folds: int
    rows: int  # rows the fit used
    dropped: int  # rows left out because a feature or the target was not finite
    candidates: tuple[Candidate, ...]
    learner: str = "auto"
    linear: Linear | None = None
    residual: Residual | None = None
    residual_alpha: float | None = None
    prior: str | None = None  # what the linear fit was pulled towards: "mean" or "pool"
    part: int | None = None  # the part shipped alone
    warnings: tuple[str, ...] = ()

    @property
    def learned(self) -> bool:
        return self.linear is not None

    def to_dict(self, columns: tuple[str, ...]) -> dict[str, object]:
        all_columns = len(self.passthrough) == len(columns) and self.passthrough == tuple(range(len(columns)))
        return {
            "chosen": self.chosen,
            "learner": self.learner,
            "alpha": self.alpha,
            "prior": self.prior,
            "residual_alpha": self.residual_alpha,
            "folds": self.folds,
            "rows": self.rows,
            "dropped_rows": self.dropped,
            "passthrough": "all" if all_columns and columns else [columns[c] for c in self.passthrough],
            "cross_validation": [{"combiner": c.name, "loss": c.loss, **c.scores} for c in self.candidates],
            "warnings": list(self.warnings),
        }


# ---------------------------------------------------------------------------- what the graph computes


def features(task: Task, outputs: list[np.ndarray], rows: np.ndarray, passthrough: tuple[int, ...]) -> np.ndarray:
    """The learned stack's input row in float64, as the graph computes it: [N, d].

    Classifiers: log(max(mean p, EPS)), each part's log(max(p, EPS)), each part's p;
    regressors: each part's prediction; then the passthrough columns.
    """
    n = len(rows)
    blocks: list[np.ndarray] = []
    if task == "classification":
        ps = [o.astype(np.float64) for o in outputs]
        blocks.append(np.log(np.maximum(mean_of(ps), EPS)))
        blocks.extend(np.log(np.maximum(p, EPS)) for p in ps)
        blocks.extend(ps)
    else:
        blocks.extend(o.astype(np.float64).reshape(n, -1) for o in outputs)
    if passthrough:
        blocks.append(rows[:, list(passthrough)].astype(np.float64))
    return np.concatenate(blocks, axis=1)


def mean_of(arrays: list[np.ndarray]) -> np.ndarray:
    """Sum in order, then divide: the order of the graph's Sum and Div."""
    total = arrays[0].copy()
    for a in arrays[1:]:
        total = total + a
    return np.asarray(total / total.dtype.type(len(arrays)))


def apply(model: StackModel, outputs: list[np.ndarray], rows: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """The stack's output: probabilities [N, K] or predictions [N, 1] in `dtype`.

    `mean` and a part alone are computed in `dtype`, as their graph does; the learned stack in float64
    and rounded to `dtype` at the end, as its graph does.
    """
    n = len(rows)
    if model.part is not None:
        return outputs[model.part].astype(dtype).reshape(n, -1)
    if model.linear is None:
        return mean_of([o.astype(dtype).reshape(n, -1) for o in outputs])
    x = features(model.task, outputs, rows, model.passthrough)
    out = model.linear(x)
    if model.residual is not None:
        out = out + model.residual(model.linear.standardised(x))
    return (softmax(out) if model.task == "classification" else out).astype(dtype)


# ---------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class Prior:
    """What the penalty pulls the linear fit towards: x @ weights + intercept, on the raw features."""

    name: str  # "mean" or "pool"
    weights: np.ndarray  # [d, K]
    intercept: float = 0.0


def prior(name: str, task: Task, x: np.ndarray, y: np.ndarray, k: int, models: int) -> Prior:
    """`mean`, or `pool`: the best weighted sum of the log-mean and each part's log-probabilities
    (classifiers; softmax(sum_j c_j log p_j)) or of the parts' predictions plus an intercept (regressors),
    fitted on x, y: a few weights, so it stays steady on a few dozen rows."""
    w = np.zeros((x.shape[1], k))
    if name == "mean":
        if task == "classification":
            w[:k] = np.eye(k)  # softmax(log mean p) = mean p
        else:
            w[:models, 0] = 1.0 / models
        return Prior(name, w)
    if task == "classification":
        blocks = [x[:, k * j: k * (j + 1)] for j in range(models + 1)]  # log mean p, then each log p_j
        weights = fit_pool(blocks, y, k, POOL_ALPHA)
        for j, c in enumerate(weights):
            w[k * j: k * (j + 1)] = c * np.eye(k)
        return Prior(name, w)
    coef, intercept = fit_ridge(x[:, :models] - x[:, :models].mean(axis=0), y.astype(np.float64), POOL_ALPHA,
                                np.full((models, 1), 1.0 / models), np.array([float(y.mean())]))
    w[:models] = coef
    return Prior(name, w, float(intercept[0] - x[:, :models].mean(axis=0) @ coef[:, 0]))


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[~(scale > 1e-12 * np.maximum(1.0, np.abs(mean)))] = 1.0  # constant columns are only centred
    return mean, scale


def fit_linear(task: Task, x: np.ndarray, y: np.ndarray, k: int, alpha: float, towards: Prior,
               start: Linear | None = None) -> Linear:
    """Standardise x, fit with the penalty pulling towards the prior's function."""
    mean, scale = standardise(x)
    z = x - mean  # in place from here: at 1M rows each [N, d] copy is 136 MB
    z /= scale
    w_raw = towards.weights  # the prior's function of x, in standardised coordinates:
    w0, b0 = w_raw * scale[:, None], mean @ w_raw + towards.intercept
    if task == "classification":
        coef, intercept = fit_logistic(z, y, k, alpha, w0, b0, None if start is None else (start.coef, start.intercept))
    else:
        coef, intercept = fit_ridge(z, y.astype(np.float64), alpha, w0, b0)
    return Linear(mean, scale, coef, intercept)


def fit_mlp(task: Task, linear: Linear, x: np.ndarray, y: np.ndarray, alpha: float) -> Residual:
    z = linear.standardised(x)
    return fit_residual(task == "classification", z, y, z @ linear.coef + linear.intercept, alpha)


def predict(task: Task, linear: Linear, x: np.ndarray, residual: Residual | None = None) -> np.ndarray:
    out = linear(x)
    if residual is not None:
        out = out + residual(linear.standardised(x))
    return softmax(out) if task == "classification" else out


# ---------------------------------------------------------------------------- choosing


def fold_ids(y: np.ndarray | None, n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Shuffled k-fold assignment, stratified by class for classifiers (seeded: the same data, the same folds)."""
    order = np.random.default_rng(seed).permutation(n)
    if y is not None:
        order = order[np.argsort(y[order], kind="stable")]
    ids = np.empty(n, dtype=np.int64)
    ids[order] = np.arange(n) % folds
    return ids


def loss(task: Task, out: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row log-loss (classifiers; out = probabilities) or squared error (regressors)."""
    if task == "classification":
        return np.asarray(-np.log(np.clip(out[np.arange(len(y)), y], 1e-15, None)))
    return np.asarray((out[:, 0] - y) ** 2)


def beats(a: Candidate, b: Candidate) -> bool:
    """a's out-of-fold loss is below b's by more than one standard error of their paired difference
    (and by more than rounding: identical predictions differ by 1e-16, with a standard error as small)."""
    diff = a.losses - b.losses
    if len(diff) < 2:
        return False
    return bool(diff.mean() + diff.std(ddof=1) / np.sqrt(len(diff)) < -1e-6 * abs(b.loss))


class TooFewRows(ValueError):
    """Fewer usable rows (finite target, outputs and passthrough cells) than two per fold."""

    def __init__(self, rows: int) -> None:
        super().__init__(f"{rows} usable rows")
        self.rows = rows


def usable_rows(outputs: list[np.ndarray], rows: np.ndarray, y: np.ndarray, passthrough: tuple[int, ...]) -> np.ndarray:
    """Indices of the rows whose target, parts' outputs and passthrough columns are all finite: the rows
    whose features are (log(max(p, EPS)) is finite wherever p is)."""
    ok = np.isfinite(y.astype(np.float64))
    for o in outputs:
        ok &= np.isfinite(o.reshape(len(o), -1)).all(axis=1)
    if passthrough:
        ok &= np.isfinite(rows[:, list(passthrough)]).all(axis=1)
    return np.flatnonzero(ok)


def sample(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """At most `limit` of n row indices: all of them, or a seeded random sample (sorted)."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit]) if n > limit else np.arange(n)


def fit_stack(task: Task, outputs: list[np.ndarray], rows: np.ndarray, y: np.ndarray, names: list[str],
              passthrough: tuple[int, ...], alpha: float | None, folds: int, classes: int = 1,
              learner: str = "auto") -> StackModel:
    """Cross-validate the candidates, choose what ships, and fit it on the usable rows (at most FIT_ROWS).

    `outputs` are the parts' outputs on `rows`; `y` holds class indices (classifiers, `classes` = K)
    or target values (regressors). With `alpha` given, the learned fit is kept over `mean` and the parts.
    """
    k = classes if task == "classification" else 1
    usable = usable_rows(outputs, rows, y, passthrough)
    if len(usable) < 2 * folds:
        raise TooFewRows(len(usable))
    used = usable[sample(len(usable), FIT_ROWS, seed=2)]
    x, y = features(task, [o[used] for o in outputs], rows[used], passthrough), y[used]
    parts = [o[used].astype(np.float64).reshape(len(used), -1) for o in outputs]  # [N, K] or [N, 1]
    n = len(x)  # at least 2 * folds (TooFewRows)
    cv = sample(n, CV_ROWS)
    found = cross_validate(task, x[cv], y[cv], k, (alpha,) if alpha is not None else ALPHAS, folds, len(outputs),
                           learner == "auto")
    stack, mlp = found.stack, found.mlp

    def fixed(name: str, out: np.ndarray) -> Candidate:
        per_row = loss(task, out[cv], y[cv])
        return Candidate(name, float(per_row.mean()), score(task, y[cv], out[cv], k), per_row)

    mean = fixed("mean", mean_of(parts))
    singles = [fixed(name, out) for name, out in zip(names, parts, strict=True)]
    best = stack if alpha is not None or stack.loss < mean.loss else mean
    if mlp is not None and beats(mlp, found.stack_first if best is stack else best):
        best = mlp
    warnings = []
    top = min(singles, key=lambda c: c.loss)
    if top.loss < best.loss:
        clear = beats(top, best)
        if clear and alpha is None:
            warnings.append(f"{top.name} alone beat the stack out of fold by more than one standard error "
                            f"(loss {top.loss:.4g} against {best.loss:.4g}): the merged model is {top.name} alone")
            best = top
        else:
            warnings.append(f"{top.name} alone beat the shipped combiner ({best.name}) out of fold (loss "
                            f"{top.loss:.4g} against {best.loss:.4g}{'' if clear else ', within one standard error'})")
    candidates = (stack, *([mlp] if mlp is not None else []), mean, *singles)
    common = dict(task=task, passthrough=passthrough, chosen=best.name, folds=folds, rows=n, learner=learner,
                  dropped=len(rows) - len(usable), candidates=candidates, warnings=tuple(warnings))
    if best.name in names:
        return StackModel(**common, alpha=None, part=names.index(best.name))  # type: ignore[arg-type]
    if best is mean:
        return StackModel(**common, alpha=None)  # type: ignore[arg-type]
    towards = prior(found.prior, task, x[cv], y[cv], k, len(outputs))  # a few weights: the sample is plenty
    start = fit_linear(task, x[cv], y[cv], k, found.alpha, towards) if n > len(cv) and task == "classification" else None
    linear = fit_linear(task, x, y, k, found.alpha, towards, start)  # few iterations from the sample's fit
    residual = None
    if best is mlp:
        some = sample(n, RESIDUAL_ROWS, seed=1)
        residual = fit_mlp(task, linear, x[some], y[some], found.residual_alpha)
    return StackModel(**common, alpha=found.alpha, prior=found.prior, linear=linear, residual=residual,  # type: ignore[arg-type]
                      residual_alpha=found.residual_alpha if residual is not None else None)


@dataclass(frozen=True)
class Found:
    """What cross-validation found: the linear fit's prior and alpha, its candidate, and the residual MLP's."""

    prior: str
    alpha: float
    stack: Candidate
    mlp: Candidate | None
    stack_first: Candidate  # the linear fit on the MLP's one shuffle, to compare the two row by row
    residual_alpha: float


def cross_validate(task: Task, x: np.ndarray, y: np.ndarray, k: int, alphas: tuple[float, ...], folds: int,
                   models: int, residual: bool) -> Found:
    """Repeated k-fold: the prior and alpha with the lowest out-of-fold loss, then the residual MLP on those fits.

    The pool prior is fitted on each training fold, like the rest: the choice sees no row twice."""
    repeats = REPEATS if len(x) <= SMALL else 1
    splits = [fold_ids(y if task == "classification" else None, len(x), folds, seed=r) for r in range(repeats)]
    settings = [(p, a) for p in PRIORS for a in alphas]
    losses = {s: np.zeros(len(x)) for s in settings}
    outs: dict[tuple[str, float], list[np.ndarray]] = {s: [] for s in settings}
    fits: dict[tuple[int, int, str, float], Linear] = {}
    for r, ids in enumerate(splits):
        oof = {s: np.zeros((len(x), k)) for s in settings}
        for f in range(folds):
            train, test = ids != f, ids == f
            for name in PRIORS:
                towards = prior(name, task, x[train], y[train], k, models)
                start = None
                for a in sorted(alphas, reverse=True):  # warm starts, from the strongest penalty down
                    start = fits[r, f, name, a] = fit_linear(task, x[train], y[train], k, a, towards, start)
                    oof[name, a][test] = predict(task, start, x[test])
        for s in settings:
            losses[s] += loss(task, oof[s], y) / repeats
            outs[s].append(oof[s])
    # ties go to the stronger penalty, then to `mean`
    best = min(settings, key=lambda s: (float(losses[s].mean()), -s[1], PRIORS.index(s[0])))
    stack = Candidate("stack", float(losses[best].mean()), mean_scores(task, y, outs[best], k), losses[best])
    if not residual:
        return Found(*best, stack, None, stack, RESIDUAL_ALPHAS[0])
    ids = splits[0]  # one shuffle for the MLP (30 fits were most of a small merge's time); compared on it
    tried = []
    for strength in RESIDUAL_ALPHAS:
        held = np.zeros((len(x), k))
        for f in range(folds):
            train, test = np.flatnonzero(ids != f), ids == f
            some = train[sample(len(train), RESIDUAL_ROWS, seed=1)]
            linear = fits[0, f, *best]
            held[test] = predict(task, linear, x[test], fit_mlp(task, linear, x[some], y[some], strength))
        per_row = loss(task, held, y)
        tried.append(Candidate("stack+mlp", float(per_row.mean()), mean_scores(task, y, [held], k), per_row))
    mlp_at = min(range(len(tried)), key=lambda i: tried[i].loss)
    first = loss(task, outs[best][0], y)
    return Found(*best, stack, tried[mlp_at], Candidate("stack", float(first.mean()), {}, first), RESIDUAL_ALPHAS[mlp_at])


def mean_scores(task: Task, y: np.ndarray, outs: list[np.ndarray], k: int) -> dict[str, float | None]:
    """Scores of each repeat's out-of-fold predictions, averaged over the repeats."""
    runs = [score(task, y, out, k) for out in outs]
    return {key: None if any(r[key] is None for r in runs) else float(np.mean([r[key] for r in runs]))
            for key in runs[0]}
