"""Find the activation functions of a graph, including decomposed ones, as ``ActivationSite``s.

Recognized (standard domain):

==============  ================================================  =========================
kind            ONNX form                                         regions (x = input)
==============  ================================================  =========================
relu            Relu                                              x<=0: 0 | x>0: x
clip            Clip(a, b) with constant bounds (ReLU6 = 0, 6)    x<=a: a | a<x<b: x | x>=b: b
leaky_relu      LeakyRelu(alpha)                                  x<0: alpha x | x>=0: x
prelu           PRelu(slope const, per channel or scalar)         x<0: a_c x | x>=0: x
hardswish       HardSwish, Add(3)-Clip(0,6)-Mul(x)-Div(6) (any    x<=-3: 0 | between: nonlinear
                order of the /6), HardSigmoid(1/6, 1/2)-Mul(x)    | x>=3: x
hardsigmoid     HardSigmoid(alpha, beta)                          below: 0 | alpha x + beta | 1
silu            Sigmoid(x)-Mul(x)                                 approx. 0 | nonlinear | x
gelu            Gelu (ONNX Gelu-20, either approximation; ORT     approx. 0 | nonlinear | x
                com.microsoft Gelu, FastGelu, BiasGelu: params
                bias = the added bias), Div(sqrt 2)/Mul(1/sqrt 2)
                -Erf-Add(1)-Mul(x)-Mul(0.5) (any order of the two
                Muls), tanh form x^3-Mul(0.044715)-Add(x)-
                Mul(sqrt(2/pi))-Tanh-Add(1)-Mul(x)-Mul(0.5)
elu             Elu(alpha)                                        x<0: nonlinear | x>=0: x
sigmoid, tanh   Sigmoid, Tanh (alone)                             approx. saturation only
==============  ================================================  =========================

Every site has three input regions: ``below`` (x <= lo), ``mid`` and ``above`` (x >= hi), and per
region either an exact per-channel affine map y = s_c x + t_c or None (nonlinear there). For
SiLU/GELU/Sigmoid/Tanh the thresholds are where the affine map is within ``APPROX_EPS`` (absolute)
of the function, and the site is marked ``approximate``. The channel axis is 1 (NC...), except
for rank-3 activations produced by MatMul (transformer [B, S, D]: the last axis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..ir import Graph, Node
from ..ir.patterns import const_or_none, is_op
from .value_range import clip_bounds

__all__ = ["ActivationSite", "find_activations", "APPROX_EPS", "REGIONS"]

APPROX_EPS = 1e-2
REGIONS = ("below", "mid", "above")


def _solve(f, target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with f(x) = target for a decreasing f (bisection)."""
    for _ in range(200):
        m = 0.5 * (lo + hi)
        if f(m) > target:
            lo = m
        else:
            hi = m
    return 0.5 * (lo + hi)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


# thresholds t where |f(x) - affine| <= APPROX_EPS beyond +-t
SILU_T = _solve(lambda t: t * _sigmoid(-t), APPROX_EPS, 1.5, 50.0)
GELU_T = _solve(lambda t: t * _phi(-t), APPROX_EPS, 1.0, 50.0)
SIGMOID_T = _solve(lambda t: _sigmoid(-t), APPROX_EPS, 0.0, 50.0)
TANH_T = _solve(lambda t: 1.0 - math.tanh(t), APPROX_EPS, 0.0, 50.0)


@dataclass(eq=False)
class ActivationSite:
    """One activation function in the graph.

    name: the key used everywhere (the activation's output tensor name, stable across BN folding).
    input: the pre-activation tensor; nodes: every node of the (possibly decomposed) activation.
    lo/hi: region thresholds; params: alpha (per channel array) for leaky/prelu, clip bounds, ...
    """

    kind: str
    op: str
    nodes: list[Node]
    input: str
    output: str
    lo: float
    hi: float
    channel_axis: int = 1
    channels: int | None = None
    params: dict = field(default_factory=dict)
    approximate: bool = False

    @property
    def name(self) -> str:
        return self.output

    @property
    def label(self) -> str:
        return self.nodes[-1].name or self.output

    # ---- region semantics
    def region_map(self, region: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(s, t), broadcastable per channel, with f(x) = s x + t on `region`; None if nonlinear."""
        k = self.kind
        one, zero = np.float64(1.0), np.float64(0.0)
        if region == "mid":
            if k in ("relu", "clip", "leaky_relu", "prelu", "elu"):
                return one, zero
            if k == "hardsigmoid":
                return np.float64(self.params["alpha"]), np.float64(self.params["beta"])
            return None
        if region == "below":
            if k == "relu":
                return zero, zero
            if k == "clip":
                return zero, np.float64(self.lo)
            if k in ("leaky_relu", "prelu"):
                return np.asarray(self.params["alpha"], np.float64), zero
            if k in ("hardswish", "hardsigmoid", "silu", "gelu", "sigmoid"):
                return zero, zero
            if k == "tanh":
                return zero, np.float64(-1.0)
            return None
        if region == "above":
            if k == "clip":
                return zero, np.float64(self.hi)
            if k in ("hardswish", "silu", "gelu"):
                return one, zero
            if k in ("hardsigmoid", "sigmoid", "tanh"):
                return zero, one
            return None
        raise ValueError(f"unknown region {region!r}")

    def region_label(self, region: str) -> str:
        """ON (identity), OFF (zero / lower constant), SAT (upper constant), NEG (x<0 slope of
        Leaky/PReLU), LIN (other affine map), NL (nonlinear)."""
        m = self.region_map(region)
        if m is None:
            return "NL"
        s, t = m
        if region == "below" and self.kind in ("leaky_relu", "prelu"):
            return "NEG"
        if np.all(s == 1) and np.all(t == 0):
            return "ON"
        if np.all(s == 0):
            return "OFF" if region == "below" else "SAT"
        return "LIN"

    @property
    def has_regions(self) -> bool:
        return self.kind in ("relu", "clip", "leaky_relu", "prelu", "elu", "hardswish", "hardsigmoid", "silu", "gelu",
                             "sigmoid", "tanh")

    def channel_vector(self, v, channels: int) -> np.ndarray:
        a = np.asarray(v, np.float64).reshape(-1)
        if a.size == 1:
            return np.full(channels, float(a[0]))
        if a.size != channels:
            raise ValueError(f"{self.label}: parameter of size {a.size} for {channels} channels")
        return a


# ------------------------------------------------------------------------------- detection
def _scalar(graph: Graph, node: Node, slot: int) -> float | None:
    v = const_or_none(graph, node, slot)
    if v is None or np.size(v) != 1:
        return None
    return float(np.asarray(v).reshape(-1)[0])


def _other_input(node: Node, t: str) -> str | None:
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a == t:
        return b
    if b == t:
        return a
    return None


def _sole(graph: Graph, t: str) -> Node | None:
    if graph.is_graph_output(t):
        return None
    cons = graph.consumers(t)
    return cons[0] if len(cons) == 1 and graph.uses(t) == 1 else None


def _const_other(graph: Graph, node: Node, t: str) -> float | None:
    o = _other_input(node, t)
    if o is None or not graph.is_constant(o):
        return None
    v = graph.const(o)
    return float(np.asarray(v).reshape(-1)[0]) if np.size(v) == 1 else None


def _div_or_mul_by(graph: Graph, node: Node | None, t: str, value: float) -> bool:
    """node computes t / value (Div) or t * (1/value) (Mul)."""
    if is_op(node, "Div") and node.inputs[0] == t:
        c = _scalar(graph, node, 1)
        return c is not None and abs(c - value) <= 1e-6 * abs(value)
    if is_op(node, "Mul"):
        c = _const_other(graph, node, t)
        return c is not None and abs(c - 1.0 / value) <= 1e-6 / abs(value)
    return False


def _match_hardswish(graph: Graph, clip: Node) -> tuple[list[Node], str, str] | None:
    """Add(x, 3) -> Clip(0, 6) -> {Mul(x, .) -> Div 6 | Div 6 -> Mul(x, .)}."""
    b = clip_bounds(graph, clip)
    if b is None or b != (0.0, 6.0):
        return None
    add = graph.producer(clip.inputs[0])
    if not is_op(add, "Add") or _sole(graph, add.outputs[0]) is not clip:
        return None
    x = None
    for cand in add.inputs:
        other = _other_input(add, cand)
        if other is not None and graph.is_constant(other) and np.size(graph.const(other)) == 1 and float(np.asarray(graph.const(other)).reshape(-1)[0]) == 3.0:
            x = cand
            break
    if x is None or graph.is_constant(x):
        return None
    n1 = _sole(graph, clip.outputs[0])
    if n1 is None:
        return None
    if is_op(n1, "Mul") and _other_input(n1, clip.outputs[0]) == x:
        n2 = _sole(graph, n1.outputs[0])
        if _div_or_mul_by(graph, n2, n1.outputs[0], 6.0):
            return [add, clip, n1, n2], x, n2.outputs[0]
        return None
    if _div_or_mul_by(graph, n1, clip.outputs[0], 6.0):
        n2 = _sole(graph, n1.outputs[0])
        if is_op(n2, "Mul") and _other_input(n2, n1.outputs[0]) == x:
            return [add, clip, n1, n2], x, n2.outputs[0]
    return None


def _match_gelu(graph: Graph, erf: Node) -> tuple[list[Node], str, str] | None:
    pre = graph.producer(erf.inputs[0])
    if pre is None or _sole(graph, erf.inputs[0]) is not erf:
        return None
    if is_op(pre, "Div"):
        c = _scalar(graph, pre, 1)
        if c is None or abs(c - math.sqrt(2.0)) > 1e-3:
            return None
        x = pre.inputs[0]
    elif is_op(pre, "Mul"):
        x = None
        for cand in pre.inputs:
            c = _const_other(graph, pre, cand)
            if c is not None and abs(c - 1 / math.sqrt(2.0)) <= 1e-3:
                x = cand
        if x is None:
            return None
    else:
        return None
    tail = _gelu_tail(graph, erf, x)
    return None if tail is None else ([pre, erf] + tail[0], x, tail[1])


def _gelu_tail(graph: Graph, f: Node, x: str) -> tuple[list[Node], str] | None:
    """f(...) -> Add(1) -> Mul(x) -> Mul(0.5), any order of the two Muls: (nodes after f, output)."""
    add = _sole(graph, f.outputs[0])
    if not is_op(add, "Add") or _const_other(graph, add, f.outputs[0]) != 1.0:
        return None
    m1 = _sole(graph, add.outputs[0])
    if not is_op(m1, "Mul"):
        return None
    o = _other_input(m1, add.outputs[0])
    if o == x:  # 0.5 after
        m2 = _sole(graph, m1.outputs[0])
        c = None if m2 is None or not is_op(m2, "Mul") else _const_other(graph, m2, m1.outputs[0])
        if c is not None and abs(c - 0.5) < 1e-6:
            return [add, m1, m2], m2.outputs[0]
        return None
    if o is not None and graph.is_constant(o) and np.size(graph.const(o)) == 1 and abs(float(np.asarray(graph.const(o)).reshape(-1)[0]) - 0.5) < 1e-6:
        m2 = _sole(graph, m1.outputs[0])
        if is_op(m2, "Mul") and _other_input(m2, m1.outputs[0]) == x:
            return [add, m1, m2], m2.outputs[0]
        return None
    half = graph.producer(o) if o is not None else None
    if is_op(half, "Mul") and _sole(graph, o) is m1:
        c = _const_other(graph, half, x)
        if c is not None and abs(c - 0.5) < 1e-6 and _sole(graph, half.outputs[0]) is m1:
            return [add, half, m1], m1.outputs[0]
    return None


def _cube_of(graph: Graph, t: str) -> tuple[list[Node], str] | None:
    """Nodes computing t = x^3 (Pow(x, 3), Mul(x, Mul(x, x)) either way round): (nodes, x)."""
    p = graph.producer(t)
    if is_op(p, "Pow") and _scalar(graph, p, 1) == 3.0:
        return [p], p.inputs[0]
    if not is_op(p, "Mul") or len(p.inputs) != 2:
        return None
    for sq_t, x in (p.inputs, p.inputs[::-1]):
        sq = graph.producer(sq_t)
        if is_op(sq, "Mul") and list(sq.inputs) == [x, x] and _sole(graph, sq_t) is p:
            return [sq, p], x
    return None


def _match_gelu_tanh(graph: Graph, tanh: Node) -> tuple[list[Node], str, str] | None:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as torch exports gelu(approximate='tanh')."""
    k = _sole(graph, tanh.inputs[0]) is tanh and graph.producer(tanh.inputs[0])
    if not is_op(k, "Mul"):
        return None
    for u in k.inputs:
        c = _const_other(graph, k, u)
        if c is not None and abs(c - math.sqrt(2.0 / math.pi)) <= 1e-4:
            break
    else:
        return None
    add = graph.producer(u)
    if not is_op(add, "Add") or _sole(graph, u) is not k or len(add.inputs) != 2:
        return None
    for v, x in (add.inputs, add.inputs[::-1]):
        mc = graph.producer(v)
        if not is_op(mc, "Mul") or _sole(graph, v) is not add:
            continue
        for w in mc.inputs:
            c = _const_other(graph, mc, w)
            if c is not None and abs(c - 0.044715) <= 1e-6:
                cube = _cube_of(graph, w)
                if cube is not None and cube[1] == x and _sole(graph, w) is mc:
                    tail = _gelu_tail(graph, tanh, x)
                    if tail is not None:
                        return cube[0] + [mc, add, k, tanh] + tail[0], x, tail[1]
    return None


def _channel_axis(graph: Graph, x: str, slope: np.ndarray | None = None) -> int:
    shape = graph.shape(x)
    rank = len(shape) if shape is not None else None
    if rank == 3:
        p = graph.producer(x)
        seen = 0
        while p is not None and seen < 4:
            if is_op(p, "MatMul", "Gemm"):
                return 2
            if not is_op(p, "Add", "BatchNormalization"):
                break
            p = graph.producer(p.inputs[0])
            seen += 1
        if slope is not None and slope.ndim == 1 and shape[-1] == slope.size and slope.size > 1:
            return 2
    return 1


def _make(graph: Graph, kind: str, op: str, nodes: list[Node], x: str, y: str, lo: float, hi: float, params=None, approximate=False, slope=None) -> ActivationSite:
    axis = _channel_axis(graph, x, slope)
    shape = graph.shape(x)
    channels = None
    if shape is not None and len(shape) > axis and isinstance(shape[axis], int) and shape[axis] > 0:
        channels = int(shape[axis])
    return ActivationSite(kind, op, nodes, x, y, lo, hi, axis, channels, dict(params or {}), approximate)


def find_activations(graph: Graph) -> list[ActivationSite]:
    """Every activation site in topological order (a node belongs to at most one site)."""
    claimed: set[int] = set()
    sites: list[ActivationSite] = []
    order = graph.topological_order()
    # decomposed forms first, so that their Clip / Sigmoid / Mul are not taken as plain sites
    for n in order:
        m = None
        if is_op(n, "Clip"):
            m = _match_hardswish(graph, n)
            if m:
                sites.append(_make(graph, "hardswish", "HardSwish(Add-Clip-Mul-Div)", *m, -3.0, 3.0))
        elif is_op(n, "Erf"):
            m = _match_gelu(graph, n)
            if m:
                sites.append(_make(graph, "gelu", "GELU(Erf)", *m, -GELU_T, GELU_T, approximate=True))
        elif is_op(n, "Tanh"):
            m = _match_gelu_tanh(graph, n)
            if m:
                sites.append(_make(graph, "gelu", "GELU(Tanh)", *m, -GELU_T, GELU_T, approximate=True))
        elif is_op(n, "Sigmoid"):
            mul = _sole(graph, n.outputs[0])
            if is_op(mul, "Mul") and _other_input(mul, n.outputs[0]) == n.inputs[0]:
                m = ([n, mul], n.inputs[0], mul.outputs[0])
                sites.append(_make(graph, "silu", "SiLU(Sigmoid-Mul)", *m, -SILU_T, SILU_T, approximate=True))
        elif is_op(n, "HardSigmoid"):
            a, b = float(n.attr("alpha", 0.2)), float(n.attr("beta", 0.5))
            mul = _sole(graph, n.outputs[0])
            if abs(a - 1 / 6) < 1e-6 and abs(b - 0.5) < 1e-6 and is_op(mul, "Mul") and _other_input(mul, n.outputs[0]) == n.inputs[0]:
                m = ([n, mul], n.inputs[0], mul.outputs[0])
                sites.append(_make(graph, "hardswish", "HardSwish(HardSigmoid-Mul)", *m, -3.0, 3.0))
        if m:
            claimed.update(x.id for x in m[0])
    for n in order:
        if n.id in claimed or not n.inputs or not n.outputs:
            continue
        if n.domain == "com.microsoft" and n.op_type in ("Gelu", "FastGelu", "BiasGelu"):
            bias = const_or_none(graph, n, 1) if len(n.inputs) > 1 and n.inputs[1] else None
            if len(n.inputs) > 1 and n.inputs[1] and bias is None:
                continue  # a bias that is not a constant: not analysed
            params = {} if bias is None else {"bias": np.asarray(bias, np.float64).reshape(-1)}
            sites.append(_make(graph, "gelu", f"{n.op_type}(com.microsoft)", [n], n.inputs[0], n.outputs[0],
                               -GELU_T, GELU_T, params, approximate=True))
            continue
        if n.domain not in ("", "ai.onnx"):
            continue
        x, y = n.inputs[0], n.outputs[0]
        op = n.op_type
        if op == "Relu":
            sites.append(_make(graph, "relu", "Relu", [n], x, y, 0.0, math.inf))
        elif op == "Clip":
            b = clip_bounds(graph, n)
            if b is None:
                continue
            lo, hi = b
            label = "ReLU6" if (lo, hi) == (0.0, 6.0) else f"Clip({lo:g}, {hi:g})"
            sites.append(_make(graph, "clip", label, [n], x, y, lo, hi if hi < 3.4e38 else math.inf))
        elif op == "LeakyRelu":
            a = float(n.attr("alpha", 0.01))
            sites.append(_make(graph, "leaky_relu", f"LeakyRelu({a:g})", [n], x, y, 0.0, math.inf, {"alpha": np.float64(a)}))
        elif op == "PRelu":
            slope = const_or_none(graph, n, 1)
            if slope is None:
                continue
            slope = np.asarray(slope, np.float64)
            site = _make(graph, "prelu", "PRelu", [n], x, y, 0.0, math.inf, slope=slope.reshape(-1) if slope.size > 1 else None)
            try:
                site.params["alpha"] = _prelu_alpha(site, slope)
            except ValueError:
                continue  # not a per-channel slope: not analysed
            sites.append(site)
        elif op == "Elu":
            a = float(n.attr("alpha", 1.0))
            sites.append(_make(graph, "elu", f"Elu({a:g})", [n], x, y, 0.0, math.inf, {"alpha": np.float64(a)}))
        elif op == "HardSwish":
            sites.append(_make(graph, "hardswish", "HardSwish", [n], x, y, -3.0, 3.0))
        elif op == "HardSigmoid":
            a, b = float(n.attr("alpha", 0.2)), float(n.attr("beta", 0.5))
            sites.append(_make(graph, "hardsigmoid", f"HardSigmoid({a:g}, {b:g})", [n], x, y, -b / a, (1 - b) / a, {"alpha": a, "beta": b}))
        elif op == "Gelu":
            sites.append(_make(graph, "gelu", "Gelu", [n], x, y, -GELU_T, GELU_T, approximate=True))
        elif op == "Sigmoid":
            sites.append(_make(graph, "sigmoid", "Sigmoid", [n], x, y, -SIGMOID_T, SIGMOID_T, approximate=True))
        elif op == "Tanh":
            sites.append(_make(graph, "tanh", "Tanh", [n], x, y, -TANH_T, TANH_T, approximate=True))
    pos = {n.id: i for i, n in enumerate(order)}
    sites.sort(key=lambda s: pos[s.nodes[-1].id])
    return sites


def _prelu_alpha(site: ActivationSite, slope: np.ndarray) -> np.ndarray:
    """PRelu slope as a per-channel vector along the site's channel axis (or a scalar)."""
    if slope.size == 1:
        return np.float64(slope.reshape(-1)[0])
    flat = slope.reshape(-1)
    # slope broadcast over [N, C, ...]: shapes (C,1,1), (C,), (1,C,1,1) all reduce to C values
    if np.count_nonzero(np.array(slope.shape) > 1) == 1:
        return flat
    raise ValueError(f"{site.label}: PRelu slope of shape {slope.shape} is not per-channel")
