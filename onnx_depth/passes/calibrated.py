"""The calibrated rewrites in one call, for ``onnx-depth optimize --calibration DATA``.

``calibrated_rewrites(graph, calibration)``: statistics -> per-channel decisions -> dead
channel pruning -> linearization of all-linear activations. Run the LOSSLESS pipeline
(merge_linear) afterwards to merge what became adjacent. Everything here is lossy by ``tol``
except proven (exact) decisions; measure with analysis.fidelity.evaluate. Merging a forced
(MIXED) activation's layers and refitting them on data needs the planner's candidates:
``planning.activation_fidelity.refit_sites``.
"""

from __future__ import annotations

from ..analysis.criteria import DEFAULT_TAU, decide
from ..analysis.stats import collect_stats
from ..ir import Graph
from .base import PassContext, PassResult
from .dead_channels import prune_dead_channels
from .linearize import linearize as linearize_pass

__all__ = ["calibrated_rewrites", "site_decisions"]


def site_decisions(graph: Graph, calibration, *, tol: float = 0.0, tau: float = DEFAULT_TAU,
                   threads: int | None = None) -> dict:
    """{site name: Decision} of every activation of `graph` with one, from one statistics pass."""
    stats = collect_stats(graph, calibration, threads=threads)
    return {s.name: d for s in stats.sites if (d := decide(graph, s, stats=stats.for_site(s), tol=tol, tau=tau)) is not None}


def calibrated_rewrites(
    graph: Graph,
    calibration,
    *,
    tol: float = 0.0,
    tau: float = DEFAULT_TAU,
    prune: bool = True,
    linearize: bool = True,
    threads: int | None = None,
    decisions: dict | None = None,
) -> list[PassResult]:
    """Rewrite `graph` in place; returns the pass results (dead_channels, linearize).
    decisions: {site: Decision} (default: `site_decisions`); pruned sites' entries are narrowed
    to the kept channels in place."""
    if decisions is None:
        decisions = site_decisions(graph, calibration, tol=tol, tau=tau, threads=threads)
    results: list[PassResult] = []
    ctx = PassContext(lossless=False, require_fewer_macs=False)
    if prune:
        kept: dict = {}
        results.append(prune_dead_channels(graph, ctx, decisions=decisions, record=kept))
        for name, keep in kept.items():
            decisions[name] = decisions[name].subset(keep)
    if linearize:
        results.append(linearize_pass(graph, ctx, decisions=decisions))
    return results
