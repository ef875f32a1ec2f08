"""Independent check of a latency budget: time an emitted model against its original in a
separate process (not the one that planned it), interleaved, and compare with the budget.

    python benchmarks/verify_ratio.py ORIGINAL EMITTED [--budget B] [--threads N] [--rounds R] [--json]
    python benchmarks/verify_ratio.py --zoo mobilenetv2_1.0 --budget 0.7 [--runs 3] [--write-results]
    python benchmarks/verify_ratio.py --model M.onnx --calibration C.npz --budget 0.7 [--runs 3] [--write-results]

File mode: `latency_db.timer.interleaved_ab` (the same protocol as the tool: IOBinding, fixed
threads, rotating rounds) in this process, `--rounds` rounds (default 41, twice the tool's),
median of per-round ratios and their p10-p90 band; verdict "confirmed" when median <= budget,
else "DISAGREES". Exit 0 either way (it is a measurement, not a test).

Zoo / model mode: `onnx-depth -q optimize IN OUT --latency-budget B` (a subprocess, fresh latency
DB) `--runs` times with the same DB (the determinism claim: same bytes and exit code every run),
then this script again in a NEW process in file mode on the emitted model; `--write-results`
writes the table to benchmarks/RESULTS.md (section `verify-ratio`, appended per model).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def measure(original: str, emitted: str, *, threads: int, rounds: int) -> dict:
    import onnx

    from onnx_depth.latency_db.timer import interleaved_ab

    comp = interleaved_ab({"original": onnx.load(original), "emitted": onnx.load(emitted)}, threads=threads,
                          rounds=rounds)
    lo, hi = comp.ratio_spread["emitted"]
    return {"ratio": comp.ratios["emitted"], "p10": lo, "p90": hi, "rounds": rounds, "threads": threads,
            "ms_original": comp.timings["original"].median_ms, "ms_emitted": comp.timings["emitted"].median_ms,
            "pid": os.getpid()}


def verdict(ratio: float, budget: float | None) -> str:
    if budget is None:
        return "-"
    return "confirmed (median <= budget)" if ratio <= budget else f"DISAGREES (median {ratio:.3f} > budget {budget:g})"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def pipeline(model: Path, budget: float, *, threads: int, runs: int, rounds: int, calibration: str | None,
             workdir: Path) -> dict:
    db = workdir / "latency.sqlite"
    outs = []
    for k in range(runs):
        out = workdir / f"emitted{k}.onnx"
        cmd = [sys.executable, "-m", "onnx_depth", "-q", "optimize", str(model), str(out), "--latency-budget",
               f"{budget:g}", "--threads", str(threads), "--latency-db", str(db), "--report", str(out.with_suffix(".json"))]
        if calibration:
            cmd += ["--calibration", calibration]
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env())
        rep = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
        outs.append({"rc": r.returncode, "sha256": hashlib.sha256(out.read_bytes()).hexdigest()[:16] if out.exists() else None,
                     "tool_ratio": rep.get("latency_ratio_measured"), "band": rep.get("latency_band"),
                     "predicted": rep.get("latency_ratio_predicted"), "cached": (rep.get("latency_ms") or {}).get("cached"),
                     "stderr": r.stderr.strip().splitlines()[-1:] if r.returncode else []})
        print(f"run {k + 1}: exit {outs[-1]['rc']}, sha256 {outs[-1]['sha256']}, tool ratio {outs[-1]['tool_ratio']} "
              f"(predicted {outs[-1]['predicted']}, stored measurement reused: {outs[-1]['cached']})", flush=True)
    first = workdir / "emitted0.onnx"
    indep = None
    if first.exists():  # a NEW process: not the one that planned or measured
        r = subprocess.run([sys.executable, __file__, str(model), str(first), "--budget", f"{budget:g}", "--threads",
                            str(threads), "--rounds", str(rounds), "--json"], capture_output=True, text=True, env=_env(),
                           check=True)
        indep = json.loads(r.stdout)
    return {"runs": outs, "independent": indep}


def _zoo_model(name: str, image_size: int, workdir: Path) -> Path:
    from onnx_depth import ir, zoo

    path = workdir / f"{name}.onnx"
    ir.save(zoo.build(name, bn="keep", image_size=image_size), path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("original", nargs="?")
    ap.add_argument("emitted", nargs="?")
    ap.add_argument("--zoo", help="zoo model name: build it, optimize it, verify")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--model", help="an ONNX model file: optimize it, verify")
    ap.add_argument("--calibration", help="calibration data for --model")
    ap.add_argument("--budget", type=float)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--runs", type=int, default=3, help="optimize runs with the same latency DB (determinism)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--keep", metavar="DIR", help="keep the emitted models and reports in DIR")
    args = ap.parse_args(argv)
    if args.original and args.emitted:
        res = measure(args.original, args.emitted, threads=args.threads, rounds=args.rounds)
        res["verdict"] = verdict(res["ratio"], args.budget)
        print(json.dumps(res) if args.json else
              f"{res['ratio']:.3f} (p10-p90 {res['p10']:.3f}-{res['p90']:.3f}, {res['rounds']} rounds): {res['verdict']}")
        return 0
    if not (args.zoo or args.model) or args.budget is None:
        ap.error("give ORIGINAL EMITTED, or --zoo NAME / --model FILE with --budget")
    with tempfile.TemporaryDirectory(prefix="verify-ratio-") as tmp:
        work = Path(tmp)
        model = _zoo_model(args.zoo, args.image_size, work) if args.zoo else Path(args.model).resolve()
        label = f"zoo {args.zoo} ({args.image_size}x{args.image_size}, random weights)" if args.zoo else f"{args.model}"
        res = pipeline(model, args.budget, threads=args.threads, runs=args.runs, rounds=args.rounds,
                       calibration=args.calibration, workdir=work)
        if args.keep:
            import shutil

            shutil.copytree(work, args.keep, dirs_exist_ok=True)
    runs, ind = res["runs"], res["independent"]
    same = len({r["sha256"] for r in runs}) == 1 and len({r["rc"] for r in runs}) == 1
    tool = runs[0]
    line = (f"| {label} | {args.budget:g} | {args.threads} | {', '.join(str(r['rc']) for r in runs)} | "
            f"{'yes' if same else 'NO'} ({runs[0]['sha256']}) | "
            + (f"{tool['tool_ratio']:.3f} ({tool['band'][0]:.3f}-{tool['band'][1]:.3f})" if tool["tool_ratio"] is not None else "-")
            + " | " + (f"{ind['ratio']:.3f} ({ind['p10']:.3f}-{ind['p90']:.3f}), {ind['rounds']} rounds" if ind else "-")
            + " | " + (verdict(ind["ratio"], args.budget) if ind else "no model emitted (exit 3)") + " |")
    print(line)
    if args.write_results:
        from _results import write_section  # noqa: E402

        head = ("| model | budget | threads | exit codes of the runs | same bytes every run (sha256) | tool's measured "
                "ratio (p10-p90) | independent ratio, new process (p10-p90) | verdict |\n|---|---|---|---|---|---|---|---|")
        body = ("`onnx-depth -q optimize` run "
                f"{args.runs} times as separate processes with one fresh latency DB (the second and later runs reuse "
                "the stored plan measurements), then the emitted model timed against the original by this script in "
                "another new process, interleaved, median of per-round ratios. The machine is shared (2 cores, other "
                "jobs running): bands are wide.\n\n" + head + "\n" + line)
        argv_s = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
        slug = "".join(c if c.isalnum() else "-" for c in (args.zoo or Path(args.model).parent.name or Path(args.model).stem))
        write_section(f"verify-ratio-{slug}", f"Independent check of the latency ratio: {label} (verify_ratio.py)",
                      f"python benchmarks/verify_ratio.py {argv_s}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
