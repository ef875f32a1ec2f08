"""kernels.lstsq: streamed normal equations, scale+bias correction, the validation-chosen estimator."""

from __future__ import annotations

import numpy as np

from onnx_depth.kernels.lstsq import NormalEquations, select


def _ne(X, Y) -> NormalEquations:
    ne = NormalEquations.zeros(1, X.shape[1], Y.shape[1])
    for a in range(0, len(X), 37):  # streamed in uneven chunks
        ne.add(X[None, a:a + 37], Y[None, a:a + 37])
    return ne


def _w(W, b):
    return np.concatenate([W, b[None]], 0)[None]


def test_errors_from_normal_equations_match_the_data():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((200, 6)), rng.standard_normal((200, 3))
    W = _w(rng.standard_normal((6, 3)), rng.standard_normal(3))
    ne = _ne(X, Y)
    direct = float(np.sum((X @ W[0, :-1] + W[0, -1] - Y) ** 2))
    assert np.isclose(ne.sq_err(W), direct, rtol=1e-9)


def test_scale_bias_recovers_a_per_channel_gain_and_offset():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 5))
    W0 = _w(rng.standard_normal((5, 4)), rng.standard_normal(4))
    a, b = np.array([2.0, 0.5, -1.0, 1.0]), np.array([1.0, -3.0, 0.0, 0.25])
    Y = (X @ W0[0, :-1] + W0[0, -1]) * a + b
    ne = _ne(X, Y)
    assert ne.nmse(ne.scale_bias(W0)) < 1e-10 < ne.nmse(W0)


def test_select_prefers_the_prior_on_tiny_data_and_the_fit_on_plenty():
    rng = np.random.default_rng(2)
    d, o = 40, 8
    W0 = _w(rng.standard_normal((d, o)), np.zeros(o))
    Wtrue = W0 + 0.05 * _w(rng.standard_normal((d, o)), np.zeros(o))

    def data(n):
        X = rng.standard_normal((n, d))
        return X, X @ Wtrue[0, :-1] + 0.5 * rng.standard_normal((n, o))

    val = _ne(*data(2000))
    tiny = select(_ne(*data(45)), val, W0)   # 45 rows for 41 unknowns: the unshrunk fit overfits
    many = select(_ne(*data(5000)), val, W0)
    assert tiny.val_nmse[tiny.choice] <= min(tiny.val_nmse.values()) + 1e-15
    assert tiny.val_nmse[tiny.choice] < tiny.val_nmse["ridge 0.0001"]
    assert many.val_nmse[many.choice] < many.val_nmse["naive"]
    assert select(_ne(*data(45)), None, W0).choice.startswith("ridge")  # no validation: fixed ridge
