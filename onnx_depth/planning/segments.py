"""Candidate segments for LayerMerge, found on any DAG (no per-architecture code).

Run this on the graph after the LOSSLESS passes (BatchNorm folded, exact merges done).

Chains
------
A *chain* is a path of linear layers (Conv with constant weights; with ``dense=True`` also
Gemm / MatMul(+bias Add) with a constant 2-D weight) joined by *junctions*. After layer i comes
junction i, which is, in this order and each optional:

* a residual ``Add`` joining the layer output with the tensor of an earlier position p of the
  same chain (identity shortcut), or with the output of one layer reading that tensor (a
  projection shortcut such as ResNet's 1x1 stride-2 downsample): the residual *span* (p, i];
* one removable activation: Relu, Clip (ReLU6 included; constant bounds), LeakyRelu, PRelu
  (constant slope).

Each intermediate tensor of a junction must have a single consumer. The junction's last tensor
is the *position tensor* t_i; t_0 is the chain input. The chain continues with a layer reading
t_i (a layer whose output goes straight into an Add is taken last: it is probably a shortcut).
Anything else (pooling, Concat, Resize, normalization, Mul, non-removable activations, a
non-residual Add, a layer of the other kind) ends the chain. A position whose tensor is read by
anything other than the next layer and the chain's own residual joins, or is a graph output, is
*pinned*: no segment may remove it.

Segments and options
--------------------
Positions 0..L are activation sites (some have no activation). A segment (st, end] covers layers
st+1..end: the activations strictly inside are removed, the layers become one operator, and the
activation at `end` is kept. A segment is valid when no pinned position lies strictly inside and
every residual span (p, q] is either untouched, contains the segment (p <= st, end <= q: the Add
stays an Add, at the segment's end when q == end), or lies inside it (st <= p, q <= end: the
residual is fused, x + B(x) -> one conv with the identity added, as kernels.add_identity /
kernels.add_parallel do).

Options of a segment (what the DP asks for):

* ``keep``: a single layer as it is (the original model is the plan of all keep options);
* ``merge``: two or more layers composed into one conv (kernels.compose: the kernel grows) or
  one dense layer;
* ``prune``: some layers replaced by identity (a conv needs c_in == c_out, stride 1 and a
  size-preserving padding; a dense layer a square weight), the rest merged; pruning everything
  leaves an identity (or 2x for a fused residual whose branch was pruned).

Several layers kept apart with the activations between them removed is not an option: it costs
what the single-layer segments cost and keeps less, so the DP would never pick it.

Only shapes matter for latency, so merged geometry is computed by the kernel functions on
one-channel proxy weights (the same compose / add_identity / add_parallel code; groups combine
by gcd, as in compose) and timing models get random weights. Border exactness is ignored here (allow_inexact
semantics): which merges are lossless is the rewrite's business, not the latency table's.

Bounds keep profiling finite: at most `max_layers` layers per segment, merged kernel extent at
most `max_kernel`, and merged operators costing more than `max_mac_ratio` times the MACs of
what they replace are not enumerated (they cannot win on latency; timing them would dominate
profiling time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from math import gcd, prod
from typing import Iterable, Iterator, Sequence

import numpy as np
import onnx

from ..ir import Graph, Node
from ..ir.exporter import to_proto
from ..ir.extract import extract, extract_graph
from ..ir.patterns import is_op, sole_consumer
from ..kernels import ConvSpec, add_identity, add_parallel, compose
from ..passes.layer_io import conv_node, dense_nodes, read_conv, read_dense

ACTIVATION_OPS: tuple[str, ...] = ("Relu", "Clip", "LeakyRelu", "PRelu")

DEFAULT_MAX_LAYERS = 6
DEFAULT_MAX_KERNEL = 7
DEFAULT_MAX_MAC_RATIO = 4.0


# ---------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geom:
    """Shape-level description of one linear operator: a conv (channels, groups, kernel,
    strides, dilations, explicit pads) or a dense layer (n_in -> n_out over the last axis)."""

    kind: str
    c_in: int
    c_out: int
    group: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()

    @classmethod
    def of_conv(cls, spec: ConvSpec) -> "Geom":
        return cls("conv", spec.in_channels, spec.out_channels, spec.group, spec.kernel_shape,
                   tuple(spec.strides), tuple(spec.dilations), tuple(spec.pads))

    @classmethod
    def of_dense(cls, n_in: int, n_out: int) -> "Geom":
        return cls("dense", int(n_in), int(n_out))

    @property
    def extent(self) -> tuple[int, ...]:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilations))

    def proxy(self) -> ConvSpec:
        """A one-channel, one-group ConvSpec of this geometry: the kernel functions' kernel,
        stride, dilation and padding rules do not depend on channels or groups, so they run on
        it in microseconds (the group of a composition is the gcd of the groups)."""
        w = np.zeros((1, 1, *self.kernel), np.float32)
        return ConvSpec(w, None, self.strides, self.dilations, self.pads, 1)

    @property
    def size_preserving(self) -> bool:
        """Output grid == input grid for every input size (stride 1, pads sum to extent - 1)."""
        if self.kind == "dense":
            return True
        r = len(self.kernel)
        return all(s == 1 for s in self.strides) and all(
            self.pads[a] + self.pads[a + r] == self.extent[a] - 1 for a in range(r))

    @property
    def prunable(self) -> bool:
        """May be replaced by identity: c_in == c_out and (conv) stride 1, size-preserving."""
        return self.c_in == self.c_out and self.size_preserving

    def out_shape(self, in_shape: Sequence[int]) -> tuple[int, ...]:
        if self.kind == "dense":
            return (*tuple(in_shape[:-1]), self.c_out)
        sp = self.proxy().output_spatial_shape(tuple(in_shape[2:]))
        return (int(in_shape[0]), self.c_out, *sp)

    def macs(self, in_shape: Sequence[int]) -> int:
        if self.kind == "dense":
            return int(prod(in_shape[:-1])) * self.c_in * self.c_out
        out = self.out_shape(in_shape)
        return int(in_shape[0]) * self.c_out * (self.c_in // self.group) * prod(self.kernel) * prod(out[2:])

    def describe(self) -> str:
        if self.kind == "dense":
            return f"Dense {self.c_in}->{self.c_out}"
        k = "x".join(map(str, self.kernel))
        s = "x".join(map(str, self.strides)) if len(set(self.strides)) > 1 else str(self.strides[0])
        parts = [k, f"s{s}", f"g{self.group}"]
        if max(self.dilations) > 1:
            parts.append(f"d{max(self.dilations)}")
        if any(self.pads):
            parts.append("p" + ",".join(map(str, self.pads)) if len(set(self.pads)) > 1 else f"p{self.pads[0]}")
        return f"Conv[{','.join(parts)}] {self.c_in}->{self.c_out}"

    def random_spec(self, rng: np.random.Generator) -> ConvSpec:
        """A ConvSpec of this geometry at full size with random weights and bias (for timing)."""
        shape = (self.c_out, self.c_in // self.group, *self.kernel)
        fan_in = max(int(prod(shape[1:])), 1)
        w = (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(1.0 / fan_in)))
        b = rng.standard_normal(self.c_out, dtype=np.float32) * np.float32(0.01)
        return ConvSpec(w, b, self.strides, self.dilations, self.pads, self.group)


@lru_cache(maxsize=4096)
def compose_geom(a: Geom | None, b: Geom | None) -> Geom | None:
    """Geometry of b∘a (None is the identity). ValueError when they do not chain."""
    if a is None:
        return b
    if b is None:
        return a
    if a.kind != b.kind:
        raise ValueError(f"cannot compose {a.kind} with {b.kind}")
    if a.c_out != b.c_in:
        raise ValueError(f"{b.describe()} expects {b.c_in} channels, {a.describe()} produces {a.c_out}")
    if a.kind == "dense":
        return Geom.of_dense(a.c_in, b.c_out)
    s = compose(a.proxy(), b.proxy())
    return Geom("conv", a.c_in, b.c_out, gcd(a.group, b.group), s.kernel_shape, tuple(s.strides),
                tuple(s.dilations), tuple(s.pads))


@lru_cache(maxsize=4096)
def residual_geom(inner: Geom | None, branch: Geom | None, channels: int) -> Geom | None:
    """Geometry of branch(x) + inner(x) (branch None: the identity shortcut x). None: the
    result is a scaled identity (both sides identity)."""
    if branch is None:
        if inner is None:
            return None
        if inner.c_in != inner.c_out:
            raise ValueError(f"residual needs c_in == c_out, {inner.describe()}")
        if inner.kind == "conv":
            add_identity(inner.proxy())
        return inner
    if inner is None:
        return residual_geom(branch, None, channels)
    if (inner.c_in, inner.c_out) != (branch.c_in, branch.c_out) or inner.kind != branch.kind:
        raise ValueError(f"parallel branches differ: {inner.describe()} vs {branch.describe()}")
    if inner.kind == "dense":
        return inner
    s = add_parallel(inner.proxy(), branch.proxy())
    return Geom("conv", inner.c_in, inner.c_out, gcd(inner.group, branch.group), s.kernel_shape,
                tuple(s.strides), tuple(s.dilations), tuple(s.pads))


# ---------------------------------------------------------------------------------- chains
@dataclass(eq=False)
class Layer:
    """One linear layer: its nodes (Conv; Gemm; MatMul [+ bias Add]), input x, output y."""

    nodes: tuple[Node, ...]
    x: str
    y: str
    geom: Geom
    in_shape: tuple[int, ...]

    @property
    def kind(self) -> str:
        return self.geom.kind

    @property
    def name(self) -> str:
        return self.nodes[0].name or self.nodes[0].label

    @property
    def macs(self) -> int:
        return self.geom.macs(self.in_shape)


@dataclass(eq=False)
class Span:
    """A residual join: the Add at junction q reads t_p (branch None) or branch(t_p)."""

    p: int
    q: int
    add: Node
    branch: Layer | None = None


@dataclass(eq=False)
class Chain:
    id: int
    layers: list[Layer]
    tensors: list[str]
    acts: list[Node | None]
    spans: list[Span] = field(default_factory=list)
    pinned: frozenset[int] = frozenset()
    shapes: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def L(self) -> int:
        return len(self.layers)

    @property
    def kind(self) -> str:
        return self.layers[0].kind

    def layer(self, i: int) -> Layer:
        """Layer i (1-based: between positions i-1 and i)."""
        return self.layers[i - 1]

    def span_at(self, q: int) -> Span | None:
        for s in self.spans:
            if s.q == q:
                return s
        return None

    def check(self, st: int, end: int) -> str | None:
        """Why (st, end] is not a valid segment (None if it is)."""
        if not 0 <= st < end <= self.L:
            return f"({st},{end}] is outside 0..{self.L}"
        for k in range(st + 1, end):
            if k in self.pinned:
                return f"position {k} ({self.tensors[k]!r}) is needed outside the chain"
        for s in self.spans:
            if end <= s.p or st >= s.q:
                continue
            if s.p <= st and end <= s.q:
                continue
            if st <= s.p and s.q <= end:
                continue
            return f"cuts residual span ({s.p},{s.q}]"
        return None

    def describe(self) -> str:
        ops = "".join("C" if lay.kind == "conv" else "D" for lay in self.layers)
        return (f"chain {self.id}: {self.L} {self.kind} layers from {self.layer(1).name} to "
                f"{self.layer(self.L).name}, {len(self.spans)} residual spans, "
                f"{len(self.pinned)} pinned positions [{ops}]")


class _Reader:
    """Reads the layer starting at a node, once per node (reading a dense layer copies its
    weight)."""

    def __init__(self, graph: Graph, dense: bool) -> None:
        self.graph, self.dense = graph, dense
        self._cache: dict[int, Layer | None] = {}

    def __call__(self, node: Node) -> Layer | None:
        if node.id not in self._cache:
            self._cache[node.id] = _read_layer(self.graph, node, self.dense)
        return self._cache[node.id]


def _read_layer(graph: Graph, node: Node, dense: bool) -> Layer | None:
    try:
        if is_op(node, "Conv"):
            spec, _ = read_conv(graph, node, exclusive=False)
            if spec is None:
                return None
            x, y = node.inputs[0], node.outputs[0]
            geom = Geom.of_conv(spec)
            nodes: tuple[Node, ...] = (node,)
        elif dense and is_op(node, "Gemm", "MatMul"):
            d, _ = read_dense(graph, node, exclusive=False)
            if d is None:
                return None
            x, y, nodes = d.x, d.y, tuple(d.nodes)
            geom = Geom.of_dense(d.W.shape[0], d.W.shape[1])
        else:
            return None
    except (TypeError, ValueError, KeyError):  # an odd attribute combination: not a candidate
        return None
    xs, ys = graph.static_shape(x), graph.static_shape(y)
    if xs is None or ys is None:
        return None
    if geom.kind == "conv" and (len(xs) != len(geom.kernel) + 2 or xs[1] != geom.c_in):
        return None
    if geom.kind == "dense" and (not xs or xs[-1] != geom.c_in):
        return None
    return Layer(nodes, x, y, geom, tuple(xs))


def _removable_activation(graph: Graph, node: Node | None, t: str) -> bool:
    if node is None or not is_op(node, *ACTIVATION_OPS) or not node.inputs or node.inputs[0] != t:
        return False
    if len([o for o in node.outputs if o]) != 1:
        return False
    return all(not extra or graph.is_constant(extra) for extra in node.inputs[1:])


def _is_shortcut_like(graph: Graph, layer: Layer) -> bool:
    c = sole_consumer(graph, layer.y)
    return is_op(c, "Add")


def _residual(graph: Graph, add: Node | None, y: str, q: int, pos_of: dict[str, int],
              assigned: set[int], read: _Reader, kind: str) -> Span | None:
    if not is_op(add, "Add") or add.id in assigned or len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
        return None
    other = add.inputs[1] if add.inputs[0] == y else add.inputs[0]
    shape = graph.static_shape(y)
    if shape is None or graph.static_shape(other) != shape or graph.static_shape(add.outputs[0]) != shape:
        return None
    if other in pos_of:
        return Span(pos_of[other], q, add)
    prod_ = graph.producer(other)
    if prod_ is None or prod_.id in assigned or sole_consumer(graph, other) is not add:
        return None
    branch = read(prod_)
    if branch is None or branch.y != other or branch.kind != kind or branch.x not in pos_of:
        return None
    if any(n.id in assigned for n in branch.nodes):
        return None
    return Span(pos_of[branch.x], q, add, branch)


def _walk(graph: Graph, first: Layer, assigned: set[int], read: _Reader, chain_id: int) -> Chain:
    layers = [first]
    tensors = [first.x]
    acts: list[Node | None] = [None]
    spans: list[Span] = []
    pos_of = {first.x: 0}
    assigned.update(n.id for n in first.nodes)
    while True:
        i = len(layers)
        cur = layers[-1]
        t = cur.y
        span = _residual(graph, sole_consumer(graph, t), t, i, pos_of, assigned, read, cur.kind)
        if span is not None:
            spans.append(span)
            assigned.add(span.add.id)
            if span.branch is not None:
                assigned.update(n.id for n in span.branch.nodes)
            t = span.add.outputs[0]
        act = sole_consumer(graph, t)
        if _removable_activation(graph, act, t) and act.id not in assigned:
            assigned.add(act.id)
            t = act.outputs[0]
        else:
            act = None
        tensors.append(t)
        acts.append(act)
        pos_of[t] = i
        nxt: Layer | None = None
        fallback: Layer | None = None
        for c in graph.consumers(t):
            if c.id in assigned:
                continue
            cand = read(c)
            if cand is None or cand.x != t or cand.kind != cur.kind or any(n.id in assigned for n in cand.nodes):
                continue
            if _is_shortcut_like(graph, cand):
                fallback = fallback or cand
            else:
                nxt = cand
                break
        nxt = nxt or fallback
        if nxt is None:
            break
        layers.append(nxt)
        assigned.update(n.id for n in nxt.nodes)
    chain = Chain(chain_id, layers, tensors, acts, spans)
    pinned = set()
    for i in range(1, chain.L):
        t = tensors[i]
        allowed = {chain.layer(i + 1).nodes[0].id}
        for s in spans:
            if s.p == i:
                allowed.add(s.add.id if s.branch is None else s.branch.nodes[0].id)
        if graph.is_graph_output(t) or any(c.id not in allowed for c in graph.consumers(t)):
            pinned.add(i)
    chain.pinned = frozenset(pinned)
    chain.shapes = [tuple(graph.static_shape(t) or ()) for t in tensors]
    return chain


def find_chains(graph: Graph, *, dense: bool = True) -> list[Chain]:
    """All chains of linear layers of `graph` (see the module docstring), in topological order
    of their first layer. Every layer belongs to at most one chain."""
    read = _Reader(graph, dense)
    assigned: set[int] = set()
    chains: list[Chain] = []
    deferred: list[Node] = []
    for sweep in (0, 1):
        for node in graph.topological_order() if sweep == 0 else deferred:
            if node.id in assigned:
                continue
            layer = read(node)
            if layer is None or any(n.id in assigned for n in layer.nodes):
                continue
            if sweep == 0 and _is_shortcut_like(graph, layer):
                deferred.append(node)  # probably a projection shortcut: claimed by a span, or later
                continue
            chains.append(_walk(graph, layer, assigned, read, len(chains)))
    return chains


# ---------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class SegmentOption:
    """One way to implement segment (st, end] of a chain.

    kept: the layers that stay (merged into one operator when several); the others are pruned.
    fused: q of the residual spans folded into the operator; keeps_add: the residual Add at
    `end` stays an Add. geom: the operator replacing the layers (None: identity, or a 2x scale
    when `scale`). key: shape-level structure (equal keys give the same timing model up to
    weights and names); label: human-readable description."""

    chain: int
    st: int
    end: int
    kind: str
    kept: tuple[int, ...]
    fused: tuple[int, ...]
    keeps_add: bool
    geom: Geom | None
    scale: bool
    macs: int
    macs_original: int
    key: str
    label: str

    @property
    def id(self) -> str:
        """Stable identifier: chain, segment, kind and kept layers."""
        return f"c{self.chain}({self.st},{self.end}]:{self.kind}:{','.join(map(str, self.kept)) or '-'}"

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(range(self.st + 1, self.end + 1))

    @property
    def pruned(self) -> tuple[int, ...]:
        return tuple(j for j in self.layers if j not in self.kept)


def _act_descriptor(graph: Graph, act: Node | None) -> list:
    if act is None:
        return []
    attrs = sorted((k, repr(onnx.helper.get_attribute_value(a))) for k, a in act.attributes.items())
    extras = [list(graph.shape(t) or ()) if t else None for t in act.inputs[1:]]
    return [act.op_type, attrs, extras]


class GeomAlgebra:
    """The algebra `fold_map` evaluates in for planning: shapes only (see `Geom`)."""

    @staticmethod
    def layer(layer: "Layer") -> Geom:
        return layer.geom

    @staticmethod
    def compose(a, b):
        return compose_geom(a, b)

    @staticmethod
    def scale(m, s: float, *, on_input: bool = False):
        return m

    @staticmethod
    def residual(inner, branch, channels: int):
        return residual_geom(inner, branch, channels)


def _compose_map(alg, a, b):
    """b∘a where either may be None (identity) or a float (that multiple of the identity)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, float) and isinstance(b, float):
        return a * b
    if isinstance(a, float):  # b(s x): the input is scaled (a bias is not)
        return alg.scale(b, a, on_input=True)
    if isinstance(b, float):  # s a(x): weight and bias are scaled
        return alg.scale(a, b)
    return alg.compose(a, b)


def _residual_map(alg, inner, branch, channels: int):
    """branch(x) + inner(x) (branch None: the identity shortcut; inner None / float: a multiple
    of the identity)."""
    if branch is None and (inner is None or isinstance(inner, float)):
        return 2.0 if inner is None else inner + 1.0
    if branch is not None and isinstance(inner, float):
        # s*I + B = s * (I + B/s); a zero inner map is just the branch
        if inner == 0.0:
            return branch
        return alg.scale(alg.residual(alg.scale(branch, 1.0 / inner), None, channels), inner)
    if inner is None:
        return alg.residual(branch, None, channels)
    return alg.residual(inner, branch, channels)


def fold_map(chain: "Chain", a: int, b: int, kept: frozenset[int], fused: "set[int] | frozenset[int]",
             skip_end_span: bool, alg=GeomAlgebra):
    """The linear map t_a -> junction b (before b's activation) with the activations between
    removed, the layers not in `kept` pruned and the residual spans ending in `fused` folded in,
    evaluated in `alg` (GeomAlgebra: geometry; planning.realize: real weights). Returns None
    (identity), a float (a multiple of the identity) or the algebra's operator."""
    maps: dict[int, object] = {a: None}
    for j in range(a + 1, b + 1):
        m = maps[j - 1]
        if j in kept:
            m = _compose_map(alg, m, alg.layer(chain.layer(j)))
        sp = chain.span_at(j)
        if sp is not None and j in fused and sp.p >= a and not (j == b and skip_end_span):
            inner = fold_map(chain, sp.p, j, kept, fused, True, alg)
            branch = None if sp.branch is None else alg.layer(sp.branch)
            channels = chain.shapes[sp.p][1] if len(chain.shapes[sp.p]) > 1 else 0
            m = _compose_map(alg, maps[sp.p], _residual_map(alg, inner, branch, channels))
        maps[j] = m
    return maps[b]


def _linear_map(chain: Chain, a: int, b: int, kept: frozenset[int], fused: set[int],
                skip_end_span: bool) -> tuple[Geom | None, bool]:
    """(geometry of the map t_a -> junction b before its activation, whether it is a scale)."""
    m = fold_map(chain, a, b, kept, fused, skip_end_span)
    if isinstance(m, float):
        return None, True
    return m, False


def _option(chain: Chain, graph: Graph, st: int, end: int, kept: tuple[int, ...],
            max_kernel: int, max_mac_ratio: float) -> SegmentOption | None:
    single = end == st + 1
    kind = "keep" if single and kept == (end,) else ("merge" if len(kept) == end - st else "prune")
    fused: set[int] = set()
    keeps_add = False
    for s in chain.spans:
        if st <= s.p and s.q <= end and not (kind == "keep" and s.p == st and s.q == end):
            fused.add(s.q)
    end_span = chain.span_at(end)
    if end_span is not None and end not in fused:
        keeps_add = True
    try:
        geom, scale = _linear_map(chain, st, end, frozenset(kept), fused, keeps_add)
    except ValueError:
        return None
    x_shape = chain.shapes[st]
    # the tensor the new operator must produce: the layer output, or the fused Add's output
    target = end_span.add.outputs[0] if (end_span is not None and end in fused) else chain.layer(end).y
    target_shape = tuple(graph.static_shape(target) or ())
    if geom is not None:
        if geom.kind == "conv" and max(geom.extent) > max_kernel and kind != "keep":
            return None
        try:
            if geom.out_shape(x_shape) != target_shape:
                return None
        except ValueError:
            return None
    elif tuple(x_shape) != target_shape:
        return None
    orig = sum(chain.layer(j).macs for j in range(st + 1, end + 1))
    branch_macs = 0
    for q in fused:
        sp = chain.span_at(q)
        if sp is not None and sp.branch is not None:
            orig += sp.branch.macs
    if keeps_add and end_span is not None and end_span.branch is not None:
        branch_macs = end_span.branch.macs
        orig += branch_macs
    macs = (geom.macs(x_shape) if geom is not None else 0) + branch_macs
    if kind != "keep" and orig > 0 and macs > max_mac_ratio * orig:
        return None
    act = chain.acts[end]
    res: list = []
    if keeps_add and end_span is not None:
        res = ["add", end_span.p == st, list(chain.shapes[end_span.p]),
               None if end_span.branch is None else [n.op_type for n in end_span.branch.nodes] + [repr(end_span.branch.geom)]]
    if kind == "keep":
        op = [n.op_type for n in chain.layer(end).nodes] + [repr(chain.layer(end).geom)]
    else:
        op = ["new", repr(geom), scale]
    key = json.dumps([kind == "keep", op, list(x_shape), res, _act_descriptor(graph, act)], separators=(",", ":"))
    what = "identity" if geom is None and not scale else ("2x scale" if geom is None else geom.describe())
    extras = []
    if fused:
        extras.append("+residual fused")
    if keeps_add:
        extras.append("+Add")
    if act is not None:
        extras.append(f"+{act.op_type}")
    spatial = "x".join(map(str, x_shape[2:])) if chain.kind == "conv" else "x".join(map(str, x_shape[:-1]))
    pruned = [j for j in range(st + 1, end + 1) if j not in kept]
    label = (f"c{chain.id}({st},{end}] {kind}{' pruned ' + ','.join(map(str, pruned)) if pruned else ''}: "
             f"{what} @{spatial} {' '.join(extras)}".rstrip())
    return SegmentOption(chain.id, st, end, kind, tuple(kept), tuple(sorted(fused)), keeps_add, geom,
                         scale, int(macs), int(orig), key, label)


def enumerate_options(chain: Chain, graph: Graph, *, max_layers: int = DEFAULT_MAX_LAYERS,
                      max_kernel: int = DEFAULT_MAX_KERNEL,
                      max_mac_ratio: float = DEFAULT_MAX_MAC_RATIO) -> Iterator[SegmentOption]:
    """Every option of every valid segment of `chain` within the bounds."""
    for st in range(chain.L):
        for end in range(st + 1, min(chain.L, st + max_layers) + 1):
            if chain.check(st, end) is not None:
                continue
            idx = range(st + 1, end + 1)
            prunable = [j for j in idx if chain.layer(j).geom.prunable]
            for r in range(len(prunable) + 1):
                for pruned in combinations(prunable, r):
                    kept = tuple(j for j in idx if j not in pruned)
                    opt = _option(chain, graph, st, end, kept, max_kernel, max_mac_ratio)
                    if opt is not None:
                        yield opt


# ---------------------------------------------------------------------------------- models
def _segment_nodes(chain: Chain, st: int, end: int) -> list[Node]:
    """The original nodes of segment (st, end]: layers, activations (the one at `end`
    included), residual Adds joined inside or at `end` and their shortcut layers."""
    out: list[Node] = []
    for j in range(st + 1, end + 1):
        out.extend(chain.layer(j).nodes)
        sp = chain.span_at(j)
        if sp is not None:
            out.append(sp.add)
            if sp.branch is not None:
                out.extend(sp.branch.nodes)
        if chain.acts[j] is not None:
            out.append(chain.acts[j])
    return out


def _by_output(g: Graph, node: Node) -> Node:
    n = g.producer(node.outputs[0])
    if n is None:
        raise ValueError(f"{node.label} is not in the graph")
    return n


def _rewrite(g: Graph, chain: Chain, opt: SegmentOption, rng: np.random.Generator, op=None) -> None:
    """Replace the option's segment in `g` (a graph holding the segment's tensors by name) by
    its operator: `op` as `fold_map` returns it in a real-weight algebra (planning.realize), or
    random weights when None. `keep` changes nothing."""
    if opt.kind == "keep":
        return
    old: list[Node] = []
    for j in range(opt.st + 1, opt.end + 1):
        old.extend(chain.layer(j).nodes)
        if j < opt.end and chain.acts[j] is not None:
            old.append(chain.acts[j])
        sp = chain.span_at(j)
        if sp is not None and j in opt.fused:
            old.append(sp.add)
            if sp.branch is not None:
                old.extend(sp.branch.nodes)
    old = [_by_output(g, n) for n in old]
    end_span = chain.span_at(opt.end)
    out = end_span.add.outputs[0] if (end_span is not None and opt.end in opt.fused) else chain.layer(opt.end).y
    x = chain.tensors[opt.st]
    base = f"merged.c{opt.chain}.{opt.st}_{opt.end}"
    if opt.geom is None:
        if opt.scale:
            k = 2.0 if op is None else float(op)
            two = g.add_const(np.array(k, np.float32), base + ".scale")
            new = [Node("Mul", [x, two], [out], name=g.fresh_name(base))]
        else:
            new = [Node("Identity", [x], [out], name=g.fresh_name(base))]
    elif opt.geom.kind == "conv":
        new = [conv_node(g, opt.geom.random_spec(rng) if op is None else op, x, out, base)]
    else:
        if op is None:
            n_in, n_out = opt.geom.c_in, opt.geom.c_out
            W = rng.standard_normal((n_in, n_out), dtype=np.float32) * np.float32(np.sqrt(1.0 / n_in))
            b = rng.standard_normal(n_out, dtype=np.float32) * np.float32(0.01)
        else:
            # a bias-free chain composes to b = None: np.asarray(None, np.float32) would be a NaN scalar
            W, b = np.asarray(op[0], np.float32), (None if op[1] is None else np.asarray(op[1], np.float32))
        new = dense_nodes(g, W, b, x, out, base)
    g.replace_chain(old, new)


@dataclass(eq=False)
class Candidates:
    """The chains of a graph and every option of every valid segment (see `candidates`)."""

    graph: Graph
    chains: list[Chain]
    options: list[SegmentOption]
    settings: dict

    def __post_init__(self) -> None:
        self._by_id = {o.id: o for o in self.options}

    def option(self, option_id: str) -> SegmentOption:
        return self._by_id[option_id]

    def by_segment(self) -> dict[tuple[int, int, int], list[SegmentOption]]:
        """{(chain, st, end): options}: the table the DP reads."""
        out: dict[tuple[int, int, int], list[SegmentOption]] = {}
        for o in self.options:
            out.setdefault((o.chain, o.st, o.end), []).append(o)
        return out

    def unique(self) -> dict[str, list[SegmentOption]]:
        """Options grouped by structural key: one timing model per group."""
        out: dict[str, list[SegmentOption]] = {}
        for o in self.options:
            out.setdefault(o.key, []).append(o)
        return out

    def original_plan(self) -> list[SegmentOption]:
        """The plan that is the original model: every layer its own `keep` segment."""
        plan = []
        for c in self.chains:
            for j in range(1, c.L + 1):
                plan.append(self._by_id[f"c{c.id}({j - 1},{j}]:keep:{j}"])
        return plan

    def check_plan(self, plan: Iterable[SegmentOption]) -> None:
        """ValueError unless `plan` tiles every chain with known options (a chain left out is
        taken as kept; a chain mentioned must be covered 0..L without gaps or overlaps)."""
        per: dict[int, list[SegmentOption]] = {}
        for o in plan:
            if self._by_id.get(o.id) is not o and self._by_id.get(o.id) != o:
                raise ValueError(f"option {o.id} is not a candidate of this graph")
            per.setdefault(o.chain, []).append(o)
        for cid, opts in per.items():
            opts.sort(key=lambda o: o.st)
            pos = 0
            for o in opts:
                if o.st != pos:
                    raise ValueError(f"chain {cid}: segments do not tile positions (gap or overlap at {pos})")
                pos = o.end
            if pos != self.chains[cid].L:
                raise ValueError(f"chain {cid}: plan ends at {pos}, chain has {self.chains[cid].L} layers")

    def fill(self, chosen: Iterable[SegmentOption]) -> list[SegmentOption]:
        """`chosen` plus single-layer `keep` options for every layer they leave uncovered
        (ValueError if chosen options overlap)."""
        plan = list(chosen)
        covered: set[tuple[int, int]] = set()
        for o in plan:
            for j in o.layers:
                if (o.chain, j) in covered:
                    raise ValueError(f"option {o.id} overlaps another at layer {j}")
                covered.add((o.chain, j))
        for c in self.chains:
            for j in range(1, c.L + 1):
                if (c.id, j) not in covered:
                    plan.append(self._by_id[f"c{c.id}({j - 1},{j}]:keep:{j}"])
        self.check_plan(plan)
        return plan

    def complete(self, plan: Iterable[SegmentOption]) -> list[SegmentOption]:
        """`plan` plus `keep` options for the chains it does not mention."""
        plan = list(plan)
        self.check_plan(plan)
        have = {o.chain for o in plan}
        return plan + [o for o in self.original_plan() if o.chain not in have]

    def model(self, opt: SegmentOption, *, seed: int = 0) -> onnx.ModelProto:
        """Standalone timing model of one option: the segment's nodes (ir.extract, random
        weights), the layers replaced by the option's operator (random weights), the activation
        at `end` and a kept residual Add as in the graph. Input t_st (plus the shortcut tensor of
        a kept Add), output t_end."""
        chain = self.chains[opt.chain]
        nodes = _segment_nodes(chain, opt.st, opt.end)
        sub = extract_graph(self.graph, nodes, random_weights=True, seed=seed,
                            outputs=[chain.tensors[opt.end]], name=f"segment.{opt.id}")
        _rewrite(sub, chain, opt, np.random.default_rng(seed))
        return to_proto(sub, check=False)

    # ---- cuts: what a segment boundary costs standalone ----------------------------------
    def cuts(self) -> list[tuple[int, int]]:
        """(chain, position) of every internal position: where the original plan cuts."""
        return [(c.id, i) for c in self.chains for i in range(1, c.L)]

    def pair_key(self, chain_id: int, i: int) -> str:
        """Structural key of the pair model at internal position i: layers i and i+1 as they
        are (see `pair_model`)."""
        c = self.chains[chain_id]
        a = self._by_id[f"c{chain_id}({i - 1},{i}]:keep:{i}"]
        b = self._by_id[f"c{chain_id}({i},{i + 1}]:keep:{i + 1}"]
        rel = [None if c.span_at(q) is None else c.span_at(q).p - (i - 1) for q in (i, i + 1)]
        return json.dumps(["pair", a.key, b.key, rel], separators=(",", ":"))

    def pair_model(self, chain_id: int, i: int, *, seed: int = 0) -> onnx.ModelProto:
        """Layers i and i+1 with their junctions, unchanged, as one standalone model (random
        weights). With the two single-layer models it measures what cutting at position i
        costs standalone: cut(i) = keep(i) + keep(i+1) - pair(i)."""
        c = self.chains[chain_id]
        if not 1 <= i < c.L:
            raise ValueError(f"position {i} is not internal to chain {chain_id} (1..{c.L - 1})")
        return extract(self.graph, _segment_nodes(c, i - 1, i + 1), random_weights=True, seed=seed,
                       outputs=[c.tensors[i + 1]], name=f"pair.c{chain_id}.{i}")

    def apply(self, plan: Iterable[SegmentOption], *, seed: int = 0) -> onnx.ModelProto:
        """The whole model with `plan` applied (new operators get random weights: for timing)."""
        return to_proto(self.apply_graph(plan, seed=seed), check=False)

    def apply_graph(self, plan: Iterable[SegmentOption], operators: "dict[str, object] | None" = None, *,
                    seed: int = 0, partial: bool = False) -> Graph:
        """A copy of the graph with `plan` applied. operators: option id -> its operator in a
        real-weight algebra (planning.realize); options without one get random weights.
        partial: `plan` may cover only some segments (the rest stays as it is)."""
        plan = list(plan)
        if partial:
            self.fill(plan)
        else:
            self.check_plan(plan)
        g = self.graph.copy()
        rng = np.random.default_rng(seed)
        for o in plan:
            _rewrite(g, self.chains[o.chain], o, rng, None if operators is None else operators.get(o.id))
        g.remove_dead_nodes()
        return g


def candidates(graph: Graph, *, max_layers: int = DEFAULT_MAX_LAYERS, max_kernel: int = DEFAULT_MAX_KERNEL,
               max_mac_ratio: float = DEFAULT_MAX_MAC_RATIO, dense: bool = True) -> Candidates:
    """Chains and every candidate option of `graph` (run the LOSSLESS passes first)."""
    if max_layers < 1:
        raise ValueError(f"max_layers must be >= 1, got {max_layers}")
    chains = find_chains(graph, dense=dense)
    options: list[SegmentOption] = []
    for c in chains:
        options.extend(enumerate_options(c, graph, max_layers=max_layers, max_kernel=max_kernel,
                                         max_mac_ratio=max_mac_ratio))
    settings = {"max_layers": max_layers, "max_kernel": max_kernel, "max_mac_ratio": max_mac_ratio, "dense": dense}
    return Candidates(graph, chains, options, settings)


__all__ = [
    "ACTIVATION_OPS",
    "Candidates",
    "Chain",
    "Geom",
    "Layer",
    "SegmentOption",
    "Span",
    "candidates",
    "compose_geom",
    "enumerate_options",
    "find_chains",
    "fold_map",
    "residual_geom",
]
