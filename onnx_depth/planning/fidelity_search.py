"""The fidelity side of the budget search: plans judged by their MEASURED error on held-out data.

`bisect_max_error` (--max-error E): the smallest internal budget b (a latency ratio) whose plan,
emitted with real weights, has measured error <= E on the validation data. The error of the DP's
plan falls, roughly, as b grows (more budget: fewer or milder merges), so bisection over
[fast ratio, hi]: probe hi (nothing within E there: the original plan, or with a latency budget
hi < 1 BudgetInfeasible), probe the fast ratio (within E: done), then `steps` halvings keeping
the best plan within E. Each probe is DP -> apply -> evaluate, cached per plan; every probe is
recorded as a Round with its error.

`replan_on_fidelity` (budget mode with calibration data): when the emitted plan's measured
validation fidelity is below the floor (`fidelity_guard.judge`), `replan.replan_measured` bans
the option whose removal recovers the most fidelity and re-solves at the same budget, scoring
plans by top-1 agreement for classifiers and by -NMSE otherwise.

Both take the running `budget_search.BudgetSearch` (its solve_at, build, allowed options,
rounds, data and settings).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import BudgetInfeasible
from .dp_problem import count_changes
from .fidelity_guard import judge, looks_like_classifier
from .measurement import Round
from .replan import replan_measured

BISECT_STEPS = 7
MIN_EVAL_SAMPLES = 64  # validation samples each fidelity probe evaluates, at the least


def bisect_max_error(search, *, steps: int = BISECT_STEPS, hi: float = 1.0):
    """Smallest internal budget (ratio, at most `hi`) whose emitted model has measured error <=
    search.max_error on the validation part. With a latency budget (hi < 1) and no plan within the
    bound at it: BudgetInfeasible (the combined objective cannot be met). Returns (plan, graph)."""
    bound = search.max_error
    ev = search.fidelity_eval
    cache: dict[tuple, tuple] = {}

    def probe(ratio: float):
        plan = search.solve_at(ratio)
        if plan is None:
            return None
        key = tuple(o.id for o in plan)
        if key not in cache:
            g = search.build(plan)
            err = bound.error_of(ev.compare(g))
            cache[key] = (plan, g, err)
            search.rounds.append(Round(ratio, search.predicted(plan), error=err, changes=count_changes(plan)))
        return cache[key]

    best = probe(hi)
    if best is None or best[2] > bound.value:
        if hi < 1.0:
            err = "no plan" if best is None else f"the best plan at it has error {best[2]:.3g}"
            raise BudgetInfeasible(f"no plan meets both latency budget {hi:g} and --max-error {bound.metric}:{bound.value:g} "
                                   f"({err} on the validation data)")
        # nothing changed is always within any bound: the original plan
        plan = search.cands.original_plan()
        return plan, search.build(plan)
    lo = search.fast_ratio
    got = probe(lo)
    if got is not None and got[2] <= bound.value:
        return got[0], got[1]
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        got = probe(mid)
        if got is not None and got[2] <= bound.value:
            hi, best = mid, got
        else:
            lo = mid
    return best[0], best[1]


def replan_on_fidelity(search, plan, graph, budget: float):
    """planning.replan on the measured validation fidelity of the emitted plan (budget mode).
    Returns (plan, graph): the given ones when they pass the fidelity floor."""
    t0 = time.perf_counter()
    cands, allowed = search.cands, search.allowed
    classifier = looks_like_classifier(search.original)  # top-1 only for [batch, classes] outputs
    ev = search.fidelity_eval
    graphs = {tuple(o.id for o in plan): graph}
    comps = {tuple(o.id for o in plan): ev.compare(graph)}  # each emitted plan is evaluated once

    def s_of(comp) -> float:
        return comp.top1_agreement if (classifier and comp.top1_agreement is not None) else -float(comp.nmse)

    def score(p) -> float:
        key = tuple(o.id for o in p)
        if key not in graphs:
            graphs[key] = search.build(list(p))
        if key not in comps:
            comps[key] = ev.compare(graphs[key])
        return s_of(comps[key])

    def score_without(p, o) -> float:
        q = [x for x in p if x is not o] + cands.keeps(o)
        return s_of(ev.compare(search.build(q, seq=False)))

    def solve_without(banned: set):
        saved = set(allowed)
        allowed.difference_update(banned)
        try:
            return search.solve_at(budget)
        finally:
            allowed.clear()
            allowed.update(saved)

    first = comps[tuple(o.id for o in plan)]
    if judge(first, classifier=classifier).ok:
        return plan, graph
    best, best_s, steps = replan_measured(plan, score=score, score_without=score_without, solve_without=solve_without,
                                          good_enough=lambda s: judge(_Score(s), classifier=classifier).ok)
    search.timings["replan_s"] = search.timings.get("replan_s", 0.0) + time.perf_counter() - t0
    search.timings.setdefault("replan_steps", []).extend(st.to_dict() for st in steps)
    return best, graphs[tuple(o.id for o in best)]


@dataclass
class _Score:
    """A fidelity score (top-1 agreement, or -NMSE) seen as a comparison for `judge`."""

    s: float

    @property
    def top1_agreement(self):
        return self.s if self.s >= 0 else None

    @property
    def nmse(self) -> float:
        return -self.s if self.s < 0 else 0.0


__all__ = ["bisect_max_error", "replan_on_fidelity"]
