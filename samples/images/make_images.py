"""Train the image sample: two small CNNs on the 8x8 digit images and a tabular model on ink statistics.

scikit-learn's digits (1797 real 8x8 images, labels 0-9): two torch CNNs read the whole image
[N, 1, 8, 8] (one exported with torch.onnx's classic exporter, one with dynamo), and a scaled
logistic regression (skl2onnx) reads a table of 16 columns: the mean ink of each cell of a 4x4 grid
over the same image (cell_0_0 top left .. cell_3_3 bottom right). All three are trained on the first
1200 images; the other 597 go to rows.npz (one array per merged input: `image`, `grid`, and the
labels `y`), so the merged model is scored on images none of the parts has seen.

    pip install torch==2.13.0 onnxscript    # in a throwaway venv: the package never needs torch
    python samples/images/make_images.py    # rewrites *.onnx and rows.npz here
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TRAIN = 1200
CELLS = tuple(f"cell_{r}_{c}" for r in range(4) for c in range(4))


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images [N, 1, 8, 8] (ink 0-16), the mean ink of their 4x4 grid cells [N, 16] and the labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    stats = (data.images / 16.0).reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16)
    images = data.images.reshape(-1, 1, 8, 8).astype(np.float32)
    return images, stats.astype(np.float32), data.target.astype(np.int64)


def train_cnn(body: object, images: np.ndarray, labels: np.ndarray) -> object:
    import torch
    from torch import nn

    class Classifier(nn.Module):
        """Ink scaled to 0-1 inside the model, class probabilities out: what users export."""

        def __init__(self, body: nn.Module) -> None:
            super().__init__()
            self.body = body

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.body(image / 16.0), dim=1)

    assert isinstance(body, nn.Module)
    x, y = torch.tensor(images), torch.tensor(labels)
    opt = torch.optim.Adam(body.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(body(x / 16.0), y).backward()
        opt.step()
    return Classifier(body).eval()


def main() -> None:
    import torch
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from torch import nn

    torch.manual_seed(0)
    images, stats, labels = digits()
    train = slice(0, TRAIN)
    example = (torch.tensor(images[:4]),)

    small = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(96, 10))
    model = train_cnn(small, images[train], labels[train])
    torch.onnx.export(model, example, str(HERE / "cnn_small.onnx"), dynamo=False, input_names=["image"],
                      output_names=["probabilities"], dynamic_axes={"image": {0: "N"}, "probabilities": {0: "N"}})
    deep = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(128, 10))
    model = train_cnn(deep, images[train], labels[train])
    torch.onnx.export(model, example, str(HERE / "cnn_deep.onnx"), dynamo=True, external_data=False,
                      input_names=["image"], output_names=["probabilities"],
                      dynamic_shapes={"image": {0: torch.export.Dim("N")}})

    tabular = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(stats[train], labels[train])
    onx = to_onnx(tabular, stats[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
    (HERE / "grid.onnx").write_bytes(onx.SerializeToString(deterministic=True))

    held = slice(TRAIN, None)
    np.savez_compressed(HERE / "rows.npz", image=images[held], grid=stats[held], y=labels[held])
    for name in ("cnn_small.onnx", "cnn_deep.onnx", "grid.onnx", "rows.npz"):
        print(f"{name}: {(HERE / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
