"""Real weights for a segment option: the merged operator a plan puts in the model.

`segments.fold_map` walks a segment (layers kept or pruned, residual spans fused) in an
*algebra*. Planning evaluates it on geometry; `segments.RealAlgebra` evaluates the same walk on
the graph's actual weights, so the operator that is emitted is exactly the one that was timed:

* conv layers are ConvSpecs composed with `kernels.compose` (Conv∘Conv: kernel d1(k1-1) +
  s1 d2(k2-1) + 1, groups gcd; exact away from a border ring of padded inputs - the border is
  what refit corrects on data), residual joins with `kernels.add_identity` / `add_parallel`;
* dense layers are affine maps (W [n_in, n_out], b) composed in float64
  (`kernels.dense_compose.compose_affine`); x + L(x) is W + I;
* a multiple of the identity (a fused residual whose branch was pruned) is a float.

* each activation inside the segment becomes its per-channel affine map a_c x + b_c
  (`Candidates.activation_maps`, fitted on calibration data by `planning.activation_fit`; the
  data-free stand-in of `analysis.activation_affine` otherwise: the identity for ReLU-like
  kinds, LayerMerge's linearization) and merges into the layers around it.

On a normally trained network that changes the function, which is why the importance step
refits the operator on calibration data (kernels.lstsq.OperatorFit).
"""

from __future__ import annotations

import numpy as np

from ..kernels import ConvSpec, float32_blocker
from .segments import Candidates, RealAlgebra, SegmentOption, fold_map


def option_operator(cands: Candidates, opt: SegmentOption):
    """The naive merged operator of `opt` with the graph's weights (activations inside removed):
    a ConvSpec, a dense (W, b) in float64, a float (multiple of the identity) or None
    (identity). `keep` options return None (nothing is rewritten)."""
    if opt.kind == "keep":
        return None
    chain = cands.chains[opt.chain]
    fused = frozenset(opt.fused)
    # an option that is an identity or a scale stays one (its activations: the identity)
    alg = RealAlgebra(cands.graph, cands.activation_maps, activations=opt.geom is not None)
    m = fold_map(chain, opt.st, opt.end, frozenset(opt.kept), fused, opt.keeps_add, alg)
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
    """The activations the option removes (strictly inside the segment), as
    `segments.JunctionActivation`s (name, op_type, inputs, outputs, nodes)."""
    chain = cands.chains[opt.chain]
    return [chain.acts[j] for j in range(opt.st + 1, opt.end) if chain.acts[j] is not None]


def is_ffn_collapse(cands: Candidates, opt: SegmentOption) -> bool:
    """A transformer-FFN collapse: dense layers with an activation between them merged into one
    layer, W2 act(W1 x) -> x W1 diag(a) W2 (with the residual around them fused when the chain
    holds it: x + FFN(x) -> x (W1 diag(a) W2 + I))."""
    return (opt.kind == "merge" and opt.geom is not None and opt.geom.kind == "dense"
            and bool(removed_activations(cands, opt)))


def pruned_layers(cands: Candidates, opt: SegmentOption) -> list:
    chain = cands.chains[opt.chain]
    return [chain.layer(j).nodes[0] for j in opt.pruned]


__all__ = ["RealAlgebra", "is_ffn_collapse", "operator_blocker", "option_input", "option_operator", "option_target",
           "pruned_layers", "removed_activations"]
