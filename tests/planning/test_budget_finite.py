"""Issue 13 item 1: budget mode never writes a non-finite weight.

* A bias-free dense chain merged by the planner (no calibration) got a NaN scalar bias
  (np.asarray(None, float32)), so every output was NaN.
* Guard: an option whose merged weights are not finite in float32 (or outside its safe range)
  is refused with the reason and its layers are kept."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_depth import runtime
from onnx_depth.api import optimize


def _chain(op: str, scales=(0.2, 0.2, 0.2, 0.2), dims=(64, 16, 64, 16, 64), seed=0) -> onnx.ModelProto:
    """x [2, 64] -> op W0 -> Relu -> op W1 -> Relu -> op W2 -> Relu -> op W3, no biases."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(len(dims) - 1):
        W = (np.abs(rng.standard_normal((dims[i], dims[i + 1]))) + 0.5) * scales[i]
        if i % 2 == 0:
            W *= np.sign(rng.standard_normal(W.shape))
        inits.append(numpy_helper.from_array(W.astype(np.float32), f"W{i}"))
        nodes.append(helper.make_node(op, [x, f"W{i}"], [f"h{i}"], name=f"{op.lower()}{i}"))
        x = f"h{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, dims[0]])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [2, dims[-1]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _weights_finite(model: onnx.ModelProto) -> bool:
    return all(np.all(np.isfinite(numpy_helper.to_array(t))) for t in model.graph.initializer
               if t.data_type == TensorProto.FLOAT)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return next(iter(runtime.run(runtime.make_session(model), {"x": x}).values()))


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_budget_on_bias_free_chain_writes_no_nan(op, tmp_path):
    m = _chain(op)
    r = optimize(m, latency_budget=0.5, allow_over_budget=True, threads=1, latency_db=str(tmp_path / "db.sqlite"))
    changed = [o for o in r.plan["segments"]] if r.plan else []
    assert changed, "the planner merged nothing: the test does not exercise the merged operator"
    assert _weights_finite(r.model)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    assert np.all(np.isfinite(_run(r.model, x)))


def _pinned_latency(cands, cheap: str) -> "LatencyModel":
    """A latency model with a known answer: every kept layer costs 1 ms, the option `cheap`
    0.1 ms and every other merge 10 ms, so the DP's plan at a budget of 0.6 is `cheap`."""
    from onnx_depth.planning.latency_model import LatencyModel

    lat = {o.id: 1.0 if o.kind == "keep" else (0.1 if o.id.startswith(cheap) else 10.0) for o in cands.options}
    cut = {ci: 0.0 for ci in cands.cuts()}  # boundaries cost nothing: the segment sums are the model
    return LatencyModel(cands, lat, whole_ms=sum(lat[o.id] for o in cands.original_plan()), cut=cut)


def test_budget_refuses_an_option_whose_weights_overflow(tmp_path):
    """Gemm 1e20-scaled -> Relu -> Gemm 1e19-scaled: the layers are finite, their product is
    inf in float32. Budget mode must keep the layers (and say why), not write inf.

    The plan is pinned (the merge of the first two layers is the only fast option), so the test
    does not depend on which plan measured latencies on a loaded machine would pick."""
    from onnx_depth import ir
    from onnx_depth.passes import LOSSLESS, PassContext, run_to_fixed_point
    from onnx_depth.planning.budget_search import plan_for_budget
    from onnx_depth.planning.measurement import Measurement
    from onnx_depth.planning.segments import candidates

    m = _chain("Gemm", scales=(1e20, 1e19, 1e-20, 1e-19))
    g = ir.load(m)
    og = g.copy()
    run_to_fixed_point(g, LOSSLESS, PassContext(lossless=True))
    cands = candidates(g)
    overflowing = [o.id for o in cands.options if o.kind != "keep" and o.st == 0 and o.end == 2]
    assert overflowing, [o.id for o in cands.options]
    lm = _pinned_latency(cands, overflowing[0])
    out = plan_for_budget(cands, lm, m, budget=0.6, original_graph=og, allow_over_budget=True,
                          measure=lambda model, threshold: Measurement.from_rounds([1.0] * 21, [0.5] * 21))
    notes = " ".join(w["message"] for w in out.warnings)
    assert "float32" in notes and "not applied" in notes and overflowing[0] in notes, notes
    assert overflowing[0] not in [o.id for o in out.plan]
    emitted = ir.to_proto(out.graph)
    assert _weights_finite(emitted)
    x = (np.random.default_rng(2).standard_normal((2, 64)) * 1e-30).astype(np.float32)
    ref, new = _run(m, x), _run(emitted, x)
    assert np.all(np.isfinite(ref)) and np.all(np.isfinite(new))


def test_budget_end_to_end_never_writes_inf(tmp_path):
    """The same chain through optimize() with measured latencies: whatever plan they pick, the
    emitted weights are finite and the outputs too."""
    m = _chain("Gemm", scales=(1e20, 1e19, 1e-20, 1e-19))
    r = optimize(m, latency_budget=0.3, allow_over_budget=True, threads=1, latency_db=str(tmp_path / "db.sqlite"))
    assert _weights_finite(r.model)
    x = (np.random.default_rng(2).standard_normal((2, 64)) * 1e-30).astype(np.float32)
    assert np.all(np.isfinite(_run(r.model, x)))


def test_a_first_plan_measured_just_over_budget_steps_down_not_to_the_fastest_plan():
    """The first plan measured a hair over the budget (machine noise); the tightened internal
    budget re-solves to the same plan. The search used to jump to the fastest plan then (on
    EfficientNet-Lite0: 9 prunes, ratio 0.17, top-1 agreement 0, exit 0). It must step down to
    the next plan instead, which meets the budget with far fewer changes.

    A 6-Gemm chain; every layer and every merge costs 1 ms (pinned), so a plan's predicted ratio
    is its Gemm count / 6, and the fake measurement says so too, except for the first plan."""
    from onnx_depth import ir
    from onnx_depth.passes import LOSSLESS, PassContext, run_to_fixed_point
    from onnx_depth.planning.budget_search import plan_for_budget
    from onnx_depth.planning.latency_model import LatencyModel
    from onnx_depth.planning.measurement import Measurement
    from onnx_depth.planning.segments import candidates

    m = _chain("Gemm", scales=(0.2,) * 6, dims=(64, 16, 64, 16, 64, 16, 64))
    g = ir.load(m)
    og = g.copy()
    run_to_fixed_point(g, LOSSLESS, PassContext(lossless=True))
    cands = candidates(g)
    lat = {o.id: 1.0 for o in cands.options}
    lm = LatencyModel(cands, lat, whole_ms=6.0, cut={ci: 0.0 for ci in cands.cuts()})
    seen: list[float] = []

    def measure(model, threshold):
        r = sum(n.op_type == "Gemm" for n in model.graph.node) / 6.0
        if not seen:
            r = 0.905  # the first plan (5 Gemms, 0.833 predicted) measured just over the budget 0.9
        seen.append(r)
        return Measurement.from_rounds([1.0] * 21, [r] * 21)

    out = plan_for_budget(cands, lm, m, budget=0.9, original_graph=og, measure=measure)
    assert len(seen) >= 2 and seen[0] == 0.905
    assert out.measured_ratio is not None and out.measured_ratio <= 0.9
    n_gemm = sum(n.op_type == "Gemm" for n in ir.to_proto(out.graph).graph.node)
    assert n_gemm == 4, (n_gemm, seen, [o.id for o in out.plan])  # the next plan down, not 1 Gemm (the fastest)
