"""Questions 1 and 2: merge time against the I/O floor and onnx.compose; peak memory of the merge.

Two generated MLPs of ~200 MB float32 weights each are merged (mean combiner, --no-verify) by the
`merge-models` process. Side by side, in the same run and interleaved with it, two Python
processes do the same I/O the usual way:
- the I/O floor: onnx.load of both models + onnx.save of both;
- the onnx.compose way: load both, compose.add_prefix each, compose.merge_models with a router
  model (Gather per model) and a combiner model (Mean), save.
Every side is timed as a whole process (interpreter start and imports included), in interleaved
rounds, each at its best; the floor's load+save calls alone are shown too.
Peak RSS is each process's own, from /usr/bin/time.
"""

from __future__ import annotations

from common import (
    REPEATS,
    MiB,
    Row,
    Run,
    best,
    compose_way,
    emit,
    io_floor,
    make_pair,
    merge_cli,
    note,
    ratio,
    ratio_row,
    remove,
    workdir,
)

HIDDEN, LAYERS = 4096, 3  # 3 x 4096 x 4096 float32 = 201 MB per model


def main() -> list[Row]:
    with workdir("merge") as tmp:
        note(f"generating two MLPs (hidden {HIDDEN}, {LAYERS} hidden layers) in {tmp}")
        pair = make_pair(tmp, HIDDEN, LAYERS)
        out = tmp / "merged.onnx"
        floors: list[Run] = []
        calls: list[float] = []  # the floor's load+save calls alone, without its interpreter and imports
        merges: list[Run] = []
        composes: list[Run] = []
        for i in range(REPEATS):
            note(f"round {i + 1}/{REPEATS}: I/O floor, merge-models" + (", onnx.compose" if i < 2 else ""))
            seconds, run = io_floor(pair)
            floors.append(run)
            calls.append(seconds)
            merges.append(merge_cli(pair, out, "--no-verify"))
            remove(out)
            if i < 2:  # the slow one: two rounds are enough
                composes.append(compose_way(pair, tmp / "composed.onnx")[1])
        size = pair.input_bytes
        merge, floor, compose = (best([r.seconds for r in runs]) for runs in (merges, floors, composes))
        peak = max(r.peak_rss for r in merges)
        return [
            ratio_row("1 merge time", "merge-models --no-verify / I/O floor", ratio(merges, floors), 0.4,
                      detail=f"2 x {size / 2 / 1e6:.0f} MB inputs; best: merge {merge:.2f} s, load+save {floor:.2f} s "
                             f"({best(calls):.2f} s in the calls)"),
            ratio_row("1 merge time", "onnx.compose / merge-models", ratio(composes, merges), 5, at_most=False,
                      detail=f"best: onnx.compose {compose:.2f} s (load, add_prefix, merge_models x3, save)"),
            ratio_row("2 peak memory", "merge peak RSS / input bytes", peak / size, 0.25,
                      detail=f"{peak / MiB:.0f} MiB for {size / MiB:.0f} MiB of inputs (load+save: "
                             f"{max(r.peak_rss for r in floors) / MiB:.0f} MiB, onnx.compose: "
                             f"{max(r.peak_rss for r in composes) / MiB:.0f} MiB)"),
        ]


if __name__ == "__main__":
    emit(main())
