"""The Python API. The CLI is a thin layer over these functions."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import onnx

from . import compare, diagnostics, ir, metrics, shapes
from .analysis.calibration import load_calibration, split_fit_validation
from .analysis.fidelity import evaluate
from .analysis.activation_report import activation_report
from .cluster import DEFAULT_TIMEOUT_S, open_cluster
from .errors import BudgetInfeasible, CheckFailed, InputError, UnsupportedModel, first_line
from .ir.shape_inference import infer_shapes
from .latency_db.fingerprint import current
from .passes import LOSSLESS, PassContext, run_to_fixed_point
from .passes.calibrated import calibrated_rewrites
from .planning.activation_fidelity import annotate_report
from .planning.budget import BudgetPlanner
from .planning.objectives import ErrorBound
from .planning.fidelity_guard import fidelity_warning, judge, looks_like_classifier
from .report import Report, environment
from .shapes import strip_value_info

ModelSource = "onnx.ModelProto | str | os.PathLike[str]"


def analyze(model: "onnx.ModelProto | str | os.PathLike[str]") -> metrics.ModelStats:
    """Statistics of a model as given (see onnx_depth.metrics for the definitions; Constant
    nodes count as initializers, nothing is folded: the same numbers as optimize's "before")."""
    return metrics.model_stats(ir.load(model, fold=False), macs_from=ir.load(model))


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

    source = model if isinstance(model, onnx.ModelProto) else os.fspath(model)
    cal = None if calibration is None else load_calibration(calibration, ir.read_model(source)[0])
    decisions: dict = {}
    rows = activation_report(source, cal, tol=tol, tau=tau, threads=threads, record=decisions)
    return annotate_report(rows, source, cal, decisions=decisions, estimate=estimate_fidelity, threads=threads)


@dataclass
class OptimizeResult:
    """model: the rewritten ModelProto; report: what was done and measured; plan: the chosen
    plan (budget / max-error mode; what `--plan-out` writes) or None."""

    model: onnx.ModelProto
    report: Report
    plan: dict | None = None


def _check_args(latency_budget, max_error, lossless, calibration, check, threads, budget_tolerance=0.0) -> None:
    lossy_goal = latency_budget is not None or max_error is not None
    if lossless and lossy_goal:
        raise InputError("--lossless cannot be combined with --latency-budget / --max-error (those remove activations)")
    if latency_budget is not None and not (isinstance(latency_budget, (int, float)) and 0 < float(latency_budget)):
        raise InputError(f"--latency-budget must be a number > 0 (a fraction of the original latency, e.g. 0.7), got {latency_budget!r}")
    if max_error is not None and calibration is None:
        raise InputError("--max-error needs --calibration data: the error is measured on it")
    if latency_budget is not None and not math.isfinite(float(latency_budget)):
        raise InputError(f"--latency-budget must be a finite number > 0, got {latency_budget!r}")
    if isinstance(check, bool) or not isinstance(check, int) or check < 0:
        raise InputError(f"--check must be a whole number of runs >= 0, got {check!r}")
    if check and lossy_goal:
        raise InputError("--check compares outputs exactly; with a budget the rewrite is lossy: fidelity on --calibration data is reported instead")
    if isinstance(budget_tolerance, bool) or not isinstance(budget_tolerance, (int, float)) or not 0 <= budget_tolerance < 1:
        raise InputError(f"--budget-tolerance must be a fraction in [0, 1) (e.g. 0.02 = 2% over the budget), got {budget_tolerance!r}")
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
    input_shapes: "dict[str, list[int]] | list[str] | None" = None,
    fix_shapes: bool = False,
    budget_tolerance: float = 0.0,
    remeasure: bool = False,
    cluster: str | None = None,
    target: str | None = None,
    cluster_timeout: float | None = None,
    validation: "str | os.PathLike[str] | None" = None,
    distill: bool = False,
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

    The budget test is one-sided: measured median ratio <= latency_budget x (1 + budget_tolerance)
    (default tolerance 0). End-to-end measurements are stored in the latency DB and reused, so the
    same model, options and DB give the same plan and bytes; `remeasure=True` measures afresh.
    On BudgetInfeasible the exception carries `.report` (budget_met False, why, the fastest plan
    found) and `.plan`. Warnings (data-free decisions, fidelity not measured, over-budget
    emission) are Python warnings (`onnx_depth.diagnostics.OnnxDepthWarning` subclasses) and are
    listed in `report.warnings`.

    latency_db: the SQLite latency database (default $ONNX_DEPTH_LATENCY_DB or
    ~/.cache/onnx-depth/latency.sqlite). `check` > 0 (exact modes only) compares the original and
    the result with onnxruntime on that many random inputs and raises CheckFailed on a mismatch.

    input_shapes: {input name: [dims]} (or the CLI's ["NAME:D1,D2", ...]): the concrete dims of
    symbolic input dims for shape inference, profiling, timing and `check` (onnx_depth.shapes:
    without it, batch 1 and the calibration data's shapes; otherwise InputError). The emitted
    model keeps the input's symbolic dims unless `fix_shapes`, which writes the static shapes.
    cluster="tcp://HOST:8786", target=NAME (budget / max-error modes; `pip install
    onnx-depth[cluster]`): latencies are measured on the Dask workers of target NAME and stored
    under THEIR fingerprint, the end-to-end check runs there too, and importance candidates run on
    any worker (onnx_depth.cluster). `cluster_timeout`: seconds to reach the scheduler (default 10).

    distill=True (budget / max-error modes with calibration; needs torch: `pip install
    onnx-depth[torch]`): after planning, the operators the plan changed are fine-tuned end to end
    toward the original's outputs on augmented fit samples, stopping on the validation error
    (onnx_depth.torch.distill); kept only if the validation error with onnxruntime falls. Same
    graph, so the measured latency stands.
    """
    _check_args(latency_budget, max_error, lossless, calibration, check, threads, budget_tolerance)
    _check_cluster_args(cluster, target, latency_budget is not None or max_error is not None)
    if distill:
        _check_distill(latency_budget, max_error, calibration)

    source_name = os.fspath(model) if not isinstance(model, onnx.ModelProto) else "<ModelProto>"
    given = shapes.parse_input_shapes(input_shapes)
    if fix_shapes or given:
        model = _fixed_source(model, given, calibration, fix_shapes)
    # "before" describes the model as given, before our loader folds constants.
    graph = ir.load(model)
    before = metrics.model_stats(ir.load(model, fold=False), macs_from=graph)
    original = onnx.load(os.fspath(model)) if not isinstance(model, onnx.ModelProto) else model
    cal = None
    split = None
    if validation is not None and calibration is None:
        raise InputError("--validation needs --calibration (the validation set checks what is fitted on the calibration set)")
    if calibration is not None:
        specs_model = ir.to_proto(graph.copy(), check=False)
        cal_all = load_calibration(calibration, specs_model)
        val = None if validation is None else load_calibration(validation, specs_model)
        split = split_fit_validation(cal_all, val, seed=seed)
        cal = split.fit
    results = []
    loaded = metrics.model_stats(graph).nodes
    if loaded != before.nodes:
        results.append(_LoadFold(before.nodes - loaded))
    outcome = None
    symbolic = shapes.has_symbolic_dims(original)
    fixed = shapes.resolve(original, given, cal) if symbolic and (given or latency_budget is not None or max_error is not None) else None
    warnings: list[dict] = []
    if latency_budget is not None or max_error is not None:
        original_graph = graph.copy()
        results += run_to_fixed_point(graph, LOSSLESS, PassContext(lossless=True))
        remote = None if cluster is None else _open_cluster(cluster, target, cluster_timeout, provider, threads or 1)
        try:
            outcome, env = _budget(graph, original_graph, original, float(latency_budget) if latency_budget is not None else None,
                                   max_error, cal, threads or 1, provider, latency_db, allow_over_budget, refit, progress,
                                   budget_tolerance, remeasure, fixed, remote,
                                   None if split is None or not split.held_out else split.validation)
        except BudgetInfeasible as e:
            failed = getattr(e, "outcome", None)
            if failed is not None:  # evidence: the report and plan of the fastest plan found (nothing emitted)
                e.report, e.plan = _budget_report(failed, getattr(e, "environment", None), source_name, before, results,
                                                  latency_budget, max_error, threads, provider, budget_tolerance)
                _note_shapes(e.report, fixed)
                _note_cluster(e.report, None if remote is None else remote.where())
                e.report.warnings = list(failed.warnings)
            raise
        finally:
            where = None if remote is None else remote.where()
            if remote is not None:
                remote.close()
        graph = outcome.graph
        warnings += outcome.warnings
    else:
        if cal is not None and not lossless:
            results += calibrated_rewrites(graph, cal)
        results += run_to_fixed_point(graph, LOSSLESS, PassContext(lossless=True))
    out = ir.to_proto(graph)
    if symbolic:
        out = _reinfer(out)
    reference = model if isinstance(model, onnx.ModelProto) else os.fspath(model)
    plan = None
    if outcome is not None:
        report, plan = _budget_report(outcome, env, source_name, before, results, latency_budget, max_error, threads,
                                      provider, budget_tolerance, after=metrics.model_stats(graph))
        _note_cluster(report, where)
    else:
        report = Report(input=source_name, output=None, before=before, after=metrics.model_stats(graph),
                        passes=[r.to_dict() for r in results], environment=environment(current(provider=provider, threads=threads or 1)))
    _note_shapes(report, fixed)
    report.warnings = warnings
    if distill and outcome is not None and outcome.changed():
        if split.held_out:
            keep_top1 = max_error is not None and ErrorBound.parse(max_error).metric == "top1"
            out = _distilled(out, original, outcome, split, threads, report, warnings, keep_top1)
        else:
            diagnostics.warn("--distill skipped: no validation part was held out of the calibration data (too few "
                             "samples), and training without one would go unchecked", diagnostics.OnnxDepthWarning,
                             sink=warnings)
    if cal is not None:
        report.fidelity = evaluate(reference, out, split.validation)
        report.fidelity_fit = evaluate(reference, out, split.fit) if split.held_out else report.fidelity
        report.validation = split.to_dict()
        if not split.held_out:
            report.notes.append(split.how)
        if not lossless and outcome is None:
            report.notes.append("lossy: activations linear on every calibration sample were removed; fidelity measured on the "
                                + ("validation part" if split.held_out else "calibration data"))
    if outcome is not None and (cal is not None or outcome.changed()):  # unchanged and no data: exact, nothing to judge
        _guard(report, split, max_error, original)
    if check:
        samples = shapes.check_samples(original, given, cal)
        report.check = _checked(reference, out, samples, check, seed, source_name)
        if not report.check.allclose:
            raise CheckFailed(f"rewritten model differs from the original: {report.check.summary()}")
    return OptimizeResult(out, report, plan)


def _check_distill(latency_budget, max_error, calibration) -> None:
    if latency_budget is None and max_error is None:
        raise InputError("--distill needs --latency-budget or --max-error (it fine-tunes the operators a plan changed)")
    if calibration is None:
        raise InputError("--distill needs --calibration data (it trains on the fit part and stops on the validation part)")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError("--distill needs torch: pip install 'onnx-depth[torch]'") from None


def _distilled(out, original, outcome, split, threads, report: Report, warnings: list,
               keep_top1: bool) -> onnx.ModelProto:
    """onnx_depth.torch.distill on the emitted model, kept when its validation NMSE falls (and,
    under a --max-error bound on top-1, its validation top-1 agreement does not)."""
    from .torch.distill import distill_if_better

    model, info = distill_if_better(out, original, set(outcome.cands.graph.initializers), split.fit, split.validation,
                                    threads=threads or 1, keep_top1=keep_top1)
    if info.get("skipped") and info.get("curve"):  # trained, no epoch better: the least-squares model stays
        report.notes.append(f"--distill: {info['epochs']} epoch(s) in {info['seconds']:.0f} s, none lowered the validation "
                            f"error ({info['val_nmse_before']:.3g}): the refit model is emitted")
    elif info.get("skipped"):
        diagnostics.warn(f"--distill skipped: {info['skipped']}", diagnostics.OnnxDepthWarning, sink=warnings)
    else:
        (a, b), (ta, tb) = info["val_nmse_onnxruntime"], info["val_top1_onnxruntime"]
        top1 = "" if ta is None else f", top-1 agreement {ta:.1%} -> {tb:.1%}"
        what = "kept" if info["kept"] else ("NOT kept (no lower validation NMSE" + (", or a lower top-1 agreement under "
                                            "--max-error top1" if keep_top1 else "") + ")")
        report.notes.append(f"--distill {what}: {len(info['trained'])} weight tensor(s) of the changed operators, "
                            f"{info['epochs']} epoch(s) (best {info['best_epoch'] + 1}) in {info['seconds']:.0f} s; "
                            f"validation NMSE {a:.3g} -> {b:.3g}{top1}")
    if report.planning is not None:
        report.planning["distill"] = info
    return model


def _guard(report: Report, split, max_error, original: onnx.ModelProto) -> None:
    """planning.fidelity_guard on the emitted lossy model: report.fidelity_ok and a warning."""

    verdict = judge(report.fidelity, held_out=split is None or split.held_out,
                    max_error=None if max_error is None else ErrorBound.parse(max_error),
                    classifier=looks_like_classifier(original))
    report.fidelity_ok = verdict.ok
    report.fidelity_guard = verdict.to_dict()
    if verdict.ok is not True and verdict.message:  # ok None: no data (FidelityUnknownWarning, also "not measured")
        fidelity_warning(verdict.message, report.warnings, stacklevel=4, unknown=verdict.ok is None)
    elif verdict.message:
        report.notes.append(verdict.message)


def _fixed_source(model, given, calibration, fix: bool):
    """The model with --input-shape validated; with --fix-shapes, a copy with those static
    input shapes (and shapes re-inferred): everything downstream then sees a static model."""

    proto = model if isinstance(model, onnx.ModelProto) else ir.read_model(os.fspath(model))[0]
    if not shapes.has_symbolic_dims(proto):
        if given:
            shapes.resolve(proto, given)  # static dims must match what was given
        return model
    if not fix:
        return model
    cal = None
    if calibration is not None:
        cal = load_calibration(calibration, proto)
    if isinstance(model, (str, os.PathLike)):
        proto = onnx.load(os.fspath(model))  # with external data: the copy is self-contained
    return shapes.fix_inputs(proto, shapes.resolve(proto, given, cal), infer=True)


def _reinfer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the intermediates' value_info (stale after rewrites) and infer it again from the
    symbolic inputs; the inputs and outputs are kept exactly as they are."""

    bare = strip_value_info(_copy_model(model))
    try:
        inferred = infer_shapes(bare)
        onnx.checker.check_model(inferred)
    except Exception:  # noqa: BLE001 - an emitted model without value_info is valid too
        return bare
    return inferred


def _copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _checked(reference, out, samples, n: int, seed: int, source_name: str) -> compare.Comparison:
    """compare_at_shapes at every input (overridable initializers included) and every sampled
    shape. onnxruntime failing to run the ORIGINAL model is a bad input (exit 2); failing on
    ours only is our bug."""
    try:
        return compare.compare_at_shapes(reference, out, samples, n_random=n, seed=seed, overridable=True)
    except Exception as e:  # noqa: BLE001 - sorted out below
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        try:
            compare.compare_models(reference, reference, n_random=1, seed=seed, overridable=True)
        except Exception as e2:  # noqa: BLE001
            if type(e2).__module__.startswith("onnxruntime"):
                first = first_line(e2)
                raise InputError(f"{source_name}: onnxruntime cannot run the input model: {first[:300]}") from None
        raise


def _note_shapes(report: Report, fixed) -> None:
    """Where the latency was measured, for a model with symbolic input dims."""
    if fixed is None:
        return
    if report.planning is not None:
        report.planning["input_shapes"] = fixed.to_dict()
    report.notes.append(f"symbolic input dims: planned and timed at input shape {fixed.describe()}; the emitted "
                        f"model keeps the symbolic dims (--input-shape to choose other shapes, --fix-shapes to "
                        f"write static ones)")


class _LoadFold:
    """The loader's constant folding, listed as the first rewrite (so that node counts before /
    after add up with what `analyze` shows for the input)."""

    def __init__(self, folded: int) -> None:
        self.folded = folded

    def to_dict(self) -> dict:
        return {"pass": "fold_constants", "changed": self.folded, "refused": [],
                "details": [f"{self.folded} node(s) computing constants folded into initializers at load"]}


def _budget_report(outcome, env, source_name, before, results, latency_budget, max_error, threads, provider,
                   budget_tolerance, after=None) -> "tuple[Report, dict]":
    """The report and plan of a budget / max-error outcome (also for a failed one: `after` then
    describes the fastest plan found, which was not emitted)."""

    bound = None if max_error is None else ErrorBound.parse(max_error)
    report = Report(input=source_name, output=None, before=before,
                    after=after if after is not None else metrics.model_stats(outcome.graph),
                    passes=[r.to_dict() for r in results])
    if env is not None:
        report.environment = env
    report.budget = None if latency_budget is None else float(latency_budget)
    report.budget_tolerance = None if latency_budget is None else float(budget_tolerance)
    report.max_error = None if bound is None else {"metric": bound.metric, "value": bound.value}
    report.latency_ratio_predicted = outcome.predicted_ratio
    report.latency_ratio_measured = outcome.measured_ratio
    report.latency_band = outcome.band
    report.budget_met = outcome.budget_met
    report.budget_status = outcome.met
    report.why = outcome.why
    m = outcome.measurement
    if m is not None:
        b, a = m.median_ms
        report.latency_ms = {"before": b, "after": a, "shapes": m.shapes, "rounds": m.rounds,
                             "cached": m.cached}
    report.segments = outcome.segment_rows()
    if outcome.budget_met is False:
        report.fastest_plan = {"latency_ratio_predicted": outcome.predicted_ratio,
                               "latency_ratio_measured": outcome.measured_ratio, "latency_band": outcome.band,
                               "emitted": outcome.met == "no (allowed)", "segments": len(report.segments)}
    report.planning = {
        "threads": threads or 1,
        "provider": provider,
        "chains": len(outcome.cands.chains),
        "options": len(outcome.cands.options),
        "options_scored": len(outcome.importance.scores),
        "importance": "measured" if outcome.importance.measured else "data-free guess",
        "rounds": [r.__dict__ for r in outcome.rounds],
        "considered": outcome.considered,
        "measured_plans": [{"predicted": p, "measured": mm.ratio, "band": mm.band, "rounds": mm.rounds,
                            "importance": i, "cached": mm.cached}
                           for p, mm, i in sorted(outcome.measured_plans.values(), key=lambda t: (t[0], t[1].ratio))],
        "chosen": [outcome.predicted_ratio, sum(outcome.importance.of(o) for o in outcome.plan)],
        "chosen_measured": None if m is None else [m.ratio, m.band[0], m.band[1]],
        "timings_s": outcome.timings,
        "refit": outcome.refit_info,
    }
    plan = outcome.plan_dict(source_name, report.budget, bound)
    plan["budget_met"] = outcome.budget_met
    if outcome.why:
        plan["why"] = outcome.why
    return report, plan


def _check_cluster_args(cluster, target, goal: bool) -> None:
    if cluster is None and target is None:
        return
    if cluster is None or target is None:
        raise InputError("--cluster and --target go together: --cluster tcp://HOST:8786 --target NAME")
    if not goal:
        raise InputError("--cluster needs --latency-budget or --max-error (it measures latency on the target)")


def _open_cluster(cluster, target, timeout, provider, threads):
    """A cluster.ClusterSession (dask is imported only here, only with --cluster)."""

    return open_cluster(cluster, target, provider=provider, threads=threads,
                        timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout)


def _note_cluster(report: Report, where: "dict | None") -> None:
    """Where latency was measured and the end-to-end check ran, for a --cluster run."""
    if where is None:
        return
    report.planning["cluster"] = where
    w = where.get("last_timing_worker") or {}
    report.notes.append(f"latency measured on target {where['target']} (fingerprint {where['fingerprint']}); "
                        f"end-to-end check on worker {w.get('name') or w.get('address')} at {w.get('address')} "
                        f"(host {w.get('host')}, pid {w.get('pid')})")


def _budget(graph, original_graph, original, budget, max_error, cal, threads, provider, latency_db, allow_over_budget,
            refit, progress, tolerance, remeasure, input_shapes=None, remote=None, validation=None):
    """Profile (cached in the latency DB), plan, apply, measure: planning.budget.BudgetPlanner
    (on a cluster target when `remote`, a cluster.ClusterSession, is given).
    Returns (outcome, environment for the report)."""

    hooks = {} if remote is None else {"fingerprint": remote.fingerprint, "measure_group": remote.timer.measure_group,
                                       "measure_ab": remote.timer.measure_ab, "evaluate": remote.evaluator}
    with BudgetPlanner(graph, original, original_graph=original_graph, calibration=cal, threads=threads,
                       provider=provider, latency_db=latency_db, refit=refit, progress=progress,
                       remeasure=remeasure, input_shapes=input_shapes, validation=validation, **hooks) as planner:
        env = environment(planner.fingerprint)
        try:
            return planner.run(budget=budget, max_error=max_error, allow_over_budget=allow_over_budget,
                               tolerance=float(tolerance)), env
        except BudgetInfeasible as e:
            e.environment = env
            raise

