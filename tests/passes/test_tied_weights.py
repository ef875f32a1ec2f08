"""Tied weights (issue 12 §3, issue 13 item 10): an initializer read by several nodes is never
duplicated. `--lossless` never increases the parameter count; a rewrite that changes a shared
weight is applied only when it is the same rewrite for every user (the tensor is rewritten
once), otherwise the nodes are left as they are and the pass says why."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_depth.api import optimize

from .builders import ModelBuilder, check_lossless, n_nodes, rand_bn, rand_conv, refusals


def _params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def test_costly_pair_then_shared_conv_is_refused_not_a_crash():
    """Issue 13 item 10: conv1 -> conv2 (merging costs MACs) -> conv3 whose weight is shared
    used to call chain_kernel(c1, None) and exit 4."""
    rng = np.random.default_rng(10)
    c1, c2 = rand_conv(rng, 4, 4, (3, 3)), rand_conv(rng, 4, 4, (3, 3))  # 3x3 valid, 3x3 valid -> 5x5: more MACs
    c3 = rand_conv(rng, 4, 4, (1, 1))
    b = ModelBuilder((1, 4, 12, 12))
    w3 = b.const(c3.weight, "tied_w")
    h = b.conv(b.conv(b.conv(b.x, c1), c2), c3, weight=w3)
    m = b.model(b.conv(h, c3, weight=w3))
    r = check_lossless(m)
    assert n_nodes(r.model, "Conv") == 4
    why = refusals(r, "merge_linear")
    assert any("costs" in w and "(5, 5)" in w for w in why), why
    assert _params(r.model) <= _params(m)
