"""The Python API. The CLI is a thin layer over these functions."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from . import compare, ir, metrics
from .errors import CheckFailed
from .passes import LOSSLESS, PassContext, run_to_fixed_point
from .report import Report

ModelSource = "onnx.ModelProto | str | os.PathLike[str]"


def analyze(model: "onnx.ModelProto | str | os.PathLike[str]") -> metrics.ModelStats:
    """Statistics of a model (see onnx_depth.metrics for the definitions)."""
    return metrics.model_stats(ir.load(model))


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    report: Report


def optimize(
    model: "onnx.ModelProto | str | os.PathLike[str]",
    *,
    lossless: bool = True,
    check: int = 0,
    seed: int = 0,
) -> OptimizeResult:
    """Rewrite a model and return the new ModelProto with a report.

    lossless: run the exact rewrites (canonicalize, fold_bn, exact_activations, merge_linear)
    to a fixed point; with lossless=False only load and emit (round trip). `check` > 0 compares the original and the
    result with onnxruntime (all graph optimizations disabled) on that many random inputs and
    raises CheckFailed on a mismatch.
    """
    source_name = os.fspath(model) if not isinstance(model, onnx.ModelProto) else "<ModelProto>"
    # "before" describes the model as given, before our loader folds constants.
    before = metrics.model_stats(ir.load(model, fold=False))
    graph = ir.load(model)
    results = run_to_fixed_point(graph, LOSSLESS, PassContext(lossless=True)) if lossless else []
    out = ir.to_proto(graph)
    after = metrics.model_stats(graph)
    report = Report(input=source_name, output=None, before=before, after=after, passes=[r.to_dict() for r in results])
    if check:
        reference = model if isinstance(model, onnx.ModelProto) else os.fspath(model)
        report.check = compare.compare_models(reference, out, n_random=check, seed=seed)
        if not report.check.allclose:
            raise CheckFailed(f"rewritten model differs from the original: {report.check.summary()}")
    return OptimizeResult(out, report)
