"""LatencyStore: round trip, concurrency, corruption and repair, migrations, export/import."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from onnx_depth.latency_db import repair
from onnx_depth.latency_db.fingerprint import current
from onnx_depth.latency_db.store import (SCHEMA_VERSION, Entry, LatencyDBCorrupt, LatencyDBError,
                                         LatencyStore, default_path)


def _entry(i: int, when: str = "2025-01-02T03:04:05.000006+00:00") -> Entry:
    return Entry(samples=10 + i, median_ms=1.0 + i / 1000, p10_ms=0.9 + i / 1000,
                 p90_ms=1.5 + i / 1000, floor_ms=0.002, measured_at=when, description=f"Conv #{i}")


def _fill(path: Path, n: int, fps: tuple[str, ...] = ("fpA", "fpB")) -> dict[tuple[str, str], Entry]:
    rows = {(fps[i % len(fps)], f"sig-{i:06d}-" + "ab" * 28): _entry(i) for i in range(n)}
    with LatencyStore(path) as s:
        s.put_many([(fp, sig, e) for (fp, sig), e in rows.items()])
    return rows


def test_round_trip_and_upsert(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "db.sqlite"  # parent folder is created
    fp = current(threads=1)
    with LatencyStore(path) as s:
        assert s.get(fp, "sig") is None
        e = _entry(1)
        s.put(fp, "sig", e)
        assert s.get(fp, "sig") == e
        assert s.get(fp.key(), "sig") == e  # a key string works too
        e2 = Entry(3, 2.0, 1.5, 2.5, None, description=None)
        s.put(fp, "sig", e2)  # upsert: replaces
        got = s.get(fp, "sig")
        assert got == e2 and got.floor_ms is None and got.measured_at.endswith("+00:00")
        st = s.stats()
        assert st["entries"] == 1 and st["fingerprints"] == 1 and st["schema_version"] == SCHEMA_VERSION
        assert st["per_fingerprint"][fp.key()]["details"]["threads"] == 1
        assert st["file_bytes"] > 0
    with LatencyStore(path) as s:  # persisted
        assert s.get(fp, "sig") == e2
        conn_mode = s._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert conn_mode == "wal"


def test_entry_net_and_validation() -> None:
    e = Entry(5, 1.0, 0.9, 1.1, 0.25)
    assert e.net_ms == pytest.approx(0.75)
    assert Entry(5, 0.1, 0.1, 0.1, 0.25).net_ms == 0.0
    assert Entry(1, 1, 1, 1, measured_at="2024-05-06T07:08:09").measured_at == "2024-05-06T07:08:09.000000+00:00"
    with pytest.raises(LatencyDBError):
        Entry(1, float("nan"), 1, 1)
    with pytest.raises(LatencyDBError):
        Entry(1, 1, 1, 1, measured_at="yesterday")


def test_different_fingerprint_never_reuses(tmp_path: Path) -> None:
    fp1, fp2 = current(threads=1), current(threads=2)
    fp3 = current(threads=1, optimization="basic")
    assert len({fp1.key(), fp2.key(), fp3.key()}) == 3
    with LatencyStore(tmp_path / "db.sqlite") as s:
        s.put(fp1, "sig", _entry(1))
        assert s.get(fp2, "sig") is None and s.get(fp3, "sig") is None
        s.put(fp2, "sig", _entry(2))
        assert s.get(fp1, "sig") == _entry(1) and s.get(fp2, "sig") == _entry(2)
        assert s.clear(fp1) == 1
        assert s.get(fp1, "sig") is None and s.get(fp2, "sig") == _entry(2)
        assert s.clear() == 1 and s.stats()["entries"] == 0


def test_fingerprint_stable_and_sorted_options() -> None:
    a = current(provider_options={"b": 2, "a": "1"}, threads=2)
    b = current(provider_options={"a": 1, "b": "2"}, threads=2)
    assert a == b and a.key() == b.key() and len(a.key()) == 16
    assert a.provider_options == (("a", "1"), ("b", "2"))
    d = a.to_dict()
    assert json.loads(json.dumps(d)) == d and d["threads"] == 2 and d["ort_version"]
    assert d["cpu_model"] and d["logical_cores"] >= 1
    assert current(threads=2, provider_options={"a": "1"}).key() != a.key()
    with pytest.raises(ValueError):
        current(optimization="max")


def _writer(path: str, worker: int, n: int, start: "multiprocessing.synchronize.Barrier") -> None:
    start.wait(30)  # all four open (and create/migrate) the file at the same moment
    with LatencyStore(path) as s:
        for i in range(n):
            s.put(f"fp{worker % 2}", f"w{worker}-{i}", Entry(i + 1, float(i), 0.0, float(i), 0.001))


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")  # does not exist yet: creation races too
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(path, w, 200, start)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with LatencyStore(path) as s:
        assert s.stats()["entries"] == 800
        for w in range(4):
            for i in (0, 99, 199):
                e = s.get(f"fp{w % 2}", f"w{w}-{i}")
                assert e is not None and e.samples == i + 1 and e.median_ms == float(i)


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ONNX_DEPTH_LATENCY_DB", str(tmp_path / "x.sqlite"))
    assert default_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv("ONNX_DEPTH_LATENCY_DB")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_path() == tmp_path / "cache" / "onnx-depth" / "latency.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".cache" / "onnx-depth" / "latency.sqlite"


@pytest.mark.parametrize("ext", ["json", "csv"])
def test_export_import_round_trip(tmp_path: Path, ext: str) -> None:
    rows = _fill(tmp_path / "a.sqlite", 50)
    fp = current(threads=1)
    with LatencyStore(tmp_path / "a.sqlite") as s:
        s.put(fp, "with-details", _entry(7))
        assert s.export(tmp_path / f"out.{ext}") == 51
    with LatencyStore(tmp_path / "b.sqlite") as t:
        assert t.import_(tmp_path / f"out.{ext}") == 51
        got = {(f, sig): e for f, sig, e in t.entries()}
        assert got == {**rows, (fp.key(), "with-details"): _entry(7)}
        assert t.fingerprints()[fp.key()] == fp.to_dict()
        assert t.import_(tmp_path / f"out.{ext}") == 0  # nothing newer


def test_import_keeps_newest(tmp_path: Path) -> None:
    with LatencyStore(tmp_path / "a.sqlite") as s:
        s.put("fp", "k1", _entry(1, "2025-06-01T00:00:00+00:00"))
        s.put("fp", "k2", _entry(2, "2025-06-01T00:00:00+00:00"))
    doc = {"entries": [
        {"fingerprint": "fp", "signature": "k1", **_row(_entry(10, "2025-07-01T00:00:00+00:00"))},  # newer
        {"fingerprint": "fp", "signature": "k2", **_row(_entry(20, "2025-05-01T00:00:00+00:00"))},  # older
        {"fingerprint": "fp", "signature": "k3", **_row(_entry(30, "2025-01-01T02:00:00+02:00"))},  # new key
    ]}
    (tmp_path / "in.json").write_text(json.dumps(doc))
    with LatencyStore(tmp_path / "a.sqlite") as s:
        assert s.import_(tmp_path / "in.json") == 2
        assert s.get("fp", "k1").samples == 20 and s.get("fp", "k2").samples == 12
        assert s.get("fp", "k3").measured_at == "2025-01-01T00:00:00.000000+00:00"


def _row(e: Entry) -> dict[str, object]:
    return {k: getattr(e, k) for k in ("samples", "median_ms", "p10_ms", "p90_ms", "floor_ms",
                                       "measured_at", "description")}


def test_import_rejects_bad_files(tmp_path: Path) -> None:
    with LatencyStore(tmp_path / "a.sqlite") as s:
        for name, text in [("bad.json", "{not json"), ("x.json", '{"rows": []}'),
                           ("y.csv", "a,b\n1,2\n"), ("z.txt", "")]:
            (tmp_path / name).write_text(text)
            with pytest.raises(LatencyDBError) as ei:
                s.import_(tmp_path / name)
            assert "\n" not in str(ei.value)
        with pytest.raises(LatencyDBError, match="no such file"):
            s.import_(tmp_path / "missing.json")
        bad = {"entries": [{"fingerprint": "f", "signature": "s", "samples": 1, "median_ms": "x",
                            "p10_ms": 1, "p90_ms": 1, "measured_at": "2025-01-01T00:00:00"}]}
        (tmp_path / "bad2.json").write_text(json.dumps(bad))
        with pytest.raises(LatencyDBError, match="entry 0"):
            s.import_(tmp_path / "bad2.json")
        assert s.stats()["entries"] == 0  # nothing half-imported


V1_DDL = ("CREATE TABLE entries (fingerprint TEXT NOT NULL, signature TEXT NOT NULL,"
          " samples INTEGER NOT NULL, median_ms REAL NOT NULL, p10_ms REAL NOT NULL,"
          " p90_ms REAL NOT NULL, measured_at TEXT NOT NULL, PRIMARY KEY (fingerprint, signature))")


def test_migration_from_v1(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    c = sqlite3.connect(path)
    c.execute(V1_DDL)
    c.execute("INSERT INTO entries VALUES ('fp', 'sig', 7, 1.5, 1.0, 2.0, '2024-01-01T00:00:00.000000+00:00')")
    c.execute("PRAGMA user_version = 1")
    c.commit()
    c.close()
    with LatencyStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 5
        e = s.get("fp", "sig")
        assert e == Entry(7, 1.5, 1.0, 2.0, None, "2024-01-01T00:00:00+00:00", None)
        s.put("fp", "new", _entry(1))
        assert s.get("fp", "new") == _entry(1)
        cols = [r[1] for r in s._conn.execute("PRAGMA table_info(entries)")]
        assert cols[-2:] == ["floor_ms", "description"]
        tables = {r[0] for r in s._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "fingerprints" in tables


def test_newer_schema_and_foreign_db_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite"
    with LatencyStore(newer) as s:
        s._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LatencyDBError, match="newer"):
        LatencyStore(newer)
    foreign = tmp_path / "foreign.sqlite"
    c = sqlite3.connect(foreign)
    c.execute("CREATE TABLE stuff (a)")
    c.commit()
    c.close()
    with pytest.raises(LatencyDBError, match="not an onnx-depth latency database") as ei:
        LatencyStore(foreign)
    assert not isinstance(ei.value, LatencyDBCorrupt)


def _assert_corrupt_message(path: Path) -> None:
    with pytest.raises(LatencyDBCorrupt) as ei:
        LatencyStore(path)
    msg = str(ei.value)
    assert "\n" not in msg and "onnx-depth db repair" in msg and str(path) in msg


def _check_salvage(path: Path, rows: dict[tuple[str, str], Entry], n_min: int) -> "repair.RepairResult":
    result = repair(path)
    assert result.needed and Path(result.backup).exists() and result.backup.endswith(".corrupt")
    with LatencyStore(path) as s:
        got = {(f, sig): e for f, sig, e in s.entries()}
    assert result.salvaged == len(got) >= n_min
    assert all(rows[k] == e for k, e in got.items())  # salvaged rows are exact, none invented
    assert result.salvaged + result.lost <= len(rows)
    return result


def test_garbage_header_raises_and_repair_salvages_all(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    rows = _fill(path, 2000)
    with open(path, "r+b") as f:
        f.write(os.urandom(100))
    _assert_corrupt_message(path)
    result = _check_salvage(path, rows, 2000)
    assert result.lost == 0
    assert repair(path).needed is False  # healthy now


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    rows = _fill(path, 2000)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    _assert_corrupt_message(path)
    _check_salvage(path, rows, 1)


def test_damaged_page_salvages_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    rows = _fill(path, 2000)
    data = bytearray(path.read_bytes())
    ps = 4096
    # a leaf page of the entries table (type 0x0D) in the middle of the file
    victims = [p for p in range(1, len(data) // ps) if data[p * ps] == 0x0D and b"Conv #" in data[p * ps:(p + 1) * ps]]
    victim = victims[len(victims) // 2]
    data[victim * ps:(victim + 1) * ps] = os.urandom(ps)
    path.write_bytes(bytes(data))
    _assert_corrupt_message(path)
    result = _check_salvage(path, rows, 2000 - 80)
    assert result.lost >= 1 and result.salvaged + result.lost == 2000  # index tells what was lost
    assert result.damaged_pages >= 1


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    path.write_text("this is a text file, not a database, but long enough to have a header " * 5)
    before = path.read_bytes()
    _assert_corrupt_message(path)
    # issue 13 item 9: a file that is not a latency DB (nothing to salvage) is refused and left as it was
    for force in (False, True):
        with pytest.raises(LatencyDBError, match="not an onnx-depth latency database"):
            repair(path, force=force)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.corrupt*"))
    with pytest.raises(LatencyDBError, match="no latency database"):
        repair(tmp_path / "missing.sqlite")


def test_repair_reads_committed_wal_frames(tmp_path: Path) -> None:
    live = tmp_path / "live.sqlite"
    s = LatencyStore(live)
    try:
        s.put_many([("fp", f"old{i}", _entry(i)) for i in range(300)])
        s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        s.put_many([("fp", f"new{i}", _entry(i)) for i in range(200)])  # only in the WAL
        crashed = tmp_path / "crashed.sqlite"  # a copy as a crash would leave it
        crashed.write_bytes(live.read_bytes())
        Path(f"{crashed}-wal").write_bytes(Path(f"{live}-wal").read_bytes())
    finally:
        s.close()
    with open(crashed, "r+b") as f:
        f.write(b"\0" * 100)
    result = repair(crashed)
    assert result.salvaged == 500 and result.lost == 0
    assert Path(f"{crashed}.corrupt-wal").exists() and not Path(f"{crashed}-wal").exists()
    with LatencyStore(crashed) as t:
        assert t.get("fp", "new199") == _entry(199) and t.get("fp", "old0") == _entry(0)


def test_second_repair_keeps_first_backup(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    for _ in range(2):
        with LatencyStore(path) as s:
            s.put("fp", "sig", _entry(1))
            s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = bytearray(path.read_bytes())
        data[:16] = b"garbage garbage!"  # damaged header: a latency DB that repair can salvage
        path.write_bytes(bytes(data))
        assert repair(path).salvaged == 1
    assert (tmp_path / "db.sqlite.corrupt").exists() and (tmp_path / "db.sqlite.corrupt.1").exists()
