"""refit: force-linearize a MIXED activation between two linear layers, merge the layers, and
refit the merged operator by least squares on calibration data.

Segments (``find_segment``), with the activation A linearized to its per-channel affine map:

* conv:  Conv1 [+BN | +bias Add] -> A -> Conv2 [+BN | +bias Add]  =>  one Conv (kernels.compose;
  kernel d1(k1-1) + s1 d2(k2-1) + 1, groups gcd(g1, g2), border-inexact allowed);
* dense: Gemm/MatMul1 -> A -> one or more Gemm/MatMul heads  =>  one dense layer per head;
* conv-flatten: Conv1 -> A -> Transpose/Reshape/Flatten -> dense heads  =>  Flatten + one dense
  layer per head (the naive merged matrix is the chain's response to the identity basis).

The fit: the merged operator's weights (with bias) minimise, over the calibration set,

    || X W - Y ||^2 + lam || W - W0 ||^2

where X are its input rows (im2col patches of the segment input for a conv, with the merged
conv's geometry, per group; the flattened input for dense), Y the ORIGINAL network's output of
the segment (the last head tensor), W0 the naive merge, and lam = ridge * mean(diag X^T X). It is
solved in float64 from normal equations, (X^T X + lam I) W = X^T Y + lam W0, accumulated batch by
batch (memory: one batch of patches): the least-squares core is `kernels.lstsq`. An exactly linear segment is recovered exactly (W = W0 when
Y = X W0). Sequential mode (default) takes X from the network as already modified by earlier
refits (so later segments compensate earlier errors); otherwise every segment sees the original
network's inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Collection, Mapping, Sequence

import numpy as np
import onnx

from .. import ir
from ..analysis.activations import ActivationSite, find_activations
from ..analysis.calibration import as_calibration
from ..analysis.stats import DEFAULT_BUDGET, stream_tensors, with_outputs
from ..ir import Graph, Node
from ..ir.patterns import is_op
from ..kernels import ConvSpec, compose, exactness
from ..kernels.bn_fold import fold_bn_after_conv
from ..kernels.conv_reference import conv_apply
from ..kernels.lstsq import NormalEquations, OperatorFit, conv_rows, conv_to_w, w_to_conv
from .base import PassContext, PassResult
from .layer_io import Dense, conv_node, dense_nodes, read_bn, read_conv, read_dense

__all__ = ["OperatorFit", "Segment", "SegmentFit", "RefitResult", "find_segment", "find_segments", "refit", "segment_macs"]

_LAYOUT = ("Transpose", "Reshape", "Flatten")
MAX_DENSE_FEATURES = 16384


# ------------------------------------------------------------------------------- matching
@dataclass(eq=False)
class Head:
    nodes: list[Node]
    layer: ConvSpec | Dense
    y: str


@dataclass(eq=False)
class Segment:
    site: ActivationSite
    kind: str  # "conv" | "dense" | "conv_flatten"
    x: str
    l1_nodes: list[Node]
    l1: ConvSpec | Dense
    layout: list[Node]
    heads: list[Head]

    @property
    def nodes(self) -> list[Node]:
        return [*self.l1_nodes, *self.site.nodes, *self.layout, *(n for h in self.heads for n in h.nodes)]

    @property
    def outputs(self) -> list[str]:
        return [h.y for h in self.heads]


def _bias_add_const(graph: Graph, add: Node, t: str, C: int) -> np.ndarray | None:
    """The per-channel (axis 1) constant that `add` adds to tensor t, or None."""
    if not is_op(add, "Add") or len(add.inputs) != 2 or t not in add.inputs:
        return None
    other = add.inputs[1] if add.inputs[0] == t else add.inputs[0]
    if not graph.is_constant(other):
        return None
    b = np.asarray(graph.const(other), np.float64)
    if b.size != C or b.ndim < 1:
        return None
    shp = [d for d in b.shape]
    # [C], [C,1,1], [1,C,1,1], [1,C]
    nz = [i for i, d in enumerate(shp) if d != 1]
    if C > 1 and len(nz) != 1:
        return None
    return b.reshape(C)


def _conv_unit_ending_at(graph: Graph, t: str):
    """(ConvSpec with BN/bias folded, nodes, input tensor) of the conv unit producing t."""
    nodes: list[Node] = []
    p = graph.producer(t)
    post = None
    if is_op(p, "BatchNormalization"):
        bn, why = read_bn(graph, p)
        if bn is None:
            return None, why
        post = ("bn", bn)
        nodes.insert(0, p)
        t = p.inputs[0]
        if graph.uses(t) != 1 or graph.is_graph_output(t):
            return None, f"{p.label}: its input is read elsewhere"
        p = graph.producer(t)
    elif is_op(p, "Add"):
        for cand in p.inputs:
            q = graph.producer(cand)
            if is_op(q, "Conv") and graph.uses(cand) == 1 and not graph.is_graph_output(cand):
                w = graph.const(q.inputs[1]) if graph.is_constant(q.inputs[1]) else None
                if w is None:
                    break
                b = _bias_add_const(graph, p, cand, int(w.shape[0]))
                if b is not None:
                    post = ("bias", b)
                    nodes.insert(0, p)
                    t = cand
                    p = q
                break
    if not is_op(p, "Conv"):
        return None, None
    spec, why = read_conv(graph, p)
    if spec is None:
        return None, why
    if post is not None and post[0] == "bn":
        bn = post[1]
        spec = fold_bn_after_conv(spec, bn.scale, bn.bias, bn.mean, bn.var, bn.eps)
    elif post is not None:
        spec = ConvSpec(spec.weight, (spec.bias_or_zeros() + post[1]).astype(np.float32), spec.strides, spec.dilations, spec.pads, spec.group)
    nodes.insert(0, p)
    return (spec, nodes, p.inputs[0]), None


def _conv_unit_starting_at(graph: Graph, t: str):
    cons = graph.consumers(t)
    if len(cons) != 1 or graph.uses(t) != 1 or not is_op(cons[0], "Conv") or cons[0].inputs[0] != t:
        return None, f"activation output {t!r} does not feed exactly one Conv"
    c = cons[0]
    spec, why = read_conv(graph, c)
    if spec is None:
        return None, why
    nodes = [c]
    y = c.outputs[0]
    if not graph.is_graph_output(y) and graph.uses(y) == 1:
        (n,) = graph.consumers(y)
        if is_op(n, "BatchNormalization"):
            bn, _ = read_bn(graph, n)
            if bn is not None:
                spec = fold_bn_after_conv(spec, bn.scale, bn.bias, bn.mean, bn.var, bn.eps)
                nodes.append(n)
                y = n.outputs[0]
        else:
            b = _bias_add_const(graph, n, y, spec.out_channels)
            if b is not None:
                spec = ConvSpec(spec.weight, (spec.bias_or_zeros() + b).astype(np.float32), spec.strides, spec.dilations, spec.pads, spec.group)
                nodes.append(n)
                y = n.outputs[0]
    return Head(nodes, spec, y), None


def _dense_heads(graph: Graph, t: str):
    if graph.is_graph_output(t):
        return None, f"tensor {t!r} is a graph output"
    heads = []
    for c in graph.consumers(t):
        if not is_op(c, "Gemm", "MatMul") or c.inputs[0] != t:
            return None, f"{t!r} feeds {c.label} ({c.op_type}), not a dense layer"
        d, why = read_dense(graph, c)
        if d is None:
            return None, why
        heads.append(Head(list(d.nodes), d, d.y))
    if not heads:
        return None, f"{t!r} has no consumer"
    return heads, None


def _feeds(graph: Graph, t: str) -> str:
    cons = graph.consumers(t)
    names = [c.op_type for c in cons] + (["a graph output"] if graph.is_graph_output(t) else [])
    return " + ".join(names) if names else "nothing"


def find_segment(graph: Graph, site: ActivationSite) -> tuple[Segment | None, str | None]:
    """The linear -> activation -> linear segment around `site`, or (None, reason)."""
    inside = {n.id for n in site.nodes}
    x_act = site.input
    if graph.is_graph_output(x_act) or any(c.id not in inside for c in graph.consumers(x_act)):
        return None, f"{site.label}: its input {x_act!r} is read outside the activation"
    if graph.is_graph_output(site.output):
        return None, f"{site.label}: its output is a graph output"
    unit, why = _conv_unit_ending_at(graph, x_act)
    if unit is not None:
        spec1, l1_nodes, x = unit
        if site.channel_axis != 1:
            return None, f"{site.label}: channel axis is not 1"
        if spec1.rank != 2:
            return None, f"{site.label}: only 2-D convolutions are refitted"
        cons = graph.consumers(site.output)
        if len(cons) == 1 and is_op(cons[0], "Conv"):
            head, why = _conv_unit_starting_at(graph, site.output)
            if head is None:
                return None, f"{site.label}: {why}"
            if head.layer.in_channels != spec1.out_channels:
                return None, f"{site.label}: channel counts do not chain"
            return Segment(site, "conv", x, l1_nodes, spec1, [], [head]), None
        # conv -> act -> layout -> dense heads
        layout: list[Node] = []
        t = site.output
        while True:
            cs = graph.consumers(t)
            if len(cs) == 1 and graph.uses(t) == 1 and not graph.is_graph_output(t) and is_op(cs[0], *_LAYOUT) and cs[0].inputs[0] == t:
                layout.append(cs[0])
                t = cs[0].outputs[0]
                continue
            break
        if not layout:
            return None, f"{site.label}: output feeds {_feeds(graph, site.output)}, not one Conv or a flattened dense layer"
        shp = graph.static_shape(t)
        xs = graph.static_shape(x)
        if shp is None or len(shp) != 2 or xs is None:
            return None, f"{site.label}: the flattened tensor {t!r} is not a static [N, F]"
        if int(np.prod(xs[1:])) > MAX_DENSE_FEATURES:
            return None, f"{site.label}: input {x!r} has {int(np.prod(xs[1:]))} features per sample (> {MAX_DENSE_FEATURES})"
        heads, why = _dense_heads(graph, t)
        if heads is None:
            return None, f"{site.label}: {why}"
        return Segment(site, "conv_flatten", x, l1_nodes, spec1, layout, heads), None
    if why:
        return None, f"{site.label}: {why}"
    from .layer_io import dense_ending_at

    d1, why = dense_ending_at(graph, x_act)
    if d1 is None:
        p = graph.producer(x_act)
        return None, f"{site.label}: producer {p.label if p else x_act!r} is not a Conv/Gemm/MatMul" + (f" ({why})" if why else "")
    rank = len(graph.shape(d1.x) or ())
    axis = site.channel_axis if site.channel_axis >= 0 else rank + site.channel_axis
    if rank and axis != rank - 1:
        return None, f"{site.label}: dense activation's channel axis is not the last"
    heads, why = _dense_heads(graph, site.output)
    if heads is None:
        return None, f"{site.label}: {why}"
    for h in heads:
        if h.layer.W.shape[0] != d1.W.shape[1]:
            return None, f"{site.label}: channel counts do not chain"
    return Segment(site, "dense", d1.x, list(d1.nodes), d1, [], heads), None


def find_segments(graph: Graph, sites: Collection[str] | None = None) -> tuple[list[Segment], list[str]]:
    segs, refused = [], []
    for site in find_activations(graph):
        if sites is not None and site.name not in sites:
            continue
        s, why = find_segment(graph, site)
        if s is None:
            refused.append(why)
        else:
            segs.append(s)
    return segs, refused


# ------------------------------------------------------------------------------- naive merge
def _scaled_conv(spec: ConvSpec, s: np.ndarray, t: np.ndarray) -> ConvSpec:
    w = np.asarray(spec.weight, np.float64) * s.reshape(-1, *([1] * (spec.weight.ndim - 1)))
    return ConvSpec(w, s * spec.bias_or_zeros() + t, spec.strides, spec.dilations, spec.pads, spec.group)


def _naive(seg: Segment, s: np.ndarray, t: np.ndarray, graph: Graph):
    """The naive merged operator: conv -> ConvSpec; dense kinds -> list of (W [D, O], b [O])."""
    if seg.kind == "conv":
        return compose(_scaled_conv(seg.l1, s, t), seg.heads[0].layer)
    if seg.kind == "dense":
        d1: Dense = seg.l1
        W1 = d1.W * s[None, :]
        b1 = (np.zeros(d1.W.shape[1]) if d1.b is None else d1.b) * s + t
        out = []
        for h in seg.heads:
            d2: Dense = h.layer
            out.append((W1 @ d2.W, b1 @ d2.W + (0 if d2.b is None else d2.b)))
        return out
    # conv_flatten: probe the chain
    c1 = _scaled_conv(seg.l1, s, t)
    xs = graph.static_shape(seg.x)
    D = int(np.prod(xs[1:]))
    basis = np.concatenate([np.zeros((1, D)), np.eye(D)]).reshape(D + 1, *xs[1:])
    h = conv_apply(c1, basis)
    for n in seg.layout:
        if n.op_type == "Transpose":
            perm = n.attr("perm") or list(range(h.ndim))[::-1]
            h = np.transpose(h, perm)
        else:
            h = h.reshape(h.shape[0], -1)
    out = []
    for hd in seg.heads:
        d2: Dense = hd.layer
        r = h @ d2.W + (0 if d2.b is None else d2.b)
        out.append((r[1:] - r[0][None, :], r[0].copy()))
    return out


# ------------------------------------------------------------------------------- regression
# ------------------------------------------------------------------------------- results
@dataclass
class SegmentFit:
    site: str
    label: str
    kind: str
    merged: str
    tier: str | None
    macs_before: int | None
    macs_after: int | None
    rows: int
    nmse_naive: float  # on calibration rows, segment output, naive merged weights
    nmse_refit: float
    applied: bool = True

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RefitResult:
    """result: the PassResult; fits: the applied segments; skipped: fitted but not applied
    (e.g. the merged operator turned out to cost more MACs than allowed)."""

    result: PassResult
    fits: list[SegmentFit] = field(default_factory=list)
    skipped: list[SegmentFit] = field(default_factory=list)


def merged_geometry(seg: Segment):
    """A stand-in for the naive merged operator with the right shapes and zero weights (cheap:
    no composition), for MAC counts. Conv: a ConvSpec; dense kinds: [(W, b)] per head."""
    if seg.kind == "conv":
        c1, c2 = seg.l1, seg.heads[0].layer
        r = c1.rank
        D = tuple(math.gcd(c1.dilations[a], c1.strides[a] * c2.dilations[a]) for a in range(r))
        K = tuple(
            (c1.dilations[a] // D[a]) * (c1.kernel_shape[a] - 1) + (c1.strides[a] * c2.dilations[a] // D[a]) * (c2.kernel_shape[a] - 1) + 1
            for a in range(r)
        )
        g = math.gcd(c1.group, c2.group)
        w = np.zeros((c2.out_channels, c1.in_channels // g, *K), np.float32)
        pads = tuple(c1.pads[a] + c1.strides[a % r] * c2.pads[a] for a in range(2 * r))
        return ConvSpec(w, None, tuple(c1.strides[a] * c2.strides[a] for a in range(r)), D, pads, g)
    if seg.kind == "dense":
        return [(np.zeros((seg.l1.W.shape[0], h.layer.W.shape[1]), np.float32), None) for h in seg.heads]
    raise ValueError("conv_flatten: the merged size depends on the input shape; use the naive merge")


def segment_macs(seg: Segment, x_shape: Sequence[int], merged) -> tuple[int, int]:
    """(MACs before, after) per sample for input shape x_shape [N, ...] (N counted as 1)."""
    if seg.kind == "conv":
        sp = tuple(x_shape[2:])
        c1, c2 = seg.l1, seg.heads[0].layer
        before = c1.macs(sp) + c2.macs(c1.output_spatial_shape(sp))
        return int(before), int(merged.macs(sp))
    if seg.kind == "dense":
        rows = int(np.prod(x_shape[1:-1], dtype=np.int64)) if len(x_shape) > 2 else 1
        before = rows * (seg.l1.W.size + sum(h.layer.W.size for h in seg.heads))
        return int(before), int(rows * sum(W.size for W, _ in merged))
    sp = tuple(x_shape[2:])
    before = seg.l1.macs(sp) + sum(h.layer.W.size for h in seg.heads)
    return int(before), int(sum(W.size for W, _ in merged))


# ------------------------------------------------------------------------------- the pass
def refit(
    graph: Graph,
    calibration,
    *,
    sites: Collection[str] | None = None,
    decisions: Mapping[str, object] | None = None,
    reference: onnx.ModelProto | None = None,
    sequential: bool = True,
    fit: bool = True,
    ridge: float = 1e-3,
    max_mac_ratio: float | None = None,
    ctx: PassContext | None = None,
    budget_bytes: int = DEFAULT_BUDGET,
    threads: int | None = None,
) -> RefitResult:
    """Merge and refit the segments around `sites` (default: every site with a segment).

    decisions: {site: Decision}; a site's naive map is its affine(force=True) (MIXED channels ->
    dominant region); without a decision the activation is taken as the identity.
    reference: the ORIGINAL model whose segment outputs are the targets (default: the graph as
    it is on entry). fit=False: merge naively (exact composition of the linearized chain).
    max_mac_ratio: refuse merges whose MACs exceed ratio * the chain's (default: 1.0 when
    ctx.require_fewer_macs, else no limit).
    """
    ctx = ctx or PassContext(lossless=False, require_fewer_macs=False)
    if max_mac_ratio is None and ctx.require_fewer_macs:
        max_mac_ratio = 1.0
    res = PassResult("refit")
    out = RefitResult(res)
    if reference is None:
        reference = ir.to_proto(graph.copy(), check=False)
    ref_outputs = {o for n in reference.graph.node for o in n.output} | {i.name for i in reference.graph.input}
    cal = as_calibration(calibration, reference)
    wanted = [s.name for s in find_activations(graph) if sites is None or s.name in sites]
    if sites is not None:
        for name in sorted(set(sites) - set(wanted)):
            res.refuse(f"{name}: no such activation")
    precomputed: dict[str, tuple] = {}
    if fit and not sequential:
        plans, taken = [], set()
        for name in wanted:
            site = next(s for s in find_activations(graph) if s.name == name)
            seg, _ = find_segment(graph, site)
            if seg is None:
                continue
            ids = {n.id for n in seg.nodes}
            if ids & taken or seg.x not in ref_outputs:
                continue  # overlapping segments: refused when their turn comes
            merged = _plan(graph, seg, decisions, ref_outputs, max_mac_ratio, PassResult("scratch"))
            if merged is not None:
                plans.append((seg, merged))
                taken |= ids
        if plans:
            for (seg, _), acc in zip(plans, _accumulate_parallel(graph, reference, cal, plans, budget_bytes, threads)):
                precomputed[seg.site.name] = (frozenset(n.id for n in seg.nodes), acc)
    for name in wanted:
        site = next((s for s in find_activations(graph) if s.name == name), None)
        if site is None:
            res.refuse(f"{name}: the activation was removed by an earlier rewrite")
            continue
        seg, why = find_segment(graph, site)
        if seg is None:
            if sites is not None:
                res.refuse(why)
            continue
        merged = _plan(graph, seg, decisions, ref_outputs, max_mac_ratio, res)
        if merged is None:
            continue
        if fit and sequential:
            current = ir.to_proto(graph.copy(), check=False)
            normal, xshape = _accumulate_one(graph, current, reference, cal, seg, merged, budget_bytes, threads)
        elif fit:
            pre = precomputed.get(name)
            if pre is None or pre[0] != frozenset(n.id for n in seg.nodes):
                res.refuse(f"{seg.site.label}: not fitted in parallel mode (it overlaps an earlier segment, or its input is not a tensor of the reference model); use sequential mode")
                continue
            normal, xshape = pre[1]
        else:
            normal, xshape = None, _shape_n1(graph, seg.x)
        fit_info = _apply(graph, seg, merged, normal, xshape, ridge, max_mac_ratio, res)
        if fit_info is not None:
            (out.fits if fit_info.applied else out.skipped).append(fit_info)
    return out


def _shape_n1(graph: Graph, t: str, proxy: int | None = None):
    """The shape of t with a symbolic batch dim taken as 1 (None unless the rest is static).
    proxy: unknown spatial dims (axes 2..) are taken as this size instead (MAC ratios of conv
    segments hardly depend on it)."""
    s = graph.shape(t)
    if s is None or len(s) < 2 or not (isinstance(s[1], int) and s[1] > 0):
        return None
    rest = []
    for d in s[2:]:
        if isinstance(d, int) and d > 0:
            rest.append(d)
        elif proxy is not None:
            rest.append(proxy)
        else:
            return None
    return (1, s[1], *rest)


def _plan(graph: Graph, seg: Segment, decisions, ref_outputs, max_mac_ratio, res: PassResult):
    """The naive merged operator of a segment, or None (refusal recorded)."""
    dec = (decisions or {}).get(seg.site.name)
    C = seg.l1.out_channels if isinstance(seg.l1, ConvSpec) else seg.l1.W.shape[1]
    if dec is not None:
        if dec.channels != C:
            res.refuse(f"{seg.site.label}: decision has {dec.channels} channels, layer {C}")
            return None
        s, t = dec.affine(seg.site, force=True)
    else:
        s, t = np.ones(C), np.zeros(C)
    missing = [y for y in seg.outputs if y not in ref_outputs]
    if missing:
        res.refuse(f"{seg.site.label}: target {missing[0]!r} is not a tensor of the reference model")
        return None
    try:
        merged = _naive(seg, s, t, graph)
    except ValueError as e:
        res.refuse(f"{seg.site.label}: {e}")
        return None
    xs = _shape_n1(graph, seg.x, proxy=32 if seg.kind == "conv" else None)
    if max_mac_ratio is not None and xs is not None:
        before, after = segment_macs(seg, xs, merged)
        if after > max_mac_ratio * before:
            res.refuse(f"{seg.site.label}: merged operator costs {after} MACs > {max_mac_ratio:g} x {before}")
            return None
    return merged


def _targets(seg: Segment, merged):
    if seg.kind == "conv":
        return conv_to_w(merged)
    return [np.concatenate([W, b[None, :]], 0)[None] for W, b in merged]


def _conv_rows(merged: ConvSpec, x: np.ndarray, y: np.ndarray):
    return conv_rows(merged, x, y)


def _accumulate(normal_list, seg: Segment, merged, x: np.ndarray, ys: list[np.ndarray]):
    if seg.kind == "conv":
        for X, Y in _conv_rows(merged, x, ys[0]):
            if normal_list[0] is None:
                normal_list[0] = NormalEquations.zeros(merged.group, X.shape[2], Y.shape[2])
            normal_list[0].add(X, Y)
        return
    if seg.kind == "conv_flatten":
        X = x.reshape(x.shape[0], -1)
    else:
        X = x.reshape(-1, x.shape[-1])
    for k, y in enumerate(ys):
        Y = y.reshape(-1, y.shape[-1])
        if normal_list[k] is None:
            normal_list[k] = NormalEquations.zeros(1, X.shape[1], Y.shape[1])
        normal_list[k].add(X[None], Y[None])


def _accumulate_one(graph, current, reference, cal, seg, merged, budget, threads):
    heads = len(seg.heads) if seg.kind != "conv" else 1
    normals = [None] * heads
    m_cur = with_outputs(current, [seg.x], graph)
    m_ref = with_outputs(reference, seg.outputs)
    xshape = None
    for nb, (o_cur, o_ref) in stream_tensors([(m_cur, [seg.x]), (m_ref, seg.outputs)], cal, budget_bytes=budget, threads=threads):
        x = o_cur[seg.x]
        xshape = x.shape
        _accumulate(normals, seg, merged, x, [o_ref[y] for y in seg.outputs])
    return normals, xshape


def _accumulate_parallel(graph, reference, cal, plans, budget, threads):
    tensors = sorted({seg.x for seg, _ in plans} | {y for seg, _ in plans for y in seg.outputs})
    missing = [t for t in tensors if t not in {o for n in reference.graph.node for o in n.output} | {i.name for i in reference.graph.input}]
    if missing:
        raise ValueError(f"tensors {missing} are not in the reference model (use sequential mode)")
    m = with_outputs(reference, tensors)
    state = [([None] * (1 if seg.kind == "conv" else len(seg.heads)), None) for seg, _ in plans]
    for nb, (o,) in stream_tensors([(m, tensors)], cal, budget_bytes=budget, threads=threads):
        for i, (seg, merged) in enumerate(plans):
            _accumulate(state[i][0], seg, merged, o[seg.x], [o[y] for y in seg.outputs])
            state[i] = (state[i][0], o[seg.x].shape)
    return state


def _apply(graph: Graph, seg: Segment, merged, normals, xshape, ridge: float, max_mac_ratio, res: PassResult) -> SegmentFit | None:
    label = seg.site.label
    W0s = _targets(seg, merged)
    if normals is not None:
        if seg.kind == "conv":
            fitted = [normals[0].solve(W0s, ridge)]
            nm = [normals[0]]
            W0l = [W0s]
        else:
            fitted = [n.solve(w0, ridge) for n, w0 in zip(normals, W0s)]
            nm = normals
            W0l = W0s
        ref = sum(n.sq_ref() for n in nm)
        nmse_naive = sum(n.sq_err(w) for n, w in zip(nm, W0l)) / ref if ref > 0 else 0.0
        nmse_refit = sum(n.sq_err(w) for n, w in zip(nm, fitted)) / ref if ref > 0 else 0.0
        rows = nm[0].rows
    else:
        fitted = [W0s] if seg.kind == "conv" else W0s
        nmse_naive = nmse_refit = float("nan")
        rows = 0
    tier = None
    if seg.kind == "conv":
        new_spec = w_to_conv(fitted[0], merged)
        sp = tuple(xshape[2:]) if xshape is not None else None
        try:
            tier = exactness(_scaled_conv(seg.l1, np.ones(seg.l1.out_channels), np.zeros(seg.l1.out_channels)), seg.heads[0].layer, sp).name
        except ValueError:
            tier = None
        desc = f"Conv {list(new_spec.kernel_shape)} {new_spec.in_channels}->{new_spec.out_channels} g{new_spec.group}"
    else:
        desc = ", ".join(f"Gemm {w.shape[1] - 1}->{w.shape[2]}" for w in fitted)
    mb = ma = None
    if xshape is not None:
        mb, ma = segment_macs(seg, xshape, merged if seg.kind == "conv" else [(w[0, :-1], w[0, -1]) for w in fitted])
        if max_mac_ratio is not None and ma > max_mac_ratio * mb:
            res.refuse(f"{label}: merged operator costs {ma} MACs > {max_mac_ratio:g} x {mb}")
            return SegmentFit(seg.site.name, label, seg.kind, desc, tier, mb, ma, rows, nmse_naive, nmse_refit, applied=False)
    # rewrite
    name = seg.heads[0].nodes[0].name or "merged"
    try:
        if seg.kind == "conv":
            new = [conv_node(graph, new_spec, seg.x, seg.heads[0].y, name)]
        elif seg.kind == "dense":
            new = []
            for h, w in zip(seg.heads, fitted):
                new += dense_nodes(graph, w[0, :-1], w[0, -1], seg.x, h.y, h.nodes[0].name or "dense")
        else:
            flat = graph.fresh_name(seg.x + ".flat")
            fl = Node("Flatten", [seg.x], [flat], name=graph.fresh_name(label + ".flatten"))
            fl.set_attr("axis", 1)
            xs = graph.static_shape(seg.x)
            graph.set_shape(flat, graph.elem_type(seg.x) or 1, [xs[0], int(np.prod(xs[1:]))])
            new = [fl]
            for h, w in zip(seg.heads, fitted):
                wn = graph.add_const(w[0, :-1].astype(np.float32), (h.nodes[0].name or "dense") + ".weight")
                bn = graph.add_const(w[0, -1].astype(np.float32), (h.nodes[0].name or "dense") + ".bias")
                new.append(Node("Gemm", [flat, wn, bn], [h.y], name=graph.fresh_name(h.nodes[0].name or "dense")))
        graph.replace_chain(seg.nodes, new)
    except ValueError as e:
        res.refuse(f"{label}: {e}")
        return None
    res.changed += 1
    what = "refitted" if normals is not None else "merged naively"
    res.details.append(f"{what} {label} ({seg.kind}) -> {desc}; calibration NMSE naive {nmse_naive:.3g} -> refit {nmse_refit:.3g}")
    return SegmentFit(seg.site.name, label, seg.kind, desc, tier, mb, ma, rows, nmse_naive, nmse_refit)
