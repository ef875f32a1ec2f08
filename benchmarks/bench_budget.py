"""Does `optimize --latency-budget B` meet B on every zoo model? What does it cost to run?

For each zoo model (random weights, BatchNorm kept: the model a user exports) and thread count:
build a BudgetPlanner on a FRESH latency database (cold: every segment is profiled), then plan at
budgets 0.9, 0.8, 0.7 and at the lowest feasible one (the fastest plan's predicted ratio, run
with allow_over_budget so it is reported, not refused). Every run applies the plan, emits a
valid model (onnx.checker via ir.to_proto) and measures it against the original interleaved
(timer.interleaved_ab, 21 rounds, same session settings): the measured ratio is the median of
per-round ratios, the band their p10-p90. Without calibration data the importance is the
data-free guess (zoo weights are random: fidelity is not meaningful here; see
bench_fidelity_budget.py for trained models with real data).

Also the tool's own speed on MobileNetV2-1.0 at budget 0.7 WITH calibration data (32 random
images: importance measured with refit), CLI in a subprocess: cold (empty latency DB) and warm
(second run, same DB).

    python benchmarks/bench_budget.py [--models ...] [--threads 1 2] [--no-speed] [--no-write]
        [--latency-db-dir DIR] [--plans-out PLANS.json]

--latency-db-dir keeps the latency databases (one per model and thread count) in DIR and reuses
them when present: with the stored end-to-end measurements, a second run on the same DIR plans
from the same numbers, so its plans (--plans-out: option ids per model/threads/budget) must be
identical; that is how a refactor is checked to leave the plans unchanged.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402

from onnx_depth import ir, zoo  # noqa: E402
from onnx_depth.errors import BudgetInfeasible  # noqa: E402
from onnx_depth.passes import LOSSLESS, PassContext, run_to_fixed_point  # noqa: E402
from onnx_depth.planning.budget import BudgetPlanner  # noqa: E402

BUDGETS = (0.9, 0.8, 0.7)
MODELS = ("resnet18", "resnet34", "resnet50", "mobilenetv2_1.0", "mobilenetv2_1.4", "vgg11_bn", "vgg16_bn", "ffn_stack")


def _model(name: str):
    if name == "ffn_stack":
        return zoo.build(name, act="prelu", prelu_slope=0.25)  # PReLU slope 0.25: removable, not exact
    return zoo.build(name, bn="keep")


def run_model(name: str, threads: int, db: Path) -> list[dict]:
    original = _model(name)
    graph = ir.load(original)
    original_graph = graph.copy()
    run_to_fixed_point(graph, LOSSLESS, PassContext(lossless=True))
    rows = []
    t0 = time.perf_counter()
    with BudgetPlanner(graph, original, original_graph=original_graph, threads=threads, latency_db=db) as planner:
        cold = time.perf_counter() - t0
        lowest = planner.fastest_ratio()
        budgets = [b for b in BUDGETS] + [round(lowest + 0.005, 3)]
        for b in budgets:
            t1 = time.perf_counter()
            try:
                out = planner.run(budget=b, allow_over_budget=(b == budgets[-1]))
            except BudgetInfeasible as e:
                rows.append({"model": name, "threads": threads, "budget": b, "error": str(e), "run_s": time.perf_counter() - t1})
                print(f"  {name} t{threads} budget {b}: infeasible: {e}", flush=True)
                continue
            ir.to_proto(out.graph)  # full onnx.checker
            r = {"model": name, "threads": threads, "budget": b, "lowest": b == budgets[-1],
                 "predicted": out.predicted_ratio, "measured": out.measured_ratio, "band": out.band, "met": out.met,
                 "changes": len(out.changed()), "rounds": len(out.rounds), "run_s": time.perf_counter() - t1,
                 "profile_s": cold, "profiled": planner.profile.measured, "plan": [o.id for o in out.plan]}
            rows.append(r)
            print(f"  {name} t{threads} budget {b}: predicted {r['predicted']:.3f} measured {r['measured']:.3f} "
                  f"({r['band'][0]:.2f}-{r['band'][1]:.2f}) {r['met']}, {r['changes']} segments, {r['run_s']:.1f} s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | threads | budget | predicted | measured (p10-p90) | met | segments changed | rounds | run s | cold profile s (models) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = f"{r['budget']:.3f} (lowest)" if r.get("lowest") else f"{r['budget']:.2f}"
        if "error" in r:
            lines.append(f"| {r['model']} | {r['threads']} | {b} | | infeasible: {r['error'][:80]} | exit 3 | | | {r['run_s']:.1f} | |")
            continue
        lines.append(f"| {r['model']} | {r['threads']} | {b} | {r['predicted']:.3f} | {r['measured']:.3f} "
                     f"({r['band'][0]:.2f}-{r['band'][1]:.2f}) | {r['met']} | {r['changes']} | {r['rounds']} | "
                     f"{r['run_s']:.1f} | {r['profile_s']:.1f} ({r['profiled']}) |")
    return "\n".join(lines)


def tool_speed(threads: int = 2) -> str:
    """MobileNetV2-1.0, budget 0.7, 32 random calibration images: CLI cold then warm."""
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ir.save(zoo.build("mobilenetv2_1.0", bn="keep"), d / "m.onnx")
        rng = np.random.default_rng(0)
        np.savez(d / "cal.npz", input=rng.standard_normal((32, 3, 224, 224)).astype(np.float32))
        times = []
        for label in ("cold (empty latency DB)", "warm (same DB)"):
            cmd = [sys.executable, "-m", "onnx_depth", "-q", "optimize", str(d / "m.onnx"), str(d / "o.onnx"),
                   "--latency-budget", "0.7", "--calibration", str(d / "cal.npz"), "--threads", str(threads),
                   "--latency-db", str(d / "db.sqlite"), "--allow-over-budget"]
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            last = (p.stdout.strip().splitlines() or [""])[-2:]
            times.append(f"| {label} | {dt:.1f} | {p.returncode} | {' / '.join(last)} |")
            print(f"  tool speed {label}: {dt:.1f} s rc {p.returncode}", flush=True)
    return ("| run | wall s | exit | last lines |\n|---|---|---|---|\n" + "\n".join(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--latency-db-dir", type=Path, help="keep (and reuse) the latency databases here")
    ap.add_argument("--plans-out", type=Path, help="write the chosen plans (option ids) as JSON")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        db_dir = args.latency_db_dir or Path(d)
        db_dir.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            for t in args.threads:
                print(f"{name}, {t} thread(s)", flush=True)
                rows += run_model(name, t, db_dir / f"{name}.t{t}.sqlite")
                if not args.no_write:  # partial results survive an interrupted run
                    write_section("budget", "Latency budget on zoo models (bench_budget.py)",
                                  "python benchmarks/bench_budget.py " + " ".join(sys.argv[1:]),
                                  _body(rows) + "\n\n(partial: run in progress or interrupted)")
    if args.plans_out:
        args.plans_out.write_text(json.dumps([{k: r.get(k) for k in ("model", "threads", "budget", "plan", "error")}
                                              for r in rows], indent=1) + "\n")
    body = _body(rows)
    if not args.no_speed:
        body += "\n\n### Tool speed: MobileNetV2-1.0, budget 0.7, 32 calibration images, 2 threads\n\n" + tool_speed()
    print(body)
    if not args.no_write:
        write_section("budget", "Latency budget on zoo models (bench_budget.py)",
                      "python benchmarks/bench_budget.py " + " ".join(sys.argv[1:]), body)


def _body(rows: list[dict]) -> str:
    return ("Budget mode without calibration data on zoo models (random weights, BN kept). `predicted`: the in-context "
            "latency model's ratio for the chosen plan; `measured`: interleaved A/B against the original model, median of "
            "21 per-round ratios (p10-p90 band; up to 63 rounds while the band straddles the budget). `met`: yes (median "
            "<= budget: one-sided, no tolerance), or no (allowed) for the lowest-budget row, which is run with --allow-over-budget. The last row per "
            "model/threads is the lowest feasible budget (the fastest plan's predicted ratio + 0.005). `run s`: planning + "
            "apply + measurement per budget after the (cold) profile.\n\n" + table(rows))


if __name__ == "__main__":
    main()
