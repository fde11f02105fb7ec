"""The stack's fits in numpy: ridge, multinomial logistic regression, and a small residual MLP.

All three are penalised least squares or log-loss minimised by the same L-BFGS. The residual MLP
(one tanh layer) is fitted with the linear stack's logits held fixed as an offset, so it only learns
what the linear fit leaves: interactions between the parts' outputs and the columns. It is written in
numpy rather than taken from scikit-learn because scikit-learn's MLP and boosting cannot take an
offset, and its graph is three ONNX nodes (MatMul, Add, Tanh) per layer, with no converter needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]
HIDDEN = 16  # the residual MLP's width: enough for a product of two columns, small enough for a few hundred rows


@dataclass(frozen=True)
class Residual:
    """tanh(z @ w1 + b1) @ w2 + b2, added to the linear stack's logits (or prediction)."""

    w1: np.ndarray  # [d, H]
    b1: np.ndarray  # [H]
    w2: np.ndarray  # [H, K]
    b2: np.ndarray  # [K]

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(np.tanh(z @ self.w1 + self.b1) @ self.w2 + self.b2)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def fit_logistic(z: np.ndarray, y: np.ndarray, k: int, alpha: float, w0: np.ndarray, b0: np.ndarray,
                 start: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression: min sum log-loss + alpha/2 (||W - w0||^2 + ||b - b0||^2), by L-BFGS."""
    n, d = z.shape
    onehot = np.eye(k)[y]

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * k].reshape(d, k), theta[d * k:]
        logits = z @ w + b
        value, r = cross_entropy(logits, onehot)
        dw, db = w - w0, b - b0
        value += 0.5 * alpha * (float(np.sum(dw * dw)) + float(np.sum(db * db)))
        return value, np.concatenate([(z.T @ r + alpha * dw).ravel(), r.sum(axis=0) + alpha * db])

    w_start, b_start = (w0, b0) if start is None else start
    theta = lbfgs(loss_grad, np.concatenate([w_start.ravel(), b_start]), tolerance=1e-7 * max(n, 1))
    return theta[: d * k].reshape(d, k), theta[d * k:]


def fit_pool(blocks: list[np.ndarray], y: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """Weights c >= 0, sum 1, of softmax(sum_j c_j blocks_j): a log-linear pool of log-probability blocks [N, K].

    c = softmax(theta); min sum log-loss + alpha/2 ||theta||^2 by L-BFGS (the penalty keeps theta finite
    when one block separates the rows). Convex weights cannot make the pool sharper than its sharpest block.
    """
    onehot = np.eye(k)[y]

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        c = softmax(theta[None, :])[0]
        logits = sum((cj * b for cj, b in zip(c, blocks, strict=True)), np.zeros_like(blocks[0]))
        value, r = cross_entropy(logits, onehot)
        g = np.array([float(np.sum(r * b)) for b in blocks])
        return value + 0.5 * alpha * float(theta @ theta), c * (g - c @ g) + alpha * theta

    theta = lbfgs(loss_grad, np.zeros(len(blocks)), tolerance=1e-7 * max(len(y), 1))
    return np.asarray(softmax(theta[None, :])[0])


def cross_entropy(logits: np.ndarray, onehot: np.ndarray) -> tuple[float, np.ndarray]:
    """Summed log-loss of softmax(logits) and its gradient with respect to the logits."""
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    value = float(np.sum(lse - np.sum(logits * onehot, axis=1)))
    return value, np.exp(logits - lse[:, None]) - onehot


def fit_ridge(z: np.ndarray, y: np.ndarray, alpha: float, w0: np.ndarray,
              b0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression: min ||y - z W - b||^2 + alpha (||W - w0||^2 + (b - b0)^2), for centred columns of z.

    From the sufficient statistics z'z and z'y: one pass over the rows, whatever their number.
    """
    d = z.shape[1]
    w = np.linalg.solve(z.T @ z + alpha * np.eye(d), z.T @ y[:, None] + alpha * w0)
    b = (y.sum() + alpha * b0) / (len(y) + alpha)
    return w, np.atleast_1d(b)


def fit_residual(classify: bool, z: np.ndarray, y: np.ndarray, offset: np.ndarray, alpha: float,
                 seed: int = 0, iterations: int = 100) -> Residual:
    """The MLP that best corrects `offset` (the linear stack's logits [N, K] or predictions [N, 1]).

    Classifiers minimise the log-loss of softmax(offset + mlp(z)); regressors the squared error of
    offset + mlp(z), fitted on the residual scaled to unit variance (so one alpha grid fits both)
    and scaled back into w2 and b2. Penalty alpha/2 (||w1||^2 + ||w2||^2); w2 starts at 0, so the
    fit starts from the linear stack itself.
    """
    n, d = z.shape
    k = offset.shape[1]
    rng = np.random.default_rng(seed)
    sizes = (d * HIDDEN, HIDDEN, HIDDEN * k, k)
    cuts = np.cumsum(sizes)[:-1]
    if classify:
        onehot = np.eye(k)[y]
        unit = 1.0
    else:
        gap = y.reshape(n, 1) - offset
        unit = float(gap.std()) or 1.0
        gap = gap / unit

    def unpack(theta: np.ndarray) -> tuple[np.ndarray, ...]:
        w1, b1, w2, b2 = np.split(theta, cuts)
        return w1.reshape(d, HIDDEN), b1, w2.reshape(HIDDEN, k), b2

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w1, b1, w2, b2 = unpack(theta)
        h = np.tanh(z @ w1 + b1)
        f = h @ w2 + b2
        if classify:
            value, r = cross_entropy(offset + f, onehot)
        else:
            r = f - gap
            value = 0.5 * float(np.sum(r * r))
        value += 0.5 * alpha * (float(np.sum(w1 * w1)) + float(np.sum(w2 * w2)))
        da = (r @ w2.T) * (1.0 - h * h)
        return value, np.concatenate([(z.T @ da + alpha * w1).ravel(), da.sum(axis=0),
                                      (h.T @ r + alpha * w2).ravel(), r.sum(axis=0)])

    start = np.concatenate([(rng.standard_normal((d, HIDDEN)) / np.sqrt(max(d, 1))).ravel(),
                            rng.standard_normal(HIDDEN) * 0.5, np.zeros(HIDDEN * k), np.zeros(k)])
    w1, b1, w2, b2 = unpack(lbfgs(loss_grad, start, tolerance=1e-6 * max(n, 1), iterations=iterations))
    return Residual(w1, b1, w2 * unit, b2 * unit)


def lbfgs(fun: Objective, x: np.ndarray, tolerance: float, memory: int = 10, iterations: int = 1000) -> np.ndarray:
    """Minimise a smooth function given as x -> (value, gradient): L-BFGS, backtracking line search."""
    value, grad = fun(x)
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []  # (s, y, 1 / y.s)
    for _ in range(iterations):
        if np.max(np.abs(grad)) <= tolerance:
            break
        q = grad.copy()
        factors = []
        for s, yv, rho in reversed(steps):
            a = rho * float(s @ q)
            q -= a * yv
            factors.append(a)
        if steps:
            s, yv, _ = steps[-1]
            q *= float(s @ yv) / float(yv @ yv)
        for (s, yv, rho), a in zip(steps, reversed(factors), strict=True):
            q += (a - rho * float(yv @ q)) * s
        direction, slope = -q, -float(grad @ q)
        if slope >= 0:  # not a descent direction: start again from steepest descent
            steps.clear()
            direction, slope = -grad, -float(grad @ grad)
        step = 1.0 if steps else min(1.0, 1.0 / max(float(np.max(np.abs(grad))), 1e-12))
        while True:
            candidate = x + step * direction
            new_value, new_grad = fun(candidate)
            if new_value <= value + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        if step < 1e-12:
            break
        s, yv = candidate - x, new_grad - grad
        if float(s @ yv) > 1e-12:
            steps.append((s, yv, 1.0 / float(s @ yv)))
            del steps[:-memory]
        improvement = value - new_value
        x, value, grad = candidate, new_value, new_grad
        if improvement <= 1e-12 * max(abs(value), 1.0):
            break
    return x
