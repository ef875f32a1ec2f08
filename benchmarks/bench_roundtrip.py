"""Round-trip speed: load -> emit -> atomic save of large models (issue: < 10 s for 100 MB).

Usage: python benchmarks/bench_roundtrip.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

from onnx_depth import ir  # noqa: E402
from onnx_depth.zoo import build  # noqa: E402

LIGHT = Path(os.path.dirname(onnx.__file__)) / "backend/test/data/light"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "light_resnet50 (ConstantOfShape weights, folded on load)": LIGHT / "light_resnet50.onnx",
            "zoo resnet50, BN kept": None,
            "zoo vgg16_bn, BN kept": None,
        }
        for label, path in cases.items():
            if path is None:
                name = label.split()[1].rstrip(",")
                path = Path(tmp) / f"{name}.onnx"
                ir.save(build(name, bn="keep"), path)
            times = []
            out = Path(tmp) / "out.onnx"
            for _ in range(args.repeats):
                t = time.perf_counter()
                ir.save(ir.to_proto(ir.load(path)), out)
                times.append(time.perf_counter() - t)
            rows.append((label, path.stat().st_size / 1e6, out.stat().st_size / 1e6, statistics.median(times), min(times), max(times)))
            print(rows[-1], flush=True)
    body = "| model | input MB | output MB | median s | min s | max s |\n|---|---:|---:|---:|---:|---:|\n"
    body += "\n".join(f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} |" for r in rows)
    body += f"\n\nload (checker, constant promotion/folding, shape inference) + emit (full checker) + atomic save; {args.repeats} repeats."
    write_section("bench_roundtrip", "IR round trip speed", "python benchmarks/bench_roundtrip.py", body)


if __name__ == "__main__":
    main()
