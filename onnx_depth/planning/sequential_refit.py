"""Sequential, error-propagating refit of a chosen plan (GPTQ / block-reconstruction style).

The importance pass fits every option in *parallel*: each operator maps the ORIGINAL network's
segment input to the original segment output. Once a plan is chosen, its changed operators are
refit again one at a time in topological order, each from the input it will really see:

    for option k in topological order:
        x_k = input of option k in the model with options 1..k-1 applied (already refit)
        y_k = output of the ORIGINAL model at option k's target tensor
        W_k = kernels.lstsq.select(fit rows of (x_k, y_k), validation rows, W0_k)

so later operators compensate the errors of earlier ones instead of compounding them. Rows: every
spatial position of the fit samples, streamed into the normal equations (memory: one batch), up
to a cost cap: R rows of d unknowns cost R d^2 flops, so at most max(ROWS_PER_UNKNOWN d,
FLOPS / d^2) rows are kept (random positions) for wide operators; the estimator (naive, scale+bias, ridge toward the exact composition) is chosen on the
validation samples, which are never fitted on. A dropped block (identity operator) gets a
PRACTISE-style 1x1 adaptor (planning.adaptor) fitted the same way, kept only where an estimator
other than the bare identity wins on the validation rows (`adaptors`, default ADAPTORS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import onnx

from ..analysis.stats import stream_tensors
from ..ir.exporter import to_proto
from ..kernels.lstsq import OperatorFit
from .adaptor import identity_adaptor
from .importance import fittable
from .realize import option_input, option_operator, option_target
from .segments import Candidates, SegmentOption

__all__ = ["SequentialFit", "only_outputs", "refit_sequential"]

ADAPTORS = True  # fit adaptors where a block is dropped (the benchmark's "new - adaptor" switches it off)
ROWS_PER_UNKNOWN = 16
FLOPS = 5e9  # per operator and data pass


def row_cap(features: int, samples: int, fixed_batch: int = 1) -> int:
    """Rows kept per batch (of `fixed_batch` samples) so that an operator costs about FLOPS."""
    total = max(ROWS_PER_UNKNOWN * features, int(FLOPS / max(features, 1) ** 2))
    return max(1, total // max(samples, 1)) * fixed_batch


@dataclass
class SequentialFit:
    operators: dict[str, object]
    choices: dict[str, str] = field(default_factory=dict)  # option id -> estimator chosen
    val_nmse: dict[str, float] = field(default_factory=dict)  # option id -> its segment-output validation NMSE


def only_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose outputs are `tensors` and whose nodes are only those they need."""
    want = set(tensors)
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    keep, stack = set(), [t for t in want if t in producer]
    while stack:
        i = producer[stack.pop()]
        if i in keep:
            continue
        keep.add(i)
        stack.extend(t for t in model.graph.node[i].input if t in producer)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = [n for i, n in enumerate(model.graph.node) if i in keep]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    return m


def _order(cands: Candidates, reference: onnx.ModelProto, plan: Sequence[SegmentOption]) -> list[SegmentOption]:
    pos = {o: i for i, n in enumerate(reference.graph.node) for o in n.output}
    return sorted(plan, key=lambda o: pos.get(option_input(cands, o), -1))


def refit_sequential(cands: Candidates, plan: Sequence[SegmentOption], operators: dict[str, object],
                     reference: onnx.ModelProto, fit, validation=None, *, capped: bool = True,
                     threads: int | None = None, adaptors: bool | None = None, memo: dict | None = None) -> SequentialFit:
    """Operators for the plan's changed options, refit in topological order (module docstring).
    `operators`: the parallel-refit (or naive) ones, kept where an option is not refittable.
    `reference`: the lossless graph before the plan (same tensor names as `cands.graph`).
    `memo` (a dict the caller keeps across calls with the same cands, operators, reference, data
    and settings): option k's fit depends only on options 1..k-1 in topological order, so it is
    stored under (those options' ids, k's id) and reused by every later plan that shares that
    prefix; re-planning compares plans that differ by one option, whose upstream fits repeat."""
    changed = [o for o in plan if o.kind != "keep"]
    out = SequentialFit(dict(operators))
    applied: list[SegmentOption] = []
    adaptors = ADAPTORS if adaptors is None else adaptors
    for o in _order(cands, reference, changed):
        key = (tuple(a.id for a in applied), o.id)
        if memo is not None and key in memo:
            if memo[key] is not None:
                out.operators[o.id], out.choices[o.id], v = memo[key]
                if v is not None:
                    out.val_nmse[o.id] = v
            applied.append(o)
            continue
        if memo is not None:
            memo[key] = None  # unless a fit below replaces it: the given operator stays
        naive = option_operator(cands, o)
        adaptor = identity_adaptor(cands, o, naive) if adaptors and validation is not None else None
        if adaptor is not None:
            naive = adaptor
        if not fittable(naive):
            applied.append(o)
            continue
        x, y = option_input(cands, o), option_target(cands, o)
        current = to_proto(cands.apply_graph(applied, out.operators, partial=True), check=False)
        models = [(only_outputs(current, [x]), [x]), (only_outputs(reference, [y]), [y])]
        f = OperatorFit(naive)
        if capped:
            f.max_rows = row_cap(f.features, len(fit), fit.fixed_batch or 1)
        try:
            for data, add in ((fit, f.add), (validation, f.add_validation)):
                if data is None:
                    continue
                for _, (oc, orf) in stream_tensors(models, data, threads=threads):
                    add(oc[x], orf[y])
            op, sel = f.solve_selected()
        except (ValueError, KeyError):
            applied.append(o)  # keep the parallel operator
            continue
        if adaptor is not None and sel.choice == "naive":
            applied.append(o)  # the bare identity wins on validation: no adaptor
            continue
        out.operators[o.id] = op
        out.choices[o.id] = ("adaptor " if adaptor is not None else "") + sel.choice
        if sel.val_nmse:
            out.val_nmse[o.id] = sel.val_nmse[sel.choice]
        if memo is not None:
            memo[key] = (op, out.choices[o.id], out.val_nmse.get(o.id))
        applied.append(o)
    return out
