"""Latency database: measured segment latencies keyed by device fingerprint and segment signature.

- `store`: the SQLite store (`LatencyStore`, `Entry`, `default_path`, errors)
- `repair`: salvage a damaged file (`repair`, `RepairResult`)
- `fingerprint`: what a measurement depends on besides the segment (`Fingerprint`, `current`)
- `signature`: name- and weight-free canonical hash of a standalone model (`signature`, `describe`)
- `timer`: onnxruntime timing done right (`time_model`, `interleaved_ab`, `Timing`)
- `profile`: look up, or measure and store (`measure`)
- `commands`: the `onnx-depth db ...` subcommand (`register`, `run`)
"""

from .fingerprint import Fingerprint, current
from .profile import measure
from .repair import RepairResult, repair
from .signature import describe, signature
from .store import Entry, LatencyDBCorrupt, LatencyDBError, LatencyStore, default_path
from .timer import Comparison, Timing, interleaved_ab, time_model

__all__ = [
    "Comparison", "Entry", "Fingerprint", "LatencyDBCorrupt", "LatencyDBError", "LatencyStore",
    "RepairResult", "Timing", "current", "default_path", "describe", "interleaved_ab", "measure",
    "repair", "signature", "time_model",
]
