import numpy as np
import pytest

from onnx_depth import ir
from onnx_depth.analysis.activations import find_activations
from onnx_depth.analysis.criteria import decide
from onnx_depth.analysis.fidelity import evaluate
from onnx_depth.analysis.stats import collect_stats
from onnx_depth.compare import compare_models
from onnx_depth.passes.linearize import linearize
from onnx_depth.passes.refit import find_segments, refit

from tests.analysis.models import Net, randn


def _decisions(g, x):
    st = collect_stats(g, x)
    return {s.name: decide(g, s, stats=st.for_site(s)) for s in st.sites}


def _ops(m):
    return [n.op_type for n in m.graph.node]


def _conv_act_conv(act_bias, k1=3, p1=1, k2=1, p2=0, group2=1, c=6, seed=0, act="relu"):
    rng = np.random.default_rng(seed)
    net = Net(("N", 4, 7, 7), seed)
    w1 = (rng.standard_normal((c, 4, k1, k1)) / np.sqrt(4 * k1 * k1)).astype(np.float32)
    b1 = np.asarray(act_bias, np.float32) * np.ones(c, np.float32)
    h = net.conv("x", w1, b1, pads=(p1,) * 4)
    a = net.relu(h) if act == "relu" else net.prelu(h, np.full((c, 1, 1), 0.3, np.float32))
    w2 = (rng.standard_normal((5 if group2 == 1 else c, c // group2, k2, k2)) / np.sqrt(c)).astype(np.float32)
    y = net.conv(a, w2, rng.standard_normal(w2.shape[0]).astype(np.float32), pads=(p2,) * 4, group=group2)
    return net.model(y)


@pytest.mark.parametrize("group2", [1, 6])
def test_exactly_linear_conv_segment_is_recovered_without_a_prior(group2):
    # channels 0..2 always ON (bias +20), 3..5 always OFF (bias -20): the segment is linear,
    # but no decision is passed, so the naive prior is the identity (wrong for OFF channels);
    # the least-squares fit alone must find the exact merged conv.
    bias = np.array([20, 20, 20, -20, -20, -20], np.float32)
    m0 = _conv_act_conv(bias, group2=group2)
    g = ir.load(m0)
    x = randn(64, 4, 7, 7, seed=1)
    r = refit(g, x[:48], ridge=1e-9)
    assert r.result.changed == 1, r.result.to_dict()
    m1 = ir.to_proto(g)
    assert _ops(m1) == ["Conv"]
    c = compare_models(m0, m1, [{"x": x[48:]}], rtol=1e-5, atol=1e-5)
    assert c.nmse < 1e-10 and c.max_abs < 1e-4, c.summary()
    assert r.fits[0].nmse_refit < 1e-10 < r.fits[0].nmse_naive


def test_exactly_linear_dense_segment_recovered_to_1e_5():
    rng = np.random.default_rng(2)
    net = Net(("N", 6))
    W1 = rng.standard_normal((6, 8)).astype(np.float32)
    a = net.prelu(net.gemm("x", W1, rng.standard_normal(8).astype(np.float32)), np.ones(8, np.float32))
    m0 = net.model(net.gemm(a, rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)))
    g = ir.load(m0)
    x = randn(40, 6, seed=3)
    r = refit(g, x[:30], ridge=1e-9)
    assert r.result.changed == 1
    c = compare_models(m0, ir.to_proto(g), [{"x": x[30:]}], rtol=1e-5, atol=1e-5)
    assert c.allclose and c.nmse < 1e-10, c.summary()


def test_refit_beats_naive_linearization_on_a_nonlinear_segment():
    m0 = _conv_act_conv(0.0, seed=4)  # zero bias: about half the values are cut by the Relu
    g = ir.load(m0)
    x = randn(160, 4, 7, 7, seed=5)
    cal, ev = x[:120], x[120:]
    decs = _decisions(g, cal)
    assert decs[find_activations(g)[0].name].counts()["MIXED"] > 0
    g_naive = g.copy()
    linearize(g_naive, decisions=decs, force=True)
    g_fit = g.copy()
    r = refit(g_fit, cal, decisions=decs)
    naive = evaluate(m0, ir.to_proto(g_naive), ev).nmse
    fitted = evaluate(m0, ir.to_proto(g_fit), ev).nmse
    assert fitted < 0.5 * naive, (fitted, naive)
    assert r.fits[0].nmse_refit < r.fits[0].nmse_naive


def test_conv_flatten_dense_heads_and_sequential_modes():
    rng = np.random.default_rng(6)
    net = Net((1, 3, 5, 5), 6)
    h = net.rand_conv("x", 3, 4, 2, pads=(0, 0, 0, 0))  # [1, 4, 4, 4]
    a = net.prelu(h, np.full((4, 1, 1), 0.25, np.float32))
    t = net.op("Transpose", [a], perm=[0, 3, 2, 1])
    f = net.op("Reshape", [t, net.const(np.array([1, -1]), "shape", np.int64)])
    h2 = net.gemm(f, rng.standard_normal((64, 10)).astype(np.float32) * 0.2, rng.standard_normal(10).astype(np.float32))
    a2 = net.prelu(h2, np.full(10, 0.1, np.float32))
    o1 = net.gemm(a2, rng.standard_normal((10, 2)).astype(np.float32))
    o2 = net.gemm(a2, rng.standard_normal((10, 3)).astype(np.float32))
    y = net.op("Concat", [o1, o2], axis=1)
    m0 = net.model(y)
    g = ir.load(m0)
    segs, _ = find_segments(g)
    assert [s.kind for s in segs] == ["conv_flatten", "dense"]
    x = randn(200, 3, 5, 5, seed=7)
    decs = _decisions(g, x[:150])
    results = {}
    for seq in (True, False):
        gg = g.copy()
        r = refit(gg, x[:150], decisions=decs, sequential=seq)
        if seq:
            # the second segment starts at the first one's merged Gemm: fitted on the modified net
            assert r.result.changed == 2, r.result.to_dict()
            assert _ops(ir.to_proto(gg)) == ["Flatten", "Gemm", "Gemm", "Concat"]
        else:
            # parallel mode fits every segment on the original network: overlapping ones are refused
            assert r.result.changed == 1 and "overlaps" in r.result.refused[0]
        results[seq] = evaluate(m0, ir.to_proto(gg), x[150:]).nmse
    g_naive = g.copy()
    linearize(g_naive, decisions=decs, force=True)
    naive = evaluate(m0, ir.to_proto(g_naive), x[150:]).nmse
    assert results[True] < naive and results[False] < naive, (results, naive)


def test_mac_limit_refuses():
    m0 = _conv_act_conv(0.0, k1=3, p1=1, k2=3, p2=1)  # 3x3 then 3x3 -> 5x5 costs more MACs
    g = ir.load(m0)
    x = randn(8, 4, 7, 7)
    r = refit(g, x, max_mac_ratio=1.0)
    assert r.result.changed == 0 and "MACs" in r.result.refused[0]
