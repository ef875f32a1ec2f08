"""Named merge_linear cases: the MobileNetV2 inverted residual without its activations, and
chains that only merge through the constant map of an earlier merge."""

from __future__ import annotations

import numpy as np
import pytest

from .builders import ModelBuilder, check_lossless, op_counts, rand_conv


@pytest.mark.parametrize("residual", [False, True])
def test_linear_inverted_residual_becomes_one_dense_3x3(residual):
    """1x1 expand (4 -> 24) -> depthwise 3x3 (pad 1) -> 1x1 project (24 -> 4), all with biases:
    1x1 -> dw 3x3 is CORRECTABLE (border map), and the project conv merges through that map:
    one dense 3x3 conv (144 MACs per pixel instead of 408) plus one constant Add; with the
    residual, x + (conv(x) + K) takes the identity into the conv as well."""
    rng = np.random.default_rng(0)
    b = ModelBuilder((1, 4, 9, 7))
    h = b.conv(b.x, rand_conv(rng, 24, 4, (1, 1)))
    h = b.conv(h, rand_conv(rng, 24, 24, (3, 3), group=24, pads=[1] * 4))
    h = b.conv(h, rand_conv(rng, 4, 24, (1, 1)))
    if residual:
        h = b.add(h, b.x)
    r = check_lossless(b.model(h))
    assert op_counts(r.model) == {"Conv": 1, "Add": 1}
    assert r.report.after.macs * 408 == r.report.before.macs * 144


def test_per_channel_add_between_convs_is_a_bias():
    rng = np.random.default_rng(1)
    b = ModelBuilder(["N", 3, "H", "W"])
    h = b.conv(b.x, rand_conv(rng, 5, 3, (3, 3), bias=False))
    h = b.add(h, rng.standard_normal((5, 1, 1)))
    m = b.model(b.conv(h, rand_conv(rng, 2, 5, (1, 1))))
    from .builders import feeds_for

    r = check_lossless(m, feeds_for(m, (2, 3, 6, 5)))
    assert op_counts(r.model) == {"Conv": 1}


def test_add_that_broadcasts_the_conv_output_is_not_merged():
    """Adding a [2, C, H, W] constant to a batch-1 conv output makes the batch 2: not a bias."""
    rng = np.random.default_rng(2)
    b = ModelBuilder((1, 3, 4, 4))
    h = b.conv(b.x, rand_conv(rng, 3, 3, (1, 1)))
    h = b.add(h, rng.standard_normal((2, 3, 4, 4)))
    r = check_lossless(b.model(b.conv(h, rand_conv(rng, 3, 3, (1, 1)))))
    assert op_counts(r.model) == {"Conv": 2, "Add": 1}


@pytest.mark.parametrize("where", ["residual", "parallel_one", "parallel_both", "dense_residual"])
def test_constant_after_a_layer_rides_along(where):
    """x + (conv(x) + K) -> conv'(x) + K; (A(x) + Ka) + (B(x) + Kb) -> (A + B)(x) + (Ka + Kb),
    with K a constant map (e.g. a border correction) or one that broadcasts."""
    rng = np.random.default_rng(3)
    C = 4
    if where == "dense_residual":
        b = ModelBuilder((2, 3, C))
        W = rng.standard_normal((C, C)).astype(np.float32)
        h = b.add(b.matmul(b.x, W, rng.standard_normal(C)), rng.standard_normal((3, C)))
        r = check_lossless(b.model(b.add(b.x, h)))
        assert op_counts(r.model) == {"MatMul": 1, "Add": 2}
        return
    b = ModelBuilder((1, C, 5, 6))
    a = b.add(b.conv(b.x, rand_conv(rng, C, C, (3, 3), pads=[1] * 4)), rng.standard_normal((1, C, 5, 6)))
    if where == "residual":
        out = b.add(b.x, a)
    else:
        other = b.conv(b.x, rand_conv(rng, C, C, (1, 1)))
        if where == "parallel_both":
            other = b.add(other, rng.standard_normal((C, 1, 1)))
        out = b.add(other, a)
    r = check_lossless(b.model(out))
    assert op_counts(r.model) == {"Conv": 1, "Add": 1}
