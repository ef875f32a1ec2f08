"""A model's candidates as the LayerMerge DP's problem, and the plans it solves for.

Each chain of `Candidates` becomes a `layermerge_dp.DPChain`: every `keep` option, and every
other option that is allowed (measured or guessed importance, not refused), with

    latency    T(o) = max(LatencyModel.option_cost(o), 0)     (in-context ms, additive)
    importance I(o) = Importance.of(o)                        (log-fidelity <= 0; keep is 0)

and the latency no chain covers, `LatencyModel.offset_ms()`, as the DP's fixed part. A budget
ratio b is the DP budget b x predict(original plan).

* `solve_plan`: the plan of greatest summed importance whose predicted latency fits the budget
  (None when none does at the DP's resolution: latencies round *up*);
* `fastest_plan`: the DP with importance replaced by -latency and no binding budget: the plan of
  least predicted latency (the lowest budget worth asking for);
* `useful_options`: options predicted at least MIN_GAIN faster than keeping their layers,
  T(o) < (1 - MIN_GAIN) x sum_j T(keep_j); the others never help a latency budget.
"""

from __future__ import annotations

from . import layermerge_dp as dp
from .importance import Importance
from .latency_model import LatencyModel
from .segments import Candidates, SegmentOption

MIN_GAIN = 0.02     # an option must be predicted >= 2% faster than keeping its layers
DP_RESOLUTION = 6000  # latency units of the DP (each option rounds up: coarse units waste budget)
FASTEST_RESOLUTION = 4000  # latency units of the fastest-plan DP


def dp_chains(cands: Candidates, lm: LatencyModel, imp: Importance, allowed: set[str]) -> list[dp.DPChain]:
    """The DP's chains: per chain its keep options and its allowed, not refused, other options."""
    chains = []
    for c in cands.chains:
        opts = []
        for o in cands.options:
            if o.chain != c.id or (o.kind != "keep" and (o.id not in allowed or o.id in imp.refused)):
                continue
            opts.append(dp.Option(o.st, o.end, max(lm.option_cost(o), 0.0), imp.of(o), o))
        chains.append(dp.DPChain(c.L, opts, name=f"chain {c.id}"))
    return chains


def solve_plan(chains: list[dp.DPChain], lm: LatencyModel, budget_ms: float) -> list[SegmentOption] | None:
    """The DP's plan within `budget_ms` (whole-model, predicted), or None when infeasible."""
    res = dp.solve(chains, budget_ms, fixed_latency=lm.offset_ms(), resolution=DP_RESOLUTION)
    if not res.feasible:
        return None
    return [o.payload for segs in res.chosen for o in segs]


def count_changes(plan: list[SegmentOption]) -> int:
    """How many options of a plan change something (are not `keep`)."""
    return sum(o.kind != "keep" for o in plan)


def fastest_plan(chains: list[dp.DPChain], lm: LatencyModel) -> list[SegmentOption]:
    """The plan of least predicted latency (DP with importance = -latency, no budget)."""
    fast = [dp.DPChain(c.length, [dp.Option(o.st, o.end, o.latency, -o.latency, o.payload) for o in c.options], c.name)
            for c in chains]
    total = sum(o.latency for c in chains for o in c.options) + abs(lm.offset_ms()) + 1.0
    res = dp.solve(fast, total, fixed_latency=lm.offset_ms(), resolution=FASTEST_RESOLUTION)
    return [o.payload for segs in res.chosen for o in segs]


def useful_options(cands: Candidates, lm: LatencyModel, min_gain: float = MIN_GAIN) -> list[SegmentOption]:
    """Non-keep options predicted at least `min_gain` faster than keeping their layers (the
    others can never help a latency budget: keep is free in importance)."""
    out = []
    for o in cands.options:
        if o.kind == "keep":
            continue
        try:
            cost = lm.option_cost(o)
            keep = sum(lm.option_cost(k) for k in cands.keeps(o))
        except KeyError:
            continue
        if cost < (1.0 - min_gain) * keep:
            out.append(o)
    return out


__all__ = ["DP_RESOLUTION", "MIN_GAIN", "count_changes", "dp_chains", "fastest_plan", "solve_plan", "useful_options"]
