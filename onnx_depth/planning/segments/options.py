"""Segments and their options: what the LayerMerge DP may choose for each (st, end] of a chain.

Positions 0..L are activation sites (some have no activation). A segment (st, end] covers layers
st+1..end: the activations strictly inside are removed (each replaced by its per-channel affine
map, see `algebra`), the layers become one operator, and the activation at `end` is kept. A
segment is valid when no pinned position lies strictly inside and every residual span (p, q]
is either untouched, contains the segment (p <= st, end <= q: the Add stays an Add, at the
segment's end when q == end), or lies inside it (st <= p, q <= end: the residual is fused,
x + B(x) -> one operator with the identity added, as kernels.add_identity / add_parallel do;
for a transformer FFN x + W2 act(W1 x) this is the FFN collapse, W1 diag(a) W2 + I).

Options of a segment (what the DP asks for):

* ``keep``: a single layer as it is (the original model is the plan of all keep options);
* ``merge``: two or more layers composed into one conv (kernels.compose: the kernel grows) or
  one dense layer;
* ``prune``: some layers replaced by identity (a conv needs c_in == c_out, stride 1 and a
  size-preserving padding; a dense layer a square weight), the rest merged; pruning everything
  leaves an identity (or 2x for a fused residual whose branch was pruned).

Several layers kept apart with the activations between them removed is not an option: it costs
what the single-layer segments cost and keeps less, so the DP would never pick it. Border
exactness is ignored here (allow_inexact semantics): which merges are lossless is the rewrite's
business, not the latency table's.

Bounds keep profiling finite: at most `max_layers` layers per segment, merged kernel extent at
most `max_kernel`, and merged operators costing more than `max_mac_ratio` times the MACs of
what they replace are not enumerated (they cannot win on latency; timing them would dominate
profiling time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import combinations
from typing import Iterator

from ...ir import Graph
from .algebra import fold_map
from .chains import JunctionActivation, LinearChain
from .geometry import Geom

DEFAULT_MAX_LAYERS = 6
DEFAULT_MAX_KERNEL = 7
DEFAULT_MAX_MAC_RATIO = 4.0


@dataclass(frozen=True)
class SegmentOption:
    """One way to implement segment (st, end] of a chain.

    kept: the layers that stay (merged into one operator when several); the others are pruned.
    fused: q of the residual spans folded into the operator; keeps_add: the residual Add at
    `end` stays an Add. geom: the operator replacing the layers (None: identity, or a 2x scale
    when `scale`). key: shape-level structure (equal keys give the same timing model up to
    weights and names); label: human-readable description."""

    chain: int
    st: int
    end: int
    kind: str
    kept: tuple[int, ...]
    fused: tuple[int, ...]
    keeps_add: bool
    geom: Geom | None
    scale: bool
    macs: int
    macs_original: int
    key: str
    label: str

    @property
    def id(self) -> str:
        """Stable identifier: chain, segment, kind and kept layers."""
        return f"c{self.chain}({self.st},{self.end}]:{self.kind}:{','.join(map(str, self.kept)) or '-'}"

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(range(self.st + 1, self.end + 1))

    @property
    def pruned(self) -> tuple[int, ...]:
        return tuple(j for j in self.layers if j not in self.kept)

def _act_descriptor(graph: Graph, act: JunctionActivation | None) -> list:
    return [] if act is None else act.descriptor(graph)


def _linear_map(chain: LinearChain, a: int, b: int, kept: frozenset[int], fused: set[int],
                skip_end_span: bool) -> tuple[Geom | None, bool]:
    """(geometry of the map t_a -> junction b before its activation, whether it is a scale)."""
    m = fold_map(chain, a, b, kept, fused, skip_end_span)
    if isinstance(m, float):
        return None, True
    return m, False


def _option(chain: LinearChain, graph: Graph, st: int, end: int, kept: tuple[int, ...],
            max_kernel: int, max_mac_ratio: float) -> SegmentOption | None:
    single = end == st + 1
    kind = "keep" if single and kept == (end,) else ("merge" if len(kept) == end - st else "prune")
    fused: set[int] = set()
    keeps_add = False
    for s in chain.spans:
        if st <= s.p and s.q <= end and not (kind == "keep" and s.p == st and s.q == end):
            fused.add(s.q)
    end_span = chain.span_at(end)
    if end_span is not None and end not in fused:
        keeps_add = True
    try:
        geom, scale = _linear_map(chain, st, end, frozenset(kept), fused, keeps_add)
    except ValueError:
        return None
    x_shape = chain.shapes[st]
    # the tensor the new operator must produce: the layer output, or the fused Add's output
    target = end_span.add.outputs[0] if (end_span is not None and end in fused) else chain.layer(end).y
    target_shape = tuple(graph.static_shape(target) or ())
    if geom is not None:
        if geom.kind == "conv" and max(geom.extent) > max_kernel and kind != "keep":
            return None
        try:
            if geom.out_shape(x_shape) != target_shape:
                return None
        except ValueError:
            return None
    elif tuple(x_shape) != target_shape:
        return None
    orig = sum(chain.layer(j).macs for j in range(st + 1, end + 1))
    branch_macs = 0
    for q in fused:
        sp = chain.span_at(q)
        if sp is not None and sp.branch is not None:
            orig += sp.branch.macs
    if keeps_add and end_span is not None and end_span.branch is not None:
        branch_macs = end_span.branch.macs
        orig += branch_macs
    macs = (geom.macs(x_shape) if geom is not None else 0) + branch_macs
    if kind != "keep" and orig > 0 and macs > max_mac_ratio * orig:
        return None
    act = chain.acts[end]
    res: list = []
    if keeps_add and end_span is not None:
        res = ["add", end_span.p == st, list(chain.shapes[end_span.p]),
               None if end_span.branch is None else [n.op_type for n in end_span.branch.nodes] + [repr(end_span.branch.geom)]]
    if kind == "keep":
        op = [n.op_type for n in chain.layer(end).nodes] + [repr(chain.layer(end).geom)]
    else:
        op = ["new", repr(geom), scale]
    key = json.dumps([kind == "keep", op, list(x_shape), res, _act_descriptor(graph, act)], separators=(",", ":"))
    what = "identity" if geom is None and not scale else ("2x scale" if geom is None else geom.describe())
    extras = []
    if fused:
        extras.append("+residual fused")
    if keeps_add:
        extras.append("+Add")
    if act is not None:
        extras.append(f"+{act.op_type}")
    spatial = "x".join(map(str, x_shape[2:])) if chain.kind == "conv" else "x".join(map(str, x_shape[:-1]))
    pruned = [j for j in range(st + 1, end + 1) if j not in kept]
    label = (f"c{chain.id}({st},{end}] {kind}{' pruned ' + ','.join(map(str, pruned)) if pruned else ''}: "
             f"{what} @{spatial} {' '.join(extras)}".rstrip())
    return SegmentOption(chain.id, st, end, kind, tuple(kept), tuple(sorted(fused)), keeps_add, geom,
                         scale, int(macs), int(orig), key, label)


def enumerate_options(chain: LinearChain, graph: Graph, *, max_layers: int = DEFAULT_MAX_LAYERS,
                      max_kernel: int = DEFAULT_MAX_KERNEL,
                      max_mac_ratio: float = DEFAULT_MAX_MAC_RATIO) -> Iterator[SegmentOption]:
    """Every option of every valid segment of `chain` within the bounds."""
    for st in range(chain.L):
        for end in range(st + 1, min(chain.L, st + max_layers) + 1):
            if chain.check(st, end) is not None:
                continue
            idx = range(st + 1, end + 1)
            prunable = [j for j in idx if chain.layer(j).geom.prunable]
            for r in range(len(prunable) + 1):
                for pruned in combinations(prunable, r):
                    kept = tuple(j for j in idx if j not in pruned)
                    opt = _option(chain, graph, st, end, kept, max_kernel, max_mac_ratio)
                    if opt is not None:
                        yield opt


__all__ = ["DEFAULT_MAX_KERNEL", "DEFAULT_MAX_LAYERS", "DEFAULT_MAX_MAC_RATIO", "SegmentOption", "enumerate_options"]
