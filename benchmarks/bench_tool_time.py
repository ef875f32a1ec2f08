"""Tool time of budget mode (issue 17 item 4): `onnx-depth optimize --latency-budget 0.9` on an
ImageNet-trained network with 128 calibration images, an EMPTY latency database and 2 threads.

The network is EfficientNet-Lite0 with its ImageNet weights (the ImageNet model this machine has:
/work/shared/DESIGN-NOTES.md section 4; a MobileNetV2-style network of inverted residuals with
ReLU6), exported by bench_fidelity_real.export_effnet_lite0 with its dynamic batch axis and run as
exported, as in bench_fidelity_real (the planner fixes batch 1 for profiling and timing);
calibration = its 128 crops of 16 real photos.

Every run is the CLI in a fresh subprocess with a fresh (empty) latency database; wall time and
the CPU seconds of the subprocess (user + system, from wait4's rusage) are recorded. With
`--baseline DIR` the runs alternate (A/B interleaved, so both see the same machine load) between
PYTHONPATH=DIR (e.g. /work/main, the code before the change) and this checkout. The report JSON of
each run gives the planner's own timings and the chosen plan (compared between A and B).

    python benchmarks/bench_tool_time.py [--baseline /work/main] [--repeats 2] [--threads 2] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

CACHE = HERE / ".cache"


def prepare() -> tuple[Path, Path]:
    """(dynamic-batch EfficientNet-Lite0 .onnx as exported, calibration .npz of 128 crops), cached."""
    from bench_fidelity_real import export_effnet_lite0, photo_sets

    CACHE.mkdir(exist_ok=True)
    model, cal = CACHE / "tool_time_effnet_lite0_dynamic.onnx", CACHE / "tool_time_calib128.npz"
    if not model.is_file():
        onnx.save(export_effnet_lite0(), model)
    if not cal.is_file():
        calib = photo_sets()[0]
        np.savez(cal, input=calib.astype(np.float32))
    return model, cal


def run_once(pythonpath: Path, model: Path, cal: Path, budget: float, threads: int, profile: Path | None = None,
             keep: Path | None = None) -> dict:
    """One CLI run in a subprocess with an empty latency DB: wall s, CPU s, exit, report (copied
    to `keep`, with the run's stderr, when given)."""
    with tempfile.TemporaryDirectory(prefix="tooltime-") as tmp:
        db, out, rep = Path(tmp) / "empty.sqlite", Path(tmp) / "out.onnx", Path(tmp) / "report.json"
        prog = ["-m", "onnx_depth"] if profile is None else ["-m", "cProfile", "-o", str(profile), "-m", "onnx_depth"]
        cmd = [sys.executable, *prog, "optimize", str(model), str(out), "--latency-budget", str(budget),
               "--calibration", str(cal), "--threads", str(threads), "--latency-db", str(db), "--report", str(rep), "-q"]
        env = dict(os.environ, PYTHONPATH=str(pythonpath), ONNX_DEPTH_LATENCY_DB=str(db))
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _pid, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        stdout, stderr = p.stdout.read(), p.stderr.read()
        p.stdout.close()
        p.stderr.close()
        rc = os.waitstatus_to_exitcode(status)
        report = json.loads(rep.read_text()) if rep.is_file() else {}
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            if rep.is_file():
                shutil.copyfile(rep, keep.with_suffix(".json"))
            keep.with_suffix(".stderr.txt").write_text(stderr)
    planning = report.get("planning") or {}
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "rc": rc, "stderr": stderr.strip()[-400:],
            "timings": {k: round(v, 1) for k, v in (planning.get("timings_s") or {}).items() if isinstance(v, (int, float))},
            "plan": sorted(s["segment"] for s in report.get("segments") or []),
            "measured_ratio": report.get("latency_ratio_measured"), "load": round(os.getloadavg()[0], 1),
            "top1": (report.get("fidelity") or {}).get("top1_agreement")}


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="a checkout of the code before the change (PYTHONPATH for the A runs)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=0.9)
    ap.add_argument("--profile", type=Path, help="one cProfile run of this checkout into this file instead")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--keep", type=Path, help="folder to keep each run's report JSON and stderr in (NAME_I.json)")
    ap.add_argument("--note", default="", help="a sentence added to the section")
    ap.add_argument("--from-log", type=Path, help="write the section from the lines an interrupted run printed")
    args = ap.parse_args(argv)
    if args.from_log is not None:
        rows = _parse_log(args.from_log)
        sides = [(k, None) for k in ("before", "after") if k in rows]
        args.repeats = max(len(v) for v in rows.values())
        return _write(args, sides, rows)
    model, cal = prepare()
    if args.profile is not None:
        r = run_once(ROOT, model, cal, args.budget, args.threads, args.profile)
        print(json.dumps(r, indent=1))
        return 0
    sides = [("before", args.baseline)] if args.baseline is not None else []
    sides.append(("after", ROOT))
    rows: dict[str, list[dict]] = {k: [] for k, _ in sides}
    for i in range(args.repeats):
        for name, path in sides if i % 2 == 0 else reversed(sides):
            keep = None if args.keep is None else args.keep / f"{name}_{i}"
            r = run_once(path, model, cal, args.budget, args.threads, keep=keep)
            rows[name].append(r)
            print(f"[{name} {i}] wall {r['wall_s']:.1f}s cpu {r['cpu_s']:.1f}s rc {r['rc']} load {r['load']:.1f} "
                  f"ratio {r['measured_ratio']} top1 {r['top1']} plan {r['plan']} timings {r['timings']}"
                  + (f" stderr {r['stderr']}" if r["rc"] not in (0, 3) else ""), flush=True)
    if args.no_write:
        return 0
    return _write(args, sides, rows)


def _parse_log(path: Path) -> dict[str, list[dict]]:
    """The rows of the `[name i] wall ...` lines a run printed (ast.literal_eval of each field)."""
    import ast
    import re

    rows: dict[str, list[dict]] = {}
    pat = re.compile(r"^\[(\w+) \d+\] wall ([\d.]+)s cpu ([\d.]+)s rc (-?\d+) load ([\d.]+) ratio (\S+) top1 (\S+) "
                     r"plan (\[.*?\]) timings (\{.*?\})")
    for line in path.read_text().splitlines():
        m = pat.match(line)
        if m:
            rows.setdefault(m[1], []).append({
                "wall_s": float(m[2]), "cpu_s": float(m[3]), "rc": int(m[4]), "load": float(m[5]),
                "measured_ratio": ast.literal_eval(m[6]), "top1": ast.literal_eval(m[7]),
                "plan": ast.literal_eval(m[8]), "timings": ast.literal_eval(m[9])})
    return rows


def _write(args, sides, rows) -> int:
    from _results import write_section

    cmd = "python benchmarks/bench_tool_time.py" + (f" --baseline {args.baseline}" if args.baseline else "") + \
        f" --repeats {args.repeats} --threads {args.threads}"
    lines = ["| code | runs | wall s (median, each) | CPU s (median, each) | load (1 min) | exit | measured ratio | "
             "validation top-1 | plan |", "|---|---|---|---|---|---|---|---|---|"]
    for name, _ in sides:
        rs = rows[name]
        each = {k: ", ".join(f"{r[k]:.0f}" for r in rs) for k in ("wall_s", "cpu_s")}
        lines.append(f"| {name} | {len(rs)} | {_med(rs, 'wall_s'):.0f} ({each['wall_s']}) | "
                     f"{_med(rs, 'cpu_s'):.0f} ({each['cpu_s']}) | "
                     + " | ".join(", ".join(_fmt(r[k]) for r in rs) for k in ("load", "rc", "measured_ratio", "top1"))
                     + " | " + "; ".join(" + ".join(r["plan"]) or "none" for r in rs) + " |")
    timing_keys = sorted({k for rs in rows.values() for r in rs for k in r["timings"]})
    lines += ["", "Planner timings (median s, from the report JSON):", "",
              "| code | " + " | ".join(timing_keys) + " |", "|---|" + "---|" * len(timing_keys)]
    for name, _ in sides:
        rs = rows[name]
        vals = [statistics.median(r["timings"].get(k, float("nan")) for r in rs) for k in timing_keys]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    body = (f"`optimize --latency-budget {args.budget} --calibration <128 crops> --threads {args.threads}` with an empty "
            "latency DB on EfficientNet-Lite0 (ImageNet weights, the dynamic-batch export as given; the ImageNet model installed here), "
            "each run a fresh CLI subprocess; CPU s = user + system of the subprocess. Runs interleaved A/B on a "
            "machine shared with other jobs (load = 1-minute load average at the end of each run): compare medians and "
            "ratios. " + args.note + "\n\n" + "\n".join(lines))
    write_section("tool_time", "Tool time of budget mode (issue 17 item 4)", cmd, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
