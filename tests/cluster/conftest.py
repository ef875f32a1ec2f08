"""Real `dask scheduler` / `dask worker` processes on 127.0.0.1 for the cluster tests.

Every process gets a random free port, a bounded lifetime (the scheduler's --idle-timeout, the
workers' --lifetime and --death-timeout: they stop by themselves if a test run is killed) and is
killed (its whole process group) in the fixture's teardown. Workers run --no-nanny so that a
killed worker stays dead. Skipped when dask/distributed are not installed
(`pip install onnx-depth[cluster]`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[2]
PRELOAD = Path(__file__).with_name("fake_cpu.py")
LIFETIME_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("ONNX_DEPTH_FAKE_CPU", None)
    env.update(extra)
    return env


class Procs:
    """Processes started by a fixture; `kill_all` ends each one's process group."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.procs = tmp, {}

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen([sys.executable, "-m", "dask", *argv], stdout=log, stderr=subprocess.STDOUT,
                             env=_env(**env), cwd=str(ROOT), start_new_session=True)
        self.procs[name] = p
        return p

    def kill(self, name: str) -> None:
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    def kill_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")


class Cluster:
    """A scheduler on 127.0.0.1 and the workers added to it."""

    def __init__(self, procs: Procs) -> None:
        import distributed

        self.procs = procs
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        procs.start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard",
                                  "--idle-timeout", f"{LIFETIME_S}s"])
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client = distributed.Client(self.address, timeout="2s", set_as_default=False)
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline or procs.procs["scheduler"].poll() is not None:
                    raise RuntimeError("scheduler did not start:\n" + procs.log("scheduler"))

    def add_worker(self, name: str, *targets: str, fake_cpu: str | None = None) -> subprocess.Popen:
        argv = ["worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
                "--name", name, "--lifetime", f"{LIFETIME_S}s", "--death-timeout", "30"]
        if targets:
            argv += ["--resources", ",".join(f"onnxdepth-target-{t}=1" for t in targets)]
        env = {}
        if fake_cpu:
            argv += ["--preload", str(PRELOAD)]
            env["ONNX_DEPTH_FAKE_CPU"] = fake_cpu
        return self.procs.start(name, argv, **env)

    def wait_workers(self, *names: str, timeout: float = 60) -> dict[str, dict]:
        """name -> scheduler info of each named worker, once all are connected."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.client.scheduler_info(n_workers=-1)["workers"]
            by_name = {str(w["name"]): {**w, "address": a} for a, w in info.items()}
            if all(n in by_name for n in names):
                return {n: by_name[n] for n in names}
            for n in names:
                p = self.procs.procs.get(n)
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"worker {n} exited:\n" + self.procs.log(n))
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {names} did not connect")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    procs = Procs(tmp_path_factory.mktemp("dask"))
    try:
        c = Cluster(procs)
        yield c
        c.client.close()
    finally:
        procs.kill_all()
