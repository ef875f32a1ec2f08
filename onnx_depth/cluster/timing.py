"""The remote timing job: segment models timed on the target by the same timer, rows stored here.

A job is one interleaved group (`latency_db.timer.interleaved_ab`), exactly what the local
profiler times in one process (`latency_db.profile.measure_group`): the models travel as ONNX
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

from ..latency_db.fingerprint import Fingerprint
from ..latency_db.signature import describe
from ..latency_db.store import Entry, LatencyStore
from ..latency_db.timer import Timing
from .targets import Target, identity
from .waiting import LOST_GRACE_S, wait_for


def time_group_job(blobs: Mapping[str, bytes], settings: Mapping[str, Any], timer_kw: Mapping[str, Any]) -> dict:
    """Runs ON the worker: time the models (name -> ONNX bytes) interleaved, with the session
    settings of the worker's own fingerprint for `settings`."""
    from ..latency_db.fingerprint import current
    from ..latency_db.timer import interleaved_ab

    fp = current(**settings)
    models = {k: onnx.load_from_string(b) for k, b in blobs.items()}
    cmp = interleaved_ab(models, **fp.session_kwargs(), **dict(timer_kw))
    return {"fingerprint": fp.to_dict(), "worker": identity(),
            "timings": {k: asdict(t) for k, t in cmp.timings.items()},
            "ratios": dict(cmp.ratios), "ratio_spread": {k: list(v) for k, v in cmp.ratio_spread.items()},
            "round_ms": {k: list(v) for k, v in cmp.round_ms.items()}}


class RemoteTimer:
    """Timing on a target: `measure_group` (the profiler's hook, same signature as
    `latency_db.profile.measure_group`) and `measure_ab` (the planner's end-to-end check).
    `last_worker` is the identity of the worker that ran the latest job; `jobs` counts them."""

    def __init__(self, client, target: Target, settings: Mapping[str, Any], *, lost_grace_s: float = LOST_GRACE_S) -> None:
        self.client, self.target, self.settings = client, target, dict(settings)
        self.lost_grace_s = lost_grace_s
        self.jobs = 0
        self.last_worker: dict[str, Any] | None = None

    def _run(self, blobs: dict[str, bytes], timer_kw: Mapping[str, Any], what: str) -> dict:
        with warnings.catch_warnings():  # the models are the payload: they belong in the task
            warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")
            fut = self.client.submit(time_group_job, blobs, self.settings, dict(timer_kw), pure=False,
                                     resources={self.target.resource: 1}, key=f"onnxdepth-time-{uuid.uuid4().hex}")
        try:
            res = wait_for(self.client, fut, what=what, resource=self.target.resource, target=self.target.name,
                           lost_grace_s=self.lost_grace_s)
        finally:
            fut.release()
        self.target.check(res)
        self.jobs += 1
        self.last_worker = res["worker"]
        return res

    def measure_group(self, store: LatencyStore, models: "dict[str, onnx.ModelProto]", fingerprint: Fingerprint, *,
                      store_only: "set[str] | None" = None, round_ms: "dict[str, list[float]] | None" = None,
                      **timer_kw: Any) -> dict[str, Entry]:
        """Time `models` (signature -> model) on the target; store each (those in `store_only`, if
        given) under `fingerprint`, which must be the target's; returns signature -> entry."""
        for k in ("threads", "provider", "provider_options", "optimization"):
            if k in timer_kw:
                raise TypeError(f"{k} comes from the fingerprint; do not pass it to measure_group()")
        if fingerprint != self.target.fingerprint:
            raise ValueError("measure_group on a target stores under the target's fingerprint only")
        if not models:
            return {}
        names = {f"m{i}": sig for i, sig in enumerate(models)}
        res = self._run({n: models[s].SerializeToString() for n, s in names.items()}, timer_kw,
                        f"timing {len(models)} segment model(s) on target {self.target.name!r}")
        out: dict[str, Entry] = {}
        for n, sig in names.items():
            out[sig] = Entry.from_timing(Timing(**res["timings"][n]), describe(models[sig]))
            if round_ms is not None:
                round_ms[sig] = list(res["round_ms"][n])
        rows = [(sig, e) for sig, e in out.items() if store_only is None or sig in store_only]
        if rows:
            store.put_many([(fingerprint, sig, e) for sig, e in rows])  # one transaction per completed job
        return out

    def measure_ab(self, original: onnx.ModelProto, candidate: onnx.ModelProto, *, rounds: int = 21,
                   **timer_kw: Any) -> tuple[float, tuple[float, float]]:
        """Latency ratio candidate / original on the target, interleaved (the planner's check)."""
        res = self._run({"original": original.SerializeToString(), "optimized": candidate.SerializeToString()},
                        {"rounds": rounds, **timer_kw}, f"end-to-end A/B timing on target {self.target.name!r}")
        lo, hi = res["ratio_spread"]["optimized"]
        return float(res["ratios"]["optimized"]), (float(lo), float(hi))


__all__ = ["RemoteTimer", "time_group_job"]
