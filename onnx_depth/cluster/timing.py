"""The remote timing job: segment models timed on the target by the same timer, rows stored here.

A job is one interleaved group (`latency_db.timer.interleaved_ab`), exactly what the local
profiler times in one process (`latency_db.lookup.measure_group`, which takes this job as its
`timer` and stores the rows as it does locally): the models travel as ONNX
bytes inside the task, the worker rebuilds its fingerprint with the run's session settings
(`latency_db.fingerprint.current` there: its CPU, ISA, cores, onnxruntime version, provider),
times the group with `fingerprint.session_kwargs()` and the caller's timer options, and returns
the timings, the per-round block medians and the fingerprint it measured under.

Faults: the job asks for the target's resource (`targets.resource_name`), so Dask runs it only on
that target's workers and re-runs it on another one if the worker dies (`waiting.wait_for`; a
one-line ClusterError when none is left). Rows are written only when a job has completed, all of
one job's rows in one transaction, under (fingerprint, signature) keys that an upsert cannot
duplicate: a job that died leaves nothing behind, a re-run job writes the same keys once.

Jobs are submitted one at a time (the profiler waits for each group), so timing jobs on one
target never overlap, and each needs the whole resource of its worker (amount 1, `--nthreads 1`).
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import asdict
from typing import Any, Mapping

import onnx

from ..latency_db.fingerprint import Fingerprint, current
from ..latency_db.lookup import measure_group
from ..latency_db.entry import Entry
from ..latency_db.store import LatencyStore
from ..latency_db.timer import InterleavedTiming, Timing, interleaved_ab
from .targets import Target, identity
from .waiting import LOST_GRACE_S, wait_for


def time_group_job(blobs: Mapping[str, bytes], settings: Mapping[str, Any], timer_kw: Mapping[str, Any]) -> dict:
    """Runs ON the worker: time the models (name -> ONNX bytes) interleaved, with the session
    settings of the worker's own fingerprint for `settings`."""
    fp = current(**settings)
    models = {k: onnx.load_from_string(b) for k, b in blobs.items()}
    cmp = interleaved_ab(models, **fp.session_kwargs(), **dict(timer_kw))
    return {"fingerprint": fp.to_dict(), "worker": identity(), "baseline": cmp.baseline, "rounds": cmp.rounds,
            "timings": {k: asdict(t) for k, t in cmp.timings.items()},
            "ratios": dict(cmp.ratios), "ratio_spread": {k: list(v) for k, v in cmp.ratio_spread.items()},
            "round_ms": {k: list(v) for k, v in cmp.round_ms.items()}}


class RemoteTimer:
    """Timing on a target: `interleaved_ab` (same signature and result as
    `latency_db.timer.interleaved_ab`, run on a worker of the target), `measure_group` (the
    profiler's hook: `latency_db.lookup.measure_group` with that timer) and `measure_ab` (the
    planner's end-to-end check). `last_worker` is the identity of the worker that ran the latest
    job; `jobs` counts them."""

    def __init__(self, client, target: Target, settings: Mapping[str, Any], *, lost_grace_s: float = LOST_GRACE_S) -> None:
        self.client, self.target, self.settings = client, target, dict(settings)
        self.lost_grace_s = lost_grace_s
        self.jobs = 0
        self.last_worker: dict[str, Any] | None = None

    def interleaved_ab(self, models: "Mapping[str, onnx.ModelProto]", **kw: Any) -> InterleavedTiming:
        """`latency_db.timer.interleaved_ab` on the target. Session settings given in `kw` must be
        the target fingerprint's (they are what the rows will be stored under)."""
        session = self.target.fingerprint.session_kwargs()
        for k in ("threads", "provider", "provider_options", "optimization"):
            if k in kw and kw.pop(k) != session[k]:
                raise ValueError(f"{k} differs from the session settings of target {self.target.name!r}")
        blobs = {k: m.SerializeToString() for k, m in models.items()}
        with warnings.catch_warnings():  # the models are the payload: they belong in the task
            warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")
            fut = self.client.submit(time_group_job, blobs, self.settings, kw, pure=False,
                                     resources={self.target.resource: 1}, key=f"onnxdepth-time-{uuid.uuid4().hex}")
        try:
            res = wait_for(self.client, fut, what=f"timing {len(blobs)} model(s) on target {self.target.name!r}",
                           resource=self.target.resource, target=self.target.name, lost_grace_s=self.lost_grace_s)
        finally:
            fut.release()
        self.target.check(res)
        self.jobs += 1
        self.last_worker = res["worker"]
        return InterleavedTiming(res["baseline"], {k: Timing(**t) for k, t in res["timings"].items()},
                          {k: float(v) for k, v in res["ratios"].items()},
                          {k: (float(v[0]), float(v[1])) for k, v in res["ratio_spread"].items()},
                          int(res["rounds"]), {k: list(v) for k, v in res["round_ms"].items()})

    def measure_group(self, store: LatencyStore, models: "dict[str, onnx.ModelProto]", fingerprint: Fingerprint,
                      **kw: Any) -> dict[str, Entry]:
        """`latency_db.lookup.measure_group` timed on the target; `fingerprint` must be its."""
        if fingerprint != self.target.fingerprint:
            raise ValueError("measure_group on a target stores under the target's fingerprint only")
        return measure_group(store, models, fingerprint, timer=self.interleaved_ab, **kw)

    def measure_ab(self, original: onnx.ModelProto, candidate: onnx.ModelProto, *, rounds: int = 21,
                   **timer_kw: Any):
        """Candidate vs original on the target, interleaved (the planner's end-to-end check): the
        timer's InterleavedTiming (per-round ms of "original" and "optimized")."""
        return self.interleaved_ab({"original": original, "optimized": candidate}, rounds=rounds, **timer_kw)


__all__ = ["RemoteTimer", "time_group_job"]
