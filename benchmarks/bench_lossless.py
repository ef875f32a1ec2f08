"""onnx-depth --lossless against onnxsim, onnxslim and onnxoptimizer.

For each model, in ONE interleaved run per thread count (onnx_depth.latency_db.timer.interleaved_ab,
onnxruntime with its default optimizations, optimization="all"), time the original model, our
lossless output (onnx_depth.api.optimize(model, lossless=True)) and the outputs of onnxsim,
onnxslim and onnxoptimizer, and report each one's median latency ratio to the original (with the
p10-p90 spread of the per-round ratios), node count and MACs (onnx_depth.metrics.model_stats of
onnx_depth.ir.load(model)). Every output is checked against the original with
onnx_depth.compare.compare_models (rtol 1e-4, atol 1e-5) before it is timed.

Models: ffn_stack with PRelu slope 1 (exactly linear activations: each FFN block collapses to
one linear layer, the headline), ffn_stack with GELU (nothing to collapse), mobilenetv2_1.0 and
resnet18 with BatchNorm kept (BN folding only: onnxruntime folds Conv+BN itself).

    python benchmarks/bench_lossless.py            # prints the table and writes RESULTS.md
    python benchmarks/bench_lossless.py --no-write --rounds 5 --models ffn_prelu1

onnxsim, onnxslim and onnxoptimizer are benchmark-only dependencies:
    pip install onnxsim onnxslim onnxoptimizer
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import sys
import time
from pathlib import Path
from typing import Callable

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402

from onnx_depth import api, ir, metrics, zoo  # noqa: E402
from onnx_depth.compare import compare_models  # noqa: E402
from onnx_depth.latency_db.timer import interleaved_ab  # noqa: E402

MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "ffn_prelu1": lambda: zoo.build("ffn_stack", act="prelu", prelu_slope=1.0),
    "ffn_gelu": lambda: zoo.build("ffn_stack", act="gelu"),
    "mobilenetv2_1.0": lambda: zoo.build("mobilenetv2_1.0", bn="keep"),
    "resnet18": lambda: zoo.build("resnet18", bn="keep"),
}
DESCRIPTION = {
    "ffn_prelu1": "ffn_stack act=prelu slope=1 (4 blocks, [1,128,256], d_ff 1024)",
    "ffn_gelu": "ffn_stack act=gelu (same shape)",
    "mobilenetv2_1.0": "mobilenetv2_1.0 bn=keep, 224x224",
    "resnet18": "resnet18 bn=keep, 224x224",
}
TOOLS = ("onnx-depth", "onnxsim", "onnxslim", "onnxoptimizer")


def _same_ir(out: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """onnx 1.23 writes IR 14, which onnxruntime 1.31 refuses: keep the input's IR version."""
    out.ir_version = original.ir_version
    return out


def run_tool(tool: str, model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if tool == "onnx-depth":
        return api.optimize(m, lossless=True).model
    if tool == "onnxsim":
        import onnxsim

        out, ok = onnxsim.simplify(m)
        if not ok:
            raise RuntimeError("onnxsim's own check failed")
        return _same_ir(out, model)
    if tool == "onnxslim":
        import onnxslim

        return _same_ir(onnxslim.slim(m), model)
    if tool == "onnxoptimizer":
        import onnxoptimizer

        return _same_ir(onnxoptimizer.optimize(m, fixed_point=True), model)
    raise ValueError(tool)


def versions() -> str:
    out = []
    for dist in ("onnxsim", "onnxslim", "onnxoptimizer", "onnxruntime", "onnx"):
        try:
            out.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


def bench_model(name: str, threads: list[int], rounds: int, warmup: int) -> list[dict]:
    original = MODELS[name]()
    variants = {"original": original}
    notes = {}
    prep = {}
    for tool in TOOLS:
        t0 = time.perf_counter()
        try:
            out = run_tool(tool, original)
        except Exception as e:  # a tool failing is a result, not a crash
            notes[tool] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            continue
        prep[tool] = time.perf_counter() - t0
        c = compare_models(original, out, n_random=2)
        if not c.allclose:
            notes[tool] = f"output differs ({c.summary()}): not timed"
            continue
        variants[tool] = out
    stats = {k: metrics.model_stats(ir.load(m)) for k, m in variants.items()}
    timing = {}
    for t in threads:
        cmp = interleaved_ab(variants, threads=t, optimization="all", rounds=rounds, warmup=warmup)
        timing[t] = cmp
        print(f"\n{name}, {t} thread(s):\n{cmp.table()}", flush=True)
    rows = []
    for k in ("original", *TOOLS):
        row = {"model": name, "variant": k, "note": notes.get(k, "")}
        if k in variants:
            s = stats[k]
            row.update(nodes=s.nodes, macs=s.macs, prep_s=prep.get(k))
            for t in threads:
                lo, hi = timing[t].ratio_spread[k]
                row[f"ratio{t}"] = (timing[t].ratios[k], lo, hi)
                row[f"ms{t}"] = timing[t].timings[k].median_ms
        rows.append(row)
    return rows


def table(rows: list[dict], threads: list[int]) -> str:
    head = ["model", "variant", "nodes", "MACs (M)"]
    for t in threads:
        head += [f"latency ratio, {t} thr (p10-p90)", f"median ms, {t} thr"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "nodes" not in r:
            lines.append(f"| {r['model']} | {r['variant']} | {r['note']} |" + " |" * (len(head) - 3))
            continue
        cells = [r["model"], r["variant"], str(r["nodes"]), f"{r['macs'] / 1e6:.1f}"]
        for t in threads:
            v, lo, hi = r[f"ratio{t}"]
            cells += [f"{v:.3f} ({lo:.2f}-{hi:.2f})", f"{r[f'ms{t}']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=60, help="interleaved rounds per thread count (default 60)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-write", action="store_true", help="print only; do not update benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    rows = []
    for name in args.models:
        rows += bench_model(name, args.threads, args.rounds, args.warmup)
    body = table(rows, args.threads)
    elapsed = time.perf_counter() - t0
    print("\n" + body)
    print(f"\n{versions()}; {elapsed:.0f} s")
    if not args.no_write:
        cmd = "python benchmarks/bench_lossless.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv))
        models = "\n".join(f"- `{k}`: {DESCRIPTION[k]}" for k in args.models)
        text = (
            "Original model vs onnx-depth's lossless output vs onnxsim / onnxslim / onnxoptimizer, "
            "timed in one interleaved run per model and thread count "
            "(`onnx_depth.latency_db.timer.interleaved_ab`, onnxruntime `optimization=\"all\"`, batch 1, "
            f"{args.rounds} rounds). Latency ratio = median over rounds of variant/original (lower is "
            "faster; p10-p90 of the per-round ratios in brackets). Nodes and MACs from "
            "`onnx_depth.metrics.model_stats(onnx_depth.ir.load(model))`. Each variant was compared with the "
            "original (rtol 1e-4, atol 1e-5) before it was timed; a mismatch or a tool failure is listed "
            "instead of timings.\n\n"
            f"{models}\n\nVersions: {versions()}. Run time {elapsed:.0f} s; 1-minute load average "
            f"{load:.1f} at the start (the machine is shared: trust ratios and their spread, not ms).\n\n{body}\n"
        )
        write_section("bench_lossless", "Lossless rewrites vs onnxsim, onnxslim, onnxoptimizer", cmd, text)
        print(f"wrote section bench_lossless of {Path(__file__).resolve().parent / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
