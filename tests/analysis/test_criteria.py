import numpy as np
from scipy.stats import norm

from onnx_depth import ir
from onnx_depth.analysis.activations import find_activations
from onnx_depth.analysis.criteria import calibration_criterion, decide, exact_criterion, layercollapse_criterion, tlc_criterion
from onnx_depth.analysis.stats import collect_stats

from .models import Net, randn


def _bn_act(gamma, beta, act="relu"):
    net = Net(("N", len(gamma), 4, 4))
    h = net.bn("x", np.asarray(gamma, np.float32), np.asarray(beta, np.float32))
    y = net.relu(h) if act == "relu" else net.clip(h)
    g = ir.load(net.model(y))
    return g, find_activations(g)[0]


def test_tlc_beta_much_larger_than_gamma_is_on_and_negative_is_off():
    g, site = _bn_act([1.0, 1.0, 0.5, 0.0, 0.0], [10.0, -10.0, 0.3, 2.0, -1.0])
    dec, why = tlc_criterion(g, site, tol=1e-6)
    assert why is None
    assert list(dec.state) == ["ON", "OFF", "MIXED", "ON", "OFF"]
    np.testing.assert_allclose(dec.fractions["below"][:3], norm.cdf([-10.0, 10.0, -0.6]))
    assert list(dec.exact) == [False, False, False, True, True]  # gamma == 0 is a proof


def test_tlc_relu6_upper_clip_probability_and_agrees_with_calibration():
    gamma = np.array([1.0, 2.0, 0.5], np.float32)
    beta = np.array([3.0, 7.0, -0.2], np.float32)
    g, site = _bn_act(gamma, beta, act="clip")
    dec, _ = tlc_criterion(g, site)
    np.testing.assert_allclose(dec.fractions["above"], 1 - norm.cdf((6.0 - beta) / gamma), rtol=1e-6)
    np.testing.assert_allclose(dec.fractions["below"], norm.cdf(-beta / gamma), rtol=1e-6)
    # Gaussian input -> BN output ~ N(beta, gamma^2): measured fractions agree with the model
    st = collect_stats(g, randn(400, 3, 4, 4, seed=5))
    cal = calibration_criterion(site, st.for_site(site))
    for r in ("below", "above"):
        np.testing.assert_allclose(cal.fractions[r], dec.fractions[r], atol=0.02)


def test_tlc_needs_a_bn():
    net = Net(("N", 2))
    g = ir.load(net.model(net.relu("x")))
    dec, why = tlc_criterion(g, find_activations(g)[0])
    assert dec is None and "no BatchNormalization" in why


def _dense_prelu_dense(slope, seed=0):
    rng = np.random.default_rng(seed)
    net = Net(("N", 6), seed)
    h = net.gemm("x", rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32))
    a = net.prelu(h, np.asarray(slope, np.float32))
    y = net.gemm(a, rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32))
    g = ir.load(net.model(y))
    return g, find_activations(g)[0]


def test_layercollapse_slope_one_is_exact_with_zero_bound():
    g, site = _dense_prelu_dense(np.ones(8))
    dec, _ = layercollapse_criterion(g, site)
    assert dec.all_linear and np.all(dec.state == "ON") and np.all(dec.exact)
    assert dec.info["bound"] == 0.0
    ex = exact_criterion(g, site)
    assert ex is not None and np.all(ex.exact)


def test_layercollapse_bound_covers_the_measured_error():
    slope = np.array([0.97, 1.02, 0.96, 1.0, 0.5, 0.99, 1.04, 0.2])
    g, site = _dense_prelu_dense(slope)
    x = randn(300, 6, seed=3)
    st = collect_stats(g, x, extra={"x": 1})
    dec, _ = layercollapse_criterion(g, site, tau=0.05, stats=st.for_site(site), input_stats=st.extra["x"])
    assert list(dec.state) == ["ON", "ON", "ON", "ON", "MIXED", "ON", "ON", "MIXED"]
    assert not dec.info["bound_per_unit_x2"]
    # measured error at the activation output (ON channels as identity) is positive and
    # propagated through W2 stays below the paper's bound C (1-a)^2
    assert 0 < dec.info["measured_act_err"]
    assert dec.info["measured_out_err_bound"] <= dec.info["bound"]


def test_calibration_criterion_known_answer():
    x = randn(50, 3, 4, 4, seed=4)
    x[:, 0] = np.abs(x[:, 0]) + 0.1  # always positive: ON
    x[:, 1] = -np.abs(x[:, 1])  # never positive: OFF
    net = Net(("N", 3, 4, 4))
    g = ir.load(net.model(net.relu("x")))
    st = collect_stats(g, x)
    site = find_activations(g)[0]
    dec = decide(g, site, stats=st.for_site(site))
    assert list(dec.state) == ["ON", "OFF", "MIXED"] and dec.criterion == "calibration"
    assert dec.info["mse_identity"][0] == 0 and dec.info["mse_identity"][1] > 0
    # a tolerance turns a nearly-always-on channel ON
    x[0, 2] = 5.0
    x[:, 2] = np.abs(x[:, 2]) + 0.01
    x[0, 2, 0, 0] = -1.0
    st = collect_stats(g, x)
    assert calibration_criterion(site, st.for_site(site), tol=0.0).state[2] == "MIXED"
    assert calibration_criterion(site, st.for_site(site), tol=0.01).state[2] == "ON"


def test_decomposed_hardswish_regions():
    net = Net(("N", 3, 2, 2))
    g = ir.load(net.model(net.hardswish_decomposed("x")))
    site = find_activations(g)[0]
    x = np.stack([np.full((3, 2, 2), v, np.float32) for v in (-5.0, 4.0)])  # 2 samples
    x[:, 1] = 4.0
    x[:, 2] = -4.0
    st = collect_stats(g, x)
    dec = calibration_criterion(site, st.for_site(site))
    assert list(dec.state) == ["MIXED", "ON", "OFF"]
