"""Whole-model latency of a plan from segment latencies, corrected in context.

Segment latencies measured standalone do not add up to the model's latency at ORT_ENABLE_ALL:
each standalone segment model pays its own boundary (NCHWc reorders in and out, a call, cold
activations) that the model does not pay between segments, and the parts of the model outside
any chain (pooling, heads) are in no segment. Notation, for a plan (one option per segment,
tiling every chain):

* S(plan): sum of the plan's segment latencies, each net of its call-overhead floor;
  S0 = S(original plan: every layer its own `keep` segment);
* cut(i) = keep(i) + keep(i+1) - pair(i): what a segment boundary at chain position i costs
  standalone (the two single-layer models against the two layers as one model,
  `Candidates.pair_model`; `profile` times the three in one interleaved group and stores the
  difference, clamped at 0);
* E(plan) = S(plan) - sum of cut(i) over the plan's internal boundaries: the plan's layers
  without their standalone boundaries; E0 = E(original);
* W: one measurement of the whole original model (after the lossless passes; `profile` stores it).

Methods:

* ``raw``: S(plan) (a trend, not a latency).
* ``ratio``: W * S(plan) / S0.
* ``delta``: W + S(plan) - S0 (brief's first proposal). Merging k layers drops k-1 standalone
  boundaries from S(plan) that the model never paid, so this over-predicts merging gains.
* ``cuts_delta``: W + E(plan) - E0: delta with the boundaries priced where they are.
* ``cuts`` (default): W * E(plan) / E0. Same correction, as a ratio: W enters only as a scale,
  so a W measured under different machine load than the segments shifts the absolute value but
  not the predicted speed-up; the rest of the model is assumed to scale with the chains.

Every method is additive over a plan's options plus a constant (`option_cost`, `offset_ms`;
`predict` = offset + sum of option_cost): a DP over segments can use option_cost directly.
benchmarks/bench_latency_model.py measures all of them against interleaved whole-model A/B runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..latency_db.store import Entry
from .profiler import WHOLE, ProfileResult
from .segments import Candidates, SegmentOption

METHODS = ("ratio", "delta", "cuts_delta", "cuts")
DEFAULT_METHOD = "cuts"


STATS = ("median", "p10")
MAX_CUT_SHARE = 0.5  # a cut is priced at most at this share of the smaller adjacent layer


def segment_ms(entry: Entry, stat: str = "median") -> float:
    """A segment's latency for planning: its median (or p10) minus its call-overhead floor."""
    if stat == "median":
        return entry.net_ms
    if stat == "p10":
        return max(entry.p10_ms - (entry.floor_ms or 0.0), 0.0)
    raise ValueError(f"unknown statistic {stat!r}; one of {STATS}")


@dataclass
class LatencyModel:
    """Predicts whole-model latency (ms) of plans over `cands` from per-option latencies.

    latency: option id -> segment latency (ms); cut: (chain, position) -> cost of a boundary
    there (ms; the ``cuts*`` methods need it); whole_ms: the measured original."""

    cands: Candidates
    latency: dict[str, float]
    whole_ms: float
    method: str = DEFAULT_METHOD
    cut: dict[tuple[int, int], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; one of {METHODS}")
        self.original_ms = self.raw(self.cands.original_plan())

    @classmethod
    def from_profile(cls, cands: Candidates, result: ProfileResult, method: str = DEFAULT_METHOD,
                     whole_ms: float | None = None, stat: str = "median") -> "LatencyModel":
        """Option latencies and cut costs from a profile run. `whole_ms` overrides the stored
        whole-model latency; `stat` picks the entries' median (default) or p10."""
        lat: dict[str, float] = {}
        for key, opts in cands.unique().items():
            e = result.entries.get(key)
            if e is None:
                continue
            for o in opts:
                lat[o.id] = segment_ms(e, stat)
        cut: dict[tuple[int, int], float] = {}
        for cid, i in cands.cuts():
            e = result.entries.get(cands.pair_key(cid, i))
            if e is not None:
                # a boundary cannot cost more than a fraction of the layers it separates: a cut
                # measured on a loaded machine can be noise-dominated, and an over-priced cut makes
                # plans that remove many boundaries look impossibly fast (even negative)
                a, b = lat.get(cands.keep(cid, i).id), lat.get(cands.keep(cid, i + 1).id)
                cap = MAX_CUT_SHARE * min(a, b) if a is not None and b is not None else float("inf")
                cut[(cid, i)] = min(e.median_ms, cap)
        if whole_ms is None:
            w = result.entries.get(WHOLE)
            if w is None:
                raise ValueError("the profile has no whole-model measurement; pass whole_ms")
            whole_ms = w.median_ms if stat == "median" else w.p10_ms
        return cls(cands, lat, float(whole_ms), method, cut)

    # ---- inputs ------------------------------------------------------------------------------
    def option_ms(self, opt: SegmentOption) -> float:
        """The option's standalone latency (ms, net of the floor)."""
        try:
            return self.latency[opt.id]
        except KeyError:
            raise KeyError(f"no latency for option {opt.id} ({opt.label}); run `onnx-depth profile`") from None

    def cut_ms(self, chain: int, i: int) -> float:
        try:
            return self.cut[(chain, i)]
        except KeyError:
            raise KeyError(f"no cut cost for chain {chain} position {i}; run `onnx-depth profile`") from None

    @property
    def cuts_ms(self) -> float:
        """Sum of every cut: the standalone boundaries of the original plan."""
        return sum(self.cut_ms(c, i) for c, i in self.cands.cuts())

    # ---- sums --------------------------------------------------------------------------------
    def raw(self, plan: Iterable[SegmentOption]) -> float:
        """S(plan): sum of the plan's segment latencies (chains it leaves out count as kept)."""
        return sum(self.option_ms(o) for o in self.cands.complete(plan))

    def inner(self, plan: Iterable[SegmentOption]) -> float:
        """E(plan): S(plan) without the cost of the plan's internal boundaries."""
        return sum(self.option_ms(o) + self._inside(o) for o in self.cands.complete(plan)) - self.cuts_ms

    def _inside(self, opt: SegmentOption) -> float:
        return sum(self.cut_ms(opt.chain, i) for i in range(opt.st + 1, opt.end))

    # ---- prediction --------------------------------------------------------------------------
    def _scale(self, m: str) -> float:
        base = self.original_ms if m == "ratio" else self.original_ms - self.cuts_ms
        return self.whole_ms / base if base > 0 else 1.0

    def option_cost(self, opt: SegmentOption, method: str | None = None) -> float:
        """The option's additive share of `predict` (what a DP sums)."""
        m = method or self.method
        if m == "delta":
            return self.option_ms(opt)
        if m == "ratio":
            return self.option_ms(opt) * self._scale(m)
        if m == "cuts_delta":
            return self.option_ms(opt) + self._inside(opt)
        if m == "cuts":
            return (self.option_ms(opt) + self._inside(opt)) * self._scale(m)
        raise ValueError(f"unknown method {m!r}; one of {METHODS}")

    def offset_ms(self, method: str | None = None) -> float:
        """The constant part of `predict`."""
        m = method or self.method
        if m == "delta":
            return self.whole_ms - self.original_ms
        if m == "ratio":
            return 0.0
        if m == "cuts_delta":
            return self.whole_ms - self.original_ms
        if m == "cuts":
            return -self.cuts_ms * self._scale(m)
        raise ValueError(f"unknown method {m!r}; one of {METHODS}")

    def predict(self, plan: Iterable[SegmentOption], method: str | None = None) -> float:
        """Predicted whole-model latency (ms) of the model with `plan` applied."""
        return self.offset_ms(method) + sum(self.option_cost(o, method) for o in self.cands.complete(plan))

    def predict_all(self, plan: Iterable[SegmentOption]) -> Mapping[str, float]:
        plan = list(plan)
        return {"raw": self.raw(plan), **{m: self.predict(plan, m) for m in METHODS}}


__all__ = ["DEFAULT_METHOD", "METHODS", "LatencyModel", "segment_ms"]
