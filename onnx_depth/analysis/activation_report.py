"""Per-activation report for ``onnx-depth analyze MODEL --calibration DATA``.

``activation_report(model, calibration)`` returns one dict per activation site:

* site (output tensor), label (node name), op, kind, channels, approximate (SiLU/GELU-like);
* criterion used for the states and their counts (ON / OFF / SAT / NEG / LIN / MIXED);
* linear_fraction: fraction of the activation's input values on which its naive linearization
  (each channel mapped to its dominant affine region) is exact; on_fraction: in the identity
  region; dead_channels: channels whose output is constant (prunable);
* tlc: data-free BN criterion (counts, mean P_OFF) when a BatchNormalization precedes it;
  layercollapse: slope criterion, paper bound C (1-a)^2 and the measured error, for Leaky/PReLU;

Filled in by ``planning.activation_fidelity.annotate_report`` (analysis does not know about
merges or rewrites):

* merge: the linear -> act -> linear segment it would enable (kind, merged operator, MACs
  before/after per sample) or the reason there is none;
* fidelity (``estimate_fidelity=True``): the model with only this activation changed, compared
  with the original on the evaluation data (top-1 agreement, NMSE): ``naive`` linearization,
  and ``refit`` (merged + least-squares refit on the calibration data).

``render_table(rows)`` formats the rows as a fixed-width text table.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import ir
from ..fmt import human, shorten
from .activations import REGIONS, find_activations
from .calibration import as_calibration
from .criteria import DEFAULT_TAU, constant_channels, decide, layercollapse_criterion, tlc_criterion
from .stats import ActivationStats, as_graph, collect_stats

__all__ = ["activation_report", "fidelity_cell", "render_table"]


def _counts(dec) -> dict:
    return {k: v for k, v in dec.counts().items()}


def activation_report(
    model,
    calibration=None,
    *,
    tol: float = 0.0,
    tau: float = DEFAULT_TAU,
    stats: ActivationStats | None = None,
    threads: int | None = None,
    record: dict | None = None,
) -> list[dict]:
    """One dict per activation (see module docstring; "merge" and "fidelity" are filled by
    planning.activation_fidelity). calibration: path / Calibration / arrays (None: data-free
    criteria only). record: filled with {site name: Decision} for every site with one."""
    graph = as_graph(model).copy()
    sites = find_activations(graph)
    proto = ir.to_proto(graph.copy(), check=False)
    cal = as_calibration(calibration, proto) if calibration is not None else None
    if stats is None and cal is not None:
        stats = collect_stats(graph, cal, sites=sites, threads=threads)
    rows: list[dict] = []
    for s in sites:
        st = stats.for_site(s) if stats is not None else None
        dec = decide(graph, s, stats=st, tol=tol, tau=tau)
        row: dict = {
            "site": s.name,
            "label": s.label,
            "op": s.op,
            "kind": s.kind,
            "channels": s.channels if s.channels is not None else (st.channels if st is not None else None),
            "approximate": s.approximate,
            "criterion": None if dec is None else dec.criterion,
            "counts": None if dec is None else _counts(dec),
            "linear_fraction": None,
            "on_fraction": None,
            "dead_channels": None,
        }
        if dec is not None:
            if record is not None:
                record[s.name] = dec
            row["dead_channels"] = len(constant_channels(s, dec))
            mapped = [r for r in REGIONS if s.region_map(r) is not None]
            if mapped:
                row["linear_fraction"] = float(np.mean(np.max(np.stack([dec.fractions[r] for r in mapped]), axis=0)))
            on = [r for r in REGIONS if s.region_label(r) == "ON"]
            row["on_fraction"] = float(np.mean(sum(dec.fractions[r] for r in on))) if on else 0.0
        tl, _ = tlc_criterion(graph, s, tol)
        if tl is not None:
            row["tlc"] = {"counts": _counts(tl), "mean_p_off": float(np.mean(tl.fractions["below"]))}
        if s.kind in ("prelu", "leaky_relu"):
            lc, _ = layercollapse_criterion(graph, s, tau, st)
            if lc is not None:
                row["layercollapse"] = {"counts": _counts(lc), **{k: v for k, v in lc.info.items() if not isinstance(v, np.ndarray)}}
        rows.append(row)
    return rows


def fidelity_cell(f) -> dict:
    """The "fidelity" entry of a row for one analysis.fidelity.Fidelity."""
    return {"top1_agreement": f.top1_agreement, "nmse": f.nmse, "max_abs": f.comparison.max_abs}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def render_table(rows: Sequence[dict]) -> str:
    """Fixed-width text table of activation_report rows."""
    head = ["activation", "op", "ch", "ON", "OFF", "MIXED", "other", "lin%", "dead", "merge", "MACs", "naive agr/nmse", "refit agr/nmse"]
    body = []
    for r in rows:
        c = r.get("counts") or {}
        other = sum(v for k, v in c.items() if k in ("SAT", "NEG", "LIN"))
        m = r.get("merge") or {}
        merge = m.get("merged", "-") if "refused" not in m else "-"
        macs = f"{human(m['macs_before'])}->{human(m['macs_after'])}" if "macs_before" in m else "-"
        fid = r.get("fidelity") or {}

        def f(k):
            d = fid.get(k)
            if not d:
                return "-"
            agr = "-" if d["top1_agreement"] is None else f"{100 * d['top1_agreement']:.1f}%"
            return f"{agr}/{d['nmse']:.2g}"

        body.append([
            shorten(str(r["label"]), 40), r["op"][:28], str(r["channels"] or "?"),
            str(c.get("ON", "-")), str(c.get("OFF", "-")), str(c.get("MIXED", "-")), str(other) if c else "-",
            _pct(r.get("linear_fraction")), str(r.get("dead_channels") if r.get("dead_channels") is not None else "-"),
            merge, macs, f("naive"), f("refit"),
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])
