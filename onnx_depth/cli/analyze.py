"""`onnx-depth analyze MODEL`: statistics, and the per-activation linearity report."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .. import api, diagnostics
from ..analysis.activation_report import render_table
from ..fmt import human


def register(sub: "argparse._SubParsersAction[Any]") -> argparse.ArgumentParser:
    a = sub.add_parser("analyze", help="print op histogram, depth, params, MACs, activations, I/O")
    a.add_argument("model", help="ONNX model file")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.add_argument("--calibration", metavar="DATA", help="calibration data (.npz keyed by input name, .npy, or a folder of .npy): adds the per-activation linearity report")
    a.add_argument("--activations", action="store_true", help="per-activation report with data-free criteria only (no calibration data)")
    a.add_argument("--estimate-fidelity", action="store_true", help="with --calibration: estimate the fidelity cost of linearizing each activation (naive and with refit; slow)")
    a.set_defaults(func=run)
    return a


def print_stats(stats, as_json: bool) -> None:
    if as_json:
        print(json.dumps(stats.to_dict(), indent=2))
        return
    print(f"nodes        {stats.nodes}")
    print(f"depth        {stats.depth}  (linear layers on the longest path: {stats.linear_depth})")
    print(f"params       {human(stats.params)} ({stats.params})")
    print(f"MACs         {human(stats.macs)} ({stats.macs})" + (f"  [{stats.unknown_mac_nodes} nodes without shapes not counted]" if stats.unknown_mac_nodes else ""))
    print(f"activations  {stats.activations}")
    for kind, tensors in (("input ", stats.inputs), ("output", stats.outputs)):
        for t in tensors:
            print(f"{kind}       {t.name}: {t.dtype} {t.shape}")
    print("ops          " + ", ".join(f"{k} {v}" for k, v in stats.op_histogram.items()))


def run(args: argparse.Namespace) -> int:
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
    print_stats(stats, False)
    if rows is not None:
        print()
        print(render_table(rows))
    return 0
