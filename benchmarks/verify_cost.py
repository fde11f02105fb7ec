"""Question 5: what verification costs at its default settings, as a ratio to the merge itself.

The same ~200 MB pair as question 1 is merged with `--no-verify` and with the default
verification (onnxruntime loads the merged file and both original files and runs 256 rows),
in interleaved rounds, each at its best; the verify stage's own time comes from the `--json` report.
"""

from __future__ import annotations

import json

from common import MiB, Row, Run, best, emit, make_pair, merge_cli, note, ratio, remove, workdir

HIDDEN, LAYERS = 4096, 3
ROUNDS = 3  # a verified merge takes several seconds


def main() -> list[Row]:
    with workdir("verify") as tmp:
        note(f"generating two MLPs (hidden {HIDDEN}, {LAYERS} hidden layers) in {tmp}")
        pair = make_pair(tmp, HIDDEN, LAYERS)
        out = tmp / "merged.onnx"
        plain: list[Run] = []
        verified: list[Run] = []
        stage = []
        for i in range(ROUNDS):
            note(f"round {i + 1}/{ROUNDS}: merge --no-verify, merge (verified)")
            plain.append(merge_cli(pair, out, "--no-verify"))
            remove(out)
            verified.append(merge_cli(pair, out, "--json"))
            stage.append(json.loads(verified[-1].stdout)["stages"]["verify"])
            remove(out)
        merge, full = best([r.seconds for r in plain]), best([r.seconds for r in verified])
        check = best(stage)
        return [
            Row("5 verification", "merge with verification / merge --no-verify", ratio(verified, plain), "x",
                detail=f"best {full:.2f} s vs {merge:.2f} s (whole processes; 256 random rows)"),
            Row("5 verification", "verify stage / merge --no-verify",
                check / merge, "x",
                detail=f"verify stage {check:.2f} s at best: onnxruntime loads the merged file and both sources; "
                       f"peak RSS {max(r.peak_rss for r in verified) / MiB:.0f} MiB vs "
                       f"{max(r.peak_rss for r in plain) / MiB:.0f} MiB"),
        ]


if __name__ == "__main__":
    emit(main())
