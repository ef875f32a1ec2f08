"""Issue 13 item 4: a composed weight that leaves float32's range is never written. W1 W2 is
composed in float64; when it is not finite in float32, or its magnitude is outside the safe
range (kernels.float32_range), the merge is refused with the reason and the layers stay."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_depth.compare import compare_models
from onnx_depth.kernels import SAFE_MAX, float32_blocker

from .builders import ModelBuilder, check_lossless, n_nodes, rand_conv, refusals


def _tiny_feeds(model, shape, scale, n=2):
    rng = np.random.default_rng(0)
    return [{model.graph.input[0].name: (rng.standard_normal(shape) * scale).astype(np.float32)} for _ in range(n)]


def test_float32_blocker_bounds():
    assert float32_blocker(np.ones(3), None) is None
    assert "not finite" in float32_blocker(np.array([1e39]))
    assert "not finite" in float32_blocker(np.array([np.nan], np.float32))
    assert "safe range" in float32_blocker(np.array([SAFE_MAX * 10]))


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_dense_product_overflowing_float32_is_not_merged(op):
    """x [N,2] -> 2x8 (entries 1e20) -> 8x2 (entries 1e19): each layer is finite and so is the
    original output on small inputs (~1e9), but W1 W2 has entries 8e39 = inf in float32."""
    rng = np.random.default_rng(4)
    W1 = (np.sign(rng.standard_normal((2, 8))) * 1e20).astype(np.float32)
    W2 = np.abs(rng.standard_normal((8, 2)) * 1e19 + 1e19).astype(np.float32)
    b = ModelBuilder(("N", 2))
    if op == "MatMul":
        y = b.matmul(b.matmul(b.x, W1), W2)
    else:
        y = b.gemm(b.gemm(b.x, W1), W2)
    m = b.model(y)
    feeds = _tiny_feeds(m, (3, 2), 1e-30)
    with np.errstate(over="raise"):  # no silent numpy overflow on the way
        r = check_lossless(m, feeds=feeds, n_random=0)
    assert n_nodes(r.model, "MatMul", "Gemm") == 2
    why = refusals(r, "merge_linear")
    assert any("float32" in w for w in why), why
    c = compare_models(m, r.model, feeds=feeds, n_random=0)
    assert c.allclose and np.isfinite(c.max_abs)


def test_conv_product_overflowing_float32_is_not_merged():
    rng = np.random.default_rng(5)
    c1, c2 = rand_conv(rng, 8, 2, (1, 1), bias=False), rand_conv(rng, 2, 8, (1, 1), bias=False)
    c1.weight[...] = np.sign(c1.weight) * 1e20
    c2.weight[...] = np.abs(c2.weight) * 1e19 + 1e19
    b = ModelBuilder((1, 2, 4, 4))
    m = b.model(b.conv(b.conv(b.x, c1), c2))
    feeds = _tiny_feeds(m, (1, 2, 4, 4), 1e-30)
    r = check_lossless(m, feeds=feeds, n_random=0)
    assert n_nodes(r.model, "Conv") == 2
    assert any("float32" in w for w in refusals(r, "merge_linear"))
