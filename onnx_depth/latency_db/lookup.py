"""Look a segment up in the latency database, or time it and store the result."""

from __future__ import annotations

from typing import Any, Callable

import onnx

from .fingerprint import Fingerprint
from .signature import describe, signature
from .entry import Entry
from .store import LatencyStore
from .timer import InterleavedTiming, interleaved_ab, time_model


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


def measure_group(store: LatencyStore, models: "dict[str, onnx.ModelProto]", fingerprint: Fingerprint,
                  *, store_only: "set[str] | None" = None, round_ms: "dict[str, list[float]] | None" = None,
                  timer: "Callable[..., InterleavedTiming] | None" = None, **timer_kw: Any) -> dict[str, Entry]:
    """Time several models together (timer.interleaved_ab: rotating rounds in one process, each
    with its own call-overhead floor) and store each under its signature (only those in
    `store_only`, if given). `models` maps signature -> model; returns signature -> entry for
    every model. Measuring neighbours in one group keeps their differences (e.g. what a segment
    boundary costs) free of the machine's drift between separate measurements; `round_ms`, if
    given, receives each model's per-round block medians (ms) to take differences round by
    round. `timer` replaces `timer.interleaved_ab` (same signature and result), e.g.
    `cluster.timing.RemoteTimer.interleaved_ab`, which times the group on a target device (then
    `fingerprint` must be that device's). The group's rows are written in one transaction."""
    for k in ("threads", "provider", "provider_options", "optimization"):
        if k in timer_kw:
            raise TypeError(f"{k} comes from the fingerprint; do not pass it to measure_group()")
    if not models:
        return {}
    names = {f"m{i}": sig for i, sig in enumerate(models)}
    cmp = (timer or interleaved_ab)({n: models[s] for n, s in names.items()}, **fingerprint.session_kwargs(), **timer_kw)
    out: dict[str, Entry] = {}
    for n, sig in names.items():
        out[sig] = Entry.from_timing(cmp.timings[n], describe(models[sig]))
        if round_ms is not None:
            round_ms[sig] = list(cmp.round_ms[n])
    rows = [(fingerprint, sig, e) for sig, e in out.items() if store_only is None or sig in store_only]
    if rows:
        store.put_many(rows)  # one transaction: a group's rows are stored together or not at all
    return out
