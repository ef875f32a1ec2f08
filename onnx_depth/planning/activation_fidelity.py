"""What removing one activation costs: the merge it enables and the fidelity of the result.

For ``onnx-depth analyze MODEL --calibration DATA [--estimate-fidelity]``; the rows come from
`analysis.activation_report` (statistics and criteria), this module adds per activation site:

* ``merge``: the segment (j-1, j+1] of the planner's candidates (`planning.segments`) around
  the activation at junction j of a chain: the two linear layers and the activation between
  them become one operator (Conv∘Conv: kernel d1(k1-1) + s1 d2(k2-1) + 1, groups gcd; dense:
  W1 diag(a) W2), with its MACs per sample before and after, or the reason there is none
  (the chain's own refusal: pinned position, residual span cut, no chain through it, ...);
* ``fidelity`` (estimated): the model with only this activation changed, compared with the
  original on the evaluation data (`analysis.fidelity.evaluate`): ``naive`` is the activation
  replaced by its per-channel affine map (`passes.linearize`, forced: MIXED channels take their
  dominant region), ``refit`` is the merged operator (`planning.realize.option_operator`, the
  activation taken as that same affine map) refit by least squares on the calibration data
  (`planning.importance.fit_operators`: minimises |X W - Y|^2 + lam |W - W0|^2 with
  lam = ridge * mean diag(X^T X), X the option's input rows, Y the ORIGINAL network's output at
  the option's target, W0 the naive merge; `kernels.lstsq`).

The candidates are found like the budget planner finds them: on the graph after the LOSSLESS
passes (BatchNorm folded), with symbolic input dims fixed at the calibration shapes (batch 1).
`refit_sites` merges and refits several sites in one model (sequentially, each fitted on the
input it will really see: `planning.sequential_refit`); it is the data-driven counterpart of
`passes.calibrated.calibrated_rewrites` for MIXED activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Collection, Mapping


from ..analysis.activation_report import fidelity_cell
from ..analysis.activations import find_activations
from ..analysis.calibration import as_calibration
from ..analysis.fidelity import evaluate
from ..analysis.stats import as_graph
from ..errors import InputError
from ..ir import Graph
from ..ir.exporter import to_proto
from ..passes import LOSSLESS, PassContext, run_to_fixed_point
from ..passes.linearize import linearize
from ..shapes import fixed_view, has_symbolic_dims, resolve
from .importance import fit_operators
from .realize import option_operator
from .segments import Candidates, SegmentOption, candidates
from .sequential_refit import refit_sequential

__all__ = ["SiteRefit", "annotate_report", "estimate_fidelity", "merge_info", "refit_sites", "site_candidates",
           "site_option", "site_plan"]

NO_KERNEL_LIMIT = 1 << 30  # the report shows every merge, however large its kernel


def site_candidates(model, calibration=None, *, max_layers: int = 2, max_mac_ratio: float = math.inf,
                    threads: int | None = None) -> Candidates:
    """The planner's candidates of `model` (a copy after the LOSSLESS passes; symbolic input
    dims fixed at the calibration shapes, batch 1), every merge enumerated up to `max_layers`
    layers and `max_mac_ratio` times the MACs replaced."""
    graph = as_graph(model).copy()
    run_to_fixed_point(graph, LOSSLESS, PassContext(lossless=True))
    proto = to_proto(graph.copy(), check=False)
    if has_symbolic_dims(proto):
        cal = None if calibration is None else as_calibration(calibration, proto)
        graph.fixed_shapes = fixed_view(graph, resolve(proto, None, cal), threads=threads or 1)
    return candidates(graph, max_layers=max_layers, max_kernel=NO_KERNEL_LIMIT, max_mac_ratio=max_mac_ratio)


def _junction(cands: Candidates, site: str):
    """(chain, j) of the chain junction whose activation writes `site`, or (None, None)."""
    for chain in cands.chains:
        for j, act in enumerate(chain.acts):
            if act is not None and act.y == site:
                return chain, j
    return None, None


def _option_id(chain_id: int, st: int, end: int) -> str:
    return f"c{chain_id}({st},{end}]:merge:{','.join(map(str, range(st + 1, end + 1)))}"


def _mac_refusal(opt: SegmentOption, max_mac_ratio: float | None) -> str | None:
    if max_mac_ratio is not None and opt.macs > max_mac_ratio * opt.macs_original:
        return f"merged operator costs {opt.macs} MACs > {max_mac_ratio:g} x {opt.macs_original}"
    return None


def site_option(cands: Candidates, site: str, *, max_mac_ratio: float | None = None) -> tuple[SegmentOption | None, str | None]:
    """The merge option (j-1, j+1] around the activation writing tensor `site`, or (None, why)."""
    if cands.graph.producer(site) is None:
        return None, "removed by the lossless rewrites (exact)"
    chain, j = _junction(cands, site)
    if chain is None:
        return None, "not between two linear layers of a chain (Conv/Gemm/MatMul: constant weights, static shapes)"
    if j >= chain.L:
        feeds = " + ".join(c.op_type for c in cands.graph.consumers(site)) or "a graph output"
        return None, f"output feeds {feeds}, not a {chain.kind} layer continuing the chain (a conv chain ends at a Flatten)"
    why = chain.check(j - 1, j + 1)
    if why:
        return None, why
    try:
        opt = cands.option(_option_id(chain.id, j - 1, j + 1))
    except KeyError:
        return None, "the merged operator does not produce the layer's output shape"
    why = _mac_refusal(opt, max_mac_ratio)
    return (None, why) if why else (opt, None)


def merge_info(cands: Candidates, opt: SegmentOption) -> dict:
    """The report's "merge" entry: kind, merged operator, MACs per sample before / after."""
    chain = cands.chains[opt.chain]
    g = opt.geom
    if g is None:
        merged = "identity" if not opt.scale else "2x scale"
    elif g.kind == "conv":
        merged = f"Conv {list(g.kernel)} {g.c_in}->{g.c_out} g{g.group}"
    else:
        merged = f"Gemm {g.c_in}->{g.c_out}"
    shape = chain.shapes[opt.st]
    n = max(int(shape[0]), 1) if len(shape) >= 2 else 1
    return {"kind": chain.kind, "merged": merged, "macs_before": int(opt.macs_original) // n, "macs_after": int(opt.macs) // n}


def _site_maps(cands: Candidates, decisions: Mapping[str, object] | None) -> None:
    """Each decided activation of the candidates as its forced affine map (MIXED channels: the
    dominant region), the naive linearization that `passes.linearize` writes."""
    for chain in cands.chains:
        for act in chain.acts:
            dec = None if act is None or act.site is None else (decisions or {}).get(act.y)
            if dec is None or dec.channels != (act.site.channels or dec.channels):
                continue
            try:
                cands.activation_maps[act.y] = dec.affine(act.site, force=True)
            except ValueError:
                continue


def site_plan(cands: Candidates, sites: Collection[str] | None, *, max_mac_ratio: float | None = None) -> tuple[list[SegmentOption], list[str]]:
    """Non-overlapping merge options removing the activations `sites` (None: every activation
    with a merge): consecutive sites of a chain share one segment (j1-1, jk+1] when it is a
    candidate, else every other one is taken. Returns (options, refusals)."""
    wanted = [s.name for s in find_activations(cands.graph)] if sites is None else list(sites)
    refused: list[str] = []
    per_chain: dict[int, list[int]] = {}
    for name in wanted:
        opt, why = site_option(cands, name, max_mac_ratio=max_mac_ratio)
        if opt is None:
            if sites is not None:
                refused.append(f"{name}: {why}")
            continue
        per_chain.setdefault(opt.chain, []).append(opt.st + 1)
    plan: list[SegmentOption] = []
    for cid, js in sorted(per_chain.items()):
        js = sorted(set(js))
        runs: list[list[int]] = []
        for j in js:
            if runs and j == runs[-1][-1] + 1:
                runs[-1].append(j)
            else:
                runs.append([j])
        for run in runs:
            try:
                whole = cands.option(_option_id(cid, run[0] - 1, run[-1] + 1))
            except KeyError:
                whole = None
            if whole is not None and _mac_refusal(whole, max_mac_ratio) is None:
                plan.append(whole)
                continue
            for j in run[::2]:
                plan.append(cands.option(_option_id(cid, j - 1, j + 1)))
            for j in run[1::2]:
                refused.append(f"{cands.chains[cid].acts[j].y}: overlaps the merge of the activation before it")
    return plan, refused


@dataclass
class SiteRefit:
    """graph: the candidates' graph with the plan applied; merges: option id -> merge_info;
    quality: option id -> (NMSE of the naive operator, of the refit one) on the calibration rows
    at the option's target (parallel fits only); refused: why requested sites were not merged."""

    graph: Graph
    plan: list[SegmentOption]
    merges: dict[str, dict] = field(default_factory=dict)
    quality: dict[str, tuple[float, float]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


def refit_sites(cands: Candidates, calibration, *, sites: Collection[str] | None = None,
                decisions: Mapping[str, object] | None = None, sequential: bool = True, fit: bool = True,
                ridge: float = 1e-3, max_mac_ratio: float | None = None, threads: int | None = None) -> SiteRefit:
    """Merge the layers around `sites` (default: every activation with a merge) and refit the
    merged operators on `calibration` (module docstring). decisions: {site: Decision}; a site's
    naive map is its forced affine map, without one the planner's data-free stand-in.
    sequential: several operators are refit one at a time, each on the input the model with the
    earlier ones applied gives it (planning.sequential_refit; its default ridge); otherwise all
    at once from the original network (ridge `ridge`). fit=False: naive merges only."""
    _site_maps(cands, decisions)
    plan, refused = site_plan(cands, sites, max_mac_ratio=max_mac_ratio)
    out = SiteRefit(cands.graph, plan, {o.id: merge_info(cands, o) for o in plan}, refused=refused)
    ops = {o.id: option_operator(cands, o) for o in plan}
    if plan and fit:
        reference = to_proto(cands.graph.copy(), check=False)
        cal = as_calibration(calibration, reference)
        if sequential and len(plan) > 1:
            ops = refit_sequential(cands, plan, ops, reference, cal, None, capped=False, threads=threads).operators
        else:
            ops, out.quality = fit_operators(cands, plan, reference, cal, max_rows=None, ridge=ridge, threads=threads)
    out.graph = cands.apply_graph(plan, ops, partial=True)
    return out


def estimate_fidelity(model, calibration, decisions: Mapping[str, object], *, evaluation=None,
                      sites: Collection[str] | None = None, cands: Candidates | None = None,
                      ridge: float = 1e-3, threads: int | None = None) -> dict[str, dict]:
    """{site: {"naive": cell, "refit": cell}} (analysis.activation_report.fidelity_cell) for every
    activation of `model` (or `sites`): each change alone, against the original model on
    `evaluation` (default: the calibration data itself, i.e. in-sample)."""
    graph = as_graph(model).copy()
    proto = to_proto(graph.copy(), check=False)
    cal = as_calibration(calibration, proto)
    ev = as_calibration(evaluation, proto) if evaluation is not None else cal
    cands = cands or site_candidates(graph, cal, threads=threads)
    names = [s.name for s in find_activations(graph)] if sites is None else list(sites)
    out: dict[str, dict] = {}
    for name in names:
        fid: dict = {}
        if name in decisions:
            g1 = graph.copy()
            if linearize(g1, decisions=decisions, force={name}).changed:
                fid["naive"] = fidelity_cell(evaluate(proto, to_proto(g1, check=False), ev, threads=threads))
        if site_option(cands, name)[0] is not None:
            r = refit_sites(cands, cal, sites=[name], decisions=decisions, ridge=ridge, threads=threads)
            if r.plan:
                fid["refit"] = fidelity_cell(evaluate(proto, to_proto(r.graph, check=False), ev, threads=threads))
        out[name] = fid
    return out


def annotate_report(rows: list[dict], model, calibration=None, *, decisions: Mapping[str, object] | None = None,
                    estimate: bool = False, evaluation=None, ridge: float = 1e-3,
                    threads: int | None = None) -> list[dict]:
    """Fill each activation_report row's "merge" (and with `estimate`, "fidelity") in place."""
    graph = as_graph(model)
    cal = None if calibration is None else as_calibration(calibration, to_proto(graph.copy(), check=False))
    try:
        cands = site_candidates(graph, cal, threads=threads)
    except InputError as e:  # symbolic dims without a value: no shapes to merge at
        for row in rows:
            row["merge"] = {"refused": f"no static shapes to plan merges at: {e}"}
            if estimate:
                row["fidelity"] = {}
        return rows
    for row in rows:
        opt, why = site_option(cands, row["site"])
        row["merge"] = {"refused": why} if opt is None else merge_info(cands, opt)
    if estimate and cal is not None:
        fids = estimate_fidelity(graph, cal, decisions or {}, evaluation=evaluation, sites=[r["site"] for r in rows],
                                 cands=cands, ridge=ridge, threads=threads)
        for row in rows:
            row["fidelity"] = fids.get(row["site"], {})
    return rows
