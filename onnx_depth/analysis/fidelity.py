"""Fidelity over calibration/evaluation data: onnx_depth.compare's Comparison (top-1 agreement,
NMSE, max abs) accumulated over real feeds, optionally restricted to some outputs, plus task
accuracy when labels are given. Both models run with onnxruntime (graph optimizations off)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .. import runtime
from ..compare import ATOL, RTOL, Comparison
from .calibration import as_calibration

__all__ = ["EVAL_OPTIMIZATION", "Fidelity", "evaluate"]

# The onnxruntime graph-optimization level of every fidelity measurement (the reported fidelity
# here, the planner's importance and re-planning in planning.importance.EvalSet): one level, so
# what the planner optimizes is what the report shows.
EVAL_OPTIMIZATION = "disabled"


@dataclass
class Fidelity:
    comparison: Comparison
    samples: int
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None

    @property
    def top1_agreement(self) -> float | None:
        return self.comparison.top1_agreement

    @property
    def nmse(self) -> float:
        return self.comparison.nmse

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "top1_agreement": self.comparison.top1_agreement,
            "nmse": self.comparison.nmse,
            "max_abs": self.comparison.max_abs,
            "allclose": self.comparison.allclose,
            "accuracy_reference": self.accuracy_reference,
            "accuracy_candidate": self.accuracy_candidate,
        }


def evaluate(
    reference,
    candidate,
    data,
    *,
    outputs: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
    label_output: str | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> Fidelity:
    """Compare `candidate` with `reference` (ModelProto / path / bytes) on every feed of `data`
    (Calibration, path, array or mapping). outputs: the outputs to compare (default all).
    labels [N] with label_output: accuracy of argmax(label_output, last axis) for both."""
    s_ref = runtime.make_session(reference, optimization=EVAL_OPTIMIZATION, threads=threads)
    s_new = runtime.make_session(candidate, optimization=EVAL_OPTIMIZATION, threads=threads)
    cal = as_calibration(data, s_ref)
    names = list(outputs) if outputs is not None else runtime.output_names(s_ref)
    if labels is not None:
        label_output = label_output or names[0]
        if label_output not in names:
            names = [*names, label_output]
    comp = Comparison(rtol=rtol, atol=atol)
    n = 0
    hits_ref = hits_new = 0
    for feed in cal.batches(batch_size):
        r = runtime.run(s_ref, feed, names)
        c = runtime.run(s_new, feed, names)
        keep = list(outputs) if outputs is not None else names
        comp.add({k: r[k] for k in keep}, {k: c[k] for k in keep})
        nb = next(iter(feed.values())).shape[0]
        if labels is not None:
            lab = np.asarray(labels)[n:n + nb]
            hits_ref += int(np.sum(r[label_output].reshape(nb, -1).argmax(-1) == lab))
            hits_new += int(np.sum(c[label_output].reshape(nb, -1).argmax(-1) == lab))
        n += nb
    acc_r = hits_ref / n if labels is not None and n else None
    acc_c = hits_new / n if labels is not None and n else None
    return Fidelity(comp, n, acc_r, acc_c)
