"""Command line interface: a thin layer over onnx_depth.api.

Exit codes: 0 ok, 1 --check found a mismatch, 2 bad input or usage, 3 latency budget infeasible,
4 internal error (a bug: please report it with the output of --debug).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

from . import __version__, api
from .errors import InputError, OnnxDepthError
from .ir import save
from .planning.fidelity_guard import FidelityWarning

log = logging.getLogger("onnx_depth")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other input error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="onnx-depth", description="Make ONNX models shallower and faster.")
    p.add_argument("--version", action="version", version=f"onnx-depth {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final result")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    a = sub.add_parser("analyze", help="print op histogram, depth, params, MACs, activations, I/O")
    a.add_argument("model", help="ONNX model file")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.add_argument("--calibration", metavar="DATA", help="calibration data (.npz keyed by input name, .npy, or a folder of .npy): adds the per-activation linearity report")
    a.add_argument("--activations", action="store_true", help="per-activation report with data-free criteria only (no calibration data)")
    a.add_argument("--estimate-fidelity", action="store_true", help="with --calibration: estimate the fidelity cost of linearizing each activation (naive and with refit; slow)")
    a.set_defaults(func=_cmd_analyze)

    o = sub.add_parser("optimize", help="rewrite IN into a shallower OUT")
    o.add_argument("input", metavar="IN")
    o.add_argument("output", metavar="OUT")
    o.add_argument("--lossless", action="store_true", help="only exact rewrites: canonicalize, fold BatchNorm, remove identity activations, merge linear layers (the default until a budget is given)")
    o.add_argument("--calibration", metavar="DATA", help="calibration data: report fidelity on it; without --lossless also prune dead channels and remove activations that were linear on every sample (lossy)")
    o.add_argument("--validation", metavar="DATA", help="held-out data to measure fidelity, importance and --max-error on (default: about a quarter of --calibration, in contiguous blocks, is held back and never fitted on)")
    o.add_argument("--latency-budget", type=float, metavar="B", help="LayerMerge: the output must run in at most B x the input's latency on this machine (e.g. 0.7), at the least fidelity cost; exit 3 if infeasible")
    o.add_argument("--max-error", metavar="E", help="the fastest model whose error on --calibration data is <= E (output NMSE, e.g. 0.05; or top1:0.01 = at most 1 point of top-1 agreement lost)")
    o.add_argument("--allow-over-budget", action="store_true", help="emit the fastest plan found even when the budget is not met (exit 0 with a warning)")
    o.add_argument("--plan-out", metavar="PLAN.json", help="write the chosen plan (segments, removed activations and pruned layers by ONNX node name) for fine-tuning")
    o.add_argument("--threads", type=int, default=None, metavar="N", help="intra-op threads of the target runtime for latency (default 1; part of the latency DB fingerprint)")
    o.add_argument("--provider", default="CPUExecutionProvider", help="onnxruntime execution provider to measure on (default CPUExecutionProvider)")
    o.add_argument("--latency-db", metavar="PATH", help="latency database (default $ONNX_DEPTH_LATENCY_DB or ~/.cache/onnx-depth/latency.sqlite)")
    o.add_argument("--no-refit", action="store_true", help="budget mode with calibration: merge naively instead of refitting merged layers by least squares")
    o.add_argument("--check", type=int, default=0, metavar="N", help="compare IN and OUT on N random inputs (exit 1 on mismatch; exact modes only)")
    o.add_argument("--report", metavar="FILE.json", help="write a JSON report")
    o.add_argument("--emit-ort", metavar="DIR", help="also convert OUT to ORT format in DIR with onnxruntime's converter, with its required_operators.config (for reduced onnxruntime builds)")
    o.add_argument("--plot", metavar="FILE.png", help="with --latency-budget / --max-error: plot latency ratio vs estimated fidelity of the plans considered and the chosen one (needs matplotlib: pip install onnx-depth[plot])")
    o.set_defaults(func=_cmd_optimize)

    d = sub.add_parser("demo", help="build a built-in model and optimize it under a latency budget")
    d.add_argument("--model", default="mobilenetv2_1.0", help="zoo model name (default mobilenetv2_1.0)")
    d.add_argument("--out", metavar="DIR", help="keep the files in DIR (default: a temporary directory)")
    d.add_argument("--budget", type=float, default=0.75, help="latency budget (default 0.75)")
    d.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    d.set_defaults(func=_cmd_demo)

    try:
        from .latency_db import commands as db_commands
    except ImportError:  # pragma: no cover - latency_db always ships
        db_commands = None
    if db_commands is not None and hasattr(db_commands, "register"):
        db_commands.register(sub)
    return p


def _print_stats(stats, as_json: bool) -> None:
    if as_json:
        print(json.dumps(stats.to_dict(), indent=2))
        return
    from .report import human

    print(f"nodes        {stats.nodes}")
    print(f"depth        {stats.depth}  (linear layers on the longest path: {stats.linear_depth})")
    print(f"params       {human(stats.params)} ({stats.params})")
    print(f"MACs         {human(stats.macs)} ({stats.macs})" + (f"  [{stats.unknown_mac_nodes} nodes without shapes not counted]" if stats.unknown_mac_nodes else ""))
    print(f"activations  {stats.activations}")
    for kind, tensors in (("input ", stats.inputs), ("output", stats.outputs)):
        for t in tensors:
            print(f"{kind}       {t.name}: {t.dtype} {t.shape}")
    print("ops          " + ", ".join(f"{k} {v}" for k, v in stats.op_histogram.items()))


def _cmd_analyze(args: argparse.Namespace) -> int:
    stats = api.analyze(args.model)
    rows = None
    if args.calibration or args.activations:
        if not args.calibration:
            log.warning("no calibration data: data-free criteria only (BatchNorm statistics, PReLU slopes)")
        rows = api.analyze_activations(args.model, args.calibration, estimate_fidelity=args.estimate_fidelity)
    if args.json:
        d = stats.to_dict()
        if rows is not None:
            d["activation_report"] = rows
        print(json.dumps(d, indent=2, default=str))
        return 0
    _print_stats(stats, False)
    if rows is not None:
        from .analysis.report import render_table

        print()
        print(render_table(rows))
    return 0


def _cmd_optimize(args: argparse.Namespace) -> int:
    calibration = getattr(args, "calibration", None)
    budget = getattr(args, "latency_budget", None)
    max_error = getattr(args, "max_error", None)
    goal = budget is not None or max_error is not None
    lossless = bool(args.lossless) or (calibration is None and not goal)
    if getattr(args, "plot", None) and not goal:
        raise InputError("--plot needs --latency-budget or --max-error (it shows the plans they consider)")
    if getattr(args, "plan_out", None) and not goal:
        raise InputError("--plan-out needs --latency-budget or --max-error (the plan is what they choose)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FidelityWarning)
        res = _optimize(args, lossless, calibration, budget, max_error)
    shown = _show_warnings(caught)
    res.report.notes = [n for n in res.report.notes if n not in shown]
    _finish_optimize(args, res, goal)
    return 0


def _show_warnings(caught) -> set[str]:
    """Fidelity warnings on stderr (not hidden by -q); other warnings are re-issued."""
    shown = set()
    for w in caught:
        if issubclass(w.category, FidelityWarning):
            print(f"onnx-depth: warning: {w.message}", file=sys.stderr)
            shown.add(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return shown


def _optimize(args, lossless, calibration, budget, max_error):
    from .planning.profiler import progress_wanted

    return api.optimize(args.input, lossless=lossless, calibration=calibration, check=args.check, validation=getattr(args, "validation", None),
                       latency_budget=budget, max_error=max_error, threads=getattr(args, "threads", None),
                       provider=getattr(args, "provider", "CPUExecutionProvider"), latency_db=getattr(args, "latency_db", None),
                       allow_over_budget=bool(getattr(args, "allow_over_budget", False)), refit=not getattr(args, "no_refit", False),
                       progress=progress_wanted(bool(args.quiet)))


def _finish_optimize(args, res, goal) -> None:
    save(res.model, args.output, protect=args.input)
    res.report.output = args.output
    if getattr(args, "plan_out", None) and res.plan is not None:
        _write_json(args.plan_out, res.plan)
    if getattr(args, "emit_ort", None):
        from .ort_format import emit_ort

        emitted = emit_ort(args.output, args.emit_ort, original=args.input)
        res.report.notes.append(f"ORT format: {emitted.summary()}")
        res.report.ort = emitted.to_dict() if hasattr(emitted, "to_dict") else str(emitted.summary())
    if getattr(args, "plot", None):
        _plot(res.report, args.plot, Path(args.input).name)
    if args.report:
        res.report.write_json(args.report)
    if not args.quiet:
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


def _plot(report, path: str, title: str) -> None:
    import math

    from .plot import plot_plans

    considered = report.planning.get("considered") or []
    pts = [(r, math.exp(i)) for r, i in considered]  # importance is a log-fidelity
    chosen = report.planning.get("chosen")
    measured = {}
    x = report.latency_ratio_measured or (chosen[0] if chosen else None)
    for label, f in (("validation", report.fidelity), ("fit part", report.fidelity_fit)):
        if f is not None and x is not None and (label == "validation" or f is not report.fidelity):
            measured[f"{label} (measured, {'top-1' if f.top1_agreement is not None else 'exp(-NMSE)'})"] = (
                x, f.top1_agreement if f.top1_agreement is not None else math.exp(-f.nmse))
    plot_plans(pts, None if chosen is None else (chosen[0], math.exp(chosen[1])), path, budget=report.budget,
               title=title, ylabel="fidelity (estimated: exp of summed importance; measured: markers)",
               measured=measured)
    report.notes.append(f"plot: {path}")


def _write_json(path: str, obj) -> None:
    import os

    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def _print_passes(passes: list[dict], show: int = 5) -> None:
    for p in passes:
        line = f"{p['pass']:<18} {p['changed']} rewrite(s)"
        if p["refused"]:
            line += f", {len(p['refused'])} left untouched"
        print(line)
        for reason in p["refused"][:show]:
            print(f"    untouched: {reason}")
        if len(p["refused"]) > show:
            print(f"    ... {len(p['refused']) - show} more (see --report)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .zoo import build

    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="onnx-depth-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / f"{args.model}.onnx"
    dst = out_dir / f"{args.model}.optimized.onnx"
    db = out_dir / "latency.sqlite"
    print(f"building zoo model {args.model} (random weights, BatchNorm kept) -> {src}")
    save(build(args.model, bn="keep"), src)
    cmd = (f"onnx-depth optimize {src} {dst} --latency-budget {args.budget:g} --threads {args.threads} "
           f"--latency-db {db} --allow-over-budget --report {out_dir / 'report.json'} --plan-out {out_dir / 'plan.json'}")
    print(cmd)
    print("(profiles every candidate segment with onnxruntime into the latency DB, picks merges with the LayerMerge "
          "DP, applies them and measures the result against the original; random weights, so no calibration data: "
          "the fidelity cost is a data-free guess)")
    ns = argparse.Namespace(input=str(src), output=str(dst), lossless=False, check=0, report=str(out_dir / "report.json"),
                            quiet=args.quiet, latency_budget=args.budget, max_error=None, calibration=None,
                            allow_over_budget=True, plan_out=str(out_dir / "plan.json"), threads=args.threads,
                            provider="CPUExecutionProvider", latency_db=str(db), no_refit=False, emit_ort=None, plot=None)
    return _cmd_optimize(ns)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="onnx-depth: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except OnnxDepthError as e:
        if args.debug:
            raise
        print(f"onnx-depth: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("onnx-depth: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - never a traceback without --debug
        if args.debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"onnx-depth: internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)", file=sys.stderr)
        return 4


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
