"""Run every benchmark (or the ones named on the command line) and print one table of ratios.

    make bench                                   # all of them
    .venv/bin/python benchmarks/run_all.py startup inference
    BENCH_REPEATS=9 make bench                   # more rounds per measurement (default 5)

Each script runs in its own process and can also be run alone (`python benchmarks/merge_time.py`).
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BUILD, PYTHON, REPEATS, Row, machine, print_table

SCRIPTS = ["startup", "merge_time", "default_path", "external_data", "inference", "data_read", "stack_rows", "scaling"]


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}", file=sys.stderr)
        return 2
    here = Path(__file__).resolve().parent
    BUILD.mkdir(parents=True, exist_ok=True)
    print(f"merge-models benchmarks on {machine()}; every time is the best of several interleaved rounds "
          f"({REPEATS} for whole processes)", flush=True)
    rows: list[Row] = []
    start = time.perf_counter()
    with tempfile.NamedTemporaryFile(suffix=".jsonl", dir=BUILD) as results:
        env = {**os.environ, "BENCH_JSON": results.name}
        for name in names or SCRIPTS:
            print(f"\n## {name}", flush=True)
            code = subprocess.run([PYTHON, str(here / f"{name}.py")], cwd=here, env=env).returncode
            if code != 0:
                rows.append(Row(name, "the benchmark failed", code, "exit code", "= 0", False))
        rows = [Row(**json.loads(line)) for line in Path(results.name).read_text().splitlines()] + rows
    print(f"\n## all results ({time.perf_counter() - start:.0f} s; {machine()})\n", flush=True)
    print_table(rows)
    missed = [r for r in rows if r.ok is False]
    if missed:
        print(f"\n{len(missed)} target(s) missed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
