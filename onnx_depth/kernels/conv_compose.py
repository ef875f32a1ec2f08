"""Conv∘Conv: one conv equal to conv2(conv1(x)) when nothing nonlinear sits between them.

Math (one spatial axis; every axis is independent). ONNX Conv is cross-correlation:

    h[m, y] = b1[m] + sum_{i,u} W1[m,i,u] x[i, s1*y + d1*u - p1]
    z[o, t] = b2[o] + sum_{m,v} W2[o,m,v] h[m, s2*t + d2*v - p2]       (h = 0 outside 0..n1-1)

Substituting h (ignoring, for now, that h is zero outside its range) gives

    z[o, t] = b[o] + sum_{i,w} W[o,i,w] x[i, s1*s2*t + w - (p1 + s1*p2)]
    W[o,i,w] = sum_m sum_{v,u : s1*d2*v + d1*u = w} W2[o,m,v] W1[m,i,u]
             = sum_m ( dilate_{s1*d2}(W2[o,m]) * dilate_{d1}(W1[m,i]) )[w]   (full *convolution*)
    b[o]     = b2[o] + sum_{m,v} W2[o,m,v] b1[m]

so the merged conv has stride S = s1*s2, pads P = p1 + s1*p2 per side and extent
K = d1*(k1-1) + s1*d2*(k2-1) + 1. Every tap offset w is a multiple of D = gcd(d1, s1*d2), so we
store the kernel compactly with dilation D (D = 1 in the common case; the brief's "dilation 1"
form is the same conv with zeros inserted). The output length of the merged conv equals n2 for
every input length (floor((s1*X + r)/(s1*s2)) = floor(X/s2) for 0 <= r < s1).

Groups: with g1, g2 groups and g = gcd(g1, g2), conv2's block j (of g) reads only intermediate
channels produced from input block j, so the merged conv has g groups: depthwise∘depthwise stays
depthwise, equal group counts merge per group, and anything with a dense conv (g = 1) becomes
dense. We expand both weights to g-block-dense form (``to_block_dense``) and compose block-wise.

Padding exactness. The substitution is wrong only where conv2 reads h outside its range
(positions y < 0 or y >= n1, "the ring" of width p2): the original reads 0 there, the merged conv
reads the "virtual" value h_virt[m, y] = b1[m] + sum W1 x[taps of y]. Tiers:

- EXACT: conv2 never reads outside h (p2 == 0, or the padding is never reached).
- CORRECTABLE: every out-of-range read has a conv1 window lying entirely in x's zero padding, so
  h_virt = b1 there and the error is input-independent: z = merged(x) + C with
  C = conv2_nobias(pad0(b1 const)) - conv2_nobias(b1 const on the padded grid), C = 0 if b1 = 0
  (``border_correction``). The classic case is conv1 = 1x1 (extent 1) with zero padding, any
  stride; also e.g. a stride-2 2x2 patchify conv1 on an even-sized input.
- INEXACT: some out-of-range read sees real input (e.g. kxk p>0 then kxk p>0): no single conv
  plus constant reproduces the border. Lossless mode must not merge.

In N-d a read position is input-dependent only if *every* axis component sees real input, so the
tier is decided per axis and combined (an axis whose conv1 windows never touch x makes the whole
chain constant there). Without an input shape the end side is judged for the worst input length
(conservative); with ``input_spatial_shape`` the tier is exact for that shape.

Note: the design notes list "k2 == 1" as exact; that only holds with p2 == 0. A 1x1 conv2 with
p2 > 0 outputs b2 on its ring while the merged conv outputs b2 + W2·h_virt there, so we tier
it like any other padded conv2.

All arithmetic is float64; returned arrays are float32.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from itertools import product
from math import gcd
from typing import Sequence

import numpy as np

from .conv_reference import constant_border_map
from .conv_spec import OUT_DTYPE, ConvSpec, from_block_dense, to_block_dense


class Tier(enum.IntEnum):
    """How exactly one conv (plus an optional constant map) reproduces a conv chain."""

    EXACT = 0
    CORRECTABLE = 1
    INEXACT = 2


def _check_chain(c1: ConvSpec, c2: ConvSpec) -> None:
    if c1.rank != c2.rank:
        raise ValueError(f"spatial ranks differ: conv1 has {c1.rank}, conv2 has {c2.rank}")
    if c2.in_channels != c1.out_channels:
        raise ValueError(f"conv2 expects {c2.in_channels} input channels, conv1 produces {c1.out_channels}")


def compose(c1: ConvSpec, c2: ConvSpec) -> ConvSpec:
    """The conv equal to conv2(conv1(x)) away from the ring (see module docstring and ``exactness``).

    Result: stride s1*s2, pads p1 + s1*p2, dilation gcd(d1, s1*d2), groups gcd(g1, g2), float32.
    A depthwise side (one channel per group, multiplier 1) is composed without the block-dense
    expansion: conv2 depthwise reads only m = o, so W[o, i] = sum_v W2[o, 0, v] W1[o, i] (shifted
    by v), groups g1; conv1 depthwise: W[o, i] = sum_v W2[o, i, v] W1[ch(o, i), 0] (shifted),
    ch(o, i) the channel slot i of output o reads, groups g2. (Expanding a depthwise conv of C
    channels to a dense C x C block made a merged EfficientNet block cost C^2 x O per tap.)
    """
    _check_chain(c1, c2)
    r = c1.rank
    k1, k2 = c1.kernel_shape, c2.kernel_shape
    s1, d1, d2 = c1.strides, c1.dilations, c2.dilations
    D = tuple(gcd(d1[a], s1[a] * d2[a]) for a in range(r))
    step2 = tuple(s1[a] * d2[a] // D[a] for a in range(r))  # W2 tap spacing in units of D
    step1 = tuple(d1[a] // D[a] for a in range(r))  # W1 tap spacing in units of D
    K = tuple(step1[a] * (k1[a] - 1) + step2[a] * (k2[a] - 1) + 1 for a in range(r))

    def taps():  # (tap v of W2, the slice of the merged kernel W1 lands on for it)
        for v in product(*(range(k) for k in k2)):
            yield v, tuple(slice(step2[a] * v[a], step2[a] * v[a] + step1[a] * (k1[a] - 1) + 1, step1[a]) for a in range(r))

    if _depthwise(c2):  # W[o, i, w] = sum_v W2[o, 0, v] W1[o, i, w - v]
        w1, w2 = np.asarray(c1.weight, np.float64), np.asarray(c2.weight, np.float64)[:, 0]
        weight, group = np.zeros((*w1.shape[:2], *K)), c1.group
        for v, sl in taps():
            weight[(slice(None), slice(None), *sl)] += w2[(slice(None), *v)].reshape(-1, 1, *([1] * r)) * w1
    elif _depthwise(c1):  # W[o, i, w] = sum_v W2[o, i, v] W1[ch(o, i), 0, w - v]
        w2 = np.asarray(c2.weight, np.float64)
        w1 = np.asarray(c1.weight, np.float64)[:, 0][_slot_channels(c2)]  # [O, M/g2, *k1]
        weight, group = np.zeros((*w2.shape[:2], *K)), c2.group
        for v, sl in taps():
            weight[(slice(None), slice(None), *sl)] += w2[(slice(None), slice(None), *v)].reshape(*w2.shape[:2], *([1] * r)) * w1
    else:
        g = gcd(c1.group, c2.group)
        w1 = to_block_dense(np.asarray(c1.weight, np.float64), c1.group, g)  # [g, M/g, I/g, *k1]
        w2 = to_block_dense(np.asarray(c2.weight, np.float64), c2.group, g)  # [g, O/g, M/g, *k2]
        w = np.zeros((g, w2.shape[1], w1.shape[2], *K))
        for v, sl in taps():
            w[(slice(None), slice(None), slice(None), *sl)] += np.einsum(
                "gom,gmi...->goi...", w2[(slice(None), slice(None), slice(None), *v)], w1
            )
        weight, group = from_block_dense(w)

    bias = None
    if c1.bias is not None or c2.bias is not None:
        bias = c2.bias_or_zeros()
        if c1.bias is not None:  # b[o] = b2[o] + sum_{i,v} W2[o, i, v] b1[ch(o, i)]
            w2sum = np.asarray(c2.weight, np.float64).reshape(*c2.weight.shape[:2], -1).sum(-1)  # [O, M/g2]
            bias = bias + np.einsum("oi,oi->o", w2sum, np.asarray(c1.bias, np.float64)[_slot_channels(c2)])
        bias = bias.astype(OUT_DTYPE)
    pads = tuple(c1.pads[a] + s1[a % r] * c2.pads[a] for a in range(2 * r))
    strides = tuple(s1[a] * c2.strides[a] for a in range(r))
    return ConvSpec(weight.astype(OUT_DTYPE), bias, strides, D, pads, group)


def _depthwise(c: ConvSpec) -> bool:
    """One input and one output channel per group (a depthwise conv of multiplier 1)."""
    return c.group == c.out_channels and c.weight.shape[1] == 1


def _slot_channels(c: ConvSpec) -> np.ndarray:
    """[O, C_in/g] int: the input channel that input slot i of output o reads in a grouped conv."""
    O, cin_g = c.weight.shape[:2]
    return (np.arange(O) // (O // c.group))[:, None] * cin_g + np.arange(cin_g)[None, :]


# ----- exactness --------------------------------------------------------------------------------


def _live(c1: ConvSpec, a: int, y: int, n: int | None) -> bool:
    """Does conv1's window at output position y (axis a) touch real input x[0 .. n-1]?

    n None: an input that is long enough on the right (only the lower bound is checked).
    """
    first = c1.strides[a] * y - c1.pads[a]
    d = c1.dilations[a]
    for u in range(c1.kernel_shape[a]):
        j = first + d * u
        if j >= 0 and (n is None or j < n):
            return True
    return False


def _axis_facts(c1: ConvSpec, c2: ConvSpec, a: int, n: int | None) -> tuple[bool, bool, bool]:
    """(conv2 reads h out of range, some out-of-range read sees real input, some read at all does)."""
    r = c1.rank
    s2, d2, k2 = c2.strides[a], c2.dilations[a], c2.kernel_shape[a]
    p2b, p2e = c2.pads[a], c2.pads[a + r]
    if n is not None:
        n1 = (n + c1.pads[a] + c1.pads[a + r] - c1.extent[a]) // c1.strides[a] + 1
        n2 = (n1 + p2b + p2e - c2.extent[a]) // s2 + 1
        if n1 < 1 or n2 < 1:
            raise ValueError(f"input length {n} on axis {a} is too small for the chain")
        reads = {s2 * t + d2 * v - p2b for t in range(n2) for v in range(k2)}
        oor = [y for y in reads if y < 0 or y >= n1]
        live_oor = any(_live(c1, a, y, n) for y in oor)
        live_any = live_oor or any(_live(c1, a, y, n) for y in reads if 0 <= y < n1)
        return bool(oor), live_oor, live_any
    # No shape: worst case over input lengths.
    live_oor = False
    if p2b > 0:
        for t in range(-(-p2b // s2) + 1):
            for v in range(k2):
                y = s2 * t + d2 * v - p2b
                if y < 0 and _live(c1, a, y, None):
                    live_oor = True
    if p2e > 0:
        # Reading h at n1 + j: its first tap index minus (N - 1) is
        # p1e - e1 - rem + s1 + s1*j + 1 with rem = (N + p1b + p1e - e1) mod s1, worst rem = s1 - 1.
        p1e, e1 = c1.pads[a + r], c1.extent[a]
        if p1e - e1 + 2 <= 0:  # j = 0 is the worst; it is live for some N
            live_oor = True
    return (p2b > 0 or p2e > 0), live_oor, True


def exactness(c1: ConvSpec, c2: ConvSpec, input_spatial_shape: Sequence[int] | None = None) -> Tier:
    """Tier of ``compose(c1, c2)`` (see module docstring).

    Without ``input_spatial_shape`` the answer holds for every input size (conservative on the
    end side, e.g. a stride-2 2x2 conv1 is CORRECTABLE only on even lengths). With it, the tier is
    exact for that size.
    """
    _check_chain(c1, c2)
    if input_spatial_shape is not None and len(input_spatial_shape) != c1.rank:
        raise ValueError(f"input spatial shape {tuple(input_spatial_shape)} must have {c1.rank} axes")
    facts = [
        _axis_facts(c1, c2, a, None if input_spatial_shape is None else int(input_spatial_shape[a]))
        for a in range(c1.rank)
    ]
    if not any(f[0] for f in facts):
        return Tier.EXACT
    if all(f[2] for f in facts) and any(f[1] for f in facts):
        return Tier.INEXACT
    return Tier.CORRECTABLE


def border_correction(c1: ConvSpec, c2: ConvSpec, input_spatial_shape: Sequence[int]) -> np.ndarray:
    """Constant map C [O, *out_spatial] (float32) with conv2(conv1(x)) == compose(c1, c2)(x) + C.

    C = conv2_nobias(pad0(b1 on the n1 grid)) - conv2_nobias(b1 on the padded grid): on the ring
    the original sees zeros where the merged conv sees h_virt = b1. Zero when b1 is None/zero or
    the tier is EXACT. ValueError when the tier is INEXACT for this input shape.
    For an ONNX Add after an NC... output, reshape to [1, O, *out_spatial].
    """
    shape = tuple(int(n) for n in input_spatial_shape)
    tier = exactness(c1, c2, shape)
    if tier == Tier.INEXACT:
        raise ValueError(
            "conv chain is border-INEXACT for input shape "
            f"{shape}: conv2 reads padding where conv1's window sees real input; no constant map fixes it"
        )
    n1 = c1.output_spatial_shape(shape)
    n2 = c2.output_spatial_shape(n1)
    if tier == Tier.EXACT or c1.bias is None or not np.any(c1.bias):
        return np.zeros((c2.out_channels, *n2), OUT_DTYPE)
    c2_nobias = ConvSpec(c2.weight, None, c2.strides, c2.dilations, c2.pads, c2.group)
    return constant_border_map(c2_nobias, np.asarray(c1.bias, np.float64), n1).astype(OUT_DTYPE)


@dataclass(eq=False)
class MergeResult:
    """spec: the merged conv; tier: its exactness; correction: [O, *out] map to add, or None when
    no correction is needed (EXACT, zero b1) or possible (INEXACT, or no input shape given)."""

    spec: ConvSpec
    tier: Tier
    correction: np.ndarray | None


def merge(
    c1: ConvSpec,
    c2: ConvSpec,
    input_spatial_shape: Sequence[int] | None = None,
    *,
    allow_inexact: bool = False,
) -> MergeResult:
    """compose + exactness + border_correction in one call (what a lossless pass wants).

    Raises ValueError for INEXACT chains unless ``allow_inexact`` (lossy mode: the caller must
    measure the error). A CORRECTABLE chain with non-zero b1 needs ``input_spatial_shape``.
    """
    tier = exactness(c1, c2, input_spatial_shape)
    if tier == Tier.INEXACT and not allow_inexact:
        raise ValueError("conv chain is border-INEXACT; pass allow_inexact=True to merge anyway (lossy)")
    spec = compose(c1, c2)
    correction = None
    if tier == Tier.CORRECTABLE and c1.bias is not None and np.any(c1.bias):
        if input_spatial_shape is None:
            raise ValueError("a CORRECTABLE chain with a conv1 bias needs the input spatial shape for its correction map")
        correction = border_correction(c1, c2, input_spatial_shape)
    return MergeResult(spec, tier, correction)
