"""The one evaluation loop (compare.Evaluation over runtime.stream): streaming, one onnxruntime
setting for every measurement (--check, fidelity, importance, statistics, the cluster job),
reference outputs reused, failures attributed to the model that failed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_depth import compare, runtime, shapes
from onnx_depth.analysis.calibration import from_arrays
from onnx_depth.analysis.fidelity import evaluate
from onnx_depth.analysis.stats import collect_stats
from onnx_depth.ir import load
from onnx_depth.planning.importance import EvalSet


def _dense(scale: float = 1.0, batch="N", out_dim: int = 5) -> onnx.ModelProto:
    """y = relu(x @ W * scale), x: [batch, 4]."""
    w = np.arange(4 * out_dim, dtype=np.float32).reshape(4, out_dim) / 10 - 0.7
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out_dim])],
        [numpy_helper.from_array(w * np.float32(scale), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _feeds(n: int, rows: int = 3, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((rows, 4)).astype(np.float32)} for _ in range(n)]


def test_loop_matches_direct_runs_and_streams():
    ref, cand = _dense(), _dense(1.01)
    feeds = _feeds(5)
    live = []

    def gen():
        for f in feeds:
            live.append(f)
            yield f
    ev = compare.Evaluation(ref)
    c = compare.Comparison()
    for k, (feed, r, n) in enumerate(ev.pairs(cand, gen())):
        assert len(live) == k + 1  # one feed consumed per step: nothing read ahead
        c.add(r, n)
    want = compare.Comparison()
    s_ref, s_new = runtime.make_session(ref), runtime.make_session(cand)
    for f in feeds:
        want.add(runtime.run(s_ref, f), runtime.run(s_new, f))
    assert c.to_dict() == want.to_dict() and c.runs == 5 and c.nmse > 0
    assert compare.compare_models(ref, cand, feeds).to_dict() == want.to_dict()


def test_reference_outputs_reused_give_the_same_comparison():
    ref, cand = _dense(), _dense(0.9)
    feeds = _feeds(4, seed=1)
    ev = compare.Evaluation(ref)
    cached = ev.reference_outputs(feeds)
    assert ev.compare(cand, feeds, reference_outputs=cached).to_dict() == ev.compare(cand, feeds).to_dict()
    with pytest.raises(ValueError, match="reference outputs"):
        ev.compare(cand, feeds[:2], reference_outputs=cached)


def test_failure_names_the_model_that_failed():
    ref, narrow = _dense(), _dense(batch=2)  # the candidate only runs at batch 2
    ev = compare.Evaluation(ref)
    with pytest.raises(runtime.RunFailed) as e:
        ev.compare(narrow, _feeds(2, rows=3))
    assert e.value.model == 1 and e.value.feed == 0
    with pytest.raises(runtime.RunFailed) as e:
        compare.Evaluation(narrow).compare(ref, _feeds(2, rows=3))
    assert e.value.model == 0
    # --check's shape loop: the candidate failing is a mismatch that says where
    c = compare.compare_at_shapes(ref, narrow, [shapes.resolve(ref, ["3,4"])], n_random=1)
    assert not c.allclose and c.runs == 1 and c.failed_at.startswith("x:3x4: ")


def test_settings_validate_the_level():
    with pytest.raises(ValueError, match="unknown optimization level"):
        runtime.RunSettings("fast")
    s = runtime.RunSettings(threads=1).session(_dense())
    assert s.get_session_options().graph_optimization_level == runtime.OPT_LEVELS[runtime.EVAL_OPTIMIZATION]
    assert s.get_session_options().intra_op_num_threads == 1


def test_every_measurement_runs_at_one_level(monkeypatch):
    """--check, the reported fidelity, the planner's importance, activation statistics and the
    cluster's evaluation job all create their sessions at EVAL_OPTIMIZATION."""
    levels: list[tuple[str, object]] = []
    real = runtime.make_session

    def spy(model, **kw):
        levels.append((kw.get("optimization"), kw.get("threads")))
        return real(model, **kw)
    monkeypatch.setattr(runtime, "make_session", spy)
    ref, cand = _dense(), _dense(1.1)
    x = np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)
    compare.compare_at_shapes(ref, cand, [shapes.resolve(ref, ["2,4"])], n_random=1)
    evaluate(ref, cand, x, threads=1)
    ev = EvalSet(ref, from_arrays(x, ref), 4, threads=1)
    ev.compare(load(cand))
    collect_stats(ref, x, threads=1)
    pytest.importorskip("distributed")
    from onnx_depth.cluster.evaluation import outputs_job

    _, outs = outputs_job(cand.SerializeToString(), [{"x": x[:2]}], ["y"], 1)
    assert outs[0]["y"].shape == (2, 5)
    assert len(levels) >= 8
    assert {lv for lv, _ in levels} == {runtime.EVAL_OPTIMIZATION}
    assert {t for _, t in levels[2:]} == {1}  # the thread count asked for is the one used
