"""Linear layer units read out of the IR into kernel specs: the one reader every pass and
criterion uses.

A *layer unit* is a linear layer plus what follows it and only it reads:

    Conv            [-> Add(per-channel constant c)] [-> BatchNormalization]     (channels: axis 1)
    Gemm | MatMul   [-> Add(bias over the last axis)] [-> BatchNormalization, 2-D only]

Rules (one set, for every user):

* weights are constant float32 initializers (a Conv's explicit pads; auto_pad SAME at stride 1
  or with a static input size; Gemm transA 0 with alpha / beta / transB folded into the canonical
  y = x @ W + b, W [n_in, n_out]; a MatMul weight is 2-D);
* a bias Add's constant c adds c[ch] at every position (`channel_vector`: shapes (), (1,),
  (C,) + (1,) * r after optional leading 1s, no broadcast that grows the tensor): the merged
  bias is b + c;
* BatchNormalization in inference mode, spatial 1, constant parameters, var + eps > 0, on the
  unit's channel axis (a dense unit only on 2-D [N, C] activations, where axis 1 is the output
  axis): s = gamma / sqrt(var + eps), t = beta - mean s, W' = s W (per output channel),
  b' = s b + t (`kernels.bn_fold`);
* every intermediate tensor has one consumer and is not a graph output.

`LayerUnit.folded()` is the unit as one operator (a ConvSpec, or a dense (W, b) in float64).
ONNX attribute conventions meet the pure math of onnx_depth.kernels here and nowhere else; the
writers (new Conv / Gemm / MatMul nodes) are in passes.layer_io.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node
from ..ir.patterns import const_or_none, constant_blocker, intermediate_blocker, is_op
from ..kernels import ConvSpec, affine_after_bn, fold_bn_after_conv, pads_from_auto_pad
from ..kernels.dense_compose import gemm_to_affine64

__all__ = ["BN", "Dense", "LayerUnit", "channel_vector", "dense_ending_at", "known_shape", "rank_of", "read_bn",
           "read_conv", "read_dense", "spatial_shape", "unit_ending_at"]

FLOAT = 1  # onnx.TensorProto.FLOAT: the kernels compute in float64 and write float32 only


def known_shape(graph: Graph, tensor: str) -> tuple[int, ...] | None:
    """The static shape of `tensor`, None if unknown or any dim is symbolic or negative
    (some exporters write -1 as a dim_value for a dynamic dim)."""
    s = graph.shape(tensor)
    if s is None or not all(isinstance(d, int) and d >= 0 for d in s):
        return None
    return tuple(s)


def rank_of(graph: Graph, tensor: str) -> int | None:
    s = graph.shape(tensor)
    return None if s is None else len(s)


def spatial_shape(graph: Graph, tensor: str) -> tuple[int, ...] | None:
    """Static spatial dims (axes 2..) of an N C ... tensor; the batch (and channel) dims may be
    symbolic, since no merge decision depends on them. None if any spatial dim is unknown."""
    s = graph.shape(tensor)
    if s is None or len(s) < 3 or not all(isinstance(d, int) and d > 0 for d in s[2:]):
        return None
    return tuple(int(d) for d in s[2:])


def _float32_blocker(graph: Graph, node: Node, slots) -> str | None:
    for slot in slots:
        if slot < len(node.inputs) and node.inputs[slot] and graph.is_constant(node.inputs[slot]):
            if graph.const(node.inputs[slot]).dtype != np.float32:
                return f"{node.label}: input {node.inputs[slot]!r} is {graph.const(node.inputs[slot]).dtype}, only float32 layers are rewritten"
    return None


@dataclass
class BN:
    scale: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float


def read_bn(graph: Graph, node: Node) -> tuple[BN | None, str | None]:
    """Inference BatchNormalization parameters, or the reason they cannot be used."""
    if node.attr("training_mode", 0):
        return None, f"{node.label}: BatchNormalization in training mode"
    if any(o and graph.uses(o) for o in node.outputs[1:]):
        return None, f"{node.label}: BatchNormalization running-stat outputs are used"
    if node.attr("spatial", 1) != 1:
        return None, f"{node.label}: BatchNormalization with spatial=0"
    why = _float32_blocker(graph, node, range(1, 5))
    if why:
        return None, why
    if graph.elem_type(node.inputs[0]) not in (None, FLOAT):
        return None, f"{node.label}: input is not float32"
    arrays = []
    for slot in range(1, 5):
        a = const_or_none(graph, node, slot)
        if a is None:
            return None, f"{node.label}: BatchNormalization parameters are not constants"
        arrays.append(np.asarray(a, np.float64).reshape(-1))
    eps = float(node.attr("epsilon", 1e-5))
    if len({a.shape for a in arrays}) != 1 or np.any(arrays[3] + eps <= 0):
        return None, f"{node.label}: BatchNormalization parameters have different sizes or var + eps <= 0"
    return BN(*arrays, eps=eps), None


def read_conv(graph: Graph, node: Node, *, exclusive: bool = True) -> tuple[ConvSpec | None, str | None]:
    """ConvSpec of a Conv node with constant weights (explicit pads), or the reason it has none."""
    if not is_op(node, "Conv"):
        return None, f"{node.label}: not a Conv"
    for slot in (1, 2):
        why = constant_blocker(graph, node, slot, exclusive=exclusive)
        if why:
            return None, why
    why = _float32_blocker(graph, node, (1, 2))
    if why:
        return None, why
    w = graph.const(node.inputs[1])
    b = const_or_none(graph, node, 2)
    r = w.ndim - 2
    if r < 1:
        return None, f"{node.label}: weight of shape {w.shape} is not [O, C/g, *kernel]"
    strides = node.attr("strides", [1] * r)
    dilations = node.attr("dilations", [1] * r)
    auto_pad = node.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", "VALID", ""):
        pads = node.attr("pads", [0] * (2 * r)) if auto_pad != "VALID" else [0] * (2 * r)
    else:
        extent = [int(d) * (int(k) - 1) + 1 for k, d in zip(w.shape[2:], dilations)]
        try:
            # stride 1: SAME pads do not depend on the input size
            pads = pads_from_auto_pad(auto_pad, extent, strides, spatial_shape(graph, node.inputs[0]))
        except ValueError as e:
            return None, f"{node.label}: auto_pad {auto_pad}: {e}"
    try:
        spec = ConvSpec(w, b, tuple(strides), tuple(dilations), tuple(pads), int(node.attr("group", 1)))
    except ValueError as e:
        return None, f"{node.label}: {e}"
    return spec, None


@dataclass
class Dense:
    """y = x @ W + b over the last axis. nodes: the ONNX nodes forming it (Gemm, or MatMul[+Add])."""

    W: np.ndarray
    b: np.ndarray | None
    x: str
    y: str
    nodes: list[Node]


def read_dense(graph: Graph, node: Node, *, exclusive: bool = True) -> tuple[Dense | None, str | None]:
    """A Gemm (transA 0) or MatMul with constant 2-D weight, absorbing a following bias Add."""
    if is_op(node, "Gemm"):
        if node.attr("transA", 0):
            return None, f"{node.label}: Gemm with transA"
        why = _float32_blocker(graph, node, (1, 2))
        if why:
            return None, why
        for slot in (1, 2):
            why = constant_blocker(graph, node, slot, exclusive=exclusive)
            if why:
                return None, why
        try:
            W, b = gemm_to_affine64(
                graph.const(node.inputs[1]),
                const_or_none(graph, node, 2),
                alpha=node.attr("alpha", 1.0),
                beta=node.attr("beta", 1.0),
                transB=node.attr("transB", 0),
            )
        except ValueError as e:  # e.g. a C that depends on the row
            return None, f"{node.label}: {e}"
        return Dense(W, b, node.inputs[0], node.outputs[0], [node]), None
    if is_op(node, "MatMul"):
        why = constant_blocker(graph, node, 1, exclusive=exclusive) or _float32_blocker(graph, node, (1,))
        if why:
            return None, why
        W = np.asarray(graph.const(node.inputs[1]), np.float64)
        if W.ndim != 2:
            return None, f"{node.label}: MatMul weight is not 2-D"
        d = Dense(W, None, node.inputs[0], node.outputs[0], [node])
        _absorb_bias_add(graph, d)
        return d, None
    return None, f"{node.label}: not a Gemm/MatMul"


def _absorb_bias_add(graph: Graph, d: Dense) -> None:
    if graph.is_graph_output(d.y) or graph.uses(d.y) != 1:
        return
    (add,) = graph.consumers(d.y)
    if not is_op(add, "Add"):
        return
    other = add.inputs[1] if add.inputs[0] == d.y else add.inputs[0]
    # the bias is only read (the rewrite writes a new one), so a shared bias constant is fine
    if not graph.is_constant(other) or graph.const(other).dtype != np.float32:
        return
    b = np.asarray(graph.const(other), np.float64)
    n = d.W.shape[1]
    if b.size != n or b.shape[-1] != n:
        return
    out = graph.shape(add.outputs[0])
    src = graph.shape(d.y)
    if out is None or src is None or len(out) != len(src):
        return  # the bias must not broadcast the output to a bigger shape
    d.b = b.reshape(n)
    d.y = add.outputs[0]
    d.nodes.append(add)


def dense_ending_at(graph: Graph, t: str, *, exclusive: bool = True) -> tuple[Dense | None, str | None]:
    """The dense unit (Gemm, or MatMul with its bias Add) whose output is tensor t."""
    p = graph.producer(t)
    if is_op(p, "Add"):
        for cand in p.inputs:
            q = graph.producer(cand)
            if is_op(q, "MatMul"):
                d, why = read_dense(graph, q, exclusive=exclusive)
                if d is not None and d.y == t:
                    return d, None
        return None, None
    if is_op(p, "Gemm", "MatMul"):
        d, why = read_dense(graph, p, exclusive=exclusive)
        if d is not None and d.y != t:
            return None, f"{p.label}: output is not {t!r}"
        return d, why
    return None, None


def channel_vector(const, channels: int, trailing: int) -> np.ndarray | None:
    """c [channels] (float64) when adding `const` to a tensor [..., channels, *trailing dims]
    adds c[ch] at every position: shapes () or (1,) (a scalar), or (1, ..., 1, C, 1 * trailing)
    with at most one leading 1 beyond the channel axis; None otherwise (it aligns with another
    axis, or broadcasts the tensor to a bigger shape)."""
    C = np.asarray(const)
    if C.ndim > trailing + 2 or (C.ndim == trailing + 2 and C.shape[0] != 1):
        return None
    if C.size == 1:
        return np.full(channels, float(C.reshape(-1)[0]))
    if C.ndim < trailing + 1:
        return None  # aligns with a trailing axis
    ch, rest = C.shape[C.ndim - trailing - 1], C.shape[C.ndim - trailing:]
    if any(d != 1 for d in rest) or ch != channels:
        return None
    return np.asarray(C, np.float64).reshape(-1).copy()


@dataclass(eq=False)
class LayerUnit:
    """A linear layer with its bias Add and BatchNormalization (module docstring). layer: the
    Conv's ConvSpec or the Dense (a MatMul's bias Add included) as read; bias: a conv's added
    per-channel constant (bias_add its node); bn: the BatchNormalization after it."""

    kind: str  # "conv" | "dense"
    node: Node
    layer: "ConvSpec | Dense"
    x: str
    y: str
    bias_add: Node | None = None
    bias: np.ndarray | None = None
    bn_node: Node | None = None
    bn: "BN | None" = None

    @property
    def nodes(self) -> list[Node]:
        """Every node of the unit, in order."""
        core = list(self.layer.nodes) if isinstance(self.layer, Dense) else [self.node]
        return [*core, *([self.bias_add] if self.bias_add is not None else []), *([self.bn_node] if self.bn_node is not None else [])]

    @property
    def channels(self) -> int:
        return self.layer.out_channels if isinstance(self.layer, ConvSpec) else int(self.layer.W.shape[1])

    def folded(self):
        """The unit as one operator: a ConvSpec, or a dense (W [n_in, n_out], b) in float64."""
        bn = self.bn
        if isinstance(self.layer, ConvSpec):
            spec = self.layer
            if self.bias is not None:
                spec = ConvSpec(spec.weight, spec.bias_or_zeros() + self.bias, spec.strides, spec.dilations, spec.pads, spec.group)
            return spec if bn is None else fold_bn_after_conv(spec, bn.scale, bn.bias, bn.mean, bn.var, bn.eps)
        W, b = np.asarray(self.layer.W, np.float64), self.layer.b
        if bn is None:
            return W, (None if b is None else np.asarray(b, np.float64))
        return affine_after_bn(W, b, bn.scale, bn.bias, bn.mean, bn.var, bn.eps)


def _conv_bias_add(graph: Graph, add: Node, exclusive: bool):
    """(conv node, spec, per-channel vector, None) for Conv -> Add(constant), (None,)*3 + (why,)
    when the Add does not qualify, all None when no Conv feeds it."""
    if len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
        return None, None, None, None
    for k, cand in enumerate(add.inputs):
        q, other = graph.producer(cand), add.inputs[1 - k]
        if not is_op(q, "Conv") or not graph.is_constant(other):
            continue
        why = intermediate_blocker(graph, cand)
        if why:
            return None, None, None, f"{add.label}: {why}"
        spec, why = read_conv(graph, q, exclusive=exclusive)
        if spec is None:
            return None, None, None, why
        c = channel_vector(graph.const(other), spec.out_channels, spec.rank)
        if c is None:
            return None, None, None, f"{add.label}: not a per-channel bias of {q.label}"
        return q, spec, c, None
    return None, None, None, None


def unit_ending_at(graph: Graph, t: str, *, exclusive: bool = True) -> "tuple[LayerUnit | None, str | None]":
    """The layer unit whose output is tensor t: (unit, None); (None, why) when a linear layer
    produces t but does not qualify; (None, None) when none does. exclusive: the weights may not
    be shared with other nodes (they are about to be rewritten)."""
    p = graph.producer(t)
    bn_node = bn = None
    if is_op(p, "BatchNormalization"):
        bn, why = read_bn(graph, p)
        if bn is None:
            return None, why
        why = intermediate_blocker(graph, p.inputs[0])
        if why:
            return None, f"{p.label}: {why}"
        bn_node, p = p, graph.producer(p.inputs[0])
    end = t if bn_node is None else bn_node.inputs[0]
    if is_op(p, "Add"):
        q, spec, c, why = _conv_bias_add(graph, p, exclusive)
        if why:
            return None, why
        if q is not None:
            return _check_bn(graph, LayerUnit("conv", q, spec, q.inputs[0], t, p, c, bn_node, bn))
    if is_op(p, "Conv"):
        spec, why = read_conv(graph, p, exclusive=exclusive)
        if spec is None:
            return None, why
        return _check_bn(graph, LayerUnit("conv", p, spec, p.inputs[0], t, None, None, bn_node, bn))
    d, why = dense_ending_at(graph, end, exclusive=exclusive)
    if d is None:
        return None, why
    if any(intermediate_blocker(graph, n.outputs[0]) for n in d.nodes[:-1]):
        return None, f"{d.nodes[0].label}: its output is read elsewhere"
    return _check_bn(graph, LayerUnit("dense", d.nodes[0], d, d.x, t, None, None, bn_node, bn))


def _check_bn(graph: Graph, unit: LayerUnit):
    if unit.bn is None:
        return unit, None
    if unit.bn.scale.size != unit.channels:
        return None, f"{unit.bn_node.label}: {unit.bn.scale.size} channels, the layer has {unit.channels}"
    if unit.kind == "dense" and len(graph.shape(unit.x) or ()) != 2:
        return None, f"{unit.bn_node.label}: BatchNormalization after a dense layer on rank-{len(graph.shape(unit.x) or ())} activations normalises axis 1, not the layer's output axis"
    return unit, None
