"""Merge + least-squares refit of the layers around one activation (planning.activation_fidelity:
the planner's candidates and planning.realize / importance.fit_operators / sequential_refit),
and the per-activation report built on it. Oracle: onnxruntime (compare_models / evaluate)."""

import json
import math

import numpy as np
import pytest

from onnx_depth import ir
from onnx_depth.analysis.activation_report import activation_report, render_table
from onnx_depth.analysis.activations import find_activations
from onnx_depth.analysis.criteria import decide
from onnx_depth.analysis.fidelity import evaluate
from onnx_depth.analysis.stats import collect_stats
from onnx_depth.compare import compare_models
from onnx_depth.passes.linearize import linearize
from onnx_depth.planning.activation_fidelity import annotate_report, refit_sites, site_candidates, site_option

from tests.analysis.models import Net, randn
from tests.analysis.test_report import report_model


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


def _refit(m0, cal, **kw):
    cands = site_candidates(m0, cal)
    return refit_sites(cands, cal, sequential=False, **kw)


def test_report_rows_and_table():
    m = report_model()
    x = randn(40, 3, 6, 6, seed=1)
    decisions: dict = {}
    rows = activation_report(m, x[:30], record=decisions)
    annotate_report(rows, m, x[:30], decisions=decisions, estimate=True, evaluation=x[30:])
    assert [r["kind"] for r in rows] == ["relu", "hardswish"]
    relu = rows[0]
    assert relu["channels"] == 6 and relu["dead_channels"] >= 1 and relu["counts"]["OFF"] >= 1
    assert relu["tlc"]["counts"]["MIXED"] == 6  # gamma 1, beta 0: P_OFF = 0.5 everywhere
    assert relu["merge"]["kind"] == "conv" and relu["merge"]["macs_before"] > 0
    assert relu["merge"]["macs_before"] == 6 * 3 * 36 + 4 * 6 * 9 * 36  # 1x1, then 3x3 "same" on 6x6, per sample
    assert relu["fidelity"]["refit"]["nmse"] <= relu["fidelity"]["naive"]["nmse"] + 1e-12
    assert "refused" in rows[1]["merge"]
    json.dumps(rows)  # JSON-serializable for analyze --json
    table = render_table(rows)
    assert "Relu" in table and "HardSwish" in table and len(table.splitlines()) == 4


@pytest.mark.parametrize("group2", [1, 6])
def test_exactly_linear_conv_segment_is_recovered_without_a_prior(group2):
    # channels 0..2 always ON (bias +20), 3..5 always OFF (bias -20): the segment is linear,
    # but no decision is passed, so the naive prior is the identity (wrong for OFF channels);
    # the least-squares fit alone must find the exact merged conv.
    bias = np.array([20, 20, 20, -20, -20, -20], np.float32)
    m0 = _conv_act_conv(bias, group2=group2)
    x = randn(64, 4, 7, 7, seed=1)
    r = _refit(m0, x[:48], ridge=1e-9)
    assert len(r.plan) == 1, r.refused
    m1 = ir.to_proto(r.graph)
    assert _ops(m1) == ["Conv"]
    c = compare_models(m0, m1, [{"x": x[48:]}], rtol=1e-5, atol=1e-5)
    assert c.nmse < 1e-10 and c.max_abs < 1e-4, c.summary()
    nmse_naive, nmse_refit = r.quality[r.plan[0].id]
    assert nmse_refit < 1e-10 < nmse_naive


def test_exactly_linear_dense_segment_recovered_to_1e_5():
    # half the units always positive, half always negative under a 0.3 PReLU slope: linear, and
    # the data-free prior (the identity) is wrong for the negative half
    rng = np.random.default_rng(2)
    net = Net(("N", 6))
    W1 = (rng.standard_normal((6, 8)) * 0.1).astype(np.float32)
    b1 = np.array([20] * 4 + [-20] * 4, np.float32)
    a = net.prelu(net.gemm("x", W1, b1), np.full(8, 0.3, np.float32))
    m0 = net.model(net.gemm(a, rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)))
    x = randn(40, 6, seed=3)
    r = _refit(m0, x[:30], ridge=1e-9)
    assert len(r.plan) == 1, r.refused
    c = compare_models(m0, ir.to_proto(r.graph), [{"x": x[30:]}], rtol=1e-5, atol=1e-5)
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
    r = _refit(m0, cal, decisions=decs)
    naive = evaluate(m0, ir.to_proto(g_naive), ev).nmse
    fitted = evaluate(m0, ir.to_proto(r.graph), ev).nmse
    assert fitted < 0.5 * naive, (fitted, naive)
    nmse_naive, nmse_refit = r.quality[r.plan[0].id]
    assert nmse_refit < nmse_naive


def _three_convs(seed=6):
    rng = np.random.default_rng(seed)
    net = Net(("N", 4, 8, 8), seed)
    h = "x"
    for k in range(3):
        w = (rng.standard_normal((4, 4, 3, 3)) / np.sqrt(36)).astype(np.float32)
        h = net.conv(h, w, (rng.standard_normal(4) * 0.3).astype(np.float32), pads=(1,) * 4)
        if k < 2:
            h = net.prelu(h, np.full((4, 1, 1), 0.25, np.float32))
    return net.model(h)


def test_adjacent_sites_sequential_and_parallel_modes():
    # two activations in a row: sequential mode merges the three layers into one operator fitted
    # on the modified network; parallel mode fits each site on the original network and refuses
    # the one that overlaps an earlier merge. Both beat naive linearization.
    m0 = _three_convs()
    g = ir.load(m0)
    x = randn(200, 4, 8, 8, seed=7)
    decs = _decisions(g, x[:150])
    results = {}
    for seq in (True, False):
        cands = site_candidates(m0, x[:150], max_layers=3)
        r = refit_sites(cands, x[:150], decisions=decs, sequential=seq)
        if seq:
            assert [o.end - o.st for o in r.plan] == [3] and _ops(ir.to_proto(r.graph)) == ["Conv"]
        else:
            cands = site_candidates(m0, x[:150])  # two-layer segments only: the two sites overlap
            r = refit_sites(cands, x[:150], decisions=decs, sequential=False)
            assert len(r.plan) == 1 and any("overlaps" in why for why in r.refused), r.refused
        results[seq] = evaluate(m0, ir.to_proto(r.graph), x[150:]).nmse
    g_naive = g.copy()
    linearize(g_naive, decisions=decs, force=True)
    naive = evaluate(m0, ir.to_proto(g_naive), x[150:]).nmse
    assert results[True] < naive and results[False] < naive, (results, naive)


def test_mac_limit_refuses():
    m0 = _conv_act_conv(0.0, k1=3, p1=1, k2=3, p2=1)  # 3x3 then 3x3 -> 5x5 costs more MACs
    x = randn(8, 4, 7, 7)
    cands = site_candidates(m0, x, max_mac_ratio=math.inf)
    site = find_activations(cands.graph)[0].name
    opt, _ = site_option(cands, site)
    assert opt is not None
    r = refit_sites(cands, x, sites=[site], max_mac_ratio=1.0)
    assert not r.plan and "MACs" in r.refused[0]
