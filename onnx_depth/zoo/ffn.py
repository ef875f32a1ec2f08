"""A stack of pre-LayerNorm transformer FFN blocks, as exporters emit them."""

from __future__ import annotations

import numpy as np
import onnx

from ._builder import Builder

ACTS = ("gelu", "prelu")


def _gelu(b: Builder, x: str, p: str) -> str:
    """Exact GELU in the erf form: (x * (erf(x / sqrt2) + 1)) * 0.5."""
    h = b.node("Div", f"{p}.div", [x, b.const("gelu.sqrt2", float(np.sqrt(2.0)))])
    h = b.node("Erf", f"{p}.erf", [h])
    h = b.node("Add", f"{p}.add", [h, b.const("gelu.one", 1.0)])
    h = b.node("Mul", f"{p}.mul", [x, h])
    return b.node("Mul", f"{p}.mul_half", [h, b.const("gelu.half", 0.5)])


def _linear(b: Builder, x: str, p: str, cin: int, cout: int, gain: float) -> str:
    """MatMul with a [in, out] weight, then Add bias."""
    h = b.node("MatMul", f"{p}.matmul", [x, b.param(f"{p}.weight", b.he((cin, cout), cin, gain))])
    return b.node("Add", f"{p}.add", [h, b.param(f"{p}.bias", b.normal((cout,), 0.01))])


def ffn_stack(*, seq: int = 128, d_model: int = 256, d_ff: int = 1024, blocks: int = 4, act: str = "gelu",
              prelu_slope: float = 0.25, bn: str = "keep", seed: int = 0, batch: int = 1) -> onnx.ModelProto:
    """`blocks` x (LayerNorm -> Linear -> act -> Linear -> + input); `bn` is accepted and ignored."""
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    if act not in ACTS:
        raise ValueError(f"act must be one of {ACTS}, got {act!r}")
    b = Builder(seed=seed, bn=bn)
    x = "input"
    for i in range(blocks):
        p = f"blocks.{i}"
        scale = b.param(f"{p}.ln.weight", 1.0 + b.normal((d_model,), 0.1))
        shift = b.param(f"{p}.ln.bias", b.normal((d_model,), 0.1))
        h = b.node("LayerNormalization", f"{p}.ln", [x, scale, shift], axis=-1, epsilon=1e-5)
        h = _linear(b, h, f"{p}.fc1", d_model, d_ff, 2.0)
        if act == "gelu":
            h = _gelu(b, h, f"{p}.act")
        else:
            slope = b.param(f"{p}.act.slope", np.full((d_ff,), prelu_slope, dtype=np.float32))
            h = b.node("PRelu", f"{p}.act", [h, slope])
        h = _linear(b, h, f"{p}.fc2", d_ff, d_model, 1.0)
        x = b.node("Add", f"{p}.add", [x, h])
    shape = [batch, seq, d_model]
    return b.model(x, shape, shape, "ffn_stack")
