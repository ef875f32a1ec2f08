"""A small float64 numpy evaluation of ONNX Conv (cross-correlation), any spatial rank.

Used only to compute input-independent constant maps (border corrections) from the formula

    y[o, t] = b[o] + sum_{i_local, u} W[o, i_local, u] * xp[g(o)*C_in/g + i_local, s*t + d*u]

where xp is the already padded input. It is not a test oracle: tests compare against
onnxruntime. Loops over kernel taps and contracts channels with einsum, so it is meant for the
small maps it is used on, not for running models.
"""

from __future__ import annotations

from itertools import product
from typing import Sequence

import numpy as np

from .conv_spec import ConvSpec


def correlate_valid(
    xp: np.ndarray,
    weight: np.ndarray,
    strides: Sequence[int],
    dilations: Sequence[int],
    group: int = 1,
) -> np.ndarray:
    """Unpadded ("valid") grouped cross-correlation of xp [C_in, *sp] with weight [O, C_in/g, *k].

    Returns [O, *out] in float64, no bias.
    """
    x = np.asarray(xp, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    O, ig = w.shape[:2]
    k = w.shape[2:]
    sp = x.shape[1:]
    if x.shape[0] != ig * group:
        raise ValueError(f"input has {x.shape[0]} channels, weight expects {ig * group}")
    out_sp = tuple((n - (d * (kk - 1) + 1)) // s + 1 for n, kk, s, d in zip(sp, k, strides, dilations))
    if any(o < 1 for o in out_sp):
        raise ValueError(f"input {sp} too small for kernel {k} with dilations {tuple(dilations)}")
    xg = x.reshape(group, ig, *sp)
    wg = w.reshape(group, O // group, ig, *k)
    out = np.zeros((group, O // group, *out_sp))
    for v in product(*(range(kk) for kk in k)):
        sl = tuple(slice(d * vv, d * vv + s * (no - 1) + 1, s) for vv, s, d, no in zip(v, strides, dilations, out_sp))
        out += np.einsum("goi,gi...->go...", wg[(slice(None), slice(None), slice(None), *v)], xg[(slice(None), slice(None), *sl)])
    return out.reshape(O, *out_sp)


def pad_zero(x: np.ndarray, pads: Sequence[int]) -> np.ndarray:
    """Zero-pad the spatial axes of [C, *sp] with ONNX-ordered pads."""
    r = x.ndim - 1
    widths = [(0, 0)] + [(int(pads[a]), int(pads[a + r])) for a in range(r)]
    return np.pad(np.asarray(x, dtype=np.float64), widths)


def conv_apply(spec: ConvSpec, x: np.ndarray) -> np.ndarray:
    """ONNX Conv of one sample [C_in, *sp] (or a batch [N, C_in, *sp]) in float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == spec.rank + 2:
        return np.stack([conv_apply(spec, xi) for xi in x])
    y = correlate_valid(pad_zero(x, spec.pads), spec.weight, spec.strides, spec.dilations, spec.group)
    return y + spec.bias_or_zeros().reshape(-1, *([1] * spec.rank))


def constant_border_map(
    spec: ConvSpec,
    channel_values: np.ndarray,
    inner_spatial_shape: Sequence[int],
) -> np.ndarray:
    """conv_nobias(pad0(c)) - conv_nobias(c extended over the padding), for a constant map c.

    c[i, ...] = channel_values[i] on an inner grid of shape ``inner_spatial_shape``. The first
    term sees zeros in the padding, the second sees the constant there too; their difference is
    -conv_nobias(c on the padding ring, 0 inside), which is what this computes. Shape [O, *out].
    This is the exact correction when a rewrite makes ``spec`` see the constant instead of zeros
    on its padding.
    """
    c = np.asarray(channel_values, dtype=np.float64)
    r = spec.rank
    padded = tuple(n + spec.pads[a] + spec.pads[a + r] for a, n in enumerate(inner_spatial_shape))
    ring = np.broadcast_to(c.reshape(-1, *([1] * r)), (c.shape[0], *padded)).copy()
    inner = tuple(slice(spec.pads[a], spec.pads[a] + n) for a, n in enumerate(inner_spatial_shape))
    ring[(slice(None), *inner)] = 0.0
    return 0.0 - correlate_valid(ring, spec.weight, spec.strides, spec.dilations, spec.group)
