"""End-to-end latency measurements of an emitted model against the original, and the record of
one planning round.

A measurement is `rounds` interleaved rounds (`latency_db.timer.interleaved_ab`): in round i both
models are timed back to back, giving block medians a_i (original) and b_i (optimized) in ms. The
ratio of the round is r_i = b_i / a_i (a load change that hits both models alike cancels); the
measurement's ratio is median_i r_i and its band (p10_i r_i, p90_i r_i). A threshold T (the
budget, times 1 + tolerance) is *straddled* when p10 <= T < p90: the rounds do not decide yet, so
the caller measures more rounds (up to MAX_MEASURE_ROUNDS) and decides on the extended median.

Measurements are stored in the latency DB as their raw rounds (`to_dict`, versioned by
MEASUREMENT_VERSION) and rebuilt with `from_dict`, so a rerun on the same DB decides the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

MEASURE_ROUNDS = 21       # interleaved rounds of one end-to-end measurement
MAX_MEASURE_ROUNDS = 63   # ... extended up to this many while the p10-p90 band straddles the threshold
MEASUREMENT_VERSION = "onnx-depth-plan-measurement-v1"


@dataclass
class Measurement:
    """One end-to-end measurement of an emitted model against the original (interleaved
    rounds): `ratio` the median of the per-round ratios, `band` their (p10, p90); the per-round
    block medians in ms of both models; `cached` when it came from the latency DB."""

    ratio: float
    band: tuple[float, float]
    rounds: int
    ms_original: list[float]
    ms_optimized: list[float]
    shapes: dict[str, list[int]] | None = None
    cached: bool = False

    @classmethod
    def from_rounds(cls, ms_original: Sequence[float], ms_optimized: Sequence[float],
                    shapes: "dict[str, list[int]] | None" = None, cached: bool = False) -> "Measurement":
        a, b = np.asarray(ms_original, dtype=np.float64), np.asarray(ms_optimized, dtype=np.float64)
        r = b / a
        return cls(float(np.median(r)), (float(np.percentile(r, 10)), float(np.percentile(r, 90))), len(r),
                   [float(x) for x in a], [float(x) for x in b], shapes, cached)

    def extended(self, more: "Measurement") -> "Measurement":
        return Measurement.from_rounds(self.ms_original + more.ms_original, self.ms_optimized + more.ms_optimized,
                                       self.shapes)

    def straddles(self, threshold: float) -> bool:
        return self.band[0] <= threshold < self.band[1]

    @property
    def median_ms(self) -> tuple[float, float]:
        """(original, optimized) whole-model latency in ms: medians over the rounds."""
        return float(np.median(self.ms_original)), float(np.median(self.ms_optimized))

    def to_dict(self) -> dict:
        return {"version": MEASUREMENT_VERSION, "ms_original": self.ms_original, "ms_optimized": self.ms_optimized,
                "shapes": self.shapes}

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement | None":
        if not isinstance(d, dict) or d.get("version") != MEASUREMENT_VERSION or not d.get("ms_original"):
            return None
        return cls.from_rounds(d["ms_original"], d["ms_optimized"], d.get("shapes"), cached=True)

    def summary(self) -> str:
        return f"{self.ratio:.3f} (p10-p90 {self.band[0]:.3f}-{self.band[1]:.3f}, {self.rounds} rounds)"


@dataclass
class Round:
    """One solve -> apply -> measure round."""

    internal_budget: float
    predicted: float
    measured: float | None = None
    band: tuple[float, float] | None = None
    error: float | None = None
    changes: int = 0
    measured_rounds: int = 0
    cached: bool = False
    importance: float | None = None  # summed importance (log-fidelity estimate) of the plan


__all__ = ["MAX_MEASURE_ROUNDS", "MEASURE_ROUNDS", "MEASUREMENT_VERSION", "Measurement", "Round"]
