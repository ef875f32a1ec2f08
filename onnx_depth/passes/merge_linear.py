"""merge_linear: merge linear layers with nothing nonlinear between them.

* Conv∘Conv (any kernel, stride, dilation, groups, bias): one conv with extent
  K = d1(k1-1) + s1 d2(k2-1) + 1 and stride s1 s2 (onnx_depth.kernels.conv_compose). Padding by
  the exactness tiers: EXACT merges; CORRECTABLE (the ring error depends only on b1) merges with
  a constant border map added after the conv; INEXACT (k x k padded then k x k padded) is never
  merged in lossless mode.
* Dense chains (Gemm, MatMul with constant 2-D weight, each with its bias):
  (x W1 + b1) W2 + b2 = x (W1 W2) + (b1 W2 + b2)  (LayerCollapse's W2·W1; a BN between was
  already folded by fold_bn).
* Residual: x + L(x) with L one Conv (stride 1, C_in == C_out, size-preserving) or one square
  dense layer -> L' with the identity added (centre tap / diagonal).
* Parallel branches summed over the same input: Conv_a(x) + Conv_b(x) -> one conv with the
  kernels added (the smaller padded to the larger), dense likewise.
When to merge: only when the merged operator has no more MACs than what it replaces
(ctx.require_fewer_macs), so lossless mode never makes a model bigger on paper.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..ir.patterns import intermediate_blocker, is_op, sole_consumer
from ..kernels import ConvSpec, Tier, add_identity, add_parallel, exactness, merge
from .base import PassContext, PassResult
from .layer_io import Dense, conv_node, dense_ending_at, dense_nodes, read_conv, read_dense


def merge_linear(graph: Graph, ctx: PassContext | None = None) -> PassResult:
    ctx = ctx or PassContext()
    res = PassResult("merge_linear")
    for node in graph.topological_order():
        if node.id not in graph.nx:
            continue
        if is_op(node, "Conv"):
            _conv_chain(graph, node, ctx, res)
        elif is_op(node, "Gemm", "MatMul"):
            _dense_chain(graph, node, ctx, res)
        elif is_op(node, "Add"):
            _residual_or_parallel(graph, node, ctx, res)
    return res


# ------------------------------------------------------------------ Conv∘Conv
def _conv_chain(graph: Graph, c1n: Node, ctx: PassContext, res: PassResult) -> None:
    mid = c1n.outputs[0]
    c2n = graph.consumers(mid)[0] if len(graph.consumers(mid)) == 1 else None
    if not is_op(c2n, "Conv") or c2n.inputs[0] != mid:
        return
    why = intermediate_blocker(graph, mid)
    if why:
        return res.refuse(f"{c1n.label} -> {c2n.label}: {why}")
    c1, why1 = read_conv(graph, c1n)
    c2, why2 = read_conv(graph, c2n)
    if c1 is None or c2 is None:
        return res.refuse(f"{c1n.label} -> {c2n.label}: {why1 or why2}")
    x = graph.static_shape(c1n.inputs[0])
    if x is None:
        return res.refuse(f"{c1n.label} -> {c2n.label}: input {c1n.inputs[0]!r} has no static shape")
    try:
        tier = exactness(c1, c2, x[2:])
        if tier == Tier.INEXACT and ctx.lossless:
            return res.refuse(f"{c1n.label} -> {c2n.label}: padded kxk then padded kxk is border-inexact (lossy mode only)")
        m = merge(c1, c2, x[2:], allow_inexact=not ctx.lossless)
    except ValueError as e:
        return res.refuse(f"{c1n.label} -> {c2n.label}: {e}")
    before = c1.macs(x[2:], x[0]) + c2.macs(c1.output_spatial_shape(x[2:]), x[0])
    after = m.spec.macs(x[2:], x[0])
    if ctx.require_fewer_macs and after > before:
        return res.refuse(f"{c1n.label} -> {c2n.label}: merged kernel {m.spec.kernel_shape} costs {after} MACs > {before}")
    out = c2n.outputs[0]
    name = c2n.name or c1n.name or "conv"
    if m.correction is None:
        new = [conv_node(graph, m.spec, c1n.inputs[0], out, name)]
    else:
        pre = graph.fresh_name(out + ".uncorrected")
        corr = graph.add_const(m.correction[None].astype(np.float32), name + ".border")
        new = [conv_node(graph, m.spec, c1n.inputs[0], pre, name), Node("Add", [pre, corr], [out], name=graph.fresh_name(name + ".border_add"))]
        graph.set_shape(pre, graph.elem_type(out) or 1, graph.shape(out))
    graph.replace_chain([c1n, c2n], new)
    res.changed += 1
    res.details.append(f"merged {c1n.label} + {c2n.label} -> kernel {m.spec.kernel_shape}, {tier.name}, MACs {before} -> {after}")


# ------------------------------------------------------------------ dense chains
def _rows(graph: Graph, x: str) -> int | None:
    s = graph.static_shape(x)
    return None if s is None else int(np.prod(s[:-1], dtype=np.int64))


def _dense_chain(graph: Graph, n1: Node, ctx: PassContext, res: PassResult) -> None:
    d1, _ = read_dense(graph, n1)
    if d1 is None:
        return
    cons = graph.consumers(d1.y)
    if len(cons) != 1 or not is_op(cons[0], "Gemm", "MatMul") or cons[0].inputs[0] != d1.y:
        return
    why = intermediate_blocker(graph, d1.y)
    if why:
        return res.refuse(f"{n1.label} -> {cons[0].label}: {why}")
    d2, why = read_dense(graph, cons[0])
    if d2 is None:
        return res.refuse(f"{n1.label} -> {cons[0].label}: {why}")
    rows = _rows(graph, d1.x)
    if rows is None:
        return res.refuse(f"{n1.label} -> {cons[0].label}: input {d1.x!r} has no static shape")
    W = d1.W @ d2.W
    b = None
    if d1.b is not None or d2.b is not None:
        b = (np.zeros(d1.W.shape[1]) if d1.b is None else d1.b) @ d2.W + (0 if d2.b is None else d2.b)
    before = rows * (d1.W.size + d2.W.size)
    after = rows * W.size
    if ctx.require_fewer_macs and after > before:
        return res.refuse(f"{n1.label} -> {cons[0].label}: merged {W.shape} costs {after} MACs > {before}")
    new = dense_nodes(graph, W, b, d1.x, d2.y, cons[0].name or n1.name or "dense")
    graph.replace_chain([*d1.nodes, *d2.nodes], new)
    res.changed += 1
    res.details.append(f"merged {n1.label} + {cons[0].label} -> {W.shape[0]}x{W.shape[1]}, MACs {before} -> {after}")


# ------------------------------------------------------------------ residual / parallel
def _residual_or_parallel(graph: Graph, add: Node, ctx: PassContext, res: PassResult) -> None:
    if len(add.inputs) != 2 or graph.shape(add.inputs[0]) != graph.shape(add.inputs[1]) or graph.static_shape(add.outputs[0]) is None:
        return
    a, b = add.inputs
    la, lb = _layer_ending_at(graph, a), _layer_ending_at(graph, b)
    for x, layer, t in ((a, lb, b), (b, la, a)):
        if layer is not None and layer[0] == x and sole_consumer(graph, t) is add:
            return _residual(graph, add, x, layer, res)
    if la is not None and lb is not None and la[0] == lb[0] and la[1] is not lb[1]:
        if sole_consumer(graph, a) is add and sole_consumer(graph, b) is add:
            _parallel(graph, add, la, lb, ctx, res)


def _layer_ending_at(graph: Graph, t: str):
    """(input tensor, ConvSpec | Dense, nodes, label) of the linear layer producing t, or None."""
    p = graph.producer(t)
    if is_op(p, "Conv"):
        spec, _ = read_conv(graph, p)
        return None if spec is None else (p.inputs[0], spec, [p], p.label)
    d, _ = dense_ending_at(graph, t)
    if d is None or any(graph.is_graph_output(n.outputs[0]) for n in d.nodes[:-1]):
        return None
    return (d.x, d, d.nodes, d.nodes[0].label)


def _residual(graph: Graph, add: Node, x: str, layer, res: PassResult) -> None:
    _, L, nodes, name = layer
    label = f"{add.label} (x + {name})"
    try:
        if isinstance(L, ConvSpec):
            new = [conv_node(graph, add_identity(L), x, add.outputs[0], nodes[0].name or "conv")]
        else:
            if L.W.shape[0] != L.W.shape[1]:
                return res.refuse(f"{label}: dense layer is not square")
            new = dense_nodes(graph, L.W + np.eye(L.W.shape[0]), L.b, x, add.outputs[0], nodes[0].name or "dense")
    except ValueError as e:
        return res.refuse(f"{label}: {e}")
    graph.replace_chain([*nodes, add], new)
    res.changed += 1
    res.details.append(f"fused residual {label}")


def _parallel(graph: Graph, add: Node, la, lb, ctx: PassContext, res: PassResult) -> None:
    x, A, na, name_a = la
    _, B, nb, name_b = lb
    label = f"{add.label} ({name_a} + {name_b})"
    try:
        if isinstance(A, ConvSpec) and isinstance(B, ConvSpec):
            shape = graph.static_shape(x)
            merged = add_parallel(A, B)
            if shape is not None and ctx.require_fewer_macs and merged.macs(shape[2:], shape[0]) > A.macs(shape[2:], shape[0]) + B.macs(shape[2:], shape[0]):
                return res.refuse(f"{label}: merged branch costs more MACs")
            new = [conv_node(graph, merged, x, add.outputs[0], na[0].name or "conv")]
        elif isinstance(A, Dense) and isinstance(B, Dense) and A.W.shape == B.W.shape:
            bias = None if A.b is None and B.b is None else (0 if A.b is None else A.b) + (0 if B.b is None else B.b)
            new = dense_nodes(graph, A.W + B.W, bias, x, add.outputs[0], na[0].name or "dense")
        else:
            return
    except ValueError as e:
        return res.refuse(f"{label}: {e}")
    graph.replace_chain([*na, *nb, add], new)
    res.changed += 1
    res.details.append(f"fused parallel branches {label}")
