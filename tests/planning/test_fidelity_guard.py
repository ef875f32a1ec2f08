"""Issue 17: the fit/validation split (the validation part never enters a fit), the fidelity guard
(a destroyed model warns under -q, fidelity_ok false; unknown without data) and the combined
objective --latency-budget + --max-error (exit 3 when no plan fits both)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from onnx_depth import api, ir, zoo
from onnx_depth.analysis.calibration import from_arrays, split_fit_validation
from onnx_depth.cli import main
from onnx_depth.kernels import lstsq
from onnx_depth.planning.fidelity_guard import FidelityWarning, judge

N_CAL = 64


@pytest.fixture(scope="module")
def ffn(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("ffn_guard")
    m = zoo.build("ffn_stack", seq=32, d_model=32, d_ff=1024, blocks=2, act="prelu", prelu_slope=0.25)
    ir.save(m, d / "m.onnx")
    x = np.random.default_rng(0).standard_normal((N_CAL, 32, 32)).astype(np.float32)
    split = split_fit_validation(from_arrays(x, m))
    assert split.held_out
    # mark the samples the split holds back (same seed, same blocks as api.optimize's split)
    val_rows = [a for a, b in split.validation.sources["input"].runs for a in range(a, b)]
    # a held-out sample is one row repeated over the sequence: the model works per position, so any
    # tensor computed from it has identical rows, which no fit sample (random rows) has
    x[val_rows] = x[val_rows, :1, :]
    np.savez(d / "cal.npz", input=x)
    return {"dir": d, "model": d / "m.onnx", "cal": d / "cal.npz", "db": d / "db.sqlite", "val_rows": val_rows}


def test_split_is_seeded_disjoint_blocks_with_a_minimum():
    m = zoo.build("ffn_stack", seq=4, d_model=8, d_ff=16, blocks=1)
    x = np.arange(128 * 4 * 8, dtype=np.float32).reshape(128, 4, 8)
    s = split_fit_validation(from_arrays(x, m), seed=3)
    fit, val = s.fit.arrays()["input"][:, 0, 0], s.validation.arrays()["input"][:, 0, 0]
    assert len(fit) + len(val) == 128 and not set(fit) & set(val) and len(val) == 32
    assert s.to_dict() == split_fit_validation(from_arrays(x, m), seed=3).to_dict()  # seeded
    small = split_fit_validation(from_arrays(x[:20], m))
    assert not small.held_out and len(small.validation) == 20  # < 16 + 16: nothing held back, and said so


def test_validation_never_enters_the_fit(ffn, monkeypatch):
    seen: dict[str, list[float]] = {"normal": [], "val": []}
    orig = lstsq.OperatorFit._add

    def spy(self, which, x, y):
        seen[which].append(float(np.ptp(x.reshape(-1, x.shape[-2], x.shape[-1]), axis=1).max()))
        return orig(self, which, x, y)

    monkeypatch.setattr(lstsq.OperatorFit, "_add", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FidelityWarning)
        res = api.optimize(str(ffn["model"]), latency_budget=0.5, calibration=str(ffn["cal"]), latency_db=str(ffn["db"]))
    assert seen["normal"] and seen["val"]
    # marked (validation) samples reached the estimator choice, but never a fit
    assert min(seen["normal"]) > 1e-3 and max(seen["val"]) < 1e-4
    r = res.report
    assert r.validation["held_out"] and r.fidelity.samples == len(ffn["val_rows"])
    assert r.fidelity_fit.samples == N_CAL - len(ffn["val_rows"])
    assert r.fidelity.nmse != r.fidelity_fit.nmse


def _opt(ffn, tmp: Path, *extra: str) -> int:
    return main(["-q", "optimize", str(ffn["model"]), str(tmp / "o.onnx"), "--latency-db", str(ffn["db"]),
                 "--report", str(tmp / "r.json"), *extra])


def test_destroyed_model_warns_under_quiet_and_report_says_not_ok(ffn, tmp_path, capsys):
    # naive merging (no refit) of PReLU-0.25 blocks at a budget that needs every merge
    rc = _opt(ffn, tmp_path, "--latency-budget", "0.5", "--calibration", str(ffn["cal"]), "--no-refit")
    err = capsys.readouterr().err
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["fidelity_ok"] is False and r["fidelity_guard"]["metric"] in ("top1", "nmse")
    assert "fidelity below the floor" in err


def test_no_data_means_fidelity_unknown_under_quiet(ffn, tmp_path, capsys):
    rc = _opt(ffn, tmp_path, "--latency-budget", "0.5")
    err = capsys.readouterr().err
    assert rc == 0 and "UNKNOWN" in err
    assert json.loads((tmp_path / "r.json").read_text())["fidelity_ok"] is None
    with pytest.warns(FidelityWarning, match="UNKNOWN"):
        api.optimize(str(ffn["model"]), latency_budget=0.5, latency_db=str(ffn["db"]))


def test_combined_objective_exit_3_when_no_plan_fits_both(ffn, tmp_path, capsys):
    rc = _opt(ffn, tmp_path, "--latency-budget", "0.5", "--max-error", "1e-9", "--calibration", str(ffn["cal"]))
    assert rc == 3 and "max-error" in capsys.readouterr().err


def test_judge_floors():
    class C:
        def __init__(self, top1, nmse):
            self.top1_agreement, self.nmse = top1, nmse

    assert judge(C(0.95, 0.3)).ok and not judge(C(0.5, 0.001)).ok  # classifier: top-1 floor
    assert judge(C(None, 0.01)).ok and not judge(C(None, 0.2)).ok  # otherwise: NMSE floor
    assert judge(None).ok is None


def test_guard_judges_non_classifiers_by_nmse():
    """A hidden state [B, T, C] gets a top-1 agreement from the comparator (argmax over C), which
    means nothing there: the guard judges such models by NMSE, classifiers by top-1."""
    import onnx
    from onnx import TensorProto, helper

    from onnx_depth.compare import Comparison
    from onnx_depth.planning.fidelity_guard import looks_like_classifier

    def model(shape):
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
        return helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [out]))

    assert looks_like_classifier(model(["N", 10])) and not looks_like_classifier(model(["B", "T", 384]))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 16, 8)).astype(np.float32)
    comp = Comparison()
    comp.add({"y": a}, {"y": a + 0.01 * rng.standard_normal(a.shape).astype(np.float32)})
    comp.top1_agreement = 0.4  # what an argmax over the hidden axis might say
    assert not judge(comp, classifier=True).ok  # judged by that top-1: "destroyed"
    v = judge(comp, classifier=False)
    assert v.ok and v.metric == "nmse" and v.value < 1e-3
    assert not judge(comp, classifier=False, max_error=None).message
    onnx.checker.check_model(model(["N", 10]))


def test_no_data_warns_once_and_not_for_an_unchanged_plan(ffn):
    """Without data a lossy plan raises ONE warning saying the fidelity is unknown / not measured
    (FidelityUnknownWarning is both categories); a plan that changes nothing (a budget above 1)
    is exact and raises none."""
    from onnx_depth import diagnostics
    from onnx_depth.planning.fidelity_guard import FidelityUnknownWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        api.optimize(str(ffn["model"]), latency_budget=0.5, latency_db=str(ffn["db"]))
    fid = [w for w in caught if issubclass(w.category, (diagnostics.FidelityNotMeasuredWarning, FidelityWarning))]
    assert [w.category for w in fid] == [FidelityUnknownWarning], [str(w.message) for w in fid]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = api.optimize(str(ffn["model"]), latency_budget=1.5, latency_db=str(ffn["db"]))
    assert not r.plan or not r.plan.get("segments"), r.plan
    assert not [w for w in caught if issubclass(w.category, (diagnostics.FidelityNotMeasuredWarning, FidelityWarning))]
