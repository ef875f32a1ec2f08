"""`onnx-depth db ...`: inspect and maintain the latency database (onnx_depth.latency_db).

    db stats  [--json]                 entries, fingerprints, size, schema version
    db export FILE                     .json or .csv
    db import FILE                     merge; the newer measured_at wins on conflicts
    db clear  [--yes] [--fingerprint KEY]
    db repair [--force]                salvage a damaged file (keeps <db>.corrupt)

Each takes `--latency-db PATH` (default: `store.default_path()`). Errors are one line on stderr
with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..latency_db import LatencyDBError, LatencyStore, default_path, repair
from .parsing import EXIT_ERROR


def register(subparsers: "argparse._SubParsersAction[Any]") -> argparse.ArgumentParser:
    """Add the `db` command (with its sub-commands) to an argparse subparsers object; returns
    the `db` parser."""
    db = subparsers.add_parser("db", help="inspect and maintain the latency database",
                               description="Inspect and maintain the latency database.")
    sub = db.add_subparsers(dest="db_command", metavar="{stats,export,import,clear,repair}")
    sub.required = True

    def leaf(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--latency-db", metavar="PATH", dest="latency_db", default=None,
                       help=f"database file (default: $ONNX_DEPTH_LATENCY_DB or {default_path()})")
        return p

    p = leaf("stats", "show entries, fingerprints, file size and schema version")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p = leaf("export", "write all entries to FILE (.json or .csv)")
    p.add_argument("file", metavar="FILE")
    p = leaf("import", "merge entries from FILE (.json or .csv); newer measurements win")
    p.add_argument("file", metavar="FILE")
    p = leaf("clear", "delete entries (all, or one fingerprint's)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--fingerprint", metavar="KEY", default=None, help="only this fingerprint key")
    p = leaf("repair", "salvage a damaged database into a fresh file (keeps a .corrupt backup)")
    p.add_argument("--force", action="store_true", help="rebuild even if the file looks healthy")
    db.set_defaults(func=run)
    return db


def _err(msg: str) -> int:
    print(f"onnx-depth db: error: {msg}", file=sys.stderr)
    return EXIT_ERROR


def _stats(path: Path, as_json: bool) -> int:
    if not path.exists():
        print(f"no latency database at {path} (0 entries)")
        return 0
    with LatencyStore(path, create=False) as s:
        st = s.stats()
    if as_json:
        print(json.dumps(st, indent=1, sort_keys=True))
        return 0
    print(f"latency database: {st['path']}")
    print(f"schema version:   {st['schema_version']}")
    print(f"size:             {st['file_bytes'] + st['wal_bytes']} bytes")
    print(f"entries:          {st['entries']} in {st['fingerprints']} fingerprint(s)")
    for key, info in st["per_fingerprint"].items():
        d = info["details"]
        what = (f"{d.get('cpu_model', '?')}, ORT {d.get('ort_version', '?')}, {d.get('provider', '?')}, "
                f"{d.get('threads', '?')} thread(s), opt={d.get('optimization', '?')}") if d else "(no details)"
        print(f"  {key}  {info['entries']:6d}  {what}")
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin or not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def run(args: argparse.Namespace) -> int:
    """Execute a parsed `db` command; returns the exit code."""
    path = Path(args.latency_db) if getattr(args, "latency_db", None) else default_path()
    cmd = getattr(args, "db_command", None)
    try:
        if cmd == "stats":
            return _stats(path, bool(getattr(args, "json", False)))
        if cmd == "export":
            with LatencyStore(path, create=False) as s:
                n = s.export(args.file)
            print(f"exported {n} entries to {args.file}")
            return 0
        if cmd == "import":
            with LatencyStore(path) as s:
                n = s.import_(args.file)
            print(f"imported {n} new or newer entries from {args.file} into {path}")
            return 0
        if cmd == "clear":
            if not path.exists():
                print(f"no latency database at {path}; nothing to clear")
                return 0
            with LatencyStore(path, create=False) as s:
                fp = args.fingerprint
                n = sum(1 for _ in s.entries(fp)) if fp else int(s.stats()["entries"])
                scope = f"fingerprint {fp}" if fp else "all fingerprints"
                if not args.yes and not _confirm(f"Delete {n} entries ({scope}) from {path}?"):
                    return _err(f"refusing to delete {n} entries ({scope}) without --yes")
                deleted = s.clear(fp)
            print(f"deleted {deleted} entries ({scope}) from {path}")
            return 0
        if cmd == "repair":
            result = repair(path, force=bool(getattr(args, "force", False)))
            print(result.summary())
            return 0
        return _err(f"unknown db command {cmd!r}")
    except LatencyDBError as e:
        return _err(str(e))
    except OSError as e:
        return _err(f"{e.filename or path}: {e.strerror or e}")
