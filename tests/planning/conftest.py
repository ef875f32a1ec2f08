"""Fixtures for the planning tests: a hand-made DAG and zoo graphs after the lossless passes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_depth import ir, zoo
from onnx_depth.passes import LOSSLESS, PassContext, run_to_fixed_point


def hand_dag() -> onnx.ModelProto:
    """A DAG with every kind of junction and cut point:

    x -> Conv a (8->16 1x1) -> Relu -> Conv b (3x3) -> LeakyRelu -> Conv c (3x3) -> Add(+Relu out)
      -> PRelu (t3, also read by MaxPool: pinned) -> Conv d (1x1) -> Clip(0,6) -> Conv e (3x3 s2) -> Relu
    Concat(Relu out, MaxPool) -> Conv f (dw 3x3) -> Conv g (1x1) -> Sigmoid, Mul (swish: a cut)
      -> GlobalAveragePool -> Flatten -> Gemm 32->64 -> Relu -> Gemm 64->64 -> Clip -> MatMul 64->10 + Add
    """
    rng = np.random.default_rng(0)
    inits: list[onnx.TensorProto] = []

    def param(name: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def conv(name: str, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> onnx.NodeProto:
        return helper.make_node("Conv", [x, param(name + ".w", (cout, cin // group, k, k)), param(name + ".b", (cout,))],
                                [name], name=name, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride] * 2, group=group)

    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    inits.append(numpy_helper.from_array(np.array(6.0, np.float32), "six"))
    nodes = [
        conv("a", "x", 8, 16, 1),
        helper.make_node("Relu", ["a"], ["ar"], name="ar"),
        conv("b", "ar", 16, 16, 3),
        helper.make_node("LeakyRelu", ["b"], ["br"], name="br", alpha=0.1),
        conv("c", "br", 16, 16, 3),
        helper.make_node("Add", ["c", "ar"], ["s"], name="s"),
        helper.make_node("PRelu", ["s", param("slope", (16, 1, 1))], ["sr"], name="sr"),
        conv("d", "sr", 16, 16, 1),
        helper.make_node("Clip", ["d", "zero", "six"], ["dr"], name="dr"),
        helper.make_node("MaxPool", ["sr"], ["mp"], name="mp", kernel_shape=[2, 2], strides=[2, 2]),
        conv("e", "dr", 16, 16, 3, stride=2),
        helper.make_node("Relu", ["e"], ["er"], name="er"),
        helper.make_node("Concat", ["er", "mp"], ["cat"], name="cat", axis=1),
        conv("f", "cat", 32, 32, 3, group=32),
        conv("g", "f", 32, 32, 1),
        helper.make_node("Sigmoid", ["g"], ["gs"], name="gs"),
        helper.make_node("Mul", ["g", "gs"], ["sw"], name="sw"),
        helper.make_node("GlobalAveragePool", ["sw"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["fl"], name="fl", axis=1),
        helper.make_node("Gemm", ["fl", param("fc1.w", (64, 32)), param("fc1.b", (64,))], ["fc1"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1"], ["fc1r"], name="fc1r"),
        helper.make_node("Gemm", ["fc1r", param("fc2.w", (64, 64)), param("fc2.b", (64,))], ["fc2"], name="fc2", transB=1),
        helper.make_node("Clip", ["fc2", "zero", "six"], ["fc2r"], name="fc2r"),
        helper.make_node("MatMul", ["fc2r", param("fc3.w", (64, 10))], ["fc3m"], name="fc3"),
        helper.make_node("Add", ["fc3m", param("fc3.b", (10,))], ["y"], name="fc3.add"),
    ]
    g = helper.make_graph(nodes, "hand_dag", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def lossless(model: onnx.ModelProto) -> ir.Graph:
    g = ir.load(model)
    run_to_fixed_point(g, LOSSLESS, PassContext())
    return g


@pytest.fixture(scope="session")
def hand_model() -> onnx.ModelProto:
    return hand_dag()


@pytest.fixture(scope="session")
def hand_graph(hand_model: onnx.ModelProto) -> ir.Graph:
    return lossless(hand_model)


@pytest.fixture(scope="session")
def resnet18_graph() -> ir.Graph:
    return lossless(zoo.build("resnet18", bn="keep", image_size=32, num_classes=10))


@pytest.fixture(scope="session")
def mobilenet_graph() -> ir.Graph:
    return lossless(zoo.build("mobilenetv2_1.0", bn="keep", image_size=32, num_classes=10))
