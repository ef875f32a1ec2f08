"""Connect to a Dask scheduler, or fail with one line within a stated timeout.

`connect(address, timeout)` returns a `distributed.Client` or raises `ClusterError` (exit code 2)
after at most about `timeout` seconds (default DEFAULT_TIMEOUT_S = 10): the connection attempt
and the handshake both run under `distributed.comm.timeouts.connect = timeout`, and `Client`'s
own `timeout` bounds the whole start. A missing dask install is the same kind of one-line error
(with the pip command), never an ImportError traceback.
"""

from __future__ import annotations

import re

from ..errors import OnnxDepthError

DEFAULT_TIMEOUT_S = 10.0
_ADDRESS = re.compile(r"^(tcp|tls)://[^\s/:]+(:\d{1,5})?$|^[^\s/:]+:\d{1,5}$")
INSTALL_HINT = "--cluster needs dask and distributed: pip install 'onnx-depth[cluster]'"


class ClusterError(OnnxDepthError):
    """The cluster cannot do what was asked (unreachable scheduler, no worker for the target,
    workers that disagree about the target's fingerprint, ...): one line, exit code 2."""

    exit_code = 2


def require_dask():
    """The `distributed` module, or ClusterError with the install command."""
    try:
        import distributed
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    return distributed


def normalize_address(address: str) -> str:
    """`tcp://HOST:PORT` (a bare HOST:PORT gets tcp://; the default port is 8786)."""
    a = str(address).strip()
    if not _ADDRESS.match(a):
        raise ClusterError(f"--cluster {address!r} is not a scheduler address like tcp://HOST:8786")
    if "://" not in a:
        a = "tcp://" + a
    if not re.search(r":\d+$", a.split("://", 1)[1]):
        a += ":8786"
    return a


def connect(address: str, timeout: float = DEFAULT_TIMEOUT_S):
    """A `distributed.Client` connected to the scheduler at `address`, or ClusterError after
    about `timeout` seconds."""
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ClusterError(f"--cluster-timeout must be a number of seconds > 0, got {timeout!r}")
    address = normalize_address(address)
    distributed = require_dask()
    import dask

    t = f"{float(timeout)}s"
    with dask.config.set({"distributed.comm.timeouts.connect": t, "distributed.comm.timeouts.tcp": "30s"}):
        try:
            return distributed.Client(address, timeout=t, set_as_default=False)
        except (OSError, TimeoutError) as e:
            why = " ".join(str(e).split())[:160] or type(e).__name__
            raise ClusterError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({why})") from None


__all__ = ["DEFAULT_TIMEOUT_S", "INSTALL_HINT", "ClusterError", "connect", "normalize_address", "require_dask"]
