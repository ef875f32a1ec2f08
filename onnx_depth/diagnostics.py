"""Warnings that reach people and programs: one channel for every module.

A decision the user should know about (importance guessed without data, fidelity not measured, a
model emitted over its latency budget, a fidelity floor crossed, ...) is raised with `warn`:

* it is a Python warning (`warnings.warn`) of a subclass of `OnnxDepthWarning`, so API callers
  see it, can filter it by category, or turn it into an error (`warnings.simplefilter("error",
  onnx_depth.diagnostics.OnnxDepthWarning)`);
* it is appended to `sink` (a list) as `{"category": code, "message": text}`; the report's
  `warnings` list is such a sink, so it is in the JSON report;
* the CLI records the Python warnings of a command (`recording()`) and prints each one line on
  stderr as ``onnx-depth: warning: <message>``; `-q` never hides them.

Each category has a short stable `code` (what the JSON report and programs match on).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import IO, Any, Iterator

__all__ = [
    "OnnxDepthWarning", "DataFreeWarning", "FidelityNotMeasuredWarning", "OverBudgetWarning",
    "FidelityFloorWarning", "warn", "recording", "print_warnings",
]


class OnnxDepthWarning(UserWarning):
    """Base class of every onnx-depth warning."""

    code = "warning"


class DataFreeWarning(OnnxDepthWarning):
    """A decision was taken without calibration data (a data-free guess of importance)."""

    code = "data-free"


class FidelityNotMeasuredWarning(OnnxDepthWarning):
    """A lossy model was emitted whose fidelity was not measured on real data."""

    code = "fidelity-not-measured"


class OverBudgetWarning(OnnxDepthWarning):
    """A model was emitted although its measured latency is over the budget."""

    code = "over-budget"


class FidelityFloorWarning(OnnxDepthWarning):
    """The emitted model's measured fidelity is below a floor."""

    code = "fidelity-floor"


def warn(message: str, category: type[OnnxDepthWarning] = OnnxDepthWarning, *,
         sink: "list[dict[str, Any]] | None" = None, stacklevel: int = 2) -> dict[str, Any]:
    """Raise `message` as a Python warning of `category` and append it to `sink` (when given).
    Returns the record {"category": code, "message": message}."""
    if not (isinstance(category, type) and issubclass(category, OnnxDepthWarning)):
        raise TypeError(f"category must be an OnnxDepthWarning subclass, got {category!r}")
    record = {"category": category.code, "message": str(message)}
    if sink is not None and record not in sink:
        sink.append(record)
    warnings.warn(str(message), category, stacklevel=stacklevel + 1)
    return record


@contextlib.contextmanager
def recording() -> Iterator[list[warnings.WarningMessage]]:
    """Record every OnnxDepthWarning raised inside the block (each occurrence, not once per
    location); other warnings keep their normal handling."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        warnings.simplefilter("always", OnnxDepthWarning)
        yield caught
    # re-emit the ones that are not ours through the normal machinery
    for w in caught:
        if not issubclass(w.category, OnnxDepthWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def print_warnings(caught: "list[warnings.WarningMessage]", file: "IO[str] | None" = None) -> int:
    """Print each recorded OnnxDepthWarning once, one line on stderr; returns how many."""
    out = file if file is not None else sys.stderr
    seen: set[str] = set()
    for w in caught:
        if not issubclass(w.category, OnnxDepthWarning):
            continue
        text = " ".join(str(w.message).split())
        if text in seen:
            continue
        seen.add(text)
        print(f"onnx-depth: warning: {text}", file=out)
    return len(seen)
