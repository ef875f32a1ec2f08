"""Re-planning on the MEASURED fidelity of the whole plan (importances are not additive).

The DP adds per-option importances (each measured with only that option applied). Options
interact: two refit blocks that are each harmless can together destroy a classifier. When the
emitted plan's measured validation fidelity is below the floor, the option whose removal helps
most (largest measured marginal loss, by leave-one-out: the plan with that option replaced by
its kept layers, evaluated end to end) is banned and the DP re-solved at the same budget; the
best measured plan is kept. At most `rounds` rounds (each costs one evaluation per changed option
plus one for the re-solved plan).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

__all__ = ["ReplanStep", "replan_measured"]


@dataclass
class ReplanStep:
    plan_ids: list[str]
    score: float
    banned: str | None = None
    marginal: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def replan_measured(plan: Sequence, *, score: Callable[[Sequence], float], score_without: Callable[[Sequence, object], float],
                    solve_without: Callable[[set], "Sequence | None"], good_enough: Callable[[float], bool],
                    rounds: int = 2) -> tuple[list, float, list[ReplanStep]]:
    """(best plan, its score, steps). score(plan): measured fidelity score (higher is better) of
    the plan as emitted; score_without(plan, option): the plan with `option` kept instead (a
    cheaper evaluation is fine: only the ranking matters); solve_without(banned ids): the DP's
    plan at the same budget without those options (None: infeasible)."""
    best = list(plan)
    best_s = score(best)
    steps = [ReplanStep([o.id for o in best if o.kind != "keep"], best_s)]
    banned: set = set()
    cur, cur_s = best, best_s
    for _ in range(rounds):
        if good_enough(best_s):
            break
        changed = [o for o in cur if o.kind != "keep"]
        if not changed:
            break
        marg = {o.id: score_without(cur, o) - cur_s for o in changed}
        worst = max(marg, key=marg.get)
        banned.add(worst)
        nxt = solve_without(set(banned))
        steps[-1].marginal = marg
        steps[-1].banned = worst
        if nxt is None:
            break
        cur = list(nxt)
        cur_s = score(cur)
        steps.append(ReplanStep([o.id for o in cur if o.kind != "keep"], cur_s))
        if cur_s > best_s:
            best, best_s = cur, cur_s
    return best, best_s, steps
