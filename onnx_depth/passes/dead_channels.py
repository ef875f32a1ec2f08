"""dead_channels: width pruning of channels an activation always turns off.

A channel c whose activation output is a constant v_c (OFF: Relu of a pre-activation that is
always <= 0 gives 0; Clip's lower/upper bound; a PReLU channel with slope 0 that is always
negative) carries no information. Delete it:

    producer (Conv group 1 / Gemm / MatMul, optionally + BatchNormalization) -> activation
      -> channel-wise ops (MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Identity,
         Dropout)
      -> consumers: Conv (group 1), Gemm/MatMul on [N, C], or Flatten/Reshape to [N, C*H*W]
         followed by Gemm/MatMul

* the producer loses output channel c (weight row, bias, BN parameters, PReLU slope);
* every consumer loses input slice c (Flatten/Reshape: the rows c*H*W .. (c+1)*H*W - 1), and
  when v_c != 0 its bias absorbs v_c * sum(W2[:, c]) — only where that is exact (dense, or a
  Conv without padding; AveragePool with padding is refused for v_c != 0).

The rewrite is exact when the OFF decision is exact (Decision.exact, e.g. a data-free proof:
zero weights, gamma == 0 BN), and lossy by the decision's tolerance otherwise (e.g. calibration
data saw no positive value). Other topologies (grouped/depthwise producers or consumers, the
pre-activation read elsewhere, residual Adds, Concat, graph outputs) are refused with a reason.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..analysis.activations import ActivationSite, find_activations
from ..analysis.criteria import constant_channels, exact_criterion
from ..ir import Graph, Node
from ..ir.patterns import const_or_none, is_op
from ..kernels import ConvSpec
from .base import PassContext, PassResult
from .layer_io import conv_node, dense_nodes, read_conv, read_dense, unit_ending_at

__all__ = ["prune_dead_channels"]

_CHANNELWISE = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Identity", "Dropout")


def prune_dead_channels(
    graph: Graph,
    ctx: PassContext | None = None,
    *,
    decisions: Mapping[str, object] | None = None,
    exact_only: bool = False,
    min_keep: int = 1,
    record: dict | None = None,
) -> PassResult:
    """Prune the constant (OFF/SAT) channels of every activation with a decision.

    decisions: {site name: Decision}; None: data-free proven decisions only
    (analysis.criteria.exact_criterion). exact_only: ignore non-exact states. ctx.lossless
    implies exact_only. At least `min_keep` channels are kept per layer.
    record: filled with {site name: indices of the kept channels} for every pruned site."""
    ctx = ctx or PassContext()
    exact_only = exact_only or ctx.lossless
    res = PassResult("dead_channels")
    for site in find_activations(graph):
        if site.nodes[0].id not in graph.nx:
            continue
        dec = exact_criterion(graph, site) if decisions is None else decisions.get(site.name)
        if dec is None:
            continue
        const = constant_channels(site, dec, exact_only=exact_only)
        if not const:
            continue
        if dec.channels - len(const) < min_keep:
            for c in sorted(const)[: min_keep - (dec.channels - len(const))]:
                del const[c]
            if not const:
                continue
        why = _prune(graph, site, const)
        if why:
            res.refuse(f"{site.label}: {len(const)} constant channel(s) not pruned: {why}")
            continue
        res.changed += 1
        if record is not None:
            record[site.name] = np.array([c for c in range(dec.channels) if c not in const])
        n0 = sum(1 for v in const.values() if v == 0)
        ex = sum(1 for c in const if dec.exact[c])
        res.details.append(f"{site.label}: pruned {len(const)} of {dec.channels} channels ({n0} zero, {len(const) - n0} constant; {ex} proven exact)")
    return res


# ------------------------------------------------------------------------------- the rewrite
def _only_consumers(graph: Graph, t: str, allowed: set[int]) -> bool:
    return not graph.is_graph_output(t) and all(c.id in allowed for c in graph.consumers(t))


def _prune(graph: Graph, site: ActivationSite, const: dict[int, float]) -> str | None:
    """Rewrite, or return the reason it cannot be done (graph untouched then)."""
    if site.channel_axis != 1:
        return "channel axis is not 1"
    inside = {n.id for n in site.nodes}
    x = site.input
    if not _only_consumers(graph, x, inside):
        return f"pre-activation {x!r} is read outside the activation"
    # producer: a layer unit (analysis.layer_unit: Conv / Gemm / MatMul [+ bias Add] [+ BN])
    unit, why = unit_ending_at(graph, x)
    if unit is None:
        p = graph.producer(x)
        return why or f"producer {p.label if p else x!r} is not a Conv/Gemm/MatMul"
    bn_node, add_node, p, prod_kind = unit.bn_node, unit.bias_add, unit.node, unit.kind
    if bn_node is not None and any(graph.uses(bn_node.inputs[slot]) > 1 for slot in range(1, 5)):
        return "BatchNormalization parameters are shared"
    if add_node is not None and any(graph.uses(t) != 1 for t in add_node.inputs):
        return f"{add_node.label}: bias Add input is shared"
    if prod_kind == "conv" and unit.layer.group != 1:
        return f"producer {p.label} is a grouped conv (group {unit.layer.group})"
    if prod_kind == "dense" and len(graph.shape(unit.x) or ()) != 2:
        return f"producer {p.label} is not a 2-D dense layer ending at the activation"
    # channel-wise chain after the activation
    chain: list[Node] = []
    t = site.output
    while True:
        if graph.is_graph_output(t):
            return f"tensor {t!r} is a graph output"
        cons = graph.consumers(t)
        if len(cons) == 1 and is_op(cons[0], *_CHANNELWISE) and cons[0].inputs[0] == t:
            n = cons[0]
            if n.op_type == "AveragePool" and any(n.attr("pads", [0])) and any(v != 0 for v in const.values()):
                return f"{n.label}: padded AveragePool of a non-zero constant channel"
            if n.op_type == "Dropout" and len(n.outputs) > 1 and n.outputs[1] and graph.uses(n.outputs[1]):
                return f"{n.label}: Dropout mask is used"
            chain.append(n)
            t = n.outputs[0]
            continue
        break
    cons = graph.consumers(t)
    if not cons:
        return f"tensor {t!r} has no consumer"
    shape = graph.shape(t)
    plans = []
    for c in cons:
        plan, why = _consumer_plan(graph, c, t, shape, const)
        if plan is None:
            return why
        plans.append(plan)
    # ---- all checks passed: rewrite
    keep = np.array([c for c in range(unit.channels) if c not in const])
    C = keep.size + len(const)
    prod_nodes = _rewrite_producer(graph, p, prod_kind, bn_node, keep)
    if add_node is not None:  # the per-channel bias, narrowed: shape [k, 1, ..., 1] adds it on axis 1
        slot = 1 if graph.is_constant(add_node.inputs[1]) else 0
        rank = unit.layer.rank
        vec = unit.bias[keep].reshape(keep.size, *([1] * rank)).astype(np.float32)
        graph.set_input(add_node, slot, graph.add_const(vec, add_node.inputs[slot] + ".pruned"))
        _narrow_shape(graph, add_node.outputs[0], C, keep.size)
    for n in site.nodes:
        if n.op_type == "PRelu":
            slope = np.asarray(graph.const(n.inputs[1]))
            if slope.size > 1:
                flat = slope.reshape(-1)[keep]
                shp = list(slope.shape)
                shp[[i for i, d in enumerate(shp) if d > 1][0]] = keep.size
                graph.set_input(n, 1, graph.add_const(flat.reshape(shp).astype(slope.dtype), n.inputs[1] + ".pruned"))
    # shapes of the tensors along the chain
    produced = [o for nn in prod_nodes for o in nn.outputs if o]
    for tensor in [x, *produced, *(nn.outputs[0] for nn in site.nodes), *(nn.outputs[0] for nn in chain)] + ([bn_node.inputs[0]] if bn_node else []):
        _narrow_shape(graph, tensor, C, keep.size)
    for plan in plans:
        plan(keep, C)
    return None


def _narrow_shape(graph: Graph, tensor: str, C: int, k: int) -> None:
    shape = graph.shape(tensor)
    if shape is None or len(shape) < 2 or shape[1] != C:
        return
    graph.set_shape(tensor, graph.elem_type(tensor) or 1, [shape[0], k, *shape[2:]])


def _rewrite_producer(graph: Graph, p: Node, kind: str, bn_node: Node | None, keep: np.ndarray) -> None:
    if kind == "conv":
        spec, _ = read_conv(graph, p)
        new = ConvSpec(np.asarray(spec.weight)[keep], None if spec.bias is None else np.asarray(spec.bias)[keep], spec.strides, spec.dilations, spec.pads, 1)
        nodes = graph.replace_chain([p], [conv_node(graph, new, p.inputs[0], p.outputs[0], p.name or "conv")])
    else:
        d, _ = read_dense(graph, p)
        nodes = graph.replace_chain(d.nodes, dense_nodes(graph, d.W[:, keep], None if d.b is None else d.b[keep], d.x, d.y, d.nodes[0].name or "dense"))
    if bn_node is not None:
        for slot in range(1, 5):
            a = np.asarray(graph.const(bn_node.inputs[slot]))
            graph.set_input(bn_node, slot, graph.add_const(a[keep], bn_node.inputs[slot] + ".pruned"))
    return nodes


def _consumer_plan(graph: Graph, c: Node, t: str, shape, const: dict[int, float]):
    """A closure applying the consumer's slice, or (None, reason)."""
    nonzero = {k: v for k, v in const.items() if v != 0}
    if is_op(c, "Conv") and c.inputs[0] == t:
        spec, why = read_conv(graph, c)
        if spec is None:
            return None, why
        if spec.group != 1:
            return None, f"consumer {c.label} is a grouped conv (group {spec.group})"
        if nonzero and spec.has_padding:
            return None, f"consumer {c.label} pads: a non-zero constant channel is not constant on its border"

        def plan(keep, C, c=c, spec=spec):
            w = np.asarray(spec.weight, np.float64)
            b = spec.bias_or_zeros()
            for k, v in nonzero.items():
                b = b + v * w[:, k].reshape(w.shape[0], -1).sum(1)
            new = ConvSpec(w[:, keep].astype(np.float32), b.astype(np.float32) if (spec.bias is not None or nonzero) else None, spec.strides, spec.dilations, spec.pads, 1)
            graph.replace_chain([c], [conv_node(graph, new, t, c.outputs[0], c.name or "conv")])

        return plan, None
    if is_op(c, "Gemm", "MatMul") and c.inputs[0] == t:
        d, why = read_dense(graph, c)
        if d is None:
            return None, why
        if shape is not None and len(shape) != 2:
            return None, f"consumer {c.label} reads a rank-{len(shape)} tensor"

        def plan(keep, C, d=d):
            b = np.zeros(d.W.shape[1]) if d.b is None else d.b.copy()
            for k, v in nonzero.items():
                b = b + v * d.W[k]
            graph.replace_chain(d.nodes, dense_nodes(graph, d.W[keep], b if (d.b is not None or nonzero) else None, t, d.y, d.nodes[0].name or "dense"))

        return plan, None
    if is_op(c, "Flatten", "Reshape") and c.inputs[0] == t:
        if shape is None or len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            return None, f"{c.label}: input {t!r} has no static [C, H, W] shape"
        if is_op(c, "Flatten") and c.attr("axis", 1) != 1:
            return None, f"{c.label}: Flatten axis is not 1"
        out = graph.shape(c.outputs[0])
        hw = int(np.prod(shape[2:], dtype=np.int64))
        if out is None or len(out) != 2 or out[1] != shape[1] * hw:
            return None, f"{c.label}: does not flatten to [N, C*H*W]"
        if graph.is_graph_output(c.outputs[0]):
            return None, f"{c.label}: output is a graph output"
        nexts = graph.consumers(c.outputs[0])
        denses = []
        for g in nexts:
            if not is_op(g, "Gemm", "MatMul") or g.inputs[0] != c.outputs[0]:
                return None, f"{c.label} feeds {g.label}, not a dense layer"
            d, why = read_dense(graph, g)
            if d is None:
                return None, why
            denses.append(d)
        if is_op(c, "Reshape"):
            target = const_or_none(graph, c, 1)
            if target is None or target.size != 2:
                return None, f"{c.label}: reshape target is not a constant 2-D shape"

        def plan(keep, C, c=c, denses=denses, hw=hw, shape=shape):
            rows = (keep[:, None] * hw + np.arange(hw)[None, :]).reshape(-1)
            if is_op(c, "Reshape"):
                target = np.asarray(graph.const(c.inputs[1])).copy()
                target = np.where(target == C * hw, keep.size * hw, target)
                graph.set_input(c, 1, graph.add_const(target.astype(np.int64), c.inputs[1] + ".pruned"))
            graph.set_shape(c.outputs[0], graph.elem_type(c.outputs[0]) or 1, [shape[0], keep.size * hw])
            for d in denses:
                b = np.zeros(d.W.shape[1]) if d.b is None else d.b.copy()
                for k, v in nonzero.items():
                    b = b + v * d.W[k * hw:(k + 1) * hw].sum(0)
                graph.replace_chain(d.nodes, dense_nodes(graph, d.W[rows], b if (d.b is not None or nonzero) else None, c.outputs[0], d.y, d.nodes[0].name or "dense"))

        return plan, None
    return None, f"consumer {c.label} ({c.op_type}) is not a Conv/Gemm/MatMul/Flatten"
