"""The latency database: measured segment latencies in one SQLite file shared by processes.

Key: (device fingerprint key, segment signature). Value: an `Entry` (sample count, median /
p10 / p90 in ms, call-overhead floor, UTC time of measurement, short description).

Concurrency: the file is in WAL mode with a busy timeout and every write is one short
``BEGIN IMMEDIATE`` transaction, so several processes may read and write at once. A connection
must not be shared across processes (open a `LatencyStore` in each). `secure_delete` is on so
that deleted rows do not linger in free space (and cannot be resurrected by `repair`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .entry import ENTRY_COLUMNS, ROW_COLUMNS, Entry, LatencyDBCorrupt, LatencyDBError, astuple_entry, utc_now
from .transfer import read_export, write_export

if TYPE_CHECKING:  # pragma: no cover
    from .fingerprint import Fingerprint

SQLITE_MAGIC = b"SQLite format 3\x00"
PAGE_SIZE = 4096
BUSY_TIMEOUT_MS = 60_000

# Ordered migrations: (version reached, what it does, statements). Never edit a released step;
# append a new one. A fresh file runs them all, so every file has the same column order.
MIGRATIONS: list[tuple[int, str, tuple[str, ...]]] = [
    (1, "entries table", (
        "CREATE TABLE entries ("
        " fingerprint TEXT NOT NULL, signature TEXT NOT NULL, samples INTEGER NOT NULL,"
        " median_ms REAL NOT NULL, p10_ms REAL NOT NULL, p90_ms REAL NOT NULL,"
        " measured_at TEXT NOT NULL, PRIMARY KEY (fingerprint, signature))",
    )),
    (2, "call-overhead floor", (
        "ALTER TABLE entries ADD COLUMN floor_ms REAL",
    )),
    (3, "segment descriptions and fingerprint details", (
        "ALTER TABLE entries ADD COLUMN description TEXT",
        "CREATE TABLE fingerprints (key TEXT PRIMARY KEY, details TEXT NOT NULL,"
        " first_seen TEXT NOT NULL)",
    )),
    (4, "fidelity cache (importance of segment options on calibration data)", (
        "CREATE TABLE fidelity (model TEXT NOT NULL, data TEXT NOT NULL, item TEXT NOT NULL,"
        " value TEXT NOT NULL, measured_at TEXT NOT NULL, PRIMARY KEY (model, data, item))",
    )),
    (5, "end-to-end measurements of plans (emitted model vs original, interleaved)", (
        "CREATE TABLE plan_measurements (fingerprint TEXT NOT NULL, model TEXT NOT NULL, plan TEXT NOT NULL,"
        " value TEXT NOT NULL, measured_at TEXT NOT NULL, PRIMARY KEY (fingerprint, model, plan))",
    )),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

def default_path() -> Path:
    """$ONNX_DEPTH_LATENCY_DB, else $XDG_CACHE_HOME/onnx-depth/latency.sqlite, else ~/.cache/..."""
    env = os.environ.get("ONNX_DEPTH_LATENCY_DB")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "onnx-depth" / "latency.sqlite"


def _fp_key(fingerprint: "Fingerprint | str") -> str:
    return fingerprint if isinstance(fingerprint, str) else fingerprint.key()


def _is_corruption(e: sqlite3.DatabaseError) -> bool:
    if isinstance(e, sqlite3.OperationalError):
        msg = str(e).lower()
        return "malformed" in msg or "not a database" in msg or "corrupt" in msg
    return type(e) is sqlite3.DatabaseError


class LatencyStore:
    """The latency database at `path` (default: `default_path()`); a context manager.

    Opening creates the file (and parent folder) if `create`, checks it (header, `quick_check`)
    and applies pending migrations. Raises `LatencyDBCorrupt` for a damaged file.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = True,
                 check: bool = True) -> None:
        self.path = Path(path) if path is not None else default_path()
        if not self.path.exists():
            if not create:
                raise LatencyDBError(f"no latency database at {self.path}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise LatencyDBError(f"cannot create the folder of latency database {self.path}: {e.strerror}") from None
            if not os.access(self.path.parent, os.W_OK | os.X_OK):
                raise LatencyDBError(f"cannot create latency database {self.path}: folder {self.path.parent} is not writable")
        elif self.path.is_dir():
            raise LatencyDBError(f"latency database path {self.path} is a directory")
        elif not self.path.is_file():
            raise LatencyDBError(f"latency database path {self.path} is not a regular file")
        self._check_header()
        try:
            self._conn = sqlite3.connect(os.fspath(self.path), timeout=BUSY_TIMEOUT_MS / 1000,
                                         isolation_level=None)
        except sqlite3.Error as e:
            raise LatencyDBError(f"cannot open latency database {self.path}: {e}") from None
        try:
            with self._errors():
                self._setup(check)
        except BaseException:
            self._conn.close()
            raise

    # ---- plumbing -------------------------------------------------------------------------
    def _check_header(self) -> None:
        try:
            with open(self.path, "rb") as f:
                head = f.read(100)
        except FileNotFoundError:
            return
        except OSError as e:
            raise LatencyDBError(f"cannot read latency database {self.path}: {e.strerror}") from None
        if head and (len(head) < 100 or not head.startswith(SQLITE_MAGIC)):
            raise LatencyDBCorrupt(self.path, "file is not an SQLite database")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate sqlite errors into one-line latency-DB errors."""
        try:
            yield
        except LatencyDBError:
            raise
        except UnicodeDecodeError as e:  # a damaged schema page (sqlite_master text is not UTF-8)
            raise LatencyDBCorrupt(self.path, f"unreadable schema: {e.reason}", force=True) from None
        except sqlite3.DatabaseError as e:
            if _is_corruption(e):
                raise LatencyDBCorrupt(self.path, str(e)) from None
            raise LatencyDBError(f"latency database {self.path}: {e}") from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (BEGIN IMMEDIATE takes the write lock up front)."""
        with self._errors():
            for attempt in range(50):
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) and "busy" not in str(e):
                        raise
                    time.sleep(0.01 * (attempt + 1))
            else:
                raise LatencyDBError(f"latency database {self.path} stayed locked")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _setup(self, check: bool) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        c.execute("PRAGMA secure_delete = ON")
        c.execute("PRAGMA synchronous = NORMAL")
        version = c.execute("PRAGMA user_version").fetchone()[0]
        # Read-only checks first: a foreign or damaged file is refused before anything (WAL
        # mode, page size, migrations) is written to it.
        if version == 0:
            self._refuse_foreign(c)
        if check:
            problems = [r[0] for r in c.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise LatencyDBCorrupt(self.path, "; ".join(problems)[:200])
        if version > SCHEMA_VERSION:
            raise LatencyDBError(
                f"latency database {self.path} has schema v{version}, newer than this onnx-depth "
                f"(v{SCHEMA_VERSION}); upgrade onnx-depth or use another --latency-db")
        if version == 0:
            c.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only takes effect on an empty file
        if c.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            for attempt in range(50):
                try:
                    c.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) and "busy" not in str(e):
                        raise
                    time.sleep(0.01 * (attempt + 1))
        if version < SCHEMA_VERSION:
            self._migrate()

    def _refuse_foreign(self, c: sqlite3.Connection) -> None:
        """Schema v0 with tables: somebody else's SQLite file (read-only check)."""
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if tables:
            raise LatencyDBError(
                f"{self.path} is an SQLite database but not an onnx-depth latency "
                f"database (tables: {', '.join(sorted(tables))})")

    def _migrate(self) -> None:
        with self._write() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]  # re-read under the lock
            if version == 0:
                self._refuse_foreign(c)
            for target, _what, statements in MIGRATIONS:
                if target > version:
                    for sql in statements:
                        c.execute(sql)
                    c.execute(f"PRAGMA user_version = {target}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "LatencyStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._errors():
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # ---- fidelity cache -------------------------------------------------------------------
    def get_fidelity(self, model: str, data: str) -> dict[str, dict[str, Any]]:
        """{item: value} cached for (model key, data key): importance measurements of segment
        options (planning.importance), so a second run on the same model and data is fast."""
        with self._errors():
            rows = self._conn.execute("SELECT item, value FROM fidelity WHERE model = ? AND data = ?",
                                      (model, data)).fetchall()
        return {item: json.loads(value) for item, value in rows}

    def put_fidelity(self, model: str, data: str, values: dict[str, dict[str, Any]]) -> None:
        with self._write() as c:
            c.executemany("INSERT OR REPLACE INTO fidelity (model, data, item, value, measured_at) VALUES (?, ?, ?, ?, ?)",
                          [(model, data, k, json.dumps(v), utc_now()) for k, v in values.items()])

    # ---- plan measurements ----------------------------------------------------------------
    def get_plan_measurement(self, fingerprint: "Fingerprint | str", model: str, plan: str) -> dict[str, Any] | None:
        """The stored end-to-end measurement of `plan` (a plan key) on `model` (a model
        signature) under `fingerprint`, or None (planning.budget reuses it: same DB, same plan)."""
        with self._errors():
            row = self._conn.execute(
                "SELECT value FROM plan_measurements WHERE fingerprint = ? AND model = ? AND plan = ?",
                (_fp_key(fingerprint), model, plan)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_plan_measurement(self, fingerprint: "Fingerprint | str", model: str, plan: str,
                             value: dict[str, Any]) -> None:
        with self._write() as c:
            if not isinstance(fingerprint, str):
                self._record_fingerprint(c, fingerprint.key(), fingerprint.to_dict(), utc_now())
            c.execute("INSERT OR REPLACE INTO plan_measurements (fingerprint, model, plan, value, measured_at)"
                      " VALUES (?, ?, ?, ?, ?)", (_fp_key(fingerprint), model, plan, json.dumps(value), utc_now()))

    # ---- entries --------------------------------------------------------------------------
    def get(self, fingerprint: "Fingerprint | str", signature: str) -> Entry | None:
        """The entry for (fingerprint, signature), or None."""
        with self._errors():
            row = self._conn.execute(
                f"SELECT {', '.join(ENTRY_COLUMNS)} FROM entries WHERE fingerprint = ? AND signature = ?",
                (_fp_key(fingerprint), signature)).fetchone()
        return None if row is None else _entry_or_none(row)

    def put(self, fingerprint: "Fingerprint | str", signature: str, entry: Entry) -> None:
        """Insert or replace the entry (a Fingerprint object also records its details)."""
        with self._write() as c:
            if not isinstance(fingerprint, str):
                self._record_fingerprint(c, fingerprint.key(), fingerprint.to_dict(), entry.measured_at)
            self._upsert(c, (_fp_key(fingerprint), signature, *astuple_entry(entry)), newer_only=False)

    def entries(self, fingerprint: "Fingerprint | str | None" = None) -> Iterator[tuple[str, str, Entry]]:
        """All (fingerprint key, signature, entry), ordered by key."""
        sql = f"SELECT {', '.join(ROW_COLUMNS)} FROM entries"
        params: tuple[str, ...] = ()
        if fingerprint is not None:
            sql, params = sql + " WHERE fingerprint = ?", (_fp_key(fingerprint),)
        with self._errors():
            rows = self._conn.execute(sql + " ORDER BY fingerprint, signature", params).fetchall()
        for row in rows:
            e = _entry_or_none(row[2:])
            if e is not None:
                yield row[0], row[1], e

    def fingerprints(self) -> dict[str, dict[str, Any]]:
        """Known fingerprint details by key (only those recorded from Fingerprint objects)."""
        with self._errors():
            rows = self._conn.execute("SELECT key, details FROM fingerprints ORDER BY key").fetchall()
        out: dict[str, dict[str, Any]] = {}
        for key, details in rows:
            try:
                out[key] = json.loads(details)
            except ValueError:
                out[key] = {}
        return out

    def clear(self, fingerprint: "Fingerprint | str | None" = None) -> int:
        """Delete all entries (or those of one fingerprint); returns how many were deleted."""
        with self._write() as c:
            if fingerprint is None:
                n = c.execute("DELETE FROM entries").rowcount
                c.execute("DELETE FROM plan_measurements")
                c.execute("DELETE FROM fingerprints")
            else:
                key = _fp_key(fingerprint)
                n = c.execute("DELETE FROM entries WHERE fingerprint = ?", (key,)).rowcount
                c.execute("DELETE FROM plan_measurements WHERE fingerprint = ?", (key,))
                c.execute("DELETE FROM fingerprints WHERE key = ?", (key,))
        return int(n)

    def stats(self) -> dict[str, Any]:
        """entries, fingerprints, per-fingerprint counts, file size, schema version, path."""
        with self._errors():
            per = dict(self._conn.execute(
                "SELECT fingerprint, COUNT(*) FROM entries GROUP BY fingerprint ORDER BY fingerprint"
            ).fetchall())
        details = self.fingerprints()
        wal = Path(os.fspath(self.path) + "-wal")
        return {
            "path": os.fspath(self.path),
            "schema_version": self.schema_version,
            "entries": sum(per.values()),
            "fingerprints": len(per),
            "per_fingerprint": {k: {"entries": n, "details": details.get(k)} for k, n in per.items()},
            "file_bytes": self.path.stat().st_size if self.path.exists() else 0,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        }

    # ---- export / import ------------------------------------------------------------------
    def export(self, path: str | os.PathLike[str]) -> int:
        """Write all entries to `path` (.json or .csv; `transfer`); returns the number of entries."""
        return write_export(path, self.entries(), self.fingerprints(), schema_version=SCHEMA_VERSION,
                            database=self.path)

    def import_(self, path: str | os.PathLike[str]) -> int:
        """Merge entries from a .json/.csv export; on a key conflict the newer `measured_at`
        wins. Returns the number of rows inserted or updated."""
        rows, details = read_export(Path(path))
        changed = 0
        with self._write() as c:
            for key, d in details.items():
                self._record_fingerprint(c, key, d, utc_now())
            for row in rows:
                changed += self._upsert(c, row, newer_only=True)
        return changed

    def put_many(self, rows: "Sequence[tuple[Fingerprint | str, str, Entry]]", *, newer_only: bool = False) -> int:
        """Upsert many (fingerprint or its key, signature, entry) in one transaction (a
        Fingerprint object also records its details, as `put` does)."""
        with self._write() as c:
            for fp, _sig, e in rows:
                if not isinstance(fp, str):
                    self._record_fingerprint(c, fp.key(), fp.to_dict(), e.measured_at)
            return sum(self._upsert(c, (_fp_key(fp), sig, *astuple_entry(e)), newer_only) for fp, sig, e in rows)

    @staticmethod
    def _upsert(c: sqlite3.Connection, row: tuple[Any, ...], newer_only: bool) -> int:
        sets = ", ".join(f"{k} = excluded.{k}" for k in ENTRY_COLUMNS)
        where = " WHERE excluded.measured_at > entries.measured_at" if newer_only else ""
        cur = c.execute(
            f"INSERT INTO entries ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * len(ROW_COLUMNS))})"
            f" ON CONFLICT (fingerprint, signature) DO UPDATE SET {sets}{where}", row)
        return max(cur.rowcount, 0)

    @staticmethod
    def _record_fingerprint(c: sqlite3.Connection, key: str, details: dict[str, Any], when: str) -> None:
        c.execute("INSERT OR IGNORE INTO fingerprints (key, details, first_seen) VALUES (?, ?, ?)",
                  (key, json.dumps(details, sort_keys=True), when))


def _entry_or_none(row: Sequence[Any]) -> Entry | None:
    """An Entry from a stored row, or None for a row with unusable values (NaN/negative/text
    latency written by another tool): it is ignored, as if not measured (profiling measures
    it again and replaces the row)."""
    try:
        return Entry(*row)
    except (LatencyDBError, TypeError, ValueError):
        return None


