"""What the user sees: the before/after table, the segment table and the JSON report.

Tables shorten node names from the middle (`fmt.shorten`); the JSON report keeps them whole.
"fidelity cost" of a change is minus its importance: the estimated loss of log-fidelity, i.e. the
NMSE of the model outputs it adds (measured on calibration data, or a data-free guess).
The JSON report also says which tool, onnx and onnxruntime versions and which machine
(latency DB fingerprint) produced it, the whole-model latency before/after in ms with the input
shapes it was measured at, and every warning (`diagnostics`).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
import onnxruntime

from . import safe_io
from .compare import Comparison
from .fmt import human, shorten
from .metrics import ModelStats
from .version import __version__

NAME_WIDTH = 48  # node names in tables (shortened from the middle; whole in the JSON)


def environment(fingerprint: Any = None) -> dict[str, Any]:
    """Versions of the tool and its runtimes, and the machine fingerprint (when known)."""
    d: dict[str, Any] = {"tool": f"onnx-depth {__version__}", "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    if fingerprint is not None:
        d["fingerprint"] = fingerprint.to_dict()
        d["fingerprint_key"] = fingerprint.key()
    return d


@dataclass
class Report:
    input: str
    output: str | None
    before: ModelStats
    after: ModelStats
    passes: list[dict[str, Any]] = field(default_factory=list)
    check: Comparison | None = None
    fidelity: Any = None  # analysis.fidelity.Fidelity on the validation part of the calibration data
    fidelity_fit: Any = None  # ... on the fit part (what the refit saw; the gap shows overfitting)
    fidelity_ok: bool | None = None  # budget mode: planning.fidelity_guard's verdict (None: unknown)
    fidelity_guard: dict | None = None
    validation: dict | None = None  # the fit/validation split
    latency_ratio_measured: float | None = None
    latency_ratio_predicted: float | None = None
    budget: float | None = None
    max_error: dict | None = None
    latency_band: tuple[float, float] | None = None  # measured p10-p90 of the per-round ratios
    budget_met: bool | None = None  # measured median ratio <= budget x (1 + tolerance)
    budget_status: str | None = None  # "yes", "yes (tolerance T)", "no (allowed)", "no"
    budget_tolerance: float | None = None
    why: str | None = None  # why the budget was not met
    fastest_plan: dict[str, Any] | None = None  # on failure: the fastest plan found (predicted, measured)
    latency_ms: dict[str, Any] | None = None  # whole model before/after (ms) and the shapes measured at
    environment: dict[str, Any] = field(default_factory=environment)
    warnings: list[dict[str, Any]] = field(default_factory=list)  # diagnostics records
    segments: list[dict[str, Any]] = field(default_factory=list)  # chosen segments (budget mode)
    planning: dict[str, Any] = field(default_factory=dict)  # options, rounds, timings, plans considered
    ort: Any = None  # --emit-ort: what was written, operators, dropped op types
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = [("", "before", "after", "change")]

        def row(label: str, a: float, b: float, fmt=human) -> None:
            change = "" if a == 0 else f"{(b - a) / a:+.1%}"
            rows.append((label, fmt(a), fmt(b), change))

        b, a = self.before, self.after
        row("nodes", b.nodes, a.nodes, str)
        row("depth", b.depth, a.depth, str)
        row("linear depth", b.linear_depth, a.linear_depth, str)
        row("activations", b.activations, a.activations, str)
        row("params", b.params, a.params)
        row("MACs", b.macs, a.macs)
        if self.latency_ratio_predicted is not None:
            rows.append(("latency ratio (pred.)", "1", f"{self.latency_ratio_predicted:.3f}", "" if self.budget is None else f"budget {self.budget:g}"))
        if self.latency_ms is not None and self.latency_ms.get("before") is not None:
            lm = self.latency_ms
            rows.append(("latency (ms, measured)", f"{lm['before']:.3f}", f"{lm['after']:.3f}",
                         f"{(lm['after'] - lm['before']) / lm['before']:+.1%}" if lm["before"] else ""))
        if self.latency_ratio_measured is not None:
            band = "" if self.latency_band is None else f"p10-p90 {self.latency_band[0]:.2f}-{self.latency_band[1]:.2f}"
            rows.append(("latency ratio", "1", f"{self.latency_ratio_measured:.3f}", f"measured {band}".strip()))
        if self.check is not None:
            rows.append(("random check", "", "match" if self.check.allclose else "MISMATCH", f"max err {self.check.max_abs:.2g}"))
        if self.fidelity is not None:
            f = self.fidelity
            agree = "n/a" if f.top1_agreement is None else f"{f.top1_agreement:.2%}"
            held = self.validation is None or self.validation.get("held_out", True)
            rows.append((f"fidelity ({f.samples} {'valid.' if held else 'calib.'})", "", f"top-1 agree {agree}", f"NMSE {f.nmse:.2g}"))
            ff = self.fidelity_fit
            if ff is not None and ff is not f:
                agree = "n/a" if ff.top1_agreement is None else f"{ff.top1_agreement:.2%}"
                rows.append((f"  fit part ({ff.samples})", "", f"top-1 agree {agree}", f"NMSE {ff.nmse:.2g}"))
        if self.fidelity_ok is not None or self.fidelity_guard is not None:
            rows.append(("fidelity floor", "", {True: "ok", False: "BELOW", None: "unknown"}[self.fidelity_ok], ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def segment_table(self) -> str:
        """The chosen segments: their layers (node names), what they became, latency
        before/after (ms, in-context prediction) and fidelity cost, with a legend."""
        if not self.segments:
            return "no segment changed"
        guess = self.planning.get("importance") == "data-free guess"
        cost = "fidelity cost (guess)" if guess else "fidelity cost"
        head = ("layers", "becomes", "acts removed", "pruned", "ms before", "ms after", cost)
        rows = [head]
        total_cost = 0.0
        for r in self.segments:
            imp = r.get("importance")
            c = "" if imp is None else f"{-imp:.3g}"
            total_cost += 0.0 if imp is None else -imp
            layers = r.get("layers") or [r["segment"]]
            name = layers[0] if len(layers) == 1 else f"{layers[0]} .. {layers[-1]}"
            if len(name) > NAME_WIDTH and len(layers) > 1:
                half = (NAME_WIDTH - 4) // 2
                name = f"{shorten(layers[0], half)} .. {shorten(layers[-1], half)}"
            rows.append((shorten(name, NAME_WIDTH), r["label"].split(": ", 1)[-1][:40], str(len(r["removed_activations"])),
                         str(len(r["pruned_layers"])), f"{r['latency_ms_before']:.3f}", f"{r['latency_ms_after']:.3f}", c))
        tb = sum(r["latency_ms_before"] for r in self.segments)
        ta = sum(r["latency_ms_after"] for r in self.segments)
        rows.append(("total", f"{len(self.segments)} segments", str(sum(len(r["removed_activations"]) for r in self.segments)),
                     str(sum(len(r["pruned_layers"]) for r in self.segments)), f"{tb:.3f}", f"{ta:.3f}",
                     f"{total_cost:.3g}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
        lines.append("fidelity cost: the estimated NMSE of the outputs that the change adds (0 = exact); "
                     + ("a data-free guess from TLC/LayerCollapse criteria, not measured (pass --calibration)" if guess
                        else "measured on the calibration data after the least-squares refit")
                     + ". ms: in-context predictions; full node names in --report / --plan-out.")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "input": self.input,
            "output": self.output,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "passes": self.passes,
            "latency_ratio_measured": self.latency_ratio_measured,
            "latency_ratio_predicted": self.latency_ratio_predicted,
            "budget": self.budget,
            "max_error": self.max_error,
            "latency_band": self.latency_band,
            "budget_met": self.budget_met,
            "budget_status": self.budget_status,
            "budget_tolerance": self.budget_tolerance,
            "why": self.why,
            "fastest_plan": self.fastest_plan,
            "latency_ms": self.latency_ms,
            "segments": self.segments,
            "planning": self.planning,
            "ort": self.ort,
            "warnings": self.warnings,
            "notes": self.notes,
            "environment": self.environment,
            "fidelity_ok": self.fidelity_ok,
            "fidelity_guard": self.fidelity_guard,
            "validation": self.validation,
        }
        for k in ("nodes", "depth", "params", "macs"):
            d[f"{k}_before"] = getattr(self.before, k)
            d[f"{k}_after"] = getattr(self.after, k)
        if self.check is not None:
            d["check"] = self.check.to_dict()
            d["fidelity"] = self.check.to_dict()
        if self.fidelity is not None:
            d["fidelity"] = _jsonable(self.fidelity)
            d["fidelity_fit"] = _jsonable(self.fidelity_fit)
        return d

    def write_json(self, path: str | os.PathLike[str]) -> None:
        safe_io.write_text(path, json.dumps(self.to_dict(), indent=2, default=_jsonable), "report")


def _jsonable(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)
