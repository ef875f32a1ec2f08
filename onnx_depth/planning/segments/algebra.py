"""`fold_map`: the linear map of a segment, evaluated in an algebra (geometry or real weights).

A segment (st, end] of a chain is walked position by position: kept layers are composed,
pruned layers are the identity, residual spans folded in become x + L(x) (or branch(x) + L(x)),
and each activation strictly inside the segment is replaced by a per-channel affine map

    act_c(x) ~ a_c x + b_c                                                    (ChannelAffine)

(fitted on calibration data by `planning.activation_fit`, or the data-free default of
`analysis.activation_affine`). The affine map merges into the neighbouring layer: for a dense
layer y = x W + b, W' = W diag(a), b' = a*b + beta after it, and W' = diag(a) W,
b' = beta W + b before it; for a conv it is a depthwise 1x1 conv composed with `kernels.compose`
(exact away from the border ring of a padded conv, like every conv merge). An activation with
no kept layer on either side inside its map (between two pruned layers) is taken as the
identity, so the real map always has the geometry the planner timed.

Two algebras evaluate the same walk:

* `GeomAlgebra`: shapes only (`Geom`; an activation is the identity of geometry);
* `RealAlgebra`: the graph's weights (ConvSpec; dense (W [n_in, n_out], b) in float64; a float
  is that multiple of the identity, None the identity).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...analysis.activation_affine import default_affine
from ...ir import Graph
from ...kernels import ConvSpec, add_identity, add_parallel, compose
from ...kernels.dense_compose import compose_affine
from ...passes.layer_io import read_conv, read_dense
from .chains import JunctionActivation, Layer, LinearChain
from .geometry import Geom, compose_geom, residual_geom


@dataclass(frozen=True, eq=False)
class ChannelAffine:
    """x -> a * x + b per channel (channel axis 1 for conv chains, the last axis for dense)."""

    a: np.ndarray
    b: np.ndarray
    kind: str  # "conv" | "dense"
    rank: int = 2  # spatial rank of a conv chain


class GeomAlgebra:
    """The algebra `fold_map` evaluates in for planning: shapes only (see `Geom`)."""

    @staticmethod
    def layer(layer: Layer) -> Geom:
        return layer.geom

    @staticmethod
    def activation(act: JunctionActivation, kind: str):
        return None

    @staticmethod
    def compose(a, b):
        return compose_geom(a, b)

    @staticmethod
    def scale(m, s: float, *, on_input: bool = False):
        return m

    @staticmethod
    def residual(inner, branch, channels: int):
        return residual_geom(inner, branch, channels)


@dataclass
class RealAlgebra:
    """`fold_map` over real weights read from `graph`. maps: activation output tensor -> (a, b)
    per channel (fitted on data); activations without one take `default_affine`. With
    ``activations=False`` every removed activation is the identity."""

    graph: Graph
    maps: dict = field(default_factory=dict)
    activations: bool = True

    def layer(self, layer: Layer):
        node = layer.nodes[0]
        if layer.kind == "conv":
            spec, why = read_conv(self.graph, node, exclusive=False)
            if spec is None:
                raise ValueError(why)
            return spec
        d, why = read_dense(self.graph, node, exclusive=False)
        if d is None:
            raise ValueError(why)
        return (np.asarray(d.W, np.float64), None if d.b is None else np.asarray(d.b, np.float64))

    def activation(self, act: JunctionActivation, kind: str):
        if not self.activations:
            return None
        shape = self.graph.static_shape(act.x)
        if not shape:
            raise ValueError(f"{act.name}: activation input has no static shape")
        channels = int(shape[1] if kind == "conv" else shape[-1])
        ab = self.maps.get(act.y)
        if ab is None:
            ab = default_affine(act.site, channels, act.op_type)
        a, b = (np.broadcast_to(np.asarray(v, np.float64).reshape(-1), (channels,)).copy() for v in ab)
        if np.all(a == 1.0) and np.all(b == 0.0):
            return None  # the identity: nothing to compose
        return ChannelAffine(a, b, kind, max(len(shape) - 2, 1))

    def compose(self, a, b):
        if isinstance(a, ChannelAffine) or isinstance(b, ChannelAffine):
            return self._compose_affine(a, b)
        if isinstance(a, ConvSpec):
            return compose(a, b)
        return tuple(None if v is None else np.asarray(v, np.float64) for v in compose_affine(a[0], a[1], b[0], b[1]))

    def _compose_affine(self, a, b):
        """b∘a where one or both are ChannelAffine (the other a ConvSpec, a dense pair or a float)."""
        if isinstance(a, ChannelAffine) and isinstance(b, ChannelAffine):
            return ChannelAffine(a.a * b.a, b.a * a.b + b.b, a.kind, a.rank)
        if isinstance(a, float):  # f(s x)
            return ChannelAffine(b.a * a, b.b, b.kind, b.rank)
        if isinstance(b, float):  # s f(x)
            return ChannelAffine(a.a * b, a.b * b, a.kind, a.rank)
        if isinstance(b, ChannelAffine):  # affine after a layer
            if isinstance(a, ConvSpec):
                return _affine_after_conv(a, b)
            W, bias = a
            return (W * b.a[None, :], (0.0 if bias is None else bias) * b.a + b.b)
        if isinstance(b, ConvSpec):  # affine before a layer
            return _affine_before_conv(a, b)
        W, bias = b
        return (a.a[:, None] * W, a.b @ W + (0.0 if bias is None else bias))

    @staticmethod
    def scale(m, s: float, *, on_input: bool = False):
        """s * m(x), or m(s * x) when on_input (the weight scales, the bias does not)."""
        if isinstance(m, ConvSpec):
            bias = m.bias if (on_input or m.bias is None) else (np.asarray(m.bias, np.float64) * s).astype(np.float32)
            return ConvSpec((np.asarray(m.weight, np.float64) * s).astype(np.float32), bias,
                            m.strides, m.dilations, m.pads, m.group)
        return (m[0] * s, None if (m[1] is None or on_input) else m[1] * s)

    @staticmethod
    def residual(inner, branch, channels: int):
        if isinstance(inner, ConvSpec):
            return add_identity(inner) if branch is None else add_parallel(inner, branch)
        if branch is None:
            W, b = inner
            if W.shape[0] != W.shape[1]:
                raise ValueError(f"residual needs a square weight, got {W.shape}")
            return (W + np.eye(W.shape[0]), b)
        b = None if inner[1] is None and branch[1] is None else (
            (0 if inner[1] is None else inner[1]) + (0 if branch[1] is None else branch[1]))
        return (inner[0] + branch[0], b)


def _affine_after_conv(c: ConvSpec, f: ChannelAffine) -> ConvSpec:
    """f∘conv: a_o (conv(x) + bias)_o + b_o, i.e. W'[o] = a_o W[o], bias' = a bias + b. Equal to
    `kernels.compose(conv, f as a depthwise 1x1 conv)` (a pointwise map after the conv is exact
    at the border too) without building the C x C block-dense form of the 1x1 conv."""
    a = f.a.reshape(-1, *([1] * (c.weight.ndim - 1)))
    w = np.asarray(c.weight, np.float64) * a
    bias = c.bias_or_zeros() * f.a + f.b
    return ConvSpec(w.astype(np.float32), bias.astype(np.float32), c.strides, c.dilations, c.pads, c.group)


def _affine_before_conv(f: ChannelAffine, c: ConvSpec) -> ConvSpec:
    """conv∘f: conv(a x + b) = conv'(x) with W'[o, i] = W[o, i] a_ch(o,i) and
    bias'_o = bias_o + sum_{i,k} W[o, i, k] b_ch(o,i), ch(o, i) = (o // (O/g)) (C/g) + i the
    input channel slot i of output o reads in a conv of g groups. Equal to
    `kernels.compose(f as a depthwise 1x1 conv, conv)`, including its border behaviour (the
    padded ring reads b where the original reads 0), without the block-dense expansion."""
    O, cin_g = c.weight.shape[:2]
    ch = (np.arange(O) // (O // c.group))[:, None] * cin_g + np.arange(cin_g)[None, :]  # [O, C/g]
    w = np.asarray(c.weight, np.float64)
    scaled = w * f.a[ch].reshape(O, cin_g, *([1] * (w.ndim - 2)))
    bias = c.bias_or_zeros() + np.einsum("oi,oi->o", w.reshape(O, cin_g, -1).sum(-1), f.b[ch])
    return ConvSpec(scaled.astype(np.float32), bias.astype(np.float32), c.strides, c.dilations, c.pads, c.group)


def _compose_map(alg, a, b):
    """b∘a where either may be None (identity), a float (that multiple of the identity) or a
    ChannelAffine."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, ChannelAffine) or isinstance(b, ChannelAffine):
        return alg.compose(a, b)
    if isinstance(a, float) and isinstance(b, float):
        return a * b
    if isinstance(a, float):  # b(s x): the input is scaled (a bias is not)
        return alg.scale(b, a, on_input=True)
    if isinstance(b, float):  # s a(x): weight and bias are scaled
        return alg.scale(a, b)
    return alg.compose(a, b)


def _residual_map(alg, inner, branch, channels: int):
    """branch(x) + inner(x) (branch None: the identity shortcut; inner None / float: a multiple
    of the identity; a ChannelAffine inner map: x + a x + b, or dropped next to a branch)."""
    if isinstance(inner, ChannelAffine):
        if branch is None:
            return ChannelAffine(inner.a + 1.0, inner.b, inner.kind, inner.rank)
        inner = None
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


def _walk_map(chain: LinearChain, a: int, b: int, kept: frozenset[int], fused, skip_end_span: bool, alg):
    maps: dict[int, object] = {a: None}
    for j in range(a + 1, b + 1):
        m = maps[j - 1]
        if j in kept:
            m = _compose_map(alg, m, alg.layer(chain.layer(j)))
        sp = chain.span_at(j)
        if sp is not None and j in fused and sp.p >= a and not (j == b and skip_end_span):
            inner = _walk_map(chain, sp.p, j, kept, fused, True, alg)
            branch = None if sp.branch is None else alg.layer(sp.branch)
            channels = chain.shapes[sp.p][1] if len(chain.shapes[sp.p]) > 1 else 0
            m = _compose_map(alg, maps[sp.p], _residual_map(alg, inner, branch, channels))
        if j < b and chain.acts[j] is not None:
            m = _compose_map(alg, m, alg.activation(chain.acts[j], chain.kind))
        maps[j] = m
    return maps[b]


def fold_map(chain: LinearChain, a: int, b: int, kept: frozenset[int], fused: "set[int] | frozenset[int]",
             skip_end_span: bool, alg=GeomAlgebra):
    """The linear map t_a -> junction b (before b's activation) with the activations between
    replaced by their affine maps, the layers not in `kept` pruned and the residual spans ending
    in `fused` folded in, evaluated in `alg` (GeomAlgebra: geometry; RealAlgebra: real weights).
    Returns None (identity), a float (a multiple of the identity) or the algebra's operator."""
    m = _walk_map(chain, a, b, kept, fused, skip_end_span, alg)
    if isinstance(m, ChannelAffine):  # no kept layer: the activations are taken as the identity
        return fold_map(chain, a, b, kept, fused, skip_end_span, RealAlgebra(alg.graph, activations=False))
    return m


__all__ = ["ChannelAffine", "GeomAlgebra", "RealAlgebra", "fold_map"]
