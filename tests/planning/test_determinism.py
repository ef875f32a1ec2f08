"""Same model, options and latency DB -> same plan, byte-identical model, same exit code (issue 14).

Each run is a separate process with a different PYTHONHASHSEED, so any dependence on set/dict
iteration of strings, on object ids or on the clock would show as different bytes."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnx_depth import api, ir, zoo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("det")
    m = zoo.build("ffn_stack", seq=16, d_model=32, d_ff=512, blocks=3, act="prelu", prelu_slope=0.25)
    ir.save(m, d / "m.onnx")
    return d / "m.onnx"


def _run(model: Path, out: Path, db: Path, seed: int, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED=str(seed), PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "onnx_depth", "-q", "optimize", str(model), str(out),
                           "--latency-db", str(db), "--report", str(out.with_suffix(".json")),
                           "--plan-out", str(out.with_suffix(".plan.json")), *extra],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_same_command_three_times_same_bytes_and_exit_code(model: Path, tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    runs, digests = [], []
    for k in range(3):
        out = tmp_path / f"out{k}.onnx"
        r = _run(model, out, db, k + 1, "--latency-budget", "0.6")
        runs.append(r.returncode)
        assert r.returncode in (0, 3), r.stderr
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest() if out.exists() else None)
    assert len(set(runs)) == 1 and len(set(digests)) == 1, (runs, digests)
    plans = [json.loads((tmp_path / f"out{k}.plan.json").read_text()) for k in range(3)]
    assert all(p == plans[0] for p in plans)
    reports = [json.loads((tmp_path / f"out{k}.json").read_text()) for k in range(3)]
    assert [r["latency_ratio_measured"] for r in reports] == [reports[0]["latency_ratio_measured"]] * 3
    assert reports[0]["latency_ms"]["cached"] is False and reports[2]["latency_ms"]["cached"] is True
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM plan_measurements").fetchone()[0] >= 1


def test_remeasure_measures_afresh(model: Path, tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    first = api.optimize(model, latency_budget=0.6, latency_db=db)
    again = api.optimize(model, latency_budget=0.6, latency_db=db)
    fresh = api.optimize(model, latency_budget=0.6, latency_db=db, remeasure=True)
    assert first.report.latency_ms["cached"] is False and again.report.latency_ms["cached"] is True
    assert again.report.latency_ratio_measured == first.report.latency_ratio_measured
    assert fresh.report.latency_ms["cached"] is False
    after = api.optimize(model, latency_budget=0.6, latency_db=db)  # the fresh measurement replaced the old one
    assert after.report.latency_ratio_measured == fresh.report.latency_ratio_measured


@pytest.fixture(scope="module")
def planner(model: Path, tmp_path_factory):
    from onnx_depth.passes import LOSSLESS, PassContext, run_to_fixed_point
    from onnx_depth.planning.budget import BudgetPlanner

    import onnx

    original = onnx.load(model)
    g = ir.load(model)
    og = g.copy()
    run_to_fixed_point(g, LOSSLESS, PassContext(lossless=True))
    with BudgetPlanner(g, original, original_graph=og, latency_db=tmp_path_factory.mktemp("p") / "db.sqlite") as p:
        yield p


def _constant(ratio: float, calls: list):
    """A measurement rule with a known answer: every plan measures `ratio` (21 equal rounds)."""
    from onnx_depth.planning.measurement import Measurement

    def measure(model, threshold):
        calls.append(threshold)
        return Measurement.from_rounds([1.0] * 21, [ratio] * 21)
    return measure


def test_one_sided_budget_and_explicit_tolerance(planner) -> None:
    """Median 1% over the budget: rejected (no silent allowance), with the fastest plan as
    evidence; accepted with --budget-tolerance 0.02; the first solve aims at budget x 0.97."""
    from onnx_depth.errors import BudgetInfeasible
    from onnx_depth.planning.budget_search import PLAN_MARGIN, plan_for_budget

    kw = dict(original_graph=planner.original_graph)
    calls: list = []
    with pytest.raises(BudgetInfeasible) as e:
        plan_for_budget(planner.cands, planner.latency, planner.original, budget=0.6, measure=_constant(0.606, calls), **kw)
    ev = e.value.outcome
    assert ev.budget_met is False and ev.measured_ratio == pytest.approx(0.606) and "not met" in ev.why
    assert calls and all(t == pytest.approx(0.6) for t in calls)
    ok = plan_for_budget(planner.cands, planner.latency, planner.original, budget=0.6, tolerance=0.02,
                         measure=_constant(0.606, []), **kw)
    assert ok.budget_met is True and ok.met == "yes (tolerance 0.02)" and len(ok.rounds) == 1
    assert ok.rounds[0].internal_budget == pytest.approx(0.6 * PLAN_MARGIN)


def test_straddling_band_measures_more_rounds(planner, monkeypatch) -> None:
    """While the p10-p90 band straddles the threshold, more rounds are measured (up to
    MAX_MEASURE_ROUNDS) and the extended measurement is what is stored and decided on."""
    from onnx_depth.planning.measurement import MAX_MEASURE_ROUNDS, Measurement

    batches = []

    def fake_time(candidate, rounds):  # per-round ratios 0.5 .. 0.7 around a threshold of 0.6
        batches.append(rounds)
        r = np.linspace(0.5, 0.7, rounds)
        return Measurement.from_rounds([1.0] * rounds, list(r))

    monkeypatch.setattr(planner, "_time", fake_time)
    planner.remeasure = True
    m = planner.measure(planner.original, threshold=0.6)
    assert m.rounds == MAX_MEASURE_ROUNDS and sum(batches) == MAX_MEASURE_ROUNDS and len(batches) > 1
    batches.clear()
    m2 = planner.measure(planner.original, threshold=0.9)  # not straddling: one batch, no extension
    assert m2.rounds == m.rounds and batches == []  # stored measurement reused within the run
