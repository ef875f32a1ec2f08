"""The Python API. The CLI is a thin layer over these functions."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from . import compare, ir, metrics
from .errors import CheckFailed, InputError, UnsupportedModel
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
    """model: the rewritten ModelProto; report: what was done and measured; plan: the chosen
    plan (budget / max-error mode; what `--plan-out` writes) or None."""

    model: onnx.ModelProto
    report: Report
    plan: dict | None = None


def _check_args(latency_budget, max_error, lossless, calibration, check, threads) -> None:
    lossy_goal = latency_budget is not None or max_error is not None
    if lossless and lossy_goal:
        raise InputError("--lossless cannot be combined with --latency-budget / --max-error (those remove activations)")
    if latency_budget is not None and not (isinstance(latency_budget, (int, float)) and 0 < float(latency_budget)):
        raise InputError(f"--latency-budget must be a number > 0 (a fraction of the original latency, e.g. 0.7), got {latency_budget!r}")
    if max_error is not None and calibration is None:
        raise InputError("--max-error needs --calibration data: the error is measured on it")
    if check and lossy_goal:
        raise InputError("--check compares outputs exactly; with a budget the rewrite is lossy: fidelity on --calibration data is reported instead")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InputError(f"--threads must be an integer >= 1, got {threads!r}")


def optimize(
    model: "onnx.ModelProto | str | os.PathLike[str]",
    *,
    latency_budget: float | None = None,
    max_error: "float | str | None" = None,
    calibration: "str | os.PathLike[str] | None" = None,
    lossless: bool = False,
    threads: int | None = None,
    provider: str = "CPUExecutionProvider",
    latency_db: "str | os.PathLike[str] | None" = None,
    check: int = 0,
    seed: int = 0,
    allow_over_budget: bool = False,
    refit: bool = True,
    progress: bool = False,
    validation: "str | os.PathLike[str] | None" = None,
) -> OptimizeResult:
    """Rewrite a model and return the new ModelProto with a report.

    Modes:

    * default / ``lossless=True``: the exact rewrites (canonicalize, fold_bn, exact_activations,
      merge_linear) to a fixed point. With `calibration` and not `lossless`, first the calibrated
      rewrites (dead-channel pruning, activations linear on every sample removed).
    * ``latency_budget=B``: LayerMerge under a budget: the emitted model's measured latency is
      at most B times the original's on this machine (`threads`, `provider`), at the least
      fidelity cost (measured with refit on `calibration` when given, else a data-free guess).
      Raises BudgetInfeasible (exit code 3) when B cannot be met, unless `allow_over_budget`.
    * ``max_error=E`` (needs calibration): the fastest plan whose measured error is <= E
      (a number: output NMSE; "top1:0.01": at most 1 point of top-1 agreement lost). With
      ``latency_budget`` too: the fastest plan within E that meets B (BudgetInfeasible if none).

    Calibration data is split into a fit part and a validation part
    (`analysis.calibration.split_fit_validation`: about a quarter held back in contiguous blocks,
    seeded, at least 16 samples; or `validation` = a separate data set): refits see only the fit
    part; importance, max_error and the reported fidelity (`report.fidelity`; the fit part's in
    `report.fidelity_fit`) are measured on the validation part. In budget mode the fidelity guard
    (`planning.fidelity_guard`) sets `report.fidelity_ok` and raises a FidelityWarning when the
    emitted model is below the default floor (or its fidelity is unknown: no data).

    latency_db: the SQLite latency database (default $ONNX_DEPTH_LATENCY_DB or
    ~/.cache/onnx-depth/latency.sqlite). `check` > 0 (exact modes only) compares the original and
    the result with onnxruntime on that many random inputs and raises CheckFailed on a mismatch.
    """
    _check_args(latency_budget, max_error, lossless, calibration, check, threads)
    source_name = os.fspath(model) if not isinstance(model, onnx.ModelProto) else "<ModelProto>"
    # "before" describes the model as given, before our loader folds constants.
    before = metrics.model_stats(ir.load(model, fold=False))
    graph = ir.load(model)
    original = onnx.load(os.fspath(model)) if not isinstance(model, onnx.ModelProto) else model
    cal = None
    split = None
    if validation is not None and calibration is None:
        raise InputError("--validation needs --calibration (the validation set checks what is fitted on the calibration set)")
    if calibration is not None:
        from .analysis.calibration import load_calibration, split_fit_validation

        specs_model = ir.to_proto(graph.copy(), check=False)
        cal_all = load_calibration(calibration, specs_model)
        val = None if validation is None else load_calibration(validation, specs_model)
        split = split_fit_validation(cal_all, val, seed=seed)
        cal = split.fit
    results = []
    outcome = None
    if latency_budget is not None or max_error is not None:
        original_graph = graph.copy()
        results += run_to_fixed_point(graph, LOSSLESS, PassContext(lossless=True))
        outcome = _budget(graph, original_graph, original, float(latency_budget) if latency_budget is not None else None,
                          max_error, cal, threads or 1, provider, latency_db, allow_over_budget, refit, progress,
                          None if split is None or not split.held_out else split.validation)
        graph = outcome.graph
    else:
        if cal is not None and not lossless:
            from .analysis.pipeline import calibrated_rewrites

            results += calibrated_rewrites(graph, cal)
        results += run_to_fixed_point(graph, LOSSLESS, PassContext(lossless=True))
    out = ir.to_proto(graph)
    after = metrics.model_stats(graph)
    report = Report(input=source_name, output=None, before=before, after=after, passes=[r.to_dict() for r in results])
    reference = model if isinstance(model, onnx.ModelProto) else os.fspath(model)
    plan = None
    if outcome is not None:
        from .planning.budget import ErrorBound

        bound = None if max_error is None else ErrorBound.parse(max_error)
        report.budget = None if latency_budget is None else float(latency_budget)
        report.max_error = None if bound is None else {"metric": bound.metric, "value": bound.value}
        report.latency_ratio_predicted = outcome.predicted_ratio
        report.latency_ratio_measured = outcome.measured_ratio
        report.latency_band = outcome.band
        report.budget_met = outcome.met
        report.segments = outcome.segment_rows()
        report.planning = {
            "threads": threads or 1,
            "provider": provider,
            "chains": len(outcome.cands.chains),
            "options": len(outcome.cands.options),
            "options_scored": len(outcome.importance.scores),
            "importance": "measured" if outcome.importance.measured else "data-free guess",
            "rounds": [r.__dict__ for r in outcome.rounds],
            "considered": outcome.considered,
            "chosen": [outcome.predicted_ratio, sum(outcome.importance.of(o) for o in outcome.plan)],
            "timings_s": outcome.timings,
            "refit": outcome.refit_info,
        }
        report.notes += outcome.warnings
        plan = outcome.plan_dict(source_name, report.budget, bound)
    if cal is not None:
        from .analysis.fidelity import evaluate

        report.fidelity = evaluate(reference, out, split.validation)
        report.fidelity_fit = evaluate(reference, out, split.fit) if split.held_out else report.fidelity
        report.validation = split.to_dict()
        if not split.held_out:
            report.notes.append(split.how)
        if not lossless and outcome is None:
            report.notes.append("lossy: activations linear on every calibration sample were removed; fidelity measured on the "
                                + ("validation part" if split.held_out else "calibration data"))
    if outcome is not None:
        _guard(report, split, max_error)
    if check:
        report.check = compare.compare_models(reference, out, n_random=check, seed=seed)
        if not report.check.allclose:
            raise CheckFailed(f"rewritten model differs from the original: {report.check.summary()}")
    return OptimizeResult(out, report, plan)


def _guard(report: Report, split, max_error) -> None:
    """planning.fidelity_guard on the emitted lossy model: report.fidelity_ok and a warning."""
    from .planning.budget import ErrorBound
    from .planning.fidelity_guard import fidelity_warning, judge

    verdict = judge(report.fidelity, held_out=split is None or split.held_out,
                    max_error=None if max_error is None else ErrorBound.parse(max_error))
    report.fidelity_ok = verdict.ok
    report.fidelity_guard = verdict.to_dict()
    if verdict.ok is not True and verdict.message:
        fidelity_warning(verdict.message, report.notes, stacklevel=4)
    elif verdict.message:
        report.notes.append(verdict.message)


def _budget(graph, original_graph, original, budget, max_error, cal, threads, provider, latency_db, allow_over_budget,
            refit, progress, validation=None):
    """Profile (cached in the latency DB), plan, apply, measure: planning.budget.BudgetPlanner."""
    from .planning.budget import BudgetPlanner

    with BudgetPlanner(graph, original, original_graph=original_graph, calibration=cal, threads=threads,
                       provider=provider, latency_db=latency_db, refit=refit, progress=progress,
                       validation=validation) as planner:
        return planner.run(budget=budget, max_error=max_error, allow_over_budget=allow_over_budget)
