"""`onnx-depth optimize IN OUT`: the rewrite, its report, plan, plot and ORT-format copy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .. import api, safe_io
from ..errors import InputError, OnnxDepthError
from ..fmt import humanize_macs
from ..ir import save
from ..ir.exporter import protected_inputs
from ..ort_format import emit_ort, planned_outputs
from ..planning.profiler import progress_wanted
from ..plot import plot_report


def register(sub: "argparse._SubParsersAction[Any]") -> argparse.ArgumentParser:
    o = sub.add_parser("optimize", help="rewrite IN into a shallower OUT")
    o.add_argument("input", metavar="IN")
    o.add_argument("output", metavar="OUT")
    o.add_argument("--lossless", action="store_true", help="only exact rewrites: canonicalize, fold BatchNorm, remove identity activations, merge linear layers (the default until a budget is given)")
    o.add_argument("--calibration", metavar="DATA", help="calibration data: report fidelity on it; without --lossless also prune dead channels and remove activations that were linear on every sample (lossy)")
    o.add_argument("--validation", metavar="DATA", help="held-out data to measure fidelity, importance and --max-error on (default: about a quarter of --calibration, in contiguous blocks, is held back and never fitted on)")
    o.add_argument("--latency-budget", type=float, metavar="B", help="LayerMerge: the output must run in at most B x the input's latency on this machine (e.g. 0.7), at the least fidelity cost; exit 3 if infeasible")
    o.add_argument("--max-error", metavar="E", help="the fastest model whose error on --calibration data is <= E (output NMSE, e.g. 0.05; or top1:0.01 = at most 1 point of top-1 agreement lost)")
    o.add_argument("--allow-over-budget", action="store_true", help="emit the fastest plan found even when the budget is not met (exit 0 with a warning)")
    o.add_argument("--budget-tolerance", type=float, default=0.0, metavar="T", help="accept a measured median latency ratio up to B x (1 + T) (default 0: the median must be <= B)")
    o.add_argument("--remeasure", action="store_true", help="measure the planned models afresh instead of reusing their measurements stored in the latency DB (which make reruns deterministic)")
    o.add_argument("--plan-out", metavar="PLAN.json", help="write the chosen plan (segments, removed activations and pruned layers by ONNX node name) for fine-tuning")
    o.add_argument("--threads", type=int, default=None, metavar="N", help="intra-op threads of the target runtime for latency (default 1; part of the latency DB fingerprint)")
    o.add_argument("--provider", default="CPUExecutionProvider", help="onnxruntime execution provider to measure on (default CPUExecutionProvider)")
    o.add_argument("--latency-db", metavar="PATH", help="latency database (default $ONNX_DEPTH_LATENCY_DB or ~/.cache/onnx-depth/latency.sqlite)")
    o.add_argument("--distill", action="store_true", help="budget / max-error mode with calibration: fine-tune the operators the plan changed end to end toward the original's outputs (torch: pip install onnx-depth[torch]); stops on the validation error and is kept only if that falls")
    o.add_argument("--no-refit", action="store_true", help="budget mode with calibration: merge naively instead of refitting merged layers by least squares")
    o.add_argument("--check", type=int, default=0, metavar="N", help="compare IN and OUT on N random inputs (exit 1 on mismatch; exact modes only)")
    o.add_argument("--input-shape", action="append", metavar="NAME:D1,D2,...", dest="input_shape",
                   help="concrete dims of a symbolic input for shape inference, profiling, timing and --check "
                        "(repeatable; D1,D2,... when the model has one input). Default: batch 1, other symbolic "
                        "dims from --calibration data; the output keeps the symbolic dims")
    o.add_argument("--fix-shapes", action="store_true",
                   help="write the output with the static input shapes (--input-shape / defaults) instead of keeping the symbolic dims")
    o.add_argument("--report", metavar="FILE.json", help="write a JSON report")
    o.add_argument("--emit-ort", metavar="DIR", help="also convert OUT to ORT format in DIR with onnxruntime's converter, with its required_operators.config (for reduced onnxruntime builds)")
    o.add_argument("--plot", metavar="FILE.png", help="with --latency-budget / --max-error: plot latency ratio vs estimated fidelity of the plans considered and the chosen one (needs matplotlib: pip install onnx-depth[plot])")
    _add_cluster_options(o)
    o.set_defaults(func=run)

    return o


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    """--cluster / --target / --cluster-timeout (onnx_depth.cluster; dask is imported only when given)."""
    p.add_argument("--cluster", metavar="tcp://HOST:8786", help="measure latency on the Dask workers of --target (started on the device with `dask worker tcp://HOST:8786 --nthreads 1 --resources \"onnxdepth-target-NAME=1\"`) and evaluate importance on any worker (pip install onnx-depth[cluster])")
    p.add_argument("--target", metavar="NAME", help="with --cluster: the target device's name (its workers hold the Dask resource onnxdepth-target-NAME); latencies are stored under their fingerprint")
    p.add_argument("--cluster-timeout", type=float, default=None, metavar="S", help="with --cluster: seconds to reach the scheduler before giving up with exit 2 (default 10)")


def run(args: argparse.Namespace) -> int:
    calibration = getattr(args, "calibration", None)
    budget = getattr(args, "latency_budget", None)
    max_error = getattr(args, "max_error", None)
    goal = budget is not None or max_error is not None
    lossless = bool(args.lossless) or (calibration is None and not goal)
    quiet = bool(getattr(args, "quiet", False))
    if getattr(args, "plot", None) and not goal:
        raise InputError("--plot needs --latency-budget or --max-error (it shows the plans they consider)")
    if getattr(args, "plan_out", None) and not goal:
        raise InputError("--plan-out needs --latency-budget or --max-error (the plan is what they choose)")
    check_output_paths(args)
    try:
        res = api.optimize(args.input, lossless=lossless, calibration=calibration, check=args.check,
                           validation=getattr(args, "validation", None),
                           latency_budget=budget, max_error=max_error, threads=getattr(args, "threads", None),
                           provider=getattr(args, "provider", "CPUExecutionProvider"), latency_db=getattr(args, "latency_db", None),
                           allow_over_budget=bool(getattr(args, "allow_over_budget", False)), refit=not getattr(args, "no_refit", False),
                           progress=progress_wanted(quiet), budget_tolerance=getattr(args, "budget_tolerance", 0.0),
                           remeasure=bool(getattr(args, "remeasure", False)),
                           input_shapes=getattr(args, "input_shape", None), fix_shapes=bool(getattr(args, "fix_shapes", False)),
                           cluster=getattr(args, "cluster", None), target=getattr(args, "target", None),
                           cluster_timeout=getattr(args, "cluster_timeout", None),
                           distill=bool(getattr(args, "distill", False)))
    except OnnxDepthError as e:
        report = getattr(e, "report", None)
        if report is not None:  # planning started: leave the evidence
            _write_evidence(args, report, getattr(e, "plan", None), quiet)
        raise
    try:
        save(res.model, args.output, protect=args.input)
        res.report.output = args.output
        if getattr(args, "plan_out", None) and res.plan is not None:
            _write_json(args.plan_out, res.plan)
        if getattr(args, "emit_ort", None):
            emitted = emit_ort(args.output, args.emit_ort, original=args.input)
            res.report.notes.append(f"ORT format: {emitted.summary()}")
            res.report.ort = emitted.to_dict() if hasattr(emitted, "to_dict") else str(emitted.summary())
        if getattr(args, "plot", None):
            _plot(res.report, args.plot, Path(args.input).name)
    finally:  # the report also when a later step fails
        if args.report:
            res.report.write_json(args.report)
    if not quiet:
        _print_passes(res.report.passes)
        if goal:
            print(res.report.segment_table())
            print()
        print(res.report.table())
        if res.report.check is not None:
            print(res.report.check.summary())
        for note in res.report.notes:
            print(f"note: {note}")
    if goal and res.report.planning:
        t = res.report.planning.get("timings_s", {})
        secs = t.get("profile_s", 0.0) + t.get("run_s", 0.0)
        print(f"planned {len(res.report.segments)} segment change(s) in {secs:.1f} s "
              f"(profile {t.get('profile_s', 0):.1f} s: {t.get('profile_measured', 0)} measured, {t.get('profile_cached', 0)} cached)")
    print(f"wrote {args.output}")


def _ort_files(output: str, out_dir: "str | None") -> dict[str, str]:
    """The files --emit-ort will write (same naming as ort_format.emit_ort)."""
    if not out_dir:
        return {}
    return {f"--emit-ort file {Path(p).name}": p for p in planned_outputs(output, out_dir)}


def check_output_paths(args: argparse.Namespace) -> None:
    """Before any work: every output is a writable regular-file path, no two outputs are one
    file and none is an input (safe_io); so a bad path costs nothing and destroys nothing."""
    outputs = {"OUT": args.output}
    for flag, attr in (("--report", "report"), ("--plan-out", "plan_out"), ("--plot", "plot")):
        if getattr(args, attr, None):
            outputs[flag] = getattr(args, attr)
    for what, path in outputs.items():
        safe_io.check_destination(path, what)
    out_dir = getattr(args, "emit_ort", None)
    if out_dir:
        safe_io.check_directory(out_dir, "--emit-ort")
        ort_files = _ort_files(args.output, out_dir)
        if Path(out_dir).is_dir():
            for what, path in ort_files.items():
                safe_io.check_destination(path, what)
        outputs.update(ort_files)
    inputs: dict[str, str] = dict(protected_inputs(args.input))
    if getattr(args, "latency_db", None):
        safe_io.check_distinct({"--latency-db": args.latency_db}, protected_inputs(args.input))
        inputs["the latency database"] = args.latency_db
    if getattr(args, "calibration", None):
        inputs["the calibration data"] = args.calibration
    safe_io.check_distinct(outputs, inputs)


def _write_evidence(args: argparse.Namespace, report, plan: dict | None, quiet: bool) -> None:
    """On a failure after planning started: --report, --plan-out and --plot of what was tried
    (the model itself is not written)."""
    report.notes.append("failed: no model written; 'after' and the segments describe the fastest plan found")
    if getattr(args, "plan_out", None) and plan is not None:
        _write_json(args.plan_out, plan)
    if getattr(args, "plot", None):
        try:
            _plot(report, args.plot, Path(args.input).name)
        except OnnxDepthError as e:  # the plot is secondary to the error being reported
            print(f"onnx-depth: warning: no plot: {e}", file=sys.stderr)
    if args.report:
        report.write_json(args.report)
    if not quiet and report.segments:
        print(report.segment_table())


def _plot(report, path: str, title: str) -> None:
    plot_report(report, path, title=title)
    report.notes.append(f"plot: {path}")


def _write_json(path: str, obj) -> None:
    safe_io.write_text(path, json.dumps(obj, indent=2, default=str), "plan")


def _print_passes(passes: list[dict], show: int = 5) -> None:
    for p in passes:
        line = f"{p['pass']:<18} {p['changed']} rewrite(s)"
        if p["refused"]:
            line += f", {len(p['refused'])} left untouched"
        print(line)
        for reason in p["refused"][:show]:
            print(f"    untouched: {humanize_macs(str(reason))}")
        if len(p["refused"]) > show:
            print(f"    ... {len(p['refused']) - show} more (see --report)")
