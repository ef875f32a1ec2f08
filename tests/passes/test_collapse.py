"""LayerCollapse, exactly: an FFN whose activation is linear (PRelu with slope exactly 1)
collapses to one linear layer per block."""

from __future__ import annotations

import pytest

from onnx_depth import zoo

from .builders import check_lossless, op_counts


@pytest.mark.parametrize("blocks,seq,d_model,d_ff", [(4, 128, 256, 1024), (3, 8, 16, 8)])
def test_ffn_prelu_slope_one_collapses_to_one_linear_per_block(blocks, seq, d_model, d_ff):
    """Each block: LayerNorm -> MatMul+Add -> PRelu(1) -> MatMul+Add -> + x becomes
    LayerNorm -> MatMul+Add -> + x (the residual Add stays: x + L(LN(x)) is not linear in x).
    Also when d_ff < d_model, where collapsing saves even more."""
    m = zoo.build("ffn_stack", act="prelu", prelu_slope=1.0, blocks=blocks, seq=seq, d_model=d_model, d_ff=d_ff)
    r = check_lossless(m)
    assert op_counts(r.model) == {"LayerNormalization": blocks, "MatMul": blocks, "Add": 2 * blocks}
    assert r.report.after.macs == blocks * seq * d_model * d_model
    assert r.report.before.macs == blocks * seq * 2 * d_model * d_ff
    assert r.report.after.depth < r.report.before.depth


@pytest.mark.parametrize("act,slope", [("prelu", 0.25), ("prelu", 0.999), ("gelu", 0.25)])
def test_ffn_with_a_real_activation_is_left_alone(act, slope):
    m = zoo.build("ffn_stack", act=act, prelu_slope=slope, blocks=2, seq=8, d_model=16, d_ff=32)
    r = check_lossless(m)
    assert op_counts(r.model) == op_counts(m)
    assert r.report.after.macs == r.report.before.macs
