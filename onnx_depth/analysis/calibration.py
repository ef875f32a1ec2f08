"""Calibration data: real inputs for measuring a model, streamed in memory-bounded batches.

Accepted sources (``load_calibration(PATH, model)``):

* ``.npz``: keys are the model's input names; a single-input model also accepts an archive with
  exactly one array under any key (``np.savez(path, x)`` writes ``arr_0``). Members are read
  *incrementally* from the zip stream (compressed or not), so an archive never has to fit in
  memory.
* ``.npy``: one array for a single-input model, memory-mapped.
* a folder of ``.npy`` files (single-input model; files sorted by name, each one sample or a
  batch of samples, concatenated along axis 0), or of ``.npz`` files (any model; each holds the
  input names, concatenated in name order).
* in memory (``from_arrays``): an array (single-input model) or a ``{name: array}`` mapping.

Every array is ``[N, *sample]`` with the model's input rank; a single sample without the batch
axis (rank one less) counts as N = 1. Static non-batch dims must match the model; float arrays
are cast to the input's float dtype (likewise ints to ints); a float/int/bool kind mismatch, a
missing or unknown input name, different sample counts or a wrong shape is an
``onnx_depth.errors.InputError`` with a one-line message.

Batching: a model whose batch dim is a fixed number B gets feeds of exactly B samples (B = 1 is
the common case: one sample per run; N must be a multiple of B); a dynamic batch dim gets feeds
of up to ``batch_size`` samples. Reading is lazy: one batch of inputs is in memory at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import onnx

from .. import runtime
from ..errors import InputError
from ..ir import Graph
from ..runtime import TensorSpec
from .calibration_sources import (ArraySource, ConcatSource, Source, TakeSource, Unbatched, WholeSource, npy_source,
                                  npz_sources)

__all__ = ["Calibration", "Split", "load_calibration", "from_arrays", "as_calibration", "model_input_specs",
           "split_fit_validation", "VALIDATION_FRACTION", "MIN_VALIDATION", "MIN_FIT"]


# ------------------------------------------------------------------------------- the data set
def model_input_specs(model) -> list[TensorSpec]:
    """Input specs (name, shape with symbols, dtype) of a ModelProto, path, Graph or session."""
    if isinstance(model, (list, tuple)) and all(isinstance(s, TensorSpec) for s in model):
        return list(model)
    if isinstance(model, Graph):
        specs = []
        for v in model.inputs:
            specs.append(_spec_from_value_info(v))
        return specs
    if hasattr(model, "get_inputs"):
        return runtime.input_specs(model)
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model), load_external_data=False)
    if isinstance(model, onnx.ModelProto):
        inits = {t.name for t in model.graph.initializer}
        return [_spec_from_value_info(v) for v in model.graph.input if v.name not in inits]
    raise TypeError(f"cannot read input specs from {type(model).__name__}")


def _spec_from_value_info(v: onnx.ValueInfoProto) -> TensorSpec:
    tt = v.type.tensor_type
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype(np.float32)
    return TensorSpec(v.name, tuple(dims), dtype)


def _static(d) -> bool:
    return isinstance(d, int) and d > 0


@dataclass
class Calibration:
    """Samples for every model input, read lazily. Iterate ``batches()`` for feeds."""

    specs: list[TensorSpec]
    sources: dict[str, Source]
    start: int = 0
    stop: int | None = None
    origin: str = "<arrays>"

    def __post_init__(self) -> None:
        self._validate()

    # ---- facts
    @property
    def total(self) -> int:
        return next(iter(self.sources.values())).n

    def __len__(self) -> int:
        stop = self.total if self.stop is None else min(self.stop, self.total)
        return max(0, stop - self.start)

    @property
    def fixed_batch(self) -> int | None:
        """The model's fixed batch size (all inputs agree), or None when the batch dim is dynamic."""
        fixed = {s.shape[0] for s in self.specs if s.shape and _static(s.shape[0])}
        return fixed.pop() if len(fixed) == 1 else None

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample over all inputs (at the model's dtypes)."""
        total = 0
        for s in self.specs:
            src = self.sources[s.name]
            total += int(np.prod(src.shape[1:], dtype=np.int64)) * s.dtype.itemsize
        return total

    # ---- slicing
    def subset(self, start: int, stop: int | None = None) -> "Calibration":
        """Samples start..stop (relative to this set), e.g. a calibration/evaluation split."""
        n = len(self)
        a = min(max(0, start), n)
        b = n if stop is None else min(max(a, stop), n)
        fb = self.fixed_batch or 1
        if (b - a) % fb:
            raise InputError(f"{self.origin}: subset of {b - a} samples is not a multiple of the model's fixed batch {fb}")
        return Calibration(self.specs, self.sources, self.start + a, self.start + b, self.origin)

    def split(self, n_first: int) -> tuple["Calibration", "Calibration"]:
        return self.subset(0, n_first), self.subset(n_first)

    # ---- iteration
    def batches(self, batch_size: int | None = None, *, skip: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Feeds {input name: array}. Fixed-batch models: exactly that batch per feed; dynamic:
        ``batch_size`` samples (default 1; the last feed may be smaller). ``skip`` samples first."""
        fixed = self.fixed_batch
        bs = fixed if fixed is not None else max(1, int(batch_size or 1))
        n = len(self)
        pos = skip
        while pos < n:
            stop = min(n, pos + bs)
            yield {s.name: self._read(s, self.start + pos, self.start + stop) for s in self.specs}
            pos = stop

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.batches()

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything at once (small sets only)."""
        return {s.name: self._read(s, self.start, self.start + len(self)) for s in self.specs}

    def _read(self, spec: TensorSpec, a: int, b: int) -> np.ndarray:
        arr = self.sources[spec.name].read(a, b)
        if arr.dtype != spec.dtype:
            arr = arr.astype(spec.dtype)
        return np.ascontiguousarray(arr)

    # ---- validation
    def _validate(self) -> None:
        names = [s.name for s in self.specs]
        missing = [n for n in names if n not in self.sources]
        extra = [k for k in self.sources if k not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
            if extra:
                parts.append(f"unknown name(s) {', '.join(map(repr, extra))}")
            raise InputError(f"{self.origin}: calibration data does not match the model inputs ({'; '.join(parts)}; model inputs: {', '.join(map(repr, names))})")
        counts = {k: s.n for k, s in self.sources.items()}
        if len(set(counts.values())) > 1:
            raise InputError(f"{self.origin}: inputs have different sample counts: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        if not counts or next(iter(counts.values())) == 0:
            raise InputError(f"{self.origin}: calibration data holds no samples")
        for spec in self.specs:
            src = self.sources[spec.name]
            if len(src.shape) != len(spec.shape):
                raise InputError(
                    f"{self.origin}: input {spec.name!r} has shape {src.shape[1:]} per sample (array {src.shape}), "
                    f"model expects rank {len(spec.shape)} {_fmt(spec.shape)}"
                )
            for axis, (want, got) in enumerate(zip(spec.shape[1:], src.shape[1:]), start=1):
                if _static(want) and want != got:
                    raise InputError(
                        f"{self.origin}: input {spec.name!r} has shape {tuple(src.shape)}, model expects {_fmt(spec.shape)} (axis {axis}: {got} != {want})"
                    )
            if _kind(src.dtype) != _kind(spec.dtype):
                raise InputError(
                    f"{self.origin}: input {spec.name!r} has dtype {src.dtype}, model expects {spec.dtype} (convert the data first)"
                )
        fb = self.fixed_batch
        if fb is not None and self.total % fb:
            raise InputError(f"{self.origin}: {self.total} samples is not a multiple of the model's fixed batch size {fb}")


def _kind(dtype: np.dtype) -> str:
    k = np.dtype(dtype).kind
    return {"f": "float", "i": "int", "u": "int", "b": "bool", "c": "complex"}.get(k, k)


def _fmt(shape) -> str:
    return "[" + ", ".join("?" if not _static(d) else str(d) for d in shape) + "]"


# ------------------------------------------------------------------------------- loaders
def _wrap(src: Source, spec: TensorSpec) -> Source:
    """Treat an array one rank short of the model input as a single sample."""
    if len(src.shape) == len(spec.shape) - 1:
        if isinstance(src, ArraySource):
            return WholeSource(src.array, src.label)
        return Unbatched(src)
    return src


def from_arrays(data, model, *, origin: str = "<arrays>") -> Calibration:
    """Calibration from an array (single-input model) or a {input name: array} mapping."""
    specs = model_input_specs(model)
    if isinstance(data, np.ndarray):
        if len(specs) != 1:
            raise InputError(f"{origin}: one array given, but the model has {len(specs)} inputs ({', '.join(s.name for s in specs)}); pass a mapping")
        data = {specs[0].name: data}
    if not isinstance(data, Mapping):
        raise InputError(f"{origin}: calibration data must be an array or a mapping of input name to array")
    if len(specs) == 1 and len(data) == 1 and specs[0].name not in data:
        data = {specs[0].name: next(iter(data.values()))}
    by_name = {s.name: s for s in specs}
    sources: dict[str, Source] = {}
    for k, v in data.items():
        a = np.asarray(v)
        if a.ndim == 0:
            raise InputError(f"{origin}: array {k!r} is a scalar, not a batch of samples")
        src = ArraySource(a, k)
        sources[k] = _wrap(src, by_name[k]) if k in by_name else src
    return reject_non_finite(Calibration(specs, sources, origin=origin))


def reject_non_finite(cal: Calibration, chunk: int = 256) -> Calibration:
    """Refuse calibration data holding NaN or +-Inf (InputError, exit 2): every criterion and
    fidelity measure computed on it would be meaningless (NaN compares false, so every
    activation looks "linear"). Streams the data in chunks of `chunk` samples; returns `cal`."""
    floats = [s for s in cal.specs if np.issubdtype(s.dtype, np.floating)]
    if not floats:
        return cal
    pos = 0
    for feed in cal.batches(chunk):
        for s in floats:
            a = feed[s.name]
            bad = ~np.isfinite(a)
            if bad.any():
                row = pos + int(np.argwhere(bad)[0][0])
                kind = "NaN" if np.isnan(a[bad]).any() else "Inf"
                raise InputError(f"{cal.origin}: input {s.name!r} holds {kind} (first at sample {row}, "
                                 f"{int(bad.sum())} non-finite value(s) in that batch); clean the data first")
        pos += len(next(iter(feed.values()))) if feed else 0
    return cal


def load_calibration(path: "str | os.PathLike[str]", model) -> Calibration:
    """Open calibration data at ``path`` (.npz, .npy, or a folder of .npy/.npz) for ``model``
    (ModelProto, path, Graph, session or a list of TensorSpec); NaN/Inf refused."""
    return reject_non_finite(_open_calibration(path, model))


def _open_calibration(path: "str | os.PathLike[str]", model) -> Calibration:
    p = Path(path)
    specs = model_input_specs(model)
    by_name = {s.name: s for s in specs}
    origin = str(p)
    if not p.exists():
        raise InputError(f"{p}: no such calibration file or folder")
    if p.is_dir():
        npy = sorted(p.glob("*.npy"))
        npz = sorted(p.glob("*.npz"))
        if npy and npz:
            raise InputError(f"{p}: mixes .npy and .npz files; use one kind")
        if npy:
            if len(specs) != 1:
                raise InputError(f"{p}: a folder of .npy files feeds a single-input model; this one has inputs {', '.join(s.name for s in specs)} (use .npz files)")
            spec = specs[0]
            parts = [_wrap(npy_source(f, f.name), spec) for f in npy]
            return Calibration(specs, {spec.name: ConcatSource(parts, str(p))}, origin=origin)
        if npz:
            per_name: dict[str, list[Source]] = {}
            for f in npz:
                srcs = npz_sources(f)
                if len(specs) == 1 and len(srcs) == 1:
                    srcs = {specs[0].name: next(iter(srcs.values()))}
                for k, s in srcs.items():
                    per_name.setdefault(k, []).append(_wrap(s, by_name[k]) if k in by_name else s)
            counts = {k: len(v) for k, v in per_name.items()}
            if len(set(counts.values())) > 1:
                raise InputError(f"{p}: not every .npz file holds every input ({counts})")
            return Calibration(specs, {k: ConcatSource(v, f"{p}[{k}]") for k, v in per_name.items()}, origin=origin)
        raise InputError(f"{p}: folder holds no .npy or .npz files")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        srcs = npz_sources(p)
        if len(specs) == 1 and len(srcs) == 1:
            srcs = {specs[0].name: next(iter(srcs.values()))}
        srcs = {k: (_wrap(s, by_name[k]) if k in by_name else s) for k, s in srcs.items()}
        return Calibration(specs, srcs, origin=origin)
    if suffix == ".npy":
        if len(specs) != 1:
            raise InputError(f"{p}: one .npy array given, but the model has {len(specs)} inputs ({', '.join(s.name for s in specs)}); use an .npz keyed by input name")
        return Calibration(specs, {specs[0].name: _wrap(npy_source(p, p.name), specs[0])}, origin=origin)
    raise InputError(f"{p}: calibration data must be .npz, .npy or a folder of them (got {p.suffix or 'no extension'})")


def as_calibration(data, model) -> Calibration:
    """Calibration from a Calibration (returned as is), a path, an array or a mapping."""
    if isinstance(data, Calibration):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_calibration(data, model)
    return from_arrays(data, model)


# ------------------------------------------------------------------------------- fit / validation split
VALIDATION_FRACTION = 0.25  # share of the calibration samples held back for validation by default
MIN_VALIDATION = 16         # never fewer validation samples than this (else: no split, see below)
MIN_FIT = 16                # ... and never fewer fit samples
SPLIT_BLOCKS = 16           # the data is cut into this many contiguous blocks before drawing


@dataclass
class Split:
    """Calibration data cut into the part the refit is fitted on (`fit`) and the part every
    reported fidelity, importance and --max-error is measured on (`validation`). `held_out` is
    False when the set was too small to split: then both are the whole set and the fidelity is
    measured on fitted data (the report says so)."""

    fit: Calibration
    validation: Calibration
    held_out: bool
    how: str

    def to_dict(self) -> dict:
        return {"fit_samples": len(self.fit), "validation_samples": len(self.validation),
                "held_out": self.held_out, "how": self.how}


def _take(cal: Calibration, runs: list[tuple[int, int]]) -> Calibration:
    off = cal.start
    srcs = {k: TakeSource(s, [(a + off, b + off) for a, b in runs]) for k, s in cal.sources.items()}
    return Calibration(cal.specs, srcs, origin=cal.origin)


def split_fit_validation(cal: Calibration, validation: "Calibration | None" = None, *,
                         fraction: float = VALIDATION_FRACTION, seed: int = 0,
                         min_validation: int = MIN_VALIDATION, min_fit: int = MIN_FIT,
                         blocks: int = SPLIT_BLOCKS, groups=None) -> Split:
    """Split calibration data into a fit part and a validation part.

    With a separate `validation` set (``--validation DATA``) the whole of `cal` is fitted on and
    `validation` is measured on. With `groups` (one label per sample: the photo, clip or document
    it comes from) whole groups are held back: a seeded random choice of groups, about `fraction`
    of the samples and at least `min_validation`, so that no source has samples on both sides.
    Otherwise the N samples are cut into `blocks` contiguous blocks (multiples of the model's
    fixed batch) and whole blocks are drawn the same way: data is usually stored by source (the
    crops of one photo, the frames of one clip), and samples of one source on both sides would
    make the validation fidelity as optimistic as the fitted one. When N < min_fit +
    min_validation nothing is held back (`held_out` False)."""
    if validation is not None:
        return Split(cal, validation, True, f"separate validation set ({validation.origin})")
    n = len(cal)
    fb = cal.fixed_batch or 1
    if n < min_fit + min_validation:
        return Split(cal, cal, False, f"{n} samples < {min_fit} fit + {min_validation} validation: nothing held back, "
                                      "fidelity is measured on the data the refit was fitted to")
    if groups is not None:
        labels = np.asarray(groups)
        if labels.shape != (n,):
            raise InputError(f"{cal.origin}: {labels.size} group labels for {n} samples")
        names, idx = np.unique(labels, return_inverse=True)
        units = [np.flatnonzero(idx == g) for g in range(len(names))]
        if fb > 1 and any(len(u) % fb for u in units):
            raise InputError(f"{cal.origin}: every group must hold a multiple of the model's fixed batch {fb}")
        what = "groups"
    else:
        k = max(2, min(blocks, n // fb))
        edges = [round(i * (n // fb) / k) * fb for i in range(k + 1)]
        edges[-1] = n
        units = [np.arange(edges[b], edges[b + 1]) for b in range(k)]
        what = "contiguous blocks"
    want = max(min_validation, int(round(fraction * n)))
    chosen, got = set(), 0
    for b in np.random.default_rng(seed).permutation(len(units)):
        if got >= want:
            break
        chosen.add(int(b))
        got += len(units[b])
    if n - got < min_fit or len(chosen) == len(units):
        return Split(cal, cal, False, f"{n} samples: cannot hold back {want} and keep {min_fit} to fit on; "
                                      "fidelity is measured on fitted data")
    val = np.sort(np.concatenate([units[b] for b in chosen]))
    fit = np.sort(np.concatenate([u for b, u in enumerate(units) if b not in chosen]))
    return Split(_take(cal, _runs(fit)), _take(cal, _runs(val)), True,
                 f"{got} of {n} samples held back ({len(chosen)} of {len(units)} {what}, seed {seed})")


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted row indices as [(start, stop), ...] runs of consecutive rows."""
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(rows, cut)]
