"""Matching helpers shared by all passes.

Every check returns a *reason* string when a rewrite must not happen (None when it may), so
passes can report exactly why they left something untouched.
"""

from __future__ import annotations

import numpy as np

from .graph import Graph
from .node import Node

STANDARD_DOMAINS = ("", "ai.onnx")


def is_op(node: Node | None, *op_types: str) -> bool:
    return node is not None and node.op_type in op_types and node.domain in STANDARD_DOMAINS


def sole_consumer(graph: Graph, tensor: str) -> Node | None:
    """The only node reading `tensor` through exactly one input slot, if it is not a graph output."""
    if graph.is_graph_output(tensor) or graph.uses(tensor) != 1:
        return None
    (c,) = graph.consumers(tensor)
    return c


def intermediate_blocker(graph: Graph, tensor: str) -> str | None:
    """Why the tensor between two fused operators cannot disappear (None if it can)."""
    if graph.is_graph_output(tensor):
        return f"intermediate tensor {tensor!r} is a graph output"
    n = graph.uses(tensor)
    if n != 1:
        return f"intermediate tensor {tensor!r} has {n} consumers"
    return None


def constant_blocker(graph: Graph, node: Node, slot: int, *, exclusive: bool = True) -> str | None:
    """Why input `slot` of `node` is not a rewritable constant (None if it is).

    exclusive: the rewrite changes the constant, so nobody else may read it.
    """
    if slot >= len(node.inputs) or not node.inputs[slot]:
        return None
    t = node.inputs[slot]
    if not graph.is_constant(t):
        return f"{node.label}: input {t!r} is not a constant"
    if exclusive and graph.uses(t) > 1:
        return f"{node.label}: weight {t!r} is shared with {graph.uses(t) - 1} other use(s)"
    return None


def const_or_none(graph: Graph, node: Node, slot: int) -> np.ndarray | None:
    if slot >= len(node.inputs) or not node.inputs[slot]:
        return None
    t = node.inputs[slot]
    return graph.const(t) if graph.is_constant(t) else None


def static_shape_blocker(graph: Graph, tensor: str) -> str | None:
    if graph.static_shape(tensor) is None:
        return f"tensor {tensor!r} has no static shape (dynamic or unknown)"
    return None


def bypass(graph: Graph, node: Node, keep_input: int = 0) -> bool:
    """Remove a single-output node that passes input `keep_input` through unchanged.

    Consumers are pointed at the input. When the output is a graph output, the producer of the
    input is renamed instead (if that is safe); otherwise the node is kept. Returns success.
    """
    src, dst = node.inputs[keep_input], node.outputs[0]
    if not graph.is_graph_output(dst):
        graph.replace_uses(dst, src)
        graph.remove_node(node)
        return True
    prod = graph.producer(src)
    if prod is None or graph.is_graph_output(src) or graph.uses(src) != 1:
        return False
    graph.remove_node(node)
    graph.remove_node(prod)
    prod.outputs = [dst if o == src else o for o in prod.outputs]
    graph.value_info.pop(src, None)  # dst is a graph output: its type lives in graph.outputs
    graph.add_node(prod)
    return True
