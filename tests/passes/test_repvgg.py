"""Issue 12 §4: BatchNorm on the identity branch of a parallel sum (RepVGG / DBB training blocks)

    relu(BN(conv3x3 x) + BN(conv1x1 x) + BN(x))

BN(x) = s x + t is a diagonal kernel (s[o] at the centre tap of output o's own input channel,
group-aware) plus a bias t, added to the summed conv branches: each block becomes one 3x3 conv,
exactly (onnxruntime, all optimizations off, rtol 1e-4 / atol 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest

from .builders import ModelBuilder, check_lossless, feeds_for, n_nodes, op_counts, rand_bn, rand_conv, refusals

# (in, out, stride, groups): identity branch where in == out and stride 1
BLOCKS = [(8, 8, 1, 1), (8, 16, 2, 1), (16, 16, 1, 1), (16, 16, 1, 2), (16, 24, 2, 1), (24, 24, 1, 1)]


def _block(b: ModelBuilder, x: str, rng, cin: int, cout: int, stride: int, groups: int, order: int) -> str:
    k3 = b.bn(b.conv(x, rand_conv(rng, cout, cin, (3, 3), groups, [stride] * 2, None, [1] * 4, bias=False)), rand_bn(rng, cout))
    k1 = b.bn(b.conv(x, rand_conv(rng, cout, cin, (1, 1), groups, [stride] * 2, None, [0] * 4, bias=False)), rand_bn(rng, cout))
    branches = [k3, k1] + ([b.bn(x, rand_bn(rng, cin))] if cin == cout and stride == 1 else [])
    if order % 2 and len(branches) == 3:  # both Add orders: (k3 + k1) + id and k3 + (k1 + id)
        h = b.add(branches[0], b.add(branches[1], branches[2]))
    else:
        h = b.add(branches[0], branches[1])
        for br in branches[2:]:
            h = b.add(h, br)
    return b.op("Relu", [h])


def _repvgg(batch="N", size=16, seed=0):
    rng = np.random.default_rng(seed)
    b = ModelBuilder((batch, 3, size, size))
    h = b.op("Relu", [b.bn(b.conv(b.x, rand_conv(rng, 8, 3, (3, 3), 1, [2, 2], None, [1] * 4, bias=False)), rand_bn(rng, 8))])
    for i, (cin, cout, stride, groups) in enumerate(BLOCKS):
        h = _block(b, h, rng, cin, cout, stride, groups, i)
    return b.model(h)


def test_repvgg_training_blocks_collapse_to_one_conv_each():
    m = _repvgg()
    assert n_nodes(m, "BatchNormalization") == 1 + 2 * 6 + 4 and n_nodes(m, "Add") == 2 * 4 + 2
    r = check_lossless(m, feeds_for(m, (1, 3, 16, 16)) + feeds_for(m, (3, 3, 16, 16), seed=1))
    assert op_counts(r.model) == {"Conv": 7, "Relu": 7}, op_counts(r.model)
    assert r.report.after.params < r.report.before.params


def test_identity_bn_on_a_dense_residual():
    """x + ... for [N, C]: BN(x) + Gemm(x) -> one Gemm with diag(s) added and t in the bias."""
    rng = np.random.default_rng(3)
    b = ModelBuilder(("N", 6))
    W = (rng.standard_normal((6, 6)) / 3).astype(np.float32)
    m = b.model(b.add(b.gemm(b.x, W, rng.standard_normal(6).astype(np.float32)), b.bn(b.x, rand_bn(rng, 6))))
    r = check_lossless(m, feeds_for(m, (4, 6)))
    assert op_counts(r.model) == {"Gemm": 1}


def test_identity_bn_whose_conv_has_no_centre_tap_is_refused():
    """A 3x3 conv with dilation 2 and pads (1, 3) preserves the size, but the identity (offset
    p_begin = 1) falls between its taps (0, 2, 4): BN(x) + conv(x) is left as it is, with the reason."""
    rng = np.random.default_rng(4)
    b = ModelBuilder((1, 4, 6, 6))
    conv = rand_conv(rng, 4, 4, (3, 3), 1, None, [2, 2], [1, 1, 3, 3])
    m = b.model(b.add(b.conv(b.x, conv), b.bn(b.x, rand_bn(rng, 4))))
    r = check_lossless(m, feeds_for(m, (1, 4, 6, 6)))
    assert n_nodes(r.model, "BatchNormalization") == 1
    assert any("identity" in w and "tap" in w for w in refusals(r, "merge_linear")), refusals(r)


@pytest.mark.parametrize("mode", ["EVAL", "PRESERVE"])
def test_repvgg_exported_by_torch_collapses(mode):
    """The same blocks as torch writes them (dynamo=False, dynamic batch): EVAL folds the
    branch BNs into their convs and keeps BN(x); PRESERVE keeps every BN."""
    torch = pytest.importorskip("torch")
    import io

    import onnx
    from torch import nn

    class Block(nn.Module):
        def __init__(self, ci, co, stride):
            super().__init__()
            self.k3 = nn.Sequential(nn.Conv2d(ci, co, 3, stride, 1, bias=False), nn.BatchNorm2d(co))
            self.k1 = nn.Sequential(nn.Conv2d(ci, co, 1, stride, 0, bias=False), nn.BatchNorm2d(co))
            self.id = nn.BatchNorm2d(ci) if ci == co and stride == 1 else None

        def forward(self, x):
            y = self.k3(x) + self.k1(x)
            return torch.relu(y if self.id is None else y + self.id(x))

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                        *(Block(ci, co, s) for ci, co, s, _ in BLOCKS))
    for mod in net.modules():
        if isinstance(mod, nn.BatchNorm2d):  # trained-looking statistics (fresh ones are the identity)
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-1, 1)
    buf = io.BytesIO()
    torch.onnx.export(net.eval(), torch.randn(1, 3, 16, 16), buf, dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}}, training=getattr(torch.onnx.TrainingMode, mode),
                      do_constant_folding=mode == "EVAL")
    m = onnx.load_from_string(buf.getvalue())
    assert n_nodes(m, "BatchNormalization") >= 4 and n_nodes(m, "Add") == 10
    r = check_lossless(m, feeds_for(m, (1, 3, 16, 16)) + feeds_for(m, (3, 3, 16, 16), seed=1))
    assert op_counts(r.model) == {"Conv": 7, "Relu": 7}, op_counts(r.model)
