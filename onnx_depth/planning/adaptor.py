"""PRACTISE-style adaptors (Wang & Wu, CVPR 2023): where a plan drops a whole block (an option
whose operator is the identity, or a multiple of it when a residual's both paths collapse), the
block is replaced by a fitted 1x1 conv (dense layer for [.., features] chains) C -> C instead of
nothing, where that costs at most MIX_SHARE of the dropped layers' MACs; otherwise (a pruned 3x3
depthwise conv: 9 C MACs per position, a 1x1 conv C^2) by a per-channel affine map (a 1x1
depthwise conv, C MACs), which restores at least the scale and offset the dropped layer (with
its folded BatchNorm) gave each channel. The adaptor starts at the exact operator (k I, zero bias) and is fitted like every
other operator (kernels.lstsq.select: naive / scale+bias / ridge toward it, chosen on the
validation rows), so it is emitted only where it beats the bare identity on held-out data; its
cost (C^2 MACs per position) is in the measured latency of the plan, not in the DP's prediction.
"""

from __future__ import annotations

import numpy as np

from ..kernels import ConvSpec
from .segments import Candidates, SegmentOption

__all__ = ["MIX_SHARE", "identity_adaptor"]

MIX_SHARE = 0.5  # a channel-mixing adaptor may cost this share of the dropped layers' MACs


def identity_adaptor(cands: Candidates, opt: SegmentOption, op) -> "ConvSpec | tuple | None":
    """The adaptor of a dropped block equal to its exact operator `op` (None: identity, a float:
    that multiple of it), or None when `opt` is not a dropped block with a known channel count."""
    if opt.kind == "keep" or opt.geom is not None or not (op is None or isinstance(op, float)):
        return None
    chain = cands.chains[opt.chain]
    shape = tuple(chain.shapes[opt.st]) if opt.st < len(chain.shapes) else ()
    if not shape or any(not isinstance(d, int) or d <= 0 for d in shape):
        return None
    k = 1.0 if op is None else float(op)
    positions = int(np.prod(shape[2:] if chain.kind == "conv" else shape[:-1]))
    c = shape[1] if chain.kind == "conv" else shape[-1]
    mix = c * c * positions <= MIX_SHARE * max(opt.macs_original, 0)
    if chain.kind == "conv":
        if len(shape) != 4:
            return None
        if mix:
            return ConvSpec(np.eye(c, dtype=np.float32)[:, :, None, None] * np.float32(k), np.zeros(c, np.float32))
        return ConvSpec(np.full((c, 1, 1, 1), k, np.float32), np.zeros(c, np.float32), group=c)
    if not mix:
        return None  # a dense chain has no per-channel layer to emit
    return (np.eye(c, dtype=np.float32) * np.float32(k), np.zeros(c, np.float32))
