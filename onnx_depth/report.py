"""What the user sees: the before/after table and the JSON report."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .compare import Comparison
from .metrics import ModelStats


def human(n: float) -> str:
    """12345678 -> '12.35M'."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


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
    budget_met: str | None = None
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
        """The chosen segments: what each became, latency before/after (ms, in-context
        prediction), importance."""
        if not self.segments:
            return "no segment changed"
        head = ("segment", "becomes", "removed acts", "pruned", "ms before", "ms after", "importance")
        rows = [head]
        for r in self.segments:
            imp = "" if r.get("importance") is None else f"{r['importance']:.3g}"
            rows.append((r["segment"], r["label"].split(": ", 1)[-1][:48], str(len(r["removed_activations"])),
                         str(len(r["pruned_layers"])), f"{r['latency_ms_before']:.3f}", f"{r['latency_ms_after']:.3f}", imp))
        tb = sum(r["latency_ms_before"] for r in self.segments)
        ta = sum(r["latency_ms_after"] for r in self.segments)
        rows.append(("total", f"{len(self.segments)} segments", str(sum(len(r["removed_activations"]) for r in self.segments)),
                     str(sum(len(r["pruned_layers"]) for r in self.segments)), f"{tb:.3f}", f"{ta:.3f}",
                     f"{sum(r['importance'] or 0 for r in self.segments):.3g}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
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
            "segments": self.segments,
            "planning": self.planning,
            "ort": self.ort,
            "notes": self.notes,
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
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=2, default=_jsonable)
        os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)
