"""The remote evaluation job: candidate models run on the evaluation feeds by any worker.

Importance evaluation (planning.importance) runs one candidate model per option over the same
evaluation samples and compares its outputs with the reference model's. The candidates are
independent, so they fan out to every worker of the cluster (not only the target: fidelity does
not depend on the device): the feeds are scattered once to all workers (`broadcast`), each job
carries one candidate as ONNX bytes and returns its outputs, which are compared HERE with the
project's one comparator (compare.Comparison), so the numbers are the ones a local run gives
(up to the workers' floating-point kernels).

At most `window` jobs are in flight (default: 2 per worker) so that the candidate models, which
are built lazily, do not all sit in memory at once; results come back in submission order. A
worker that dies mid-job has its job re-run elsewhere (`waiting.wait_for`).
"""

from __future__ import annotations

import uuid
import warnings
from collections import deque
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from .. import runtime
from .targets import identity
from .waiting import LOST_GRACE_S, wait_for


def outputs_job(model_bytes: bytes, feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str],
                threads: int | None) -> tuple[str | None, list[dict[str, np.ndarray]]]:
    """Runs ON a worker: (its address, the model's outputs `names` on every feed); the session
    is EvalSet's (runtime.EVAL_OPTIMIZATION, `threads` intra-op threads)."""
    s = runtime.RunSettings(runtime.EVAL_OPTIMIZATION, threads).session(model_bytes)
    return identity()["address"], [runtime.run(s, f, list(names)) for f in feeds]


class RemoteEvaluator:
    """`evaluate(models, feeds, names, threads)` -> iterator of per-model output lists, in order:
    the hook of `planning.importance.MeasuredImportance(evaluate=...)`."""

    def __init__(self, client, *, window: int | None = None, lost_grace_s: float = LOST_GRACE_S) -> None:
        self.client, self.window, self.lost_grace_s = client, window, lost_grace_s
        self.jobs = 0
        self.workers_used: set[str] = set()
        self._feeds: tuple[int, object] | None = None  # (id of the feeds list, its scattered future)

    def _scattered(self, feeds: Sequence[Mapping[str, np.ndarray]]):
        if self._feeds is None or self._feeds[0] != id(feeds):
            [fut] = self.client.scatter([list(feeds)], broadcast=True, hash=False)  # one object: the list
            self._feeds = (id(feeds), fut)
        return self._feeds[1]

    def __call__(self, models: Iterable[onnx.ModelProto], feeds: Sequence[Mapping[str, np.ndarray]],
                 names: Sequence[str], threads: int | None = None) -> Iterator[list[dict[str, np.ndarray]]]:
        data = self._scattered(feeds)
        nworkers = max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", {})))
        window = self.window or 2 * nworkers
        pending: deque = deque()

        def collect():
            fut = pending.popleft()
            try:
                who, out = wait_for(self.client, fut, what="importance evaluation")
                self.workers_used.add(str(who))
            finally:
                fut.release()
            self.jobs += 1
            return out

        for m in models:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")
                pending.append(self.client.submit(outputs_job, m.SerializeToString(), data, list(names), threads,
                                                  pure=False, key=f"onnxdepth-eval-{uuid.uuid4().hex}"))
            if len(pending) >= window:
                yield collect()
        while pending:
            yield collect()

    def close(self) -> None:
        if self._feeds is not None:
            self._feeds[1].release()
            self._feeds = None


__all__ = ["RemoteEvaluator", "outputs_job"]
