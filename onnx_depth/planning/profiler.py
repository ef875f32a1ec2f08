"""Fill the latency database for every candidate segment option of a model.

`profile_model` loads a model, runs the LOSSLESS passes, enumerates the candidate options
(`segments.candidates`), builds one timing model per distinct structure (options with equal
`SegmentOption.key` share it) and looks each up in the database under the device fingerprint
(signature of the timing model); what is missing is timed and stored. The whole model after the
lossless passes is timed and stored too: it is the one in-context measurement that
`latency_model` calibrates with; so are the pair models that price each segment boundary.

Missing models are timed in interleaved groups (`latency_db.lookup.measure_group`: rotating
rounds in one process). A cut (what a segment boundary costs standalone: keep(i) + keep(i+1) -
pair(i)) is a difference of three measurements, so the three are always timed in the same group
(the machine's load drifts between groups) and the cut is stored as one derived entry.

Call overhead: every stored entry carries the floor (`floor_ms`: a trivial model with the same
inputs, timed in the same rounds); planning uses `Entry.net_ms` (median minus floor) for
segments, so the per-call overhead that a segment pays standalone, and not in the model, is not
counted once per segment. Session creation is not part of any latency (sessions are built, warmed
up, then timed).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx

from .. import ir
from ..latency_db.fingerprint import Fingerprint
from ..latency_db.lookup import measure_group
from ..latency_db.signature import signature
from ..latency_db.store import Entry, LatencyStore
from ..passes import LOSSLESS, PassContext, run_to_fixed_point
from ..shapes import fix_inputs, fixed_view, has_symbolic_dims, resolve
from .segments import DEFAULT_MAX_KERNEL, DEFAULT_MAX_LAYERS, DEFAULT_MAX_MAC_RATIO, Candidates, candidates

WHOLE = "<whole model>"
GROUP_SIZE = 12          # models timed together in one interleaved group
GROUP_BYTES = 1 << 30    # ... and about this much weight data at most
CUT_VERSION = "onnx-depth-cut-v1"
CUT_ROUNDS = 31          # interleaved rounds for cut groups (unless the caller sets rounds)


@dataclass
class ProfileResult:
    """What a profile run found. `entries` maps each structural key (and WHOLE) to its stored
    entry (absent when `measure_missing=False` and the DB has none); `measured` / `cached` /
    `missing` count distinct timing models (by signature; the whole model included)."""

    options: int
    unique: int
    measured: int = 0
    cached: int = 0
    missing: int = 0
    entries: dict[str, Entry] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def whole(self) -> Entry | None:
        return self.entries.get(WHOLE)

    def summary(self) -> str:
        s = f"{self.measured} measured, {self.cached} cached"
        if self.missing:
            s += f", {self.missing} missing"
        return s


def prepare(model: "onnx.ModelProto | str | os.PathLike[str]", *, max_layers: int = DEFAULT_MAX_LAYERS,
            max_kernel: int = DEFAULT_MAX_KERNEL, max_mac_ratio: float = DEFAULT_MAX_MAC_RATIO,
            dense: bool = True, input_shapes=None) -> Candidates:
    """Load, run the LOSSLESS passes, enumerate candidates. A model with symbolic input dims is
    planned at `input_shapes` ({input: dims} or the CLI's ["NAME:D1,D2"]; default: batch 1,
    onnx_depth.shapes); the fixed shapes are kept in ``settings["input_shapes"]`` for
    `profile_candidates`."""
    graph = ir.load(model)
    fixed = None
    if input_shapes is not None or has_symbolic_dims(model):
        fixed = resolve(model, input_shapes)
    run_to_fixed_point(graph, LOSSLESS, PassContext())
    if fixed is not None:
        graph.fixed_shapes = fixed_view(graph, fixed)
    cands = candidates(graph, max_layers=max_layers, max_kernel=max_kernel, max_mac_ratio=max_mac_ratio, dense=dense)
    cands.settings["input_shapes"] = fixed
    return cands


def _ordered_items(cands: Candidates, whole: bool, input_shapes=None) -> list[tuple[str, Callable[[], onnx.ModelProto]]]:
    """(key, model builder) in measuring order: the whole model, the single-layer options in
    chain order, then every other distinct option. With `input_shapes` (onnx_depth.shapes) the
    whole model is timed as a static copy at those shapes (its signature then says which)."""
    items: list[tuple[str, Callable[[], onnx.ModelProto]]] = []
    if whole:
        def whole_model() -> onnx.ModelProto:
            m = ir.to_proto(cands.graph.copy(), check=False)
            if input_shapes is not None:
                m = fix_inputs(m, input_shapes)
            return m

        items.append((WHOLE, whole_model))
    listed: set[str] = set()
    for o in cands.original_plan() + cands.options:
        if o.key not in listed:
            listed.add(o.key)
            items.append((o.key, lambda o=o: cands.model(o)))
    return items


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or 4 * max(1, len(t.float_data)) for t in model.graph.initializer)


def cut_signature(pair_sig: str, a_sig: str, b_sig: str) -> str:
    """Database key of a cut: derived from the pair model's and the two single models'
    signatures (a cut is a difference of three measurements, stored as one entry)."""
    return hashlib.sha256(f"{CUT_VERSION}:{pair_sig}:{a_sig}:{b_sig}".encode()).hexdigest()


class _Groups:
    """Collects models to time and times them in interleaved groups (size / weight bounded)."""

    def __init__(self, store: LatencyStore, fp: Fingerprint, size: int, max_bytes: int, timer_kw: dict,
                 measure: "Callable[..., dict[str, Entry]]" = measure_group) -> None:
        self.store, self.fp, self.size, self.max_bytes, self.timer_kw = store, fp, size, max_bytes, timer_kw
        self.measure = measure
        self.models: dict[str, onnx.ModelProto] = {}
        self.keep: set[str] = set()
        self.bytes = 0

    def fits(self, models: dict[str, onnx.ModelProto]) -> bool:
        new = {k: m for k, m in models.items() if k not in self.models}
        size = sum(_weight_bytes(m) for m in new.values())
        return not self.models or (len(self.models) + len(new) <= self.size and self.bytes + size <= self.max_bytes)

    def add(self, models: dict[str, onnx.ModelProto], store: set[str]) -> None:
        for k, m in models.items():
            if k not in self.models:
                self.models[k] = m
                self.bytes += _weight_bytes(m)
        self.keep |= store

    def run(self, round_ms: "dict[str, list[float]] | None" = None) -> dict[str, Entry]:
        if not self.models:
            return {}
        out = self.measure(self.store, self.models, self.fp, store_only=self.keep, round_ms=round_ms,
                           **self.timer_kw)
        self.models, self.keep, self.bytes = {}, set(), 0
        return out


def profile_candidates(
    cands: Candidates,
    store: LatencyStore,
    fingerprint: Fingerprint,
    *,
    measure_missing: bool = True,
    whole: bool = True,
    cuts: bool = True,
    refresh: bool = False,
    progress: bool = False,
    group_size: int = GROUP_SIZE,
    group_bytes: int = GROUP_BYTES,
    input_shapes=None,
    measure: "Callable[..., dict[str, Entry]] | None" = None,
    **timer_kw: Any,
) -> ProfileResult:
    """Look up (and, if `measure_missing`, time and store) every distinct option model and the
    whole graph (when `whole`), then the cost of every distinct cut (when `cuts`).

    Options are timed in interleaved groups of up to `group_size` models (and about
    `group_bytes` of weights): `latency_db.lookup.measure_group`. A cut at position i is
    cut = keep(i) + keep(i+1) - pair(i) (net of floors), the three models timed in the same
    group and the difference taken round by round (median, p10, p90 over rounds; clamped at 0:
    a boundary costs nothing or something), stored as one derived entry (`cut_signature`).
    `entries[pair_key]` holds it. `timer_kw` goes to `timer.interleaved_ab`
    (warmup, rounds, inner, ...). `input_shapes` (onnx_depth.shapes.InputShapes): the fixed
    shapes of a symbolic graph (its `fixed_shapes` view makes the segment models static).
    `measure` replaces `measure_group` (same signature), e.g.
    `cluster.timing.RemoteTimer.measure_group`, which times each group on a target device
    (`fingerprint` is then the target's)."""
    measure = measure or measure_group
    from tqdm import tqdm

    t0 = time.perf_counter()
    if input_shapes is None:
        input_shapes = cands.settings.get("input_shapes")
    items = _ordered_items(cands, whole, input_shapes)
    pairs: dict[str, tuple[int, int]] = {}
    if cuts:
        for cid, i in cands.cuts():
            pairs.setdefault(cands.pair_key(cid, i), (cid, i))
    res = ProfileResult(options=len(cands.options), unique=len(cands.unique()))
    sig_of: dict[str, str] = {}
    done: dict[str, Entry] = {}  # signature -> entry (structures that time the same model share it)
    missing: set[str] = set()
    groups = _Groups(store, fingerprint, group_size, group_bytes, timer_kw, measure)
    bar = tqdm(total=len(items) + len(pairs), desc="profile", unit="model", disable=not progress, leave=False)

    def look(sig: str) -> bool:
        """Known already (this run or the DB)? Counts cached / missing once per signature."""
        if sig in done or sig in missing:
            return True
        hit = None if refresh else store.get(fingerprint, sig)
        if hit is not None:
            res.cached += 1
            done[sig] = hit
            return True
        if not measure_missing:
            missing.add(sig)
            res.missing += 1
            return True
        return False

    try:
        # ---- options and the whole model
        pending: set[str] = set()
        for key, build in items:
            model = build()
            sig = signature(model)
            sig_of[key] = sig
            if sig in pending or look(sig):
                bar.update(1)
                continue
            one = {sig: model}
            if not groups.fits(one):
                got = groups.run()
                done.update(got)
                res.measured += len(got)
                bar.update(len(got))
                pending.clear()
            groups.add(one, {sig})
            pending.add(sig)
            del model
        got = groups.run()
        done.update(got)
        res.measured += len(got)
        bar.update(len(got))
        # ---- cuts: pair and its two single layers in one group (more rounds: a difference)
        groups = _Groups(store, fingerprint, group_size, group_bytes, {"rounds": CUT_ROUNDS, **timer_kw}, measure)
        todo: list[tuple[str, str, str, str]] = []  # (cut sig, pair sig, a sig, b sig)

        def measure_cuts() -> None:
            rounds: dict[str, list[float]] = {}
            got = groups.run(rounds)
            for csig, psig, asig, bsig in todo:
                a, b, p = got[asig], got[bsig], got[psig]
                # relative to the pair, round by round: a slowdown that hits the three models of a
                # round alike cancels; then scaled by the pair's net median
                fa, fb, fp = (e.floor_ms or 0.0 for e in (a, b, p))
                ra, rb, rp = (np.asarray(rounds[k]) for k in (asig, bsig, psig))
                rel = (ra - fa + rb - fb) / np.maximum(rp - fp, 1e-9) - 1.0
                per_round = rel * p.net_ms
                lo, med, hi = (max(float(v), 0.0) for v in np.percentile(per_round, [10, 50, 90]))
                e = Entry(len(per_round), med, lo, hi, 0.0, "", f"cut: {a.description} | {b.description}")
                store.put(fingerprint, csig, e)
                done[csig] = e
                res.measured += 1
            bar.update(len(todo))
            todo.clear()

        queued: set[str] = set()
        for pkey, (cid, i) in pairs.items():
            pair = cands.pair_model(cid, i)
            a, b = cands.model(cands.keep(cid, i)), cands.model(cands.keep(cid, i + 1))
            psig, asig, bsig = signature(pair), signature(a), signature(b)
            csig = cut_signature(psig, asig, bsig)
            sig_of[pkey] = csig
            if csig in queued or look(csig):
                bar.update(1)
                continue
            triple = {psig: pair, asig: a, bsig: b}
            if not groups.fits(triple):
                measure_cuts()
            groups.add(triple, set())  # only the derived cut is stored
            todo.append((csig, psig, asig, bsig))
            queued.add(csig)
        measure_cuts()
    finally:
        bar.close()
    res.signatures = sig_of
    res.entries = {k: done[s] for k, s in sig_of.items() if s in done}
    res.seconds = time.perf_counter() - t0
    return res


PREPARE_OPTIONS = ("max_layers", "max_kernel", "max_mac_ratio", "dense")  # profile_model's keywords for prepare


def profile_model(model: "onnx.ModelProto | str | os.PathLike[str]", store: LatencyStore, fingerprint: Fingerprint,
                  **kw: Any) -> tuple[Candidates, ProfileResult]:
    """`prepare` (with the keywords named in PREPARE_OPTIONS) then `profile_candidates` (with
    the others)."""
    cands = prepare(model, **{k: kw.pop(k) for k in PREPARE_OPTIONS if k in kw})
    return cands, profile_candidates(cands, store, fingerprint, **kw)


def progress_wanted(quiet: bool) -> bool:
    """A progress bar only on an interactive terminal and without -q."""
    return not quiet and sys.stderr is not None and sys.stderr.isatty()


__all__ = ["WHOLE", "ProfileResult", "prepare", "profile_candidates", "profile_model", "progress_wanted"]
