"""The fidelity objective of `--max-error E`: a bound on the emitted model's measured error.

For reference outputs y and the emitted model's outputs y' on the validation data:

* ``nmse`` (default): NMSE(y, y') = sum (y' - y)^2 / sum y^2 over all outputs and samples
  (`compare.Comparison.nmse`);
* ``top1``: the drop in top-1 agreement, 1 - mean_i [argmax y_i = argmax y'_i], in 0..1, for
  models with a classification-like output.

A plan meets the bound when error <= E. Written ``E`` (nmse) or ``METRIC:E`` on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

METRICS = ("nmse", "top1")


@dataclass
class ErrorBound:
    """--max-error: `metric` (nmse: output NMSE; top1: drop in top-1 agreement, 0..1) <= value."""

    value: float
    metric: str = "nmse"

    @classmethod
    def parse(cls, text: "str | float | ErrorBound") -> "ErrorBound":
        if isinstance(text, ErrorBound):
            return text
        if isinstance(text, (int, float)):
            return cls(float(text))
        metric, _, v = str(text).rpartition(":") if ":" in str(text) else ("nmse", "", str(text))
        metric = metric or "nmse"
        if metric not in METRICS:
            raise InputError(f"--max-error metric must be one of {', '.join(METRICS)} (e.g. 0.05 or top1:0.01), got {metric!r}")
        try:
            value = float(v)
        except ValueError:
            raise InputError(f"--max-error needs a number (e.g. 0.05 or top1:0.01), got {text!r}") from None
        if not value >= 0:
            raise InputError(f"--max-error must be >= 0, got {value}")
        return cls(value, metric)

    def error_of(self, comp) -> float:
        """The error of a comparison (`compare.Comparison`) in this bound's metric."""
        if self.metric == "top1":
            if comp.top1_agreement is None:
                raise InputError("--max-error top1: the model has no classification-like output; use nmse")
            return 1.0 - comp.top1_agreement
        return float(comp.nmse)


__all__ = ["METRICS", "ErrorBound"]
