"""How well do segment latencies predict whole-model latency? And what does `profile` cost?

For each zoo model and thread count: profile every candidate option into a fresh latency
database (the whole original model is timed by the profiler too: the one in-context
measurement), build one modified model from a fixed plan, time original and modified interleaved
(timer.interleaved_ab), and compare the measured speed-up with the predicted one:

* raw: sum of the plan's segment latencies vs the sum for the original plan (= ratio method);
* delta: W + S(plan) - S0; ratio: W * S(plan) / S0 (planning.latency_model).

Errors are quoted on the ratio modified/original (noise-robust; equal to the error of an absolute
prediction when W is exact) and, for reference, on absolute milliseconds against the interleaved
measurement. Plans: MobileNetV2: every inverted-residual block merged into one conv; ResNet: one
3x3 conv pruned per residual block; VGG: every prunable conv pruned.

Also: cold and warm wall time of `onnx-depth profile` (CLI, subprocess) for resnet50 and
mobilenetv2_1.0 at 1 thread.

    python benchmarks/bench_latency_model.py [--models ...] [--threads 1 2] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from onnx_depth import ir, zoo  # noqa: E402
from onnx_depth.latency_db import LatencyStore, current, interleaved_ab  # noqa: E402
from onnx_depth.planning import Candidates, SegmentOption  # noqa: E402
from onnx_depth.planning.latency_model import DEFAULT_METHOD, METHODS, LatencyModel  # noqa: E402
from onnx_depth.planning.profiler import prepare, profile_candidates  # noqa: E402

MODELS = ["resnet18", "resnet34", "resnet50", "mobilenetv2_1.0", "mobilenetv2_1.4", "vgg11_bn"]
IMAGE_SIZE = {"vgg11_bn": 112}
CLI_PROFILED = ("resnet50", "mobilenetv2_1.0")


# ------------------------------------------------------------------------------------- plans
def _tile(cands: Candidates, chosen: list[SegmentOption]) -> list[SegmentOption]:
    return cands.fill(chosen)


def plan_merge_blocks(cands: Candidates) -> list[SegmentOption]:
    """Every inverted residual block ([1x1 expand] -> depthwise -> 1x1 project, ending at a
    position without activation) merged into one conv."""
    chosen = []
    for c in cands.chains:
        if c.kind != "conv":
            continue
        for e in range(2, c.L + 1):
            if c.acts[e] is not None or c.layer(e - 1).geom.group == 1:
                continue
            b = e - 2
            lay = c.layer(b) if b >= 1 else None
            if lay is not None and lay.geom.kernel == (1, 1) and lay.geom.group == 1 and c.acts[b - 1 + 1] is not None:
                b -= 1
            kept = ",".join(str(j) for j in range(b + 1, e + 1))
            try:  # absent when the merged conv costs too many MACs (the t=1 block)
                chosen.append(cands.option(f"c{c.id}({b},{e}]:merge:{kept}"))
            except KeyError:
                continue
    return _tile(cands, chosen)


def plan_prune_one_per_block(cands: Candidates) -> list[SegmentOption]:
    """In every residual span, the last prunable 3x3 conv replaced by identity."""
    chosen = []
    for c in cands.chains:
        for s in c.spans:
            js = [j for j in range(s.p + 1, s.q + 1) if c.layer(j).geom.prunable and c.layer(j).geom.kernel != (1, 1)]
            if js:
                j = js[-1]
                chosen.append(cands.option(f"c{c.id}({j - 1},{j}]:prune:-"))
    return _tile(cands, chosen)


def plan_prune_all(cands: Candidates) -> list[SegmentOption]:
    chosen = [cands.option(f"c{c.id}({j - 1},{j}]:prune:-") for c in cands.chains if c.kind == "conv"
              for j in range(1, c.L + 1) if c.layer(j).geom.prunable]
    return _tile(cands, chosen)


def plan_for(name: str):
    if name.startswith("mobilenet"):
        return "every block merged", plan_merge_blocks
    if name.startswith("resnet"):
        return "one 3x3 conv pruned per block", plan_prune_one_per_block
    return "every prunable conv pruned", plan_prune_all


# ------------------------------------------------------------------------------------- runs
def _cli_profile(path: Path, db: Path, threads: int) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "onnx_depth", "-q", "profile", str(path), "--threads", str(threads),
                        "--latency-db", str(db)], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"profile failed: {r.stderr.strip()}")
    return dt, r.stdout.strip().splitlines()[-1]


def run_one(name: str, threads: int, db: Path, work: Path, rounds: int) -> dict:
    size = IMAGE_SIZE.get(name, 224)
    path = work / f"{name}_{size}.onnx"
    if not path.exists():
        ir.save(zoo.build(name, bn="keep", image_size=size), path)
    row: dict = {"model": name, "size": size, "threads": threads}
    fp = current(threads=threads)
    cands = prepare(path)
    with LatencyStore(db) as store:
        t0 = time.perf_counter()
        res = profile_candidates(cands, store, fp)
        row["profile_s"] = time.perf_counter() - t0
    row["options"], row["unique"], row["measured"] = len(cands.options), res.unique, res.measured
    what, make = plan_for(name)
    plan = make(cands)
    row["plan"] = what
    original = ir.to_proto(cands.graph.copy(), check=False)
    modified = cands.apply(plan)
    cmp = interleaved_ab({"original": original, "modified": modified}, threads=threads, rounds=rounds)
    W, W1 = cmp.timings["original"].median_ms, cmp.timings["modified"].median_ms
    row.update(W_ab=W, W1_ab=W1, ratio_meas=cmp.ratios["modified"], spread=cmp.ratio_spread["modified"])
    # calibrated with the A/B measurement of the original (the one whole-model measurement);
    # the profile's own stored measurement of the original is reported beside it
    lm = LatencyModel.from_profile(cands, res, whole_ms=W)
    row["W_db"] = res.whole.median_ms
    row["S0"], row["cuts_total"] = lm.original_ms, lm.cuts_ms
    preds = lm.predict_all(plan)
    # errors against the measured ratio modified/original (per-round medians, noise-robust)
    for m, v in preds.items():
        row[f"pred_{m}"] = v
        pred_ratio = (v / lm.original_ms) if m == "raw" else v / W
        row[f"err_{m}"] = pred_ratio / row["ratio_meas"] - 1
    row["err_raw_abs"] = preds["raw"] / W1 - 1
    lm_db = LatencyModel.from_profile(cands, res)  # calibrated with the profile-time measurement
    row["err_db"] = lm_db.predict(plan) / W1 - 1
    return row


ALL = ("raw",) + METHODS


def table(rows: list[dict]) -> str:
    head = ("| model | threads | options (distinct models) | plan | original ms | modified ms "
            "| measured modified/original (p10-p90 over rounds) | S0 / original | cuts / S0 | "
            + " | ".join(f"{m}{' (default)' if m == DEFAULT_METHOD else ''}: predicted ms (error)" for m in ALL) + " |")
    sep = "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"
    lines = [head, sep]
    for r in rows:
        lo, hi = r["spread"]
        lines.append(
            f"| {r['model']}@{r['size']} | {r['threads']} | {r['options']} ({r['unique']}) | {r['plan']} "
            f"| {r['W_ab']:.2f} | {r['W1_ab']:.2f} | {r['ratio_meas']:.3f} ({lo:.3f}-{hi:.3f}) "
            f"| {r['S0'] / r['W_ab']:.2f} | {r['cuts_total'] / r['S0']:.3f} | "
            + " | ".join(f"{r[f'pred_{m}']:.2f} ({100 * r[f'err_{m}']:+.1f}%)" for m in ALL) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=30, help="interleaved A/B rounds")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    rows, prof = [], []
    with tempfile.TemporaryDirectory(prefix="bench-latency-model-") as tmp:
        work = Path(tmp)
        for name in args.models:
            db = work / "shared.sqlite"
            if name in CLI_PROFILED:  # cold and warm `onnx-depth profile` on a fresh database
                size = IMAGE_SIZE.get(name, 224)
                path = work / f"{name}_{size}.onnx"
                ir.save(zoo.build(name, bn="keep", image_size=size), path)
                db = work / f"{name}.sqlite"
                cold = _cli_profile(path, db, 1)
                warm = _cli_profile(path, db, 1)
                prof.append((name, cold, warm))
                print(f"{name}: profile cold {cold[0]:.1f}s ({cold[1]}), warm {warm[0]:.1f}s ({warm[1]})", flush=True)
            for th in args.threads:
                r = run_one(name, th, db, work, args.rounds)
                rows.append(r)
                print(f"{name} t{th}: measured {r['ratio_meas']:.3f}  "
                      + "  ".join(f"{m} {100 * r[f'err_{m}']:+.1f}%" for m in ALL)
                      + f"  (default calibrated with the profile-time W: {100 * r['err_db']:+.1f}%)"
                      + f"  S0/W {r['S0'] / r['W_ab']:.2f} cuts/S0 {r['cuts_total'] / r['S0']:.3f} W db/ab "
                      f"{r['W_db']:.2f}/{r['W_ab']:.2f}  profile {r['profile_s']:.1f}s", flush=True)
    total = time.perf_counter() - t_start
    body = [
        "Predicted latency of the modified model from segment latencies, calibrated with the "
        "interleaved measurement of the original (the one whole-model measurement); error = "
        "predicted / measured modified - 1 (for raw: S(plan)/S0 against the measured ratio, since "
        "S is not a latency of the model). Segment and cut latencies come from `profile` "
        "(interleaved groups, net of the call-overhead floor).",
        "",
        table(rows),
        "",
    ]
    errs = {m: [abs(r[f"err_{m}"]) for r in rows] for m in ALL}
    body.append("Max |error| over rows: " + ", ".join(f"{m} {100 * max(v):.1f}%" for m, v in errs.items())
                + f"; mean |error|: " + ", ".join(f"{m} {100 * sum(v) / len(v):.1f}%" for m, v in errs.items()) + ".")
    body.append(f"Calibrating `{DEFAULT_METHOD}` with the original's latency stored at profile time instead "
                f"(another moment of machine load): max |error| {100 * max(abs(r['err_db']) for r in rows):.1f}%; "
                f"that stored latency differed from the A/B one by up to "
                f"{100 * max(abs(r['W_db'] / r['W_ab'] - 1) for r in rows):.0f}%.")
    if prof:
        body += ["", "`onnx-depth profile` wall time (CLI subprocess, fresh database, 1 thread; includes "
                 "loading, lossless passes, enumeration and building every timing model):", "",
                 "| model | cold s | warm s | cold output | warm output |", "|---|---|---|---|---|"]
        for name, cold, warm in prof:
            body.append(f"| {name} | {cold[0]:.1f} | {warm[0]:.1f} | {cold[1]} | {warm[1]} |")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body += ["", f"The machine may be shared: load average (1, 5, 15 min) at the end of this run: {load} on "
             f"{os.cpu_count()} cores. Absolute latencies drift with load between moments, so errors are taken "
             "against the interleaved A/B measurement, and the default method uses the whole-model latency "
             "only as a scale.", "", f"Total benchmark time {total / 60:.1f} min."]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        from _results import write_section

        cmd = "python benchmarks/bench_latency_model.py" + ("" if argv is None else " " + " ".join(argv))
        write_section("bench_latency_model", "Latency model: segment sums vs whole-model latency", cmd, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
