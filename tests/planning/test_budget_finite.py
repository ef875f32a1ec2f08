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


def test_budget_refuses_an_option_whose_weights_overflow(tmp_path):
    """Gemm 1e20-scaled -> Relu -> Gemm 1e19-scaled: the layers are finite, their product is
    inf in float32. Budget mode must keep the layers (and say why), not write inf."""
    m = _chain("Gemm", scales=(1e20, 1e19, 1e-20, 1e-19))
    r = optimize(m, latency_budget=0.3, allow_over_budget=True, threads=1, latency_db=str(tmp_path / "db.sqlite"))
    assert _weights_finite(r.model)
    notes = " ".join(r.report.notes + [w["message"] for w in r.report.warnings])  # warnings: the report's own list
    assert "float32" in notes and "not applied" in notes, r.report.notes
    x = (np.random.default_rng(2).standard_normal((2, 64)) * 1e-30).astype(np.float32)
    ref, new = _run(m, x), _run(r.model, x)
    assert np.all(np.isfinite(ref)) and np.all(np.isfinite(new))
