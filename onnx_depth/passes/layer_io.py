"""Read linear layers and BatchNorm out of the IR into kernel specs, and write them back.

The single place where ONNX attribute conventions (auto_pad, kernel_shape, Gemm's alpha/beta/
transB, BN's epsilon and opset variants) meet the pure math in onnx_depth.kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Node
from ..ir.patterns import const_or_none, constant_blocker, is_op
from ..kernels import ConvSpec, pads_from_auto_pad

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


def conv_node(graph: Graph, spec: ConvSpec, x: str, y: str, name: str) -> Node:
    """A new Conv node computing `spec` from tensor x into tensor y (weights become initializers)."""
    w = graph.add_const(np.asarray(spec.weight, np.float32), name + ".weight")
    inputs = [x, w]
    if spec.bias is not None:
        inputs.append(graph.add_const(np.asarray(spec.bias, np.float32), name + ".bias"))
    n = Node("Conv", inputs, [y], name=graph.fresh_name(name))
    n.set_attr("kernel_shape", [int(k) for k in spec.weight.shape[2:]])
    n.set_attr("strides", list(spec.strides))
    n.set_attr("dilations", list(spec.dilations))
    n.set_attr("pads", list(spec.pads))
    n.set_attr("group", int(spec.group))
    return n


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
    from ..kernels.dense_compose import gemm_to_affine64

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


def dense_nodes(graph: Graph, W: np.ndarray, b: np.ndarray | None, x: str, y: str, name: str) -> list[Node]:
    """Gemm for 2-D activations, MatMul (+ bias Add) otherwise."""
    rank = len(graph.shape(x) or ())
    wn = graph.add_const(np.asarray(W, np.float32), name + ".weight")
    if rank == 2:
        inputs = [x, wn] + ([graph.add_const(np.asarray(b, np.float32), name + ".bias")] if b is not None else [])
        return [Node("Gemm", inputs, [y], name=graph.fresh_name(name))]
    if b is None:
        return [Node("MatMul", [x, wn], [y], name=graph.fresh_name(name))]
    mid = graph.fresh_name(name + ".matmul_out")
    if graph.shape(y) is not None:
        graph.set_shape(mid, graph.elem_type(y) or 1, graph.shape(y))
    bn = graph.add_const(np.asarray(b, np.float32), name + ".bias")
    return [Node("MatMul", [x, wn], [mid], name=graph.fresh_name(name)), Node("Add", [mid, bn], [y], name=graph.fresh_name(name + ".add"))]


def dense_ending_at(graph: Graph, t: str) -> tuple[Dense | None, str | None]:
    """The dense unit (Gemm, or MatMul with its bias Add) whose output is tensor t."""
    p = graph.producer(t)
    if is_op(p, "Add"):
        for cand in p.inputs:
            q = graph.producer(cand)
            if is_op(q, "MatMul"):
                d, why = read_dense(graph, q)
                if d is not None and d.y == t:
                    return d, None
        return None, None
    if is_op(p, "Gemm", "MatMul"):
        d, why = read_dense(graph, p)
        if d is not None and d.y != t:
            return None, f"{p.label}: output is not {t!r}"
        return d, why
    return None, None
