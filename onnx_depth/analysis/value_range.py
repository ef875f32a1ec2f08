"""Static value ranges of tensors, for proving an activation is the identity on its input.

range(t) = (lo, hi), a sound over-approximation of every value t can take:
* outputs of Relu: [max(lo,0), max(hi,0)]; Clip(a, b): [max(lo,a), min(hi,b)] (clamped);
  Sigmoid (0,1); Tanh (-1,1); HardSigmoid [0,1]; Softmax [0,1]; Abs [0, max(|lo|,|hi|)];
* range-preserving data movement (output 0 only, every output of Split): MaxPool,
  GlobalAveragePool, GlobalMaxPool, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Identity,
  Slice, Gather (data input), Split, SpaceToDepth, DepthToSpace; Concat (union of inputs);
* AveragePool: its outputs are convex combinations of the inputs, but with padding counted
  (count_include_pad=1 and pads, SAME auto_pad or ceil_mode) the zeros of the padding are mixed
  in too: [min(lo, 0), max(hi, 0)];
* Resize/Upsample: nearest and linear interpolate convexly (range kept, plus the extrapolation
  value for tf_crop_and_resize); cubic overshoots: unknown;
* Dropout: identity at inference (no training_mode input, or a constant false one); in training
  mode it scales by 1/(1-ratio): unknown;
* anything else: (-inf, inf).
"""

from __future__ import annotations

import math

import numpy as np

from ..ir import Graph
from ..ir.patterns import const_or_none

INF = math.inf
_PRESERVE = frozenset(
    "MaxPool GlobalAveragePool GlobalMaxPool Reshape Flatten Squeeze Unsqueeze Transpose "
    "Identity Slice Gather Split SpaceToDepth DepthToSpace".split()
)


def clip_bounds(graph: Graph, node) -> tuple[float, float] | None:
    """Clip's (min, max): attributes before opset 11, constant inputs after; None if not constant."""
    if "min" in node.attributes or "max" in node.attributes or len(node.inputs) == 1:
        return float(node.attr("min", -3.4028234663852886e38)), float(node.attr("max", 3.4028234663852886e38))
    bounds = []
    for slot, default in ((1, -INF), (2, INF)):
        if slot < len(node.inputs) and node.inputs[slot]:
            v = const_or_none(graph, node, slot)
            if v is None:
                return None
            bounds.append(float(np.asarray(v).item()))
        else:
            bounds.append(default)
    return bounds[0], bounds[1]


def value_range(graph: Graph, tensor: str, cache: dict | None = None, _depth: int = 0) -> tuple[float, float]:
    """Range of `tensor`. Pass the same `cache` dict for many queries on an unchanged graph."""
    if cache is None:
        cache = {}
    if tensor not in cache:
        cache[tensor] = _range(graph, tensor, cache, _depth)
    return cache[tensor]


def _range(graph: Graph, tensor: str, cache: dict, _depth: int) -> tuple[float, float]:
    if graph.is_constant(tensor):
        a = graph.const(tensor)
        if a.size and a.dtype.kind in "fiu":
            return float(np.min(a)), float(np.max(a))
    node = graph.producer(tensor)
    if node is None or _depth > 64 or node.domain not in ("", "ai.onnx"):
        return -INF, INF
    op = node.op_type
    if op != "Split" and tensor != node.outputs[0]:
        return -INF, INF  # second outputs (MaxPool indices, Dropout mask, ...)
    if op in _PRESERVE:
        return value_range(graph, node.inputs[0], cache, _depth + 1)
    if op == "AveragePool":
        lo, hi = value_range(graph, node.inputs[0], cache, _depth + 1)
        return (min(lo, 0.0), max(hi, 0.0)) if _avgpool_counts_padding(node) else (lo, hi)
    if op in ("Resize", "Upsample"):
        mode = node.attr("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("nearest", "linear", "bilinear"):
            return -INF, INF
        lo, hi = value_range(graph, node.inputs[0], cache, _depth + 1)
        ctm = node.attr("coordinate_transformation_mode", b"half_pixel")
        if (ctm.decode() if isinstance(ctm, bytes) else ctm) == "tf_crop_and_resize":
            e = float(node.attr("extrapolation_value", 0.0))
            lo, hi = min(lo, e), max(hi, e)
        return lo, hi
    if op == "Dropout":
        if len(node.inputs) > 2 and node.inputs[2]:
            t = const_or_none(graph, node, 2)
            if t is None or bool(np.asarray(t).item()):
                return -INF, INF
        if node.attr("is_test", 1) == 0:  # opset < 7 training mode
            return -INF, INF
        return value_range(graph, node.inputs[0], cache, _depth + 1)
    if op == "Concat":
        rs = [value_range(graph, t, cache, _depth + 1) for t in node.inputs if t]
        return min(r[0] for r in rs), max(r[1] for r in rs)
    if op in ("Sigmoid", "HardSigmoid", "Softmax"):
        return 0.0, 1.0
    if op == "Tanh":
        return -1.0, 1.0
    lo, hi = value_range(graph, node.inputs[0], cache, _depth + 1) if node.inputs else (-INF, INF)
    if op == "Relu":
        return max(lo, 0.0), max(hi, 0.0)
    if op == "Clip":
        b = clip_bounds(graph, node)
        if b is None:
            return -INF, INF
        return min(max(lo, b[0]), b[1]), max(min(hi, b[1]), b[0])
    if op == "Abs":
        return 0.0, max(abs(lo), abs(hi))
    return -INF, INF


def _avgpool_counts_padding(node) -> bool:
    if not node.attr("count_include_pad", 0):
        return False
    auto_pad = node.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return bool(any(node.attr("pads", []) or []) or auto_pad in ("SAME_UPPER", "SAME_LOWER") or node.attr("ceil_mode", 0))
