"""Hypothesis strategies and random-weight helpers shared by the kernel tests.

Weights are ~N(0, 1/fan_in) so activations stay O(1) through a chain; biases and BN parameters
are O(1). Arrays come from a numpy Generator seeded by hypothesis (fast, reproducible).
"""

from __future__ import annotations

from math import gcd, prod

import numpy as np
from hypothesis import strategies as st

from onnx_depth.kernels import ConvSpec

seeds = st.integers(0, 2**32 - 1)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def rand_conv(rng, O, I, kernel, group=1, strides=None, dilations=None, pads=None, bias=True) -> ConvSpec:
    fan_in = (I // group) * prod(kernel)
    w = rng.standard_normal((O, I // group, *kernel)) / np.sqrt(fan_in)
    b = rng.standard_normal(O) if bias else None
    return ConvSpec(w.astype(np.float32), None if b is None else b.astype(np.float32), strides, dilations, pads, group)


def rand_bn(rng, C):
    """(scale, bias, mean, var) with var > 0 and |scale| not tiny."""
    scale = rng.uniform(0.5, 1.5, C) * rng.choice([-1.0, 1.0], C)
    return (
        scale.astype(np.float32),
        rng.standard_normal(C).astype(np.float32),
        rng.standard_normal(C).astype(np.float32),
        rng.uniform(0.25, 2.0, C).astype(np.float32),
    )


@st.composite
def channel_groups(draw, max_c: int = 8, max_g: int = 4):
    """(I, M, O, g1, g2) covering dense, equal groups, depthwise chains and dense<->grouped mixes,
    with channel counts up to max_c (max_c even) and group counts up to max_g."""
    mode = draw(st.sampled_from(["dense", "grouped", "dw", "dw_mult", "mixed"]))
    if mode == "dense":
        I, M, O = (draw(st.integers(1, max_c)) for _ in range(3))
        return I, M, O, 1, 1
    if mode == "grouped":
        g = draw(st.integers(2, max_g))
        a, b, c = (draw(st.integers(1, max_c // g)) for _ in range(3))
        return g * a, g * b, g * c, g, g
    if mode == "dw":
        C = draw(st.integers(1, max_c))
        return C, C, C, C, C
    if mode == "dw_mult":  # depthwise with channel multiplier 2, then depthwise
        C = draw(st.integers(1, max_c // 2))
        return C, 2 * C, 2 * C, C, 2 * C
    I, O = draw(st.integers(1, max_c)), draw(st.integers(1, max_c))
    M = draw(st.sampled_from(list(range(2, max_c + 1, 2))))
    g1 = draw(st.sampled_from(divisors(gcd(I, M))))
    g2 = draw(st.sampled_from(divisors(gcd(M, O))))
    return I, M, O, g1, g2


@st.composite
def conv_chains(draw, rank: int, max_k: int = 7):
    """(conv1, conv2, input_shape) for conv2(conv1(x)), with the padding tier steered by `mode`."""
    rng = np.random.default_rng(draw(seeds))
    I, M, O, g1, g2 = draw(channel_groups())
    mode = draw(st.sampled_from(["exact", "correctable", "patchify", "any"]))
    k1, k2, s1, s2, d1, d2, p1b, p1e, p2b, p2e, n = ([] for _ in range(11))
    for _ in range(rank):
        k1.append(draw(st.integers(1, max_k)))
        k2.append(draw(st.integers(1, max_k)))
        s1.append(draw(st.integers(1, 3)))
        s2.append(draw(st.integers(1, 3)))
        d1.append(draw(st.integers(1, 2)))
        d2.append(draw(st.integers(1, 2)))
        p1b.append(draw(st.integers(0, 3)))
        p1e.append(draw(st.integers(0, 3)))
        p2b.append(draw(st.integers(0, 3)))
        p2e.append(draw(st.integers(0, 3)))
        if mode == "exact":
            p2b[-1] = p2e[-1] = 0
        elif mode == "correctable":
            k1[-1], p1b[-1], p1e[-1] = 1, 0, 0
        elif mode == "patchify":
            k1[-1], d1[-1], p1b[-1], p1e[-1] = s1[-1], 1, 0, 0
        e1 = d1[-1] * (k1[-1] - 1) + 1
        e2 = d2[-1] * (k2[-1] - 1) + 1
        base = max(e1 - p1b[-1] - p1e[-1], 1) + s1[-1] * max(e2 - 1 - p2b[-1] - p2e[-1], 0)
        n.append(base + draw(st.integers(0, s1[-1] * s2[-1] + 1)))
    c1 = rand_conv(rng, M, I, k1, g1, s1, d1, p1b + p1e, bias=draw(st.booleans()))
    c2 = rand_conv(rng, O, M, k2, g2, s2, d2, p2b + p2e, bias=draw(st.booleans()))
    batch = draw(st.integers(1, 2))
    return c1, c2, (batch, I, *n)


@st.composite
def residual_convs(draw, rank: int):
    """(conv, input_shape) with C_in == C_out, stride 1; mostly size-preserving, sometimes not."""
    rng = np.random.default_rng(draw(seeds))
    gmode = draw(st.sampled_from(["dense", "grouped", "dw"]))
    if gmode == "dense":
        C, g = draw(st.integers(1, 8)), 1
    elif gmode == "grouped":
        g = draw(st.integers(2, 4))
        C = g * draw(st.integers(1, 8 // g))
    else:
        C = draw(st.integers(1, 8))
        g = C
    k, d, pads_b, pads_e, n = [], [], [], [], []
    broken = draw(st.sampled_from(["ok", "ok", "ok", "ok", "size", "tap"]))
    for _ in range(rank):
        k.append(draw(st.integers(1, 7)))
        d.append(draw(st.integers(1, 2)))
        e = d[-1] * (k[-1] - 1) + 1
        pb = d[-1] * draw(st.integers(0, k[-1] - 1))
        if broken == "tap" and d[-1] == 2 and k[-1] > 1:
            pb = pb + 1 if pb + 1 <= e - 1 else pb - 1  # identity falls between taps
        pads_b.append(pb)
        pads_e.append(e - 1 - pb)
        n.append(e + draw(st.integers(0, 3)))
    if broken == "size":
        pads_e[0] += 1
    conv = rand_conv(rng, C, C, k, g, None, d, pads_b + pads_e, bias=draw(st.booleans()))
    return conv, (draw(st.integers(1, 2)), C, *n)


@st.composite
def parallel_convs(draw, rank: int):
    """(a, b, input_shape): two convs over the same input with equal strides and consistent pads."""
    rng = np.random.default_rng(draw(seeds))
    g0 = draw(st.sampled_from([1, 2, 3, 4, "dw"]))
    if g0 == "dw":
        I = O = draw(st.integers(1, 8))
        common = [I, I, 1] + divisors(I)  # mostly depthwise, sometimes mixed with dense/grouped
    else:
        I, O = g0 * draw(st.integers(1, 8 // g0)), g0 * draw(st.integers(1, 8 // g0))
        common = divisors(g0)
    strides = [draw(st.integers(1, 3)) for _ in range(rank)]
    ks = {c: [draw(st.integers(1, 7)) for _ in range(rank)] for c in "ab"}
    ds = {c: [draw(st.integers(1, 2)) for _ in range(rank)] for c in "ab"}
    es = {c: [ds[c][a] * (ks[c][a] - 1) + 1 for a in range(rank)] for c in "ab"}
    L = [draw(st.integers(-min(es["a"][a], es["b"][a]), 2)) for a in range(rank)]
    specs = []
    for c in "ab":
        pb = [draw(st.integers(0, L[a] + es[c][a])) for a in range(rank)]
        pe = [L[a] + es[c][a] - pb[a] for a in range(rank)]
        g = draw(st.sampled_from(common))
        specs.append(rand_conv(rng, O, I, ks[c], g, strides, ds[c], pb + pe, bias=draw(st.booleans())))
    n = [max(es["a"][a], es["b"][a]) + draw(st.integers(0, 2 * strides[a])) for a in range(rank)]
    return specs[0], specs[1], (draw(st.integers(1, 2)), I, *n)
