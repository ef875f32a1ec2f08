import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_depth.planning.layermerge_dp import DPChain, Option, brute_force, solve


def random_chains(draw):
    chains = []
    for c in range(draw(st.integers(1, 3))):
        L = draw(st.integers(1, 4))
        opts = []
        for a in range(L):
            opts.append(Option(a, a + 1, float(draw(st.integers(1, 20))), 0.0))  # "keep" always exists
            for b in range(a + 1, L + 1):
                for _ in range(draw(st.integers(0, 2))):
                    opts.append(Option(a, b, float(draw(st.integers(1, 30))), -float(draw(st.integers(0, 10)))))
        chains.append(DPChain(L, opts, name=f"c{c}"))
    return chains


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_dp_matches_brute_force(data):
    chains = random_chains(data.draw)
    fixed = float(data.draw(st.integers(0, 10)))
    budget = float(data.draw(st.integers(0, 120)))
    # integer latencies with a resolution equal to the budget range: discretisation is exact
    got = solve(chains, budget, fixed, resolution=max(int(budget - fixed), 1))
    want = brute_force(chains, budget, fixed)
    assert got.feasible == want.feasible
    if want.feasible:
        assert np.isclose(got.importance, want.importance)
        assert got.latency <= budget + 1e-9
        # the backtracked plan is a partition with the reported totals
        for chain, segs in zip(chains, got.chosen):
            assert segs[0].st == 0 and segs[-1].end == chain.length
            assert all(a.end == b.st for a, b in zip(segs, segs[1:]))
        assert np.isclose(sum(o.importance for s in got.chosen for o in s), got.importance)


def test_discretisation_never_exceeds_budget():
    rng = np.random.default_rng(0)
    chain = DPChain(6, [Option(a, b, float(rng.uniform(0.1, 3.0)), -float(rng.uniform(0, 1))) for a in range(6) for b in range(a + 1, 7)])
    for budget in (2.0, 3.3, 5.7, 9.1):
        plan = solve([chain], budget, resolution=50)
        if plan.feasible:
            assert plan.latency <= budget + 1e-9


def test_infeasible_budget():
    chain = DPChain(2, [Option(0, 1, 5.0, 0.0), Option(1, 2, 5.0, 0.0), Option(0, 2, 7.0, -1.0)])
    assert not solve([chain], 6.0).feasible
    plan = solve([chain], 7.0)
    assert plan.feasible and [(o.st, o.end) for o in plan.chosen[0]] == [(0, 2)]
    plan = solve([chain], 10.0)
    assert [(o.st, o.end) for o in plan.chosen[0]] == [(0, 1), (1, 2)]  # keeping is free in importance
