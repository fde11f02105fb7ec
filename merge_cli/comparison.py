"""Prove that the merged file computes what the original files plus the combiner compute: every output
compared within atol/rtol on the same rows (runtime.py runs the models)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .draws import finite_records
from .errors import MergeError
from .parts import Part
from .runtime import batch_size, early_merged_session, in_chunks, run_merged, run_parts


@dataclass
class OutputCheck:
    name: str
    shape: list[int]
    max_abs: float = 0.0
    max_rel: float = 0.0
    mismatches: int = 0  # label or integer values that differ
    near_ties: int = 0  # label differences where the expected probabilities tie within tolerance
    nonfinite: int = 0  # NaN/Inf values on rows whose inputs were finite
    passed: bool = True
    problem: str | None = None


@dataclass(frozen=True)
class Outputs:
    """What the models gave on one set of rows, kept so that no model runs twice on the same rows:
    the scores read verification's runs again (the --data rows are verification's last batch)."""

    rows: np.ndarray  # the merged model's input rows
    merged: dict[str, np.ndarray]
    parts: tuple[dict[str, np.ndarray], ...] | None  # None: the parts were fed other rows (gate fills NaN)

    def last(self, rows: np.ndarray) -> Outputs | None:
        """These outputs cut to their last len(rows) rows, when those are `rows`; else None."""
        n = len(rows)
        if n > len(self.rows) or self.rows.shape[1:] != rows.shape[1:] or self.rows.dtype != rows.dtype:
            return None
        if not np.array_equal(self.rows[len(self.rows) - n:], rows, equal_nan=rows.dtype.kind == "f"):
            return None
        start = len(self.rows) - n

        def cut(values: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
            if not all(v.ndim and len(v) == len(self.rows) for v in values.values()):
                return None  # an output without one value per row cannot be cut
            return {k: v[start:] for k, v in values.items()}

        merged = cut(self.merged)
        parts = None if self.parts is None else [cut(p) for p in self.parts]
        if merged is None or (parts is not None and None in parts):
            return None
        return Outputs(rows, merged, None if parts is None else tuple(p for p in parts if p is not None))


@dataclass
class VerifyReport:
    rows: int
    atol: float
    rtol: float
    outputs: list[OutputCheck] = field(default_factory=list)
    seconds: float = 0.0
    runs: Outputs | None = field(default=None, repr=False, compare=False)  # not part of the report: for the scores
    tolerance_from: str | None = None  # why atol/rtol are above the ones asked for (verification.fitted_tolerances)
    nonfinite_models: tuple[str, ...] = ()  # original models whose own outputs are NaN/inf on finite input rows

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "rows": self.rows,
            "atol": self.atol,
            "rtol": self.rtol,
            "tolerance_from": self.tolerance_from,
            "max_abs_error": self.max_abs,
            "max_rel_error": self.max_rel,
            "would_pass_with": {"atol": self.max_abs, "rtol": self.max_rel},
            "outputs": [asdict(o) for o in self.outputs],
            "seconds": round(self.seconds, 4),
        }

    def failure(self) -> str:
        bad = [o for o in self.outputs if not o.passed]
        parts = []
        for o in bad:
            if o.problem:
                parts.append(f"{o.name}: {o.problem}")
            else:
                parts.append(f"{o.name}: max abs error {o.max_abs:.3g}, max rel error {o.max_rel:.3g}")
        why = f"; {self.tolerance_from}" if self.tolerance_from else ""
        if any(o.nonfinite for o in bad) and self.nonfinite_models:
            return (f"cannot be verified: {'; '.join(parts)}, where {' and '.join(self.nonfinite_models)} itself "
                    "gives NaN or inf (NaN never counts as a match)")
        text = "merged outputs differ from the parts plus the combiner: " + "; ".join(parts)
        if all(o.problem is None for o in bad):  # only then would other tolerances change the verdict
            return text + (f" (atol={self.atol:g}, rtol={self.rtol:g}{why}; would pass with "
                           f"atol={self.max_abs:.3g} or rtol={self.max_rel:.3g})")
        return text + f" (atol={self.atol:g}, rtol={self.rtol:g}{why})"

    def hint(self) -> str:
        if any(o.nonfinite for o in self.outputs if not o.passed) and self.nonfinite_models:
            return (f"the random rows include values {' and '.join(self.nonfinite_models)} cannot take (a log or "
                    "square root of a column that must be positive?); merge with --no-verify if that is expected")
        if all(o.problem is None for o in self.outputs if not o.passed):
            return "nothing was written; raise --atol/--rtol if the difference is acceptable"
        return "nothing was written"


def compare(name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float,
            finite_rows: np.ndarray, ties: np.ndarray | None = None) -> OutputCheck:
    check = OutputCheck(name, list(want.shape))
    if got.shape != want.shape:
        check.passed = False
        check.problem = f"shape {list(got.shape)}, expected {list(want.shape)}"
        return check
    if want.dtype.kind not in "fc":
        differ = got != want
        check.mismatches = int(differ.sum())
        if ties is not None and check.mismatches:
            check.near_ties = int((differ & ties).sum())
        if check.mismatches > check.near_ties:
            check.passed = False
            check.problem = f"{check.mismatches - check.near_ties} of {want.size} values differ"
        return check
    g, w = got.astype(np.float64), want.astype(np.float64)
    if g.ndim and g.shape[0] == len(finite_rows):
        rows_mask = np.broadcast_to(finite_rows.reshape((-1,) + (1,) * (g.ndim - 1)), g.shape)
    else:  # not one value per row (e.g. a scalar from a user's combiner graph): finite if every row is
        rows_mask = np.full(g.shape, bool(finite_rows.all()))
    g_bad, w_bad = ~np.isfinite(g), ~np.isfinite(w)
    # Non-finite values never match on rows whose inputs were finite; elsewhere NaN must match NaN.
    check.nonfinite = int((g_bad & rows_mask).sum())
    pattern_differs = int(((g_bad != w_bad) & ~rows_mask).sum())
    both = ~g_bad & ~w_bad
    if both.any():
        diff = np.abs(g[both] - w[both])
        scale = np.abs(w[both])
        check.max_abs = float(diff.max())
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(diff == 0, 0.0, diff / scale)
        check.max_rel = float(rel.max())
        within = bool(np.all(diff <= atol + rtol * scale))
    else:
        within = True
    if check.nonfinite:
        check.passed = False
        check.problem = f"{check.nonfinite} non-finite values on finite input rows"
    elif pattern_differs:
        check.passed = False
        check.problem = f"{pattern_differs} values are non-finite in one result but not the other"
    else:
        check.passed = within
    return check


def near_ties(probabilities: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Rows whose two highest probabilities are within tolerance: argmax there may go either way."""
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        return np.zeros(len(probabilities), dtype=bool)
    top = np.sort(probabilities.astype(np.float64), axis=1)[:, -2:]
    return (top[:, 1] - top[:, 0]) <= 2 * (atol + rtol * np.abs(top[:, 1]))


# ---------------------------------------------------------------------------- the whole check


@dataclass(frozen=True)
class PartRuns:
    """Each ORIGINAL file run once on the verification rows: what the merged file is checked against.

    Made apart from the merged file's run so that it can be made while the merged file is written."""

    rows: np.ndarray  # the merged model's input rows (every batch, as one set)
    outputs: tuple[dict[str, np.ndarray], ...]
    fed_other_rows: bool  # the parts were fed other rows (gate fills NaN cells first)
    seconds: float


def run_references(parts: list[Part], rows: np.ndarray,
                   part_rows: Callable[[np.ndarray], np.ndarray] | None = None) -> PartRuns:
    """Run each original file on the verification rows (in pieces: runtime.in_chunks).

    `part_rows` turns each piece into what the parts are fed (gate fills NaN cells before the parts run).
    Each session is closed before the next opens: only one part's weights are mapped at a time.
    """
    start = time.perf_counter()
    outputs = run_parts(parts, rows, part_rows)
    return PartRuns(rows, tuple(outputs), part_rows is not None, time.perf_counter() - start)


def verify(
    merged: Path,
    parts: list[Part],
    expected_of: Callable[[list[dict[str, np.ndarray]], np.ndarray], dict[str, np.ndarray]],
    references: Callable[[], PartRuns],
    atol: float,
    rtol: float,
) -> VerifyReport:
    """Run the merged file on the rows the parts ran on; compare with `expected_of(part outputs)`.

    `references()` gives the parts' runs (run_references, maybe still running on another thread: one
    that onnxruntime cannot load is a bad input, not a failed merge). A merged file of light weights
    opens meanwhile; a heavy one once the parts' sessions are closed (runtime.OPEN_EARLY_UP_TO).
    The report's time is both runs'.
    """
    start = time.perf_counter()
    early = early_merged_session(merged)
    runs = references()
    if isinstance(early, MergeError):
        raise early
    rows, part_outputs = runs.rows, list(runs.outputs)
    chunk = batch_size(parts)

    def expected_piece(index: np.ndarray) -> dict[str, np.ndarray]:
        pieces = [{k: v[index] if v.ndim and len(v) == len(rows) else v for k, v in o.items()} for o in part_outputs]
        return expected_of(pieces, rows[index])

    # the combiner's reference runs in the same pieces (a user's combiner graph may fix the batch too)
    expected = in_chunks(expected_piece, np.arange(len(rows)), chunk)
    shape_problems: dict[str, str] = {}
    got = run_merged(merged, rows, chunk, shape_problems, early)
    finite_rows = finite_records(rows)
    ties = near_ties(expected["probabilities"], atol, rtol) if "probabilities" in expected else None
    checks = []
    for name in got:
        if name not in expected:
            continue
        check = compare(name, got[name], np.asarray(expected[name]), atol, rtol, finite_rows,
                        ties if name == "label" else None)
        if name in shape_problems and check.passed:
            check.passed, check.problem = False, shape_problems[name]
        checks.append(check)
    outputs = Outputs(rows, got, None if runs.fed_other_rows else runs.outputs)
    nonfinite = tuple(p.name for p, o in zip(parts, part_outputs, strict=True)
                      if not finite_where(o[p.head.name], finite_rows))
    return VerifyReport(len(rows), atol, rtol, checks, runs.seconds + time.perf_counter() - start, outputs,
                        nonfinite_models=nonfinite)


def finite_where(values: np.ndarray, finite_rows: np.ndarray) -> bool:
    """Every value on the rows whose inputs were finite is finite (non-float values always are)."""
    if values.dtype.kind not in "fc":
        return True
    if not values.ndim or len(values) != len(finite_rows):
        return bool(np.isfinite(values).all()) or not finite_rows.all()
    return bool(np.isfinite(values[finite_rows]).all())
