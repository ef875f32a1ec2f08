"""Chains of linear layers joined by junctions (residual Adds, removable activations), on any DAG.

A *chain* is a path of linear layers (Conv with constant weights; with ``dense=True`` also
Gemm / MatMul(+bias Add) with a constant 2-D weight) joined by *junctions*. After layer i comes
junction i, which is, in this order and each optional:

* a residual ``Add`` joining the layer output with the tensor of an earlier position p of the
  same chain (identity shortcut), or with the output of one layer reading that tensor (a
  projection shortcut such as ResNet's 1x1 stride-2 downsample): the residual *span* (p, i];
* one removable activation (`JunctionActivation`): Relu, Clip (ReLU6 included; constant
  bounds), LeakyRelu (any slope), PRelu (constant slope); and, when another layer of the chain
  follows it, every other kind `analysis.activations` recognizes: GELU (Erf and Tanh forms,
  Gelu-20, com.microsoft Gelu / FastGelu / BiasGelu), SiLU (x*sigmoid(x)), HardSwish
  (decomposed and HardSwish-14), HardSigmoid, Elu, Sigmoid, Tanh. Removing one replaces it by a
  per-channel affine map (see `algebra` and `planning.activation_fit`).

Each intermediate tensor of a junction must have a single consumer (a decomposed activation's
input is read only by the activation's own nodes). The junction's last tensor is the *position
tensor* t_i; t_0 is the chain input. The chain continues with a layer reading t_i (a layer
whose output goes straight into an Add is taken last: it is probably a shortcut). Anything
else (pooling, Concat, Resize, normalization, a non-residual Add, a layer of the other kind)
ends the chain. A position whose tensor is read by anything other than the next layer and the
chain's own residual joins, or is a graph output, is *pinned*: no segment may remove it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ...analysis.activations import ActivationSite, find_activations
from ...ir import Graph, Node
from ...ir.patterns import is_op, sole_consumer
from ...passes.layer_io import read_conv, read_dense
from .geometry import Geom

ACTIVATION_OPS: tuple[str, ...] = ("Relu", "Clip", "LeakyRelu", "PRelu")
# activation kinds (analysis.activations) taken at a junction only when a layer follows them
LINEARIZABLE_KINDS: tuple[str, ...] = ("gelu", "silu", "hardswish", "hardsigmoid", "elu", "sigmoid", "tanh",
                                      "leaky_relu", "prelu", "relu", "clip")


@dataclass(eq=False)
class JunctionActivation:
    """A removable activation at a junction: its nodes (one, or a decomposed form such as GELU's
    Div-Erf-Add-Mul-Mul), pre-activation tensor x, output y and the analysis site describing it
    (None only for single-node forms `analysis.activations` does not describe)."""

    nodes: tuple[Node, ...]
    x: str
    y: str
    site: ActivationSite | None = None

    @property
    def op_type(self) -> str:
        if len(self.nodes) == 1:
            return self.nodes[0].op_type
        return self.site.op if self.site is not None else "+".join(n.op_type for n in self.nodes)

    @property
    def kind(self) -> str | None:
        return None if self.site is None else self.site.kind

    @property
    def name(self) -> str:
        """The name of its last node (the node writing y)."""
        return self.nodes[-1].name

    @property
    def inputs(self) -> list[str]:
        """x first, then the constant extra inputs of a single-node form (slope, bounds, bias)."""
        return list(self.nodes[0].inputs) if len(self.nodes) == 1 else [self.x]

    @property
    def outputs(self) -> list[str]:
        return [self.y]

    def descriptor(self, graph: Graph) -> list:
        """Shape-level structure (part of an option's timing key; single nodes as before)."""
        if len(self.nodes) == 1:
            n = self.nodes[0]
            attrs = sorted((k, repr(onnx.helper.get_attribute_value(a))) for k, a in n.attributes.items())
            extras = [list(graph.shape(t) or ()) if t else None for t in n.inputs[1:]]
            return [n.op_type, attrs, extras]
        return [self.op_type, [[n.op_type, sorted(n.attributes)] for n in self.nodes], []]


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
class LinearChain:
    """A chain (module docstring): layers 1..L, position tensors t_0..t_L, the activation at
    each junction (None: none), residual spans and pinned positions."""

    id: int
    layers: list[Layer]
    tensors: list[str]
    acts: list[JunctionActivation | None]
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
    """A single-node activation of ACTIVATION_OPS reading t, constant extra inputs."""
    if node is None or not is_op(node, *ACTIVATION_OPS) or not node.inputs or node.inputs[0] != t:
        return False
    if len([o for o in node.outputs if o]) != 1:
        return False
    return all(not extra or graph.is_constant(extra) for extra in node.inputs[1:])


def _site_activation(graph: Graph, t: str, site: ActivationSite | None,
                     assigned: set[int]) -> JunctionActivation | None:
    """The activation site reading t as a junction activation, if its nodes are its own: every
    consumer of t and of each inner tensor is one of its nodes, other inputs are constants."""
    if site is None or site.kind not in LINEARIZABLE_KINDS or graph.is_graph_output(t):
        return None
    ids = {n.id for n in site.nodes}
    if ids & assigned or any(c.id not in ids for c in graph.consumers(t)):
        return None
    inner = {o for n in site.nodes for o in n.outputs if o}
    for o in inner - {site.output}:
        if graph.is_graph_output(o) or any(c.id not in ids for c in graph.consumers(o)):
            return None
    for n in site.nodes:
        if any(i and i != t and i not in inner and not graph.is_constant(i) for i in n.inputs):
            return None
    return JunctionActivation(tuple(site.nodes), t, site.output, site)


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


def _walk(graph: Graph, first: Layer, assigned: set[int], read: _Reader, chain_id: int,
          sites: dict[str, ActivationSite]) -> LinearChain:
    layers = [first]
    tensors = [first.x]
    acts: list[JunctionActivation | None] = [None]
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
        pre = t
        node = sole_consumer(graph, t)
        act: JunctionActivation | None = None
        needs_next = False
        if _removable_activation(graph, node, t) and node.id not in assigned:
            act = JunctionActivation((node,), t, node.outputs[0], sites.get(t))
        else:
            act = _site_activation(graph, t, sites.get(t), assigned)
            needs_next = act is not None
        if act is not None:
            assigned.update(n.id for n in act.nodes)
            t = act.y
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
        if nxt is None and needs_next:  # kept outside the chain, as before this kind was removable
            assigned.difference_update(n.id for n in act.nodes)
            del pos_of[t]
            t = pre
            tensors[-1], acts[-1] = t, None
            pos_of[t] = i
        if nxt is None:
            break
        layers.append(nxt)
        assigned.update(n.id for n in nxt.nodes)
    chain = LinearChain(chain_id, layers, tensors, acts, spans)
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


def find_chains(graph: Graph, *, dense: bool = True) -> list[LinearChain]:
    """All chains of linear layers of `graph` (see the module docstring), in topological order
    of their first layer. Every layer belongs to at most one chain."""
    read = _Reader(graph, dense)
    sites = {s.input: s for s in find_activations(graph)}
    assigned: set[int] = set()
    chains: list[LinearChain] = []
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
            chains.append(_walk(graph, layer, assigned, read, len(chains), sites))
    return chains


__all__ = ["ACTIVATION_OPS", "LINEARIZABLE_KINDS", "JunctionActivation", "Layer", "LinearChain", "Span", "find_chains"]
