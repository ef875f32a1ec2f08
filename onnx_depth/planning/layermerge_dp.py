"""The LayerMerge dynamic program (arXiv 2406.12837), generalised to several independent chains.

A chain (`DPChain`: one chain of the model as the DP sees it, its options priced) has activation
sites 0..L. A segment (st, end] covers layers st+1..end; choosing it with option o (keep, merge,
prune, ...) costs latency T(st, end, o) and contributes importance I(st, end, o) (additive, e.g.
a log-fidelity <= 0). A plan for the chain is a partition of (0, L] into consecutive segments,
one option each.

Per chain, with latency discretised into integer units (rounded *up*, so a plan that fits the
discretised budget fits the real one):

    M[t, 0]   = 0                       for t >= 0
    M[t, end] = max_{st < end, o}  M[t - T(st,end,o), st] + I(st,end,o)
    F(t)      = M[t, L]                 the chain's best importance within latency t

Chains are independent (the graph between them is fixed), so the whole model is a knapsack over
their frontiers:  G_k(t) = max_{u <= t} G_{k-1}(t - u) + F_k(u), with the latency of everything
that no chain covers subtracted from the budget first. Backtracking through stored argmaxes
gives the exact plan. Cost: O(sum_chains L^2 * P * K + chains * K^2) for K latency units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

NEG = -np.inf


@dataclass(frozen=True)
class Option:
    st: int
    end: int
    latency: float
    importance: float
    payload: Any = None


@dataclass
class DPChain:
    length: int  # L: activation sites 0..L
    options: list[Option]
    name: str = ""

    def validate(self) -> None:
        for o in self.options:
            if not 0 <= o.st < o.end <= self.length:
                raise ValueError(f"chain {self.name!r}: option ({o.st}, {o.end}] outside (0, {self.length}]")
            if o.latency < 0:
                raise ValueError(f"chain {self.name!r}: negative latency {o.latency}")


@dataclass
class Plan:
    feasible: bool
    latency: float
    importance: float
    chosen: list[list[Option]] = field(default_factory=list)  # per chain, segments in order


def _units(latency: float, unit: float) -> int:
    return int(np.ceil(latency / unit - 1e-9))


def _solve_chain(chain: DPChain, K: int, unit: float) -> tuple[np.ndarray, list[list]]:
    """F[t] for t = 0..K, and back[end][t] = (option index, previous t) of the best plan."""
    L = chain.length
    M = np.full((L + 1, K + 1), NEG)
    M[0, :] = 0.0
    by_end: dict[int, list[tuple[int, Option, int]]] = {}
    for i, o in enumerate(chain.options):
        by_end.setdefault(o.end, []).append((i, o, _units(o.latency, unit)))
    back_opt = np.full((L + 1, K + 1), -1, dtype=np.int64)
    for end in range(1, L + 1):
        for i, o, u in by_end.get(end, []):
            if u > K:
                continue
            cand = np.full(K + 1, NEG)
            cand[u:] = M[o.st, : K + 1 - u] + o.importance
            better = cand > M[end]
            M[end, better] = cand[better]
            back_opt[end, better] = i
    return M[L], back_opt


def _backtrack_chain(chain: DPChain, back_opt: np.ndarray, t: int, unit: float) -> list[Option]:
    segs: list[Option] = []
    end = chain.length
    while end > 0:
        i = int(back_opt[end, t])
        if i < 0:
            raise AssertionError("backtracking reached an infeasible cell")
        o = chain.options[i]
        segs.append(o)
        t -= _units(o.latency, unit)
        end = o.st
    return segs[::-1]


def solve(chains: Sequence[DPChain], budget: float, fixed_latency: float = 0.0, resolution: int = 2000) -> Plan:
    """The plan of maximal total importance whose total latency (fixed part + chosen options)
    is within `budget`. Latencies are discretised into `resolution` units of budget/resolution."""
    for c in chains:
        c.validate()
    remaining = budget - fixed_latency
    if remaining < 0:
        return Plan(False, fixed_latency, NEG, [])
    unit = max(remaining, 1e-12) / resolution
    K = resolution
    G = np.full(K + 1, NEG)
    G[0:] = 0.0
    splits: list[np.ndarray] = []
    backs = []
    for c in chains:
        F, back_opt = _solve_chain(c, K, unit)
        backs.append(back_opt)
        # knapsack: G'(t) = max_u G(t - u) + F(u)
        newG = np.full(K + 1, NEG)
        arg = np.zeros(K + 1, dtype=np.int64)
        finite = np.nonzero(np.isfinite(F))[0]
        for u in finite:
            cand = np.full(K + 1, NEG)
            cand[u:] = G[: K + 1 - u] + F[u]
            better = cand > newG
            newG[better] = cand[better]
            arg[better] = u
        G = newG
        splits.append(arg)
    best_t = int(np.argmax(G))
    if not np.isfinite(G[best_t]):
        return Plan(False, float("inf"), NEG, [])
    chosen: list[list[Option]] = [[] for _ in chains]
    t = best_t
    for k in range(len(chains) - 1, -1, -1):
        u = int(splits[k][t])
        chosen[k] = _backtrack_chain(chains[k], backs[k], u, unit)
        t -= u
    lat = fixed_latency + sum(o.latency for segs in chosen for o in segs)
    imp = sum(o.importance for segs in chosen for o in segs)
    return Plan(True, lat, imp, chosen)


def brute_force(chains: Sequence[DPChain], budget: float, fixed_latency: float = 0.0) -> Plan:
    """Exhaustive search over all partitions and options (tests only: exponential)."""

    def plans(c: DPChain, end: int):
        if end == 0:
            yield []
            return
        for o in c.options:
            if o.end == end:
                for rest in plans(c, o.st):
                    yield rest + [o]

    best = Plan(False, float("inf"), NEG, [])

    def rec(k: int, acc: list[list[Option]], lat: float, imp: float) -> None:
        nonlocal best
        if lat > budget + 1e-12:
            return
        if k == len(chains):
            if imp > best.importance or (imp == best.importance and lat < best.latency):
                best = Plan(True, lat, imp, [list(s) for s in acc])
            return
        for p in plans(chains[k], chains[k].length):
            rec(k + 1, acc + [p], lat + sum(o.latency for o in p), imp + sum(o.importance for o in p))

    rec(0, [], fixed_latency, 0.0)
    return best
