"""The main job: choose merges, activation removals and prunes that meet a latency budget at the
least fidelity cost, apply them, and check the result end to end.

    lossless graph -> candidates (segments) -> latency of every option (profiler + SQLite DB,
    corrected in context by latency_model.py) -> importance (importance.py: measured with refit
    on calibration data, or the data-free guess) -> LayerMerge DP (dp_problem.py over
    layermerge_dp.py) -> apply with real weights (realize.py, sequential_refit.py) -> measure the
    emitted model against the original model interleaved with the same session settings -> if
    over budget, tighten and re-solve (budget_search.py).

Where each part lives:

* `BudgetPlanner` (here): profiles a lossless graph once (latency DB, cached), builds its latency
  model, and measures emitted models end to end; `run` plans for one objective.
* `budget_search`: the search itself (`plan_for_budget`: solve, apply, measure, tighten).
* `fidelity_search`: --max-error bisection and re-planning on measured fidelity.
* `dp_problem`: candidates as the DP's chains; the fastest plan; the useful options.
* `measurement`: `Measurement` (interleaved rounds, median ratio, p10-p90 band) and `Round`.
* `objectives`: `ErrorBound` (--max-error). `outcome`: `BudgetOutcome`, the plan file.

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

import time

import onnx
import onnxruntime as ort

from ..errors import BudgetInfeasible, InputError, UnsupportedModel
from ..ir import Graph
from ..latency_db.fingerprint import current
from ..latency_db.signature import signature
from ..latency_db.store import LatencyStore, default_path
from ..latency_db.timer import interleaved_ab
from ..shapes import fix_inputs, fixed_view, has_symbolic_dims, resolve
from .budget_search import plan_for_budget
from .dp_problem import dp_chains, fastest_plan, useful_options
from .importance import Importance, OptionScore
from .latency_model import LatencyModel
from .measurement import MAX_MEASURE_ROUNDS, MEASURE_ROUNDS, Measurement
from .objectives import ErrorBound
from .outcome import BudgetOutcome
from .profiler import profile_candidates
from .segments import candidates


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
        (original, candidate, rounds=) -> the timer's InterleavedTiming for the end-to-end check, and
        `evaluate` to run importance candidates (planning.importance). None: all here."""
        if fingerprint is None and provider not in ort.get_available_providers():
            raise InputError(f"provider {provider!r} is not available; one of {', '.join(ort.get_available_providers())}")
        t0 = time.perf_counter()
        self.original, self.original_graph, self.calibration = original, original_graph, calibration
        self.threads, self.provider, self.refit, self.progress, self.rounds = threads, provider, refit, progress, rounds
        # symbolic input dims: plan and time at the fixed shapes (onnx_depth.shapes); the graph
        # itself stays symbolic, so every rewrite is valid for every value of the dims
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
        original = self.original
        if self.input_shapes is not None:  # time at the fixed shapes (static copies)
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
        plan = fastest_plan(dp_chains(self.cands, lm, imp, allowed), lm)
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


__all__ = ["BudgetPlanner"]
