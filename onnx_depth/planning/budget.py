"""The main job: choose merges, activation removals and prunes that meet a latency budget at the
least fidelity cost, apply them, and check the result end to end.

    lossless graph -> candidates (segments.py) -> latency of every option (profiler + SQLite DB,
    corrected in context by latency_model.py) -> importance (importance.py: measured with refit
    on calibration data, or the data-free guess) -> LayerMerge DP (layermerge_dp.py) -> apply
    with real weights (realize.py) -> measure the emitted model against the original model
    interleaved with the same session settings -> if over budget, tighten and re-solve.

Budget: the emitted model's latency / the original's, measured (`latency_db.timer.interleaved_ab`
reports the median of per-round ratios and their p10-p90 band). A plan is accepted when the
measured ratio is <= budget, or when it is at most NOISE_TOLERANCE (3%) over the budget with the
p10 of the per-round ratios under it (reported as "within noise"). Otherwise the
DP is re-solved with the internal budget scaled by budget / measured (at most `max_rounds`
rounds). When even the fastest plan is predicted or measured over the budget the budget is
infeasible: `BudgetInfeasible` (exit code 3) unless allow_over_budget, which emits the fastest
plan found with a warning.

max_error: the fastest plan whose MEASURED error on the calibration data is within E: bisection
over the internal budget (each probe: DP, apply, evaluate), so the fidelity constraint is checked
on the emitted model, not on the additive estimate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx

from ..errors import BudgetInfeasible, InputError
from ..ir import Graph
from ..ir.exporter import to_proto
from ..passes import LOSSLESS, PassContext, run_to_fixed_point
from . import layermerge_dp as dp
from .importance import EvalSet, Importance, MeasuredImportance, OptionScore, datafree_importance
from .latency_model import LatencyModel
from .realize import pruned_layers, removed_activations
from .segments import Candidates, SegmentOption

log = logging.getLogger("onnx_depth")

MIN_GAIN = 0.02     # an option must be predicted >= 2% faster than keeping its layers
NOISE_TOLERANCE = 0.03  # a median this far over the budget, with p10 under it, is "within noise"
DP_RESOLUTION = 6000  # latency units of the DP (each option rounds up: coarse units waste budget)
MAX_LAZY_ROUNDS = 12  # DP re-solves while measuring the chosen plan's proxy importances
METRICS = ("nmse", "top1")


@dataclass
class ErrorBound:
    """--max-error: `metric` (nmse: output NMSE; top1: drop in top-1 agreement, 0..1) <= value."""

    value: float
    metric: str = "nmse"

    @classmethod
    def parse(cls, text: "str | float | ErrorBound") -> "ErrorBound":
        if isinstance(text, ErrorBound):
            return text
        if isinstance(text, (int, float)):
            return cls(float(text))
        metric, _, v = str(text).rpartition(":") if ":" in str(text) else ("nmse", "", str(text))
        metric = metric or "nmse"
        if metric not in METRICS:
            raise InputError(f"--max-error metric must be one of {', '.join(METRICS)} (e.g. 0.05 or top1:0.01), got {metric!r}")
        try:
            value = float(v)
        except ValueError:
            raise InputError(f"--max-error needs a number (e.g. 0.05 or top1:0.01), got {text!r}") from None
        if not value >= 0:
            raise InputError(f"--max-error must be >= 0, got {value}")
        return cls(value, metric)

    def error_of(self, comp) -> float:
        if self.metric == "top1":
            if comp.top1_agreement is None:
                raise InputError("--max-error top1: the model has no classification-like output; use nmse")
            return 1.0 - comp.top1_agreement
        return float(comp.nmse)


@dataclass
class Round:
    """One solve -> apply -> measure round."""

    internal_budget: float
    predicted: float
    measured: float | None = None
    band: tuple[float, float] | None = None
    error: float | None = None
    changes: int = 0


@dataclass
class BudgetOutcome:
    graph: Graph
    plan: list[SegmentOption]
    cands: Candidates
    latency: LatencyModel
    importance: Importance
    predicted_ratio: float
    measured_ratio: float | None
    band: tuple[float, float] | None
    met: str  # "yes" | "within noise" | "no (allowed)" | "n/a"
    rounds: list[Round] = field(default_factory=list)
    considered: list[tuple[float, float]] = field(default_factory=list)  # (predicted ratio, importance) per solved budget
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def changed(self) -> list[SegmentOption]:
        return [o for o in self.plan if o.kind != "keep"]

    def segment_rows(self) -> list[dict]:
        """Per chosen (non-keep) segment: what it is, latency before/after (ms, in-context model
        shares) and importance."""
        rows = []
        for o in self.changed():
            before = sum(self.latency.option_cost(k) for k in self._keeps(o))
            sc = self.importance.scores.get(o.id)
            rows.append({
                "segment": o.id,
                "label": o.label,
                "kind": o.kind,
                "layers": [self.cands.chains[o.chain].layer(j).name for j in o.layers],
                "removed_activations": [a.name for a in removed_activations(self.cands, o)],
                "pruned_layers": [n.name for n in pruned_layers(self.cands, o)],
                "kernel": list(o.geom.kernel) if o.geom is not None and o.geom.kind == "conv" else None,
                "macs_before": o.macs_original,
                "macs_after": o.macs,
                "latency_ms_before": before,
                "latency_ms_after": self.latency.option_cost(o),
                "importance": None if sc is None else sc.importance,
                "importance_source": None if sc is None else sc.source,
            })
        return rows

    def _keeps(self, o: SegmentOption) -> list[SegmentOption]:
        return [self.cands.option(f"c{o.chain}({j - 1},{j}]:keep:{j}") for j in o.layers]

    def plan_dict(self, model_name: str, budget: float | None, max_error: "ErrorBound | None") -> dict:
        rows = self.segment_rows()
        by_name = {}
        for o in self.changed():
            for a in removed_activations(self.cands, o):
                by_name[a.name] = {"name": a.name, "op_type": a.op_type, "input": a.inputs[0], "output": a.outputs[0]}
        return {
            "format": "onnx-depth-plan/1",
            "model": model_name,
            "objective": {"latency_budget": budget,
                          "max_error": None if max_error is None else {"metric": max_error.metric, "value": max_error.value}},
            "latency_ratio_predicted": self.predicted_ratio,
            "latency_ratio_measured": self.measured_ratio,
            "importance": "measured (log-fidelity, -NMSE, after refit)" if self.importance.measured else "data-free guess (TLC/LayerCollapse criteria)",
            "removed_activations": list(by_name.values()),
            "pruned_layers": [{"name": n.name, "op_type": n.op_type} for o in self.changed() for n in pruned_layers(self.cands, o)],
            "segments": rows,
        }


def _dp_chains(cands: Candidates, lm: LatencyModel, imp: Importance, allowed: set[str]) -> list[dp.Chain]:
    chains = []
    for c in cands.chains:
        opts = []
        for o in cands.options:
            if o.chain != c.id or (o.kind != "keep" and (o.id not in allowed or o.id in imp.refused)):
                continue
            opts.append(dp.Option(o.st, o.end, max(lm.option_cost(o), 0.0), imp.of(o), o))
        chains.append(dp.Chain(c.L, opts, name=f"chain {c.id}"))
    return chains


def _solve(chains: list[dp.Chain], lm: LatencyModel, budget_ms: float) -> list[SegmentOption] | None:
    res = dp.solve(chains, budget_ms, fixed_latency=lm.offset_ms(), resolution=DP_RESOLUTION)
    if not res.feasible:
        return None
    return [o.payload for segs in res.chosen for o in segs]


def fastest_plan(chains: list[dp.Chain], lm: LatencyModel) -> list[SegmentOption]:
    """The plan of least predicted latency (DP with importance = -latency, no budget)."""
    fast = [dp.Chain(c.length, [dp.Option(o.st, o.end, o.latency, -o.latency, o.payload) for o in c.options], c.name)
            for c in chains]
    total = sum(o.latency for c in chains for o in c.options) + abs(lm.offset_ms()) + 1.0
    res = dp.solve(fast, total, fixed_latency=lm.offset_ms(), resolution=4000)
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
            keep = sum(lm.option_cost(cands.option(f"c{o.chain}({j - 1},{j}]:keep:{j}")) for j in o.layers)
        except KeyError:
            continue
        if cost < (1.0 - min_gain) * keep:
            out.append(o)
    return out


def plan_for_budget(
    cands: Candidates,
    lm: LatencyModel,
    original: onnx.ModelProto,
    *,
    budget: float | None = None,
    max_error: ErrorBound | None = None,
    calibration=None,
    original_graph: Graph | None = None,
    measure: Callable[[onnx.ModelProto], tuple[float, tuple[float, float]]] | None = None,
    refit: bool = True,
    eval_samples: int = 32,
    max_rounds: int = 3,
    allow_over_budget: bool = False,
    threads: int | None = None,
    progress: bool = False,
    store=None,
) -> BudgetOutcome:
    """Solve, apply, measure (see the module docstring). `cands`: candidates of the lossless
    graph (real weights); `lm`: its latency model; `original`: the model as the user gave it
    (fidelity reference and timing baseline); `measure(model) -> (ratio, (p10, p90))` times a
    model against the original (None: no end-to-end check; the predicted ratio is used)."""
    if budget is None and max_error is None:
        raise InputError("give a latency budget or a maximum error")
    t0 = time.perf_counter()
    warnings: list[str] = []
    timings: dict[str, float] = {}
    options = useful_options(cands, lm)
    reference = to_proto(cands.graph.copy(), check=False)
    if calibration is not None:
        imp = MeasuredImportance(cands, options, reference, calibration, refit=refit, eval_samples=eval_samples,
                                 threads=threads, progress=progress, store=store)
    else:
        if max_error is not None:
            raise InputError("--max-error needs --calibration data (fidelity is measured on it)")
        if original_graph is None:
            raise ValueError("original_graph is needed for the data-free importance")
        imp = datafree_importance(cands, options, original_graph)
        warnings.append("no calibration data: importance is a guess from TLC/LayerCollapse criteria and the "
                        "fidelity cost is NOT measured; pass --calibration DATA")
    timings["importance_s"] = time.perf_counter() - t0
    allowed = set(imp.scores)
    original_plan = cands.original_plan()
    base_pred = lm.predict(original_plan)
    fast = fastest_plan(_dp_chains(cands, lm, imp, allowed), lm)
    fast_ratio = lm.predict(fast) / base_pred
    considered: list[tuple[float, float]] = []
    rounds: list[Round] = []

    def build(plan: list[SegmentOption]) -> Graph:
        ops = imp.operators_for(plan)
        for o in [o for o in plan if o.id in imp.refused]:  # its weights leave float32: keep its layers
            allowed.discard(o.id)
            warnings.append(f"option {o.id} not applied: {imp.refused[o.id]}; its layers are kept")
            i = plan.index(o)
            plan[i:i + 1] = [cands.option(f"c{o.chain}({j - 1},{j}]:keep:{j}") for j in range(o.st + 1, o.end + 1)]
        g = cands.apply_graph(plan, {k: v for k, v in ops.items() if k not in imp.refused})
        run_to_fixed_point(g, LOSSLESS, PassContext(lossless=True))
        return g

    def solve_at(ratio: float) -> list[SegmentOption] | None:
        """DP at `ratio`; options of the chosen plan whose importance is still a proxy are
        measured and the DP re-solved until the plan is measured throughout (lazy evaluation)."""
        plan = None
        for _ in range(MAX_LAZY_ROUNDS):
            plan = _solve(_dp_chains(cands, lm, imp, allowed), lm, ratio * base_pred)
            if plan is None:
                return None
            todo = [o for o in plan if not imp.is_measured(o)]
            if not todo:
                break
            imp.measure(todo)
        if plan is not None:
            considered.append((lm.predict(plan) / base_pred, sum(imp.of(o) for o in plan)))
        return plan

    t1 = time.perf_counter()
    if max_error is not None:
        plan, graph = _bisect_error(cands, imp, max_error, calibration, original, solve_at, build, fast_ratio,
                                    eval_samples, threads, rounds, lm, base_pred)
    else:
        if fast_ratio > budget:
            msg = (f"latency budget {budget:g} is infeasible: the fastest plan found is predicted at "
                   f"{fast_ratio:.3f} of the original")
            if not allow_over_budget:
                raise BudgetInfeasible(msg + " (--allow-over-budget emits it anyway)")
            warnings.append(msg + "; emitted anyway (--allow-over-budget)")
            plan = fast
        else:
            plan = solve_at(budget)
            if plan is None:  # the discretized DP (latencies rounded up) finds nothing at this budget
                msg = (f"latency budget {budget:g} is infeasible at the DP's resolution: the fastest plan is predicted "
                       f"at {fast_ratio:.3f} of the original")
                if not allow_over_budget:
                    raise BudgetInfeasible(msg + " (--allow-over-budget emits it anyway)")
                warnings.append(msg + "; emitted anyway (--allow-over-budget)")
                plan = fast
        graph = build(plan)
    timings["solve_apply_s"] = time.perf_counter() - t1
    timings["options_evaluated"] = getattr(imp, "evaluated", 0)
    timings["options_cached"] = getattr(imp, "cached", 0)
    pred = lm.predict(plan) / base_pred
    measured = band = None
    met = "n/a"
    if measure is not None:
        t2 = time.perf_counter()
        internal = budget if budget is not None else pred
        for k in range(max_rounds):
            measured, band = measure(to_proto(graph, check=False))
            r = Round(internal, lm.predict(plan) / base_pred, measured, band, changes=sum(o.kind != "keep" for o in plan))
            rounds.append(r)
            if budget is None or measured <= budget:
                met = "yes" if budget is not None else "n/a"
                break
            if measured <= budget * (1.0 + NOISE_TOLERANCE) and band[0] <= budget:
                met = "within noise"
                break
            if k == max_rounds - 1:
                break
            # tighten: the model is `measured / predicted` off; aim that much lower
            internal = internal * budget / measured
            nxt = solve_at(internal) if internal >= fast_ratio else fast
            if nxt is None or [o.id for o in nxt] == [o.id for o in plan]:
                if plan is fast or [o.id for o in fast] == [o.id for o in plan]:
                    break
                nxt = fast
            plan = nxt
            graph = build(plan)
        else:  # pragma: no cover - loop always breaks
            pass
        if budget is not None and met not in ("yes", "within noise"):
            msg = (f"latency budget {budget:g} not met: measured {measured:.3f} (p10-p90 {band[0]:.3f}-{band[1]:.3f}) "
                   f"after {len(rounds)} round(s); the fastest plan is predicted at {fast_ratio:.3f}")
            if not allow_over_budget:
                raise BudgetInfeasible(msg + " (--allow-over-budget emits it anyway)")
            warnings.append(msg + "; emitted anyway (--allow-over-budget)")
            met = "no (allowed)"
        timings["measure_s"] = time.perf_counter() - t2
        pred = lm.predict(plan) / base_pred
    return BudgetOutcome(graph, plan, cands, lm, imp, pred, measured, band, met, rounds, considered, timings, warnings)


class BudgetPlanner:
    """Profiles a lossless graph once (latency DB, cached) and plans it for one or more
    objectives: `run(budget=...)` / `run(max_error=...)`. Use as a context manager (it holds the
    latency database open)."""

    def __init__(self, graph: Graph, original: onnx.ModelProto, *, original_graph: Graph | None = None,
                 calibration=None, threads: int = 1, provider: str = "CPUExecutionProvider",
                 latency_db=None, refit: bool = True, progress: bool = False, rounds: int = 21) -> None:
        import onnxruntime as ort

        from ..errors import UnsupportedModel
        from ..latency_db.fingerprint import current
        from ..latency_db.store import LatencyStore, default_path
        from .profiler import profile_candidates
        from .segments import candidates

        if provider not in ort.get_available_providers():
            raise InputError(f"provider {provider!r} is not available; one of {', '.join(ort.get_available_providers())}")
        t0 = time.perf_counter()
        self.original, self.original_graph, self.calibration = original, original_graph, calibration
        self.threads, self.provider, self.refit, self.progress, self.rounds = threads, provider, refit, progress, rounds
        self.cands = candidates(graph)
        if not self.cands.chains:
            raise UnsupportedModel("no chain of linear layers with static shapes to merge, so no latency budget can be "
                                   "met by merging (run with --lossless for the exact rewrites)")
        fp = current(provider=provider, threads=threads)
        self.store = LatencyStore(latency_db or default_path())
        try:
            self.profile = profile_candidates(self.cands, self.store, fp, progress=progress)
            self.latency = LatencyModel.from_profile(self.cands, self.profile)
        except BaseException:
            self.store.close()
            raise
        self.profile_s = time.perf_counter() - t0

    def __enter__(self) -> "BudgetPlanner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    def measure(self, candidate: onnx.ModelProto) -> tuple[float, tuple[float, float]]:
        """Latency ratio candidate / original, interleaved, with this planner's session settings."""
        from ..latency_db.timer import interleaved_ab

        comp = interleaved_ab({"original": self.original, "optimized": candidate}, threads=self.threads,
                              provider=self.provider, rounds=self.rounds)
        return comp.ratios["optimized"], comp.ratio_spread["optimized"]

    def fastest_ratio(self) -> float:
        """Predicted latency ratio of the fastest plan (the lowest budget worth asking for)."""
        imp = Importance(measured=False)
        lm = self.latency
        allowed = {o.id for o in useful_options(self.cands, lm)}
        for k in allowed:
            imp.scores[k] = OptionScore(k, 0.0)
        plan = fastest_plan(_dp_chains(self.cands, lm, imp, allowed), lm)
        return lm.predict(plan) / lm.predict(self.cands.original_plan())

    def run(self, *, budget: float | None = None, max_error: "ErrorBound | str | float | None" = None,
            allow_over_budget: bool = False, measure: bool = True) -> BudgetOutcome:
        t0 = time.perf_counter()
        bound = None if max_error is None else ErrorBound.parse(max_error)
        out = plan_for_budget(self.cands, self.latency, self.original, budget=budget, max_error=bound,
                              calibration=self.calibration, original_graph=self.original_graph,
                              measure=self.measure if measure else None, refit=self.refit,
                              allow_over_budget=allow_over_budget, threads=self.threads, progress=self.progress,
                              store=self.store)
        out.timings = {"profile_s": self.profile_s, **out.timings, "profile_measured": self.profile.measured,
                       "profile_cached": self.profile.cached, "run_s": time.perf_counter() - t0}
        return out


def _bisect_error(cands, imp, bound: ErrorBound, cal, original, solve_at, build, fast_ratio, eval_samples, threads,
                  rounds, lm, base_pred, steps: int = 7):
    """Smallest internal budget (ratio) whose emitted model has measured error <= bound."""
    ev = EvalSet(original, cal, max(eval_samples, 64), threads)
    cache: dict[tuple, tuple] = {}

    def probe(ratio: float):
        plan = solve_at(ratio)
        if plan is None:
            return None
        key = tuple(o.id for o in plan)
        if key not in cache:
            g = build(plan)
            err = bound.error_of(ev.compare(g))
            cache[key] = (plan, g, err)
            rounds.append(Round(ratio, lm.predict(plan) / base_pred, error=err, changes=sum(o.kind != "keep" for o in plan)))
        return cache[key]

    best = probe(1.0)
    if best is None or best[2] > bound.value:
        # nothing changed is always within any bound: the original plan
        plan = cands.original_plan()
        return plan, build(plan)
    lo, hi = fast_ratio, 1.0
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


__all__ = ["BudgetOutcome", "BudgetPlanner", "ErrorBound", "Round", "fastest_plan", "plan_for_budget", "useful_options"]
