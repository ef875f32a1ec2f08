"""Importance of segment options: what each costs in fidelity, in units that add up.

With calibration data (measured)
--------------------------------
For every option the planner may want, its operator is built from the real weights
(`realize.option_operator`: activations inside removed, pruned layers dropped, residuals fused)
and, unless ``refit=False``, refit by least squares on the calibration data so that it maps the
segment's input to the ORIGINAL segment output (`kernels.lstsq.OperatorFit`; one streaming pass
over the original model feeds every option's normal equations, each reading the original input
of its segment: the "parallel" refit). Then the model with only that option applied is run on the
evaluation samples and compared with the original model's outputs
(`compare.Comparison`, the project's single comparator). Its importance is

    I(option) = log F(option),   F = exp(-NMSE)   i.e.   I = -NMSE(outputs),

the log of a fidelity in (0, 1]. With a fit/validation split (`analysis.calibration.split_fit_validation`)
the operators are fitted on the fit part only, their estimator (naive, scale+bias, ridge toward the
exact composition: `kernels.lstsq.select`) is chosen on the validation part, and the end-to-end
NMSE is measured on the validation part: no importance is measured on samples the refit saw. Small independent output errors add their NMSEs, so the DP's sum
of importances is the log-fidelity of the whole plan to first order (LayerMerge sums normalised
exp(dAcc); on a few hundred calibration samples top-1 agreement is too coarse to rank options,
NMSE is continuous). The top-1 agreement is recorded beside it.

Without data (a guess)
----------------------
The data-free TLC / LayerCollapse criteria (`analysis.criteria.decide` on the model as given,
BatchNorm statistics before they are folded, PReLU slopes): removing an activation costs the
fraction of its channels that are not shown linear, pruning a layer costs 2 (a whole layer's function is
lost, not only its nonlinear part). The caller warns that
the result is a guess.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import onnx

from ..analysis.activations import find_activations
from ..analysis.criteria import decide
from ..analysis.stats import stream_tensors, with_outputs
from ..compare import Comparison, Evaluation
from ..ir import Graph
from ..ir.exporter import to_proto
from ..kernels import ConvSpec
from ..kernels.lstsq import OperatorFit
from ..runtime import EVAL_OPTIMIZATION, RunSettings
from .realize import operator_blocker, option_input, option_operator, option_target, pruned_layers, removed_activations
from .segments import Candidates, SegmentOption

MAX_FIT_FEATURES = 1728   # larger regressions (e.g. a 3x3 conv over 192 channels) are merged naively
FIT_ROWS = 16384          # at most this many rows of the regression per option (random positions)
MIN_ROWS = 2048
ROWS_PER_FEATURE = 4


@dataclass
class OptionScore:
    option: str
    importance: float
    nmse: float | None = None
    top1_agreement: float | None = None
    fit_nmse_naive: float | None = None
    fit_nmse: float | None = None
    refit: bool = False
    source: str = "measured"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Importance:
    """Importance per option id (`of`), the operators to emit (`operators_for`) and, for the
    measured kind, which values are measured end to end (`is_measured`; the others are
    proxies until `measure` is called on them)."""

    scores: dict[str, OptionScore] = field(default_factory=dict)
    operators: dict[str, object] = field(default_factory=dict)  # option id -> operator to emit
    measured: bool = True
    cands: Candidates | None = None  # naive operators are built from it on demand
    # option id -> why its operator cannot be emitted (weights not finite in float32): never planned again
    refused: dict[str, str] = field(default_factory=dict)

    def of(self, opt: SegmentOption) -> float:
        if opt.kind == "keep":
            return 0.0
        return self.scores[opt.id].importance

    def is_measured(self, opt: SegmentOption) -> bool:
        return True

    def measure(self, options: Sequence[SegmentOption]) -> None:
        return None

    def operators_for(self, plan: Sequence[SegmentOption]) -> dict[str, object]:
        """The operators of the plan's non-keep options (naive ones built when missing)."""
        for o in plan:
            if o.kind != "keep" and o.id not in self.operators and self.cands is not None:
                self.operators[o.id] = option_operator(self.cands, o)
        self._refuse_unsafe(plan)
        return {o.id: self.operators[o.id] for o in plan if o.kind != "keep"}

    def _refuse_unsafe(self, plan: Sequence[SegmentOption]) -> None:
        """Options whose operator cannot be emitted lose their score (the DP no longer sees them)
        and are listed in `refused` with the reason."""
        for o in plan:
            if o.kind != "keep" and o.id in self.operators:
                why = operator_blocker(self.operators[o.id])
                if why:
                    self.refused[o.id] = why
                    self.scores.pop(o.id, None)


def fittable(op) -> bool:
    """Whether the operator is refit by least squares (a 2-D conv or dense layer with at most
    MAX_FIT_FEATURES unknowns per output; larger ones are merged naively)."""
    if isinstance(op, ConvSpec):
        d = op.weight.shape[1] * int(np.prod(op.kernel_shape))
        return d <= MAX_FIT_FEATURES and op.rank == 2
    if isinstance(op, tuple):
        return op[0].shape[0] <= MAX_FIT_FEATURES
    return False


def fit_operators(cands: Candidates, options: Sequence[SegmentOption], reference: onnx.ModelProto, cal, *,
                  validation=None, max_rows: int | None = FIT_ROWS, ridge: float = 1e-3, threads: int | None = None,
                  refit: bool = True, progress: bool = False) -> tuple[dict[str, object], dict[str, tuple[float, float]]]:
    """Naive operators of `options` and, where the regression is small enough, their least-squares
    state on `cal` (one streaming pass over `reference`, the graph of `cands` before any plan:
    same tensor names). With `validation` (held-out samples, never fitted on) the estimator is
    chosen on it (`kernels.lstsq.select`: naive, scale+bias, ridge toward the exact composition)
    and the NMSEs returned are validation NMSEs; without it a fixed ridge toward the naive
    operator. Returns (operators: refit ones when `refit`, {option id: (segment-output NMSE of
    the naive operator, of the refit one)})."""
    from tqdm import tqdm  # optional progress bars

    ops: dict[str, object] = {}
    fits: dict[str, OperatorFit] = {}
    for o in options:
        op = option_operator(cands, o)
        ops[o.id] = op
        if fittable(op):
            fits[o.id] = OperatorFit(op, max_rows=None)
            if max_rows is not None:
                # about ROWS_PER_FEATURE rows per unknown (at least MIN_ROWS, at most max_rows) in all
                rows = min(max_rows, max(MIN_ROWS, ROWS_PER_FEATURE * fits[o.id].features))
                fits[o.id].max_rows = max(1, rows // max(len(cal), 1)) * (cal.fixed_batch or 1)
    quality: dict[str, tuple[float, float]] = {}
    if not fits:
        return ops, quality
    by_id = {o.id: o for o in options}
    tensors = sorted({option_input(cands, by_id[k]) for k in fits} | {option_target(cands, by_id[k]) for k in fits})
    model = with_outputs(reference, tensors)
    parts = [(cal, "add")] + ([(validation, "add_validation")] if validation is not None else [])
    total = sum(len(c) for c, _ in parts)
    bar = tqdm(total=total, desc=f"fit {len(fits)} ops", unit="sample", disable=not progress, leave=False)
    try:
        for data, method in parts:
            for nb, (out,) in stream_tensors([(model, tensors)], data, threads=threads):
                for k, f in fits.items():
                    o = by_id[k]
                    getattr(f, method)(out[option_input(cands, o)], out[option_target(cands, o)])
                bar.update(nb)
    finally:
        bar.close()
    for k, f in fits.items():
        try:
            if validation is not None:
                op, sel = f.solve_selected(default_ridge=ridge)
                n0, n1 = sel.val_nmse["naive"], sel.val_nmse[sel.choice]
            else:
                op, n0, n1 = f.solve(ridge)
        except (ValueError, np.linalg.LinAlgError):
            continue
        if refit and operator_blocker(op) is None:  # a refit that leaves float32's range keeps the naive operator
            ops[k] = op
        quality[k] = (float(n0), float(n1))
    return ops, quality


class MeasuredImportance(Importance):
    """Importance measured on calibration data, lazily.

    Every option gets a cheap *local* error first: the NMSE of its (refit) operator at the
    segment output, from the normal equations of one streaming pass. Its importance is a proxy,
    -kappa * local, with kappa the median ratio (end-to-end NMSE / local NMSE) seen among
    measured options (0 before any: optimistic), until the planner asks for the options of a
    plan it wants (`measure`): those are applied one at a time to the model and evaluated end to
    end. Local and end-to-end values are cached in the latency database's fidelity table under
    (model, data) keys, so a second run on the same model and data measures nothing."""

    def __init__(self, cands: Candidates, options: Sequence[SegmentOption], reference: onnx.ModelProto, cal, *,
                 refit: bool = True, eval_samples: int = 32, threads: int | None = None, progress: bool = False,
                 store=None, evaluate=None, validation=None) -> None:
        super().__init__(measured=True)
        self.evaluate = evaluate  # None: run candidates here; else EvalSet.compare_many's runner (e.g. a Dask cluster)
        self.cands, self.reference, self.cal, self.validation = cands, reference, cal, validation
        self.refit, self.threads, self.progress = refit, threads, progress
        self.options = {o.id: o for o in options}
        self.store = store
        self.model_key = _digest(reference.SerializeToString())
        val_bytes = [] if validation is None else [b"val"] + [a.tobytes() for _, a in sorted(validation.arrays().items())]
        self.data_key = _digest(*(a.tobytes() for _, a in sorted(cal.arrays().items())), *val_bytes,
                                f"refit={refit};eval={eval_samples};rows={FIT_ROWS},{MIN_ROWS},{ROWS_PER_FEATURE};"
                                f"select=v2".encode())
        cached = store.get_fidelity(self.model_key, self.data_key) if store is not None else {}
        self.local: dict[str, float | None] = {}
        self.global_: dict[str, dict] = {}
        for k, v in cached.items():
            if k in self.options:
                if "local" in v:
                    self.local[k] = v["local"]
                if "nmse" in v:
                    self.global_[k] = v
        self.cached = len(self.global_)
        todo = [o for o in options if o.id not in self.local]
        if todo:
            ops, quality = fit_operators(cands, todo, reference, cal, validation=validation, refit=refit,
                                         threads=threads, progress=progress)
            self.operators.update(ops)
            self._refuse_unsafe(todo)
            new = {}
            for o in todo:
                q = quality.get(o.id)
                self.local[o.id] = None if q is None else (q[1] if refit else q[0])
                new[o.id] = {}
            self._save(new)
        # importance is measured on the held-out part when there is one (never on fitted samples)
        ev = validation if validation is not None else cal
        self._eval = EvalSet(reference, ev, max(eval_samples, min(len(ev), 64)) if validation is not None else eval_samples,
                             threads)
        self.evaluated = 0
        self._rescore()

    def _save(self, values: dict[str, dict]) -> None:
        if self.store is not None and values:
            self.store.put_fidelity(self.model_key, self.data_key,
                                    {k: {"local": self.local.get(k), **self.global_.get(k, {})} for k in values})

    def _rescore(self) -> None:
        ratios = [g["nmse"] / self.local[k] for k, g in self.global_.items()
                  if self.local.get(k) not in (None, 0.0) and g["nmse"] > 0]
        # the median ratio once a few options are measured (the minimum would be optimistic but
        # makes the planner measure far more options); 0 (optimistic) before any
        kappa = float(np.median(ratios)) if len(ratios) >= 3 else (min(ratios) if ratios else 0.0)
        self.scores = {}
        for k in self.options:
            if k in self.refused:
                continue
            g = self.global_.get(k)
            loc = self.local.get(k)
            if g is not None:
                self.scores[k] = OptionScore(k, -float(g["nmse"]), float(g["nmse"]), g.get("top1"), None, loc,
                                             self.refit, "measured")
            else:
                self.scores[k] = OptionScore(k, -kappa * (loc or 0.0), None, None, None, loc, self.refit, "proxy")

    def is_measured(self, opt: SegmentOption) -> bool:
        return opt.kind == "keep" or opt.id in self.global_

    def operators_for(self, plan: Sequence[SegmentOption]) -> dict[str, object]:
        need = [o for o in plan if o.kind != "keep" and o.id not in self.operators]
        if need:
            ops, _ = fit_operators(self.cands, need, self.reference, self.cal, validation=self.validation,
                                   refit=self.refit, threads=self.threads, progress=self.progress)
            self.operators.update(ops)
        self._refuse_unsafe(plan)
        return {o.id: self.operators[o.id] for o in plan if o.kind != "keep"}

    def measure(self, options: Sequence[SegmentOption]) -> None:
        from tqdm import tqdm

        todo = [o for o in options if not self.is_measured(o)]
        if not todo:
            return
        ops = self.operators_for(todo)
        todo = [o for o in todo if o.id not in self.refused]
        graphs = (self.cands.apply_graph([o], {o.id: ops[o.id]}, partial=True) for o in todo)
        comps = (map(self._eval.compare, graphs) if self.evaluate is None
                 else self._eval.compare_many(graphs, self.evaluate))
        for o, comp in zip(todo, tqdm(comps, total=len(todo), desc="importance", unit="option",
                                      disable=not self.progress, leave=False)):
            self.global_[o.id] = {"nmse": float(comp.nmse), "top1": comp.top1_agreement}
            self.evaluated += 1
        self._save({o.id: {} for o in todo})
        self._rescore()


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:32]


class EvalSet:
    """The first `n` samples of a calibration set with a reference model's outputs on them
    (computed once, on first use): `compare(graph)` runs a candidate on the same feeds through
    the one evaluation loop (`compare.Evaluation`, onnxruntime at EVAL_OPTIMIZATION with
    `threads` intra-op threads) and returns the project's Comparison against those outputs."""

    def __init__(self, reference: onnx.ModelProto, cal, n: int, threads: int | None = None) -> None:
        fb = cal.fixed_batch or 1
        take = min(len(cal), max(fb, (n // fb) * fb))
        self.feeds = list((cal.subset(0, take) if take < len(cal) else cal).batches())
        self.reference, self.threads = reference, threads
        self.settings = RunSettings(EVAL_OPTIMIZATION, threads)
        self._eval: Evaluation | None = None
        self._ref_out: list[dict] | None = None
        self._names: list[str] = []

    def _reference(self) -> list[dict]:
        if self._ref_out is None:
            self._eval = Evaluation(self.reference, settings=self.settings)
            self._names = self._eval.names
            self._ref_out = self._eval.reference_outputs(self.feeds)
        return self._ref_out

    def _comparison(self, outs: Iterable[dict]) -> Comparison:
        comp = Comparison()
        for r, o in zip(self._reference(), outs):
            comp.add(r, o)
        return comp

    def compare(self, graph: Graph) -> Comparison:
        ref = self._reference()
        return self._eval.compare(to_proto(graph, check=False), self.feeds, reference_outputs=ref)

    def compare_many(self, graphs: Iterable[Graph], evaluate) -> Iterable[Comparison]:
        """`compare` for several candidates, run by `evaluate(models, feeds, names, threads)`,
        which yields each model's outputs on the feeds in order (cluster.evaluation.RemoteEvaluator
        runs them on a Dask cluster at the same EVAL_OPTIMIZATION); the comparison is made here."""
        self._reference()
        for outs in evaluate((to_proto(g, check=False) for g in graphs), self.feeds, self._names, self.threads):
            yield self._comparison(outs)


def datafree_importance(cands: Candidates, options: Iterable[SegmentOption], original_graph: Graph, *,
                        prune_cost: float = 2.0) -> Importance:
    """Data-free guess (see the module docstring). original_graph: the model as loaded, before
    BatchNorm folding (its activation node names match the candidates' by name)."""
    sites = {}
    for s in find_activations(original_graph):
        for n in s.nodes:
            if n.name:
                sites[n.name] = s
    cache: dict[str, float] = {}

    def act_cost(node) -> float:
        if node.name in cache:
            return cache[node.name]
        cost = 1.0
        site = sites.get(node.name)
        if site is not None:
            try:
                dec = decide(original_graph, site, prefer=("tlc", "layercollapse"))
                if dec is not None and dec.channels:
                    cost = 1.0 - dec.linear_channels / dec.channels
            except (ValueError, KeyError, TypeError):
                cost = 1.0
        cache[node.name] = float(cost)
        return cache[node.name]

    imp = Importance(measured=False, cands=cands)
    for o in options:
        if o.kind == "keep":
            continue
        cost = sum(act_cost(a) for a in removed_activations(cands, o)) + prune_cost * len(pruned_layers(cands, o))
        # a tiny cost per removed boundary keeps equal-cost choices stable (prefer fewer changes)
        cost += 1e-6 * (o.end - o.st)
        imp.scores[o.id] = OptionScore(o.id, -cost, source="data-free")
    return imp


__all__ = ["EvalSet", "Importance", "fittable", "MeasuredImportance", "OptionScore", "datafree_importance", "fit_operators"]
