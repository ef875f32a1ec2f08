"""What a budget search found: the chosen plan, its graph, and the evidence behind the choice.

`BudgetOutcome` holds the emitted graph and plan (one option per segment, tiling every chain),
the predicted latency ratio (`LatencyModel.predict(plan) / predict(original plan)`), the measured
one with its p10-p90 band (`measurement.Measurement`), whether the budget was met (`met`), every
solve -> apply -> measure round, the (predicted ratio, summed importance) of every plan the DP
considered, and timings and warnings. `segment_rows` / `plan_dict` turn it into the report rows
and the plan file (onnx-depth-plan/1): per changed segment its layers, removed activations and
pruned layers by ONNX node name, MACs and in-context latency before and after, importance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Graph
from .importance import Importance
from .latency_model import LatencyModel
from .measurement import Measurement, Round
from .objectives import ErrorBound
from .realize import pruned_layers, removed_activations
from .segments import Candidates, SegmentOption


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
            before = sum(self.latency.option_cost(k) for k in self.cands.keeps(o))
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


__all__ = ["BudgetOutcome"]
