"""The calibrated rewrites in one call, for ``onnx-depth optimize --calibration DATA``.

``calibrated_rewrites(graph, calibration)``: statistics -> per-channel decisions -> dead
channel pruning -> linearization of all-linear activations (-> optionally refit of forced
segments). Run the LOSSLESS pipeline (merge_linear) afterwards to merge what became adjacent.
Everything here is lossy by ``tol`` except proven (exact) decisions; measure with
analysis.fidelity.evaluate.
"""

from __future__ import annotations

from typing import Collection

from ..ir import Graph
from ..passes.base import PassContext, PassResult
from .criteria import DEFAULT_TAU, decide
from .stats import collect_stats

__all__ = ["calibrated_rewrites"]


def calibrated_rewrites(
    graph: Graph,
    calibration,
    *,
    tol: float = 0.0,
    tau: float = DEFAULT_TAU,
    prune: bool = True,
    linearize: bool = True,
    refit_sites: Collection[str] = (),
    sequential: bool = True,
    ridge: float = 1e-3,
    threads: int | None = None,
) -> list[PassResult]:
    """Rewrite `graph` in place; returns the pass results (dead_channels, linearize, refit)."""
    from ..passes.dead_channels import prune_dead_channels
    from ..passes.linearize import linearize as linearize_pass
    from ..passes.refit import refit

    from .. import ir

    reference = ir.to_proto(graph.copy(), check=False)
    stats = collect_stats(graph, calibration, threads=threads)
    decisions = {s.name: d for s in stats.sites if (d := decide(graph, s, stats=stats.for_site(s), tol=tol, tau=tau)) is not None}
    results: list[PassResult] = []
    ctx = PassContext(lossless=False, require_fewer_macs=False)
    if prune:
        kept: dict = {}
        results.append(prune_dead_channels(graph, ctx, decisions=decisions, record=kept))
        for name, keep in kept.items():
            decisions[name] = decisions[name].subset(keep)
    if linearize:
        results.append(linearize_pass(graph, ctx, decisions=decisions))
    if refit_sites:
        rr = refit(graph, calibration, sites=set(refit_sites), decisions=decisions, reference=reference, sequential=sequential, ridge=ridge, threads=threads)
        results.append(rr.result)
    return results
