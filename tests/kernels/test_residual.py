"""Residual identity and parallel-branch folding, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from onnx_depth.kernels import add_identity, add_parallel

from .onnx_builders import GraphBuilder, assert_same, conv_chain_model
from .strategies import parallel_convs, rand_conv, residual_convs


def _size_preserving_with_tap(conv) -> bool:
    return all(
        conv.pads[a] + conv.pads[a + conv.rank] == conv.extent[a] - 1 and conv.pads[a] % conv.dilations[a] == 0
        for a in range(conv.rank)
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2).flatmap(residual_convs))
def test_residual_identity(case):
    conv, shape = case
    if not _size_preserving_with_tap(conv):
        event("rejected")
        with pytest.raises(ValueError):
            add_identity(conv)
        return
    event(f"group={'dw' if conv.is_depthwise else conv.group}")
    merged = add_identity(conv)
    assert merged.weight.dtype == np.float32 and merged.group == conv.group
    g = GraphBuilder(shape)
    ref = g.model(g.add(g.conv(g.x, conv), g.x))
    assert_same(ref, conv_chain_model([merged], shape))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2).flatmap(parallel_convs))
def test_parallel_branches(case):
    a, b, shape = case
    merged = add_parallel(a, b)
    event(f"groups a={a.group} b={b.group} -> {merged.group}")
    g = GraphBuilder(shape)
    ref = g.model(g.add(g.conv(g.x, a), g.conv(g.x, b)))
    assert_same(ref, conv_chain_model([merged], shape))


def test_repvgg_block_shape():
    rng = np.random.default_rng(0)
    k3 = rand_conv(rng, 8, 8, (3, 3), pads=(1, 1, 1, 1))
    k1 = rand_conv(rng, 8, 8, (1, 1))
    m = add_identity(add_parallel(k3, k1))
    assert m.kernel_shape == (3, 3) and m.pads == (1, 1, 1, 1) and m.group == 1
    g = GraphBuilder((1, 8, 6, 5))
    ref = g.model(g.add(g.add(g.conv(g.x, k3), g.conv(g.x, k1)), g.x))
    assert_same(ref, conv_chain_model([m], (1, 8, 6, 5)))


def test_identity_errors():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="C_in == C_out"):
        add_identity(rand_conv(rng, 4, 3, (3, 3), pads=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match="stride 1"):
        add_identity(rand_conv(rng, 4, 4, (3, 3), strides=(2, 2), pads=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match="size-preserving"):
        add_identity(rand_conv(rng, 4, 4, (3, 3)))
    with pytest.raises(ValueError, match="no identity"):
        add_identity(rand_conv(rng, 4, 4, (3,), dilations=(2,), pads=(1, 3)))


def test_parallel_errors():
    rng = np.random.default_rng(2)
    k3 = rand_conv(rng, 4, 4, (3, 3), pads=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="strides"):
        add_parallel(k3, rand_conv(rng, 4, 4, (1, 1), strides=(2, 2)))
    with pytest.raises(ValueError, match="inconsistent"):
        add_parallel(k3, rand_conv(rng, 4, 4, (3, 3)))
    with pytest.raises(ValueError, match="channels"):
        add_parallel(k3, rand_conv(rng, 5, 4, (1, 1)))
