"""Gemm∘Gemm, MatMul∘MatMul and Gemm -> BN -> Gemm collapse, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from onnx_depth.kernels import add_identity_dense, affine_after_bn, affine_from_bn, compose_affine, compose_affine64, gemm_to_affine64

from .onnx_builders import GraphBuilder, assert_same
from .strategies import rand_bn, seeds

dims = st.integers(1, 8)


@st.composite
def gemm_layer(draw, rng, n_in, n_out):
    """ONNX Gemm parameters (B, C, alpha, beta, transB) for an n_in -> n_out layer."""
    transB = draw(st.integers(0, 1))
    alpha = draw(st.sampled_from([1.0, 0.5, -2.0]))
    beta = draw(st.sampled_from([1.0, 0.25, 3.0]))
    W = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
    B = W.T if transB else W
    c_shape = draw(st.sampled_from(["none", "vec", "row", "scalar", "one"]))
    C = {
        "none": None,
        "vec": rng.standard_normal(n_out),
        "row": rng.standard_normal((1, n_out)),
        "scalar": np.array(rng.standard_normal()),
        "one": rng.standard_normal(1),
    }[c_shape]
    return B.astype(np.float32), None if C is None else np.asarray(C, np.float32), alpha, beta, transB


def _emit_canonical(g: GraphBuilder, x: str, W, b, form: str) -> str:
    W = np.asarray(W, np.float32)
    b = None if b is None else np.asarray(b, np.float32)
    if form == "matmul":
        h = g.matmul(x, W)
        return h if b is None else g.add(h, b)
    return g.gemm(x, W.T.copy() if form == "gemm_t" else W, b, transB=1 if form == "gemm_t" else 0)


@settings(max_examples=200, deadline=None)
@given(st.data(), seeds, dims, dims, dims, st.integers(1, 4), st.sampled_from(["gemm", "gemm_t", "matmul"]))
def test_gemm_gemm(data, seed, n_in, n_mid, n_out, batch, form):
    rng = np.random.default_rng(seed)
    B1, C1, a1, be1, t1 = data.draw(gemm_layer(rng, n_in, n_mid))
    B2, C2, a2, be2, t2 = data.draw(gemm_layer(rng, n_mid, n_out))
    g = GraphBuilder((batch, n_in))
    ref = g.model(g.gemm(g.gemm(g.x, B1, C1, alpha=a1, beta=be1, transB=t1), B2, C2, alpha=a2, beta=be2, transB=t2))
    W, b = compose_affine(*gemm_to_affine64(B1, C1, alpha=a1, beta=be1, transB=t1), *gemm_to_affine64(B2, C2, alpha=a2, beta=be2, transB=t2))
    assert W.dtype == np.float32 and W.shape == (n_in, n_out)
    c = GraphBuilder((batch, n_in))
    assert_same(ref, c.model(_emit_canonical(c, c.x, W, b, form)))


@settings(max_examples=200, deadline=None)
@given(seeds, st.lists(dims, min_size=3, max_size=5), st.lists(st.booleans(), min_size=4, max_size=4), st.integers(2, 3))
def test_matmul_chain(seed, widths, biased, act_rank):
    """x [.., in] -> MatMul (+Add) -> MatMul (+Add) ... ; activations 2-D or 3-D [B, T, C]."""
    rng = np.random.default_rng(seed)
    shape = (2, 3, widths[0]) if act_rank == 3 else (3, widths[0])
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        W = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        layers.append((W, rng.standard_normal(b).astype(np.float32) if biased[i] else None))
    g = GraphBuilder(shape)
    h = g.x
    for W, b in layers:
        h = _emit_canonical(g, h, W, b, "matmul")
    ref = g.model(h)
    W, b = layers[0]
    for W2, b2 in layers[1:]:
        W, b = compose_affine64(W, b, W2, b2)
    c = GraphBuilder(shape)
    assert_same(ref, c.model(_emit_canonical(c, c.x, W, b, "matmul")))


@settings(max_examples=200, deadline=None)
@given(st.data(), seeds, dims, dims, dims, st.integers(1, 4), st.sampled_from(["gemm", "gemm_t", "matmul"]))
def test_gemm_bn_gemm(data, seed, n_in, n_mid, n_out, batch, form):
    """LayerCollapse with BN between: W = W1 diag(s) W2 (canonical orientation)."""
    rng = np.random.default_rng(seed)
    B1, C1, a1, be1, t1 = data.draw(gemm_layer(rng, n_in, n_mid))
    B2, C2, a2, be2, t2 = data.draw(gemm_layer(rng, n_mid, n_out))
    bn = rand_bn(rng, n_mid)
    eps = data.draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    g = GraphBuilder((batch, n_in))
    h = g.bn(g.gemm(g.x, B1, C1, alpha=a1, beta=be1, transB=t1), *bn, eps=eps)
    ref = g.model(g.gemm(h, B2, C2, alpha=a2, beta=be2, transB=t2))
    W1, b1 = affine_after_bn(*gemm_to_affine64(B1, C1, alpha=a1, beta=be1, transB=t1), *bn, eps)  # what fold_bn does
    W, b = compose_affine(W1, b1, *gemm_to_affine64(B2, C2, alpha=a2, beta=be2, transB=t2))  # then merge_linear
    event(form)
    c = GraphBuilder((batch, n_in))
    assert_same(ref, c.model(_emit_canonical(c, c.x, W, b, form)))


def test_converters_and_errors():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((3, 5)).astype(np.float32)
    W, b = gemm_to_affine64(B, None, alpha=2.0, transB=1)
    assert W.shape == (5, 3) and b is None
    np.testing.assert_allclose(W, 2 * B.T, rtol=1e-6)
    with pytest.raises(ValueError, match="transA"):
        gemm_to_affine64(B, transA=1)
    with pytest.raises(ValueError, match="depends on the row"):
        gemm_to_affine64(B, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2-D"):
        gemm_to_affine64(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="expects"):
        compose_affine(np.zeros((2, 3)), None, np.zeros((4, 5)), None)
    assert compose_affine(np.eye(2), None, np.eye(2), None)[1] is None


@settings(max_examples=100, deadline=None)
@given(seeds, dims, st.integers(1, 4), st.booleans(), st.booleans())
def test_residual_dense(seed, n, batch, biased, bn_branch):
    """x + (x W + b) = x (W + I) + b; BN(x) + (x W + b) = x (W + diag(s)) + b + t."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if biased else None
    bn = rand_bn(rng, n)
    g = GraphBuilder((batch, n))
    branch = g.bn(g.x, *bn) if bn_branch else g.x
    ref = g.model(g.add(branch, _emit_canonical(g, g.x, W, b, "matmul")))
    s, t = affine_from_bn(*bn) if bn_branch else (None, None)
    W2, b2 = add_identity_dense(W, b, s, t)
    c = GraphBuilder((batch, n))
    assert_same(ref, c.model(_emit_canonical(c, c.x, W2, b2, "matmul")))
