"""The layer-unit reader (analysis.layer_unit): Conv / Gemm / MatMul with its bias Add and
BatchNorm read as one operator. Oracle: onnxruntime runs the original nodes, numpy the folded
operator (kernels.conv_reference for convs)."""

import numpy as np
import pytest

from onnx_depth import ir, runtime
from onnx_depth.analysis.layer_unit import channel_vector, unit_ending_at
from onnx_depth.kernels.conv_reference import conv_apply

from .models import Net, randn


@pytest.mark.parametrize("shape,ok", [((), True), ((1,), True), ((4, 1, 1), True), ((1, 4, 1, 1), True),
                                      ((4,), False), ((1, 4), False), ((2, 4, 1, 1), False), ((4, 1, 2), False)])
def test_channel_vector_rule(shape, ok):
    c = np.arange(int(np.prod(shape)) or 1, dtype=np.float32).reshape(shape)
    v = channel_vector(c, 4, 2)
    assert (v is not None) == ok
    if ok:
        assert v.shape == (4,)


def _run(m, x):
    sess = runtime.make_session(m)
    return runtime.run(sess, {"x": x}, [m.graph.output[0].name])[m.graph.output[0].name]


@pytest.mark.parametrize("bias_shape", [(1, 5, 1, 1), (5, 1, 1), ()])
def test_conv_bias_add_bn_unit_folds_exactly(bias_shape):
    rng = np.random.default_rng(0)
    net = Net(("N", 3, 6, 6))
    h = net.rand_conv("x", 3, 5, 3, bias=True)
    c = rng.standard_normal(bias_shape).astype(np.float32)
    h = net.op("Add", [h, net.const(c, "bias")])
    h = net.bn(h, rng.uniform(0.5, 2, 5).astype(np.float32), rng.standard_normal(5).astype(np.float32),
               rng.standard_normal(5).astype(np.float32), rng.uniform(0.5, 2, 5).astype(np.float32))
    m = net.model(h)
    g = ir.load(m)
    unit, why = unit_ending_at(g, m.graph.output[0].name)
    assert unit is not None, why
    assert unit.kind == "conv" and [n.op_type for n in unit.nodes] == ["Conv", "Add", "BatchNormalization"]
    x = randn(4, 3, 6, 6, seed=1)
    np.testing.assert_allclose(conv_apply(unit.folded(), x), _run(m, x), rtol=1e-4, atol=1e-4)


def test_dense_units_and_refusals():
    rng = np.random.default_rng(1)
    net = Net(("N", 6))
    h = net.gemm("x", rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32))
    h = net.bn(h, rng.uniform(0.5, 2, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32))
    m = net.model(h)
    g = ir.load(m)
    unit, why = unit_ending_at(g, m.graph.output[0].name)
    assert unit is not None and unit.kind == "dense", why
    W, b = unit.folded()
    x = randn(5, 6, seed=2)
    np.testing.assert_allclose(x @ W + b, _run(m, x), rtol=1e-4, atol=1e-4)
    # a bias that aligns with a spatial axis is not a per-channel bias: refused with the reason
    net = Net(("N", 3, 4, 4))
    h = net.rand_conv("x", 3, 4, 1, bias=False)
    h = net.op("Add", [h, net.const(np.ones(4, np.float32), "bias")])
    m = net.model(h)
    g = ir.load(m)
    unit, why = unit_ending_at(g, m.graph.output[0].name)
    assert unit is None and "per-channel" in why
