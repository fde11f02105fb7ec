"""Question 3: external-data inputs, and two ~1.1 GB models whose merge is over 2 GB.

The weights must go from the input files to the output without becoming Python objects, so the
merge is compared with the I/O floor (onnx.load + onnx.save of both models, in the inputs' own
format; whole processes, as in merge_time.py) and its peak RSS must stay small whatever the
model size (--no-verify).
- two ~200 MB models saved with external data (weights in a .data file beside each);
- two ~1.1 GB single-file models: their merge is larger than protobuf's 2 GiB limit, so it is
  written with external data (<out>.data) automatically.
Free disk is checked first; every file is removed after each run.
"""

from __future__ import annotations

import json
import sys

from common import (
    BUILD,
    REPEATS,
    MiB,
    Pair,
    Row,
    Run,
    best,
    emit,
    free_disk,
    io_floor,
    make_pair,
    merge_cli,
    note,
    ratio,
    ratio_row,
    remove,
    workdir,
)

RSS_LIMIT = 150 * MiB
SMALL = (4096, 3)  # ~200 MB per model
LARGE = (8448, 4)  # 4 x 8448 x 8448 float32 = 1.14 GB per model; merged 2.28 GB > 2 GiB


def measure(pair: Pair, label: str, external_inputs: bool, repeats: int) -> tuple[list[Row], dict[str, object]]:
    out = pair.dir / "merged.onnx"
    floors: list[Run] = []
    calls: list[float] = []
    merges: list[Run] = []
    doc: dict[str, object] = {}
    for i in range(repeats):
        note(f"{label}, round {i + 1}/{repeats}: I/O floor, merge-models")
        seconds, run = io_floor(pair, external=external_inputs)
        floors.append(run)
        calls.append(seconds)
        merges.append(merge_cli(pair, out, "--no-verify", "--json"))
        doc = json.loads(merges[-1].stdout)
        remove(out)
    merge, floor = best([r.seconds for r in merges]), best([r.seconds for r in floors])
    peak = max(r.peak_rss for r in merges)
    files = " + ".join(f"{f['bytes'] / 1e9:.2f} GB" for f in doc["files"])  # type: ignore[index, union-attr]
    size = pair.input_bytes
    rows = [
        ratio_row("3 external data", f"{label}: merge-models / I/O floor", ratio(merges, floors), 0.3,
                  detail=f"2 x {size / 2 / 1e9:.2f} GB inputs -> {files}; best: merge {merge:.2f} s, "
                         f"load+save {floor:.2f} s ({best(calls):.2f} s in the calls)"),
        Row("3 external data", f"{label}: merge peak RSS", peak / MiB, "MiB", "< 150 MiB", peak < RSS_LIMIT,
            detail=f"{peak / size:.3f}x the input bytes (load+save: {max(r.peak_rss for r in floors) / MiB:.0f} MiB)"),
    ]
    return rows, doc


def verified_large(pair: Pair, rounds: int = 2) -> list[Row]:
    """The default (verified) merge of the 1.1 GB pair against --no-verify, and its anonymous memory."""
    out = pair.dir / "merged.onnx"
    verified: list[Run] = []
    plain: list[Run] = []
    for i in range(rounds):
        note(f"2 x 1.1 GB, round {i + 1}/{rounds}: merge (verified), merge --no-verify")
        verified.append(merge_cli(pair, out))
        remove(out)
        plain.append(merge_cli(pair, out, "--no-verify"))
        remove(out)
    anon = max(r.peak_anon for r in verified)
    return [
        ratio_row("3 external data", "2 x 1.1 GB: merge (verified) / --no-verify", ratio(verified, plain), 3.0,
                  detail=f"best: {best([r.seconds for r in verified]):.1f} s vs {best([r.seconds for r in plain]):.1f} s; "
                         f"peak RSS {max(r.peak_rss for r in verified) / MiB:.0f} MiB (mapped weights included)"),
        Row("3 external data", "2 x 1.1 GB: merge (verified) peak anonymous memory", anon / MiB, "MiB", "< 500 MiB",
            anon < 500 * MiB, detail="sampled every ~5 ms"),
    ]


def main() -> list[Row]:
    rows: list[Row] = []
    with workdir("external") as tmp:
        note(f"generating two MLPs with external data (hidden {SMALL[0]}) in {tmp}")
        pair = make_pair(tmp, *SMALL, external=True)
        rows += measure(pair, "2 x 200 MB, external-data inputs", True, REPEATS)[0]

    need = 8 * 10**9  # inputs 2.3 GB, the floor's copies 2.3 GB, the merge 2.3 GB, and some room
    BUILD.mkdir(parents=True, exist_ok=True)
    if free_disk(BUILD) < need:
        note(f"skipping the 2 x 1.1 GB models: {free_disk(BUILD) / 1e9:.1f} GB free, {need / 1e9:.0f} GB needed")
        rows.append(Row("3 external data", "2 x 1.1 GB -> over 2 GB: skipped", 0, "GB", "", False,
                        detail=f"only {free_disk(BUILD) / 1e9:.1f} GB free disk"))
        return rows
    with workdir("large") as tmp:
        note(f"generating two MLPs (hidden {LARGE[0]}, {LARGE[1]} hidden layers) in {tmp}")
        pair = make_pair(tmp, *LARGE)
        large, doc = measure(pair, "2 x 1.1 GB -> over 2 GB", False, 3)
        large += verified_large(pair)
        files = doc["files"]  # type: ignore[index]
        if len(files) != 2 or not str(files[1]["path"]).endswith(".data"):  # type: ignore[index, arg-type]
            print(f"expected an external-data output, got {files}", file=sys.stderr)
            large[0].ok = False
        rows += large
    return rows


if __name__ == "__main__":
    emit(main())
