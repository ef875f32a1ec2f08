"""Conv∘Conv merging, checked against onnxruntime on the original chain."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from onnx_depth.kernels import ConvSpec, Tier, border_correction, compose, exactness, merge

from .onnx_builders import assert_not_constant_offset, assert_same, conv_chain_model, nchw_map
from .strategies import conv_chains, rand_conv


def check_chain(c1: ConvSpec, c2: ConvSpec, input_shape) -> None:
    spatial = input_shape[2:]
    tier = exactness(c1, c2, spatial)
    event(f"tier={tier.name}")
    # The shape-free tier is a safe (never optimistic) answer.
    assert exactness(c1, c2) >= tier
    merged = compose(c1, c2)
    assert merged.weight.dtype == np.float32
    assert merged.group % 1 == 0 and c1.group % merged.group == 0 and c2.group % merged.group == 0
    assert merged.output_spatial_shape(spatial) == c2.output_spatial_shape(c1.output_spatial_shape(spatial))
    reference = conv_chain_model([c1, c2], input_shape)
    if tier == Tier.INEXACT:
        with pytest.raises(ValueError, match="INEXACT"):
            border_correction(c1, c2, spatial)
        assert_not_constant_offset(reference, conv_chain_model([merged], input_shape), input_shape)
        return
    corr = border_correction(c1, c2, spatial)
    if tier == Tier.EXACT or c1.bias is None:
        assert not np.any(corr)
    event("correction=nonzero" if np.any(corr) else "correction=zero")
    candidate = conv_chain_model([merged], input_shape, add_const=nchw_map(corr) if np.any(corr) else None)
    assert_same(reference, candidate)


@settings(max_examples=200, deadline=None)
@given(conv_chains(rank=2))
def test_conv_conv_2d(chain):
    check_chain(*chain)


@settings(max_examples=200, deadline=None)
@given(conv_chains(rank=1))
def test_conv_conv_1d(chain):
    check_chain(*chain)


@settings(max_examples=200, deadline=None)
@given(conv_chains(rank=3, max_k=3))
def test_conv_conv_3d(chain):
    check_chain(*chain)


# ----- named cases ------------------------------------------------------------------------------


def _spec(rng, O, I, k, **kw):
    return rand_conv(rng, O, I, k, **kw)


def test_classic_tiers():
    rng = np.random.default_rng(0)
    pw = _spec(rng, 4, 3, (1, 1))
    k3p1 = _spec(rng, 4, 4, (3, 3), pads=(1, 1, 1, 1))
    k3p0 = _spec(rng, 4, 4, (3, 3))
    pw2 = _spec(rng, 4, 4, (1, 1))
    assert exactness(k3p1, pw2) == Tier.EXACT
    assert exactness(pw, k3p0) == Tier.EXACT
    assert exactness(pw, k3p1) == Tier.CORRECTABLE
    assert exactness(_spec(rng, 4, 3, (3, 3), pads=(1, 1, 1, 1)), k3p1) == Tier.INEXACT
    # A 1x1 conv2 with padding is not exact (its ring outputs b2, the merged conv b2 + W2 h_virt).
    pw_padded = _spec(rng, 4, 4, (1, 1), pads=(1, 1, 1, 1))
    assert exactness(pw, pw_padded) == Tier.CORRECTABLE
    assert exactness(k3p0, pw_padded) == Tier.INEXACT


def test_patchify_tier_depends_on_shape():
    rng = np.random.default_rng(1)
    patch = _spec(rng, 4, 3, (2, 2), strides=(2, 2))
    k3p1 = _spec(rng, 4, 4, (3, 3), pads=(1, 1, 1, 1))
    assert exactness(patch, k3p1) == Tier.INEXACT  # odd sizes see x[N-1] on the end ring
    assert exactness(patch, k3p1, (8, 8)) == Tier.CORRECTABLE
    assert exactness(patch, k3p1, (9, 8)) == Tier.INEXACT


def test_merged_shapes_and_groups():
    rng = np.random.default_rng(2)
    dw1 = _spec(rng, 6, 6, (3, 3), group=6, pads=(1, 1, 1, 1))
    dw2 = _spec(rng, 6, 6, (5, 5), group=6, strides=(2, 2), dilations=(2, 2))
    m = compose(dw1, dw2)
    assert m.group == 6 and m.is_depthwise
    assert m.kernel_shape == (11, 11) and m.strides == (2, 2) and m.dilations == (1, 1)
    assert m.pads == (1, 1, 1, 1)
    dense = _spec(rng, 5, 6, (1, 1))
    assert compose(dw1, dense).group == 1
    g2a = _spec(rng, 4, 6, (1, 1), group=2)
    g3 = _spec(rng, 6, 4, (1, 1), group=2)
    assert compose(g2a, g3).group == 2
    # dilation is kept compact: d1 = 2, s1 = 1, d2 = 2 -> taps on a stride-2 grid
    a = _spec(rng, 2, 2, (3,), dilations=(2,))
    b = _spec(rng, 2, 2, (3,), dilations=(2,))
    assert compose(a, b).dilations == (2,) and compose(a, b).kernel_shape == (5,)


def test_merge_helper():
    rng = np.random.default_rng(3)
    pw = _spec(rng, 4, 3, (1, 1))
    k3p1 = _spec(rng, 4, 4, (3, 3), pads=(1, 1, 1, 1))
    r = merge(pw, k3p1, (6, 7))
    assert r.tier == Tier.CORRECTABLE and r.correction.shape == (4, 6, 7)
    with pytest.raises(ValueError, match="input spatial shape"):
        merge(pw, k3p1)
    with pytest.raises(ValueError, match="INEXACT"):
        merge(k3p1, k3p1, (6, 7))
    assert merge(k3p1, k3p1, allow_inexact=True).tier == Tier.INEXACT


def test_errors():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="input channels"):
        compose(_spec(rng, 4, 3, (1, 1)), _spec(rng, 4, 5, (1, 1)))
    with pytest.raises(ValueError, match="ranks"):
        compose(_spec(rng, 4, 3, (1,)), _spec(rng, 4, 4, (1, 1)))


@st.composite
def depthwise_chains(draw, rank: int = 2):
    """(conv1, conv2, input_shape) with one or both convs depthwise (compose's direct path)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    which = draw(st.sampled_from(["first", "second", "both"]))
    C, O = draw(st.sampled_from([2, 4, 6])), draw(st.sampled_from([2, 3, 4]))
    I = C if which != "second" else draw(st.sampled_from([1, 2, 3]))
    if which != "first":  # a depthwise conv2 keeps the channel count
        O = C
    k = [draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank)) for _ in range(2)]
    s = [draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank)) for _ in range(2)]
    d = [draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank)) for _ in range(2)]
    p = [draw(st.lists(st.integers(0, 2), min_size=2 * rank, max_size=2 * rank)) for _ in range(2)]
    g1 = C if which != "second" else draw(st.sampled_from([g for g in (1, I) if C % g == 0]))
    g2 = C if which != "first" else draw(st.sampled_from([g for g in (1, 2) if C % g == 0 and O % g == 0]))
    c1 = rand_conv(rng, C, I, k[0], g1, s[0], d[0], p[0], bias=draw(st.booleans()))
    c2 = rand_conv(rng, O, C, k[1], g2, s[1], d[1], p[1], bias=draw(st.booleans()))
    n = [d[0][a] * (k[0][a] - 1) + 1 + s[0][a] * (d[1][a] * (k[1][a] - 1)) + draw(st.integers(0, 3)) for a in range(rank)]
    return c1, c2, (1, I, *n)


@settings(max_examples=150, deadline=None)
@given(depthwise_chains())
def test_depthwise_direct_path(chain):
    check_chain(*chain)
