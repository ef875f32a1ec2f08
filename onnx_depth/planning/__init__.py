"""Planning: what LayerMerge may choose, and what each choice costs.

- `segments`: chains of linear layers on any DAG, the candidate segments and their options
  (keep / merge / prune), a standalone timing model per option, plans applied to a whole model.
- `profiler`: fill the latency database for every candidate option (`onnx-depth profile`).
- `latency_model`: whole-model latency of a plan from segment latencies, corrected in context
  with one whole-model measurement of the original.
- `importance`: the fidelity cost of each option (measured with a refit, or a data-free guess).
- `layermerge_dp`: the pure DP over chains of priced options; `dp_problem`: a model's
  candidates as that DP's problem (and the fastest plan, the useful options).
- `budget`: `BudgetPlanner` (profile once, plan, measure end to end); `budget_search`: the
  solve -> apply -> measure -> tighten loop (`plan_for_budget`); `fidelity_search`: --max-error
  bisection and re-planning on measured fidelity; `measurement`, `objectives`, `outcome`: what
  those read and return.
- `realize`, `sequential_refit`, `activation_fit`: the chosen plan with real weights.
"""

from .segments import (
    ACTIVATION_OPS,
    Candidates,
    LinearChain,
    Geom,
    Layer,
    SegmentOption,
    Span,
    candidates,
    find_chains,
)

__all__ = [
    "ACTIVATION_OPS",
    "Candidates",
    "LinearChain",
    "Geom",
    "Layer",
    "SegmentOption",
    "Span",
    "candidates",
    "find_chains",
]
