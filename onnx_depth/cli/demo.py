"""`onnx-depth demo`: build a zoo model and optimize it under a latency budget."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..ir import save
from ..zoo import NAMES as ZOO_NAMES
from ..zoo import build
from . import optimize
from .parsing import Parser, quiet_everywhere


def register(sub: "argparse._SubParsersAction[Any]") -> argparse.ArgumentParser:
    d = sub.add_parser("demo", help="build a built-in model and optimize it under a latency budget")
    d.add_argument("--model", default="mobilenetv2_1.0", choices=ZOO_NAMES, metavar="NAME",
                   help=f"zoo model: {', '.join(ZOO_NAMES)} (default mobilenetv2_1.0)")
    d.add_argument("--out", metavar="DIR", help="keep the files in DIR (default: a temporary directory, removed at the end)")
    d.add_argument("--budget", type=float, default=0.75, help="latency budget (default 0.75)")
    d.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    d.set_defaults(func=run)
    return d


def _optimize_args(argv: list[str]) -> argparse.Namespace:
    """`argv` ("optimize", ...) parsed as the `optimize` subcommand of the CLI parses it."""
    p = Parser(prog="onnx-depth")
    optimize.register(p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser))
    quiet_everywhere(p)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
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
        ns = _optimize_args(argv)
        ns.quiet = quiet
        return optimize.run(ns)
    finally:
        if not keep:
            shutil.rmtree(out_dir, ignore_errors=True)
            if not getattr(args, "quiet", False):
                print(f"removed the temporary folder {out_dir} (--out DIR keeps the files)")
