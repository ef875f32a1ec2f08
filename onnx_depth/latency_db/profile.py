"""Look a segment up in the latency database, or time it and store the result."""

from __future__ import annotations

from typing import Any

import onnx

from .fingerprint import Fingerprint
from .signature import describe, signature
from .store import Entry, LatencyStore
from .timer import time_model


def measure(store: LatencyStore, model: onnx.ModelProto, fingerprint: Fingerprint, *,
            refresh: bool = False, **timer_kw: Any) -> Entry:
    """The stored entry for `model` under `fingerprint`, timing it first if absent (or if
    `refresh`). The session settings come from the fingerprint, so what is stored under a key
    was measured with exactly those settings; `timer_kw` may set warmup/repeats/inner/seed/dims."""
    for k in ("threads", "provider", "provider_options", "optimization"):
        if k in timer_kw:
            raise TypeError(f"{k} comes from the fingerprint; do not pass it to measure()")
    sig = signature(model)
    if not refresh:
        hit = store.get(fingerprint, sig)
        if hit is not None:
            return hit
    timing = time_model(model, **fingerprint.session_kwargs(), **timer_kw)
    entry = Entry.from_timing(timing, describe(model))
    store.put(fingerprint, sig, entry)
    return entry
