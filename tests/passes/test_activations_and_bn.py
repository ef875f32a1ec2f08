"""exact_activations with value_range, and fold_bn's BatchNorm -> Mul + Add option."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnx_depth import ir
from onnx_depth.passes import PassContext, fold_bn
from onnx_depth.analysis.value_range import value_range

from .builders import ModelBuilder, assert_same, check_lossless, feeds_for, op_counts, rand_bn, rand_conv, refusals


# ------------------------------------------------------------------ exact activations
@pytest.mark.parametrize(
    "act", ["prelu_channel", "prelu_scalar", "leaky", "relu_after_relu", "relu_after_sigmoid", "relu_after_maxpool_of_relu",
            "clip_inside", "relu_after_avgpool_no_pad_count"],
)
def test_identity_activations_removed_and_layers_merge(act):
    rng = np.random.default_rng(0)
    C = 4
    b = ModelBuilder((1, C, 6, 6))
    h = b.conv(b.x, rand_conv(rng, C, C, (3, 3), pads=[1] * 4))
    extra = 0
    if act == "prelu_channel":
        h = b.op("PRelu", [h, b.const(np.ones((C, 1, 1)))])
    elif act == "prelu_scalar":
        h = b.op("PRelu", [h, b.const(np.ones(1))])
    elif act == "leaky":
        h = b.op("LeakyRelu", [h], alpha=1.0)
    elif act == "relu_after_relu":
        h = b.op("Relu", [b.op("Relu", [h])])
        extra = 1
    elif act == "relu_after_sigmoid":
        h = b.op("Relu", [b.op("Sigmoid", [h])])
        extra = 1
    elif act == "relu_after_maxpool_of_relu":
        h = b.op("Relu", [b.op("MaxPool", [b.op("Relu", [h])], kernel_shape=[2, 2], pads=[1, 1, 1, 1])])
        extra = 2
    elif act == "clip_inside":
        h = b.op("Clip", [b.op("Clip", [h, b.const(-1.0), b.const(1.0)]), b.const(-2.0), b.const(2.0)])
        extra = 1
    else:
        h = b.op("Relu", [b.op("AveragePool", [b.op("Relu", [h])], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
        extra = 2
    m = b.model(b.conv(h, rand_conv(rng, 2, C, (1, 1))))
    r = check_lossless(m)
    if extra:  # a real activation stays between the convs; only the identity one goes
        assert r.report.after.nodes == 2 + extra
        assert r.report.before.nodes == 3 + extra
    else:  # nothing left between: the convs merge
        assert op_counts(r.model) == {"Conv": 1}


def test_clip_after_padded_average_pool_counting_the_padding_kept():
    """AveragePool with count_include_pad mixes the zeros of its padding in: Clip(1, 6) of a
    Clip(1, 6) output is not the identity after it."""
    b = ModelBuilder((1, 2, 5, 5))
    h = b.op("Clip", [b.x, b.const(1.0), b.const(6.0)])
    h = b.op("AveragePool", [h], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    m = b.model(b.op("Clip", [h, b.const(1.0), b.const(6.0)]))
    r = check_lossless(m)
    assert op_counts(r.model)["Clip"] == 2
    b = ModelBuilder((1, 2, 5, 5))
    h = b.op("Clip", [b.x, b.const(1.0), b.const(6.0)])
    h = b.op("AveragePool", [h], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)
    m = b.model(b.op("Clip", [h, b.const(1.0), b.const(6.0)]))
    assert op_counts(check_lossless(m).model)["Clip"] == 1


@pytest.mark.parametrize("mode,kept", [("cubic", True), ("linear", False), ("nearest", False)])
def test_resize_modes(mode, kept):
    """Cubic interpolation overshoots the input range; nearest and linear do not."""
    b = ModelBuilder((1, 1, 4, 4))
    h = b.op("Clip", [b.x, b.const(0.0), b.const(1.0)])
    h = b.op("Resize", [h, "", b.const([1.0, 1.0, 2.0, 2.0])], mode=mode)
    m = b.model(b.op("Clip", [h, b.const(0.0), b.const(1.0)]))
    r = check_lossless(m, feeds_for(m, (1, 1, 4, 4), n=3))
    assert op_counts(r.model)["Clip"] == (2 if kept else 1)


def test_value_range_of_second_outputs_and_training_dropout_is_unknown():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Relu", ["x"], ["h"]),
        helper.make_node("MaxPool", ["h"], ["mp", "idx"], kernel_shape=[2, 2]),
        helper.make_node("Dropout", ["h", "ratio", "train"], ["dr"]),
    ]
    g = helper.make_graph(
        nodes,
        "ranges",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [
            helper.make_tensor_value_info("mp", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("idx", TensorProto.INT64, None),
            helper.make_tensor_value_info("dr", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(np.array(0.5, np.float32), "ratio"), numpy_helper.from_array(np.array(True), "train")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    graph = ir.load(m, check=False, fold=False)
    assert value_range(graph, "mp") == (0.0, math.inf)
    assert value_range(graph, "idx") == (-math.inf, math.inf)
    assert value_range(graph, "dr") == (-math.inf, math.inf)
    del onnx


# ------------------------------------------------------------------ BatchNorm -> Mul + Add
@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_standalone_bn_to_mul_add(rank):
    """With PassContext(bn_to_mul_add=True) a BN with no linear neighbour becomes x * s + t with
    s, t shaped [C, 1, ..., 1]: exact for inputs of rank 2 to 5."""
    rng = np.random.default_rng(rank)
    C = 3
    shape = (2, C, *(int(v) for v in rng.integers(1, 4, rank - 2)))
    b = ModelBuilder(shape)
    m = b.model(b.op("Relu", [b.bn(b.op("Relu", [b.x]), rand_bn(rng, C), eps=1e-3)]))
    g = ir.load(m)
    res = fold_bn(g, PassContext(bn_to_mul_add=True))
    assert res.changed == 1
    out = ir.to_proto(g)
    assert op_counts(out) == {"Relu": 2, "Mul": 1, "Add": 1}
    assert_same(m, out, feeds_for(m, shape))
    # default: kept, with the reason
    r = check_lossless(m)
    assert op_counts(r.model)["BatchNormalization"] == 1
    assert any("kept as BatchNormalization" in why for why in refusals(r, "fold_bn"))


def test_bn_to_mul_add_needs_the_rank():
    rng = np.random.default_rng(9)
    b = ModelBuilder((2, 3, 4))
    m = b.model(b.bn(b.op("Relu", [b.x]), rand_bn(rng, 3)))
    for v in m.graph.input:
        v.type.tensor_type.ClearField("shape")
    g = ir.load(m, check=False, shapes=False)
    res = fold_bn(g, PassContext(bn_to_mul_add=True))
    assert res.changed == 0 and any("rank is unknown" in why for why in res.refused)
