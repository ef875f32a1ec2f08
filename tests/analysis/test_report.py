import json

import numpy as np
import pytest

from onnx_depth import ir
from onnx_depth.analysis.fidelity import evaluate
from onnx_depth.analysis.pipeline import calibrated_rewrites
from onnx_depth.analysis.report import activation_report, render_table
from onnx_depth.compare import compare_models

from .models import Net, randn


def _model():
    rng = np.random.default_rng(0)
    net = Net(("N", 3, 6, 6))
    w1 = rng.standard_normal((6, 3, 1, 1)).astype(np.float32)
    b1 = rng.standard_normal(6).astype(np.float32)
    w1[0] = 0
    b1[0] = -1.0  # dead channel
    h = net.bn(net.conv("x", w1, b1), np.ones(6, np.float32), np.zeros(6, np.float32))
    a = net.relu(h)
    h2 = net.rand_conv(a, 6, 4, 3)
    a2 = net.hardswish_decomposed(h2)
    return net.model(net.op("GlobalAveragePool", [a2]))


def test_report_rows_and_table():
    m = _model()
    x = randn(40, 3, 6, 6, seed=1)
    rows = activation_report(m, x[:30], evaluation=x[30:], estimate_fidelity=True)
    assert [r["kind"] for r in rows] == ["relu", "hardswish"]
    relu = rows[0]
    assert relu["channels"] == 6 and relu["dead_channels"] >= 1 and relu["counts"]["OFF"] >= 1
    assert relu["tlc"]["counts"]["MIXED"] == 6  # gamma 1, beta 0: P_OFF = 0.5 everywhere
    assert relu["merge"]["kind"] == "conv" and relu["merge"]["macs_before"] > 0
    assert relu["fidelity"]["refit"]["nmse"] <= relu["fidelity"]["naive"]["nmse"] + 1e-12
    assert "refused" in rows[1]["merge"]
    json.dumps(rows)  # JSON-serializable for analyze --json
    table = render_table(rows)
    assert "Relu" in table and "HardSwish" in table and len(table.splitlines()) == 4


def test_report_without_calibration_is_data_free():
    rows = activation_report(_model())
    assert rows[0]["criterion"] == "tlc" and rows[1]["criterion"] is None


def test_fidelity_identical_and_labels():
    m = _model()
    x = randn(10, 3, 6, 6)
    f = evaluate(m, m, x, labels=np.zeros(10, np.int64))
    assert f.nmse == 0 and f.samples == 10 and f.accuracy_reference == f.accuracy_candidate


def test_calibrated_rewrites_prunes_then_linearizes():
    m = _model()
    g = ir.load(m)
    x = randn(30, 3, 6, 6, seed=2)
    results = calibrated_rewrites(g, x)
    names = [r.name for r in results]
    assert names == ["dead_channels", "linearize"] and results[0].changed == 1
    c = compare_models(m, ir.to_proto(g), [{"x": x}])
    assert c.allclose, c.summary()


@pytest.mark.realmodel
def test_mnist_dead_channels_keep_accuracy():
    from onnx_depth.analysis.criteria import decide
    from onnx_depth.analysis.stats import collect_stats
    from onnx_depth.passes.base import PassContext
    from onnx_depth.passes.dead_channels import prune_dead_channels
    from onnx_depth.zoo import real

    try:
        path = real.mnist_cnn_onnx()
        x, y = real.mnist_digits(1200)
    except real.RealAssetMissing as e:
        pytest.skip(str(e))
    g = ir.load(path)
    m0 = ir.to_proto(g.copy())
    st = collect_stats(g, x[:800])
    decs = {s.name: decide(g, s, stats=st.for_site(s)) for s in st.sites}
    res = prune_dead_channels(g, PassContext(lossless=False), decisions=decs)
    assert res.changed >= 2
    f = evaluate(m0, ir.to_proto(g), x[800:], labels=y[800:])
    assert f.top1_agreement >= 0.995 and f.accuracy_candidate >= f.accuracy_reference - 0.005
