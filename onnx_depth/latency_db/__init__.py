"""Latency database: measured segment latencies keyed by device fingerprint and segment signature.
Storage and timing only: no planning and no command line here (`onnx-depth db` and `onnx-depth
profile` are onnx_depth.cli.db and onnx_depth.cli.profile).

- `entry`: one measured latency (`Entry`) and the errors (`LatencyDBError`, `LatencyDBCorrupt`)
- `store`: the SQLite store (`LatencyStore`, `default_path`, schema migrations)
- `transfer`: the store's export to / import from .json and .csv files
- `repair`: salvage a damaged file (`repair`, `RepairResult`)
- `fingerprint`: what a measurement depends on besides the segment (`Fingerprint`, `current`)
- `signature`: name- and weight-free canonical hash of a standalone model (`signature`, `describe`)
- `timer`: onnxruntime timing done right (`time_model`, `interleaved_ab` -> `InterleavedTiming`, `Timing`)
- `lookup`: look up, or measure and store (`measure`; `measure_group` times several interleaved)
"""

from __future__ import annotations

# These functions share their module's name: bind them before anything imports the module
# (which would otherwise leave the package attribute pointing at the module).
from .repair import RepairResult, repair
from .signature import describe, signature
from .entry import Entry, LatencyDBCorrupt, LatencyDBError
from .store import LatencyStore, default_path
from .fingerprint import Fingerprint, current  # noqa: I001 - after the name-sharing imports above
from .lookup import measure, measure_group
from .timer import InterleavedTiming, Timing, interleaved_ab, time_model

__all__ = [
    "Entry", "Fingerprint", "InterleavedTiming", "LatencyDBCorrupt", "LatencyDBError", "LatencyStore",
    "RepairResult", "Timing", "current", "default_path", "describe", "interleaved_ab", "measure",
    "measure_group", "repair", "signature", "time_model",
]
