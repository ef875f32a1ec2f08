"""Property tests of the lossless pipeline (onnx_depth.api.optimize(model, lossless=True)).

Every example builds a tiny ONNX model, optimizes it and asserts, against onnxruntime on random
inputs (rtol 1e-4, atol 1e-5), that the output did not change, that node count and MACs did not
go up (builders.check_lossless), and that the rewrite that should happen did happen (op counts),
with the expectation computed from the kernels' math (tier, MACs), which tests/kernels checks
against onnxruntime on its own.
"""

from __future__ import annotations

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from onnx_depth.kernels import Tier, add_parallel, border_correction, compose, exactness

from .builders import (
    ModelBuilder,
    check_lossless,
    feeds_for,
    n_nodes,
    op_counts,
    rand_bn,
    rand_conv,
    rand_dense,
    refusals,
)
from .strategies import conv_pair, parallel_convs, residual_conv, seeds

import os

EXAMPLES = settings(max_examples=int(os.environ.get("ONNX_DEPTH_EXAMPLES", 200)), deadline=None)


# --------------------------------------------------------------------------- Conv∘Conv
def _params(*specs) -> int:
    return sum(int(c.weight.size) + (0 if c.bias is None else int(np.size(c.bias))) for c in specs)


def _expect_merge(c1, c2, sp) -> tuple[bool, Tier]:
    """Merged iff the tier allows it and the merged conv is not bigger: no more MACs and no more
    weights + bias than the two convs (a border map is not counted)."""
    tier = exactness(c1, c2, sp)
    merged = compose(c1, c2)
    before = c1.macs(sp) + c2.macs(c1.output_spatial_shape(sp))
    if tier == Tier.INEXACT:
        return False, tier
    return merged.macs(sp) <= before and _params(merged) <= _params(c1, c2), tier


@EXAMPLES
@given(conv_pair(), st.booleans())
def test_conv_conv(case, dynamic_batch):
    """Conv∘Conv, any kernel 1-7, stride 1-3, dilation 1-2, groups (dense, grouped, depthwise,
    mixed), every padding tier, bias or not: merged exactly when the tier allows it and the merged
    conv is not bigger; a CORRECTABLE chain gets one border Add."""
    c1, c2, shape, mode = case
    sp = shape[2:]
    b = ModelBuilder(["N", *shape[1:]] if dynamic_batch else shape)
    m = b.model(b.conv(b.conv(b.x, c1), c2))
    r = check_lossless(m, feeds_for(m, shape))
    expect, tier = _expect_merge(c1, c2, sp)
    event(f"mode={mode} tier={tier.name} merged={expect}")
    if expect:
        corr = border_correction(c1, c2, sp)
        assert op_counts(r.model) == ({"Conv": 1, "Add": 1} if np.any(corr) else {"Conv": 1})
    else:
        assert n_nodes(r.model, "Conv") == 2
        assert any("->" in why for why in refusals(r, "merge_linear"))


@EXAMPLES
@given(conv_pair())
def test_conv_conv_dynamic_spatial(case):
    """The same chains on an input with symbolic H and W: merged only where no shape is needed
    (the shape-free tier is EXACT, or CORRECTABLE with no conv1 bias), never with a border map;
    refused with the reason otherwise."""
    c1, c2, shape, mode = case
    b = ModelBuilder(["N", shape[1], "H", "W"])
    m = b.model(b.conv(b.conv(b.x, c1), c2))
    r = check_lossless(m, feeds_for(m, shape))
    tier = exactness(c1, c2)
    needs_shape = tier == Tier.INEXACT or (tier == Tier.CORRECTABLE and c1.bias is not None and np.any(c1.bias))
    merged = n_nodes(r.model, "Conv") == 1
    event(f"tier={tier.name} merged={merged}")
    if merged:
        assert not needs_shape and op_counts(r.model) == {"Conv": 1}
    else:
        assert n_nodes(r.model, "Conv") == 2 and refusals(r, "merge_linear")
        if not needs_shape:  # refused for cost: not cheaper at the real size either, or at some probe size
            assert any("MACs" in why for why in refusals(r, "merge_linear"))


@EXAMPLES
@given(seeds, st.integers(1, 6), st.integers(1, 6), st.integers(2, 4), st.sampled_from([1, 3, 5]), st.booleans())
def test_three_conv_chain_with_corrections(seed, C, M, n_convs, k, bias):
    """1x1 -> kxk (padded) -> 1x1 ... : the first merge is CORRECTABLE (a border Add between), the
    next conv still merges through that constant Add; the result stays exact."""
    rng = np.random.default_rng(seed)
    specs = []
    cin = C
    for i in range(n_convs):
        kk = k if i % 2 else 1
        cout = M if i < n_convs - 1 else C
        specs.append(rand_conv(rng, cout, cin, (kk, kk), pads=[kk // 2] * 4, bias=bias or i == 0))
        cin = cout
    shape = (1, C, 6, 7)
    b = ModelBuilder(shape)
    h = b.x
    for s in specs:
        h = b.conv(h, s)
    r = check_lossless(b.model(h))
    convs = n_nodes(r.model, "Conv")
    event(f"convs {n_convs} -> {convs}")
    # every merge leaves at most one constant map behind its conv
    assert 1 <= convs <= n_convs and n_nodes(r.model, "Add") <= convs


# --------------------------------------------------------------------------- dense chains
def _dense_dims(model) -> list[tuple[int, int]]:
    """(in, out) of every Gemm/MatMul with a constant weight, in graph order."""
    inits = {t.name: t for t in model.graph.initializer}
    dims = []
    for n in model.graph.node:
        if n.op_type in ("Gemm", "MatMul") and n.input[1] in inits:
            d = tuple(inits[n.input[1]].dims)
            trans = any(a.name == "transB" and a.i for a in n.attribute)
            dims.append(d[::-1] if trans else d)
    return dims


@st.composite
def dense_chains(draw):
    rng = np.random.default_rng(draw(seeds))
    kind = draw(st.sampled_from(["2d", "3d"]))
    n_layers = draw(st.integers(2, 4))
    dims = [draw(st.integers(1, 8)) for _ in range(n_layers + 1)]
    lead = [draw(st.integers(1, 3))] if kind == "2d" else [draw(st.integers(1, 2)), draw(st.integers(1, 3))]
    layers = []
    for i in range(n_layers):
        W, bias = rand_dense(rng, dims[i], dims[i + 1], bias=draw(st.booleans()))
        op = draw(st.sampled_from(["gemm", "matmul"])) if kind == "2d" else "matmul"
        attrs = dict(transB=draw(st.integers(0, 1)), alpha=draw(st.sampled_from([1.0, 0.5, 2.0])), beta=draw(st.sampled_from([1.0, 0.5, 2.0])))
        layers.append((op, W, bias, attrs, draw(st.booleans())))
    return kind, (*lead, dims[0]), layers, draw(st.booleans())


@EXAMPLES
@given(dense_chains())
def test_dense_chain(case):
    """Gemm (transB, alpha, beta) / MatMul (+ bias Add, either operand order) chains on [N, C] and
    [B, T, C], static or symbolic leading dims: adjacent layers merge until no merge would be
    cheaper, i.e. in the result no adjacent pair (a -> b -> c) has a*c <= a*b + b*c."""
    kind, shape, layers, symbolic = case
    b = ModelBuilder([f"d{i}" for i in range(len(shape) - 1)] + [shape[-1]] if symbolic else shape)
    h = b.x
    for op, W, bias, attrs, bias_first in layers:
        h = b.gemm(h, W, bias, **attrs) if op == "gemm" else b.matmul(h, W, bias, bias_first=bias_first)
    m = b.model(h)
    r = check_lossless(m, feeds_for(m, shape))
    dims = _dense_dims(r.model)
    event(f"{kind}: {len(layers)} -> {len(dims)} layers")
    assert 1 <= len(dims) <= len(layers)
    for (a, b1), (b2, c) in zip(dims, dims[1:]):
        assert b1 == b2
        # a pair is left when merging costs MACs, or parameters (its bias may be the bigger one)
        assert a * c > a * b1 + b1 * c or any("parameters" in w for w in refusals(r, "merge_linear")), f"mergeable pair left: {dims}"
    if kind == "3d":
        assert n_nodes(r.model, "Gemm") == 0
        assert n_nodes(r.model, "Add") <= len(dims)


# --------------------------------------------------------------------------- BatchNorm
PLACEMENTS = [
    "conv_bn", "convT_bn", "gemm_bn", "matmul_bn", "matmul_add_bn", "bn_conv", "bn_conv_padded",
    "bn_conv_padded_dynamic", "bn_gemm", "bn_matmul", "standalone", "matmul3d_bn",
]


@EXAMPLES
@given(seeds, st.sampled_from(PLACEMENTS), st.integers(1, 6), st.integers(1, 6), st.integers(1, 3))
def test_batchnorm_placements(seed, placement, C, O, N):
    """BN after Conv/ConvTranspose/Gemm/MatMul, before Conv (no padding; padding with a border
    correction; padding on a symbolic spatial shape: refused), before Gemm/MatMul, standalone
    (rank 2-4: kept), after a MatMul on [B, T, C] (normalises T: kept)."""
    rng = np.random.default_rng(seed)
    event(placement)
    kept = placement in ("standalone", "matmul3d_bn", "bn_conv_padded_dynamic")
    g = rng.choice([g for g in (1, 2, 3) if C % g == 0 and O % g == 0])
    if placement in ("conv_bn", "convT_bn", "bn_conv", "bn_conv_padded", "bn_conv_padded_dynamic"):
        shape = (N, C, int(rng.integers(3, 8)), int(rng.integers(3, 8)))
        b = ModelBuilder(["N", C, "H", "W"] if placement.endswith("dynamic") else shape)
        k = int(rng.integers(1, 4))
        if placement == "conv_bn":
            spec = rand_conv(rng, O, C, (k, k), g, [int(rng.integers(1, 3))] * 2, None, [int(rng.integers(0, 2))] * 4, bias=bool(rng.integers(2)))
            y = b.bn(b.conv(b.x, spec), rand_bn(rng, O))
        elif placement == "convT_bn":
            w = rng.standard_normal((C, O // g, k, k)).astype(np.float32)
            ins = [b.x, b.const(w)] + ([b.const(rng.standard_normal(O))] if rng.integers(2) else [])
            h = b.op("ConvTranspose", ins, group=int(g), strides=[2, 2], pads=[0, 1, 0, 1])
            y = b.bn(h, rand_bn(rng, O))
        else:
            p = 0 if placement == "bn_conv" else int(rng.integers(1, 3))
            spec = rand_conv(rng, O, C, (k, k), g, None, None, [p] * 4, bias=bool(rng.integers(2)))
            y = b.conv(b.bn(b.x, rand_bn(rng, C)), spec)
    elif placement in ("gemm_bn", "matmul_bn", "matmul_add_bn", "bn_gemm", "bn_matmul", "standalone"):
        rank = int(rng.integers(2, 5)) if placement == "standalone" else 2
        shape = (N, C, *(int(rng.integers(1, 5)) for _ in range(rank - 2)))
        b = ModelBuilder(shape)
        W, bias = rand_dense(rng, C, O)
        if placement == "gemm_bn":
            y = b.bn(b.gemm(b.x, W, bias, transB=int(rng.integers(2))), rand_bn(rng, O))
        elif placement == "matmul_bn":
            y = b.bn(b.matmul(b.x, W), rand_bn(rng, O))
        elif placement == "matmul_add_bn":
            y = b.bn(b.matmul(b.x, W, bias), rand_bn(rng, O))
        elif placement == "bn_gemm":
            y = b.gemm(b.bn(b.x, rand_bn(rng, C)), W, bias, transB=int(rng.integers(2)))
        elif placement == "bn_matmul":
            y = b.matmul(b.bn(b.x, rand_bn(rng, C)), W, bias)
        else:
            y = b.bn(b.x, rand_bn(rng, C))
    else:  # matmul3d_bn: [B, T, C] @ W -> BN over axis 1 (T)
        T = int(rng.integers(1, 5))
        shape = (N, T, C)
        b = ModelBuilder(shape)
        W, bias = rand_dense(rng, C, O)
        y = b.bn(b.matmul(b.x, W, bias), rand_bn(rng, T))
    m = b.model(y)
    r = check_lossless(m, feeds_for(m, shape))
    if kept:
        assert n_nodes(r.model, "BatchNormalization") == 1
        assert any("BatchNormalization" in why or "static spatial" in why for why in refusals(r, "fold_bn"))
        assert r.report.after.nodes == r.report.before.nodes
    elif any("would add parameters" in why for why in refusals(r, "fold_bn")):  # lossless never adds params
        assert n_nodes(r.model, "BatchNormalization") == 1 and placement.startswith(("bn_conv", "bn_gemm", "bn_matmul"))
    elif placement == "bn_conv_padded":  # folded, plus the constant border map
        assert op_counts(r.model) in ({"Conv": 1, "Add": 1}, {"Conv": 1})
    else:
        assert n_nodes(r.model) == 1 and n_nodes(r.model, "Conv", "ConvTranspose", "Gemm", "MatMul") == 1


# --------------------------------------------------------------------------- residual / parallel
@EXAMPLES
@given(residual_conv(), st.booleans())
def test_residual_conv(case, conv_first):
    """x + conv(x) (stride 1, C_in == C_out, size-preserving; dense, grouped, depthwise; dilated)
    -> one conv with the identity on its centre tap; refused when the identity falls between taps."""
    conv, shape, has_tap = case
    b = ModelBuilder(shape)
    h = b.conv(b.x, conv)
    m = b.model(b.op("Add", [h, b.x] if conv_first else [b.x, h]))
    r = check_lossless(m)
    event(f"has_tap={has_tap}")
    if has_tap:
        assert op_counts(r.model) == {"Conv": 1}
    else:
        assert op_counts(r.model) == {"Conv": 1, "Add": 1}
        assert refusals(r, "merge_linear")


@EXAMPLES
@given(seeds, st.sampled_from(["gemm", "matmul", "matmul3d"]), st.integers(1, 8), st.booleans(), st.booleans(), st.booleans())
def test_residual_dense(seed, kind, C, bias, layer_first, symbolic):
    """x + (x W + b) with Gemm, MatMul(+Add) on [N, C] or [B, T, C] -> one layer with W + I."""
    rng = np.random.default_rng(seed)
    shape = (2, 3, C) if kind == "matmul3d" else (3, C)
    b = ModelBuilder((["B", "T", C] if kind == "matmul3d" else ["N", C]) if symbolic else shape)
    W, bb = rand_dense(rng, C, C, bias)
    h = b.gemm(b.x, W, bb, transB=int(rng.integers(2))) if kind == "gemm" else b.matmul(b.x, W, bb)
    m = b.model(b.op("Add", [h, b.x] if layer_first else [b.x, h]))
    r = check_lossless(m, feeds_for(m, shape))
    if kind == "matmul3d":
        assert op_counts(r.model) == ({"MatMul": 1, "Add": 1} if bias else {"MatMul": 1})
    else:
        assert n_nodes(r.model) == 1 and n_nodes(r.model, "Gemm", "MatMul") == 1


@EXAMPLES
@given(parallel_convs())
def test_parallel_convs(case):
    """conv_a(x) + conv_b(x) (equal strides, consistent pads, any groups/dilations): one conv with
    the kernels added, unless the merged kernel costs more MACs than the two branches."""
    A, B, shape = case
    b = ModelBuilder(shape)
    m = b.model(b.add(b.conv(b.x, A), b.conv(b.x, B)))
    r = check_lossless(m)
    expect = add_parallel(A, B).weight.size <= A.weight.size + B.weight.size
    event(f"merged={expect}")
    if expect:
        assert op_counts(r.model) == {"Conv": 1}
    else:
        assert op_counts(r.model) == {"Conv": 2, "Add": 1}
        assert refusals(r, "merge_linear")


@EXAMPLES
@given(seeds, st.sampled_from(["2d", "3d"]), st.integers(1, 6), st.integers(1, 6), st.booleans(), st.booleans())
def test_parallel_dense(seed, kind, C, O, bias_a, bias_b):
    """A(x) + B(x) for two dense layers of one shape -> one layer with W_a + W_b, b_a + b_b."""
    rng = np.random.default_rng(seed)
    shape = (2, C) if kind == "2d" else (2, 3, C)
    b = ModelBuilder(shape)
    (Wa, ba), (Wb, bb) = rand_dense(rng, C, O, bias_a), rand_dense(rng, C, O, bias_b)
    if kind == "2d":
        ha, hb = b.gemm(b.x, Wa, ba), b.matmul(b.x, Wb, bb)
    else:
        ha, hb = b.matmul(b.x, Wa, ba), b.matmul(b.x, Wb, bb)
    r = check_lossless(b.model(b.add(ha, hb)))
    assert n_nodes(r.model, "Gemm", "MatMul") == 1
    assert n_nodes(r.model) == (1 if kind == "2d" or not (bias_a or bias_b) else 2)


# --------------------------------------------------------------------------- random networks
BLOCKS = [
    "conv", "conv1x1", "bn", "prelu1", "leaky1", "relu", "relu_relu", "clip_after_relu", "residual",
    "residual_bn", "parallel", "pad_conv", "identity", "dropout", "sigmoid_relu",
]


@EXAMPLES
@given(seeds, st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=6), st.integers(1, 5), st.booleans())
def test_random_networks(seed, blocks, C, dynamic):
    """Random sequences of linear layers, BN, exactly-linear activations (PRelu/LeakyRelu slope 1,
    Relu after Relu, Clip(0, 6) after Relu6, Relu after Sigmoid), real activations, residual and
    parallel branches, zero Pad, Identity and Dropout: the lossless pipeline changes no output and
    removes every exactly-linear activation."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 3)), C, int(rng.integers(3, 8)), int(rng.integers(3, 8)))
    b = ModelBuilder(["N", C, "H", "W"] if dynamic else shape)
    h = b.x

    def same_conv(k, bias=True):
        return rand_conv(rng, C, C, (k, k), int(rng.choice([1, C])), pads=[k // 2] * 4, bias=bias)

    for blk in blocks:
        if blk == "conv":
            h = b.conv(h, same_conv(int(rng.choice([1, 3]))))
        elif blk == "conv1x1":
            h = b.conv(h, same_conv(1, bool(rng.integers(2))))
        elif blk == "bn":
            h = b.bn(h, rand_bn(rng, C))
        elif blk == "prelu1":
            h = b.op("PRelu", [h, b.const(np.ones((C, 1, 1)))])
        elif blk == "leaky1":
            h = b.op("LeakyRelu", [h], alpha=1.0)
        elif blk == "relu":
            h = b.op("Relu", [h])
        elif blk == "relu_relu":
            h = b.op("Relu", [b.op("Relu", [h])])
        elif blk == "clip_after_relu":
            h = b.op("Clip", [b.op("Relu", [h]), b.const(0.0), b.const(6.0)])
            h = b.op("Clip", [h, b.const(0.0), b.const(6.0)])
        elif blk == "sigmoid_relu":
            h = b.op("Relu", [b.op("Sigmoid", [h])])
        elif blk == "residual":
            h = b.add(h, b.conv(h, same_conv(int(rng.choice([1, 3])))))
        elif blk == "residual_bn":
            h = b.add(b.bn(b.conv(h, same_conv(3, False)), rand_bn(rng, C)), h)
        elif blk == "parallel":
            h = b.add(b.conv(h, same_conv(3)), b.conv(h, same_conv(1)))
        elif blk == "pad_conv":
            pads = b.int_const([0, 0, 1, 1, 0, 0, 1, 1])
            h = b.conv(b.op("Pad", [h, pads]), rand_conv(rng, C, C, (3, 3), bias=True))
        elif blk == "identity":
            h = b.op("Identity", [h])
        elif blk == "dropout":
            h = b.op("Dropout", [h])
    m = b.model(h)
    r = check_lossless(m, feeds_for(m, shape))
    ops = op_counts(r.model)
    event(f"nodes {r.report.before.nodes} -> {r.report.after.nodes}")
    passthrough = ("PRelu", "LeakyRelu", "Identity", "Dropout")
    if all(blk in ("prelu1", "leaky1", "identity", "dropout") for blk in blocks):
        # x -> identity-like -> y: one node must stay to produce the graph output
        assert n_nodes(r.model) == 1
    else:
        assert sum(ops[o] for o in passthrough) == 0, ops
    assert ops["Pad"] == 0
    assert ops["Clip"] <= blocks.count("clip_after_relu")  # the second Clip(0, 6) always goes
    assert ops["Relu"] <= blocks.count("relu") + blocks.count("relu_relu") + blocks.count("clip_after_relu")
