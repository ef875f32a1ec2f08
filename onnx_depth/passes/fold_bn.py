"""fold_bn: fold inference BatchNormalization into a neighbouring linear layer.

BN(x) = s*x + t per channel (axis 1), s = gamma / sqrt(var + eps), t = beta - mean*s, with the
node's own epsilon. The math lives in onnx_depth.kernels.bn_fold:
* after Conv (any groups), ConvTranspose, Gemm (transA 0), MatMul with a constant 2-D weight
  on 2-D activations: scale the output channels of the weight, b' = s*b + t;
* before Conv: scale the input channels, b' = b + sum W*t — exact without padding, and with
  padding exact after adding a constant border map (needs a static input shape);
* before Gemm/MatMul on 2-D activations: W' = diag(s) W, b' = t W + b;
* a BN with nothing to fold into is kept (one BatchNormalization node is one pass over the
  tensor, Mul + Add would be two nodes and two passes) and recorded in ``refused``; with
  ``PassContext.bn_to_mul_add`` it becomes x * s + t with s, t of shape [C, 1, ..., 1]
  (rank - 2 ones; needs the input rank). Exact.
* tied weights: a Conv weight W (and bias) shared by several Convs (a module applied several
  times) is folded only when every user is a Conv followed by the same BN (equal parameters):
  then W' = W*s, b' = s*b + t is the same rewrite for all, W and b are rewritten once and every
  Conv reads the new tensors (the parameter count does not grow). Folded weights must be finite
  in float32 and within its safe range (kernels.float32_range).
Refused (left untouched, with the reason): non-constant weights, shared weights whose users
need different rewrites, an intermediate
tensor that is a graph output or has other consumers, BN in training mode, non-float32 tensors,
BN before a padded conv on an input without a static spatial shape.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..ir.patterns import constant_blocker, intermediate_blocker, is_op, sole_consumer
from ..kernels import (
    affine_after_bn,
    affine_before_bn,
    float32_blocker,
    fold_bn_after_conv,
    fold_bn_after_conv_transpose,
    fold_bn_before_conv,
)
from ..kernels.dense_compose import affine_from_bn
from .base import PassContext, PassResult
from .layer_io import BN, conv_node, dense_nodes, rank_of, read_bn, read_conv, read_dense, spatial_shape


def fold_bn(graph: Graph, ctx: PassContext | None = None) -> PassResult:
    ctx = ctx or PassContext()
    res = PassResult("fold_bn")
    for node in graph.topological_order():
        if node.id not in graph.nx or not is_op(node, "BatchNormalization"):
            continue
        bn, why = read_bn(graph, node)
        if bn is None:
            res.refuse(why)
            continue
        reasons: list[str] = []
        done = _fold_after(graph, node, bn, reasons) or _fold_before(graph, node, bn, reasons)
        if done:
            tied = f" and {int(done) - 1} more into one tied weight (rewritten once)" if int(done) > 1 else ""
            res.details.append(f"folded {node.label}{tied}")
            res.changed += int(done)
            continue
        why = "; ".join(reasons or ["no linear neighbour to fold into"])
        if not ctx.bn_to_mul_add:
            res.refuse(f"{node.label}: kept as BatchNormalization ({why})")
            continue
        rank = rank_of(graph, node.inputs[0])
        if rank is None or rank < 2:
            res.refuse(f"{node.label}: not folded ({why}) and its input rank is unknown, so no Mul+Add")
            continue
        _to_mul_add(graph, node, bn, rank)
        res.details.append(f"{node.label} -> Mul+Add ({why})")
        res.changed += 1
    return res


def _fold_after(graph: Graph, bnode: Node, bn: BN, reasons: list[str]) -> int:
    x = bnode.inputs[0]
    prod = graph.producer(x)
    if not is_op(prod, "Conv", "ConvTranspose", "Gemm", "MatMul"):
        return False
    why = intermediate_blocker(graph, x)
    if why:
        reasons.append(why)
        return False
    y = bnode.outputs[0]
    try:
        if prod.op_type == "Conv":
            spec, why = read_conv(graph, prod)
            if spec is None and "shared" in (why or ""):
                return _fold_after_tied_conv(graph, prod, bn, reasons, why)
            if spec is None:
                reasons.append(why)
                return False
            folded = fold_bn_after_conv(spec, bn.scale, bn.bias, bn.mean, bn.var, bn.eps)
            if _unsafe(reasons, bnode, folded.weight, folded.bias):
                return False
            new = [conv_node(graph, folded, prod.inputs[0], y, prod.name or "conv")]
        elif prod.op_type == "ConvTranspose":
            spec, why = _conv_transpose_weights(graph, prod)
            if spec is None:
                reasons.append(why)
                return False
            w, b = fold_bn_after_conv_transpose(spec[0], spec[1], prod.attr("group", 1), bn.scale, bn.bias, bn.mean, bn.var, bn.eps)
            if _unsafe(reasons, bnode, w, b):
                return False
            ct = Node("ConvTranspose", [prod.inputs[0], graph.add_const(w, (prod.name or "convT") + ".weight"), graph.add_const(b, (prod.name or "convT") + ".bias")], [y], name=graph.fresh_name(prod.name or "convT"), attributes=dict(prod.attributes))
            new = [ct]
        else:
            d, why = read_dense(graph, prod)
            if d is None:
                reasons.append(why)
                return False
            if d.y != x or len(graph.shape(x) or ()) != 2:
                reasons.append(f"{bnode.label}: BN after {prod.label} on activations that are not 2-D [N, C]")
                return False
            W, b = affine_after_bn(d.W, d.b, bn.scale, bn.bias, bn.mean, bn.var, bn.eps)
            if _unsafe(reasons, bnode, W, b):
                return False
            new = dense_nodes(graph, W, b, d.x, y, prod.name or "gemm")
    except ValueError as e:
        reasons.append(f"{bnode.label}: {e}")
        return False
    graph.replace_chain([prod, bnode], new)
    return True


def _same_bn(a: BN, b: BN) -> bool:
    return a.eps == b.eps and all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("scale", "bias", "mean", "var"))


def _fold_after_tied_conv(graph: Graph, prod: Node, bn: BN, reasons: list[str], why: str) -> int:
    """A weight W (and bias B) shared by several Convs, each followed by the same BN (a module
    applied several times): W' = W*s, B' = s*B + t is the same rewrite for every user, so W and B
    are rewritten once and every Conv reads W', B' (no copy: the parameter count does not grow).
    Otherwise nothing changes and `reasons` says why."""
    w = prod.inputs[1]
    b = prod.inputs[2] if len(prod.inputs) > 2 and prod.inputs[2] else None
    users = graph.consumers(w)
    pairs: list[tuple[Node, Node]] = []
    for u in users:
        ub = u.inputs[2] if len(u.inputs) > 2 and u.inputs[2] else None
        nxt = sole_consumer(graph, u.outputs[0]) if is_op(u, "Conv") else None
        other = read_bn(graph, nxt)[0] if is_op(nxt, "BatchNormalization") and nxt.inputs[0] == u.outputs[0] else None
        if not is_op(u, "Conv") or u.inputs[1] != w or ub != b or other is None or not _same_bn(bn, other):
            reasons.append(f"{why}; its users are not all Convs followed by the same BatchNormalization, "
                           "so the weight cannot be rewritten once for all of them")
            return False
        pairs.append((u, nxt))
    if graph.uses(w) != len(users) or (b is not None and graph.uses(b) != len(users)):
        reasons.append(f"{why}; it is also read elsewhere")
        return False
    spec, why2 = read_conv(graph, prod, exclusive=False)
    if spec is None:
        reasons.append(why2)
        return False
    folded = fold_bn_after_conv(spec, bn.scale, bn.bias, bn.mean, bn.var, bn.eps)
    if _unsafe(reasons, pairs[0][1], folded.weight, folded.bias):
        return False
    wn = graph.add_const(np.asarray(folded.weight, np.float32), w + ".bn_folded")
    bname = graph.add_const(np.asarray(folded.bias, np.float32), (b or w) + ".bn_folded_bias")
    for u, bnode in pairs:
        new = Node("Conv", [u.inputs[0], wn, bname], [bnode.outputs[0]], name=graph.fresh_name(u.name or "conv"),
                   domain=u.domain, attributes=dict(u.attributes))
        graph.replace_chain([u, bnode], [new])
    return len(pairs)


def _unsafe(reasons: list[str], bnode: Node, *arrays) -> bool:
    why = float32_blocker(*arrays, what="folded weights")
    if why:
        reasons.append(f"{bnode.label}: {why}")
    return why is not None


def _grows(reasons: list[str], bnode: Node, cons: Node, bn: BN, old_bias, new_bias) -> bool:
    """Folding a BN into the layer AFTER it gives that layer a bias of its output width, and the
    BN's 4 x C statistics go: when the new bias is larger (a bias-free layer with more than
    4 x C outputs), the fold would add parameters, which a lossless rewrite never does."""
    added = (0 if new_bias is None else int(np.size(new_bias))) - (0 if old_bias is None else int(np.size(old_bias)))
    removed = 4 * int(np.size(bn.scale))
    if added > removed:
        reasons.append(f"{bnode.label}: folding into {cons.label} would add parameters (a bias of {added} for "
                       f"{removed} BatchNorm statistics)")
        return True
    return False


def _conv_transpose_weights(graph: Graph, node: Node):
    for slot in (1, 2):
        why = constant_blocker(graph, node, slot)
        if why:
            return None, why
        if slot < len(node.inputs) and node.inputs[slot] and graph.const(node.inputs[slot]).dtype != np.float32:
            return None, f"{node.label}: only float32 layers are rewritten"
    w = graph.const(node.inputs[1])
    b = graph.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    return (w, b), None


def _fold_before(graph: Graph, bnode: Node, bn: BN, reasons: list[str]) -> bool:
    y = bnode.outputs[0]
    cons = sole_consumer(graph, y)
    if cons is None:
        if graph.consumers(y):
            why = intermediate_blocker(graph, y)
            if why and is_op(graph.consumers(y)[0], "Conv", "Gemm", "MatMul"):
                reasons.append(why)
        return False
    x = bnode.inputs[0]
    try:
        if is_op(cons, "Conv") and cons.inputs[0] == y:
            spec, why = read_conv(graph, cons)
            if spec is None:
                reasons.append(why)
                return False
            sp = spatial_shape(graph, x)
            r = fold_bn_before_conv(spec, bn.scale, bn.bias, bn.mean, bn.var, bn.eps, input_spatial_shape=sp)
            if not r.exact and r.correction is None:
                reasons.append(f"{bnode.label}: BN before padded {cons.label} needs a static spatial input shape for its border correction")
                return False
            if _unsafe(reasons, bnode, r.spec.weight, r.spec.bias, r.correction):
                return False
            if _grows(reasons, bnode, cons, bn, spec.bias, r.spec.bias):
                return False
            out = cons.outputs[0]
            if r.correction is None:
                new = [conv_node(graph, r.spec, x, out, cons.name or "conv")]
            else:
                mid = graph.fresh_name(out + ".uncorrected")
                corr = graph.add_const(r.correction[None].astype(np.float32), (cons.name or "conv") + ".border")
                new = [conv_node(graph, r.spec, x, mid, cons.name or "conv"), Node("Add", [mid, corr], [out], name=graph.fresh_name((cons.name or "conv") + ".border_add"))]
                graph.set_shape(mid, graph.elem_type(out) or 1, graph.shape(out))
            graph.replace_chain([bnode, cons], new)
            return True
        if is_op(cons, "Gemm", "MatMul") and cons.inputs[0] == y and len(graph.shape(x) or ()) == 2:
            d, why = read_dense(graph, cons)
            if d is None:
                reasons.append(why)
                return False
            W, b = affine_before_bn(d.W, d.b, bn.scale, bn.bias, bn.mean, bn.var, bn.eps)
            if _unsafe(reasons, bnode, W, b):
                return False
            if _grows(reasons, bnode, cons, bn, d.b, b):
                return False
            new = dense_nodes(graph, W, b, x, d.y, cons.name or "gemm")
            graph.replace_chain([bnode, *d.nodes], new)
            return True
    except ValueError as e:
        reasons.append(f"{bnode.label}: {e}")
    return False


def _to_mul_add(graph: Graph, bnode: Node, bn: BN, rank: int) -> None:
    """BN(x) = x * s + t with s, t shaped [C, 1, ..., 1] (rank - 2 ones): they broadcast against
    [N, C, *spatial] on axis 1 (rank 2: [C] aligns with the last axis, which is C)."""
    s, t = affine_from_bn(bn.scale, bn.bias, bn.mean, bn.var, bn.eps)
    shape = (-1,) + (1,) * (rank - 2)
    base = bnode.name or "bn"
    sn = graph.add_const(s.reshape(shape).astype(np.float32), base + ".scale")
    tn = graph.add_const(t.reshape(shape).astype(np.float32), base + ".shift")
    mid = graph.fresh_name(base + ".scaled")
    y = bnode.outputs[0]
    if graph.shape(y) is not None:
        graph.set_shape(mid, graph.elem_type(y) or 1, graph.shape(y))
    graph.replace_chain([bnode], [Node("Mul", [bnode.inputs[0], sn], [mid], name=graph.fresh_name(base + ".mul")), Node("Add", [mid, tn], [y], name=graph.fresh_name(base + ".add"))])
