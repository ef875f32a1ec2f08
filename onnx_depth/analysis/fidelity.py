"""Fidelity over calibration/evaluation data: onnx_depth.compare's Comparison (top-1 agreement,
NMSE, max abs) accumulated over real feeds by the one evaluation loop (`compare.Evaluation`,
onnxruntime at `runtime.EVAL_OPTIMIZATION`, graph optimizations off), optionally restricted to
some outputs, plus task accuracy when labels are given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..compare import ATOL, RTOL, Comparison, Evaluation
from ..runtime import EVAL_OPTIMIZATION, RunSettings
from .calibration import as_calibration

__all__ = ["EVAL_OPTIMIZATION", "Fidelity", "evaluate"]


@dataclass
class Fidelity:
    """A Comparison over `samples` samples; with labels, (reference, candidate) task accuracy."""

    comparison: Comparison
    samples: int
    accuracy: tuple[float | None, float | None] = (None, None)

    @property
    def accuracy_reference(self) -> float | None:
        return self.accuracy[0]

    @property
    def accuracy_candidate(self) -> float | None:
        return self.accuracy[1]

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
    ev = Evaluation(reference, settings=RunSettings(EVAL_OPTIMIZATION, threads), outputs=outputs, rtol=rtol, atol=atol)
    cal = as_calibration(data, ev.session)
    names = list(ev.names)
    if labels is not None:
        label_output = label_output or names[0]
        if label_output not in names:
            names = [*names, label_output]
    comp = Comparison(rtol=rtol, atol=atol)
    n = 0
    hits_ref = hits_new = 0
    for feed, r, c in ev.pairs(candidate, cal.batches(batch_size), names=names):
        comp.add({k: r[k] for k in ev.names}, {k: c[k] for k in ev.names})
        nb = next(iter(feed.values())).shape[0]
        if labels is not None:
            lab = np.asarray(labels)[n:n + nb]
            hits_ref += int(np.sum(r[label_output].reshape(nb, -1).argmax(-1) == lab))
            hits_new += int(np.sum(c[label_output].reshape(nb, -1).argmax(-1) == lab))
        n += nb
    acc_r = hits_ref / n if labels is not None and n else None
    acc_c = hits_new / n if labels is not None and n else None
    return Fidelity(comp, n, (acc_r, acc_c))
