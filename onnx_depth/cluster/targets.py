"""Target devices: which workers of the cluster are one device, and the fingerprint they share.

A worker belongs to target NAME when it was started with the Dask resource
``onnxdepth-target-NAME=1`` (`resource_name`). Timing jobs ask for that resource, so they run
only on the target's workers, one at a time on each (the resource has amount 1), and the worker
must run `--nthreads 1`, so no other task (e.g. an importance evaluation) runs beside a timing
job on that device.

`resolve_target` asks every worker of the target for its latency fingerprint under the run's
session settings (`latency_db.fingerprint.current` evaluated ON the worker: its CPU, ISA,
cores, onnxruntime version, provider) and requires them to agree: latencies from two different
devices stored under one name would be mixed silently. Every timing job returns the fingerprint
of the worker that ran it, and `Target.check` refuses a result from a worker that disagrees
(e.g. one that joined later).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Mapping

import onnxruntime as ort

from ..version import __version__
from ..latency_db.fingerprint import Fingerprint, current
from .connect import ClusterError

RESOURCE_PREFIX = "onnxdepth-target-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def resource_name(target: str) -> str:
    """The Dask resource that marks the workers of `target`."""
    if not _NAME.match(str(target or "")):
        raise ClusterError(f"--target {target!r} must be a name of letters, digits, '.', '_' or '-' (e.g. rpi5)")
    return RESOURCE_PREFIX + target


def worker_command(scheduler: str, target: str) -> str:
    """How to start a worker of `target` on the device (for error messages and the README)."""
    return f'dask worker {scheduler} --nthreads 1 --resources "{resource_name(target)}=1"'


def fingerprint_from_dict(d: Mapping[str, Any]) -> Fingerprint:
    """The inverse of `Fingerprint.to_dict` (a fingerprint sent back by a worker)."""
    return Fingerprint(str(d["cpu_model"]), tuple(d["isa"]), int(d["logical_cores"]), str(d["ort_version"]),
                       str(d["provider"]), tuple(sorted((str(k), str(v)) for k, v in dict(d["provider_options"]).items())),
                       int(d["threads"]), str(d["optimization"]))


def identity() -> dict[str, Any]:
    """Where this code runs: the Dask worker's address and name (when inside one), host, pid."""
    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "onnx_depth": __version__}
    try:
        from distributed import get_worker

        w = get_worker()
        out.update(address=w.address, name=str(w.name))
    except (ImportError, ValueError):
        out.update(address=None, name=None)
    return out


def probe(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Runs ON a worker: its fingerprint for the session `settings` (provider, provider_options,
    threads, optimization), or the reason it cannot measure with them."""
    out = identity()
    if settings["provider"] not in ort.get_available_providers():
        out["error"] = (f"provider {settings['provider']!r} is not available there "
                        f"(one of {', '.join(ort.get_available_providers())})")
        return out
    out["fingerprint"] = current(**settings).to_dict()
    return out


@dataclass
class Target:
    """A target device: its name, Dask resource, the fingerprint all its workers share, and
    those workers (address -> identity: name, host, pid)."""

    name: str
    resource: str
    fingerprint: Fingerprint
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def check(self, result: Mapping[str, Any]) -> None:
        """Refuse a job result measured under another fingerprint."""
        fp = fingerprint_from_dict(result["fingerprint"])
        if fp != self.fingerprint:
            w = result.get("worker") or {}
            raise ClusterError(
                f"worker {w.get('name') or w.get('address')} claims target {self.name!r} but reports fingerprint "
                f"{fp.key()} ({fp.describe()}), not the target's {self.fingerprint.key()} "
                f"({self.fingerprint.describe()}); give each device its own --target name")

    def describe(self) -> str:
        names = ", ".join(sorted(str(w.get("name") or a) for a, w in self.workers.items()))
        return f"target {self.name}: {len(self.workers)} worker(s) ({names}), fingerprint {self.fingerprint.key()}"


def target_workers(client, resource: str) -> dict[str, dict[str, Any]]:
    """Scheduler's view of the workers that hold `resource`: address -> worker info."""
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"lost the Dask scheduler ({type(e).__name__}: {e})") from None
    return {a: w for a, w in workers.items() if (w.get("resources") or {}).get(resource, 0) >= 1}


def resolve_target(client, name: str, settings: Mapping[str, Any], scheduler: str) -> Target:
    """The target `name`: its workers and their one fingerprint (see the module docstring)."""
    resource = resource_name(name)
    workers = target_workers(client, resource)
    if not workers:
        raise ClusterError(f"no worker of target {name!r} is connected to {scheduler}; start one on the device with "
                           f"`{worker_command(scheduler, name)}`")
    busy = sorted(str(w.get("name") or a) for a, w in workers.items() if int(w.get("nthreads", 1)) != 1)
    if busy:
        raise ClusterError(f"worker(s) {', '.join(busy)} of target {name!r} run more than one task at a time; a timing "
                           f"job must run alone on the device: start them with --nthreads 1")
    try:
        probes = client.run(probe, dict(settings), workers=list(workers))
    except Exception as e:  # noqa: BLE001 - whatever failed there, it is one line here
        raise ClusterError(f"cannot ask the workers of target {name!r} for their fingerprint "
                           f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    fps: dict[str, Fingerprint] = {}
    for addr, p in probes.items():
        who = workers[addr].get("name") or addr
        if p.get("error"):
            raise ClusterError(f"worker {who} of target {name!r} cannot measure: {p['error']}")
        if p.get("onnx_depth") != __version__:
            raise ClusterError(f"worker {who} of target {name!r} runs onnx-depth {p.get('onnx_depth')}, this is "
                               f"{__version__}: install the same version on the device")
        fps[addr] = fingerprint_from_dict(p["fingerprint"])
    distinct = {fp.key(): (addr, fp) for addr, fp in fps.items()}
    if len(distinct) > 1:
        desc = "; ".join(f"{workers[a].get('name') or a}: {k} ({fp.describe()})" for k, (a, fp) in sorted(distinct.items()))
        raise ClusterError(f"workers of target {name!r} report different fingerprints ({desc}); "
                           "give each device its own --target name")
    fp = next(iter(fps.values()))
    return Target(name, resource, fp, {a: {**probes[a], "address": a, "name": str(workers[a].get("name") or a)}
                                       for a in probes})


__all__ = ["RESOURCE_PREFIX", "Target", "fingerprint_from_dict", "identity", "probe", "resolve_target", "resource_name",
           "target_workers", "worker_command"]
