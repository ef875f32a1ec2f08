"""Measure on the deployment target and scale out evaluation with a Dask cluster (issue 16).

Optional: `pip install onnx-depth[cluster]` (dask + distributed). Nothing here is imported
unless `--cluster` (or `cluster=` in the API / the Olive pass) is given, and dask itself is only
imported by `connect.connect`.

- `connect`: reach a scheduler within a stated timeout (`connect`, `ClusterError`, `DEFAULT_TIMEOUT_S`)
- `targets`: which workers are a target device, and their one fingerprint (`resolve_target`, `Target`)
- `waiting`: wait for a job while its target still has workers (`wait_for`)
- `timing`: the remote timing job (`RemoteTimer`: `measure_group` and `measure_ab` on the target)
- `evaluation`: the remote evaluation job (`RemoteEvaluator`: candidate models on any worker)
- `session`: what one `--cluster` run holds (`ClusterSession`, `open_cluster`)

Workers of a target are started on the device with
``dask worker tcp://HOST:8786 --nthreads 1 --resources "onnxdepth-target-NAME=1"``.
"""

from __future__ import annotations

from .connect import DEFAULT_TIMEOUT_S, ClusterError
from .session import ClusterSession, open_cluster
from .targets import RESOURCE_PREFIX, resource_name

__all__ = ["DEFAULT_TIMEOUT_S", "RESOURCE_PREFIX", "ClusterError", "ClusterSession", "open_cluster", "resource_name"]
