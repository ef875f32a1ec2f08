"""What one `--cluster ADDRESS --target NAME` run holds: the client, the target, its timer and
the evaluator, and where things ran (for the report).

`open_cluster` connects (`connect.connect`, timeout stated), resolves the target's workers and
their one fingerprint for the run's session settings (`targets.resolve_target`), and returns a
`ClusterSession`; `close()` disconnects (the cluster keeps running). Use it as a context manager.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..latency_db.fingerprint import Fingerprint
from .connect import DEFAULT_TIMEOUT_S, connect, normalize_address
from .evaluation import RemoteEvaluator
from .targets import Target, resolve_target, resource_name
from .timing import RemoteTimer
from .waiting import LOST_GRACE_S


@dataclass
class ClusterSession:
    address: str
    client: Any
    target: Target
    timer: RemoteTimer
    evaluator: RemoteEvaluator

    @property
    def fingerprint(self) -> Fingerprint:
        """The target's fingerprint: latencies are looked up and stored under it."""
        return self.target.fingerprint

    def where(self) -> dict[str, Any]:
        """For the report: scheduler, target, its fingerprint, the worker of the latest timing
        job (the end-to-end check, after a budget run), timing and evaluation job counts."""
        return {"scheduler": self.address, "target": self.target.name, "fingerprint": self.fingerprint.key(),
                "fingerprint_details": self.fingerprint.describe(), "last_timing_worker": self.timer.last_worker,
                "timing_jobs": self.timer.jobs, "evaluation_jobs": self.evaluator.jobs,
                "evaluation_workers": sorted(self.evaluator.workers_used)}

    def close(self) -> None:
        try:
            self.evaluator.close()
        finally:
            self.client.close()

    def __enter__(self) -> "ClusterSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_cluster(address: str, target: str, *, provider: str = "CPUExecutionProvider",
                 provider_options: Mapping[str, Any] | None = None, threads: int = 1, optimization: str = "all",
                 timeout: float = DEFAULT_TIMEOUT_S, lost_grace_s: float = LOST_GRACE_S) -> ClusterSession:
    """Connect to the scheduler at `address` and resolve target `target` (see the module docstring)."""
    resource_name(target)  # a bad name fails before any connection attempt
    address = normalize_address(address)
    client = connect(address, timeout)
    try:
        settings = {"provider": provider, "provider_options": dict(provider_options or {}), "threads": int(threads),
                    "optimization": optimization}
        tgt = resolve_target(client, target, settings, address)
        return ClusterSession(address, client, tgt, RemoteTimer(client, tgt, settings, lost_grace_s=lost_grace_s),
                              RemoteEvaluator(client, lost_grace_s=lost_grace_s))
    except BaseException:
        client.close()
        raise


__all__ = ["ClusterSession", "open_cluster"]
