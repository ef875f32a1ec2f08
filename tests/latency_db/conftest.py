"""Shared helpers for the latency-database tests: small models built with onnx.helper."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 9  # onnx 1.23 writes IR 14, which onnxruntime 1.31 refuses


def conv_model(c_in: int = 16, c_out: int = 16, hw: int = 32, k: int = 3, stride: int = 1,
               group: int = 1, seed: int = 0, names: str = "", relu: bool = False,
               dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x[1,c_in,hw,hw] -> Conv(k x k, pad k//2) [-> Relu]; `names` prefixes every name."""
    rng = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    w = rng.standard_normal((c_out, c_in // group, k, k)).astype(np_dtype)
    b = rng.standard_normal(c_out).astype(np_dtype)
    out_hw = (hw + 2 * (k // 2) - k) // stride + 1
    x = helper.make_tensor_value_info(names + "x", dtype, [1, c_in, hw, hw])
    y = helper.make_tensor_value_info(names + "y", dtype, [1, c_out, out_hw, out_hw])
    conv_out = names + ("c" if relu else "y")
    nodes = [helper.make_node("Conv", [names + "x", names + "W", names + "B"], [conv_out],
                              name=names + "conv", kernel_shape=[k, k], pads=[k // 2] * 4,
                              strides=[stride, stride], group=group)]
    if relu:
        nodes.append(helper.make_node("Relu", [conv_out], [names + "y"], name=names + "relu"))
    graph = helper.make_graph(nodes, names + "g", [x], [y],
                              [numpy_helper.from_array(w, names + "W"), numpy_helper.from_array(b, names + "B")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = IR_VERSION
    return m


@pytest.fixture(name="conv_model")
def conv_model_fixture() -> Callable[..., onnx.ModelProto]:
    """The `conv_model` builder (a fixture, so tests work in any pytest import mode)."""
    return conv_model
