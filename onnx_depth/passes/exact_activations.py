"""exact activations: remove activations that are the identity on every value they can see.

* PRelu whose slope is exactly 1 everywhere, LeakyRelu with alpha == 1: f(x) = x.
* Relu whose input range is >= 0 (e.g. after Relu, Clip(0, 6), Sigmoid): f(x) = x.
* Clip(a, b) whose input range lies inside [a, b]: f(x) = x.
Ranges come from onnx_depth.passes.value_range (a sound over-approximation), so every removal
is exact.
"""

from __future__ import annotations

import numpy as np

from ..ir import Graph
from ..ir.patterns import bypass, const_or_none
from .base import PassContext, PassResult
from ..analysis.value_range import clip_bounds, value_range


def exact_activations(graph: Graph, ctx: PassContext | None = None) -> PassResult:
    res = PassResult("exact_activations")
    cache: dict = {}  # value ranges; removing an identity changes no tensor's values
    for node in graph.topological_order():
        if node.id not in graph.nx or node.domain not in ("", "ai.onnx"):
            continue
        why = _identity_reason(graph, node, cache)
        if why is None:
            continue
        if bypass(graph, node):
            res.changed += 1
            res.details.append(f"removed {node.label}: {why}")
        else:
            res.refuse(f"{node.label}: identity ({why}) but kept: its output is a graph output read directly from its input")
    return res


def _identity_reason(graph: Graph, node, cache: dict) -> str | None:
    op = node.op_type
    if op == "PRelu":
        slope = const_or_none(graph, node, 1)
        if slope is not None and slope.size and np.all(slope == 1):
            return "slope exactly 1"
        return None
    if op == "LeakyRelu":
        return "alpha exactly 1" if node.attr("alpha", 0.01) == 1.0 else None
    if op == "Relu":
        lo, _ = value_range(graph, node.inputs[0], cache)
        return "input is never negative" if lo >= 0 else None
    if op == "Clip":
        b = clip_bounds(graph, node)
        if b is None:
            return None
        lo, hi = value_range(graph, node.inputs[0], cache)
        if lo >= b[0] and hi <= b[1]:
            return f"input range [{lo:g}, {hi:g}] inside [{b[0]:g}, {b[1]:g}]"
    return None
