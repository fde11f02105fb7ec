"""The typed-input fixtures are what make_fixtures.TYPED says: their inputs, dtypes, converters, and they learned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from make_fixtures import TYPED, TYPED_INPUTS, typed_data, typed_feed

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures"
ORT_TYPE = {"float32": "tensor(float)", "int64": "tensor(int64)", "string": "tensor(string)"}
PRODUCERS = {"skl2onnx": "skl2onnx", "torch": "pytorch"}


def _source_dtype(dataset: str, source: str | tuple[str, ...]) -> str:
    tables = TYPED_INPUTS[dataset]
    if isinstance(source, str):
        return tables[source][0]
    return next(dtype for dtype, columns in tables.values() if columns is not None and source[0] in columns)


@pytest.mark.parametrize("name", sorted(TYPED))
def test_typed_fixture_reads_what_TYPED_says_and_beats_chance(name: str) -> None:
    fixture = TYPED[name]
    path = FIXTURE_DIR / f"{name}.onnx"
    assert path.stat().st_size < 100_000
    assert onnx.load(path).producer_name == PRODUCERS[fixture.converter]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    declared = {i.name: i.type for i in session.get_inputs()}
    assert declared == {k: ORT_TYPE[_source_dtype(fixture.dataset, s)] for k, s in fixture.inputs}
    outputs = session.run(None, typed_feed(name))
    probs = next((o for o in outputs if isinstance(o, np.ndarray) and o.ndim == 2), None)
    if probs is None:  # ZipMap: a list of {label: probability}
        zipmap = next(o for o in outputs if isinstance(o, list))
        probs = np.array([[row[c] for c in fixture.classes] for row in zipmap])
    assert probs.shape[1] == len(fixture.classes)
    _, y = typed_data(fixture.dataset)
    accuracy = float((np.asarray(fixture.classes)[np.argmax(probs, axis=1)] == y).mean())
    assert accuracy > 1 / len(fixture.classes) + 0.1, f"{name}: accuracy {accuracy:.3f}"


def test_typed_datasets_give_every_declared_input() -> None:
    for dataset, declared in TYPED_INPUTS.items():
        inputs, y = typed_data(dataset)
        assert list(inputs) == list(declared)
        for name, (dtype, columns) in declared.items():
            array = inputs[name]
            assert len(array) == len(y)
            assert (array.dtype == object) if dtype == "string" else (array.dtype == np.dtype(dtype))
            if columns is not None:
                assert array.shape[1:] == (len(columns),)
