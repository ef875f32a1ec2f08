"""BatchNormalization folding, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from onnx_depth.kernels import (
    ConvSpec,
    fold_bn_after_conv,
    fold_bn_after_conv_transpose,
    affine_after_bn,
    affine_before_bn,
    fold_bn_before_conv,
)
from onnx_depth.kernels.dense_compose import gemm_to_affine64

from .onnx_builders import GraphBuilder, assert_same, conv_chain_model, nchw_map
from .strategies import rand_bn, rand_conv, seeds

eps_values = st.sampled_from([1e-5, 1e-3, 0.1])


@st.composite
def grouped_conv(draw, rng, pads: str = "any"):
    """(conv, input_shape), 1-D or 2-D, any groups; pads 'any', 'none' or 'some' (> 0)."""
    rank = draw(st.integers(1, 2))
    g = draw(st.sampled_from([1, 1, 2, 3, 4, "dw"]))
    if g == "dw":
        I = draw(st.integers(1, 8))
        g, O = I, I * draw(st.integers(1, 2))
    else:
        I, O = g * draw(st.integers(1, 8 // g)), g * draw(st.integers(1, 8 // g))
    k = [draw(st.integers(1, 5)) for _ in range(rank)]
    s = [draw(st.integers(1, 3)) for _ in range(rank)]
    d = [draw(st.integers(1, 2)) for _ in range(rank)]
    p = [0] * (2 * rank) if pads == "none" else [draw(st.integers(0, 2)) for _ in range(2 * rank)]
    if pads == "some" and not any(p):
        p[0] = 1
    n = [d[a] * (k[a] - 1) + 1 + draw(st.integers(0, 4)) for a in range(rank)]
    conv = rand_conv(rng, O, I, k, g, s, d, p, bias=draw(st.booleans()))
    return conv, (draw(st.integers(1, 2)), I, *n)


@settings(max_examples=200, deadline=None)
@given(st.data(), seeds, eps_values)
def test_bn_after_conv(data, seed, eps):
    rng = np.random.default_rng(seed)
    conv, shape = data.draw(grouped_conv(rng))
    bn = rand_bn(rng, conv.out_channels)
    g = GraphBuilder(shape)
    ref = g.model(g.bn(g.conv(g.x, conv), *bn, eps=eps))
    assert_same(ref, conv_chain_model([fold_bn_after_conv(conv, *bn, eps)], shape))


@settings(max_examples=200, deadline=None)
@given(st.data(), seeds, eps_values)
def test_bn_after_conv_transpose(data, seed, eps):
    rng = np.random.default_rng(seed)
    rank = data.draw(st.integers(1, 2))
    g = data.draw(st.sampled_from([1, 2, 3]))
    I, og = g * data.draw(st.integers(1, 8 // g)), data.draw(st.integers(1, 8 // g))
    k = [data.draw(st.integers(1, 4)) for _ in range(rank)]
    s = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    pb = [data.draw(st.integers(0, k[a] - 1)) for a in range(rank)]
    p = pb + [data.draw(st.integers(0, k[a] - 1 - pb[a])) for a in range(rank)]
    op = [data.draw(st.integers(0, s[a] - 1)) for a in range(rank)]
    W = (rng.standard_normal((I, og, *k)) / np.sqrt(I // g * np.prod(k))).astype(np.float32)
    b = rng.standard_normal(og * g).astype(np.float32) if data.draw(st.booleans()) else None
    attrs = dict(group=g, strides=s, pads=p, output_padding=op, kernel_shape=k)
    shape = (data.draw(st.integers(1, 2)), I, *[data.draw(st.integers(2, 5)) for _ in range(rank)])
    bn = rand_bn(rng, og * g)
    gb = GraphBuilder(shape)
    ref = gb.model(gb.bn(gb.conv_transpose(gb.x, W, b, **attrs), *bn, eps=eps))
    W2, b2 = fold_bn_after_conv_transpose(W, b, g, *bn, eps)
    assert W2.shape == W.shape and b2.shape == (og * g,)
    gc = GraphBuilder(shape)
    assert_same(ref, gc.model(gc.conv_transpose(gc.x, W2, b2, **attrs)))


@st.composite
def gemm_params(draw, rng, n_in, n_out):
    transB = draw(st.integers(0, 1))
    alpha, beta = draw(st.sampled_from([1.0, 0.5, -2.0])), draw(st.sampled_from([1.0, 3.0]))
    W = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
    C = draw(st.sampled_from([None, (n_out,), (1, n_out), ()]))
    C = None if C is None else rng.standard_normal(C).astype(np.float32)
    return (W.T.copy() if transB else W), C, dict(alpha=alpha, beta=beta, transB=transB)


@settings(max_examples=200, deadline=None)
@given(st.data(), seeds, st.integers(1, 8), st.integers(1, 8), st.integers(1, 4), eps_values, st.booleans())
def test_bn_after_gemm_or_matmul(data, seed, n_in, n_out, batch, eps, use_matmul):
    rng = np.random.default_rng(seed)
    B, C, attrs = data.draw(gemm_params(rng, n_in, n_out))
    bn = rand_bn(rng, n_out)
    g = GraphBuilder((batch, n_in))
    c = GraphBuilder((batch, n_in))
    if use_matmul:
        W = B.T.copy() if attrs["transB"] else B
        ref = g.model(g.bn(g.matmul(g.x, W), *bn, eps=eps))
        W, C = W, None
    else:
        event(f"transB={attrs['transB']}")
        ref = g.model(g.bn(g.gemm(g.x, B, C, **attrs), *bn, eps=eps))
        W, C = gemm_to_affine64(B, C, **attrs)
    W2, b2 = affine_after_bn(W, C, *bn, eps)
    cand = c.model(c.add(c.matmul(c.x, W2.astype(np.float32)), b2.astype(np.float32)))
    assert_same(ref, cand)


@settings(max_examples=200, deadline=None)
@given(st.data(), seeds, st.integers(1, 8), st.integers(1, 8), st.integers(1, 4), eps_values, st.booleans())
def test_bn_before_gemm_or_matmul(data, seed, n_in, n_out, batch, eps, use_matmul):
    rng = np.random.default_rng(seed)
    B, C, attrs = data.draw(gemm_params(rng, n_in, n_out))
    bn = rand_bn(rng, n_in)
    g = GraphBuilder((batch, n_in))
    c = GraphBuilder((batch, n_in))
    if use_matmul:
        W = B.T.copy() if attrs["transB"] else B
        ref = g.model(g.matmul(g.bn(g.x, *bn, eps=eps), W))
        W, C = W, None
    else:
        ref = g.model(g.gemm(g.bn(g.x, *bn, eps=eps), B, C, **attrs))
        W, C = gemm_to_affine64(B, C, **attrs)
    W2, b2 = affine_before_bn(W, C, *bn, eps)
    cand = c.model(c.add(c.matmul(c.x, W2.astype(np.float32)), b2.astype(np.float32)))
    assert_same(ref, cand)


@settings(max_examples=200, deadline=None)
@given(st.data(), seeds, eps_values, st.sampled_from(["none", "some", "some_zero_shift"]))
def test_bn_before_conv(data, seed, eps, padding):
    """No padding: exact. Padding with zero BN shift: exact. Padding with a shift: exact only
    with the returned constant border map."""
    rng = np.random.default_rng(seed)
    conv, shape = data.draw(grouped_conv(rng, pads="none" if padding == "none" else "some"))
    scale, bias, mean, var = rand_bn(rng, conv.in_channels)
    if padding == "some_zero_shift":  # t = bias - mean*s = 0
        bias = np.zeros_like(bias)
        mean = np.zeros_like(mean)
    g = GraphBuilder(shape)
    ref = g.model(g.conv(g.bn(g.x, scale, bias, mean, var, eps=eps), conv))
    res = fold_bn_before_conv(conv, scale, bias, mean, var, eps, input_spatial_shape=shape[2:])
    event(f"{padding}: exact={res.exact}")
    assert res.exact == (padding != "some")
    add = None if res.exact else nchw_map(res.correction)
    assert_same(ref, conv_chain_model([res.spec], shape, add_const=add))


def test_bn_before_conv_padding_reported_and_not_exact_alone():
    rng = np.random.default_rng(0)
    conv = rand_conv(rng, 4, 3, (3, 3), pads=(1, 1, 1, 1))
    bn = rand_bn(rng, 3)
    res = fold_bn_before_conv(conv, *bn)
    assert not res.exact and res.correction is None and "padding" in res.reason
    shape = (1, 3, 5, 6)
    g = GraphBuilder(shape)
    ref = g.model(g.conv(g.bn(g.x, *bn), conv))
    from onnx_depth.compare import compare_models

    assert not compare_models(ref, conv_chain_model([res.spec], shape)).allclose


def test_unsupported_shapes():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((4, 5))
    with pytest.raises(ValueError, match="channels"):
        affine_after_bn(W, None, *rand_bn(rng, 4))
    with pytest.raises(ValueError, match="channels"):
        affine_before_bn(W, None, *rand_bn(rng, 5))
    with pytest.raises(ValueError, match="channels"):
        fold_bn_after_conv(ConvSpec(np.zeros((3, 2, 1, 1))), *rand_bn(rng, 4))
    with pytest.raises(ValueError, match="transA"):
        gemm_to_affine64(W, None, transA=1)
