"""Gemm∘Gemm, MatMul∘MatMul and BatchNorm between them, in one canonical orientation.

Canonical affine layer (row vectors, as ONNX MatMul/Gemm with transA = 0 compute it):

    y = x @ W + b,   W: [in, out],  b: [out] or None

Composition (nothing nonlinear between):

    (x @ W1 + b1) @ W2 + b2 = x @ (W1 @ W2) + (b1 @ W2 + b2)

BatchNorm between (LayerCollapse), on a 2-D activation [N, C] (channel axis 1 = the layer's output
axis):  BN(h) = s*h + t with s = scale/sqrt(var + eps), t = bias - mean*s  (``affine_from_bn``), is
folded into layer 1 first (``bn_fold.affine_after_bn``: W1 * s, s*b1 + t), then composed:

    W = W1 diag(s) W2   (here: (W1 * s) @ W2),   b = (s*b1 + t) @ W2 + b2

which is the notes' W = W2 diag(s) W1, b = W2 (s (b1 - mu) + beta) + b2 in column orientation.

Residual x + (x @ W + b) = x @ (W + I) + b (``add_identity_dense``; a BN identity branch
s*x + t gives W + diag(s), b + t).

ONNX conversions:
- Gemm: Y = alpha * A' @ B' + beta * C with A' = A (transA must be 0: a transposed activation is not
  an affine layer on rows), B' = B.T if transB else B. So W = alpha * B', b = beta * C, where C must
  broadcast to [out] without depending on the row (shapes (), (1,), (out,), (1, out), (1, 1)).
- MatMul x @ B with a constant 2-D B: W = B (activations may be [..., in]); the bias, if any, is a
  separate Add (analysis.layer_unit reads both forms; passes.layer_io writes them).

All arithmetic is float64; returned arrays are float32.
"""

from __future__ import annotations

import numpy as np

from .conv_spec import OUT_DTYPE

Affine = tuple[np.ndarray, "np.ndarray | None"]


def _f64(a) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)


def _out(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a).astype(OUT_DTYPE)


def _check_affine(W: np.ndarray, b: np.ndarray | None, name: str) -> None:
    if W.ndim != 2:
        raise ValueError(f"{name}: weight must be 2-D [in, out], got shape {W.shape}")
    if b is not None and b.shape != (W.shape[1],):
        raise ValueError(f"{name}: bias must have shape ({W.shape[1]},), got {b.shape}")


def affine_from_bn(scale, bias, mean, var, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Inference BatchNorm as y = s*x + t per channel: s = scale/sqrt(var+eps), t = bias - mean*s.

    Returned in float64 (it is an intermediate; the folds that use it return float32).
    """
    scale, bias, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (scale, bias, mean, var))
    if not (scale.shape == bias.shape == mean.shape == var.shape):
        raise ValueError(f"BN parameter shapes differ: {scale.shape}, {bias.shape}, {mean.shape}, {var.shape}")
    if np.any(var + eps <= 0):
        raise ValueError("BN var + eps must be positive")
    s = scale / np.sqrt(var + float(eps))
    return s, bias - mean * s


def compose_affine64(W1, b1, W2, b2) -> tuple[np.ndarray, np.ndarray | None]:
    """``compose_affine`` without the final float32 cast (for callers that check the range first)."""
    W1, b1, W2, b2 = _f64(W1), _f64(b1), _f64(W2), _f64(b2)
    _check_affine(W1, b1, "layer 1")
    _check_affine(W2, b2, "layer 2")
    if W1.shape[1] != W2.shape[0]:
        raise ValueError(f"layer 1 outputs {W1.shape[1]} features, layer 2 expects {W2.shape[0]}")
    W = W1 @ W2
    if b1 is None and b2 is None:
        return W, None
    b = np.zeros(W2.shape[1]) if b2 is None else b2.copy()
    if b1 is not None:
        b = b + b1 @ W2
    return W, b


def compose_affine(W1, b1, W2, b2) -> Affine:
    """(x @ W1 + b1) @ W2 + b2 = x @ W + b with W = W1 @ W2, b = b1 @ W2 + b2 (None if both None)."""
    W, b = compose_affine64(W1, b1, W2, b2)
    return _out(W), _out(b)


def add_identity_dense(W, b, scale=None, shift=None) -> tuple[np.ndarray, np.ndarray | None]:
    """x + (x @ W + b) = x @ (W + I) + b for a square W; with a per-feature identity branch
    s*x + t instead of x: W + diag(s), b + t. float64."""
    W, b = _f64(W), _f64(b)
    _check_affine(W, b, "layer")
    if W.shape[0] != W.shape[1]:
        raise ValueError(f"dense layer is not square: {W.shape}")
    n = W.shape[0]
    s = np.ones(n) if scale is None else _f64(scale).reshape(-1)
    if s.shape != (n,):
        raise ValueError(f"identity branch has {s.size} channels, the layer {n}")
    W = W + np.diag(s)
    if shift is not None:
        b = (np.zeros(n) if b is None else b) + _f64(shift).reshape(-1)
    return W, b


def gemm_to_affine64(B, C=None, *, alpha: float = 1.0, beta: float = 1.0, transA: int = 0, transB: int = 0):
    """ONNX Gemm's constant B, C and attributes -> canonical (W [in, out], b [out] or None) in float64."""
    if int(transA):
        raise ValueError("Gemm with transA=1 is not an affine layer on rows; cannot canonicalise")
    B = _f64(B)
    if B.ndim != 2:
        raise ValueError(f"Gemm B must be 2-D, got shape {B.shape}")
    W = float(alpha) * (B.T if int(transB) else B)
    n_out = W.shape[1]
    b = None
    if C is not None:
        C = _f64(C)
        if C.ndim > 2 or (C.ndim == 2 and C.shape[0] != 1) or (C.ndim >= 1 and C.shape[-1] not in (1, n_out)):
            raise ValueError(
                f"Gemm C of shape {C.shape} depends on the row or does not broadcast to ({n_out},); "
                "only (), (1,), (out,), (1, out), (1, 1) are supported"
            )
        b = float(beta) * np.broadcast_to(C.reshape(-1), (n_out,)).copy()
    return W, b
