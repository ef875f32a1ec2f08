"""Real weights for a segment option: the merged operator a plan puts in the model.

`segments.fold_map` walks a segment (layers kept or pruned, residual spans fused) in an
*algebra*. Planning evaluates it on geometry; `RealAlgebra` evaluates the same walk on the
graph's actual weights, so the operator that is emitted is exactly the one that was timed:

* conv layers are ConvSpecs composed with `kernels.compose` (Conv∘Conv: kernel d1(k1-1) +
  s1 d2(k2-1) + 1, groups gcd; exact away from a border ring of padded inputs - the border is
  what refit corrects on data), residual joins with `kernels.add_identity` / `add_parallel`;
* dense layers are affine maps (W [n_in, n_out], b) composed in float64
  (`kernels.dense_compose.compose_affine`); x + L(x) is W + I;
* a multiple of the identity (a fused residual whose branch was pruned) is a float.

The activations inside the segment are removed (taken as the identity: LayerMerge's
linearization); on a normally trained network that changes the function, which is why
`fit_option` refits the operator on calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Graph
from ..kernels import ConvSpec, add_identity, add_parallel, compose, float32_blocker
from ..kernels.dense_compose import compose_affine
from ..passes.layer_io import read_conv, read_dense
from .segments import Candidates, Layer, SegmentOption, fold_map


@dataclass
class RealAlgebra:
    """`fold_map` over real weights read from `graph`."""

    graph: Graph

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

    @staticmethod
    def compose(a, b):
        if isinstance(a, ConvSpec):
            return compose(a, b)
        return tuple(None if v is None else np.asarray(v, np.float64) for v in compose_affine(a[0], a[1], b[0], b[1]))

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


def option_operator(cands: Candidates, opt: SegmentOption):
    """The naive merged operator of `opt` with the graph's weights (activations inside removed):
    a ConvSpec, a dense (W, b) in float64, a float (multiple of the identity) or None
    (identity). `keep` options return None (nothing is rewritten)."""
    if opt.kind == "keep":
        return None
    chain = cands.chains[opt.chain]
    fused = frozenset(opt.fused)
    m = fold_map(chain, opt.st, opt.end, frozenset(opt.kept), fused, opt.keeps_add, RealAlgebra(cands.graph))
    if isinstance(m, tuple):
        return (np.asarray(m[0], np.float32), None if m[1] is None else np.asarray(m[1], np.float32))
    return m


def operator_blocker(op) -> str | None:
    """Why the operator `option_operator` (or a refit) built cannot be emitted: a weight that is
    not finite in float32 or is outside its safe range (kernels.float32_range); None if it can."""
    if isinstance(op, ConvSpec):
        return float32_blocker(op.weight, op.bias, what="merged weights")
    if isinstance(op, tuple):
        return float32_blocker(*op, what="merged weights")
    if isinstance(op, float):
        return float32_blocker(np.array([op]), what="merged scale")
    return None


def option_target(cands: Candidates, opt: SegmentOption) -> str:
    """The tensor the option's operator produces (what a refit matches): the end layer's output,
    or the output of a residual Add fused at the end."""
    chain = cands.chains[opt.chain]
    sp = chain.span_at(opt.end)
    if sp is not None and opt.end in opt.fused:
        return sp.add.outputs[0]
    return chain.layer(opt.end).y


def option_input(cands: Candidates, opt: SegmentOption) -> str:
    return cands.chains[opt.chain].tensors[opt.st]


def removed_activations(cands: Candidates, opt: SegmentOption) -> list:
    """The activation nodes the option removes (strictly inside the segment)."""
    chain = cands.chains[opt.chain]
    return [chain.acts[j] for j in range(opt.st + 1, opt.end) if chain.acts[j] is not None]


def pruned_layers(cands: Candidates, opt: SegmentOption) -> list:
    chain = cands.chains[opt.chain]
    return [chain.layer(j).nodes[0] for j in opt.pruned]


__all__ = ["RealAlgebra", "operator_blocker", "option_input", "option_operator", "option_target", "pruned_layers", "removed_activations"]
