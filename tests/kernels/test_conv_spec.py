"""ConvSpec helpers: output shapes, auto_pad, group expansion, checked against onnxruntime."""

from __future__ import annotations

from math import prod

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_depth.kernels import ConvSpec, pads_from_auto_pad, to_dense

from .onnx_builders import GraphBuilder, assert_same, conv_chain_model, run_once
from .strategies import divisors, rand_conv, seeds


@settings(max_examples=200, deadline=None)
@given(st.data(), seeds, st.integers(1, 3), st.sampled_from(["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
def test_shapes_auto_pad_and_dense(data, seed, rank, auto_pad):
    """Explicit-pad ConvSpec (from auto_pad) == ORT's auto_pad conv; output_shape == ORT's; the
    dense expansion of a grouped conv computes the same thing."""
    rng = np.random.default_rng(seed)
    C = data.draw(st.integers(1, 6))
    g = data.draw(st.sampled_from(divisors(C)))
    O = g * data.draw(st.integers(1, 3))
    k = [data.draw(st.integers(1, 4)) for _ in range(rank)]
    s = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    # ORT refuses dilation with auto_pad SAME_*, so that combination cannot be checked.
    d = [1 if auto_pad.startswith("SAME") else data.draw(st.integers(1, 2)) for _ in range(rank)]
    n = [d[a] * (k[a] - 1) + 1 + data.draw(st.integers(0, 5)) for a in range(rank)]
    shape = (data.draw(st.integers(1, 2)), C, *n)
    base = rand_conv(rng, O, C, k, g, s, d)
    attrs = {"kernel_shape": k, "strides": s, "dilations": d, "group": g}
    if auto_pad == "NOTSET":
        attrs["pads"] = [data.draw(st.integers(0, 2)) for _ in range(2 * rank)]
    else:
        attrs["auto_pad"] = auto_pad
    spec = ConvSpec.from_onnx_attrs(base.weight, base.bias, attrs, input_spatial_shape=n)
    gb = GraphBuilder(shape)
    ins = [gb.x, gb.const(base.weight), gb.const(base.bias)]
    ref = gb.model(gb.op("Conv", ins, **attrs))
    assert_same(ref, conv_chain_model([spec], shape), n_random=1)
    y = run_once(ref, {"x": np.zeros(shape, np.float32)})
    assert y.shape == spec.output_shape(shape)
    assert spec.macs(n, batch=shape[0]) == shape[0] * O * (C // g) * prod(k) * prod(y.shape[2:])
    dense = to_dense(spec)
    assert dense.group == 1 and dense.weight.shape[1] == C
    assert_same(ref, conv_chain_model([dense], shape), n_random=1)


def test_spec_basics():
    w = np.zeros((6, 2, 3, 5), np.float32)
    s = ConvSpec(w, None, (2, 1), (1, 2), (1, 4, 1, 4), 3)
    assert s.rank == 2 and s.in_channels == 6 and s.out_channels == 6
    assert s.kernel_shape == (3, 5) and s.extent == (3, 9)
    assert s.output_spatial_shape((10, 10)) == (5, 10)
    assert not s.is_depthwise and not s.is_pointwise
    assert s.params == w.size
    assert ConvSpec(np.zeros((4, 1, 3)), group=4).is_depthwise
    assert pads_from_auto_pad("SAME_UPPER", (4,), (1,)) == (1, 2)
    assert pads_from_auto_pad("SAME_LOWER", (4,), (1,)) == (2, 1)


def test_spec_errors():
    with pytest.raises(ValueError, match="group"):
        ConvSpec(np.zeros((5, 1, 3)), group=2)
    with pytest.raises(ValueError, match="bias"):
        ConvSpec(np.zeros((4, 1, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="pads"):
        ConvSpec(np.zeros((4, 1, 3)), pads=(1,))
    with pytest.raises(ValueError, match="negative"):
        ConvSpec(np.zeros((4, 1, 3)), pads=(-1, 0))
    with pytest.raises(ValueError, match="too small"):
        ConvSpec(np.zeros((4, 1, 5))).output_spatial_shape((3,))
    with pytest.raises(ValueError, match="input spatial shape"):
        pads_from_auto_pad("SAME_UPPER", (3,), (2,))
