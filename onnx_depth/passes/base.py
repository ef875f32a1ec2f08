"""What a pass is: a function ``(Graph, PassContext) -> PassResult``.

A pass rewrites the graph in place. It counts what it changed, and records every candidate it
left untouched with the reason (shared weight, graph output mid-chain, non-constant weight,
dynamic shape, inexact padding, ...), so the tool can say what it could not do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..ir import Graph


@dataclass
class PassContext:
    lossless: bool = True
    # merge only when the merged operator has no more MACs, and no more parameters (weights,
    # biases, border maps), than the chain it replaces: the lossless model is never bigger
    require_fewer_macs: bool = True
    # fold_bn: rewrite a BatchNormalization with no linear neighbour as Mul + Add (off: keep it,
    # one node instead of two; on: for later passes that understand Mul/Add)
    bn_to_mul_add: bool = False


@dataclass
class PassResult:
    name: str
    changed: int = 0
    refused: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def refuse(self, reason: str) -> None:
        if reason not in self.refused:
            self.refused.append(reason)

    def to_dict(self) -> dict:
        return {"pass": self.name, "changed": self.changed, "refused": list(self.refused), "details": list(self.details)}


Pass = Callable[[Graph, PassContext], PassResult]


def run_to_fixed_point(graph: Graph, passes: list[Pass], ctx: PassContext, max_rounds: int = 20) -> list[PassResult]:
    """Run `passes` in order until a full round changes nothing. Results are merged per pass;
    refusals are those of the last round (earlier refusals may have been resolved since)."""
    merged: dict[str, PassResult] = {}
    for _ in range(max_rounds):
        changed = 0
        for p in passes:
            r = p(graph, ctx)
            m = merged.setdefault(r.name, PassResult(r.name))
            m.changed += r.changed
            m.details += r.details
            m.refused = r.refused
            changed += r.changed
        if not changed:
            break
    graph.remove_dead_nodes()
    return list(merged.values())
