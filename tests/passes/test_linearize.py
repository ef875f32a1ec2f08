import numpy as np

from onnx_depth import ir
from onnx_depth.analysis.activations import find_activations
from onnx_depth.analysis.criteria import decide, layercollapse_criterion
from onnx_depth.analysis.stats import collect_stats
from onnx_depth.compare import compare_models
from onnx_depth.passes import PassContext, merge_linear
from onnx_depth.passes.linearize import linearize

from tests.analysis.models import Net, randn


def _feeds(x, bs=4):
    return [{"x": x[i:i + bs]} for i in range(0, len(x), bs)]


def _ops(g):
    return [n.op_type for n in g.nodes]


def test_prelu_slope_one_is_exact_and_merges_away():
    rng = np.random.default_rng(0)
    net = Net(("N", 6))
    h = net.gemm("x", rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32))
    a = net.prelu(h, np.ones(8, np.float32))
    m0 = net.model(net.gemm(a, rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)))
    g = ir.load(m0)
    site = find_activations(g)[0]
    dec, _ = layercollapse_criterion(g, site)
    res = linearize(g, decisions={site.name: dec})
    assert res.changed == 1 and "removed" in res.details[0]
    merge_linear(g, PassContext(require_fewer_macs=False))
    assert _ops(g) == ["Gemm"]
    c = compare_models(m0, ir.to_proto(g), _feeds(randn(16, 6)))
    assert c.allclose, c.summary()


def test_all_on_relu_with_calibration_folds_and_merges_exactly():
    rng = np.random.default_rng(1)
    net = Net(("N", 3, 6, 6))
    w1 = (rng.standard_normal((5, 3, 1, 1)) * 0.1).astype(np.float32)
    h = net.conv("x", w1, np.full(5, 10.0, np.float32))  # always positive: Relu is the identity
    a = net.relu(h)
    m0 = net.model(net.rand_conv(a, 5, 4, 3))
    g = ir.load(m0)
    x = randn(12, 3, 6, 6, seed=2)
    st = collect_stats(g, x)
    decs = {s.name: decide(g, s, stats=st.for_site(s)) for s in st.sites}
    assert decs[st.sites[0].name].counts()["ON"] == 5
    assert linearize(g, decisions=decs).changed == 1
    assert "Relu" not in _ops(g)
    merge_linear(g, PassContext(require_fewer_macs=False))
    assert _ops(g).count("Conv") == 1
    c = compare_models(m0, ir.to_proto(g), _feeds(x))
    assert c.allclose, c.summary()


def test_on_off_mask_folds_into_the_producer():
    rng = np.random.default_rng(2)
    net = Net(("N", 4))
    W1 = (rng.standard_normal((4, 6)) * 0.1).astype(np.float32)
    b1 = np.array([5, -5, 5, -5, 5, 5], np.float32)  # ON OFF ON OFF ON ON
    a = net.relu(net.gemm("x", W1, b1))
    m0 = net.model(net.gemm(a, rng.standard_normal((6, 2)).astype(np.float32)))
    g = ir.load(m0)
    x = randn(20, 4)
    st = collect_stats(g, x)
    decs = {s.name: decide(g, s, stats=st.for_site(s)) for s in st.sites}
    res = linearize(g, decisions=decs)
    assert res.changed == 1 and "folded into" in res.details[0]
    assert _ops(g) == ["Gemm", "Gemm"]
    assert compare_models(m0, ir.to_proto(g), _feeds(x)).allclose


def test_mixed_is_refused_unless_forced():
    net = Net(("N", 3, 4, 4))
    m0 = net.model(net.relu(net.rand_conv("x", 3, 3, 1, pads=(0, 0, 0, 0))))
    g = ir.load(m0)
    x = randn(8, 3, 4, 4)
    st = collect_stats(g, x)
    decs = {s.name: decide(g, s, stats=st.for_site(s)) for s in st.sites}
    res = linearize(g, decisions=decs)
    assert res.changed == 0 and "MIXED" in res.refused[0]
    res = linearize(g, decisions=decs, force=True)
    assert res.changed == 1
    c = compare_models(m0, ir.to_proto(g), _feeds(x))
    assert not c.allclose  # naive linearization of a mixed activation is lossy


def test_clip_saturated_and_hardsigmoid_linear_pieces():
    net = Net(("N", 2, 3, 3))
    h = net.clip("x", 0.0, 6.0)
    m0 = net.model(h)
    g = ir.load(m0)
    x = np.stack([np.stack([np.full((3, 3), 8.0), np.full((3, 3), 2.5)])] * 4).astype(np.float32)
    st = collect_stats(g, x)
    decs = {s.name: decide(g, s, stats=st.for_site(s)) for s in st.sites}
    assert list(decs["y"].state) == ["SAT", "ON"]
    assert linearize(g, decisions=decs).changed == 1
    assert _ops(g) == ["Mul", "Add"]
    assert compare_models(m0, ir.to_proto(g), [{"x": x}]).allclose


def test_tlc_on_after_bn_folds_conv_bn_into_one_conv():
    from onnx_depth.analysis.criteria import tlc_criterion

    rng = np.random.default_rng(3)
    net = Net(("N", 3, 5, 5))
    h = net.conv("x", (rng.standard_normal((4, 3, 3, 3)) * 0.05).astype(np.float32), None, pads=(1, 1, 1, 1))
    h = net.bn(h, np.full(4, 0.5, np.float32), np.full(4, 30.0, np.float32))  # beta >> gamma: ON
    m0 = net.model(net.relu(h))
    g = ir.load(m0)
    site = find_activations(g)[0]
    dec, _ = tlc_criterion(g, site, tol=1e-6)
    assert dec.all_linear and set(dec.state) == {"ON"}
    res = linearize(g, decisions={site.name: dec})
    assert res.changed == 1
    assert _ops(g) in (["Conv", "BatchNormalization"], ["Conv"])
    c = compare_models(m0, ir.to_proto(g), _feeds(randn(8, 3, 5, 5)))
    assert c.allclose, c.summary()


def test_hardsigmoid_linear_piece_folds_into_conv_with_bias_add():
    net = Net(("N", 2, 4, 4))
    h = net.conv("x", np.full((3, 2, 1, 1), 0.01, np.float32), None)
    h = net.op("Add", [h, net.const(np.zeros((1, 3, 1, 1)), "bias")])
    m0 = net.model(net.op("HardSigmoid", [h], alpha=0.2, beta=0.5))
    g = ir.load(m0)
    x = randn(6, 2, 4, 4)
    st = collect_stats(g, x)
    decs = {s.name: decide(g, s, stats=st.for_site(s)) for s in st.sites}
    assert set(decs["y"].state) == {"LIN"}
    assert linearize(g, decisions=decs).changed == 1
    assert _ops(g) == ["Conv"]
    assert compare_models(m0, ir.to_proto(g), _feeds(x)).allclose
