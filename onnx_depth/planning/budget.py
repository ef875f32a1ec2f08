"""The main job: choose merges, activation removals and prunes that meet a latency budget at the
least fidelity cost, apply them, and check the result end to end.

    lossless graph -> candidates (segments.py) -> latency of every option (profiler + SQLite DB,
    corrected in context by latency_model.py) -> importance (importance.py: measured with refit
    on calibration data, or the data-free guess) -> LayerMerge DP (layermerge_dp.py) -> apply
    with real weights (realize.py) -> measure the emitted model against the original model
    interleaved with the same session settings -> if over budget, tighten and re-solve.

Budget (one-sided): the emitted model's latency / the original's, measured end to end
(`latency_db.timer.interleaved_ab`: the median of per-round ratios, and their p10-p90 band). A plan
is accepted when the measured median ratio <= budget x (1 + tolerance); the tolerance is 0 unless
the caller asks for one (`--budget-tolerance T`). When the band straddles that threshold, more
rounds are measured (up to MAX_MEASURE_ROUNDS) before deciding on the median.
The DP plans at budget x PLAN_MARGIN (0.97) first, so the first plan usually passes despite the
latency model's error; over budget -> the internal budget is scaled by budget / measured and the
DP re-solved (at most `max_rounds` rounds); still over -> the fastest plan is measured too. When
no measured plan meets the budget (or the fastest plan is predicted and measured over it) the
budget is infeasible: `BudgetInfeasible` (exit code 3) carrying the evidence (`.outcome`: the
fastest plan found, predicted and measured), unless allow_over_budget, which emits the fastest
measured plan with a warning.

Determinism: every end-to-end measurement is stored in the latency DB (table
plan_measurements, keyed by the device fingerprint, the original model's signature and the
emitted model's signature) and reused, so a second run with the same model, options and DB takes
the same decisions and writes the same bytes; `remeasure=True` (`--remeasure`) measures afresh
(and replaces the stored measurements).

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

from .. import diagnostics
from ..errors import BudgetInfeasible, InputError
from ..ir import Graph
from ..ir.exporter import to_proto
from ..passes import LOSSLESS, PassContext, run_to_fixed_point
from . import layermerge_dp as dp
from .activation_fit import fit_activation_maps
from .importance import EvalSet, Importance, MeasuredImportance, OptionScore, datafree_importance
from .latency_model import LatencyModel
from .realize import pruned_layers, removed_activations
from .segments import Candidates, SegmentOption

log = logging.getLogger("onnx_depth")

MIN_GAIN = 0.02     # an option must be predicted >= 2% faster than keeping its layers
PLAN_MARGIN = 0.97  # the first DP solve aims at budget x this, so the first plan usually passes
MEASURE_ROUNDS = 21       # interleaved rounds of one end-to-end measurement
MAX_MEASURE_ROUNDS = 63   # ... extended up to this many while the p10-p90 band straddles the threshold
MEASUREMENT_VERSION = "onnx-depth-plan-measurement-v1"
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
class Measurement:
    """One end-to-end measurement of an emitted model against the original (interleaved
    rounds): `ratio` the median of the per-round ratios, `band` their (p10, p90); the per-round
    block medians in ms of both models; `cached` when it came from the latency DB."""

    ratio: float
    band: tuple[float, float]
    rounds: int
    ms_original: list[float]
    ms_optimized: list[float]
    shapes: dict[str, list[int]] | None = None
    cached: bool = False

    @classmethod
    def from_rounds(cls, ms_original: Sequence[float], ms_optimized: Sequence[float],
                    shapes: "dict[str, list[int]] | None" = None, cached: bool = False) -> "Measurement":
        a, b = np.asarray(ms_original, dtype=np.float64), np.asarray(ms_optimized, dtype=np.float64)
        r = b / a
        return cls(float(np.median(r)), (float(np.percentile(r, 10)), float(np.percentile(r, 90))), len(r),
                   [float(x) for x in a], [float(x) for x in b], shapes, cached)

    def extended(self, more: "Measurement") -> "Measurement":
        return Measurement.from_rounds(self.ms_original + more.ms_original, self.ms_optimized + more.ms_optimized,
                                       self.shapes)

    def straddles(self, threshold: float) -> bool:
        return self.band[0] <= threshold < self.band[1]

    @property
    def median_ms(self) -> tuple[float, float]:
        """(original, optimized) whole-model latency in ms: medians over the rounds."""
        return float(np.median(self.ms_original)), float(np.median(self.ms_optimized))

    def to_dict(self) -> dict:
        return {"version": MEASUREMENT_VERSION, "ms_original": self.ms_original, "ms_optimized": self.ms_optimized,
                "shapes": self.shapes}

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement | None":
        if not isinstance(d, dict) or d.get("version") != MEASUREMENT_VERSION or not d.get("ms_original"):
            return None
        return cls.from_rounds(d["ms_original"], d["ms_optimized"], d.get("shapes"), cached=True)

    def summary(self) -> str:
        return f"{self.ratio:.3f} (p10-p90 {self.band[0]:.3f}-{self.band[1]:.3f}, {self.rounds} rounds)"


@dataclass
class Round:
    """One solve -> apply -> measure round."""

    internal_budget: float
    predicted: float
    measured: float | None = None
    band: tuple[float, float] | None = None
    error: float | None = None
    changes: int = 0
    measured_rounds: int = 0
    cached: bool = False
    importance: float | None = None  # summed importance (log-fidelity estimate) of the plan


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
    met: str  # "yes" | "yes (tolerance T)" | "no (allowed)" | "no" | "n/a"
    rounds: list[Round] = field(default_factory=list)
    considered: list[tuple[float, float]] = field(default_factory=list)  # (predicted ratio, importance) per solved budget
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[dict] = field(default_factory=list)  # diagnostics records {"category", "message"}
    measurement: Measurement | None = None  # of the emitted (or, on failure, the fastest) plan
    why: str | None = None  # why the budget is not met (None when it is)
    tolerance: float = 0.0
    measured_plans: dict[str, tuple[float, Measurement, float]] = field(default_factory=dict)  # key -> (pred, m, importance)
    refit_info: dict[str, dict] = field(default_factory=dict)  # option id -> sequential refit's estimator, NMSE

    @property
    def budget_met(self) -> bool | None:
        """True / False against the budget (None without a latency budget or measurement)."""
        return None if self.met == "n/a" else self.met.startswith("yes")

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


def _changes(plan: list[SegmentOption]) -> int:
    return sum(o.kind != "keep" for o in plan)


def _lazy_timings(timings: dict[str, float], imp: Importance) -> None:
    timings["options_evaluated"] = getattr(imp, "evaluated", 0)
    timings["options_cached"] = getattr(imp, "cached", 0)


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
    measure: "Callable[[onnx.ModelProto, float | None], Measurement] | None" = None,
    tolerance: float = 0.0,
    refit: bool = True,
    eval_samples: int = 32,
    max_rounds: int = 3,
    allow_over_budget: bool = False,
    threads: int | None = None,
    progress: bool = False,
    store=None,
    evaluate=None,
    validation=None,
    sequential: bool = True,
    replan: bool = True,
) -> BudgetOutcome:
    """Solve, apply, measure (see the module docstring). `cands`: candidates of the lossless
    graph (real weights); `lm`: its latency model; `original`: the model as the user gave it
    (fidelity reference and timing baseline); `measure(model, threshold) -> Measurement` times a
    model against the original, measuring more rounds while the band straddles `threshold`
    (None: no end-to-end check; the predicted ratio is used). `tolerance`: accept a measured
    median up to budget x (1 + tolerance) (default 0: one-sided, median <= budget).
    `evaluate`: where importance candidates run (None: here; a cluster's runner).
    validation: held-out samples (fidelity_guard / issue 17): importance, --max-error and the
    re-planning are measured on them, the refits are fitted on `calibration` only; sequential:
    refit the chosen plan's operators in topological order (planning.sequential_refit); replan:
    re-plan on the measured fidelity when the plan is below the fidelity floor (planning.replan).
    Budget and max_error together: the fastest plan within the error that meets the budget."""
    if budget is None and max_error is None:
        raise InputError("give a latency budget or a maximum error")
    t0 = time.perf_counter()
    warnings: list[dict] = []
    timings: dict[str, float] = {}
    options = useful_options(cands, lm)
    reference = to_proto(cands.graph.copy(), check=False)
    if calibration is not None:
        # removed activations become per-channel affine maps fitted on the data (issue 12 §2)
        fit_activation_maps(cands, reference, calibration, threads=threads)
        imp = MeasuredImportance(cands, options, reference, calibration, refit=refit, eval_samples=eval_samples,
                                 threads=threads, progress=progress, store=store, evaluate=evaluate,
                                 validation=validation)
    else:
        if max_error is not None:
            raise InputError("--max-error needs --calibration data (fidelity is measured on it)")
        if original_graph is None:
            raise ValueError("original_graph is needed for the data-free importance")
        imp = datafree_importance(cands, options, original_graph)
        diagnostics.warn("no calibration data: which layers to merge, linearize or prune was decided by a data-free "
                         "guess of their importance (TLC/LayerCollapse criteria)",
                         diagnostics.DataFreeWarning, sink=warnings)
    timings["importance_s"] = time.perf_counter() - t0
    allowed = set(imp.scores)
    original_plan = cands.original_plan()
    base_pred = max(lm.predict(original_plan), 1e-12)  # a model too small to time predicts 0
    fast = fastest_plan(_dp_chains(cands, lm, imp, allowed), lm)
    fast_ratio = lm.predict(fast) / base_pred
    considered: list[tuple[float, float]] = []
    rounds: list[Round] = []

    seq_cache: dict[tuple, dict] = {}
    seq_info: dict[str, dict] = {}

    def build(plan: list[SegmentOption], *, seq: bool = True) -> Graph:
        ops = imp.operators_for(plan)
        for o in [o for o in plan if o.id in imp.refused]:  # its weights leave float32: keep its layers
            allowed.discard(o.id)
            diagnostics.warn(f"option {o.id} not applied: {imp.refused[o.id]}; its layers are kept",
                             diagnostics.OnnxDepthWarning, sink=warnings)
            i = plan.index(o)
            plan[i:i + 1] = [cands.option(f"c{o.chain}({j - 1},{j}]:keep:{j}") for j in range(o.st + 1, o.end + 1)]
        ops = {k: v for k, v in ops.items() if k not in imp.refused}
        if seq and sequential and refit and calibration is not None:
            key = tuple(o.id for o in plan if o.kind != "keep")
            if key not in seq_cache:
                from .sequential_refit import refit_sequential

                sf = refit_sequential(cands, plan, ops, reference, calibration, validation, threads=threads)
                seq_cache[key] = sf.operators
                seq_info.update({k: {"estimator": v, "segment_val_nmse": sf.val_nmse.get(k)} for k, v in sf.choices.items()})
            ops = seq_cache[key]
        g = cands.apply_graph(plan, ops)
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
    ev_data = validation if validation is not None else calibration
    if max_error is not None:
        if budget is None:
            plan, graph = _bisect_error(cands, imp, max_error, ev_data, original, solve_at, build, fast_ratio,
                                        eval_samples, threads, rounds, lm, base_pred)
            timings["solve_apply_s"] = time.perf_counter() - t1
            _lazy_timings(timings, imp)
            pred = lm.predict(plan) / base_pred
            m = measure(to_proto(graph, check=False), None) if measure is not None else None
            if m is not None:
                rounds.append(Round(pred, pred, m.ratio, m.band, changes=_changes(plan),
                                    importance=sum(imp.of(o) for o in plan), measured_rounds=m.rounds, cached=m.cached))
            return BudgetOutcome(graph, plan, cands, lm, imp, pred, None if m is None else m.ratio,
                                 None if m is None else m.band, "n/a", rounds, considered, timings, warnings, m,
                                 refit_info=seq_info)
    assert budget is not None
    threshold = budget * (1.0 + tolerance)
    ok_word = "yes" if tolerance == 0 else f"yes (tolerance {tolerance:g})"
    measured_plans: dict[str, tuple[float, Measurement, float]] = {}  # key -> (predicted, measurement, importance)
    graphs: dict[str, tuple[list[SegmentOption], Graph]] = {}

    def key_of(plan: list[SegmentOption]) -> str:
        return "|".join(sorted(o.id for o in plan))

    def measured(plan: list[SegmentOption], g: Graph) -> Measurement:
        k = key_of(plan)
        if k not in measured_plans:
            m = measure(to_proto(g, check=False), threshold)
            measured_plans[k] = (lm.predict(plan) / base_pred, m, sum(imp.of(o) for o in plan))
            graphs[k] = (plan, g)
        return measured_plans[k][1]

    def outcome(plan, g, m, met, why=None) -> BudgetOutcome:
        return BudgetOutcome(g, plan, cands, lm, imp, lm.predict(plan) / base_pred, None if m is None else m.ratio,
                             None if m is None else m.band, met, rounds, considered, timings, warnings, m, why,
                             tolerance, measured_plans, seq_info)

    def infeasible(why: str) -> BudgetOutcome:
        """The fastest plan found (least measured ratio, else the fastest predicted) as evidence;
        emitted with a warning under allow_over_budget, else BudgetInfeasible carrying it."""
        timings["measure_s"] = time.perf_counter() - t2
        if measured_plans:
            k = min(measured_plans, key=lambda k: (measured_plans[k][1].ratio, k))
            best_plan, best_graph = graphs[k]
            best_m = measured_plans[k][1]
        else:
            best_plan, best_graph, best_m = fast, build(fast), None
        if allow_over_budget:
            diagnostics.warn(f"{why}; emitted anyway (--allow-over-budget)", diagnostics.OverBudgetWarning,
                             sink=warnings)
            return outcome(best_plan, best_graph, best_m, "no (allowed)", why)
        err = BudgetInfeasible(f"{why}; no model written (--allow-over-budget emits that plan anyway)")
        err.outcome = outcome(best_plan, best_graph, best_m, "no", why)  # type: ignore[attr-defined]
        raise err

    def fastest_words(m: Measurement | None, pred: float) -> str:
        if m is None:
            return f"the fastest plan found is predicted at {pred:.3f} (not measured)"
        return f"the fastest plan found is predicted at {pred:.3f} and measured at {m.summary()}"

    def choose(internal: float):
        """(plan, graph) at an internal budget: the DP's plan, or with --max-error too the fastest
        plan within the error at that budget (BudgetInfeasible when none is)."""
        if max_error is not None:
            return _bisect_error(cands, imp, max_error, ev_data, original, solve_at, build, fast_ratio, eval_samples,
                                 threads, rounds, lm, base_pred, hi=max(internal, fast_ratio))
        p = solve_at(internal)
        return p, (None if p is None else build(p))

    def trial(plan: list[SegmentOption], g: Graph, internal: float) -> BudgetOutcome | None:
        """Measure a plan (one Round); its outcome when it meets the budget, else None."""
        m = measured(plan, g)
        rounds.append(Round(internal, lm.predict(plan) / base_pred, m.ratio, m.band, changes=_changes(plan),
                            importance=sum(imp.of(o) for o in plan), measured_rounds=m.rounds, cached=m.cached))
        if m.ratio > threshold:
            return None
        timings["measure_s"] = time.perf_counter() - t2
        return outcome(plan, g, m, ok_word)

    t2 = time.perf_counter()
    timings["solve_apply_s"] = 0.0
    if fast_ratio > budget:  # predicted infeasible: measure the fastest plan anyway (the prediction has an error)
        if measure is None:
            return infeasible(f"latency budget {budget:g} is infeasible: the fastest plan found is predicted at "
                              f"{fast_ratio:.3f} of the original")
        ok = trial(fast, build(fast), fast_ratio)
        return ok or infeasible(f"latency budget {budget:g} is infeasible: "
                                f"{fastest_words(measured_plans[key_of(fast)][1], fast_ratio)}")
    internal = budget * PLAN_MARGIN if budget * PLAN_MARGIN >= fast_ratio else budget
    plan, graph = choose(internal)
    if plan is None and internal < budget:
        internal = budget
        plan, graph = choose(budget)
    if plan is None:  # the discretized DP (latencies rounded up) finds nothing at this budget
        internal, plan = fast_ratio, fast
        graph = build(plan)
    if replan and calibration is not None and max_error is None and plan is not fast:
        plan, graph = _replan_hook(cands, imp, plan, graph, build, solve_at, allowed, ev_data, original, internal,
                                   eval_samples, threads, timings)
    timings["solve_apply_s"] = time.perf_counter() - t1
    _lazy_timings(timings, imp)
    if measure is None:
        return outcome(plan, graph, None, "n/a")
    for k in range(max_rounds):
        ok = trial(plan, graph, internal)
        if ok is not None:
            return ok
        m = measured_plans[key_of(plan)][1]
        if k == max_rounds - 1 or key_of(plan) == key_of(fast):
            break
        # tighten: the latency model is `measured / predicted` off here; aim that much lower
        internal = internal * budget / max(m.ratio, 1e-6)  # a net time of 0 (below the timer's floor)
        if max_error is not None:  # combined objective: the fastest plan within E under the tighter budget
            plan, graph = choose(internal)
            continue
        nxt = solve_at(internal) if internal >= fast_ratio else fast
        if nxt is None or key_of(nxt) in measured_plans:
            nxt = fast
        plan = nxt
        graph = build(plan)
    if key_of(fast) not in measured_plans:  # evidence: the fastest plan, measured
        ok = trial(fast, build(fast), fast_ratio)
        if ok is not None:
            return ok
    fk = key_of(fast)
    k_best = min(measured_plans, key=lambda k: (measured_plans[k][1].ratio, k))
    pred_best, m_best, _ = measured_plans[k_best]
    if k_best != fk:
        words = (f"{fastest_words(m_best, pred_best)} (the plan predicted fastest measured "
                 f"{measured_plans[fk][1].ratio:.3f})")
    else:
        words = fastest_words(m_best, pred_best)
    tol = "" if tolerance == 0 else f" + tolerance {tolerance:g}"
    return infeasible(f"latency budget {budget:g}{tol} not met after {len(rounds)} measured plan(s): {words}")


class BudgetPlanner:
    """Profiles a lossless graph once (latency DB, cached) and plans it for one or more
    objectives: `run(budget=...)` / `run(max_error=...)`. Use as a context manager (it holds the
    latency database open)."""

    def __init__(self, graph: Graph, original: onnx.ModelProto, *, original_graph: Graph | None = None,
                 calibration=None, threads: int = 1, provider: str = "CPUExecutionProvider",
                 latency_db=None, refit: bool = True, progress: bool = False, rounds: int = MEASURE_ROUNDS,
                 remeasure: bool = False, input_shapes=None, validation=None, sequential: bool = True,
                 replan: bool = True,
                 fingerprint=None, measure_group=None, measure_ab=None, evaluate=None) -> None:
        """The last four are the hooks of a remote target (onnx_depth.cluster): `fingerprint` to
        look latencies up under, `measure_group` to time profile groups (profiler), `measure_ab`
        (original, candidate, rounds=) -> the timer's Comparison for the end-to-end check, and
        `evaluate` to run importance candidates (planning.importance). None: all here."""
        import onnxruntime as ort

        from ..errors import UnsupportedModel
        from ..latency_db.fingerprint import current
        from ..latency_db.store import LatencyStore, default_path
        from .profiler import profile_candidates
        from .segments import candidates

        if fingerprint is None and provider not in ort.get_available_providers():
            raise InputError(f"provider {provider!r} is not available; one of {', '.join(ort.get_available_providers())}")
        t0 = time.perf_counter()
        self.original, self.original_graph, self.calibration = original, original_graph, calibration
        self.threads, self.provider, self.refit, self.progress, self.rounds = threads, provider, refit, progress, rounds
        # symbolic input dims: plan and time at the fixed shapes (onnx_depth.shapes); the graph
        # itself stays symbolic, so every rewrite is valid for every value of the dims
        from ..shapes import fixed_view, has_symbolic_dims, resolve

        if input_shapes is None and has_symbolic_dims(original):
            input_shapes = resolve(original, None, calibration)  # defaults: batch 1, calibration shapes
        self.input_shapes = input_shapes
        if input_shapes is not None:
            graph.fixed_shapes = fixed_view(graph, input_shapes, threads=threads)
        self._measure_ab, self._evaluate = measure_ab, evaluate
        self.validation, self.sequential, self.replan = validation, sequential, replan
        self.cands = candidates(graph)
        if not self.cands.chains:
            raise UnsupportedModel("no chain of linear layers with static shapes to merge, so no latency budget can be "
                                   "met by merging (run with --lossless for the exact rewrites)")
        fp = fingerprint or current(provider=provider, threads=threads)
        self.fingerprint = fp
        self.remeasure, self._remeasured = remeasure, set()
        self.shapes = _input_shapes(original) if input_shapes is None else \
            {k: [int(d) for d in v] for k, v in sorted(input_shapes.shapes.items())}
        # a stored end-to-end measurement holds for the model AND the shapes it was timed at
        self.model_key = _model_key(original) + ("" if input_shapes is None else "@" + repr(self.shapes))
        self.store = LatencyStore(latency_db or default_path())
        try:
            self.profile = profile_candidates(self.cands, self.store, fp, progress=progress, input_shapes=input_shapes,
                                               measure=measure_group)
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

    def measure(self, candidate: onnx.ModelProto, threshold: float | None = None) -> Measurement:
        """Latency ratio candidate / original, interleaved, with this planner's session settings.

        Stored in the latency DB under (fingerprint, signature of the original, signature of the
        candidate) and reused unless `self.remeasure`; while the p10-p90 band straddles
        `threshold`, more rounds are measured (up to MAX_MEASURE_ROUNDS) and the extended
        measurement is stored."""
        from ..latency_db.signature import signature

        key = signature(candidate)
        m = None
        if not self.remeasure or key in self._remeasured:
            m = Measurement.from_dict(self.store.get_plan_measurement(self.fingerprint, self.model_key, key) or {})
        changed = m is None
        if m is None:
            m = self._time(candidate, self.rounds)
        while threshold is not None and m.straddles(threshold) and m.rounds < MAX_MEASURE_ROUNDS:
            m = m.extended(self._time(candidate, min(self.rounds, MAX_MEASURE_ROUNDS - m.rounds)))
            changed = True
        if changed:
            self.store.put_plan_measurement(self.fingerprint, self.model_key, key, m.to_dict())
            self._remeasured.add(key)
        return m

    def _time(self, candidate: onnx.ModelProto, rounds: int) -> Measurement:
        from ..latency_db.timer import interleaved_ab

        original = self.original
        if self.input_shapes is not None:  # time at the fixed shapes (static copies)
            from ..shapes import fix_inputs

            original, candidate = fix_inputs(original, self.input_shapes), fix_inputs(candidate, self.input_shapes)
        if self._measure_ab is not None:  # on a cluster target
            comp = self._measure_ab(original, candidate, rounds=rounds)
        else:
            comp = interleaved_ab({"original": original, "optimized": candidate}, threads=self.threads,
                                  provider=self.provider, rounds=rounds)
        return Measurement.from_rounds(comp.round_ms["original"], comp.round_ms["optimized"], self.shapes)

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
            allow_over_budget: bool = False, measure: bool = True, tolerance: float = 0.0) -> BudgetOutcome:
        t0 = time.perf_counter()
        bound = None if max_error is None else ErrorBound.parse(max_error)
        if not (tolerance >= 0):
            raise InputError(f"--budget-tolerance must be >= 0 (a fraction, e.g. 0.02), got {tolerance!r}")
        try:
            out = plan_for_budget(self.cands, self.latency, self.original, budget=budget, max_error=bound,
                                  calibration=self.calibration, original_graph=self.original_graph,
                                  measure=self.measure if measure else None, tolerance=tolerance, refit=self.refit,
                                  allow_over_budget=allow_over_budget, threads=self.threads, progress=self.progress,
                                  store=self.store, evaluate=self._evaluate, validation=self.validation,
                                  sequential=self.sequential, replan=self.replan)
        except BudgetInfeasible as e:
            failed = getattr(e, "outcome", None)
            if failed is not None:
                self._add_timings(failed, t0)
            raise
        return self._add_timings(out, t0)

    def _add_timings(self, out: BudgetOutcome, t0: float) -> BudgetOutcome:
        out.timings = {"profile_s": self.profile_s, **out.timings, "profile_measured": self.profile.measured,
                       "profile_cached": self.profile.cached, "run_s": time.perf_counter() - t0}
        return out


def _model_key(model: onnx.ModelProto) -> str:
    """The original model's structural signature (what its latency depends on)."""
    from ..latency_db.signature import signature

    return signature(model)


def _input_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Shapes the whole-model measurements use: graph inputs that are not initializers, symbolic
    dims taken as 1 (the timer's default)."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim if v.type.HasField("tensor_type") else []
        out[v.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims]
    return out


def _bisect_error(cands, imp, bound: ErrorBound, cal, original, solve_at, build, fast_ratio, eval_samples, threads,
                  rounds, lm, base_pred, steps: int = 7, hi: float = 1.0):
    """Smallest internal budget (ratio, at most `hi`) whose emitted model has measured error <=
    bound on `cal` (the validation part). With a latency budget (hi < 1) and no plan within the
    bound at it: BudgetInfeasible (the combined objective cannot be met)."""
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

    best = probe(hi)
    if best is None or best[2] > bound.value:
        if hi < 1.0:
            err = "no plan" if best is None else f"the best plan at it has error {best[2]:.3g}"
            raise BudgetInfeasible(f"no plan meets both latency budget {hi:g} and --max-error {bound.metric}:{bound.value:g} "
                                   f"({err} on the validation data)")
        # nothing changed is always within any bound: the original plan
        plan = cands.original_plan()
        return plan, build(plan)
    lo = fast_ratio
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


def _replan_hook(cands, imp, plan, graph, build, solve_at, allowed, ev_data, original, budget, eval_samples, threads,
                 timings):
    """planning.replan on the measured validation fidelity of the emitted plan (budget mode)."""
    from .fidelity_guard import judge, looks_like_classifier
    from .replan import replan_measured

    t0 = time.perf_counter()
    classifier = looks_like_classifier(original)  # top-1 only for [batch, classes] outputs
    ev = EvalSet(original, ev_data, max(eval_samples, 64), threads)
    graphs = {tuple(o.id for o in plan): graph}

    def s_of(comp) -> float:
        return comp.top1_agreement if (classifier and comp.top1_agreement is not None) else -float(comp.nmse)

    def score(p) -> float:
        key = tuple(o.id for o in p)
        if key not in graphs:
            graphs[key] = build(list(p))
        return s_of(ev.compare(graphs[key]))

    def score_without(p, o) -> float:
        keeps = [cands.option(f"c{o.chain}({j - 1},{j}]:keep:{j}") for j in o.layers]
        q = [x for x in p if x is not o] + keeps
        return s_of(ev.compare(build(q, seq=False)))

    def solve_without(banned: set):
        saved = set(allowed)
        allowed.difference_update(banned)
        try:
            return solve_at(budget)
        finally:
            allowed.clear()
            allowed.update(saved)

    first = ev.compare(graph)
    if judge(first, classifier=classifier).ok:
        return plan, graph
    best, best_s, steps = replan_measured(plan, score=score, score_without=score_without, solve_without=solve_without,
                                          good_enough=lambda s: judge(_Score(s), classifier=classifier).ok)
    timings["replan_s"] = time.perf_counter() - t0
    timings["replan_steps"] = [st.to_dict() for st in steps]
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


__all__ = ["BudgetOutcome", "BudgetPlanner", "ErrorBound", "Measurement", "Round", "fastest_plan", "plan_for_budget", "useful_options"]
