"""Latency measurement with onnxruntime, done the way DESIGN-NOTES §3 says it must be.

- Sessions come from `onnx_depth.runtime.make_session` (fixed intra-op threads, no spinning).
- Inputs are random (right dtypes, fixed seed), bound once as OrtValues; outputs are pre-bound
  to CPU OrtValues of the right shape; each call is `run_with_iobinding(binding)` with no
  RunOptions (a RunOptions object costs tens of microseconds per call).
- Warm-up, then `repeats` blocks of `inner` calls; the latency is the median of block medians,
  p10/p90 are over all calls. Python's GC is off during blocks.
- The floor (call overhead) is measured with a trivial model taking the same inputs, timed in
  the same interleaved rounds; it is reported, never silently subtracted (`net_ms` does that).
- The machine is shared and noisy: `interleaved_ab` times several models in rotating rounds in
  one process and reports ratios (median of per-round ratios), which are what to quote.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from .. import runtime

FloorKind = Literal["shape", "identity"]
BLOCK_TARGET_S = 0.002  # auto `inner`: a block lasts about this long
MAX_INNER = 200


@dataclass(frozen=True)
class Timing:
    """One model's latency in milliseconds (median of block medians; p10/p90 over all calls),
    the number of timed calls, and the call-overhead floor measured alongside."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    samples: int
    floor_ms: float

    @property
    def net_ms(self) -> float:
        """median minus the floor, never negative."""
        return max(self.median_ms - self.floor_ms, 0.0)


@dataclass(frozen=True)
class InterleavedTiming:
    """Result of `interleaved_ab`: per-model timings and ratios vs the baseline (the first
    model). `ratios[k]` is the median over rounds of median_k / median_baseline in that round;
    `ratio_spread[k]` is the (p10, p90) of those per-round ratios. `round_ms[k]` is model k's
    block median in each round (ms), for differences that must be taken round by round."""

    baseline: str
    timings: dict[str, Timing]
    ratios: dict[str, float]
    ratio_spread: dict[str, tuple[float, float]]
    rounds: int
    round_ms: dict[str, list[float]] = field(default_factory=dict)

    def table(self) -> str:
        w = max(len(k) for k in self.timings)
        lines = [f"{'model':<{w}}  median_ms    p10_ms    p90_ms  ratio (p10-p90)"]
        for k, t in self.timings.items():
            lo, hi = self.ratio_spread[k]
            lines.append(f"{k:<{w}}  {t.median_ms:9.4f} {t.p10_ms:9.4f} {t.p90_ms:9.4f}  "
                         f"{self.ratios[k]:.3f} ({lo:.3f}-{hi:.3f})")
        return "\n".join(lines)


def floor_model(model: onnx.ModelProto, kind: FloorKind = "shape") -> onnx.ModelProto:
    """A trivial model with the same graph inputs as `model`.

    kind="shape" (default): one `Shape` per input, so the call does no data movement and the
    time is pure call overhead (binding, session run, thread-pool dispatch). kind="identity":
    one `Identity` per input, which also copies every input into a pre-bound output (a memcpy
    of the input size, e.g. ~18 us for 1x64x56x56 float32 here)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [onnx.ValueInfoProto.FromString(i.SerializeToString()) for i in model.graph.input
              if i.name not in inits]
    nodes, outputs = [], []
    for k, i in enumerate(inputs):
        out = f"floor_out_{k}"
        if kind == "identity":
            nodes.append(helper.make_node("Identity", [i.name], [out]))
            outputs.append(helper.make_value_info(out, i.type))
        else:
            nodes.append(helper.make_node("Shape", [i.name], [out]))
            outputs.append(helper.make_tensor_value_info(out, TensorProto.INT64, None))
    if not inputs:
        c = helper.make_tensor("c", TensorProto.FLOAT, [1], [0.0])
        nodes = [helper.make_node("Constant", [], ["k"], value=c),
                 helper.make_node("Identity", ["k"], ["floor_out_0"])]
        outputs = [helper.make_tensor_value_info("floor_out_0", TensorProto.FLOAT, [1])]
    graph = helper.make_graph(nodes, "floor", inputs, outputs)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = max(int(model.ir_version), 7)  # onnx may write an IR newer than ORT accepts
    return m


class _Bench:
    """A session with inputs and outputs bound once; `block(n)` times n calls."""

    def __init__(self, model: onnx.ModelProto, session_kw: Mapping[str, Any], seed: int,
                 dims: Mapping[str, int] | None, feed: Mapping[str, np.ndarray] | None = None) -> None:
        self.session = runtime.make_session(model, **session_kw)
        if feed is None:
            feed = runtime.random_feed(runtime.input_specs(self.session), np.random.default_rng(seed), dims)
        self.feed = dict(feed)
        outs = self.session.run(None, self.feed)  # first run: output shapes, lazy init
        self.binding = self.session.io_binding()
        self._keep = []  # OrtValues must outlive the binding
        for name, arr in self.feed.items():
            v = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), "cpu", 0)
            self._keep.append(v)
            self.binding.bind_ortvalue_input(name, v)
        for meta, arr in zip(self.session.get_outputs(), outs):
            arr = np.asarray(arr)
            v = ort.OrtValue.ortvalue_from_shape_and_type(arr.shape, arr.dtype, "cpu", 0)
            self._keep.append(v)
            self.binding.bind_ortvalue_output(meta.name, v)
        self.inner = 1

    def block(self, n: int) -> list[int]:
        run, binding, clock = self.session.run_with_iobinding, self.binding, time.perf_counter_ns
        out = [0] * n
        for k in range(n):
            t0 = clock()
            run(binding)
            out[k] = clock() - t0
        return out

    def warm(self, calls: int, inner: int | None) -> None:
        ts = self.block(max(calls, 1))
        if inner is None:
            per_call = max(float(np.median(ts)) * 1e-9, 1e-7)
            self.inner = int(min(MAX_INNER, max(1, math.ceil(BLOCK_TARGET_S / per_call))))
        else:
            self.inner = max(1, int(inner))


def _session_kw(threads: int, provider: str, provider_options: Mapping[str, Any] | None,
                optimization: str) -> dict[str, Any]:
    if int(threads) < 1:
        raise ValueError(f"threads must be a fixed count >= 1, got {threads}")
    return {"threads": int(threads), "provider": provider,
            "provider_options": {str(k): str(v) for k, v in (provider_options or {}).items()},
            "optimization": optimization}


def _rounds(benches: Sequence[_Bench], warmup: int, rounds: int, inner: int | None
            ) -> tuple[list[list[float]], list[list[int]]]:
    """Warm up every bench, then `rounds` rotating rounds of one block each.
    Returns (block medians per bench, all call times per bench) in ns."""
    if rounds < 1:
        raise ValueError("repeats/rounds must be >= 1")
    for b in benches:
        b.warm(warmup, inner)
    medians: list[list[float]] = [[] for _ in benches]
    calls: list[list[int]] = [[] for _ in benches]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        n = len(benches)
        for r in range(rounds):
            for k in [(r + j) % n for j in range(n)]:
                ts = benches[k].block(benches[k].inner)
                medians[k].append(float(np.median(ts)))
                calls[k].extend(ts)
    finally:
        if gc_was_enabled:
            gc.enable()
    return medians, calls


def _timing(medians: list[float], calls: list[int], floor_ms: float) -> Timing:
    arr = np.asarray(calls, dtype=np.float64) / 1e6
    return Timing(float(np.median(medians)) / 1e6, float(np.percentile(arr, 10)),
                  float(np.percentile(arr, 90)), len(calls), floor_ms)


def time_model(model: onnx.ModelProto, *, repeats: int = 7, **settings: Any) -> Timing:
    """Time one model (see the module docstring): `interleaved_ab` of this model alone, in
    `repeats` rounds (with its floor model in the same rounds). `settings` are interleaved_ab's:
    threads, provider, provider_options, optimization, warmup, inner (None picks a block size of
    about 2 ms of calls, 1..200), seed, dims (symbolic input dims take `dims[name]` or 1), floor."""
    return interleaved_ab({"model": model}, rounds=repeats, **settings).timings["model"]


def interleaved_ab(
    models: Mapping[str, onnx.ModelProto],
    *,
    threads: int = 1,
    provider: str = "CPUExecutionProvider",
    provider_options: Mapping[str, Any] | None = None,
    optimization: str = "all",
    warmup: int = 10,
    rounds: int = 15,
    inner: int | None = None,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    floor: FloorKind = "shape",
) -> InterleavedTiming:
    """Time several models in interleaved, rotating rounds in this process (plus one floor model
    per distinct input signature) and compare each with the first. Models with the same input
    names/shapes/dtypes get identical random inputs (same seed)."""
    if not models:
        raise ValueError("interleaved_ab needs at least one model")
    kw = _session_kw(threads, provider, provider_options, optimization)
    names = list(models)
    benches = [_Bench(models[k], kw, seed, dims) for k in names]
    floors: list[_Bench] = []
    floor_of: dict[tuple[Any, ...], int] = {}
    owner: list[int] = []  # index (in benches + floors) of each model's floor bench
    for k, b in zip(names, benches):
        key = tuple((n, a.shape, a.dtype.str) for n, a in sorted(b.feed.items()))
        if key not in floor_of:
            floor_of[key] = len(benches) + len(floors)
            floors.append(_Bench(floor_model(models[k], floor), kw, seed, dims, feed=b.feed))
        owner.append(floor_of[key])
    medians, calls = _rounds(benches + floors, warmup, rounds, inner)
    timings: dict[str, Timing] = {}
    ratios: dict[str, float] = {}
    spread: dict[str, tuple[float, float]] = {}
    base = np.asarray(medians[0])
    for i, k in enumerate(names):
        floor_ms = float(np.median(medians[owner[i]])) / 1e6
        timings[k] = _timing(medians[i], calls[i], floor_ms)
        r = np.asarray(medians[i]) / base
        ratios[k] = float(np.median(r))
        spread[k] = (float(np.percentile(r, 10)), float(np.percentile(r, 90)))
    round_ms = {k: [m / 1e6 for m in medians[i]] for i, k in enumerate(names)}
    return InterleavedTiming(names[0], timings, ratios, spread, rounds, round_ms)
