"""Budget mode on the real-export corpus (onnx_depth.zoo.exports), symbolic dims kept.

For each corpus model as exported (dynamic batch; the encoder's sequence; YOLOv8n's and PP-OCR's
H/W): `onnx_depth.api.optimize(latency_budget=B, allow_over_budget=True, input_shapes=...)` plans
and times at the first shape of `exports.SHAPES` (batch 1), then the emitted model, which keeps the
symbolic dims, is timed against the original in ONE interleaved run per shape
(`latency_db.timer.interleaved_ab`, static copies at that shape, onnxruntime default optimizations)
at both shapes of `exports.SHAPES`: the planned one and another one (batch 3, other H/W or T), to
show how a plan chosen at one shape carries to another. No calibration data (random weights or
unseen data): the table is about latency and shapes, not fidelity.

    python benchmarks/bench_exports.py                 # writes the RESULTS.md section
    python benchmarks/bench_exports.py --no-write --models mbv2_tiny --budget 0.9
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402

from onnx_depth import api, shapes  # noqa: E402
from onnx_depth.latency_db.timer import interleaved_ab  # noqa: E402
from onnx_depth.zoo import exports  # noqa: E402


def row(name: str, budget: float, db: str, threads: int, rounds: int) -> list[str]:
    src = exports.export_path(name)
    original = onnx.load(src)
    first, second = exports.SHAPES[name]
    t0 = time.perf_counter()
    res = api.optimize(str(src), latency_budget=budget, allow_over_budget=True, latency_db=db, threads=threads,
                       input_shapes=first)
    secs = time.perf_counter() - t0
    kept = shapes.symbolic_signature(res.model) == shapes.symbolic_signature(original)
    at = []
    for want in (first, second):
        fixed = shapes.resolve(original, want)
        comp = interleaved_ab({"original": shapes.fix_inputs(original, fixed), "optimized": shapes.fix_inputs(res.model, fixed)},
                              threads=threads, rounds=rounds)
        lo, hi = comp.ratio_spread["optimized"]
        at.append(f"{comp.ratios['optimized']:.3f} ({lo:.2f}-{hi:.2f}) @{fixed.describe().split(':', 1)[1]}")
    dims = "; ".join(f"{k}{list(v)}" for k, v in exports.symbolic_dims(name).items())
    r = res.report
    return [name, dims, "yes" if kept else "NO", str(len(r.segments or [])), f"{r.latency_ratio_measured:.3f}",
            str(r.budget_met), *at, f"{secs:.0f}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(exports.NAMES))
    ap.add_argument("--budget", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    head = ["model", "symbolic input dims", "dims kept", "changes", "tool's ratio", "met",
            "ratio at planned shape (p10-p90)", "ratio at other shape (p10-p90)", "planning s"]
    rows = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "latency.sqlite")
        for name in args.models:
            rows.append(row(name, args.budget, db, args.threads, args.rounds))
            print(" | ".join(rows[-1]), flush=True)
    table = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows])
    body = (f"Budget {args.budget:g}, {args.threads} thread(s), no calibration data (data-free importance: latency "
            f"only), fresh latency DB. Planned and timed by the tool at the first shape (batch 1); the emitted model "
            f"keeps the symbolic dims and is re-timed here against the original at both shapes (interleaved, "
            f"{args.rounds} rounds, median of per-round ratios). Load average at the start: {load:.1f} on "
            f"{os.cpu_count()} cores (a shared machine: wide p10-p90 bands are noise, not the plan).\n\n{table}")
    print(table)
    if not args.no_write:
        cmd = "python benchmarks/bench_exports.py" + (f" --budget {args.budget:g}" if args.budget != 0.9 else "")
        write_section("exports", "Budget mode on real exports with symbolic dims", cmd, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
