"""Readers of calibration arrays: a read-only [N, *sample] array readable in row ranges, from
memory, a memory-mapped .npy, one member of an .npz streamed from the zip (compressed or not),
several concatenated (a folder), a single sample without its batch axis, or chosen row runs of
another source (a fit / validation split). Used by `analysis.calibration` only; errors are
`InputError` with a one-line message."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["Source", "ArraySource", "NpzMemberSource", "ConcatSource", "Unbatched", "WholeSource", "TakeSource",
           "npz_sources", "npy_source"]

class Source:
    """A read-only [N, *sample] array readable in row ranges."""

    n: int
    shape: tuple[int, ...]  # full shape, N first
    dtype: np.dtype
    label: str

    def read(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class ArraySource(Source):
    def __init__(self, array: np.ndarray, label: str) -> None:
        self.array = array
        self.n = int(array.shape[0])
        self.shape = tuple(int(d) for d in array.shape)
        self.dtype = array.dtype
        self.label = label

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array[start:stop])


class NpzMemberSource(Source):
    """One member of an .npz read row range by row range from the (possibly deflated) zip stream.

    Reads must go forward; a backward read reopens the member (only a new pass over the data
    does that)."""

    def __init__(self, path: Path, member: str, label: str) -> None:
        self.path, self.member, self.label = path, member, label
        with zipfile.ZipFile(path) as zf, zf.open(member) as f:
            shape, fortran, dtype = self._header(f)
        if fortran and len(shape) > 1:
            raise InputError(f"{path}: array {label!r} is stored in Fortran order; save it C-contiguous")
        if dtype.hasobject:
            raise InputError(f"{path}: array {label!r} holds Python objects, not numbers")
        if not shape:
            raise InputError(f"{path}: array {label!r} is a scalar, not a batch of samples")
        self.shape, self.dtype = tuple(int(d) for d in shape), dtype
        self.n = self.shape[0]
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        self._zf: zipfile.ZipFile | None = None
        self._f = None
        self._pos = 0

    @staticmethod
    def _header(f):
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        return np.lib.format.read_array_header_2_0(f)

    def _open(self) -> None:
        self.close()
        self._zf = zipfile.ZipFile(self.path)
        self._f = self._zf.open(self.member)
        self._header(self._f)
        self._pos = 0

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        if self._zf is not None:
            self._zf.close()
        self._f = self._zf = None

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._f is None or start < self._pos:
            self._open()
        if start > self._pos:
            self._skip((start - self._pos) * self.row_bytes)
            self._pos = start
        nbytes = (stop - start) * self.row_bytes
        data = self._f.read(nbytes)
        if len(data) != nbytes:
            raise InputError(f"{self.path}: array {self.label!r} is truncated")
        self._pos = stop
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))

    def _skip(self, nbytes: int) -> None:
        while nbytes > 0:
            chunk = self._f.read(min(nbytes, 1 << 24))
            if not chunk:
                raise InputError(f"{self.path}: array {self.label!r} is truncated")
            nbytes -= len(chunk)


class ConcatSource(Source):
    """Several sources concatenated along axis 0 (a folder of files)."""

    def __init__(self, parts: list[Source], label: str) -> None:
        self.parts, self.label = parts, label
        first = parts[0]
        for p in parts[1:]:
            if p.shape[1:] != first.shape[1:]:
                raise InputError(f"{p.label}: sample shape {p.shape[1:]} differs from {first.label}'s {first.shape[1:]}")
            if p.dtype != first.dtype:
                raise InputError(f"{p.label}: dtype {p.dtype} differs from {first.label}'s {first.dtype}")
        self.offsets = np.cumsum([0] + [p.n for p in parts])
        self.n = int(self.offsets[-1])
        self.shape = (self.n, *first.shape[1:])
        self.dtype = first.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        out = []
        for i, p in enumerate(self.parts):
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                out.append(p.read(a - lo, b - lo))
        return out[0] if len(out) == 1 else np.concatenate(out)


class Unbatched(Source):
    """A single sample stored without its batch axis: N = 1."""

    def __init__(self, inner: Source) -> None:
        self.inner, self.label = inner, inner.label
        self.n = 1
        self.shape = (1, *inner.shape)
        self.dtype = inner.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.inner.read(0, self.inner.n)[None][start:stop]


class WholeSource(Source):
    """A source whose stored shape is one sample (rank = model rank - 1)."""

    def __init__(self, array: np.ndarray, label: str) -> None:
        self.array, self.label = array, label
        self.n = 1
        self.shape = (1, *array.shape)
        self.dtype = array.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.array)[None][start:stop]



class TakeSource(Source):
    """Rows `runs` ([(a, b), ...] in increasing order) of another source, concatenated."""

    def __init__(self, inner: Source, runs: list[tuple[int, int]]) -> None:
        self.inner, self.runs, self.label = inner, runs, inner.label
        self.offsets = np.cumsum([0] + [b - a for a, b in runs])
        self.n = int(self.offsets[-1])
        self.shape = (self.n, *inner.shape[1:])
        self.dtype = inner.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        out = []
        for i, (a, b) in enumerate(self.runs):
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            s, e = max(start, lo), min(stop, hi)
            if s < e:
                out.append(self.inner.read(a + s - lo, a + e - lo))
        if not out:
            return self.inner.read(0, 0)
        return out[0] if len(out) == 1 else np.concatenate(out)




def npz_sources(path: Path) -> dict[str, Source]:
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if m.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{path}: not a readable .npz archive ({e})") from e
    out: dict[str, Source] = {}
    for m in members:
        key = m[: -len(".npy")]
        try:
            out[key] = NpzMemberSource(path, m, key)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken member
            raise InputError(f"{path}: array {key!r} cannot be read ({e})") from e
    if not out:
        raise InputError(f"{path}: the archive holds no arrays")
    return out


def npy_source(path: Path, label: str) -> Source:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{path}: cannot be memory-mapped ({e})") from e
    except OSError as e:
        raise InputError(f"{path}: not a readable .npy file ({e})") from e
    if a.ndim == 0:
        raise InputError(f"{path}: holds a scalar, not a batch of samples")
    return ArraySource(a, label)
