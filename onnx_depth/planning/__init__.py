"""Planning: what LayerMerge may choose, and what each choice costs.

- `segments`: chains of linear layers on any DAG, the candidate segments and their options
  (keep / merge / prune), a standalone timing model per option, plans applied to a whole model.
- `profiler`: fill the latency database for every candidate option (`onnx-depth profile`).
- `latency_model`: whole-model latency of a plan from segment latencies, corrected in context
  with one whole-model measurement of the original.
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
