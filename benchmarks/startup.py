"""Question 6: start-up. `merge-models --help` must answer within 0.2 s: onnx, onnxruntime (and numpy)
are imported only by the commands that need them.

Measured: the wall time of the console script (best of several runs) next to a bare interpreter,
and `python -X importtime` of the same commands, to see which packages they import and what
typer itself costs (typer 0.29 builds its parameter parsers with pydantic when a command runs).
"""

from __future__ import annotations

import re

from common import MERGE_MODELS, PYTHON, Row, emit, note, run_child

HEAVY = ("onnx", "onnxruntime", "numpy")
RUNS = 7


def wall(argv: list[str]) -> float:
    return min(run_child(argv).seconds for _ in range(RUNS))


def imports(args: list[str]) -> dict[str, int]:
    """Module -> cumulative import microseconds, from -X importtime (best of a few runs)."""
    cost: dict[str, int] = {}
    for _ in range(3):
        run = run_child([PYTHON, "-X", "importtime", "-m", "merge_cli", *args])
        seen: dict[str, int] = {}
        for line in run.stderr.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)", line)
            if m:
                seen[m.group(2)] = max(seen.get(m.group(2), 0), int(m.group(1)))
        cost = {k: min(v, cost.get(k, v)) for k, v in seen.items()}
    return cost


def main() -> list[Row]:
    note("timing merge-models --help, merge-models merge --help and a bare interpreter")
    bare = wall([PYTHON, "-c", "pass"])
    rows = []
    for args in (["--help"], ["merge", "--help"]):
        seconds = wall([MERGE_MODELS, *args])
        cost = imports(args)
        heavy = [m for m in HEAVY if m in cost]
        command = " ".join(["merge-models", *args])
        adapters = cost.get("typer._adapters", 0)
        rows.append(Row("6 start-up", f"`{command}`", seconds, "s", "<= 0.2 s", seconds <= 0.2,
                        detail=f"bare python {bare:.3f} s; imports: typer {cost.get('typer', 0) / 1e3:.0f} ms"
                               + (f", then its pydantic parameter adapters {adapters / 1e3:.0f} ms" if adapters else "")))
        rows.append(Row("6 start-up", f"`{command}`: onnx/onnxruntime/numpy imported", len(heavy), "modules",
                        "= 0", not heavy, detail=", ".join(heavy) or "none"))
    return rows


if __name__ == "__main__":
    emit(main())
