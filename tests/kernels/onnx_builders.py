"""Tiny ONNX models for the kernel tests (opset 17, IR version 8), and the ORT-based assertions.

Every test model is built with ``GraphBuilder``: one float input ``x``, one output ``y``, constant
weights as initializers. The oracle is always onnxruntime via onnx_depth.compare / runtime.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_depth import runtime
from onnx_depth.compare import compare_models
from onnx_depth.kernels import ConvSpec

OPSET = 17
IR_VERSION = 8
RTOL = 1e-4
ATOL = 1e-5


class GraphBuilder:
    """Append nodes to a single-input graph; ``model()`` finishes it with output ``y``."""

    def __init__(self, input_shape: Sequence[int], input_name: str = "x") -> None:
        self.input_name = input_name
        self.input_shape = tuple(int(d) for d in input_shape)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def _name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    @property
    def x(self) -> str:
        return self.input_name

    def const(self, value, stem: str = "c") -> str:
        name = self._name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], **attrs) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    # --- operators used by the tests ---
    def conv(self, x: str, spec: ConvSpec) -> str:
        ins = [x, self.const(spec.weight, "w")]
        if spec.bias is not None:
            ins.append(self.const(spec.bias, "b"))
        return self.op("Conv", ins, **spec.to_onnx_attrs())

    def conv_transpose(self, x: str, weight, bias=None, **attrs) -> str:
        ins = [x, self.const(weight, "w")]
        if bias is not None:
            ins.append(self.const(bias, "b"))
        return self.op("ConvTranspose", ins, **attrs)

    def bn(self, x: str, scale, bias, mean, var, eps: float = 1e-5) -> str:
        ins = [x] + [self.const(v, n) for v, n in ((scale, "scale"), (bias, "beta"), (mean, "mean"), (var, "var"))]
        return self.op("BatchNormalization", ins, epsilon=float(eps))

    def gemm(self, x: str, B, C=None, *, alpha: float = 1.0, beta: float = 1.0, transB: int = 0) -> str:
        ins = [x, self.const(B, "B")]
        if C is not None:
            ins.append(self.const(C, "C"))
        return self.op("Gemm", ins, alpha=float(alpha), beta=float(beta), transB=int(transB))

    def matmul(self, x: str, B) -> str:
        return self.op("MatMul", [x, self.const(B, "B")])

    def add(self, a: str, b) -> str:
        """a + b, where b is a tensor name or a constant array."""
        return self.op("Add", [a, b if isinstance(b, str) else self.const(b, "add")])

    def model(self, out: str) -> onnx.ModelProto:
        nodes = self.nodes + [helper.make_node("Identity", [out], ["y"], name="out")]
        graph = helper.make_graph(
            nodes,
            "kernel_test",
            [helper.make_tensor_value_info(self.input_name, TensorProto.FLOAT, list(self.input_shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            initializer=self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = IR_VERSION
        # Give the output its inferred shape (the checker wants one), then validate.
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        m.graph.output[0].CopyFrom(inferred.graph.output[0])
        onnx.checker.check_model(m)
        return m


# --- common model shapes -------------------------------------------------------------------------


def conv_chain_model(specs: Sequence[ConvSpec], input_shape: Sequence[int], add_const=None) -> onnx.ModelProto:
    """x -> Conv(specs[0]) -> Conv(specs[1]) ... [-> Add(add_const)] -> y."""
    g = GraphBuilder(input_shape)
    h = g.x
    for s in specs:
        h = g.conv(h, s)
    if add_const is not None:
        h = g.add(h, add_const)
    return g.model(h)


def nchw_map(correction: np.ndarray) -> np.ndarray:
    """[O, *sp] constant map -> [1, O, *sp] for an Add after an N C ... output."""
    return np.asarray(correction)[None]


# --- assertions (onnxruntime is the oracle) -------------------------------------------------------


def assert_same(reference: onnx.ModelProto, candidate: onnx.ModelProto, n_random: int = 3, seed: int = 0) -> None:
    c = compare_models(reference, candidate, n_random=n_random, seed=seed, rtol=RTOL, atol=ATOL)
    assert c.allclose, c.summary()


def run_once(model: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> np.ndarray:
    sess = runtime.make_session(model)
    return runtime.run(sess, feed)["y"]


def assert_not_constant_offset(reference: onnx.ModelProto, candidate: onnx.ModelProto, input_shape, seed: int = 0) -> None:
    """reference - candidate is NOT a constant map: candidate + (its difference at x = 0) still
    differs from the reference on random inputs. Shows no constant correction can make it exact."""
    zero = {"x": np.zeros(input_shape, np.float32)}
    offset = run_once(reference, zero) - run_once(candidate, zero)
    fixed = onnx.ModelProto()
    fixed.CopyFrom(candidate)
    g = fixed.graph
    g.initializer.append(numpy_helper.from_array(offset.astype(np.float32), "zero_offset"))
    out_node = g.node[-1]  # the Identity -> y
    src = out_node.input[0]
    g.node.insert(len(g.node) - 1, helper.make_node("Add", [src, "zero_offset"], ["fixed_out"], name="fix"))
    out_node.input[0] = "fixed_out"
    c = compare_models(reference, fixed, n_random=3, seed=seed, rtol=RTOL, atol=ATOL)
    assert not c.allclose, "expected an input-dependent border error, got a match: " + c.summary()
