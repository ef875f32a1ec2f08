"""Segment signatures: name- and weight-free, sensitive to everything that changes the work."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_depth.latency_db.signature import canonical, describe, signature


def test_same_shapes_different_weights_and_names_share(conv_model: Callable[..., onnx.ModelProto]) -> None:
    a = conv_model(seed=0)
    b = conv_model(seed=1, names="other_model/block3/")
    b.graph.doc_string = "from another model"
    b.producer_name = "someone"
    assert signature(a) == signature(b)
    assert len(signature(a)) == 64 and int(signature(a), 16) >= 0


def test_changes_that_matter_change_the_signature(conv_model: Callable[..., onnx.ModelProto]) -> None:
    base = signature(conv_model())
    variants = {
        "kernel 5x5": conv_model(k=5),
        "channels out": conv_model(c_out=32),
        "channels in": conv_model(c_in=32),
        "spatial": conv_model(hw=56),
        "stride": conv_model(stride=2),
        "groups": conv_model(group=16),
        "extra relu": conv_model(relu=True),
        "dtype": conv_model(dtype=TensorProto.DOUBLE),
    }
    sigs = {name: signature(m) for name, m in variants.items()}
    assert base not in sigs.values()
    assert len(set(sigs.values())) == len(sigs)
    opset = conv_model()
    opset.opset_import[0].version = 13
    assert signature(opset) != base


def _two_branch(order: list[int], w_seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(w_seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w3"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w3"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w1"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    g = helper.make_graph([nodes[i] for i in order], "g", [x], [y], inits if order[0] == 0 else inits[::-1])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def test_node_and_initializer_order_do_not_matter_but_edges_do() -> None:
    a, b = _two_branch([0, 1, 2]), _two_branch([1, 0, 2], w_seed=3)
    assert signature(a) == signature(b)
    swapped = _two_branch([0, 1, 2])
    swapped.graph.node[2].input[:] = ["b", "a"]  # Add(b, a): a different edge by position
    assert signature(swapped) != signature(a)


def test_schema_default_attributes_are_canonical() -> None:
    def leaky(alpha: float | None) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        kw = {} if alpha is None else {"alpha": alpha}
        g = helper.make_graph([helper.make_node("LeakyRelu", ["x"], ["y"], **kw)], "g", [x], [y])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    assert signature(leaky(None)) == signature(leaky(0.01))
    assert signature(leaky(0.2)) != signature(leaky(None))


def test_small_int_parameters_count_float_values_do_not() -> None:
    def reshape(shape: list[int], scale: float) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        g = helper.make_graph(
            [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Reshape", ["m", "shape"], ["y"])],
            "g", [x], [y],
            [numpy_helper.from_array(np.array(shape, dtype=np.int64), "shape"),
             numpy_helper.from_array(np.array([scale], dtype=np.float32), "s")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    assert signature(reshape([3, 4], 1.0)) == signature(reshape([3, 4], 2.0))
    assert signature(reshape([3, 4], 1.0)) != signature(reshape([4, 3], 1.0))


def test_symbolic_dims_are_name_free() -> None:
    def model(sym: str) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [sym, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [sym, 4])
        g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    assert signature(model("batch")) == signature(model("N"))
    assert canonical(model("N"))["graph"]["inputs"] == [["float32", ["?0", 4]]]


def test_describe(conv_model: Callable[..., onnx.ModelProto]) -> None:
    assert describe(conv_model(64, 64, 56)) == "Conv[3x3,s1,g1] 64->64 @56x56"
    assert describe(conv_model(32, 32, 112, stride=2, group=32, relu=True)) == "Conv[3x3,s2,g32] 32->32 @112x112 + Relu"
    big = _two_branch([0, 1, 2])
    assert describe(big, max_nodes=2).endswith("(3 nodes: 2 Conv, 1 Add)")
