"""canonicalize: no-ops removed, Pad fused into Conv, MatMul+Add -> Gemm, a 1x1 conv on a 1x1 map
-> Gemm (then merged with the classifier), auto_pad convs read correctly."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_depth import ir
from onnx_depth.passes import PassContext, canonicalize

from .builders import ModelBuilder, check_lossless, feeds_for, op_counts, rand_conv, rand_dense, refusals


@pytest.mark.parametrize("pads", [[0, 0, 1, 2, 0, 0, 2, 1], [0, 0, 0, 3, 0, 0, 1, 0]])
def test_zero_pad_fused_into_conv(pads):
    rng = np.random.default_rng(0)
    b = ModelBuilder((1, 3, 5, 6))
    h = b.op("Pad", [b.x, b.int_const(pads)])
    m = b.model(b.conv(h, rand_conv(rng, 4, 3, (3, 3), pads=[1, 0, 0, 1], strides=[2, 1], dilations=[1, 2])))
    r = check_lossless(m)
    assert op_counts(r.model) == {"Conv": 1}


@pytest.mark.parametrize(
    "kind,reason",
    [("reflect", "not a constant zero Pad"), ("value", "not a constant zero Pad"), ("dynamic_value", "Pad value is not a constant"),
     ("channel", "pads batch/channel")],
)
def test_pad_not_fused(kind, reason):
    rng = np.random.default_rng(1)
    C = 3
    b = ModelBuilder((1, C, 5, 5))
    pads = [0, 1 if kind == "channel" else 0, 1, 1, 0, 0, 1, 1]
    ins = [b.x, b.int_const(pads)]
    attrs = {}
    feeds = None
    if kind == "reflect":
        attrs["mode"] = "reflect"
    elif kind == "value":
        ins.append(b.const(0.5))
    elif kind == "dynamic_value":
        ins.append(b.input("v", []))
    h = b.op("Pad", ins, **attrs)
    m = b.model(b.conv(h, rand_conv(rng, 2, C + (1 if kind == "channel" else 0), (3, 3))))
    if kind == "dynamic_value":
        feeds = [{"x": f["x"], "v": np.array(0.25, np.float32)} for f in feeds_for(m, (1, C, 5, 5))]
    r = check_lossless(m, feeds)
    assert op_counts(r.model) == {"Pad": 1, "Conv": 1}
    assert any(reason in why for why in refusals(r, "canonicalize")), refusals(r)


def test_noops_removed():
    rng = np.random.default_rng(2)
    b = ModelBuilder((2, 3, 4, 4))
    h = b.op("Identity", [b.x])
    h = b.op("Dropout", [h], )
    h = b.op("Reshape", [h, b.int_const([2, 3, 4, 4])])
    h = b.op("Transpose", [h], perm=[0, 1, 2, 3])
    h = b.op("Pad", [h, b.int_const([0] * 8)])
    m = b.model(b.op("Relu", [b.conv(h, rand_conv(rng, 3, 3, (1, 1)))]))
    r = check_lossless(m)
    assert op_counts(r.model) == {"Conv": 1, "Relu": 1}


def test_dropout_in_training_mode_kept():
    b = ModelBuilder((2, 3))
    h = b.op("Dropout", [b.x, b.const(0.0), b.op("Cast", [b.int_const(1)], to=9)])
    m = b.model(b.op("Relu", [h]))
    r = check_lossless(m)  # ratio 0: deterministic even in training mode
    assert op_counts(r.model)["Dropout"] == 1


def test_matmul_add_to_gemm():
    rng = np.random.default_rng(3)
    b = ModelBuilder((3, 5))
    W, bias = rand_dense(rng, 5, 4)
    m = b.model(b.op("Relu", [b.matmul(b.x, W, bias[None], bias_first=True)]))
    r = check_lossless(m)
    assert op_counts(r.model) == {"Gemm": 1, "Relu": 1}


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape-1", "Reshape0", "ReshapeN"])
@pytest.mark.parametrize("symbolic", [False, True])
def test_pointwise_conv_on_1x1_then_classifier_merges(flatten, symbolic):
    """GlobalAveragePool -> 1x1 conv -> Flatten/Reshape -> Gemm: the conv becomes a Gemm and the
    two Gemms merge (x W1 W2)."""
    rng = np.random.default_rng(4)
    shape = (2, 6, 3, 3)
    if symbolic and flatten == "ReshapeN":
        pytest.skip("a literal batch size needs a static batch")
    b = ModelBuilder(["N", 6, 3, 3] if symbolic else shape)
    h = b.op("GlobalAveragePool", [b.x])
    h = b.conv(h, rand_conv(rng, 4, 6, (1, 1)))
    if flatten == "Flatten":
        h = b.op("Flatten", [h], axis=1)
    else:
        n = {"Reshape-1": -1, "Reshape0": 0, "ReshapeN": 2}[flatten]
        h = b.op("Reshape", [h, b.int_const([n, 4])])
    W, bias = rand_dense(rng, 4, 3)
    m = b.model(b.gemm(h, W, bias, transB=1))
    r = check_lossless(m, feeds_for(m, shape))
    assert op_counts(r.model) == {"GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
def test_auto_pad_conv_chain(auto_pad, stride):
    """Convs with auto_pad are read with the pads ONNX gives them (SAME with stride > 1 needs
    the input size), so a SAME kxk conv followed by a 1x1 one merges exactly."""
    rng = np.random.default_rng(5)
    b = ModelBuilder((1, 3, 7, 8))
    c1 = rand_conv(rng, 4, 3, (4, 3))
    h = b.op("Conv", [b.x, b.const(c1.weight), b.const(c1.bias)], auto_pad=auto_pad, strides=[stride, stride])
    m = b.model(b.conv(h, rand_conv(rng, 2, 4, (1, 1))))
    r = check_lossless(m)
    assert op_counts(r.model) == {"Conv": 1}


def test_canonicalize_is_idempotent():
    rng = np.random.default_rng(6)
    b = ModelBuilder((1, 3, 5, 5))
    h = b.op("Pad", [b.op("Identity", [b.x]), b.int_const([0, 0, 1, 1, 0, 0, 1, 1])])
    m = b.model(b.conv(h, rand_conv(rng, 2, 3, (3, 3))))
    g = ir.load(m)
    assert canonicalize(g, PassContext()).changed == 2
    assert canonicalize(g, PassContext()).changed == 0
