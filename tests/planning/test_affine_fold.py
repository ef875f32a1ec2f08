"""A per-channel affine map (a removed activation's linear stand-in) folded straight into a
neighbouring conv's weights (planning.segments.algebra), checked against onnxruntime running
the affine map as its own depthwise 1x1 conv next to the original conv."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_depth.kernels import ConvSpec, border_correction
from onnx_depth.planning.segments.algebra import ChannelAffine, RealAlgebra

from ..kernels.onnx_builders import assert_same, conv_chain_model, nchw_map
from ..kernels.strategies import conv_chains


def _affine(seed: int, c: int, rank: int) -> tuple[ChannelAffine, ConvSpec]:
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(-1.5, 1.5, c), rng.normal(0, 1, c)
    as_conv = ConvSpec(a.reshape(c, 1, *([1] * rank)).astype(np.float32), b.astype(np.float32), group=c)
    return ChannelAffine(a, b, "conv", rank), as_conv


@settings(max_examples=120, deadline=None)
@given(conv_chains(rank=2, max_k=5), st.integers(0, 2**31 - 1))
def test_affine_after_conv(chain, seed):
    conv, _, shape = chain
    f, as_conv = _affine(seed, conv.out_channels, 2)
    folded = RealAlgebra(graph=None).compose(conv, f)
    assert folded.group == conv.group and folded.dilations == conv.dilations
    assert_same(conv_chain_model([conv, as_conv], shape), conv_chain_model([folded], shape))


@settings(max_examples=120, deadline=None)
@given(conv_chains(rank=2, max_k=5), st.integers(0, 2**31 - 1))
def test_affine_before_conv(chain, seed):
    _, conv, shape = chain
    f, as_conv = _affine(seed, conv.in_channels, 2)
    folded = RealAlgebra(graph=None).compose(f, conv)
    assert folded.group == conv.group and folded.dilations == conv.dilations
    mid = (shape[0], conv.in_channels, *shape[2:])
    corr = border_correction(as_conv, conv, shape[2:])  # the ring reads b where the original reads 0
    assert_same(conv_chain_model([as_conv, conv], mid),
                conv_chain_model([folded], mid, add_const=nchw_map(corr) if np.any(corr) else None))
