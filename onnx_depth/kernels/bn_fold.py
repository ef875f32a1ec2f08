"""BatchNormalization folded into the linear operator before or after it.

Inference BN on channel axis 1: y = s*x + t, s = scale/sqrt(var + eps), t = bias - mean*s
(``affine_from_bn``; pass the node's own ``epsilon``).

After (BN normalises the layer's *output* channels):
- Conv, any groups: W'[o] = s[o] W[o], b' = s*b + t. Exact.
- ConvTranspose, weight [C_in, O/g, *k] (input channels first!), groups g: output channel
  o = j*(O/g) + q of group j comes from W[:, q] restricted to group j's input rows, so
  W'[i, q] = W[i, q] * s[g(i)*(O/g) + q], b' = s*b + t. Exact.
- a dense layer (Gemm / MatMul read into the canonical y = x @ W + b, `dense_compose`) on 2-D
  activations [N, C]: W' = W * s (per column), b' = s*b + t (``affine_after_bn``). Exact.
  For outputs of rank >= 3 ([B, T, C]) ONNX BN normalises axis 1 (T), not the weight's output
  axis C: the caller must not fold it (analysis.layer_unit and passes.fold_bn check the rank).

Before (BN normalises the layer's *input* channels):
- Conv: conv(s*x + t) = conv' (x) with W'[o, i_loc, u] = W[o, i_loc, u] * s[i], b' = b +
  sum_{i_loc,u} W[o, i_loc, u] t[i] (i = group(o)*C_in/g + i_loc). Exact when the conv has no
  padding, or t == 0. With padding and t != 0 the original conv sees zeros on its padding where
  the folded one sees t, so they differ on a border ring by a constant (input-independent) map
  C = conv_nobias(pad0(t const)) - conv_nobias(t const on the padded grid); given the input
  spatial shape we return it and the fold plus "Add C" is exact. ``BnBeforeResult.exact`` says
  whether the folded operator alone is exact.
- a dense layer on 2-D activations: W' = s[:, None] * W, b' = t @ W + b (``affine_before_bn``).
  Exact (no padding).

All arithmetic is float64; returned arrays are float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .conv_reference import constant_border_map
from .conv_spec import OUT_DTYPE, ConvSpec
from .dense_compose import affine_from_bn


def _check_channels(s: np.ndarray, n: int, what: str) -> None:
    if s.shape != (n,):
        raise ValueError(f"BN has {s.shape[0]} channels but the {what} has {n}")


# ----- BN after ---------------------------------------------------------------------------------


def scale_conv_outputs(spec: ConvSpec, s, t) -> ConvSpec:
    """A per-output-channel affine map y_o = s_o conv(x)_o + t_o as one Conv: W'[o] = s[o] W[o],
    b' = s*b + t (any groups). Exact."""
    s = np.asarray(s, np.float64).reshape(-1)
    t = np.asarray(t, np.float64).reshape(-1)
    _check_channels(s, spec.out_channels, "conv output")
    w = np.asarray(spec.weight, np.float64) * s.reshape(-1, *([1] * (spec.rank + 1)))
    b = s * spec.bias_or_zeros() + t
    return ConvSpec(w.astype(OUT_DTYPE), b.astype(OUT_DTYPE), spec.strides, spec.dilations, spec.pads, spec.group)


def fold_bn_after_conv(spec: ConvSpec, scale, bias, mean, var, eps: float = 1e-5) -> ConvSpec:
    """Conv -> BN as one Conv: W' = s[o] W[o], b' = s*b + t (any groups)."""
    return scale_conv_outputs(spec, *affine_from_bn(scale, bias, mean, var, eps))


def fold_bn_after_conv_transpose(
    weight, conv_bias, group: int, scale, bias, mean, var, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray]:
    """ConvTranspose (weight [C_in, O/g, *k]) -> BN as one ConvTranspose: (weight', bias').

    Attributes (strides, pads, output_padding, ...) are unchanged.
    """
    w = np.asarray(weight, np.float64)
    if w.ndim < 3:
        raise ValueError(f"ConvTranspose weight must be [C_in, O/g, *k], got shape {w.shape}")
    group = int(group)
    if group < 1 or w.shape[0] % group:
        raise ValueError(f"group {group} must divide the {w.shape[0]} input channels")
    ci, og = w.shape[:2]
    k = w.shape[2:]
    O = og * group
    s, t = affine_from_bn(scale, bias, mean, var, eps)
    _check_channels(s, O, "ConvTranspose output")
    wg = w.reshape(group, ci // group, og, *k) * s.reshape(group, 1, og, *([1] * len(k)))
    b0 = np.zeros(O) if conv_bias is None else np.asarray(conv_bias, np.float64).reshape(-1)
    if b0.shape != (O,):
        raise ValueError(f"ConvTranspose bias must have shape ({O},), got {b0.shape}")
    return wg.reshape(w.shape).astype(OUT_DTYPE), (s * b0 + t).astype(OUT_DTYPE)


def affine_after_bn(W, b, scale, bias, mean, var, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Dense y = x @ W + b -> BN on its output (2-D): (W * s, s*b + t) in float64."""
    W = np.asarray(W, np.float64)
    s, t = affine_from_bn(scale, bias, mean, var, eps)
    _check_channels(s, W.shape[1], "layer output")
    b0 = np.zeros(W.shape[1]) if b is None else np.asarray(b, np.float64)
    return W * s, s * b0 + t


# ----- BN before --------------------------------------------------------------------------------


@dataclass(eq=False)
class BnBeforeResult:
    """spec: the folded conv. exact: the folded conv alone equals BN -> Conv everywhere.
    correction: [O, *out] constant map to add when not exact (None if exact or no input shape
    was given). reason: why it is (not) exact."""

    spec: ConvSpec
    exact: bool
    correction: np.ndarray | None
    reason: str


def fold_bn_before_conv(
    spec: ConvSpec,
    scale,
    bias,
    mean,
    var,
    eps: float = 1e-5,
    input_spatial_shape: Sequence[int] | None = None,
) -> BnBeforeResult:
    """BN -> Conv as one Conv (+ a constant border map when the conv pads and the BN shifts)."""
    s, t = affine_from_bn(scale, bias, mean, var, eps)
    _check_channels(s, spec.in_channels, "conv input")
    g, r = spec.group, spec.rank
    w = np.asarray(spec.weight, np.float64)
    O, ig = w.shape[:2]
    k = w.shape[2:]
    wg = w.reshape(g, O // g, ig, *k)
    new_w = (wg * s.reshape(g, 1, ig, *([1] * r))).reshape(w.shape)
    shift = np.einsum("goi,gi->go", wg.reshape(g, O // g, ig, -1).sum(-1), t.reshape(g, ig)).reshape(-1)
    new_b = spec.bias_or_zeros() + shift
    folded = ConvSpec(new_w.astype(OUT_DTYPE), new_b.astype(OUT_DTYPE), spec.strides, spec.dilations, spec.pads, g)
    if not spec.has_padding:
        return BnBeforeResult(folded, True, None, "conv has no padding: exact")
    if not np.any(t):
        return BnBeforeResult(folded, True, None, "BN shift is zero: padding sees 0 either way, exact")
    correction = None
    if input_spatial_shape is not None:
        nobias = ConvSpec(spec.weight, None, spec.strides, spec.dilations, spec.pads, g)
        correction = constant_border_map(nobias, t, tuple(int(n) for n in input_spatial_shape)).astype(OUT_DTYPE)
    return BnBeforeResult(
        folded,
        False,
        correction,
        "conv pads its input and the BN shift is non-zero: the folded conv sees the shift on the padding; "
        "exact only with the constant border correction",
    )


def affine_before_bn(W, b, scale, bias, mean, var, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """BN (2-D) -> dense y = x @ W + b: (s[:, None] * W, t @ W + b) in float64."""
    W = np.asarray(W, np.float64)
    s, t = affine_from_bn(scale, bias, mean, var, eps)
    _check_channels(s, W.shape[0], "layer input")
    b0 = np.zeros(W.shape[1]) if b is None else np.asarray(b, np.float64)
    return s[:, None] * W, t @ W + b0
