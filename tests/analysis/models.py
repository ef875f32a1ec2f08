"""Tiny ONNX models with known activation behaviour for the analysis and calibrated-pass tests
(opset 17, IR 8, float32 initializers). Oracle: onnxruntime via onnx_depth.compare."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class Net:
    """Append nodes to a graph with one float input ``x``; ``model()`` names the last tensor ``y``."""

    def __init__(self, shape: Sequence, seed: int = 0) -> None:
        self.shape = list(shape)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}{self._n}"

    def const(self, value, stem: str = "c", dtype=np.float32) -> str:
        n = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), n))
        return n

    def op(self, op: str, inputs, stem: str | None = None, **attrs) -> str:
        out = self.name(stem or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    # ---- layers
    def conv(self, x, w, b=None, pads=(0, 0, 0, 0), group=1, strides=(1, 1)) -> str:
        ins = [x, self.const(w, "w")] + ([self.const(b, "b")] if b is not None else [])
        return self.op("Conv", ins, "conv", pads=list(pads), group=group, strides=list(strides), kernel_shape=list(np.shape(w)[2:]))

    def rand_conv(self, x, cin, cout, k, pads=None, bias=True, group=1, bias_value=None) -> str:
        w = self.rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)
        b = self.rng.standard_normal(cout) * 0.5 if bias else None
        if bias_value is not None:
            b = np.full(cout, bias_value)
        p = (k // 2,) * 4 if pads is None else pads
        return self.conv(x, w, b, p, group)

    def gemm(self, x, W, b=None) -> str:
        """y = x @ W + b (W [in, out])."""
        ins = [x, self.const(W, "W")] + ([self.const(b, "b")] if b is not None else [])
        return self.op("Gemm", ins, "gemm")

    def bn(self, x, gamma, beta, mean=None, var=None) -> str:
        C = len(gamma)
        mean = np.zeros(C) if mean is None else mean
        var = np.ones(C) if var is None else var
        return self.op("BatchNormalization", [x, self.const(gamma), self.const(beta), self.const(mean), self.const(var)], "bn", epsilon=0.0)

    def relu(self, x) -> str:
        return self.op("Relu", [x])

    def clip(self, x, lo=0.0, hi=6.0) -> str:
        return self.op("Clip", [x, self.const(lo), self.const(hi)])

    def prelu(self, x, slope) -> str:
        return self.op("PRelu", [x, self.const(slope, "slope")])

    def hardswish_decomposed(self, x) -> str:
        a = self.op("Add", [x, self.const(3.0)])
        c = self.op("Clip", [a, self.const(0.0), self.const(6.0)])
        m = self.op("Mul", [x, c])
        return self.op("Div", [m, self.const(6.0)])

    def silu(self, x) -> str:
        s = self.op("Sigmoid", [x])
        return self.op("Mul", [x, s])

    def gelu_erf(self, x) -> str:
        d = self.op("Div", [x, self.const(np.sqrt(2.0))])
        e = self.op("Erf", [d])
        a = self.op("Add", [e, self.const(1.0)])
        m = self.op("Mul", [x, a])
        return self.op("Mul", [m, self.const(0.5)])

    def model(self, y: str) -> onnx.ModelProto:
        # rename the final tensor to "y"
        for n in self.nodes:
            n.output[:] = ["y" if o == y else o for o in n.output]
            n.input[:] = ["y" if i == y else i for i in n.input]
        g = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="test")
        m.ir_version = 8
        m = onnx.shape_inference.infer_shapes(m)
        onnx.checker.check_model(m, full_check=True)
        return m


def randn(*shape, seed=0, scale=1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
