"""Residual and parallel branches of convs folded into one conv (RepVGG-style re-parameterisation).

Identity (``add_identity``), y = x + conv(x). Per axis, output t of a stride-1 conv reads
x[t + d*u - p_begin]; the identity is the tap u* with d*u* = p_begin. So

    W'[o, o mod (C/g), u*] = W[o, o mod (C/g), u*] + 1,   bias unchanged,

(+ s[o] instead of + 1 for a scaled identity diag(s) x, e.g. a BatchNorm on the identity branch),
where o mod (C/g) is channel o's position inside its group (output o and input o are in the same
group because C_in == C_out). Requirements: stride 1, C_in == C_out, "same" output length
(p_begin + p_end == d*(k-1), so the output grid is the input grid), and p_begin divisible by d
(the identity must fall on a tap; e.g. k=3, d=2, p=(1,3) has no such tap). For odd k with
symmetric pads u* is the centre; asymmetric "same" pads (SAME_UPPER/LOWER, even k) work too.

Parallel (``add_parallel``), y = conv_a(x) + conv_b(x) on the same input. Output t of branch a
reads x[s*t + off] for off in {-pa_begin + da*u}. Both branches are re-expressed on a common tap
grid: merged pad_begin P = max(pa_begin, pb_begin), dilation D = da if da == db and the begin
offsets differ by a multiple of it (else 1, with the dilated kernels expanded by zero insertion),
and each kernel is placed at index (P - p_begin)/D of the merged kernel. The branches must agree
on strides, channels and on L = p_begin + p_end - extent per axis (then their output lengths are
equal for every input length); the merged end pad is chosen so that P_begin + P_end - E = L too,
which makes it >= max(pa_end, pb_end) >= 0. Zero padding is the same zeros in every branch, so
the result is exact everywhere, borders included. Groups: gcd(ga, gb) groups (a dense branch makes
the result dense), via block-dense expansion. Weights and biases add.

All arithmetic is float64; returned arrays are float32.
"""

from __future__ import annotations

from math import gcd

import numpy as np

from .conv_spec import OUT_DTYPE, ConvSpec, from_block_dense, to_block_dense


def add_identity(c: ConvSpec, scale=None) -> ConvSpec:
    """The conv equal to x + c(x), or diag(scale) x + c(x) with a per-channel `scale` (a
    BatchNormalization on the identity branch, RepVGG: BN(x) = s x + t adds s[o] at the centre
    tap of output o's own input channel; its shift t goes to the bias, which the caller adds).
    ValueError if that is not a single conv of c's shape."""
    if c.in_channels != c.out_channels:
        raise ValueError(f"residual needs C_in == C_out, conv maps {c.in_channels} -> {c.out_channels} channels")
    if any(s != 1 for s in c.strides):
        raise ValueError(f"residual needs stride 1, conv has strides {c.strides}")
    taps = []
    for a in range(c.rank):
        pb, pe, e, d = c.pads[a], c.pads[a + c.rank], c.extent[a], c.dilations[a]
        if pb + pe != e - 1:
            raise ValueError(
                f"residual needs a size-preserving conv: axis {a} has pads ({pb}, {pe}) for extent {e} "
                f"(need p_begin + p_end == {e - 1})"
            )
        if pb % d:
            raise ValueError(
                f"kernel has no identity (centre) tap on axis {a}: p_begin {pb} is not a multiple of dilation {d}"
            )
        taps.append(pb // d)
    w = np.array(c.weight, dtype=np.float64)
    cg = w.shape[1]  # channels per group
    o = np.arange(c.out_channels)
    if scale is None:
        w[(o, o % cg, *taps)] += 1.0
    else:
        scale = np.asarray(scale, np.float64).reshape(-1)
        if scale.shape != (c.out_channels,):
            raise ValueError(f"identity scale has {scale.size} values for {c.out_channels} channels")
        w[(o, o % cg, *taps)] += scale
    bias = None if c.bias is None else np.asarray(c.bias).astype(OUT_DTYPE)
    return ConvSpec(w.astype(OUT_DTYPE), bias, c.strides, c.dilations, c.pads, c.group)


def _expand_dilation(w: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Insert factor-1 zeros between taps on each spatial axis."""
    if all(f == 1 for f in factors):
        return w
    k = w.shape[2:]
    new_k = tuple(f * (kk - 1) + 1 for f, kk in zip(factors, k))
    out = np.zeros((*w.shape[:2], *new_k), dtype=w.dtype)
    out[(slice(None), slice(None), *(slice(None, None, f) for f in factors))] = w
    return out


def add_parallel(a: ConvSpec, b: ConvSpec) -> ConvSpec:
    """The conv equal to a(x) + b(x) (same input, outputs summed). ValueError if impossible."""
    if a.rank != b.rank:
        raise ValueError(f"spatial ranks differ: {a.rank} vs {b.rank}")
    if (a.in_channels, a.out_channels) != (b.in_channels, b.out_channels):
        raise ValueError(
            f"branches map different channels: {a.in_channels}->{a.out_channels} vs {b.in_channels}->{b.out_channels}"
        )
    if a.strides != b.strides:
        raise ValueError(f"branches have different strides {a.strides} vs {b.strides}")
    r = a.rank
    for ax in range(r):
        la = a.pads[ax] + a.pads[ax + r] - a.extent[ax]
        lb = b.pads[ax] + b.pads[ax + r] - b.extent[ax]
        if la != lb:
            raise ValueError(
                f"branches' pads are inconsistent on axis {ax}: p_begin + p_end - extent is {la} vs {lb}, "
                "so their outputs differ in size or alignment"
            )
    P = tuple(max(a.pads[ax], b.pads[ax]) for ax in range(r))
    D = []
    for ax in range(r):
        da, db = a.dilations[ax], b.dilations[ax]
        ok = da == db and (a.pads[ax] - b.pads[ax]) % da == 0
        D.append(da if ok else 1)
    D = tuple(D)
    g = gcd(a.group, b.group)
    parts = []
    for c in (a, b):
        w = to_block_dense(np.asarray(c.weight, np.float64), c.group, g)
        w = w.reshape(-1, *w.shape[2:])  # [g*O/g, I/g, *k] (block-dense, flattened)
        w = _expand_dilation(w, tuple(c.dilations[ax] // D[ax] for ax in range(r)))
        start = tuple((P[ax] - c.pads[ax]) // D[ax] for ax in range(r))
        parts.append((w, start))
    K = tuple(max(st[ax] + w.shape[2 + ax] for w, st in parts) for ax in range(r))
    merged = np.zeros((*parts[0][0].shape[:2], *K))
    for w, st in parts:
        merged[(slice(None), slice(None), *(slice(st[ax], st[ax] + w.shape[2 + ax]) for ax in range(r)))] += w
    weight, group = from_block_dense(merged.reshape(g, -1, *merged.shape[1:]))
    # Same output length: P_begin + P_end - (D*(K-1)+1) == pa_begin + pa_end - ea.
    pe = tuple(a.pads[ax] + a.pads[ax + r] - a.extent[ax] + D[ax] * (K[ax] - 1) + 1 - P[ax] for ax in range(r))
    bias = None
    if a.bias is not None or b.bias is not None:
        bias = (a.bias_or_zeros() + b.bias_or_zeros()).astype(OUT_DTYPE)
    return ConvSpec(weight.astype(OUT_DTYPE), bias, a.strides, D, P + pe, group)
