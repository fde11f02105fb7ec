"""The learned stack as ONNX nodes, computed in float64 whatever the parts give.

float64 because the reference (stacking.apply) computes in float64: a float32 graph of the same
weights differs from it by float32 rounding times the size of the terms that cancel in the MatMul,
which on rows far from the data (verification's random rows) reached a relative 7e-5 and refused
correct merges. In float64 both round to the output's dtype only once, at the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .graphs import DOUBLE, FLOAT
from .stacking import EPS, StackModel

if TYPE_CHECKING:
    from .builder import Builder


def learned_stack(b: Builder, model: StackModel, outputs: list[str], names: list[str]) -> str:
    """The stack's probabilities [N, K] or predictions [N, 1] in float64; `outputs` are the parts' heads in float64."""
    linear = model.linear
    assert linear is not None
    blocks: list[str] = []
    if model.task == "classification":
        eps = b.const(np.array(EPS, np.float64), "eps")
        mean = b.node("Div", [b.node("Sum", outputs, "sum"), b.const(np.array(len(outputs), np.float64), "count")],
                      "mean")
        blocks.append(b.node("Log", [b.node("Max", [mean, eps], "mean_clipped")], "log_mean"))
        blocks.extend(b.node("Log", [b.node("Max", [p, eps], f"{n}.clipped")], f"{n}.log") for p, n in
                      zip(outputs, names, strict=True))
        blocks.extend(outputs)
    else:
        blocks.extend(b.reshape(p, [-1, 1], f"{n}.column") for p, n in zip(outputs, names, strict=True))
    if model.passthrough:
        picked = b.node("Gather", [b.input_name, b.const(np.array(model.passthrough, np.int64), "passthrough")],
                        "passthrough_columns", axis=1)
        blocks.append(picked if b.input_type == DOUBLE else b.node("Cast", [picked], "passthrough.as_float64", to=DOUBLE))
    x = b.node("Concat", blocks, "stack_features", axis=1)
    z = b.node("Div", [b.node("Sub", [x, b.const(linear.mean, "stack_mean")], "centred"),
                       b.const(linear.scale, "stack_scale")], "standardised")
    out = affine(b, z, linear.coef, linear.intercept, "stack")
    if model.residual is not None:
        r = model.residual
        hidden = b.node("Tanh", [affine(b, z, r.w1, r.b1, "mlp_hidden")], "mlp_tanh")
        out = b.node("Add", [out, affine(b, hidden, r.w2, r.b2, "mlp_out")], "stack_with_mlp")
    if model.task == "classification":
        out = b.node("Softmax", [out], "stack_probabilities", axis=1)
    return out


def affine(b: Builder, x: str, w: np.ndarray, bias: np.ndarray, base: str) -> str:
    """x @ w + bias (float64 weights)."""
    product = b.node("MatMul", [x, b.const(w.astype(np.float64), f"{base}_weight")], f"{base}_matmul")
    return b.node("Add", [product, b.const(bias.astype(np.float64), f"{base}_bias")], f"{base}_logits")


def as_float64(b: Builder, tensor: str, have: int, model: str) -> str:
    return tensor if have == DOUBLE else b.node("Cast", [tensor], f"{model}.as_float64", to=DOUBLE)


def from_float64(b: Builder, tensor: str, want: int) -> str:
    return tensor if want == DOUBLE else b.node("Cast", [tensor], "stack.as_float32", to=FLOAT)
