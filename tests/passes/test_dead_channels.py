import numpy as np
import onnx

from onnx_depth import ir
from onnx_depth.analysis.criteria import decide
from onnx_depth.analysis.stats import collect_stats
from onnx_depth.compare import compare_models
from onnx_depth.passes.base import PassContext
from onnx_depth.passes.dead_channels import prune_dead_channels

from tests.analysis.models import Net, randn

LOSSY = PassContext(lossless=False)


def _feeds(x):
    return [{"x": x[i:i + 4]} for i in range(0, len(x), 4)]


def _conv_relu_conv(dead=(1, 3), pool=False, flatten=False, bn_zero=False, seed=0):
    rng = np.random.default_rng(seed)
    net = Net(("N", 3, 8, 8), seed)
    w1 = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(6).astype(np.float32)
    for c in dead:
        w1[c] = 0.0
        b1[c] = -1.0 - c  # constant negative pre-activation: exactly 0 after Relu
    h = net.conv("x", w1, b1, pads=(1, 1, 1, 1))
    if bn_zero:
        gamma = np.ones(6, np.float32)
        beta = np.zeros(6, np.float32)
        w1[:] = w1  # weights stay random; the BN kills the channels
        gamma[list(dead)] = 0.0
        beta[list(dead)] = -0.5
        h = net.bn(h, gamma, beta, rng.standard_normal(6).astype(np.float32), np.abs(rng.standard_normal(6)).astype(np.float32) + 0.5)
    a = net.relu(h)
    if pool:
        a = net.op("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2])
    if flatten:
        f = net.op("Flatten", [a], axis=1)
        n = 6 * (4 * 4 if pool else 8 * 8)
        y = net.gemm(f, rng.standard_normal((n, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32))
    else:
        y = net.conv(a, rng.standard_normal((4, 6, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32), pads=(1, 1, 1, 1))
    return net.model(y)


def _check_equal(m0, g, x):
    m1 = ir.to_proto(g)
    c = compare_models(m0, m1, _feeds(x))
    assert c.allclose, c.summary()
    return m1


def _weights(m, op):
    return [onnx.numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == n.input[1])).shape for n in m.graph.node if n.op_type == op]


def test_data_free_exact_pruning_conv_relu_conv():
    m0 = _conv_relu_conv()
    g = ir.load(m0)
    res = prune_dead_channels(g)  # lossless context, data-free proofs only
    assert res.changed == 1, res.to_dict()
    m1 = _check_equal(m0, g, randn(8, 3, 8, 8))
    assert _weights(m1, "Conv") == [(4, 3, 3, 3), (4, 4, 3, 3)]


def test_data_free_gamma_zero_bn():
    m0 = _conv_relu_conv(dead=(0, 5), bn_zero=True)
    g = ir.load(m0)
    assert prune_dead_channels(g).changed == 1
    _check_equal(m0, g, randn(8, 3, 8, 8))


def test_calibration_pruning_through_maxpool_and_flatten_gemm():
    m0 = _conv_relu_conv(dead=(2,), pool=True, flatten=True)
    g = ir.load(m0)
    x = randn(24, 3, 8, 8, seed=1)
    st = collect_stats(g, x[:16])
    decs = {s.name: decide(g, s, stats=st.for_site(s)) for s in st.sites}
    kept = {}
    res = prune_dead_channels(g, LOSSY, decisions=decs, record=kept)
    assert res.changed == 1 and list(kept.values())[0].tolist() == [0, 1, 3, 4, 5]
    m1 = _check_equal(m0, g, x[16:])
    assert _weights(m1, "Gemm") == [(80, 5)]


def test_lossless_context_ignores_data_decisions():
    m0 = _conv_relu_conv(dead=(2,))
    g = ir.load(m0)
    st = collect_stats(g, randn(8, 3, 8, 8))
    decs = {s.name: decide(g, s, stats=st.for_site(s)) for s in st.sites}
    # the data-driven OFF decision for channel 2 is backed by a proof (zero weights): pruned
    assert prune_dead_channels(g, PassContext(), decisions=decs).changed == 1


def test_dense_relu_dense_and_clip_saturated_channel_folds_into_bias():
    rng = np.random.default_rng(3)
    net = Net(("N", 5))
    W1 = rng.standard_normal((5, 6)).astype(np.float32)
    b1 = rng.standard_normal(6).astype(np.float32)
    W1[:, 0] = 0
    b1[0] = -2.0  # OFF
    W1[:, 4] = 0
    b1[4] = 9.0  # saturated at 6
    h = net.gemm("x", W1, b1)
    y = net.gemm(net.clip(h), rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32))
    m0 = net.model(y)
    g = ir.load(m0)
    res = prune_dead_channels(g)
    assert res.changed == 1 and "1 zero, 1 constant" in res.details[0]
    m1 = _check_equal(m0, g, randn(12, 5))
    assert _weights(m1, "Gemm") == [(5, 4), (4, 3)]


def test_refuses_other_topologies_with_reason_and_leaves_graph_alone():
    rng = np.random.default_rng(4)
    net = Net(("N", 4, 6, 6))
    w = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    w[1] = 0
    b[1] = -1
    h = net.conv("x", w, b)
    a = net.relu(h)
    y = net.op("Add", [a, "x"])  # residual: the channel is still needed by the Add
    m0 = net.model(y)
    g = ir.load(m0)
    res = prune_dead_channels(g)
    assert res.changed == 0 and "not a Conv/Gemm/MatMul/Flatten" in res.refused[0]
    assert compare_models(m0, ir.to_proto(g), _feeds(randn(4, 4, 6, 6))).allclose


def test_depthwise_consumer_refused():
    rng = np.random.default_rng(5)
    net = Net(("N", 3, 6, 6))
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    b = np.array([-1, 1, 1, 1], np.float32)
    w[0] = 0
    a = net.relu(net.conv("x", w, b))
    y = net.conv(a, rng.standard_normal((4, 1, 3, 3)).astype(np.float32), None, pads=(1, 1, 1, 1), group=4)
    g = ir.load(net.model(y))
    res = prune_dead_channels(g)
    assert res.changed == 0 and "grouped conv" in res.refused[0]
