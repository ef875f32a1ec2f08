"""The budget search: solve, apply, measure, tighten, until a plan meets the latency budget.

    importance of every useful option (measured on calibration data, or the data-free guess)
    -> DP at internal budget b_0 = budget x PLAN_MARGIN (or budget when b_0 is below the fastest
       plan's predicted ratio) -> apply with real weights (sequential refit) -> measure end to end
    -> accepted when the measured median ratio m <= budget x (1 + tolerance);
       else b_{k+1} = b_k x budget / m (the latency model is m / predicted off here) and re-solve,
       at most `max_rounds` rounds; a plan measured before, or none, lowers b_{k+1} by STEP_DOWN
       again until a new plan appears (the fastest plan only once b_{k+1} < its predicted ratio);
       with calibration data each such plan is re-planned on fidelity like the first
    -> still over: the fastest plan is measured too (evidence); no measured plan within the budget
       -> BudgetInfeasible carrying the fastest plan found (or, with allow_over_budget, that plan
       emitted with a warning).

The fastest plan predicted over the budget is measured anyway (the prediction has an error).
With --max-error E too (the combined objective), each round's plan is the fastest plan within E
at that internal budget (`fidelity_search.bisect_max_error`); --max-error alone is that
bisection at the unconstrained budget (ratio 1). With calibration data and a latency budget only,
a plan whose measured validation fidelity is below the fidelity floor is re-planned first
(`fidelity_search.replan_on_fidelity`).

Solving is lazy: the DP's plan may hold options whose importance is still a proxy; those are
measured and the DP re-solved (at most MAX_LAZY_ROUNDS times) until the plan is measured
throughout. Every plan solved is recorded in `considered` as (predicted ratio, importance).
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import onnx

from .. import diagnostics
from ..errors import BudgetInfeasible, InputError
from ..ir import Graph
from ..ir.exporter import to_proto
from ..passes import LOSSLESS, PassContext, run_to_fixed_point
from .activation_fit import fit_activation_maps
from .dp_problem import count_changes, dp_chains, fastest_plan, solve_plan, useful_options
from .fidelity_search import MIN_EVAL_SAMPLES, bisect_max_error, replan_on_fidelity
from .importance import EvalSet, MeasuredImportance, datafree_importance
from .latency_model import LatencyModel
from .measurement import Measurement, Round
from .objectives import ErrorBound
from .outcome import BudgetOutcome
from .segments import Candidates, SegmentOption
from .sequential_refit import refit_sequential

PLAN_MARGIN = 0.97  # the first DP solve aims at budget x this, so the first plan usually passes
MAX_LAZY_ROUNDS = 12  # DP re-solves while measuring the chosen plan's proxy importances
STEP_DOWN = 0.97  # a re-solved plan already measured: the internal budget is lowered by this factor again
MAX_STEP_DOWN = 40  # ... at most this many times (0.97^40 = 0.30), then the fastest plan


def plan_key(plan: list[SegmentOption]) -> str:
    """A plan's identity regardless of option order."""
    return "|".join(sorted(o.id for o in plan))


def fastest_words(m: Measurement | None, pred: float) -> str:
    if m is None:
        return f"the fastest plan found is predicted at {pred:.3f} (not measured)"
    return f"the fastest plan found is predicted at {pred:.3f} and measured at {m.summary()}"


class BudgetSearch:
    """One search (see the module docstring); `plan_for_budget` runs it. The state every step
    shares: the importance `imp`, the options still `allowed`, the rounds, the plans considered
    and measured, the sequential-refit cache, timings and warnings."""

    def __init__(self, cands: Candidates, lm: LatencyModel, original: onnx.ModelProto, *, budget: float | None,
                 max_error: ErrorBound | None, calibration, original_graph: Graph | None,
                 measure: "Callable[[onnx.ModelProto, float | None], Measurement] | None", tolerance: float,
                 refit: bool, eval_samples: int, max_rounds: int, allow_over_budget: bool, threads: int | None,
                 progress: bool, store, evaluate, validation, sequential: bool, replan: bool) -> None:
        self.cands, self.lm, self.original = cands, lm, original
        self.budget, self.max_error, self.tolerance = budget, max_error, tolerance
        self.calibration, self.validation, self.original_graph = calibration, validation, original_graph
        self.measure, self.refit, self.eval_samples, self.max_rounds = measure, refit, eval_samples, max_rounds
        self.allow_over_budget, self.threads, self.progress = allow_over_budget, threads, progress
        self.store, self.evaluate, self.sequential, self.replan = store, evaluate, sequential, replan
        self.ev_data = validation if validation is not None else calibration
        self.warnings: list[dict] = []
        self.timings: dict[str, float] = {}
        self.considered: list[tuple[float, float]] = []
        self.rounds: list[Round] = []
        self.seq_cache: dict[tuple, dict] = {}
        self.seq_memo: dict = {}  # refit_sequential's per-prefix fits, shared by every plan of this search
        self.seq_info: dict[str, dict] = {}
        self.measured_plans: dict[str, tuple[float, Measurement, float]] = {}  # key -> (predicted, measurement, importance)
        self.graphs: dict[str, tuple[list[SegmentOption], Graph]] = {}

    # ---- setup ----------------------------------------------------------------------------

    @functools.cached_property
    def fidelity_eval(self) -> EvalSet:
        """The validation samples every fidelity probe (--max-error bisection, re-planning) compares
        on, with the original model's outputs on them: built once per search."""
        return EvalSet(self.original, self.ev_data, max(self.eval_samples, MIN_EVAL_SAMPLES), self.threads)
    def score_options(self) -> None:
        """Importance of every useful option: measured on the calibration data (removed
        activations become per-channel affine maps fitted on it first), else the data-free guess."""
        t0 = time.perf_counter()
        cands = self.cands
        options = useful_options(cands, self.lm)
        self.reference = to_proto(cands.graph.copy(), check=False)
        if self.calibration is not None:
            # removed activations become per-channel affine maps fitted on the data (issue 12 §2)
            fit_activation_maps(cands, self.reference, self.calibration, threads=self.threads)
            self.imp = MeasuredImportance(cands, options, self.reference, self.calibration, refit=self.refit,
                                          eval_samples=self.eval_samples, threads=self.threads,
                                          progress=self.progress, store=self.store, evaluate=self.evaluate,
                                          validation=self.validation)
        else:
            if self.max_error is not None:
                raise InputError("--max-error needs --calibration data (fidelity is measured on it)")
            if self.original_graph is None:
                raise ValueError("original_graph is needed for the data-free importance")
            self.imp = datafree_importance(cands, options, self.original_graph)
            diagnostics.warn("no calibration data: which layers to merge, linearize or prune was decided by a data-free "
                             "guess of their importance (TLC/LayerCollapse criteria)",
                             diagnostics.DataFreeWarning, sink=self.warnings)
        self.timings["importance_s"] = time.perf_counter() - t0
        self.allowed = set(self.imp.scores)
        self.base_pred = max(self.lm.predict(cands.original_plan()), 1e-12)  # a model too small to time predicts 0
        self.fast = fastest_plan(dp_chains(cands, self.lm, self.imp, self.allowed), self.lm)
        self.fast_ratio = self.predicted(self.fast)

    # ---- one plan -------------------------------------------------------------------------
    def predicted(self, plan: list[SegmentOption]) -> float:
        """Predicted latency ratio of a plan to the original."""
        return self.lm.predict(plan) / self.base_pred

    def importance_of(self, plan: list[SegmentOption]) -> float:
        return sum(self.imp.of(o) for o in plan)

    def build(self, plan: list[SegmentOption], *, seq: bool = True) -> Graph:
        """The plan applied with real weights, then the lossless passes. An option whose weights
        would leave float32 is replaced by keeps in `plan` (and no longer allowed), with a
        warning. With calibration data and `seq`, the operators are refitted sequentially
        (planning.sequential_refit, cached per plan)."""
        imp, cands = self.imp, self.cands
        ops = imp.operators_for(plan)
        for o in [o for o in plan if o.id in imp.refused]:  # its weights leave float32: keep its layers
            self.allowed.discard(o.id)
            diagnostics.warn(f"option {o.id} not applied: {imp.refused[o.id]}; its layers are kept",
                             diagnostics.OnnxDepthWarning, sink=self.warnings)
            i = plan.index(o)
            plan[i:i + 1] = cands.keeps(o)
        ops = {k: v for k, v in ops.items() if k not in imp.refused}
        if seq and self.sequential and self.refit and self.calibration is not None:
            key = tuple(o.id for o in plan if o.kind != "keep")
            if key not in self.seq_cache:
                sf = refit_sequential(cands, plan, ops, self.reference, self.calibration, self.validation,
                                      threads=self.threads, memo=self.seq_memo)
                self.seq_cache[key] = sf.operators
                self.seq_info.update({k: {"estimator": v, "segment_val_nmse": sf.val_nmse.get(k)}
                                      for k, v in sf.choices.items()})
            ops = self.seq_cache[key]
        g = cands.apply_graph(plan, ops)
        run_to_fixed_point(g, LOSSLESS, PassContext(lossless=True))
        return g

    def solve_at(self, ratio: float) -> list[SegmentOption] | None:
        """DP at `ratio`; options of the chosen plan whose importance is still a proxy are
        measured and the DP re-solved until the plan is measured throughout (lazy evaluation)."""
        imp = self.imp
        plan = None
        for _ in range(MAX_LAZY_ROUNDS):
            plan = solve_plan(dp_chains(self.cands, self.lm, imp, self.allowed), self.lm, ratio * self.base_pred)
            if plan is None:
                return None
            todo = [o for o in plan if not imp.is_measured(o)]
            if not todo:
                break
            imp.measure(todo)
        if plan is not None:
            self.considered.append((self.predicted(plan), self.importance_of(plan)))
        return plan

    def choose(self, internal: float):
        """(plan, graph) at an internal budget: the DP's plan, or with --max-error too the fastest
        plan within the error at that budget (BudgetInfeasible when none is)."""
        if self.max_error is not None:
            return bisect_max_error(self, hi=max(internal, self.fast_ratio))
        p = self.solve_at(internal)
        return p, (None if p is None else self.build(p))

    def lazy_timings(self) -> None:
        self.timings["options_evaluated"] = getattr(self.imp, "evaluated", 0)
        self.timings["options_cached"] = getattr(self.imp, "cached", 0)

    # ---- measuring ------------------------------------------------------------------------
    def measured(self, plan: list[SegmentOption], g: Graph) -> Measurement:
        """The plan's end-to-end measurement against the original (once per plan)."""
        k = plan_key(plan)
        if k not in self.measured_plans:
            m = self.measure(to_proto(g, check=False), self.threshold)
            self.measured_plans[k] = (self.predicted(plan), m, self.importance_of(plan))
            self.graphs[k] = (plan, g)
        return self.measured_plans[k][1]

    def trial(self, plan: list[SegmentOption], g: Graph, internal: float) -> BudgetOutcome | None:
        """Measure a plan (one Round); its outcome when it meets the budget, else None."""
        m = self.measured(plan, g)
        self.rounds.append(Round(internal, self.predicted(plan), m.ratio, m.band, changes=count_changes(plan),
                                 importance=self.importance_of(plan), measured_rounds=m.rounds, cached=m.cached))
        if m.ratio > self.threshold:
            return None
        self.timings["measure_s"] = time.perf_counter() - self.t_measure
        return self.outcome(plan, g, m, self.ok_word)

    def outcome(self, plan, g, m, met, why=None) -> BudgetOutcome:
        return BudgetOutcome(g, plan, self.cands, self.lm, self.imp, self.predicted(plan),
                             None if m is None else m.ratio, None if m is None else m.band, met, self.rounds,
                             self.considered, self.timings, self.warnings, m, why, self.tolerance,
                             self.measured_plans, self.seq_info)

    def infeasible(self, why: str) -> BudgetOutcome:
        """The fastest plan found (least measured ratio, else the fastest predicted) as evidence;
        emitted with a warning under allow_over_budget, else BudgetInfeasible carrying it."""
        self.timings["measure_s"] = time.perf_counter() - self.t_measure
        if self.measured_plans:
            k = self.least_measured()
            best_plan, best_graph = self.graphs[k]
            best_m = self.measured_plans[k][1]
        else:
            best_plan, best_graph, best_m = self.fast, self.build(self.fast), None
        if self.allow_over_budget:
            diagnostics.warn(f"{why}; emitted anyway (--allow-over-budget)", diagnostics.OverBudgetWarning,
                             sink=self.warnings)
            return self.outcome(best_plan, best_graph, best_m, "no (allowed)", why)
        err = BudgetInfeasible(f"{why}; no model written (--allow-over-budget emits that plan anyway)")
        err.outcome = self.outcome(best_plan, best_graph, best_m, "no", why)  # type: ignore[attr-defined]
        raise err

    def step_down(self, internal: float) -> tuple[list[SegmentOption], float]:
        """The next plan to measure after one measured over the budget: the DP's plan at the
        tightened internal budget; while that plan was measured already (or the DP finds none),
        the internal budget is lowered by STEP_DOWN again, so the search moves to the next
        slower-than-fastest plan. The fastest plan only once the internal budget falls below its
        predicted ratio. (Jumping straight to the fastest plan when the re-solved plan was the
        same one turned a first plan measured at 0.905 for a budget of 0.9 into a 9-prune plan
        at 0.17 with top-1 agreement 0.)"""
        for _ in range(MAX_STEP_DOWN):
            if internal < self.fast_ratio:
                break
            p = self.solve_at(internal)
            if p is not None and plan_key(p) not in self.measured_plans:
                return p, internal
            internal *= STEP_DOWN
        return self.fast, self.fast_ratio

    def least_measured(self) -> str:
        """Key of the measured plan of least measured ratio (ties: the least key)."""
        return min(self.measured_plans, key=lambda k: (self.measured_plans[k][1].ratio, k))

    # ---- the objectives -------------------------------------------------------------------
    def run(self) -> BudgetOutcome:
        self.score_options()
        self.t_solve = time.perf_counter()
        if self.max_error is not None and self.budget is None:
            return self.run_max_error()
        assert self.budget is not None
        return self.run_budget()

    def run_max_error(self) -> BudgetOutcome:
        """--max-error alone: the fastest plan within the error, measured (when `measure`) but
        not judged against any budget."""
        plan, graph = bisect_max_error(self)
        self.timings["solve_apply_s"] = time.perf_counter() - self.t_solve
        self.lazy_timings()
        pred = self.predicted(plan)
        m = self.measure(to_proto(graph, check=False), None) if self.measure is not None else None
        if m is not None:
            self.rounds.append(Round(pred, pred, m.ratio, m.band, changes=count_changes(plan),
                                     importance=self.importance_of(plan), measured_rounds=m.rounds, cached=m.cached))
        return BudgetOutcome(graph, plan, self.cands, self.lm, self.imp, pred, None if m is None else m.ratio,
                             None if m is None else m.band, "n/a", self.rounds, self.considered, self.timings,
                             self.warnings, m, refit_info=self.seq_info)

    def run_budget(self) -> BudgetOutcome:
        budget, fast, fast_ratio = self.budget, self.fast, self.fast_ratio
        self.threshold = budget * (1.0 + self.tolerance)
        self.ok_word = "yes" if self.tolerance == 0 else f"yes (tolerance {self.tolerance:g})"
        self.t_measure = time.perf_counter()
        self.timings["solve_apply_s"] = 0.0
        if fast_ratio > budget:  # predicted infeasible: measure the fastest plan anyway (the prediction has an error)
            if self.measure is None:
                return self.infeasible(f"latency budget {budget:g} is infeasible: the fastest plan found is predicted "
                                       f"at {fast_ratio:.3f} of the original")
            ok = self.trial(fast, self.build(fast), fast_ratio)
            return ok or self.infeasible(f"latency budget {budget:g} is infeasible: "
                                         f"{fastest_words(self.measured_plans[plan_key(fast)][1], fast_ratio)}")
        internal = budget * PLAN_MARGIN if budget * PLAN_MARGIN >= fast_ratio else budget
        plan, graph = self.choose(internal)
        if plan is None and internal < budget:
            internal = budget
            plan, graph = self.choose(budget)
        if plan is None:  # the discretized DP (latencies rounded up) finds nothing at this budget
            internal, plan = fast_ratio, fast
            graph = self.build(plan)
        if self.replan and self.calibration is not None and self.max_error is None and plan is not fast:
            plan, graph = replan_on_fidelity(self, plan, graph, internal)
        self.timings["solve_apply_s"] = time.perf_counter() - self.t_solve
        self.lazy_timings()
        if self.measure is None:
            return self.outcome(plan, graph, None, "n/a")
        return self.tighten(plan, graph, internal)

    def tighten(self, plan: list[SegmentOption], graph: Graph, internal: float) -> BudgetOutcome:
        """Measure; over budget -> scale the internal budget by budget / measured and re-solve
        (at most max_rounds rounds); then the fastest plan; then infeasible with the evidence."""
        budget, fast = self.budget, self.fast
        for k in range(self.max_rounds):
            ok = self.trial(plan, graph, internal)
            if ok is not None:
                return ok
            m = self.measured_plans[plan_key(plan)][1]
            if k == self.max_rounds - 1 or plan_key(plan) == plan_key(fast):
                break
            # tighten: the latency model is `measured / predicted` off here; aim that much lower
            internal = internal * budget / max(m.ratio, 1e-6)  # a net time of 0 (below the timer's floor)
            if self.max_error is not None:  # combined objective: the fastest plan within E under the tighter budget
                plan, graph = self.choose(internal)
                continue
            plan, internal = self.step_down(internal)
            graph = self.build(plan)
            if self.replan and self.calibration is not None and plan is not fast:
                plan, graph = replan_on_fidelity(self, plan, graph, internal)
        if plan_key(fast) not in self.measured_plans:  # evidence: the fastest plan, measured
            ok = self.trial(fast, self.build(fast), self.fast_ratio)
            if ok is not None:
                return ok
        fk = plan_key(fast)
        k_best = self.least_measured()
        pred_best, m_best, _ = self.measured_plans[k_best]
        if k_best != fk:
            words = (f"{fastest_words(m_best, pred_best)} (the plan predicted fastest measured "
                     f"{self.measured_plans[fk][1].ratio:.3f})")
        else:
            words = fastest_words(m_best, pred_best)
        tol = "" if self.tolerance == 0 else f" + tolerance {self.tolerance:g}"
        return self.infeasible(f"latency budget {budget:g}{tol} not met after {len(self.rounds)} measured plan(s): "
                               f"{words}")


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
    return BudgetSearch(cands, lm, original, budget=budget, max_error=max_error, calibration=calibration,
                        original_graph=original_graph, measure=measure, tolerance=tolerance, refit=refit,
                        eval_samples=eval_samples, max_rounds=max_rounds, allow_over_budget=allow_over_budget,
                        threads=threads, progress=progress, store=store, evaluate=evaluate, validation=validation,
                        sequential=sequential, replan=replan).run()


__all__ = ["MAX_LAZY_ROUNDS", "MAX_STEP_DOWN", "PLAN_MARGIN", "STEP_DOWN", "BudgetSearch", "fastest_words", "plan_for_budget", "plan_key"]
