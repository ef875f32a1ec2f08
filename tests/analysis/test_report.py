import json

import numpy as np

from onnx_depth.analysis.activation_report import activation_report, render_table
from onnx_depth.analysis.fidelity import evaluate

from .models import Net, randn


def report_model():
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
    m = report_model()
    x = randn(40, 3, 6, 6, seed=1)
    decisions: dict = {}
    rows = activation_report(m, x[:30], record=decisions)
    assert [r["kind"] for r in rows] == ["relu", "hardswish"]
    relu = rows[0]
    assert relu["channels"] == 6 and relu["dead_channels"] >= 1 and relu["counts"]["OFF"] >= 1
    assert relu["tlc"]["counts"]["MIXED"] == 6  # gamma 1, beta 0: P_OFF = 0.5 everywhere
    assert set(decisions) == {r["site"] for r in rows if r["criterion"] is not None}
    json.dumps(rows)  # JSON-serializable for analyze --json
    table = render_table(rows)
    assert "Relu" in table and "HardSwish" in table and len(table.splitlines()) == 4


def test_report_without_calibration_is_data_free():
    rows = activation_report(report_model())
    assert rows[0]["criterion"] == "tlc" and rows[1]["criterion"] is None


def test_fidelity_identical_and_labels():
    m = report_model()
    x = randn(10, 3, 6, 6)
    f = evaluate(m, m, x, labels=np.zeros(10, np.int64))
    assert f.nmse == 0 and f.samples == 10 and f.accuracy_reference == f.accuracy_candidate
