"""Salvage a damaged latency database into a fresh file.

SQLite cannot read past a damaged header or a broken b-tree page, so this module reads the file
format itself: every page (with the latest committed WAL frame of each page laid over it) is
parsed as a b-tree page, and every leaf cell whose record has the shape of an `entries` row (or
a `fingerprints` row) is kept. Freelist pages are skipped when the header is readable (and the
store writes with `secure_delete`, so freed content is zeroed anyway). The index cells of the
`entries` primary key (leaf and interior) tell which keys existed: a count of rows lost.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from .entry import Entry, LatencyDBCorrupt, LatencyDBError, utc_now
from .store import SQLITE_MAGIC, LatencyStore, default_path

_PAGE_SIZES = (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512)


@dataclass(frozen=True)
class RepairResult:
    """What `repair` did. `lost` counts keys seen in the primary-key index whose rows could not
    be read (a lower bound when index pages are damaged too). `backup` is the `.corrupt` copy."""

    path: str
    needed: bool
    salvaged: int
    lost: int
    damaged_pages: int
    backup: str | None

    def summary(self) -> str:
        if not self.needed:
            return f"{self.path}: healthy, {self.salvaged} entries; nothing to repair"
        return (f"{self.path}: salvaged {self.salvaged} entries, lost {self.lost}"
                f" ({self.damaged_pages} unreadable pages); damaged file kept as {self.backup}")


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    v = 0
    for k in range(9):
        if i >= len(buf):
            raise ValueError("varint past end")
        b = buf[i]
        i += 1
        if k == 8:
            return (v << 8) | b, i
        v = (v << 7) | (b & 0x7F)
        if b < 0x80:
            return v, i
    raise AssertionError("unreachable")


def _record(payload: bytes) -> list[Any]:
    """Decode an SQLite record (header of serial types, then values)."""
    hsize, i = _varint(payload, 0)
    if hsize > len(payload) or hsize < 1:
        raise ValueError("bad record header")
    types = []
    while i < hsize:
        t, i = _varint(payload, i)
        types.append(t)
    pos, out = hsize, []
    sizes = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8, 7: 8, 8: 0, 9: 0}
    for t in types:
        if t in (10, 11):
            raise ValueError("reserved serial type")
        n = sizes[t] if t < 12 else (t - 12) // 2
        chunk = payload[pos:pos + n]
        if len(chunk) != n:
            raise ValueError("record past end")
        pos += n
        if t == 0:
            out.append(None)
        elif t in (8, 9):
            out.append(t - 8)
        elif t == 7:
            out.append(struct.unpack(">d", chunk)[0])
        elif t < 7:
            out.append(int.from_bytes(chunk, "big", signed=True))
        elif t % 2 == 0:
            out.append(bytes(chunk))
        else:
            out.append(chunk.decode("utf-8"))
    return out


def _cells(page: bytes, hdr: int, usable: int) -> Iterator[tuple[int, list[Any] | None]]:
    """(page type, record or None when unreadable/overflowing) for each cell that holds a
    record: table leaf cells and index cells (index interior cells hold keys too)."""
    kind = page[hdr]
    if kind not in (0x0D, 0x0A, 0x02):
        return
    ncells = struct.unpack_from(">H", page, hdr + 3)[0]
    ptrs = hdr + (12 if kind == 0x02 else 8)
    if ptrs + 2 * ncells > len(page):
        return
    for k in range(ncells):
        off = struct.unpack_from(">H", page, ptrs + 2 * k)[0]
        if kind == 0x02:
            off += 4  # left child page number
        try:
            size, i = _varint(page, off)
            if kind == 0x0D:
                _rowid, i = _varint(page, i)
                local_max = usable - 35
            else:
                local_max = (usable - 12) * 64 // 255 - 23
            if size > local_max or i + size > usable:
                yield kind, None  # overflow chain or garbage: not worth chasing for tiny rows
                continue
            yield kind, _record(page[i:i + size])
        except (ValueError, UnicodeDecodeError, KeyError):
            yield kind, None


def _as_entry(rec: list[Any]) -> tuple[str, str, Entry] | None:
    """An `entries` row (7, 8 or 9 columns: v1, v2, v3 layouts) or None."""
    if not 7 <= len(rec) <= 9:
        return None
    fp, sig, samples, med, p10, p90, when = rec[:7]
    floor = rec[7] if len(rec) > 7 else None
    desc = rec[8] if len(rec) > 8 else None
    if not (isinstance(fp, str) and fp and isinstance(sig, str) and sig and isinstance(samples, int)):
        return None
    if not all(isinstance(v, (int, float)) for v in (med, p10, p90)):
        return None
    if not (floor is None or isinstance(floor, (int, float))) or not (desc is None or isinstance(desc, str)):
        return None
    try:
        datetime.fromisoformat(str(when))
        return fp, sig, Entry(samples, med, p10, p90, floor, when, desc)
    except (ValueError, LatencyDBError):
        return None


def _wal_pages(path: Path, page_size: int) -> dict[int, bytes]:
    """Latest committed frame of each page in `path-wal` (salts must match the WAL header)."""
    try:
        data = Path(os.fspath(path) + "-wal").read_bytes()
    except OSError:
        return {}
    if len(data) < 32 or struct.unpack_from(">I", data, 0)[0] not in (0x377F0682, 0x377F0683):
        return {}
    psize = struct.unpack_from(">I", data, 8)[0] or 65536
    if psize != page_size:
        return {}
    salts = data[16:24]
    pages: dict[int, bytes] = {}
    pending: dict[int, bytes] = {}
    off = 32
    while off + 24 + psize <= len(data):
        pno, commit = struct.unpack_from(">II", data, off)
        if data[off + 8:off + 16] != salts:
            break
        pending[pno] = data[off + 24:off + 24 + psize]
        if commit:
            pages.update(pending)
            pending = {}
        off += 24 + psize
    return pages


def _freelist(data: bytes, page_size: int) -> set[int]:
    pages: set[int] = set()
    trunk = struct.unpack_from(">I", data, 32)[0]
    npages = len(data) // page_size
    while trunk and trunk not in pages and trunk <= npages:
        pages.add(trunk)
        base = (trunk - 1) * page_size
        nxt, n = struct.unpack_from(">II", data, base)
        if n > (page_size - 8) // 4:
            break
        pages.update(struct.unpack_from(f">{n}I", data, base + 8))
        trunk = nxt
    return pages


def scan(path: str | os.PathLike[str]) -> tuple[dict[tuple[str, str], Entry], dict[str, str], int, int]:
    """Read what can be read: ({(fp, sig): entry}, {fp key: details json}, keys lost, bad pages)."""
    path = Path(path)
    data = path.read_bytes()
    header_ok = data.startswith(SQLITE_MAGIC) and len(data) >= 100
    if header_ok:
        raw = struct.unpack_from(">H", data, 16)[0]
        sizes = (65536 if raw == 1 else raw,)
        reserved = data[20]
    else:
        sizes, reserved = _PAGE_SIZES, 0
    best: tuple[dict[tuple[str, str], Entry], dict[str, str], int, int] = ({}, {}, 0, 0)
    for page_size in sizes:
        if page_size < 512 or page_size & (page_size - 1):
            continue
        result = _scan_pages(path, data, page_size, page_size - reserved, header_ok)
        if len(result[0]) > len(best[0]) or not best[0]:
            best = result
        if best[0]:  # the store always writes 4096-byte pages, tried first
            break
    return best


def _scan_pages(path: Path, data: bytes, page_size: int, usable: int, header_ok: bool
                ) -> tuple[dict[tuple[str, str], Entry], dict[str, str], int, int]:
    pages = {n + 1: data[n * page_size:(n + 1) * page_size] for n in range(len(data) // page_size)}
    pages.update(_wal_pages(path, page_size))
    skip = _freelist(data, page_size) if header_ok else set()
    entries: dict[tuple[str, str], Entry] = {}
    fps: dict[str, str] = {}
    index_keys: set[tuple[str, str]] = set()
    bad_pages = 0
    for pno, page in sorted(pages.items()):
        if pno in skip or len(page) < page_size:
            continue
        hdr = 100 if pno == 1 else 0
        if page[hdr] not in (0x0D, 0x0A, 0x05, 0x02):
            if any(page):
                bad_pages += 1
            continue
        for kind, rec in _cells(page, hdr, usable):
            if rec is None:
                continue
            if kind in (0x0A, 0x02):
                if len(rec) == 3 and isinstance(rec[0], str) and isinstance(rec[1], str) and isinstance(rec[2], int):
                    index_keys.add((rec[0], rec[1]))
                continue
            row = _as_entry(rec)
            if row is not None:
                old = entries.get(row[:2])
                if old is None or row[2].measured_at > old.measured_at:
                    entries[row[:2]] = row[2]
            elif len(rec) == 3 and all(isinstance(v, str) for v in rec) and rec[1].startswith("{"):
                fps.setdefault(rec[0], rec[1])
    lost = len(index_keys - set(entries))
    return entries, fps, lost, bad_pages


def _healthy(path: Path) -> int | None:
    """Entry count if the file opens and checks fine, else None."""
    try:
        with LatencyStore(path, create=False) as s:
            return int(s.stats()["entries"])
    except LatencyDBCorrupt:
        return None


def repair(path: str | os.PathLike[str] | None = None, *, force: bool = False) -> RepairResult:
    """Rebuild a damaged database: salvage readable rows into a fresh file, keep the damaged one
    as `<path>.corrupt`, and swap the fresh file in atomically. A healthy file is left alone
    unless `force`. Run it while no other process uses the database."""
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        raise LatencyDBError(f"no latency database at {path}")
    if not force:
        n = _healthy(path)
        if n is not None:
            return RepairResult(os.fspath(path), False, n, 0, 0, None)
    entries, fps, lost, bad_pages = scan(path)
    if not entries and not fps and not _looks_like_ours(path):
        raise LatencyDBError(f"{path} is not an onnx-depth latency database (nothing to salvage); "
                             "left untouched")
    with tempfile.TemporaryDirectory(prefix=".onnx-depth-repair-", dir=path.parent) as work:
        return _rebuild(path, Path(work) / "fresh.sqlite", entries, fps, lost, bad_pages)


def _looks_like_ours(path: Path) -> bool:
    """The file (or its WAL) holds our schema text: a damaged latency DB, not somebody's file."""
    for p in (path, Path(os.fspath(path) + "-wal")):
        try:
            if b"CREATE TABLE entries" in p.read_bytes():
                return True
        except OSError:
            pass
    return False


def _rebuild(path: Path, tmp: Path, entries, fps, lost: int, bad_pages: int) -> RepairResult:
    """Write the salvaged rows into a fresh file `tmp` (in a private folder beside `path`), keep
    the damaged file as `<path>.corrupt[.N]` and move the fresh file over `path`."""
    with LatencyStore(tmp) as fresh:
        fresh.put_many([(fp, sig, e) for (fp, sig), e in entries.items()])
        with fresh._write() as c:  # noqa: SLF001 - same package
            for key, details in fps.items():
                try:
                    parsed = json.loads(details)
                except ValueError:
                    continue
                when = min((e.measured_at for (f, _), e in entries.items() if f == key), default=utc_now())
                LatencyStore._record_fingerprint(c, key, parsed, when)  # noqa: SLF001
        fresh._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # noqa: SLF001
    backup = path.with_name(path.name + ".corrupt")
    n = 1
    while backup.exists() or backup.is_symlink():  # never overwrite (or write through) an earlier backup
        backup, n = path.with_name(f"{path.name}.corrupt.{n}"), n + 1
    shutil.copy2(path, backup)
    for suffix in ("-wal", "-shm"):
        side = Path(os.fspath(path) + suffix)
        if side.exists():
            if suffix == "-wal":
                shutil.copy2(side, Path(os.fspath(backup) + suffix))
            side.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    os.replace(tmp, path)
    return RepairResult(os.fspath(path), True, len(entries), lost, bad_pages, os.fspath(backup))


__all__ = ["RepairResult", "repair", "scan"]
