"""The latency database's exchange files: every entry (and the fingerprints' details) written
to, and read back from, .json (`{"format": EXPORT_FORMAT, "schema_version", "fingerprints",
"entries"}`) or .csv (one row per entry, the fingerprint's details as a JSON column). Reading
validates every record (one-line `LatencyDBError` naming the entry or line)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from .. import safe_io
from ..errors import InputError
from .entry import ENTRY_COLUMNS, ROW_COLUMNS, Entry, LatencyDBError, astuple_entry

EXPORT_FORMAT = "onnx-depth-latency-db"


def write_export(path: "str | os.PathLike[str]", rows: Iterable[tuple[str, str, Entry]],
                 details: Mapping[str, Any], *, schema_version: int, database: Path) -> int:
    """Write (fingerprint key, signature, entry) `rows` and the fingerprints' `details` to `path`
    (.json or .csv; never onto the `database` file or its WAL / shared-memory files); returns
    the number of entries."""
    path = Path(path)
    kind = _file_kind(path)
    try:
        safe_io.check_destination(path, "export file")
        safe_io.check_distinct({"the export file": path}, {
            "the latency database": database, "its WAL file": Path(f"{database}-wal"),
            "its shared-memory file": Path(f"{database}-shm")})
    except InputError as e:
        raise LatencyDBError(str(e)) from None
    records = [_row_dict(fp, sig, e) for fp, sig, e in rows]
    try:
        with safe_io.atomic_open(path, "w", "export file", newline="", encoding="utf-8") as f:
            if kind == "json":
                json.dump({"format": EXPORT_FORMAT, "schema_version": schema_version,
                           "fingerprints": dict(details), "entries": records}, f, indent=1)
                f.write("\n")
            else:
                w = csv.DictWriter(f, fieldnames=list(ROW_COLUMNS) + ["fingerprint_details"])
                w.writeheader()
                for r in records:
                    d = details.get(r["fingerprint"])
                    w.writerow({**{k: "" if v is None else v for k, v in r.items()},
                                "fingerprint_details": json.dumps(d, sort_keys=True) if d else ""})
    except InputError as e:
        raise LatencyDBError(str(e)) from None
    return len(records)


def _row_dict(fp: str, sig: str, e: Entry) -> dict[str, Any]:
    return {"fingerprint": fp, "signature": sig, **asdict(e)}


def _file_kind(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in (".json", ".csv"):
        raise LatencyDBError(f"cannot tell the format of {path}: use a .json or .csv file name")
    return ext[1:]


def _entry_from_record(rec: dict[str, Any], where: str) -> tuple[Any, ...]:
    try:
        fp, sig = str(rec["fingerprint"]).strip(), str(rec["signature"]).strip()
        if not fp or not sig:
            raise ValueError("empty fingerprint or signature")
        vals = {k: rec.get(k) for k in ENTRY_COLUMNS}
        for k in ("floor_ms", "description"):
            if vals[k] in ("", None):
                vals[k] = None
        if not vals["measured_at"]:
            raise ValueError("missing measured_at")
        entry = Entry(**{k: v for k, v in vals.items() if k in {f.name for f in fields(Entry)}})
    except LatencyDBError as e:
        raise LatencyDBError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise LatencyDBError(f"{where}: bad entry ({e})") from None
    return (fp, sig, *astuple_entry(entry))


def read_export(path: Path) -> tuple[list[tuple[Any, ...]], dict[str, dict[str, Any]]]:
    """(rows as stored: fingerprint key, signature, entry columns; fingerprint details) of an
    export file."""
    kind = _file_kind(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if kind == "json":
                try:
                    doc = json.load(f)
                except ValueError as e:
                    raise LatencyDBError(f"{path} is not valid JSON ({e})") from None
                if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
                    raise LatencyDBError(f"{path} is not an onnx-depth latency export (no 'entries' list)")
                details = doc.get("fingerprints") or {}
                rows = [_entry_from_record(r, f"{path} entry {i}") if isinstance(r, dict)
                        else _bad(f"{path} entry {i}: not an object") for i, r in enumerate(doc["entries"])]
                return rows, {k: v for k, v in details.items() if isinstance(v, dict)}
            reader = csv.DictReader(f)
            missing = {"fingerprint", "signature", "median_ms", "measured_at"} - set(reader.fieldnames or ())
            if missing:
                raise LatencyDBError(f"{path} is not an onnx-depth latency export (missing columns: "
                                     f"{', '.join(sorted(missing))})")
            rows, details = [], {}
            for i, rec in enumerate(reader, start=2):
                rows.append(_entry_from_record(rec, f"{path} line {i}"))
                if rec.get("fingerprint_details"):
                    with contextlib.suppress(ValueError):
                        details[rows[-1][0]] = json.loads(rec["fingerprint_details"])
            return rows, details
    except FileNotFoundError:
        raise LatencyDBError(f"no such file: {path}") from None
    except UnicodeDecodeError:
        raise LatencyDBError(f"{path} is not a text export") from None
    except OSError as e:
        raise LatencyDBError(f"cannot read {path}: {e.strerror}") from None


def _bad(msg: str) -> tuple[Any, ...]:
    raise LatencyDBError(msg)
