"""linearize: replace an activation whose channels are all linear (per a Decision) by its
per-channel affine map, y = s_c x + t_c (ON: s=1, t=0; OFF: 0, 0 or the lower clip; SAT: 0 and
the upper clip; NEG: the Leaky/PReLU slope; LIN: HardSigmoid's middle piece).

The map goes, in order of preference:
* nowhere, when it is the identity on every channel (the activation is removed);
* into the producer: a Conv / Gemm / MatMul(+bias) whose output only the activation reads gets
  W'[c] = s_c W[c], b'_c = s_c b_c + t_c — exact, and leaves the linear layers adjacent so
  that merge_linear can merge them;
* into a Mul (and Add) by constants otherwise.

Decisions come from onnx_depth.analysis.criteria, keyed by the site name (the activation's
output tensor). A site with MIXED channels is refused unless it is forced (``force``: True or a
set of site names): then its MIXED channels take their dominant region ("naive linearization").
The pass is exact when every channel's state is exact (Decision.exact); otherwise it is lossy by
the decision's tolerance, and the caller measures the error (analysis.fidelity).
"""

from __future__ import annotations

from typing import Collection, Mapping

import numpy as np

from ..analysis.activations import ActivationSite, find_activations
from ..ir import Graph, Node
from ..ir.patterns import bypass
from .base import PassContext, PassResult
from ..kernels import scale_conv_outputs
from .layer_io import conv_node, dense_nodes, unit_ending_at

__all__ = ["linearize", "replace_with_affine"]


def linearize(
    graph: Graph,
    ctx: PassContext | None = None,
    *,
    decisions: Mapping[str, "object"],
    force: bool | Collection[str] = False,
    identity_mixed: bool = False,
    fold: bool = True,
) -> PassResult:
    """Linearize every site that has a decision and is all-linear (or forced)."""
    res = PassResult("linearize")
    for site in find_activations(graph):
        dec = decisions.get(site.name)
        if dec is None or any(n.id not in graph.nx for n in site.nodes):
            continue
        forced = force is True or (not isinstance(force, bool) and site.name in force)
        if not dec.all_linear and not forced:
            n = dec.channels - dec.linear_channels
            res.refuse(f"{site.label}: {n} of {dec.channels} channels are MIXED")
            continue
        try:
            s, t = dec.affine(site, force=forced, identity_mixed=identity_mixed and forced)
            how = replace_with_affine(graph, site, s, t, fold=fold)
        except ValueError as e:
            res.refuse(f"{site.label}: {e}")
            continue
        res.changed += 1
        counts = {k: v for k, v in dec.counts().items() if v}
        res.details.append(f"linearized {site.label} ({site.op}, {dec.criterion}: {counts}) -> {how}")
    return res


def _const_shape(graph: Graph, site: ActivationSite, C: int) -> tuple[int, ...]:
    shape = graph.shape(site.input)
    rank = len(shape) if shape is not None else 4
    axis = site.channel_axis if site.channel_axis >= 0 else rank + site.channel_axis
    return (C,) + (1,) * (rank - 1 - axis)


def replace_with_affine(graph: Graph, site: ActivationSite, s: np.ndarray, t: np.ndarray, *, fold: bool = True) -> str:
    """Replace the site's nodes by y = s_c x + t_c. Returns how ("removed", "folded into X",
    "Mul/Add"). Raises ValueError when the site cannot be rewritten."""
    s = np.asarray(s, np.float64).reshape(-1)
    t = np.asarray(t, np.float64).reshape(-1)
    if site.channels is not None and s.size != site.channels:
        raise ValueError(f"decision has {s.size} channels, the activation {site.channels}")
    x, y = site.input, site.output
    inside = {n.id for n in site.nodes}
    if np.all(s == 1) and np.all(t == 0):
        if graph.is_graph_output(y):
            if len(site.nodes) == 1 and bypass(graph, site.nodes[0]):
                return "removed (identity)"
            graph.replace_chain(site.nodes, [Node("Identity", [x], [y], name=graph.fresh_name(site.label + ".identity"))])
        else:
            for n in site.nodes:
                graph.remove_node(n)
            graph.replace_uses(y, x)
        return "removed (identity)"
    if fold:
        how = _fold_into_producer(graph, site, s, t, inside)
        if how:
            return how
    shape = _const_shape(graph, site, s.size)
    base = site.label
    sn = graph.add_const(s.reshape(shape).astype(np.float32), base + ".lin_scale")
    if np.all(t == 0):
        new = [Node("Mul", [x, sn], [y], name=graph.fresh_name(base + ".lin_mul"))]
    else:
        mid = graph.fresh_name(base + ".lin_scaled")
        tn = graph.add_const(t.reshape(shape).astype(np.float32), base + ".lin_shift")
        new = [Node("Mul", [x, sn], [mid], name=graph.fresh_name(base + ".lin_mul")), Node("Add", [mid, tn], [y], name=graph.fresh_name(base + ".lin_add"))]
        if graph.shape(y) is not None:
            graph.set_shape(mid, graph.elem_type(y) or 1, graph.shape(y))
    graph.replace_chain(site.nodes, new)
    return "Mul" if len(new) == 1 else "Mul+Add"


def _fold_into_producer(graph: Graph, site: ActivationSite, s: np.ndarray, t: np.ndarray, inside: set[int]) -> str | None:
    """Fold y = s x + t into the layer unit (analysis.layer_unit: Conv / Gemm / MatMul with its
    bias Add and BatchNormalization) whose output only the activation reads."""
    x = site.input
    if graph.is_graph_output(x) or any(c.id not in inside for c in graph.consumers(x)):
        return None
    unit, _ = unit_ending_at(graph, x)
    if unit is None or unit.channels != s.size:
        return None
    rank = len(graph.shape(x) or ())
    axis = site.channel_axis if site.channel_axis >= 0 else rank + site.channel_axis
    name = unit.node.name or unit.kind
    if unit.kind == "conv":
        if axis != 1:
            return None
        new = [conv_node(graph, scale_conv_outputs(unit.folded(), s, t), unit.x, site.output, name)]
    else:
        if rank and axis != rank - 1:
            return None
        W, b = unit.folded()
        new = dense_nodes(graph, W * s[None, :], s * (0.0 if b is None else b) + t, unit.x, site.output, name)
    graph.replace_chain([*unit.nodes, *site.nodes], new)
    return f"folded into {unit.node.label}"
