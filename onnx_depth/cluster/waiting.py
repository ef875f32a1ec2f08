"""Wait for a Dask job while it can still finish.

Dask reschedules the tasks of a worker that dies on another worker that satisfies the same
resources (at most `distributed.scheduler.allowed-failures` times, default 3, then KilledWorker).
When no such worker is left, the task would wait forever in the scheduler: `wait_for` polls
every POLL_S seconds and gives up with a one-line ClusterError once no eligible worker has been
connected for `lost_grace_s` seconds (default LOST_GRACE_S = 5: long enough for a restarted
worker to join again), or at once on KilledWorker or a lost scheduler.
"""

from __future__ import annotations

import time

from .connect import ClusterError
from .targets import target_workers

POLL_S = 0.25
LOST_GRACE_S = 5.0


def wait_for(client, future, *, what: str, resource: str | None = None, target: str | None = None,
             lost_grace_s: float = LOST_GRACE_S):
    """The result of `future` (a job that needs `resource`, or any worker when None)."""
    from distributed import KilledWorker

    alone_since: float | None = None
    while True:
        # poll done() (local state, no round trip) rather than result(timeout=...): a short
        # callback timeout can race with the client's event loop under load (distributed's sync
        # then fails with UnboundLocalError instead of a TimeoutError)
        deadline = time.monotonic() + POLL_S
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        if future.done():
            try:
                return future.result()
            except KilledWorker as e:
                raise ClusterError(f"{what}: the job killed {e.last_worker.address if getattr(e, 'last_worker', None) else 'its workers'} "
                                   "repeatedly (allowed-failures reached); nothing of it was stored") from None
            except OSError as e:
                raise ClusterError(f"{what}: lost the Dask scheduler ({e})") from None
            except Exception as e:  # noqa: BLE001 - the job failed on the worker: one line here
                if future.status != "error":
                    raise
                raise ClusterError(f"{what} failed on the worker: {type(e).__name__}: "
                                   f"{' '.join(str(e).split())[:200]}") from None
        if client.status not in ("running", "connecting"):
            raise ClusterError(f"{what}: lost the Dask scheduler (client {client.status}); nothing of this job was stored")
        if client.status != "running":  # reconnecting: counts against the same grace period
            alive = {}
        elif resource is not None:
            alive = target_workers(client, resource)
        else:
            try:
                alive = client.scheduler_info(n_workers=-1).get("workers", {})
            except (OSError, TimeoutError) as e:
                raise ClusterError(f"{what}: lost the Dask scheduler ({e})") from None
        if alive:
            alone_since = None
            continue
        now = time.monotonic()
        alone_since = alone_since or now
        if now - alone_since >= lost_grace_s:
            future.cancel()
            if client.status != "running":
                raise ClusterError(f"{what}: lost the Dask scheduler for {lost_grace_s:g} s; nothing of this job was stored")
            who = f"of target {target!r} " if target else ""
            raise ClusterError(f"{what}: no worker {who}is left (the last one died mid-job; waited {lost_grace_s:g} s "
                               "for another); nothing of this job was stored")


__all__ = ["LOST_GRACE_S", "POLL_S", "wait_for"]
