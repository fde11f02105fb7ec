"""Questions 1 and 2: merge time against the I/O floor and onnx.compose; peak memory of the merge.

Two generated MLPs of ~200 MB float32 weights each are merged (mean combiner, --no-verify) by the
`merge-models` process, timed whole (interpreter start and imports included). Side by side, in
the same run and interleaved with it:
- the I/O floor: onnx.load of both models + onnx.save of both (timed inside its process, so its
  interpreter start is not counted: the floor is the harder to beat);
- the onnx.compose way: load both, compose.add_prefix each, compose.merge_models with a router
  model (Gather per model) and a combiner model (Mean), save (timed the same way).
Peak RSS comes from wait4() on the merge process alone.
"""

from __future__ import annotations

from common import (
    REPEATS,
    MiB,
    Row,
    best,
    compose_way,
    emit,
    io_floor,
    make_pair,
    merge_cli,
    note,
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
        floors, floor_procs, merges, rss, composes, compose_rss = [], [], [], [], [], []
        for i in range(REPEATS):
            note(f"round {i + 1}/{REPEATS}: I/O floor, merge-models" + (", onnx.compose" if i < 2 else ""))
            seconds, frun = io_floor(pair)
            floors.append(seconds)
            floor_procs.append(frun.seconds)
            run = merge_cli(pair, out, "--no-verify")
            merges.append(run.seconds)
            rss.append(run.peak_rss)
            remove(out)
            if i < 2:  # the slow one: two rounds are enough to see its best
                seconds, crun = compose_way(pair, tmp / "composed.onnx")
                composes.append(seconds)
                compose_rss.append(crun.peak_rss)
        size = pair.input_bytes
        floor, merge, compose = best(floors), best(merges), best(composes)
        mb = f"2 x {size / 2 / 1e6:.0f} MB inputs"
        return [
            ratio_row("1 merge time", "merge-models / I/O floor", merge / floor, 0.6,
                      detail=f"{mb}: merge {merge:.2f} s (whole process); load+save {floor:.2f} s "
                             f"(calls alone; {best(floor_procs):.2f} s as a process)"),
            ratio_row("1 merge time", "onnx.compose / merge-models", compose / merge, 5, at_most=False,
                      detail=f"onnx.compose {compose:.2f} s (load, add_prefix, merge_models x3, save)"),
            ratio_row("2 peak memory", "merge peak RSS / input bytes", min(rss) / size, 0.25,
                      detail=f"{min(rss) / MiB:.0f} MiB for {size / MiB:.0f} MiB of inputs "
                             f"(onnx.compose: {min(compose_rss) / MiB:.0f} MiB)"),
        ]


if __name__ == "__main__":
    emit(main())
