"""Latency database: measured segment latencies keyed by device fingerprint and segment signature.

- `store`: the SQLite store (`LatencyStore`, `Entry`, `default_path`, errors)
- `repair`: salvage a damaged file (`repair`, `RepairResult`)
- `fingerprint`: what a measurement depends on besides the segment (`Fingerprint`, `current`)
- `signature`: name- and weight-free canonical hash of a standalone model (`signature`, `describe`)
- `timer`: onnxruntime timing done right (`time_model`, `interleaved_ab`, `Timing`)
- `profile`: look up, or measure and store (`measure`; `measure_group` times several interleaved)
- `commands`: the `onnx-depth db ...` subcommand (`register`, `run`)
"""

from __future__ import annotations

import importlib
from typing import Any

# Eager: these functions share their module's name, so bind them before anything imports the
# module (which would otherwise leave the package attribute pointing at the module).
from .repair import RepairResult, repair
from .signature import describe, signature
from .store import Entry, LatencyDBCorrupt, LatencyDBError, LatencyStore, default_path

_EXPORTS = {
    "Fingerprint": "fingerprint", "current": "fingerprint",
    "measure": "profile", "measure_group": "profile",
    "Comparison": "timer", "Timing": "timer", "interleaved_ab": "timer", "time_model": "timer",
}


def __getattr__(name: str) -> Any:
    """Lazy exports of the modules that import onnxruntime (`db` commands do not need it)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Comparison", "Entry", "Fingerprint", "LatencyDBCorrupt", "LatencyDBError", "LatencyStore",
    "RepairResult", "Timing", "current", "default_path", "describe", "interleaved_ab", "measure",
    "measure_group", "repair", "signature", "time_model",
]
