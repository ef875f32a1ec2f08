"""The single numeric comparator (`Comparison`) and the one evaluation loop (`Evaluation`).

`Evaluation` runs a reference model and candidate models over the same feeds with one
onnxruntime setting (`runtime.RunSettings`: optimization level, default `EVAL_OPTIMIZATION` =
graph optimizations off, and thread count) and accumulates the differences in a `Comparison`.
It is what `optimize --check` (`compare_at_shapes`), every test of a rewrite (`compare_models`),
every fidelity report (`analysis.fidelity.evaluate`) and the planner's importance
(`planning.importance.EvalSet`) measure with, so the oracle is always onnxruntime, never our code,
and the planner optimizes the number the report shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from . import runtime
from .runtime import EVAL_OPTIMIZATION, RunFailed, RunSettings
from .shapes import feed_at, run_error

RTOL = 1e-4
ATOL = 1e-5


@dataclass
class Comparison:
    """Aggregate of output differences over one or more runs.

    nmse: sum of squared errors over sum of squared reference values (all outputs pooled).
    top1_agreement: fraction of rows whose argmax agrees, over outputs that look like logits
    (rank >= 2, last dim > 1, float); None if no output looks like that.
    """

    runs: int = 0
    max_abs: float = 0.0
    nmse: float = 0.0
    top1_agreement: float | None = None
    allclose: bool = True
    worst_output: str | None = None
    shapes: list[str] | None = None  # input shapes compared at (compare_at_shapes)
    failed_at: str | None = None  # the candidate did not run at this shape (compare_at_shapes)
    rtol: float = RTOL
    atol: float = ATOL
    _sq_err: float = field(default=0.0, repr=False)
    _sq_ref: float = field(default=0.0, repr=False)
    _agree: int = field(default=0, repr=False)
    _rows: int = field(default=0, repr=False)

    def add(self, ref: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]) -> None:
        if set(ref) != set(new):
            raise ValueError(f"outputs differ: {sorted(ref)} vs {sorted(new)}")
        self.runs += 1
        for name in ref:
            a = np.asarray(ref[name])
            b = np.asarray(new[name])
            if a.shape != b.shape:
                self.allclose = False
                self.max_abs = float("inf")
                self.worst_output = name
                continue
            if a.dtype.kind not in "fc":
                if not np.array_equal(a, b):
                    self.allclose = False
                    self.worst_output = name
                continue
            a64 = a.astype(np.float64)
            b64 = b.astype(np.float64)
            diff = np.abs(a64 - b64)
            if diff.size:
                m = float(np.nanmax(diff)) if not np.isnan(diff).all() else float("inf")
                if m > self.max_abs:
                    self.max_abs = m
                    self.worst_output = name
            if not np.allclose(b64, a64, rtol=self.rtol, atol=self.atol, equal_nan=True):
                self.allclose = False
                if self.worst_output is None:
                    self.worst_output = name
            self._sq_err += float(np.sum(diff**2))
            self._sq_ref += float(np.sum(a64**2))
            if a.ndim >= 2 and a.shape[-1] > 1:
                ra = a64.reshape(-1, a.shape[-1]).argmax(-1)
                rb = b64.reshape(-1, b.shape[-1]).argmax(-1)
                self._agree += int(np.sum(ra == rb))
                self._rows += int(ra.size)
        self.nmse = self._sq_err / self._sq_ref if self._sq_ref > 0 else (0.0 if self._sq_err == 0 else float("inf"))
        self.top1_agreement = self._agree / self._rows if self._rows else None

    def summary(self) -> str:
        agree = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.2%}"
        verdict = "match" if self.allclose else "MISMATCH"
        at = f" at input shape(s) {'; '.join(self.shapes)}" if self.shapes else ""
        if self.failed_at:
            return f"MISMATCH: the rewritten model fails to run at {self.failed_at}"
        return (
            f"{verdict} over {self.runs} run(s){at}: max abs err {self.max_abs:.3g}, "
            f"NMSE {self.nmse:.3g}{agree} (rtol {self.rtol:g}, atol {self.atol:g})"
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if not k.startswith("_")}


Feed = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


class Evaluation:
    """The one evaluation loop: `reference` against candidate models over batches of data.

    Every model runs with the same `settings` (runtime.RunSettings; default EVAL_OPTIMIZATION and
    onnxruntime's thread count); the reference session is created once. `outputs`: the outputs
    compared (default all of the reference's). Feeds are any iterable of {input: array} (a list,
    a generator, `Calibration.batches(n)`); they are consumed lazily, so memory is one feed and
    its outputs whatever the data size. For a small set compared against many candidates, compute
    `reference_outputs(feeds)` once and pass it to `compare` (the reference is not run again)."""

    def __init__(self, reference, *, settings: RunSettings | None = None, outputs: Sequence[str] | None = None,
                 rtol: float = RTOL, atol: float = ATOL) -> None:
        self.settings = settings or RunSettings()
        self.session = self.settings.session(reference)
        self.names = list(outputs) if outputs is not None else runtime.output_names(self.session)
        self.rtol, self.atol = rtol, atol

    def candidate_session(self, candidate) -> runtime.Session:
        """A session for `candidate` (ModelProto, bytes or path; a session is returned as is)."""
        return candidate if isinstance(candidate, runtime.Session) else self.settings.session(candidate)

    def reference_outputs(self, feeds: Iterable[Feed]) -> list[Outputs]:
        """The reference's outputs on every feed (held in memory: for small, reused sets)."""
        return [out for _, (out,) in runtime.stream([(self.session, list(self.names))], feeds)]

    def pairs(self, candidate, feeds: Iterable[Feed], *, names: Sequence[str] | None = None,
              reference_outputs: Sequence[Outputs] | None = None) -> Iterator[tuple[Feed, Outputs, Outputs]]:
        """(feed, reference outputs, candidate outputs) per feed, streamed. `names`: the outputs
        to run (default `self.names`). A run that fails raises runtime.RunFailed with `model` 0
        for the reference, 1 for the candidate."""
        names = list(names or self.names)
        cand = self.candidate_session(candidate)
        if reference_outputs is None:
            for feed, (ref, new) in runtime.stream([(self.session, names), (cand, names)], feeds):
                yield feed, ref, new
            return
        feeds = list(feeds)
        if len(feeds) != len(reference_outputs):
            raise ValueError(f"{len(feeds)} feeds but {len(reference_outputs)} reference outputs")
        try:
            for (feed, (new,)), ref in zip(runtime.stream([(cand, names)], feeds), reference_outputs):
                yield feed, ref, new
        except RunFailed as e:
            raise RunFailed(1, e.feed, e.cause) from e.cause

    def compare(self, candidate, feeds: Iterable[Feed], *, reference_outputs: Sequence[Outputs] | None = None,
                into: Comparison | None = None) -> Comparison:
        """The Comparison of `candidate` with the reference on `feeds` (added to `into` if given)."""
        c = into if into is not None else Comparison(rtol=self.rtol, atol=self.atol)
        for _, ref, new in self.pairs(candidate, feeds, reference_outputs=reference_outputs):
            c.add(ref, new)
        return c


def compare_outputs(
    refs: Sequence[Mapping[str, np.ndarray]],
    news: Sequence[Mapping[str, np.ndarray]],
    rtol: float = RTOL,
    atol: float = ATOL,
) -> Comparison:
    c = Comparison(rtol=rtol, atol=atol)
    for r, n in zip(refs, news, strict=True):
        c.add(r, n)
    return c


def evaluation(reference, *, rtol: float = RTOL, atol: float = ATOL, optimization: str = EVAL_OPTIMIZATION,
               threads: int | None = None) -> Evaluation:
    """The Evaluation of `reference` at an optimization level and thread count."""
    return Evaluation(reference, settings=RunSettings(optimization, threads), rtol=rtol, atol=atol)


def compare_models(
    reference: onnx.ModelProto | str | bytes,
    candidate: onnx.ModelProto | str | bytes,
    feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
    *,
    n_random: int = 3,
    seed: int = 0,
    overridable: bool = False,
    **settings,
) -> Comparison:
    """Run both models with onnxruntime on the same inputs and compare all outputs (`Evaluation`;
    `settings`: rtol, atol, optimization, threads as `evaluation` takes them).

    Without `feeds`, `n_random` random inputs are drawn from the reference model's input specs.
    Outputs are matched by name; the candidate must expose the same output names.
    `overridable`: the random inputs also override the float initializers that are graph inputs.
    """
    ev = evaluation(reference, **settings)
    if feeds is None:
        feeds = runtime.random_feeds(ev.session, n_random, seed, overridable=overridable)
    try:
        return ev.compare(candidate, feeds)
    except RunFailed as e:
        raise e.cause from None  # onnxruntime's own error, as a direct run gives it


def compare_at_shapes(
    reference: onnx.ModelProto | str | bytes,
    candidate: onnx.ModelProto | str | bytes,
    samples: Sequence,
    *,
    n_random: int = 3,
    seed: int = 0,
    overridable: bool = False,
    **settings,
) -> Comparison:
    """`compare_models` at several input shapes (`samples`: onnx_depth.shapes.InputShapes, e.g.
    from `shapes.check_samples`): `n_random` random inputs of each. The reference failing to run
    at a shape is the user's shape question: InputError naming the shape (exit 2); the candidate
    failing where the reference runs is a mismatch (allclose False, `failed_at` says where).
    `overridable`: the float initializers that are graph inputs are fed random values too;
    `settings` as `evaluation` takes them."""
    ev = evaluation(reference, **settings)
    cand = ev.candidate_session(candidate)
    specs = runtime.feed_specs(ev.session, overridable)
    c = Comparison(rtol=ev.rtol, atol=ev.atol)
    c.shapes = [s.describe() for s in samples]
    rng = np.random.default_rng(seed)
    for shapes in samples:
        feeds = (feed_at(specs, shapes, rng) for _ in range(n_random))
        try:
            ev.compare(cand, feeds, into=c)
        except RunFailed as e:
            if e.model == 0:
                raise run_error(shapes, e.cause, "the input model") from e.cause
            c.runs += 1
            c.allclose = False
            c.max_abs = float("inf")
            c.failed_at = f"{shapes.describe()}: {e}"
            return c
    return c
