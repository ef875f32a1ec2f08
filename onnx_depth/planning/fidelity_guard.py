"""The fidelity guard: no destroyed model leaves the tool silently.

With a latency budget alone the planner meets the budget at the least *estimated* fidelity cost,
which can still be a destroyed model. The emitted model's fidelity is measured on the validation
part of the calibration data (samples no refit saw) and compared with a default floor:

* a classifier (`looks_like_classifier`: every graph output is [batch, classes], rank 2): validation
  top-1 agreement with the original >= TOP1_FLOOR (0.90);
* otherwise (feature maps, hidden states [B, T, C], detections, ...): output NMSE <= NMSE_FLOOR
  (0.05); the comparator's argmax over their last axis means nothing there.

A plan below the floor is still emitted (the user asked for the budget), but with a warning on
stderr that ``-q`` does not hide, ``fidelity_ok: false`` in the report and a `FidelityWarning`
from the Python API. Without calibration data the fidelity is unknown: ``fidelity_ok: null`` and
the same warning. ``--max-error E`` replaces the floor by E (the plan is then chosen within E, and
with a budget too, the fastest plan within E that meets it, or exit 3).

`fidelity_warning` is the ONE place that raises these warnings, through onnx_depth.diagnostics
(Python warning + the report's `warnings` + a stderr line from the CLI, not hidden by -q).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..diagnostics import FidelityFloorWarning, FidelityNotMeasuredWarning, warn

__all__ = ["FidelityUnknownWarning", "FidelityWarning", "FidelityVerdict", "NMSE_FLOOR", "TOP1_FLOOR", "fidelity_warning", "judge",
           "looks_like_classifier"]

TOP1_FLOOR = 0.90
NMSE_FLOOR = 0.05


class FidelityWarning(FidelityFloorWarning):
    """The emitted model's fidelity is below the floor, or unknown."""

    code = "fidelity-floor"


class FidelityUnknownWarning(FidelityWarning, FidelityNotMeasuredWarning):
    """The emitted lossy model's fidelity is unknown: no calibration data measured it. One
    warning for both facts (it was two, saying the same thing twice)."""

    code = "fidelity-not-measured"


@dataclass
class FidelityVerdict:
    ok: bool | None  # None: unknown (no data)
    metric: str | None  # "top1" | "nmse" | None
    value: float | None
    floor: float | None
    message: str | None  # the warning, when not ok

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def looks_like_classifier(model) -> bool:
    """Every graph output of the ONNX `model` has rank 2 ([batch, classes]): top-1 agreement is
    then the fidelity that matters; for anything else it is an argmax over an arbitrary axis."""
    outs = list(model.graph.output)
    return bool(outs) and all(o.type.HasField("tensor_type") and o.type.tensor_type.HasField("shape")
                              and len(o.type.tensor_type.shape.dim) == 2 for o in outs)


def judge(validation_fidelity, *, held_out: bool = True, max_error=None, classifier: bool = True) -> FidelityVerdict:
    """The verdict on an emitted lossy model from its validation fidelity (analysis.fidelity.Fidelity
    or a compare.Comparison; None: no calibration data). max_error: the user's bound
    (planning.budget.ErrorBound), which replaces the default floor. classifier: False judges by
    NMSE even where the comparator defines a top-1 agreement (see `looks_like_classifier`)."""
    if validation_fidelity is None:
        return FidelityVerdict(None, None, None, None,
                               "fidelity of the emitted lossy model is UNKNOWN (NOT measured: no calibration data); the "
                               "plan was chosen by a data-free guess and may have destroyed the model; pass "
                               "--calibration DATA to measure it")
    top1 = validation_fidelity.top1_agreement if classifier else None
    nmse = float(validation_fidelity.nmse)
    if max_error is not None:
        if max_error.metric == "top1" and top1 is not None:
            metric, value, floor, ok = "top1", top1, 1.0 - max_error.value, top1 >= 1.0 - max_error.value - 1e-12
        else:
            metric, value, floor, ok = "nmse", nmse, max_error.value, nmse <= max_error.value
    elif top1 is not None:
        metric, value, floor, ok = "top1", top1, TOP1_FLOOR, top1 >= TOP1_FLOOR
    else:
        metric, value, floor, ok = "nmse", nmse, NMSE_FLOOR, nmse <= NMSE_FLOOR
    where = "validation" if held_out else "calibration (nothing held out: optimistic)"
    msg = None
    if not ok:
        what = f"top-1 agreement {value:.1%} < {floor:.0%}" if metric == "top1" else f"output NMSE {value:.3g} > {floor:g}"
        msg = (f"fidelity below the floor: {what} on the {where} data; the model is emitted as asked but may be "
               f"unusable (raise --latency-budget, or give --max-error to bound the error)")
    elif not held_out:
        msg = ("fidelity was measured on the samples the refit was fitted to (too few to hold some back): it is "
               "optimistic; pass more calibration samples or --validation DATA")
    return FidelityVerdict(bool(ok), metric, value, floor, msg)


def fidelity_warning(message: str, sink: "list[dict] | None" = None, *, stacklevel: int = 3,
                     unknown: bool = False) -> None:
    """Raise `message` as a FidelityWarning (diagnostics.warn: the CLI prints it on stderr, even
    with -q) and record it in `sink` (the report's warnings)."""
    if sink is not None and any(w.get("message") == message for w in sink):
        return
    warn(message, FidelityUnknownWarning if unknown else FidelityWarning, sink=sink, stacklevel=stacklevel + 1)
