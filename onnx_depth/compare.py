"""The single numeric comparator: how close are two models' outputs?

Used by `optimize --check`, by every test of a rewrite and by every fidelity report. Models are
always run by onnxruntime (via onnx_depth.runtime), with graph optimizations disabled unless the
caller asks otherwise, so the oracle is never our own code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx

from . import runtime

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


def compare_models(
    reference: onnx.ModelProto | str | bytes,
    candidate: onnx.ModelProto | str | bytes,
    feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
    *,
    n_random: int = 3,
    seed: int = 0,
    rtol: float = RTOL,
    atol: float = ATOL,
    optimization: str = "disabled",
    threads: int | None = None,
    overridable: bool = False,
) -> Comparison:
    """Run both models with onnxruntime on the same inputs and compare all outputs.

    Without `feeds`, `n_random` random inputs are drawn from the reference model's input specs.
    Outputs are matched by name; the candidate must expose the same output names.
    `overridable`: the random inputs also override the float initializers that are graph inputs.
    """
    s_ref = runtime.make_session(reference, optimization=optimization, threads=threads)
    s_new = runtime.make_session(candidate, optimization=optimization, threads=threads)
    if feeds is None:
        feeds = runtime.random_feeds(s_ref, n_random, seed, overridable=overridable)
    c = Comparison(rtol=rtol, atol=atol)
    names = runtime.output_names(s_ref)
    for feed in feeds:
        c.add(runtime.run(s_ref, feed, names), runtime.run(s_new, feed, names))
    return c


def compare_at_shapes(
    reference: onnx.ModelProto | str | bytes,
    candidate: onnx.ModelProto | str | bytes,
    samples: Sequence,
    *,
    n_random: int = 3,
    seed: int = 0,
    rtol: float = RTOL,
    atol: float = ATOL,
    optimization: str = "disabled",
    threads: int | None = None,
    overridable: bool = False,
) -> Comparison:
    """`compare_models` at several input shapes (`samples`: onnx_depth.shapes.InputShapes, e.g.
    from `shapes.check_samples`): `n_random` random inputs of each. The reference failing to run
    at a shape is the user's shape question: InputError naming the shape (exit 2); the candidate
    failing where the reference runs is a mismatch (allclose False, `failed_at` says where).
    `overridable`: the float initializers that are graph inputs are fed random values too."""
    from .shapes import feed_at, run_error

    s_ref = runtime.make_session(reference, optimization=optimization, threads=threads)
    s_new = runtime.make_session(candidate, optimization=optimization, threads=threads)
    specs = runtime.feed_specs(s_ref, overridable)
    c = Comparison(rtol=rtol, atol=atol)
    c.shapes = [s.describe() for s in samples]
    names = runtime.output_names(s_ref)
    rng = np.random.default_rng(seed)
    for shapes in samples:
        for _ in range(n_random):
            feed = feed_at(specs, shapes, rng)
            try:
                ref = runtime.run(s_ref, feed, names)
            except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types
                raise run_error(shapes, e, "the input model") from e
            try:
                new = runtime.run(s_new, feed, names)
            except Exception as e:  # noqa: BLE001
                c.runs += 1
                c.allclose = False
                c.max_abs = float("inf")
                c.failed_at = f"{shapes.describe()}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
                return c
            c.add(ref, new)
    return c
