"""onnx_depth.cluster against real `dask scheduler` / `dask worker` processes on 127.0.0.1.

Workers (conftest.Cluster, all started once for the module):
  wA      targets "loop" and "mixed", reports CPU "loopback-device-A" (fake_cpu.py preload)
  kA, kB  target "kill" (this machine's real fingerprint), for the fault tests; kA also "mixed"
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_depth import cli, ir, zoo
from onnx_depth.latency_db import LatencyStore, current
from onnx_depth.planning import candidates
from onnx_depth.planning.profiler import profile_candidates

from tests.planning.conftest import hand_dag, lossless

from .conftest import ROOT, free_port

FAST = {"warmup": 1, "rounds": 3, "inner": 1}
KILL_TIMER = {"warmup": 2, "rounds": 5}  # jobs of a few hundred ms: long enough to be caught running


@pytest.fixture(scope="module")
def workers(cluster):
    cluster.add_worker("wA", "loop", "mixed", fake_cpu="loopback-device-A")
    cluster.add_worker("kA", "kill", "mixed")  # "mixed": two devices (A and this machine) under one name
    cluster.add_worker("kB", "kill")
    return cluster.wait_workers("wA", "kA", "kB")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("models")
    onnx.save(hand_dag(), d / "hand.onnx")
    ir.save(zoo.build("ffn_stack", seq=32, d_model=32, d_ff=1024, blocks=2, act="prelu", prelu_slope=0.25), d / "ffn.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "cal.npz", input=rng.standard_normal((8, 32, 32)).astype(np.float32))
    return {"dir": d, "hand": d / "hand.onnx", "ffn": d / "ffn.onnx", "cal": d / "cal.npz"}


@pytest.fixture(scope="module")
def local_keys(files) -> set[str]:
    """Signatures a local profile of the hand DAG stores (timer settings do not change keys)."""
    db = files["dir"] / "local.sqlite"
    with LatencyStore(db) as store:
        profile_candidates(candidates(lossless(hand_dag())), store, current(threads=1), **FAST)
        return {sig for _, sig, _ in store.entries()}


def _rows(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT fingerprint, signature FROM entries").fetchall()


def _probe_key(cluster, worker: dict) -> str:
    from onnx_depth.cluster.targets import fingerprint_from_dict, probe

    settings = {"provider": "CPUExecutionProvider", "provider_options": {}, "threads": 1, "optimization": "all"}
    got = cluster.client.run(probe, settings, workers=[worker["address"]])[worker["address"]]
    return fingerprint_from_dict(got["fingerprint"]).key()


def test_profile_on_the_target_stores_the_local_keys_under_the_workers_fingerprint(cluster, workers, files, local_keys,
                                                                                   capsys) -> None:
    from onnx_depth.cluster import open_cluster

    db = files["dir"] / "remote.sqlite"
    with open_cluster(cluster.address, "loop", timeout=10) as session, LatencyStore(db) as store:
        res = profile_candidates(candidates(lossless(hand_dag())), store, session.fingerprint,
                                 measure=session.timer.measure_group, **FAST)
        assert session.timer.jobs >= 3 and session.timer.last_worker["name"] == "wA"
    assert res.measured == len(local_keys)
    rows = _rows(db)
    fps = {fp for fp, _ in rows}
    worker_key = _probe_key(cluster, workers["wA"])
    assert fps == {worker_key} and worker_key != current(threads=1).key()
    assert {sig for _, sig in rows} == local_keys and len(rows) == len(local_keys)
    with LatencyStore(db) as s:
        assert s.fingerprints()[worker_key]["cpu_model"] == "loopback-device-A"
    # the command looks the same entries up under the worker's fingerprint: all cached
    rc = cli.main(["profile", str(files["hand"]), "--latency-db", str(db), "--cluster", cluster.address, "--target", "loop"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "loopback-device-A" in out.out and "target loop: 1 worker(s) (wA)" in out.out
    assert out.out.strip().splitlines()[-1] == f"0 measured, {len(local_keys)} cached"
    assert len(_rows(db)) == len(local_keys)


def test_budget_run_verifies_on_the_worker_and_says_where(cluster, workers, files, capsys) -> None:
    out, report, db = files["dir"] / "out.onnx", files["dir"] / "r.json", files["dir"] / "budget.sqlite"
    rc = cli.main(["-q", "optimize", str(files["ffn"]), str(out), "--latency-budget", "0.5", "--allow-over-budget",
                   "--calibration", str(files["cal"]), "--latency-db", str(db), "--report", str(report),
                   "--cluster", cluster.address, "--target", "loop"])
    assert rc == 0, capsys.readouterr().err
    onnx.checker.check_model(onnx.load(out), full_check=True)
    r = json.loads(report.read_text())
    where = r["planning"]["cluster"]
    w = where["last_timing_worker"]
    assert where["target"] == "loop" and w["name"] == "wA" and w["address"] == workers["wA"]["address"]
    assert w["pid"] == cluster.procs.procs["wA"].pid  # the A/B check ran in the worker process
    assert r["latency_ratio_measured"] is not None and r["planning"]["rounds"]
    assert where["fingerprint"] == _probe_key(cluster, workers["wA"])
    assert where["evaluation_jobs"] > 0 and where["evaluation_workers"]  # importance ran on the cluster
    assert any("end-to-end check on worker wA" in n for n in r["notes"])
    assert {fp for fp, _ in _rows(db)} == {where["fingerprint"]}


def test_remote_evaluation_gives_the_local_comparison(cluster, workers, files) -> None:
    from onnx_depth.analysis.calibration import load_calibration
    from onnx_depth.cluster.evaluation import RemoteEvaluator
    from onnx_depth.planning.importance import EvalSet
    from onnx_depth.planning.realize import option_operator

    cands = candidates(lossless(onnx.load(files["ffn"])))
    opts = [o for o in cands.options if o.kind != "keep"]
    reference = ir.to_proto(cands.graph.copy(), check=False)
    ev = EvalSet(reference, load_calibration(files["cal"], reference), 8)
    graphs = lambda: (cands.apply_graph([o], {o.id: option_operator(cands, o)}, partial=True) for o in opts)  # noqa: E731
    local = [ev.compare(g) for g in graphs()]
    remote = RemoteEvaluator(cluster.client, window=2)
    try:
        got = list(ev.compare_many(graphs(), remote))
    finally:
        remote.close()
    assert len(got) == len(opts) >= 2 and remote.jobs == len(opts)
    assert remote.workers_used <= {w["address"] for w in workers.values()} and remote.workers_used
    for a, b in zip(local, got):
        assert b.nmse == pytest.approx(a.nmse, rel=1e-6, abs=1e-12) and a.nmse > 0


@pytest.mark.parametrize("target,needle", [
    ("mixed", "report different fingerprints"),
    ("nobody", "no worker of target 'nobody'"),
])
def test_target_errors_are_one_line_exit_2(cluster, workers, files, tmp_path, capsys, target, needle) -> None:
    rc = cli.main(["profile", str(files["ffn"]), "--latency-db", str(tmp_path / "x.sqlite"),
                   "--cluster", cluster.address, "--target", target])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err, err


@pytest.mark.parametrize("argv,needle", [
    (["optimize", "IN", "OUT", "--cluster", "tcp://127.0.0.1:1", "--target", "t"], "--cluster needs --latency-budget"),
    (["optimize", "IN", "OUT", "--latency-budget", "0.7", "--cluster", "tcp://127.0.0.1:1"], "go together"),
    (["profile", "IN", "--target", "t"], "go together"),
    (["profile", "IN", "--cluster", "127.0.0.1:1", "--target", "no/slash"], "--target 'no/slash' must be a name"),
    (["profile", "IN", "--cluster", "http://x", "--target", "t"], "is not a scheduler address"),
])
def test_cluster_usage_errors_before_any_connection(files, tmp_path, capsys, argv, needle) -> None:
    argv = [{"IN": str(files["ffn"]), "OUT": str(tmp_path / "o.onnx")}.get(a, a) for a in argv]
    rc = cli.main([*argv, "--latency-db", str(tmp_path / "x.sqlite")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "o.onnx").exists()


def test_killed_worker_is_survived_then_the_last_one_is_an_error(cluster, workers, files, local_keys) -> None:
    from onnx_depth.cluster import ClusterError, open_cluster

    db = files["dir"] / "kill.sqlite"
    cands = candidates(lossless(hand_dag()))
    box: dict = {}

    def profile(session, refresh: bool) -> None:
        try:
            with LatencyStore(db) as store:
                box["res"] = profile_candidates(cands, store, session.fingerprint, refresh=refresh,
                                                measure=session.timer.measure_group, **KILL_TIMER)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box["err"] = e

    def kill_while_timing(names: set[str]) -> str:
        """Start `profile` in a thread, kill the worker (of `names`) running the second timing job."""
        seen = 0
        last = None
        while "res" not in box and "err" not in box:
            for addr, keys in cluster.client.processing().items():
                name = next((n for n in names if workers[n]["address"] == addr), None)
                job = next((k for k in keys if str(k).startswith("onnxdepth-time-")), None)
                if name and job and job != last:
                    seen, last = seen + 1, job
                    if seen == 2:
                        cluster.procs.kill(name)
                        return name
            time.sleep(0.02)
        raise AssertionError("the profile ended before a worker could be killed")

    with open_cluster(cluster.address, "kill", timeout=10, lost_grace_s=3) as session:
        t = threading.Thread(target=profile, args=(session, False))
        t.start()
        killed = kill_while_timing({"kA", "kB"})
        t.join(120)
        assert "err" not in box, box.get("err")
        survivor = ({"kA", "kB"} - {killed}).pop()
        assert session.timer.last_worker["name"] == survivor
        rows = _rows(db)
        assert {sig for _, sig in rows} == local_keys and len(rows) == len(local_keys)  # none lost, none twice
        assert {fp for fp, _ in rows} == {current(threads=1).key()}
        before = {sig: e.measured_at for _, sig, e in LatencyStore(db).entries()}
        # now the last worker of the target dies mid-job: a one-line error, no partial rows
        box.clear()
        t = threading.Thread(target=profile, args=(session, True))
        t.start()
        kill_while_timing({survivor})
        t.join(60)
    err = box.get("err")
    assert isinstance(err, ClusterError) and "no worker of target 'kill' is left" in str(err), err
    assert "\n" not in str(err)
    with LatencyStore(db) as s:
        after = {sig: e.measured_at for _, sig, e in s.entries()}
    assert set(after) == local_keys  # nothing lost, nothing added
    assert 0 < sum(after[k] != before[k] for k in after) < len(after)  # the completed job's rows only


def test_unreachable_scheduler_is_exit_2_within_the_timeout(files, tmp_path, capsys) -> None:
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    rc = cli.main(["profile", str(files["ffn"]), "--latency-db", str(tmp_path / "x.sqlite"),
                   "--cluster", f"tcp://127.0.0.1:{port}", "--target", "loop", "--cluster-timeout", "2"])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot reach the Dask scheduler" in err and "within 2 s" in err
    assert elapsed < 2 + 5, elapsed
    assert not (tmp_path / "x.sqlite").exists() or not _rows(tmp_path / "x.sqlite")


def test_without_cluster_dask_is_never_imported(files, tmp_path) -> None:
    code = (
        "import sys\n"
        "from onnx_depth import cli\n"
        f"assert cli.main(['-q', 'profile', {str(files['ffn'])!r}, '--latency-db', {str(tmp_path / 'db.sqlite')!r}]) == 0\n"
        f"assert cli.main(['-q', 'optimize', {str(files['ffn'])!r}, {str(tmp_path / 'o.onnx')!r}]) == 0\n"
        "import onnx_depth.cluster  # the package itself imports dask only when connecting\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_olive_pass_passes_the_cluster_options_to_the_api() -> None:
    pytest.importorskip("olive")
    from olive.hardware.accelerator import DEFAULT_CPU_ACCELERATOR

    from onnx_depth.olive.onnx_depth_pass import OnnxDepthPass

    params = OnnxDepthPass.default_config(DEFAULT_CPU_ACCELERATOR)
    assert all(params[k].default_value is None for k in ("cluster", "target", "cluster_timeout"))
    kw = OnnxDepthPass.api_kwargs({"latency_budget": 0.7, "cluster": "tcp://127.0.0.1:8786", "target": "rpi5",
                                   "cluster_timeout": 3.0})
    assert kw == {"latency_budget": 0.7, "cluster": "tcp://127.0.0.1:8786", "target": "rpi5", "cluster_timeout": 3.0}
