"""Question 5: what verification costs at its default settings, as a ratio to the merge itself.

The same ~200 MB pair as question 1 is merged with `--no-verify` and with the default
verification (onnxruntime loads the merged file and both original files and runs 256 rows),
in interleaved rounds; the verify stage's own time comes from the `--json` report.
"""

from __future__ import annotations

import json

from common import REPEATS, Row, best, emit, make_pair, merge_cli, note, remove, workdir

HIDDEN, LAYERS = 4096, 3


def main() -> list[Row]:
    with workdir("verify") as tmp:
        note(f"generating two MLPs (hidden {HIDDEN}, {LAYERS} hidden layers) in {tmp}")
        pair = make_pair(tmp, HIDDEN, LAYERS)
        out = tmp / "merged.onnx"
        plain, verified, stage = [], [], []
        for i in range(REPEATS):
            note(f"round {i + 1}/{REPEATS}: merge --no-verify, merge (verified)")
            plain.append(merge_cli(pair, out, "--no-verify").seconds)
            remove(out)
            run = merge_cli(pair, out, "--json")
            verified.append(run.seconds)
            stage.append(json.loads(run.stdout)["stages"]["verify"])
            remove(out)
        merge, full, check = best(plain), best(verified), best(stage)
        return [
            Row("5 verification", "merge with verification / merge --no-verify", full / merge, "x",
                detail=f"{full:.2f} s vs {merge:.2f} s (whole processes; 256 random rows)"),
            Row("5 verification", "verify stage / merge --no-verify", check / merge, "x",
                detail=f"verify stage {check:.2f} s: onnxruntime loads the merged file and both sources"),
        ]


if __name__ == "__main__":
    emit(main())
