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


def analyze_activations(
    model: "onnx.ModelProto | str | os.PathLike[str]",
    calibration: "str | os.PathLike[str] | None" = None,
    *,
    tol: float = 0.0,
    tau: float = 0.05,
    estimate_fidelity: bool = False,
    threads: int | None = None,
) -> list[dict]:
    """Per-activation linearity report (TLC / LayerCollapse / calibration criteria).

    Without calibration data only the data-free criteria (BN statistics, PReLU slopes) apply.
    """
    from .analysis.calibration import load_calibration
    from .analysis.report import activation_report

    source = model if isinstance(model, onnx.ModelProto) else os.fspath(model)
    cal = None if calibration is None else load_calibration(calibration, ir.read_model(source)[0])
    return activation_report(source, cal, tol=tol, tau=tau, estimate_fidelity=estimate_fidelity, threads=threads)


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    report: Report


def optimize(
    model: "onnx.ModelProto | str | os.PathLike[str]",
    *,
    lossless: bool = True,
    calibration: "str | os.PathLike[str] | None" = None,
    check: int = 0,
    seed: int = 0,
) -> OptimizeResult:
    """Rewrite a model and return the new ModelProto with a report.

    lossless: run the exact rewrites (canonicalize, fold_bn, exact_activations, merge_linear)
    to a fixed point; with lossless=False only load and emit (round trip).
    calibration: path of calibration data (.npz/.npy/folder). With lossless=False it drives the
    calibrated rewrites first (dead-channel pruning and linearization of activations that were
    linear on every calibration sample); in both modes the fidelity on that data is reported. `check` > 0 compares the original and the
    result with onnxruntime (all graph optimizations disabled) on that many random inputs and
    raises CheckFailed on a mismatch.
    """
    source_name = os.fspath(model) if not isinstance(model, onnx.ModelProto) else "<ModelProto>"
    # "before" describes the model as given, before our loader folds constants.
    before = metrics.model_stats(ir.load(model, fold=False))
    graph = ir.load(model)
    cal = None
    if calibration is not None:
        from .analysis.calibration import load_calibration

        cal = load_calibration(calibration, ir.to_proto(graph.copy(), check=False))
    results = []
    if cal is not None and not lossless:
        from .analysis.pipeline import calibrated_rewrites

        results += calibrated_rewrites(graph, cal)
    if lossless or cal is not None:
        results += run_to_fixed_point(graph, LOSSLESS, PassContext(lossless=True))
    out = ir.to_proto(graph)
    after = metrics.model_stats(graph)
    report = Report(input=source_name, output=None, before=before, after=after, passes=[r.to_dict() for r in results])
    reference = model if isinstance(model, onnx.ModelProto) else os.fspath(model)
    if cal is not None:
        from .analysis.fidelity import evaluate

        report.fidelity = evaluate(reference, out, cal)
        if not lossless:
            report.notes.append("lossy: activations linear on every calibration sample were removed; fidelity measured on the calibration data")
    if check:
        report.check = compare.compare_models(reference, out, n_random=check, seed=seed)
        if not report.check.allclose:
            raise CheckFailed(f"rewritten model differs from the original: {report.check.summary()}")
    return OptimizeResult(out, report)
