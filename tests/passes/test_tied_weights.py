"""Tied weights (issue 12 §3, issue 13 item 10): an initializer read by several nodes is never
duplicated. `--lossless` never increases the parameter count; a rewrite that changes a shared
weight is applied only when it is the same rewrite for every user (the tensor is rewritten
once), otherwise the nodes are left as they are and the pass says why."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_depth import ir, metrics

from .builders import ModelBuilder, check_lossless, feeds_for, n_nodes, rand_bn, rand_conv, refusals


def _params(model: onnx.ModelProto) -> int:
    """Float parameters as onnx_depth.metrics counts them (Constant nodes included), model as given."""
    return metrics.model_stats(ir.load(model, fold=False, shapes=False)).params


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


def _tied_convs(identity_copies: bool, bn: str | None, seed=11):
    """x -> conv0 -> relu -> [conv(W) -> (BN) -> relu] x 3 -> head, W read by 3 Convs: directly,
    or as exporters write it (Identity(W) per extra use). bn: None, "same" (one BN module
    applied 3 times: shared parameter tensors), "equal" (3 BN nodes, equal values),
    "different"."""
    rng = np.random.default_rng(seed)
    b = ModelBuilder(("N", 3, 8, 8))
    c0, c, head = rand_conv(rng, 6, 3, (3, 3), pads=[1] * 4), rand_conv(rng, 6, 6, (3, 3), pads=[1] * 4), rand_conv(rng, 2, 6, (1, 1))
    w, bias = b.const(c.weight, "tied_w"), b.const(c.bias, "tied_b")
    bn_params = rand_bn(rng, 6)
    shared_bn = [b.const(v, n) for v, n in zip(bn_params, ("scale", "beta", "mean", "var"))]
    h = b.op("Relu", [b.conv(b.x, c0)])
    for i in range(3):
        wi, bi = (b.op("Identity", [w]), b.op("Identity", [bias])) if identity_copies and i else (w, bias)
        h = b.op("Conv", [h, wi, bi], **c.to_onnx_attrs())
        if bn == "same":
            h = b.op("BatchNormalization", [h, *shared_bn])
        elif bn == "equal":
            h = b.bn(h, bn_params)
        elif bn == "different":
            h = b.bn(h, rand_bn(rng, 6))
        h = b.op("Relu", [h])
    return b.model(b.conv(h, head))


@pytest.mark.parametrize("identity_copies", [False, True])
@pytest.mark.parametrize("bn", [None, "same", "equal"])
def test_tied_convs_never_copied_and_same_bn_folded_once(identity_copies, bn):
    m = _tied_convs(identity_copies, bn)
    r = check_lossless(m, feeds_for(m, (3, 3, 8, 8)))  # outputs equal, params/MACs/nodes not up
    assert _params(r.model) <= _params(m)
    assert n_nodes(r.model, "Conv") == 5 and n_nodes(r.model, "BatchNormalization") == 0
    tied = [t for t in r.model.graph.initializer if tuple(t.dims) == (6, 6, 3, 3)]
    assert len(tied) == 1, [t.name for t in tied]  # one weight, read by the 3 Convs
    assert sum(tied[0].name in n.input for n in r.model.graph.node) == 3
    if bn:
        assert _params(r.model) < _params(m)  # the BN parameters are gone


def test_tied_convs_with_different_bns_left_alone():
    m = _tied_convs(False, "different")
    r = check_lossless(m, feeds_for(m, (2, 3, 8, 8)))
    assert n_nodes(r.model, "BatchNormalization") == 3
    assert _params(r.model) <= _params(m)
    why = refusals(r, "fold_bn")
    assert any("shared" in w and "same BatchNormalization" in w for w in why), why


def test_tied_weight_transposed_for_a_second_use_is_not_copied():
    """W read by MatMul and, through Transpose(W), by a second MatMul (a tied embedding / LM
    head): folding the Transpose would add a copy W^T while W stays: it is not folded."""
    rng = np.random.default_rng(12)
    W = (rng.standard_normal((6, 6)) / 3).astype(np.float32)
    b = ModelBuilder(("N", 6))
    w = b.const(W, "tied_W")
    h = b.op("Relu", [b.op("MatMul", [b.x, w])])
    m = b.model(b.op("MatMul", [h, b.op("Transpose", [w], perm=[1, 0])]))
    r = check_lossless(m, feeds_for(m, (4, 6)))
    assert _params(r.model) <= _params(m)


def test_tied_encoder_exported_by_torch_never_grows():
    """nn.TransformerEncoderLayer applied 4 times, exported by torch (dynamo=False) with dynamic
    batch: the exporter writes the tied projections as Identity(initializer). Issue 12 measured
    +82% parameters here."""
    torch = pytest.importorskip("torch")
    import io

    torch.manual_seed(0)

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

        def forward(self, x):
            for _ in range(4):
                x = self.layer(x)
            return x

    buf = io.BytesIO()
    # (not under no_grad: that selects torch's fused encoder kernel, which does not export)
    torch.onnx.export(Tied().eval(), torch.randn(2, 5, 16), buf, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B"}, "y": {0: "B"}})
    m = onnx.load_from_string(buf.getvalue())
    assert any(n.op_type == "Identity" for n in m.graph.node)  # the exporter's form of a tied weight
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((bs, 5, 16)).astype(np.float32)} for bs in (1, 3)]
    r = check_lossless(m, feeds, n_random=0)
    assert r.report.after.params <= r.report.before.params
    assert _params(r.model) <= _params(m)
