"""Command line interface: a thin layer over onnx_depth.api.

Exit codes: 0 ok, 1 --check found a mismatch, 2 bad input or usage, 3 latency budget infeasible,
4 internal error (a bug: please report it with the output of --debug), 141 the reader of stdout
went away (a closed pipe: quiet, like other command-line tools killed by SIGPIPE).

Warnings (`onnx_depth.diagnostics`) go to stderr, one line each, also under `-q`. `-q` is
accepted before or after the subcommand. After planning started, a failing `optimize` still
writes --report (and --plan-out): the evidence of what was tried.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from . import __version__, api, diagnostics
from .errors import InputError, OnnxDepthError
from .fmt import humanize_macs
from .ir import save

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
    o.add_argument("--budget-tolerance", type=float, default=0.0, metavar="T", help="accept a measured median latency ratio up to B x (1 + T) (default 0: the median must be <= B)")
    o.add_argument("--remeasure", action="store_true", help="measure the planned models afresh instead of reusing their measurements stored in the latency DB (which make reruns deterministic)")
    o.add_argument("--plan-out", metavar="PLAN.json", help="write the chosen plan (segments, removed activations and pruned layers by ONNX node name) for fine-tuning")
    o.add_argument("--threads", type=int, default=None, metavar="N", help="intra-op threads of the target runtime for latency (default 1; part of the latency DB fingerprint)")
    o.add_argument("--provider", default="CPUExecutionProvider", help="onnxruntime execution provider to measure on (default CPUExecutionProvider)")
    o.add_argument("--latency-db", metavar="PATH", help="latency database (default $ONNX_DEPTH_LATENCY_DB or ~/.cache/onnx-depth/latency.sqlite)")
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
    o.set_defaults(func=_cmd_optimize)

    d = sub.add_parser("demo", help="build a built-in model and optimize it under a latency budget")
    from .zoo import NAMES as ZOO_NAMES

    d.add_argument("--model", default="mobilenetv2_1.0", choices=ZOO_NAMES, metavar="NAME",
                   help=f"zoo model: {', '.join(ZOO_NAMES)} (default mobilenetv2_1.0)")
    d.add_argument("--out", metavar="DIR", help="keep the files in DIR (default: a temporary directory, removed at the end)")
    d.add_argument("--budget", type=float, default=0.75, help="latency budget (default 0.75)")
    d.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    d.set_defaults(func=_cmd_demo)

    try:
        from .latency_db import commands as db_commands
    except ImportError:  # pragma: no cover - latency_db always ships
        db_commands = None
    if db_commands is not None and hasattr(db_commands, "register"):
        db_commands.register(sub)
    _quiet_everywhere(p)
    return p


def _quiet_everywhere(parser: argparse.ArgumentParser) -> None:
    """`-q` on every subcommand too (`onnx-depth optimize -q ...` = `onnx-depth -q optimize ...`):
    a subcommand's -q never resets the global one (its default is SUPPRESS)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in dict.fromkeys(action.choices.values()):
            quiet = [a for a in child._actions if "-q" in a.option_strings]
            if quiet:
                quiet[0].default = argparse.SUPPRESS
            else:
                child.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                   help="print only errors, warnings and the final result")
            _quiet_everywhere(child)


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    """--cluster / --target / --cluster-timeout (onnx_depth.cluster; dask is imported only when given)."""
    p.add_argument("--cluster", metavar="tcp://HOST:8786", help="measure latency on the Dask workers of --target (started on the device with `dask worker tcp://HOST:8786 --nthreads 1 --resources \"onnxdepth-target-NAME=1\"`) and evaluate importance on any worker (pip install onnx-depth[cluster])")
    p.add_argument("--target", metavar="NAME", help="with --cluster: the target device's name (its workers hold the Dask resource onnxdepth-target-NAME); latencies are stored under their fingerprint")
    p.add_argument("--cluster-timeout", type=float, default=None, metavar="S", help="with --cluster: seconds to reach the scheduler before giving up with exit 2 (default 10)")


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
            diagnostics.warn("no calibration data: data-free criteria only (BatchNorm statistics, PReLU slopes)",
                             diagnostics.DataFreeWarning)
        rows = api.analyze_activations(args.model, args.calibration, estimate_fidelity=args.estimate_fidelity)
    if args.json:
        d = stats.to_dict()
        if rows is not None:
            d["activation_report"] = rows
        print(json.dumps(d, indent=2, default=str))
        return 0
    _print_stats(stats, False)
    if rows is not None:
        from .analysis.activation_report import render_table

        print()
        print(render_table(rows))
    return 0


def _cmd_optimize(args: argparse.Namespace) -> int:
    from .planning.profiler import progress_wanted

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
    _check_output_paths(args)
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
                           cluster_timeout=getattr(args, "cluster_timeout", None))
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
            from .ort_format import emit_ort

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
    from .ort_format import planned_outputs

    return {f"--emit-ort file {Path(p).name}": p for p in planned_outputs(output, out_dir)}


def _check_output_paths(args: argparse.Namespace) -> None:
    """Before any work: every output is a writable regular-file path, no two outputs are one
    file and none is an input (safe_io); so a bad path costs nothing and destroys nothing."""
    from . import safe_io
    from .ir.exporter import protected_inputs

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
    from .plot import plot_report

    plot_report(report, path, title=title)
    report.notes.append(f"plot: {path}")


def _write_json(path: str, obj) -> None:
    from . import safe_io

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


def _cmd_demo(args: argparse.Namespace) -> int:
    import shutil

    from .zoo import build

    keep = bool(args.out)
    out_dir = Path(args.out) if keep else Path(tempfile.mkdtemp(prefix="onnx-depth-demo-"))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        src = out_dir / f"{args.model}.onnx"
        dst = out_dir / f"{args.model}.optimized.onnx"
        db = out_dir / "latency.sqlite"
        argv = ["optimize", str(src), str(dst), "--latency-budget", f"{args.budget:g}", "--threads", str(args.threads),
                "--latency-db", str(db), "--allow-over-budget", "--report", str(out_dir / "report.json"),
                "--plan-out", str(out_dir / "plan.json")]
        quiet = bool(getattr(args, "quiet", False))
        say = (lambda *a: None) if quiet else print
        say(f"building zoo model {args.model} (random weights, BatchNorm kept) -> {src}")
        save(build(args.model, bn="keep"), src)
        say("onnx-depth " + " ".join(argv))
        say("(profiles every candidate segment with onnxruntime into the latency DB, picks merges with the LayerMerge "
            "DP, applies them and measures the result against the original; random weights, so no calibration data: "
            "the fidelity cost is a data-free guess)")
        ns = build_parser().parse_args(argv)
        ns.quiet = quiet
        return _cmd_optimize(ns)
    finally:
        if not keep:
            shutil.rmtree(out_dir, ignore_errors=True)
            if not getattr(args, "quiet", False):
                print(f"removed the temporary folder {out_dir} (--out DIR keeps the files)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.quiet = bool(getattr(args, "quiet", False))
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="onnx-depth: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    message = None
    try:
        with diagnostics.recording() as caught:
            try:
                code, message = _run(args)
            finally:  # warnings first (also with --debug), then the one-line error
                diagnostics.print_warnings(caught)
        if message:
            print(message, file=sys.stderr)
        return code
    except BrokenPipeError:
        return _broken_pipe()


def _run(args: argparse.Namespace) -> tuple[int, str | None]:
    """(exit code, one-line error message or None)."""
    try:
        return int(args.func(args) or 0), None
    except BrokenPipeError:
        raise
    except OnnxDepthError as e:
        if args.debug:
            raise
        return e.exit_code, f"onnx-depth: error: {e}"
    except KeyboardInterrupt:
        return 130, "onnx-depth: interrupted"
    except MemoryError:
        if args.debug:
            raise
        return 2, "onnx-depth: error: out of memory (the model or its inputs are too large for this machine)"
    except OSError as e:  # the environment (files, permissions, disk), not a bug
        if args.debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        return 2, f"onnx-depth: error: {where}{e.strerror or e}"
    except Exception as e:  # noqa: BLE001 - never a traceback without --debug
        if args.debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return 4, f"onnx-depth: internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)"


def _broken_pipe() -> int:
    """stdout's reader went away: exit quietly (128 + SIGPIPE, like tools the signal kills);
    point stdout at /dev/null so the interpreter's final flush does not complain."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass
    return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
