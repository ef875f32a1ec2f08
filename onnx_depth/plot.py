"""Plots of planning results (optional: `pip install onnx-depth[plot]`, which installs matplotlib).

* `plot_plans`: the plans the latency-budget search considered, latency ratio (x) against fidelity
  (y), the chosen plan highlighted and the budget as a vertical line.
* `plot_curves`: fidelity against latency budget, one line per method (the benchmarks compare
  "DP with refit" with "naive").
* `plot_report`: what `optimize --plot` draws from a budget report: plans that were measured end
  to end at their MEASURED ratio with the p10-p90 band (and a dotted line back to their
  prediction), plans only predicted as hollow grey markers, the tightening rounds numbered in
  order, the chosen plan, the budget (and budget x (1 + tolerance)). The y axis is
  exp(summed importance): with calibration data an estimate from measured per-change NMSE; without
  it a data-free guess, and the plot says "no fidelity measured".

matplotlib is imported inside the functions and drawn with its Agg canvas directly (no pyplot, no
global backend switch), so importing onnx_depth never needs it and a caller's own matplotlib
setup is left alone. The output format follows the file suffix (.png, .svg, .pdf); a PNG is
exactly `figsize * dpi` pixels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from . import safe_io
from .errors import InputError, OnnxDepthError

__all__ = ["MissingExtra", "plot_plans", "plot_curves", "plot_report"]

Point = "tuple[float, float] | Mapping[str, float]"


class MissingExtra(OnnxDepthError):
    """An optional dependency (a package extra) is not installed."""


def _figure(figsize: tuple[float, float], dpi: int):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtra("plotting needs matplotlib: pip install onnx-depth[plot]") from None
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _xy(p) -> tuple[float, float]:
    if isinstance(p, Mapping):
        x = p.get("latency_ratio", p.get("latency_ratio_measured", p.get("latency_ratio_predicted")))
        return float(x), float(p["fidelity"])
    x, y = p[0], p[1]
    return float(x), float(y)


def _finite(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]


def _save(fig, path: "str | os.PathLike[str]") -> Path:
    out = safe_io.check_destination(path, "plot")
    fmt = out.suffix.lower().lstrip(".") or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise InputError(f"{out}: unsupported plot format .{fmt} (use .png, .svg or .pdf)")
    with safe_io.atomic_open(out, "wb", "plot") as f:
        fig.savefig(f, format=fmt, dpi=fig.dpi)
    return out


def plot_plans(
    points: Iterable[Point],
    chosen: "Point | None",
    path: "str | os.PathLike[str]",
    *,
    budget: float | None = None,
    title: str | None = None,
    xlabel: str = "latency ratio (optimized / original)",
    ylabel: str = "fidelity",
    figsize: tuple[float, float] = (6.4, 4.8),
    dpi: int = 100,
    measured: "Mapping[str, Point] | None" = None,
) -> Path:
    """Scatter the considered plans and highlight the chosen one; returns the written path.

    points: (latency_ratio, fidelity) pairs, or mappings with "fidelity" and "latency_ratio"
    (or "latency_ratio_measured"/"latency_ratio_predicted", as in a plan file). Non-finite
    points are skipped. budget: drawn as a vertical line at that latency ratio. measured: labelled
    extra points (e.g. the chosen plan's validation and fit-part fidelity, measured).
    """
    pts = _finite(_xy(p) for p in points)
    best = None if chosen is None else _xy(chosen)
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    if pts:
        ax.scatter([x for x, _ in pts], [y for _, y in pts], s=18, color="tab:blue", alpha=0.6,
                   label=f"plans considered ({len(pts)})")
    if best is not None and all(map(math.isfinite, best)):
        ax.scatter([best[0]], [best[1]], s=140, marker="*", color="tab:red", edgecolors="black", linewidths=0.6,
                   zorder=3, label=f"chosen ({best[0]:.3g}, {best[1]:.3g})")
    for (label, p), marker in zip((measured or {}).items(), "oDsv^"):
        mx, my = _xy(p)
        if math.isfinite(mx) and math.isfinite(my):
            ax.scatter([mx], [my], s=60, marker=marker, zorder=3, label=f"{label}: {my:.3g}")
    if budget is not None:
        ax.axvline(budget, color="tab:gray", linestyle="--", linewidth=1.2, label=f"budget {budget:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: "str | os.PathLike[str]",
    *,
    title: str | None = None,
    xlabel: str = "latency budget (ratio of the original)",
    ylabel: str = "fidelity",
    figsize: tuple[float, float] = (6.4, 4.8),
    dpi: int = 100,
) -> Path:
    """One line per curve of (budget, fidelity) points (sorted by budget); returns the written path."""
    if not curves:
        raise InputError("plot_curves: no curves to plot")
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    markers = "osD^vP*X"
    for i, (name, pts) in enumerate(curves.items()):
        xy = sorted(_finite((float(b), float(f)) for b, f in pts))
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker=markers[i % len(markers)], markersize=4,
                linewidth=1.5, label=str(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def plot_report(report, path: "str | os.PathLike[str]", *, title: str | None = None,
                figsize: tuple[float, float] = (7.2, 5.0), dpi: int = 100) -> Path:
    """The plans a budget run considered (see the module docstring); `report` is an
    onnx_depth.report.Report (or its to_dict()). Returns the written path."""
    d = report if isinstance(report, Mapping) else report.to_dict()
    planning = d.get("planning") or {}
    datafree = planning.get("importance") == "data-free guess"
    budget, tol = d.get("budget"), d.get("budget_tolerance") or 0.0

    def fid(i) -> float:
        return math.exp(float(i)) if i is not None and math.isfinite(float(i)) else float("nan")

    measured = [m for m in planning.get("measured_plans") or [] if m.get("measured") is not None]
    measured_preds = {round(float(m["predicted"]), 9) for m in measured}
    predicted_only = _finite((float(r), fid(i)) for r, i in planning.get("considered") or []
                             if round(float(r), 9) not in measured_preds)
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    if predicted_only:
        ax.scatter([x for x, _ in predicted_only], [y for _, y in predicted_only], s=22, facecolors="none",
                   edgecolors="tab:gray", label=f"predicted only, not measured ({len(predicted_only)})")
    for k, m in enumerate(measured):
        y = fid(m.get("importance"))
        if not math.isfinite(y):
            continue
        lo, hi = m.get("band") or (m["measured"], m["measured"])
        ax.errorbar([m["measured"]], [y], xerr=[[m["measured"] - lo], [hi - m["measured"]]], fmt="o",
                    color="tab:blue", ecolor="tab:blue", capsize=3, markersize=6,
                    label="measured (median, p10-p90)" if k == 0 else None, zorder=3)
        ax.plot([m["predicted"], m["measured"]], [y, y], linestyle=":", color="tab:blue", linewidth=1)
        ax.scatter([m["predicted"]], [y], s=22, facecolors="none", edgecolors="tab:blue",
                   label="its prediction" if k == 0 else None)
    rounds = [r for r in planning.get("rounds") or [] if r.get("measured") is not None and r.get("importance") is not None]
    for n, r in enumerate(rounds, start=1):
        ax.annotate(f"round {n}", (r["measured"], fid(r["importance"])), textcoords="offset points",
                    xytext=(6, 6 + 9 * (n % 2)), fontsize="x-small", color="tab:blue")
    chosen = planning.get("chosen_measured")
    chosen_pred = planning.get("chosen")
    if chosen_pred:
        cx = chosen[0] if chosen else chosen_pred[0]
        cy = fid(chosen_pred[1])
        label = ("emitted" if d.get("output") or d.get("budget_met") is not False else "fastest found (not emitted)")
        ax.scatter([cx], [cy], s=150, marker="*", color="tab:red", edgecolors="black", linewidths=0.6, zorder=4,
                   label=f"{label} ({'measured' if chosen else 'predicted'} {cx:.3f})")
    if budget is not None:
        ax.axvline(budget, color="tab:gray", linestyle="--", linewidth=1.2, label=f"budget {budget:g}")
        if tol:
            ax.axvline(budget * (1 + tol), color="tab:gray", linestyle=":", linewidth=1.0,
                       label=f"budget x (1 + {tol:g})")
    ax.set_xlabel("latency ratio (optimized / original): measured where marked, else predicted")
    ax.set_ylabel("fidelity: data-free guess (exp of summed importance)" if datafree
                  else "fidelity estimate (exp of summed measured importance)")
    if datafree:
        ax.text(0.02, 0.02, "no fidelity measured (no calibration data):\nthe y axis is a data-free guess",
                transform=ax.transAxes, fontsize="small", color="tab:red", va="bottom")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title + ("" if d.get("budget_met") is not False else " (budget not met)"))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="x-small")
    fig.tight_layout()
    return _save(fig, path)
