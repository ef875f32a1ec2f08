"""Activation statistics: one onnxruntime pass over calibration data.

``collect_stats(model, calibration)`` adds the input of every activation site (and any extra
tensors asked for) as graph outputs of a copy of the emitted model, runs it once over the
calibration set (`stream_tensors`: runtime.stream with runtime.EVAL_OPTIMIZATION) and
accumulates, per channel of each tensor (``TensorStats``):

* count of values, and of values in the ``below`` (x <= lo) and ``above`` (x >= hi) regions of
  the site (Relu: lo = 0; Clip/ReLU6: its bounds; HardSwish: -3 and 3; ...), so the fraction in the
  linear region is exact on the data;
* mean and variance (Chan's parallel update per batch, float64), min, max;
* sum of (x - lo)^2 over x < lo and (x - hi)^2 over x > hi: the squared error of replacing the
  activation by the identity on that channel (the measured error behind LayerCollapse's bound);
* sum of x^2 (norms of boundary tensors).

Nothing is stored per sample: memory is one batch of outputs. The batch size of a dynamic-batch
model is picked from ``budget_bytes`` after measuring the output bytes of one sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from .. import ir, runtime
from ..ir import Graph
from .activations import ActivationSite, find_activations
from .calibration import Calibration, as_calibration

__all__ = ["TensorStats", "ActivationStats", "collect_stats", "stream_tensors", "with_outputs", "as_graph", "DEFAULT_BUDGET"]

DEFAULT_BUDGET = 256 << 20  # bytes of exposed outputs per run


@dataclass
class TensorStats:
    """Per-channel streaming statistics of one tensor along `axis`."""

    tensor: str
    axis: int = 1
    lo: float = -math.inf
    hi: float = math.inf
    samples: int = 0
    sample_shape: tuple[int, ...] | None = None
    count: np.ndarray | None = None
    below: np.ndarray | None = None
    above: np.ndarray | None = None
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    sq_below: np.ndarray | None = None
    sq_above: np.ndarray | None = None
    sq_total: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return 0 if self.count is None else int(self.count.size)

    def update(self, x: np.ndarray, batch: int) -> None:
        x = np.asarray(x)
        if x.dtype != np.float32 and x.dtype != np.float64:
            x = x.astype(np.float32)
        axis = self.axis if self.axis >= 0 else x.ndim + self.axis
        if x.ndim < 2 or axis >= x.ndim:
            x = x.reshape(x.shape[0] if x.ndim else 1, -1)
            axis = 1
        red = tuple(i for i in range(x.ndim) if i != axis)
        c = x.shape[axis]
        n_b = x.size // c
        if self.count is None:
            z = lambda dt=np.float64: np.zeros(c, dt)  # noqa: E731
            self.count, self.below, self.above = z(np.int64), z(np.int64), z(np.int64)
            self.mean, self.m2, self.sq_below, self.sq_above, self.sq_total = z(), z(), z(), z(), z()
            self.min = np.full(c, np.inf)
            self.max = np.full(c, -np.inf)
        elif c != self.count.size:
            raise ValueError(f"tensor {self.tensor!r}: {c} channels, earlier batches had {self.count.size}")
        self.samples += batch
        self.sample_shape = tuple(int(d) for d in x.shape[1:])
        mean_b = x.mean(axis=red, dtype=np.float64)
        shape = [1] * x.ndim
        shape[axis] = c
        d = x - mean_b.reshape(shape).astype(x.dtype)
        m2_b = np.sum(np.square(d), axis=red, dtype=np.float64)
        n_a = self.count.astype(np.float64)
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (n_a * n_b / n)
        self.count += n_b
        self.min = np.minimum(self.min, x.min(axis=red))
        self.max = np.maximum(self.max, x.max(axis=red))
        self.sq_total += np.sum(np.square(x), axis=red, dtype=np.float64)
        if math.isfinite(self.lo):
            self.below += np.count_nonzero(x <= self.lo, axis=red)
            e = np.minimum(x - np.float32(self.lo), 0)
            self.sq_below += np.sum(np.square(e), axis=red, dtype=np.float64)
        if math.isfinite(self.hi):
            self.above += np.count_nonzero(x >= self.hi, axis=red)
            e = np.maximum(x - np.float32(self.hi), 0)
            self.sq_above += np.sum(np.square(e), axis=red, dtype=np.float64)

    # ---- derived
    @property
    def var(self) -> np.ndarray:
        return self.m2 / np.maximum(self.count, 1)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    def fractions(self) -> dict[str, np.ndarray]:
        """Per-channel fraction of values in each region (below / mid / above)."""
        n = np.maximum(self.count, 1).astype(np.float64)
        below = self.below / n
        above = self.above / n
        return {"below": below, "mid": np.clip(1.0 - below - above, 0.0, 1.0), "above": above}

    def mean_sq_norm(self) -> float:
        """Mean over samples of ||x||^2 (whole tensor per sample)."""
        return float(self.sq_total.sum() / max(self.samples, 1))

    def to_dict(self) -> dict:
        f = self.fractions()
        return {
            "tensor": self.tensor,
            "axis": self.axis,
            "samples": self.samples,
            "sample_shape": list(self.sample_shape or ()),
            "channels": self.channels,
            "lo": self.lo,
            "hi": self.hi,
            "frac_below": f["below"].tolist(),
            "frac_above": f["above"].tolist(),
            "mean": self.mean.tolist(),
            "var": self.var.tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
        }


@dataclass
class ActivationStats:
    """The result of one statistics pass."""

    sites: list[ActivationSite]
    tensors: dict[str, TensorStats]
    samples: int
    runs: int
    batch_size: int
    skipped: list[str] = field(default_factory=list)
    extra: dict[str, TensorStats] = field(default_factory=dict)

    def for_site(self, site: ActivationSite | str) -> TensorStats | None:
        name = site if isinstance(site, str) else site.name
        for s in self.sites:
            if s.name == name:
                return self.tensors.get(_key(s))
        return None


def _key(site: ActivationSite) -> str:
    return f"{site.input}@{site.lo}:{site.hi}:{site.channel_axis}"


# ------------------------------------------------------------------------------- running
def as_graph(model) -> Graph:
    """A Graph from a Graph (as is), a ModelProto or a path."""
    if isinstance(model, Graph):
        return model
    return ir.load(model)


def with_outputs(model: onnx.ModelProto, tensors: Iterable[str], graph: Graph | None = None) -> onnx.ModelProto:
    """A copy of `model` that also outputs `tensors` (types from `graph` when known)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for t in tensors:
        if t in have:
            continue
        et = (graph.elem_type(t) if graph is not None else None) or onnx.TensorProto.FLOAT
        m.graph.output.append(onnx.helper.make_tensor_value_info(t, et, None))
        have.add(t)
    return m


def stream_tensors(
    models: Sequence[tuple[onnx.ModelProto, Sequence[str]]],
    calibration: Calibration,
    *,
    budget_bytes: int = DEFAULT_BUDGET,
    threads: int | None = None,
    batch_size: int | None = None,
) -> Iterator[tuple[int, list[dict[str, np.ndarray]]]]:
    """Run several models (each already exposing its tensors) on the same calibration batches,
    through the one loop that runs models over data (`runtime.stream`), at EVAL_OPTIMIZATION with
    `threads` intra-op threads, as every fidelity measurement.

    Yields (batch samples, [{tensor: array} per model]). The batch size of a dynamic-batch model
    is chosen so that all exposed outputs of one run fit in `budget_bytes`.
    """
    settings = runtime.RunSettings(runtime.EVAL_OPTIMIZATION, threads)
    runs = [(settings.session(m), list(t)) for m, t in models]
    fixed = calibration.fixed_batch
    first = fixed or 1
    seen = 0
    for feed, outs in runtime.stream(runs, calibration.batches(first), known_inputs_only=True):
        nb = next(iter(feed.values())).shape[0] if feed else 1
        seen = nb
        yield nb, outs
        bs = fixed or batch_size
        if bs is None:
            per_sample = sum(a.nbytes for o in outs for a in o.values()) / max(nb, 1) + calibration.sample_bytes
            bs = max(1, int(budget_bytes // max(per_sample, 1)))
        break
    if not seen:
        return
    for feed, outs in runtime.stream(runs, calibration.batches(bs, skip=first), known_inputs_only=True):
        yield (next(iter(feed.values())).shape[0] if feed else 1), outs


def collect_stats(
    model,
    calibration,
    *,
    sites: Sequence[ActivationSite] | None = None,
    extra: Mapping[str, int] | Iterable[str] = (),
    budget_bytes: int = DEFAULT_BUDGET,
    threads: int | None = None,
    max_samples: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ActivationStats:
    """Per-channel statistics of every activation input (and of `extra` tensors: a mapping
    tensor -> channel axis, or names with axis 1) over the calibration data, in one ORT pass.

    model: Graph, ModelProto or path. calibration: Calibration, path, array or mapping.
    """
    graph = as_graph(model)
    proto = ir.to_proto(graph.copy(), check=False)
    cal = as_calibration(calibration, proto)
    if max_samples is not None and max_samples < len(cal):
        cal = cal.subset(0, max_samples - max_samples % (cal.fixed_batch or 1) or (cal.fixed_batch or 1))
    sites = find_activations(graph) if sites is None else list(sites)
    accs: dict[str, TensorStats] = {}
    exposed: dict[str, list[TensorStats]] = {}
    skipped: list[str] = []
    for s in sites:
        k = _key(s)
        if k in accs:
            continue
        if graph.is_constant(s.input):
            skipped.append(f"{s.label}: input is a constant")
            continue
        accs[k] = TensorStats(s.input, s.channel_axis, s.lo, s.hi)
        exposed.setdefault(s.input, []).append(accs[k])
    extra_stats: dict[str, TensorStats] = {}
    extra_axes = dict(extra) if isinstance(extra, Mapping) else {t: 1 for t in extra}
    for t, axis in extra_axes.items():
        k = f"{t}@extra:{axis}"
        if k not in accs:
            accs[k] = TensorStats(t, axis)
            exposed.setdefault(t, []).append(accs[k])
        extra_stats[t] = accs[k]
    m = with_outputs(proto, exposed, graph)
    total = len(cal)
    done = runs = 0
    bs_seen = 0
    for nb, (outs,) in stream_tensors([(m, list(exposed))], cal, budget_bytes=budget_bytes, threads=threads):
        for t, arr in outs.items():
            for acc in exposed[t]:
                acc.update(arr, nb)
        done += nb
        runs += 1
        bs_seen = max(bs_seen, nb)
        if progress is not None:
            progress(done, total)
    return ActivationStats(sites, accs, done, runs, bs_seen, skipped, extra_stats)
