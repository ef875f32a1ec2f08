"""Budget mode end to end: `optimize --latency-budget / --max-error` on a small model whose
merges are >10x cheaper (robust orderings only), exit codes, the plan file, the fidelity cache,
and the DP on real candidates against brute force."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_depth import api, ir, runtime, zoo
from onnx_depth.cli import main
from onnx_depth.errors import BudgetInfeasible, InputError
from onnx_depth.planning import candidates
from onnx_depth.planning import layermerge_dp as dp
from onnx_depth.planning.objectives import ErrorBound


@pytest.fixture(scope="module")
def ffn(tmp_path_factory) -> dict:
    """FFN stack: d_model 32 -> d_ff 1024 -> 32 per block with PReLU 0.25: merging a block's two
    layers into one 32x32 layer is ~60x fewer MACs."""
    d = tmp_path_factory.mktemp("ffn")
    m = zoo.build("ffn_stack", seq=32, d_model=32, d_ff=1024, blocks=2, act="prelu", prelu_slope=0.25)
    ir.save(m, d / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "cal.npz", input=rng.standard_normal((8, 32, 32)).astype(np.float32))
    return {"dir": d, "model": d / "m.onnx", "cal": d / "cal.npz", "db": d / "db.sqlite"}


def _opt(ffn: dict, *extra: str) -> tuple[int, Path]:
    out = ffn["dir"] / "out.onnx"
    rc = main(["-q", "optimize", str(ffn["model"]), str(out), "--latency-db", str(ffn["db"]), *extra])
    return rc, out


def test_budget_met_and_reported(ffn: dict, capsys) -> None:
    report, plan = ffn["dir"] / "r.json", ffn["dir"] / "plan.json"
    before = ffn["model"].read_bytes()
    rc, out = _opt(ffn, "--latency-budget", "0.5", "--report", str(report), "--plan-out", str(plan))
    assert rc == 0, capsys.readouterr()
    assert ffn["model"].read_bytes() == before  # input untouched
    onnx.checker.check_model(onnx.load(out), full_check=True)
    r = json.loads(report.read_text())
    for k in ("nodes_before", "nodes_after", "depth_before", "depth_after", "params_before", "params_after",
              "macs_before", "macs_after", "latency_ratio_measured", "latency_ratio_predicted", "budget"):
        assert r[k] is not None, k
    assert r["budget"] == 0.5
    assert r["latency_ratio_measured"] <= 0.5 and r["budget_met"] is True and r["budget_status"] == "yes"
    assert r["macs_after"] * 10 < r["macs_before"]
    assert r["segments"] and all(s["latency_ms_after"] < s["latency_ms_before"] for s in r["segments"])
    p = json.loads(plan.read_text())
    assert p["format"] == "onnx-depth-plan/1"
    names = {n.name for n in onnx.load(ffn["model"]).graph.node}
    assert p["removed_activations"] and all(a["name"] in names and a["op_type"] == "PRelu" for a in p["removed_activations"])
    assert {"data-free", "fidelity-not-measured"} <= {w["category"] for w in r["warnings"]}  # no calibration: warnings


def test_infeasible_budget_exit_3_leaves_evidence(ffn: dict, capsys) -> None:
    """Exit 3 writes no model but the report (budget_met false, why, the fastest plan found,
    predicted and measured) and the plan; one error line whose numbers are the report's."""
    d = ffn["dir"]
    out, report, plan = d / "infeasible.onnx", d / "r3.json", d / "plan3.json"
    rc = main(["-q", "optimize", str(ffn["model"]), str(out), "--latency-db", str(ffn["db"]), "--latency-budget", "0.001",
               "--report", str(report), "--plan-out", str(plan)])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("onnx-depth: warning:")]
    assert rc == 3 and len(err) == 1 and "infeasible" in err[0] and "Traceback" not in err[0]
    assert not out.exists()
    r = json.loads(report.read_text())
    assert r["budget_met"] is False and r["budget_status"] == "no" and "infeasible" in r["why"]
    fp = r["fastest_plan"]
    assert fp["latency_ratio_predicted"] > 0.001 and fp["latency_ratio_measured"] > 0.001 and fp["emitted"] is False
    assert f"predicted at {fp['latency_ratio_predicted']:.3f}" in err[0]
    assert f"measured at {fp['latency_ratio_measured']:.3f}" in err[0]
    assert r["segments"] and r["latency_ms"]["before"] > 0 and r["environment"]["onnxruntime"]
    p = json.loads(plan.read_text())
    assert p["budget_met"] is False and p["removed_activations"]


def test_allow_over_budget_emits_fastest(ffn: dict, capsys) -> None:
    rc, out = _opt(ffn, "--latency-budget", "0.001", "--allow-over-budget", "--report", str(ffn["dir"] / "r2.json"))
    assert rc == 0
    r = json.loads((ffn["dir"] / "r2.json").read_text())
    assert r["budget_met"] is False and r["budget_status"] == "no (allowed)"
    assert any(w["category"] == "over-budget" and "allow-over-budget" in w["message"] for w in r["warnings"])
    assert out.exists()


@pytest.mark.parametrize("args,needle", [
    (["--lossless", "--latency-budget", "0.5"], "cannot be combined"),
    (["--max-error", "0.1"], "needs --calibration"),
    (["--latency-budget", "0.5", "--check", "2"], "--check"),
    (["--plan-out", "p.json"], "--plan-out needs"),
    (["--plot", "p.png"], "--plot needs"),
    (["--latency-budget", "0"], "must be a number > 0"),
    # budget + max-error together is the combined objective now (issue 17); --validation needs --calibration
    (["--latency-budget", "0.5", "--validation", "x.npz"], "--validation needs"),
    (["--latency-budget", "0.5", "--threads", "0"], "--threads"),
    (["--latency-budget", "0.5", "--provider", "NoSuchProvider"], "not available"),
])
def test_invalid_combinations(ffn: dict, capsys, args: list[str], needle: str) -> None:
    rc, _ = _opt(ffn, *args)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err, err


@pytest.mark.parametrize("kw", [dict(lossless=True, latency_budget=0.5), dict(max_error=0.1),
                                dict(latency_budget=0.5, max_error=0.1, calibration="x.npz"), dict(latency_budget=-1.0)])
def test_api_rejects_invalid(ffn: dict, kw: dict) -> None:
    with pytest.raises(InputError):
        api.optimize(str(ffn["model"]), **kw)


def test_api_budget_with_calibration_and_cache(ffn: dict) -> None:
    """Measured importance with refit; a second run on the same model and data measures no option."""
    kw = dict(latency_budget=0.5, calibration=str(ffn["cal"]), threads=1, latency_db=str(ffn["db"]))
    first = api.optimize(str(ffn["model"]), **kw)
    second = api.optimize(str(ffn["model"]), **kw)
    t1, t2 = first.report.planning["timings_s"], second.report.planning["timings_s"]
    assert t1["options_evaluated"] > 0
    assert t2["options_evaluated"] == 0 and t2["options_cached"] >= t1["options_evaluated"]
    assert first.report.fidelity is not None and second.report.fidelity is not None
    assert first.plan is not None and first.plan["importance"].startswith("measured")
    assert [s["segment"] for s in first.report.segments] == [s["segment"] for s in second.report.segments]


def test_max_error_bounds(ffn: dict) -> None:
    kw = dict(calibration=str(ffn["cal"]), threads=1, latency_db=str(ffn["db"]))
    none = api.optimize(str(ffn["model"]), max_error=0.0, **kw)
    assert none.report.segments == []
    anything = api.optimize(str(ffn["model"]), max_error=1e9, **kw)
    assert anything.report.segments and anything.report.latency_ratio_measured < 0.5


def test_error_bound_parse() -> None:
    assert ErrorBound.parse("0.05") == ErrorBound(0.05, "nmse")
    assert ErrorBound.parse("top1:0.01") == ErrorBound(0.01, "top1")
    with pytest.raises(InputError):
        ErrorBound.parse("psnr:3")
    with pytest.raises(InputError):
        ErrorBound.parse("-1")


def test_dp_on_real_candidates_matches_brute_force(hand_graph: ir.Graph) -> None:
    """The DP over the hand DAG's real segment table (random latencies and importances) finds the
    same optimum as exhaustive search, at several budgets."""
    cands = candidates(hand_graph, max_layers=3)
    rnd = random.Random(0)
    chains = []
    for c in cands.chains:
        opts = [dp.Option(o.st, o.end, rnd.uniform(0.1, 2.0) * (o.end - o.st), 0.0 if o.kind == "keep" else -rnd.random(), o.id)
                for o in cands.options if o.chain == c.id]
        chains.append(dp.DPChain(c.L, opts))
    total = sum(max(o.latency for o in ch.options) * ch.length for ch in chains)
    for frac in (0.3, 0.7):
        got = dp.solve(chains, frac * total, resolution=20000)
        want = dp.brute_force(chains, frac * total)
        assert got.feasible == want.feasible
        if want.feasible:
            assert got.importance == pytest.approx(want.importance, abs=1e-9)
            assert got.latency <= frac * total + 1e-9
