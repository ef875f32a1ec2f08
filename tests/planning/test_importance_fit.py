"""The refit state behind importance (kernels.lstsq.OperatorFit as fit_operators feeds it, one
small batch per calibration sample): rows are buffered into updates of at least d+1 rows, and
the normal equations are the same sums as one update over every row."""

from __future__ import annotations

import numpy as np

from onnx_depth.kernels import ConvSpec
from onnx_depth.kernels.lstsq import NormalEquations, OperatorFit


def test_buffered_rows_give_the_same_normal_equations_and_solution():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((12, 3)).astype(np.float32)
    xs = [rng.standard_normal((1, 4, 12)).astype(np.float32) for _ in range(9)]  # 4 rows per add, d = 12
    ys = [x @ W + 0.1 * rng.standard_normal((1, 4, 3)).astype(np.float32) for x in xs]
    f = OperatorFit((W, None))
    f.add(xs[0], ys[0])
    assert f.normal is None  # 4 rows < d + 1: still buffered
    for x, y in zip(xs[1:], ys[1:]):
        f.add(x, y)
    op, n0, n1 = f.solve(1e-3)
    ne = NormalEquations.zeros(1, 12, 3)
    ne.add(np.concatenate(xs, 1).reshape(1, -1, 12), np.concatenate(ys, 1).reshape(1, -1, 3))
    assert f.normal.rows == ne.rows == 36
    np.testing.assert_allclose(f.normal.A, ne.A, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f.normal.B, ne.B, rtol=1e-12, atol=1e-12)
    W1 = ne.solve(f.w0(), 1e-3)
    np.testing.assert_allclose(op[0], W1[0, :-1].astype(np.float32), rtol=1e-6, atol=1e-6)
    assert n1 <= n0


def test_sampled_conv_rows_are_buffered_per_sample_in_the_same_order():
    rng = np.random.default_rng(1)
    spec = ConvSpec(weight=rng.standard_normal((4, 3, 3, 3)).astype(np.float32), bias=np.zeros(4, np.float32),
                    pads=(1, 1, 1, 1))
    xs = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(6)]
    ys = [rng.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(6)]
    a, b = OperatorFit(spec, max_rows=10, seed=3), OperatorFit(spec, max_rows=10, seed=3)
    for x, y in zip(xs, ys):
        a.add(x, y)        # buffered: flushed once there are more than d = 27 rows
        b.add(x, y)
        b.flush()          # one update per sample, as before the buffering
    a.flush()
    assert a.normal.rows == b.normal.rows == 60
    np.testing.assert_allclose(a.normal.A, b.normal.A, rtol=1e-12)
    np.testing.assert_allclose(a.normal.yy, b.normal.yy, rtol=1e-12)
