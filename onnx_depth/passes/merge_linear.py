"""merge_linear: merge linear layers with nothing nonlinear between them.

* Conv∘Conv (any kernel, stride, dilation, groups, bias): one conv with extent
  K = d1(k1-1) + s1 d2(k2-1) + 1 and stride s1 s2 (onnx_depth.kernels.conv_compose). Padding by
  the exactness tiers: EXACT merges; CORRECTABLE (the ring error depends only on b1) merges with
  a constant border map added after the conv; INEXACT (k x k padded then k x k padded) is never
  merged in lossless mode. The tier and the border map are computed for the input's static
  spatial shape (a symbolic batch is fine); with a dynamic spatial shape the tier is the
  shape-free, conservative one and a chain that needs a border map (CORRECTABLE with b1 != 0)
  is refused.
* Conv -> Add(constant C) -> Conv, e.g. the border map of an earlier merge: a per-channel C is
  conv1's bias (b1 + c); a map C (static shape) is pushed through conv2, which is linear and pads
  with zeros: conv2(pad0(h + C)) = conv2(pad0(h)) + conv2_nobias(pad0(C)), so the merged conv
  gets one constant map, the sum of both. Chains of 3+ convs keep merging this way.
* Dense chains (Gemm with transA 0, MatMul with constant 2-D weight, each with its bias Add):
  (x W1 + b1) W2 + b2 = x (W1 W2) + (b1 W2 + b2)  (LayerCollapse's W2·W1; a BN between was
  already folded by fold_bn). Any leading dims ([N, C], [B, T, C], symbolic or not).
* Residual: x + L(x) with L one Conv (stride 1, C_in == C_out, size-preserving) or one square
  dense layer -> L' with the identity added (centre tap / diagonal).
* Parallel branches summed over the same input: Conv_a(x) + Conv_b(x) -> one conv with the
  kernels added (the smaller padded to the larger), dense likewise.
Residual and parallel layers have their input's (resp. each other's) output shape by
construction, so the Add never broadcasts and they need no shapes at all.
When to merge: only when the merged operator has no more MACs than what it replaces
(ctx.require_fewer_macs), so lossless mode never makes a model bigger on paper: per sample at the
static input size; with a dynamic spatial size, at every probe size 1..64, 96, ..., 512 and per
output position (how onnx_depth.metrics counts symbolic dims); dense layers per row; parallel
convs per output position (one output grid). Nor more parameters: the merged weight and bias
have at most as many elements as the weights and biases they replace (a CORRECTABLE merge's
constant border map is not counted; the detail line gives its size).
Every layer must be float32 with constant, unshared weights (the kernels write float32; a shared
weight would stay alive for its other user, and the model would grow), and the merged weights
must be finite in float32 and inside its safe range (kernels.float32_range), else the merge is
refused with the reason.
"""

from __future__ import annotations

from math import gcd

import numpy as np

from ..ir import Graph, Node
from ..ir.patterns import intermediate_blocker, is_op, sole_consumer
from ..kernels import (ConvSpec, Tier, add_identity, add_identity_dense, add_parallel, compose_affine64, exactness,
                       float32_blocker, merge)
from ..kernels.conv_reference import conv_apply
from ..kernels.dense_compose import affine_from_bn
from .base import PassContext, PassResult
from .layer_io import Dense, channel_vector, conv_node, dense_ending_at, dense_nodes, read_bn, read_conv, read_dense, spatial_shape


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
MAX_CHAIN = 8  # convs considered for one merge


class _Stop(Exception):
    """A chain cannot be extended (the message says why)."""


def _next_link(graph: Graph, cn: Node) -> tuple[Node | None, str | None, Node] | None:
    """(Add node or None, its constant input or None, next Conv) after conv cn, structurally."""
    mid = cn.outputs[0]
    cons = graph.consumers(mid)
    if len(cons) != 1:
        return None
    if is_op(cons[0], "Conv") and cons[0].inputs[0] == mid:
        return None, None, cons[0]
    if is_op(cons[0], "Add") and len(cons[0].inputs) == 2:
        add = cons[0]
        const = add.inputs[1] if add.inputs[0] == mid else add.inputs[0]
        nxt = sole_consumer(graph, add.outputs[0])
        if const != mid and graph.is_constant(const) and is_op(nxt, "Conv") and nxt.inputs[0] == add.outputs[0]:
            return add, const, nxt
    return None


class _MergedConvs:
    """conv1 ... convk merged so far: the chain's true output is spec(x) + K (K a constant map on
    spec's output grid, None for zero). Needs the input's spatial shape `sp` for any map."""

    def __init__(self, first: ConvSpec, sp: tuple[int, ...] | None) -> None:
        self.spec, self.K, self.sp = first, None, sp
        self.specs = [first]
        self.tiers: list[Tier] = []

    def extend(self, C: np.ndarray | None, c2: ConvSpec, lossless: bool) -> None:
        """Append: + C (a constant, or None), then conv c2."""
        M = self.spec
        if M.rank != c2.rank or c2.in_channels != M.out_channels:
            raise _Stop("conv shapes do not chain")
        n = None if self.sp is None else M.output_spatial_shape(self.sp)
        K = self.K
        if C is not None:
            if C.dtype != np.float32:
                raise _Stop("the constant added between them is not float32")
            C = np.asarray(C, np.float64)
            c = channel_vector(C, M.out_channels, M.rank)
            if c is not None:  # a bias of the merged conv
                M = ConvSpec(M.weight, M.bias_or_zeros() + c, M.strides, M.dilations, M.pads, M.group)
            elif n is None:
                raise _Stop("the constant map added between them needs a static input shape")
            else:
                cmap = _as_map(C, M.out_channels, n)
                if cmap is None:
                    raise _Stop(f"a constant of shape {C.shape} broadcasts the conv output")
                K = cmap if K is None else K + cmap
        tier = exactness(M, c2, self.sp)
        if tier == Tier.INEXACT and lossless:
            raise _Stop("padded kxk then padded kxk is border-inexact (lossy mode only)")
        if self.sp is None and tier == Tier.CORRECTABLE and M.bias is not None and np.any(M.bias):
            raise _Stop("the input has a dynamic spatial shape and the merge needs one for its border correction")
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused by float32_blocker
                m = merge(M, c2, self.sp, allow_inexact=not lossless)
        except ValueError as e:
            raise _Stop(str(e)) from e
        newK = None if m.correction is None else np.asarray(m.correction, np.float64)
        if K is not None:  # c2 is linear and pads with zeros: c2(pad0(h + K)) = c2(pad0(h)) + c2_nobias(pad0(K))
            pushed = conv_apply(ConvSpec(c2.weight, None, c2.strides, c2.dilations, c2.pads, c2.group), K)
            newK = pushed if newK is None else newK + pushed
        self.spec, self.K = m.spec, (None if newK is None or not np.any(newK) else newK)
        self.specs.append(c2)
        self.tiers.append(tier)

    def costs(self) -> list[tuple[int, int]]:
        """(MACs of the convs, MACs of the merged conv) per sample, at the static input size or,
        when it is unknown, at every probe size (equal on all axes) plus per output position
        (how onnx_depth.metrics counts symbolic dims, every dim taken as 1). [] if no size fits."""
        def at(shape):
            total, s = 0, tuple(shape)
            for c in self.specs:
                total += c.macs(s)
                s = c.output_spatial_shape(s)
            return total, self.spec.macs(shape)

        if self.sp is not None:
            return [at(self.sp)]
        out = []
        for n in _PROBE_SIZES:
            try:
                out.append(at((n,) * self.spec.rank))
            except ValueError:
                continue
        if out:
            out.append((sum(int(c.weight.size) for c in self.specs), int(self.spec.weight.size)))
        return out


def _conv_chain(graph: Graph, c1n: Node, ctx: PassContext, res: PassResult) -> None:
    """Merge conv c1n with the longest-saving run of convs after it (pairs first; a longer run
    when the pair alone would cost more MACs, e.g. 1x1 expand -> depthwise -> 1x1 project)."""
    link = _next_link(graph, c1n)
    if link is None:
        return
    add, const, c2n = link
    label = f"{c1n.label} -> {c2n.label}"
    mid = c1n.outputs[0]
    why = intermediate_blocker(graph, mid) or (add is not None and intermediate_blocker(graph, add.outputs[0])) or None
    if why:
        return res.refuse(f"{label}: {why}")
    c1, why1 = read_conv(graph, c1n)
    c2, why2 = read_conv(graph, c2n)
    if c1 is None or c2 is None:
        return res.refuse(f"{label}: {why1 or why2}")
    chain = _MergedConvs(c1, spatial_shape(graph, c1n.inputs[0]))
    first_c2 = c2
    first_params = None
    nodes = [c1n]
    best = None  # (saving, n convs, spec, K, nodes, costs)
    first_costs = None
    while True:
        try:
            chain.extend(None if const is None else graph.const(const), c2, ctx.lossless)
        except (_Stop, ValueError) as e:
            if len(chain.specs) == 1:
                return res.refuse(f"{label}: {e}")
            break
        nodes += ([add] if add is not None else []) + [c2n]
        try:
            costs = chain.costs()
        except ValueError:  # the static input is too small for the chain
            costs = []
        if not costs:
            if len(chain.specs) == 2:
                return res.refuse(f"{label}: no input size is valid for the chain")
            break
        first_costs = first_costs or costs
        unsafe = float32_blocker(chain.spec.weight, chain.spec.bias, chain.K, what="merged weights")
        if unsafe:
            if best is None:
                return res.refuse(f"{label}: {unsafe}")
            break
        p_before, p_after = _chain_params(graph, chain, nodes)
        grows = ctx.require_fewer_macs and p_after > p_before
        first_params = first_params or (p_before, p_after)
        if (not ctx.require_fewer_macs or all(a <= b for b, a in costs)) and not grows:
            saving = costs[0][0] - costs[0][1]
            if best is None or saving >= best[0]:
                best = (saving, len(chain.specs), chain.spec, chain.K, list(nodes), costs)
        if len(chain.specs) >= MAX_CHAIN or costs[0][1] > 16 * costs[0][0]:
            break  # long enough, or the kernel has grown past any later saving (and composing costs time)
        link = _next_link(graph, c2n)
        if link is None:
            break
        add, const, nxt = link
        if intermediate_blocker(graph, c2n.outputs[0]) or (add is not None and intermediate_blocker(graph, add.outputs[0])):
            break
        nxt_spec, _ = read_conv(graph, nxt)
        if nxt_spec is None:  # e.g. a shared weight: the chain ends before it
            break
        c2, c2n = nxt_spec, nxt
    if best is None:
        b, a = next(((b, a) for b, a in first_costs if a > b), first_costs[0])
        if a <= b and first_params is not None and first_params[1] > first_params[0]:
            return res.refuse(f"{label}: merged conv (kernel {chain_kernel(c1, first_c2)}) has {first_params[1]} "
                              f"parameters > {first_params[0]}: lossless merges never add weights")
        return res.refuse(f"{label}: merged kernel {chain_kernel(c1, first_c2)} costs {a} MACs > {b}")
    _, count, spec, K, old, costs = best
    last = old[-1]
    out = last.outputs[0]
    name = last.name or c1n.name or "conv"
    if K is None:
        new = [conv_node(graph, spec, c1n.inputs[0], out, name)]
    else:
        pre = graph.fresh_name(out + ".uncorrected")
        corr = graph.add_const(K[None].astype(np.float32), name + ".border")
        new = [conv_node(graph, spec, c1n.inputs[0], pre, name), Node("Add", [pre, corr], [out], name=graph.fresh_name(name + ".border_add"))]
        if graph.shape(out) is not None:
            graph.set_shape(pre, graph.elem_type(out) or 1, graph.shape(out))
    graph.replace_chain(old, new)
    res.changed += 1
    tiers = "+".join(t.name for t in chain.tiers[: count - 1])
    b, a = costs[0]
    border = "" if K is None else f", border map of {K.size} values"
    res.details.append(f"merged {count} convs {c1n.label} .. {last.label} -> kernel {spec.kernel_shape}, {tiers}, MACs {b} -> {a}{border}")


def _chain_params(graph: Graph, chain: _MergedConvs, nodes: list[Node]) -> tuple[int, int]:
    """(weights + biases of the convs, weights + bias of the merged conv): a lossless merge must
    not make the layers bigger either. The constant border map of a CORRECTABLE merge is not
    counted (it would refuse most of them on real input sizes, e.g. the collapsed inverted
    residuals of the training companion); the merge's detail line reports its size."""
    before = sum(int(c.weight.size) + (0 if c.bias is None else int(np.size(c.bias))) for c in chain.specs)
    after = int(chain.spec.weight.size) + (0 if chain.spec.bias is None else int(np.size(chain.spec.bias)))
    return before, after


def chain_kernel(c1: ConvSpec, c2: ConvSpec) -> tuple[int, ...]:
    """Kernel shape of compose(c1, c2) (for messages)."""
    return tuple(
        (c1.dilations[a] * (c1.kernel_shape[a] - 1) + c1.strides[a] * c2.dilations[a] * (c2.kernel_shape[a] - 1))
        // gcd(c1.dilations[a], c1.strides[a] * c2.dilations[a]) + 1
        for a in range(c1.rank)
    )


def _as_map(C: np.ndarray, channels: int, n1: tuple[int, ...]) -> np.ndarray | None:
    """C broadcast to [channels, *n1], if adding it to [N, channels, *n1] keeps that shape."""
    full = (1, channels, *n1)
    if C.ndim > len(full):
        return None
    try:
        if np.broadcast_shapes(full, C.shape) != full:
            return None
    except ValueError:
        return None
    return np.broadcast_to(C, full)[0].astype(np.float64)


# Input sizes at which a merge whose input size is unknown must not cost more MACs.
_PROBE_SIZES = tuple(range(1, 65)) + (96, 128, 224, 256, 512)


# ------------------------------------------------------------------ dense chains
def _next_dense(graph: Graph, n1: Node) -> Node | None:
    """The Gemm/MatMul reading n1's output (directly or after a bias Add), found without reading
    any weight (reading converts it to float64: seconds for VGG's classifier)."""
    y = n1.outputs[0]
    nxt = graph.consumers(y)
    if len(nxt) == 1 and is_op(nxt[0], "Add"):
        nxt = graph.consumers(nxt[0].outputs[0])
    return nxt[0] if len(nxt) == 1 and is_op(nxt[0], "Gemm", "MatMul") else None


def _dense_chain(graph: Graph, n1: Node, ctx: PassContext, res: PassResult) -> None:
    nxt = _next_dense(graph, n1)
    if nxt is None:
        return
    d1, why = read_dense(graph, n1)
    if d1 is None:
        return res.refuse(f"{n1.label} -> {nxt.label}: {why}")
    cons = graph.consumers(d1.y)
    if len(cons) != 1 or not is_op(cons[0], "Gemm", "MatMul") or cons[0].inputs[0] != d1.y:
        return
    label = f"{n1.label} -> {cons[0].label}"
    why = intermediate_blocker(graph, d1.y)
    if why:
        return res.refuse(f"{label}: {why}")
    d2, why = read_dense(graph, cons[0])
    if d2 is None:
        return res.refuse(f"{label}: {why}")
    if d1.W.shape[1] != d2.W.shape[0]:
        return res.refuse(f"{label}: {d1.W.shape} and {d2.W.shape} do not chain")
    W, b = compose_affine64(d1.W, d1.b, d2.W, d2.b)
    # MACs per row of the activation (the rows cancel out, so no static shape is needed)
    before = int(d1.W.size + d2.W.size)
    after = int(W.size)
    if ctx.require_fewer_macs and after > before:
        return res.refuse(f"{label}: merged {W.shape[0]}x{W.shape[1]} costs {after} MACs per row > {before}")
    p_before = sum(int(d.W.size) + (0 if d.b is None else int(d.b.size)) for d in (d1, d2))
    p_after = int(W.size) + (0 if b is None else int(b.size))
    if ctx.require_fewer_macs and p_after > p_before:
        return res.refuse(f"{label}: merged {W.shape[0]}x{W.shape[1]} has {p_after} parameters > {p_before}")
    why = float32_blocker(W, b, what="merged weights")
    if why:
        return res.refuse(f"{label}: {why}")
    new = dense_nodes(graph, W, b, d1.x, d2.y, cons[0].name or n1.name or "dense")
    graph.replace_chain([*d1.nodes, *d2.nodes], new)
    res.changed += 1
    res.details.append(f"merged {label} -> {W.shape[0]}x{W.shape[1]}, MACs per row {before} -> {after}")


# ------------------------------------------------------------------ residual / parallel
def _residual_or_parallel(graph: Graph, add: Node, ctx: PassContext, res: PassResult) -> None:
    # Both fusions only match layers whose output has their input's shape by construction
    # (size-preserving stride-1 conv with C_in == C_out, square dense; parallel branches with
    # equal strides, channels and pads), so the Add never broadcasts and no shape is needed.
    # A constant added after a layer (L(x) + K, e.g. the border map of a merge) rides along:
    # x + (L(x) + K) = L'(x) + K and (A(x) + Ka) + (B(x) + Kb) = (A + B)(x) + (Ka + Kb) exactly,
    # whatever K broadcasts to, since x, L(x), A(x) and B(x) all have one shape.
    if len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
        return
    a, b = add.inputs
    la, lb = _layer_ending_at(graph, a), _layer_ending_at(graph, b)
    for x, layer, t in ((a, lb, b), (b, la, a)):
        if layer is not None and layer[0] == x and sole_consumer(graph, t) is add:
            return _residual(graph, add, x, layer, res)
    for bt, layer, t in ((a, lb, b), (b, la, a)):  # BN(x) + L(x): a scaled identity (RepVGG)
        bnode = graph.producer(bt)
        if (layer is not None and is_op(bnode, "BatchNormalization") and bnode.inputs[0] == layer[0]
                and sole_consumer(graph, bt) is add and sole_consumer(graph, t) is add):
            bn, why = read_bn(graph, bnode)
            if bn is None:
                return res.refuse(f"{add.label}: identity branch {why}")
            return _residual(graph, add, layer[0], layer, res, bn=(bnode, bn))
    if la is not None and lb is not None and la[0] == lb[0]:
        if sole_consumer(graph, a) is add and sole_consumer(graph, b) is add:
            _parallel(graph, add, la, lb, ctx, res)


def _plain_layer_ending_at(graph: Graph, t: str):
    p = graph.producer(t)
    if is_op(p, "Conv"):
        spec, _ = read_conv(graph, p)
        return None if spec is None else (p.inputs[0], spec, [p], p.label)
    d, _ = dense_ending_at(graph, t)
    if d is None or any(graph.is_graph_output(n.outputs[0]) for n in d.nodes[:-1]):
        return None
    return (d.x, d, d.nodes, d.nodes[0].label)


def _layer_ending_at(graph: Graph, t: str):
    """(input tensor, ConvSpec | Dense, nodes, label, constant K or None) of the linear layer
    producing t, possibly followed by an Add of a constant K; None if there is none."""
    layer = _plain_layer_ending_at(graph, t)
    if layer is not None:
        return (*layer, None)
    p = graph.producer(t)
    if not is_op(p, "Add") or len(p.inputs) != 2:
        return None
    for i in (0, 1):
        u, k = p.inputs[i], p.inputs[1 - i]
        if graph.is_constant(k) and not graph.is_constant(u) and graph.const(k).dtype == np.float32 and sole_consumer(graph, u) is p:
            layer = _plain_layer_ending_at(graph, u)
            if layer is not None:
                x, L, nodes, label = layer
                return (x, L, nodes + [p], label, graph.const(k))
    return None


def _target(graph: Graph, out: str, K: np.ndarray | None, like: str) -> str:
    """The tensor the fused layer writes: `out` itself, or a new one (shaped like tensor `like`)
    that "+ K" then turns into `out`."""
    if K is None:
        return out
    pre = graph.fresh_name(out + ".pre")
    if graph.shape(like) is not None:
        graph.set_shape(pre, graph.elem_type(out) or 1, graph.shape(like))
    return pre


def _plus_const(graph: Graph, y: str, K: np.ndarray | None, out: str, name: str) -> list[Node]:
    if K is None:
        return []
    kname = graph.add_const(np.asarray(K, np.float32), name + ".const")
    return [Node("Add", [y, kname], [out], name=graph.fresh_name(name + ".const_add"))]


def _residual(graph: Graph, add: Node, x: str, layer, res: PassResult, bn=None) -> None:
    """x + L(x) -> L' (identity on the centre tap / diagonal). bn = (node, BN): the identity
    branch is BN(x) = s x + t instead, so s goes on the centre tap / diagonal and t to the bias."""
    _, L, nodes, name, K = layer
    ident = "x" if bn is None else f"{bn[0].label}(x)"
    label = f"{add.label} ({ident} + {name}{' + const' if K is not None else ''})"
    out = add.outputs[0]
    s = t = None
    if bn is not None:
        s, t = affine_from_bn(bn[1].scale, bn[1].bias, bn[1].mean, bn[1].var, bn[1].eps)
        nodes = [*nodes, bn[0]]
    try:
        if isinstance(L, ConvSpec):
            spec = add_identity(L, s)
            if t is not None:
                spec = ConvSpec(spec.weight, (spec.bias_or_zeros() + t).astype(np.float32), spec.strides, spec.dilations, spec.pads, spec.group)
        elif L.W.shape[0] != L.W.shape[1]:
            return res.refuse(f"{label}: dense layer is not square")
        elif bn is not None and len(graph.shape(x) or ()) != 2:
            return res.refuse(f"{label}: BatchNormalization on a [B, T, C] identity branch normalizes T, not the features")
        elif bn is not None and s.size != L.W.shape[0]:
            return res.refuse(f"{label}: BatchNormalization has {s.size} channels, the layer {L.W.shape[0]}")
    except ValueError as e:
        return res.refuse(f"{label}: {e}")
    if isinstance(L, ConvSpec):
        W, bias = spec.weight, spec.bias
    else:
        W, bias = add_identity_dense(L.W, L.b, s, t)
    why = float32_blocker(W, bias, what="fused weights")
    if why:
        return res.refuse(f"{label}: {why}")
    y = _target(graph, out, K, x)  # L(x) has x's shape
    if isinstance(L, ConvSpec):
        new = [conv_node(graph, spec, x, y, nodes[0].name or "conv")]
    else:
        new = dense_nodes(graph, W, bias, x, y, nodes[0].name or "dense")
    graph.replace_chain([*nodes, add], new + _plus_const(graph, y, K, out, nodes[0].name or "residual"))
    res.changed += 1
    res.details.append(f"fused residual {label}")


def _parallel(graph: Graph, add: Node, la, lb, ctx: PassContext, res: PassResult) -> None:
    x, A, na, name_a, Ka = la
    _, B, nb, name_b, Kb = lb
    if set(map(id, na)) & set(map(id, nb)):
        return
    label = f"{add.label} ({name_a} + {name_b})"
    out = add.outputs[0]
    try:
        if isinstance(A, ConvSpec) and isinstance(B, ConvSpec):
            merged = add_parallel(A, B)
            # the branches and the merged conv share one output grid: compare MACs per position
            if ctx.require_fewer_macs and merged.weight.size > A.weight.size + B.weight.size:
                return res.refuse(f"{label}: merged kernel {merged.kernel_shape} costs more MACs than the two branches")
        elif not (isinstance(A, Dense) and isinstance(B, Dense) and A.W.shape == B.W.shape):
            return
    except ValueError as e:
        return res.refuse(f"{label}: {e}")
    K = Ka if Kb is None else (Kb if Ka is None else np.asarray(Ka, np.float64) + np.asarray(Kb, np.float64))
    if isinstance(A, ConvSpec):
        why = float32_blocker(merged.weight, merged.bias, K, what="fused weights")
    else:
        why = float32_blocker(A.W + B.W, A.b, B.b, K, what="fused weights")
    if why:
        return res.refuse(f"{label}: {why}")
    y = _target(graph, out, K, na[-1 if Ka is None else -2].outputs[0])  # a branch's own output
    if isinstance(A, ConvSpec):
        new = [conv_node(graph, merged, x, y, na[0].name or "conv")]
    else:
        bias = None if A.b is None and B.b is None else (0 if A.b is None else A.b) + (0 if B.b is None else B.b)
        new = dense_nodes(graph, A.W + B.W, bias, x, y, na[0].name or "dense")
    graph.replace_chain([*na, *nb, add], new + _plus_const(graph, y, K, out, na[0].name or "parallel"))
    res.changed += 1
    res.details.append(f"fused parallel branches {label}")
