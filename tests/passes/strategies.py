"""Hypothesis strategies for the pass tests: tiny layer configurations (channels <= 8, spatial
sizes <= ~20), drawn with a numpy seed for the weights."""

from __future__ import annotations


import numpy as np
from hypothesis import strategies as st

from tests.kernels.strategies import channel_groups as _channel_groups
from tests.kernels.strategies import divisors

from .builders import rand_conv

seeds = st.integers(0, 2**32 - 1)


def channel_groups():
    """(I, M, O, g1, g2) with the pass tests' tiny sizes (channels <= 6, groups <= 3)."""
    return _channel_groups(max_c=6, max_g=3)


@st.composite
def conv_pair(draw, rank: int = 2):
    """(conv1, conv2, input_shape, mode) with the padding tier steered by mode:
    exact (p2 = 0), correctable (1x1 unpadded conv1), patchify (k1 = s1, unpadded), any."""
    rng = np.random.default_rng(draw(seeds))
    I, M, O, g1, g2 = draw(channel_groups())
    mode = draw(st.sampled_from(["exact", "correctable", "patchify", "any"]))
    k1, k2, s1, s2, d1, d2, p1b, p1e, p2b, p2e, n = ([] for _ in range(11))
    for _ in range(rank):
        k1.append(draw(st.integers(1, 7)))
        k2.append(draw(st.integers(1, 7)))
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
    return c1, c2, (draw(st.integers(1, 2)), I, *n), mode


@st.composite
def residual_conv(draw):
    """(conv, input_shape, has_tap): C_in == C_out, stride 1, size-preserving pads; has_tap is
    False when the identity falls between the taps of a dilated kernel (not one conv)."""
    rng = np.random.default_rng(draw(seeds))
    gmode = draw(st.sampled_from(["dense", "grouped", "dw"]))
    if gmode == "dense":
        C, g = draw(st.integers(1, 6)), 1
    elif gmode == "grouped":
        g = draw(st.integers(2, 3))
        C = g * draw(st.integers(1, 6 // g))
    else:
        C = draw(st.integers(1, 6))
        g = C
    broken = draw(st.sampled_from([False, False, False, True]))
    k, d, pb_, pe_, n = [], [], [], [], []
    has_tap = True
    for _ in range(2):
        k.append(draw(st.integers(1, 5)))
        d.append(draw(st.integers(1, 2)))
        e = d[-1] * (k[-1] - 1) + 1
        pb = d[-1] * draw(st.integers(0, k[-1] - 1))
        if broken and d[-1] == 2 and k[-1] > 1:
            pb = pb + 1 if pb + 1 <= e - 1 else pb - 1
            has_tap = False
        pb_.append(pb)
        pe_.append(e - 1 - pb)
        n.append(draw(st.integers(1, 8)))
    conv = rand_conv(rng, C, C, k, g, None, d, pb_ + pe_, bias=draw(st.booleans()))
    return conv, (draw(st.integers(1, 2)), C, *n), has_tap


@st.composite
def parallel_convs(draw):
    """(a, b, input_shape): two convs over one input with equal strides and consistent pads."""
    rng = np.random.default_rng(draw(seeds))
    g0 = draw(st.sampled_from([1, 2, 3, "dw"]))
    if g0 == "dw":
        I = O = draw(st.integers(1, 6))
        common = [I, I, 1] + divisors(I)
    else:
        I, O = g0 * draw(st.integers(1, 6 // g0)), g0 * draw(st.integers(1, 6 // g0))
        common = divisors(g0)
    rank = 2
    strides = [draw(st.integers(1, 3)) for _ in range(rank)]
    ks = {c: [draw(st.integers(1, 5)) for _ in range(rank)] for c in "ab"}
    ds = {c: [draw(st.integers(1, 2)) for _ in range(rank)] for c in "ab"}
    es = {c: [ds[c][a] * (ks[c][a] - 1) + 1 for a in range(rank)] for c in "ab"}
    L = [draw(st.integers(-min(es["a"][a], es["b"][a]), 2)) for a in range(rank)]
    specs = []
    for c in "ab":
        pb = [draw(st.integers(0, L[a] + es[c][a])) for a in range(rank)]
        pe = [L[a] + es[c][a] - pb[a] for a in range(rank)]
        specs.append(rand_conv(rng, O, I, ks[c], draw(st.sampled_from(common)), strides, ds[c], pb + pe, bias=draw(st.booleans())))
    n = [max(es["a"][a], es["b"][a]) + draw(st.integers(0, 2 * strides[a])) for a in range(rank)]
    return specs[0], specs[1], (draw(st.integers(1, 2)), I, *n)
