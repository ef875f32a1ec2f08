"""Where the lossless passes must not rewrite: the model is left as it was there, its outputs do
not change, and the reason is recorded in PassResult.refused (report.passes[i]["refused"])."""

from __future__ import annotations

import numpy as np
import pytest

from .builders import ModelBuilder, check_lossless, feeds_for, op_counts, rand_bn, rand_conv, rand_dense, refusals


def _untouched(model, r, pass_name: str, needle: str) -> None:
    assert op_counts(r.model) == op_counts(model), (op_counts(model), op_counts(r.model))
    reasons = refusals(r, pass_name)
    assert any(needle in why for why in reasons), reasons


def _conv_pair(rng, C=4):
    return rand_conv(rng, C, C, (3, 3), pads=[1] * 4), rand_conv(rng, C, C, (1, 1))


# ------------------------------------------------------------------ shared weights
def test_shared_conv_weight_refused():
    """One initializer used by two convs: merging would keep the old weight alive for the other
    user and add a new one, so the chain is left alone."""
    rng = np.random.default_rng(0)
    c = rand_conv(rng, 4, 4, (1, 1))
    b = ModelBuilder((1, 4, 6, 6))
    w = b.const(c.weight, "shared_w")
    m = b.model(b.conv(b.conv(b.x, c, weight=w), c, weight=w))
    r = check_lossless(m)
    _untouched(m, r, "merge_linear", "shared")


def test_shared_dense_weight_refused():
    rng = np.random.default_rng(1)
    W, _ = rand_dense(rng, 5, 5, bias=False)
    b = ModelBuilder((2, 5))
    w = b.const(W, "shared_W")
    m = b.model(b.op("MatMul", [b.op("MatMul", [b.x, w]), w]))
    r = check_lossless(m)
    _untouched(m, r, "merge_linear", "shared")


def test_shared_weight_blocks_bn_fold():
    rng = np.random.default_rng(2)
    c = rand_conv(rng, 4, 4, (3, 3), pads=[1] * 4)
    b = ModelBuilder((1, 4, 5, 5))
    w = b.const(c.weight, "shared_w")
    h1 = b.bn(b.conv(b.x, c, weight=w), rand_bn(rng, 4))
    m = b.model([h1, b.conv(b.x, c, weight=w)])
    r = check_lossless(m)
    _untouched(m, r, "fold_bn", "shared")


# ------------------------------------------------------------------ graph output mid-chain
def test_graph_output_mid_conv_chain_refused():
    rng = np.random.default_rng(3)
    c1, c2 = _conv_pair(rng)
    b = ModelBuilder((1, 4, 6, 6))
    mid = b.conv(b.x, c1)
    m = b.model(b.conv(mid, c2), extra_outputs=[mid])
    r = check_lossless(m)
    _untouched(m, r, "merge_linear", "graph output")


def test_graph_output_mid_dense_chain_refused():
    rng = np.random.default_rng(4)
    b = ModelBuilder((3, 6))
    mid = b.gemm(b.x, *rand_dense(rng, 6, 6))
    m = b.model(b.gemm(mid, *rand_dense(rng, 6, 6)), extra_outputs=[mid])
    r = check_lossless(m)
    _untouched(m, r, "merge_linear", "graph output")


def test_graph_output_between_conv_and_bn_refused():
    rng = np.random.default_rng(5)
    b = ModelBuilder((1, 4, 6, 6))
    mid = b.conv(b.x, rand_conv(rng, 4, 4, (3, 3), pads=[1] * 4))
    m = b.model(b.bn(mid, rand_bn(rng, 4)), extra_outputs=[mid])
    r = check_lossless(m)
    _untouched(m, r, "fold_bn", "graph output")


# ------------------------------------------------------------------ non-constant weights
def test_weight_graph_input_refused():
    """The second conv's weight is fed at run time: nothing can be precomputed."""
    rng = np.random.default_rng(6)
    c1, c2 = _conv_pair(rng)
    b = ModelBuilder((1, 4, 6, 6))
    w2 = b.input("w2", list(c2.weight.shape))
    m = b.model(b.op("Conv", [b.conv(b.x, c1), w2], kernel_shape=[1, 1]))
    feeds = [{"x": f["x"], "w2": c2.weight} for f in feeds_for(m, (1, 4, 6, 6))]
    r = check_lossless(m, feeds)
    _untouched(m, r, "merge_linear", "not a constant")


def test_bn_params_graph_input_refused():
    rng = np.random.default_rng(7)
    b = ModelBuilder((1, 3, 4, 4))
    mean = b.input("mean", [3])
    scale, beta, _, var = (b.const(v) for v in rand_bn(rng, 3))
    h = b.conv(b.x, rand_conv(rng, 3, 3, (1, 1)))
    m = b.model(b.op("BatchNormalization", [h, scale, beta, mean, var]))
    feeds = [{"x": f["x"], "mean": np.zeros(3, np.float32)} for f in feeds_for(m, (1, 3, 4, 4))]
    r = check_lossless(m, feeds)
    _untouched(m, r, "fold_bn", "not constants")


# ------------------------------------------------------------------ dynamic shapes
def _correctable_chain(shape):
    """1x1 conv with a bias, then a padded 3x3: mergeable only with a border map of the input's size."""
    rng = np.random.default_rng(8)
    b = ModelBuilder(shape)
    h = b.conv(b.x, rand_conv(rng, 4, 3, (1, 1), bias=True))
    return b.model(b.conv(h, rand_conv(rng, 5, 4, (3, 3), pads=[1] * 4)))


def test_dynamic_spatial_shape_refused_where_the_merge_needs_it():
    m = _correctable_chain(["N", 3, "H", "W"])
    r = check_lossless(m, feeds_for(m, (2, 3, 7, 5)))
    _untouched(m, r, "merge_linear", "dynamic spatial shape")


@pytest.mark.parametrize("shape", [(1, 3, 7, 5), ("N", 3, 7, 5)])
def test_static_spatial_shape_merges(shape):
    """The same chain with a static spatial shape (batch symbolic or not) merges: Conv + border Add."""
    m = _correctable_chain(list(shape))
    r = check_lossless(m, feeds_for(m, (shape[0] if shape[0] == 1 else 2, 3, 7, 5)))
    assert op_counts(r.model) == {"Conv": 1, "Add": 1}


def test_dynamic_shape_exact_chain_merges():
    """Where the merge needs no shape (conv2 unpadded: EXACT for every size) it still happens."""
    rng = np.random.default_rng(9)
    b = ModelBuilder(["N", 3, "H", "W"])
    h = b.conv(b.x, rand_conv(rng, 4, 3, (3, 3), pads=[1] * 4))
    m = b.model(b.conv(h, rand_conv(rng, 2, 4, (1, 1))))
    r = check_lossless(m, feeds_for(m, (2, 3, 9, 6)))
    assert op_counts(r.model) == {"Conv": 1}


def test_dynamic_spatial_bn_before_padded_conv_refused():
    rng = np.random.default_rng(10)
    b = ModelBuilder(["N", 3, "H", "W"])
    m = b.model(b.conv(b.bn(b.x, rand_bn(rng, 3)), rand_conv(rng, 4, 3, (3, 3), pads=[1] * 4)))
    r = check_lossless(m, feeds_for(m, (1, 3, 6, 6)))
    _untouched(m, r, "fold_bn", "static spatial")


# ------------------------------------------------------------------ exactness and cost
def test_padded_kxk_then_padded_kxk_refused():
    rng = np.random.default_rng(11)
    b = ModelBuilder((1, 3, 8, 8))
    h = b.conv(b.x, rand_conv(rng, 3, 3, (3, 3), pads=[1] * 4))
    m = b.model(b.conv(h, rand_conv(rng, 3, 3, (3, 3), pads=[1] * 4)))
    r = check_lossless(m)
    _untouched(m, r, "merge_linear", "border-inexact")


def test_costlier_merge_refused():
    """A 1x1 bottleneck (16 -> 2 -> 16): the merged 16x16 layer costs more than the two."""
    rng = np.random.default_rng(12)
    b = ModelBuilder((1, 16, 4, 4))
    h = b.conv(b.x, rand_conv(rng, 2, 16, (1, 1)))
    m = b.model(b.conv(h, rand_conv(rng, 16, 2, (1, 1))))
    r = check_lossless(m)
    _untouched(m, r, "merge_linear", "MACs")


def test_float16_layers_untouched():
    """The kernels write float32: layers of other types are left alone."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(13)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float16), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float16), "w2")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["h"]), helper.make_node("Conv", ["h", "w2"], ["y"])],
        "f16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 2, 4, 4])],
        [w1, w2],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    feeds = [{"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float16)}]
    from onnx_depth.api import optimize

    r = optimize(m)
    _untouched(m, r, "merge_linear", "float32")
    from onnx_depth.compare import compare_models

    assert compare_models(m, r.model, feeds=feeds).allclose
