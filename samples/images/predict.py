"""Run the merged image model on held-out digits: `python samples/images/predict.py merged.onnx rows.npz`.

rows.npz holds one array per merged input (`image` [N, 1, 8, 8], `grid` [N, 16]) and the labels `y`.
Prints the merged model's accuracy next to each part's own, when it was merged with --keep-outputs.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort


def main(model_path: str, rows_path: str) -> None:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    with np.load(rows_path) as rows:
        feed = {i.name: rows[i.name] for i in session.get_inputs()}
        y = rows["y"]
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, feed), strict=True))
    for name in names:
        if name.endswith("/probabilities"):
            print(f"{name.split('/')[0]:>10} alone: accuracy {np.mean(np.argmax(out[name], axis=1) == y):.3f}")
    print(f"merged model accuracy on {len(y)} held-out images: {np.mean(out['label'] == y):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
