"""`onnx-depth db ...` via argparse: exit codes and one-line messages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from onnx_depth.cli.db import register, run
from onnx_depth.latency_db.store import SCHEMA_VERSION, Entry, LatencyStore


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="onnx-depth")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    assert args.func is run
    return args.func(args)


def _db(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "db.sqlite"
    with LatencyStore(path) as s:
        for i in range(n):
            s.put(f"fp{i % 2}", f"sig{i}", Entry(5, 1.0 + i, 0.9, 1.2, 0.002, "2025-01-01T00:00:00"))
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("onnx-depth db: error: ") and "Traceback" not in err
    for n in needles:
        assert n in err
    return err


def test_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["db", "stats", "--latency-db", str(tmp_path / "none.sqlite")]) == 0
    assert "0 entries" in capsys.readouterr().out
    assert not (tmp_path / "none.sqlite").exists()  # stats does not create
    path = _db(tmp_path)
    assert _cli(["db", "stats", "--latency-db", str(path)]) == 0
    out = capsys.readouterr().out
    assert "entries:          3 in 2 fingerprint(s)" in out and f"schema version:   {SCHEMA_VERSION}" in out
    assert _cli(["db", "stats", "--json", "--latency-db", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["per_fingerprint"]["fp0"]["entries"] == 2


def test_default_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    path = _db(tmp_path)
    monkeypatch.setenv("ONNX_DEPTH_LATENCY_DB", str(path))
    assert _cli(["db", "stats"]) == 0
    assert str(path) in capsys.readouterr().out


@pytest.mark.parametrize("ext", ["json", "csv"])
def test_export_import(tmp_path: Path, capsys: pytest.CaptureFixture[str], ext: str) -> None:
    path = _db(tmp_path)
    out = tmp_path / f"dump.{ext}"
    assert _cli(["db", "export", str(out), "--latency-db", str(path)]) == 0
    assert "exported 3 entries" in capsys.readouterr().out
    other = tmp_path / "other.sqlite"
    assert _cli(["db", "import", str(out), "--latency-db", str(other)]) == 0
    assert "imported 3" in capsys.readouterr().out
    with LatencyStore(other) as s:
        assert s.get("fp1", "sig1") == Entry(5, 2.0, 0.9, 1.2, 0.002, "2025-01-01T00:00:00")


def test_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _db(tmp_path)
    assert _cli(["db", "export", str(tmp_path / "x.xml"), "--latency-db", str(path)]) == 2
    _one_line_error(capsys, ".json or .csv")
    assert _cli(["db", "import", str(tmp_path / "missing.json"), "--latency-db", str(path)]) == 2
    _one_line_error(capsys, "no such file")
    assert _cli(["db", "export", str(tmp_path / "x.json"), "--latency-db", str(tmp_path / "no.sqlite")]) == 2
    _one_line_error(capsys, "no latency database")
    assert _cli(["db", "repair", "--latency-db", str(tmp_path / "no.sqlite")]) == 2
    _one_line_error(capsys)
    with pytest.raises(SystemExit) as ei:  # argparse's own usage error
        _cli(["db"])
    assert ei.value.code == 2


def test_clear_needs_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _db(tmp_path)
    assert _cli(["db", "clear", "--latency-db", str(path)]) == 2
    _one_line_error(capsys, "without --yes", "3 entries")
    assert _cli(["db", "clear", "--yes", "--fingerprint", "fp0", "--latency-db", str(path)]) == 0
    assert "deleted 2 entries" in capsys.readouterr().out
    assert _cli(["db", "clear", "--yes", "--latency-db", str(path)]) == 0
    assert "deleted 1 entries" in capsys.readouterr().out
    with LatencyStore(path) as s:
        assert s.stats()["entries"] == 0


def test_corrupt_then_repair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _db(tmp_path, 50)
    with open(path, "r+b") as f:
        f.write(b"\xff" * 64)
    assert _cli(["db", "stats", "--latency-db", str(path)]) == 2
    _one_line_error(capsys, "is corrupt", "onnx-depth db repair")
    assert _cli(["db", "repair", "--latency-db", str(path)]) == 0
    assert "salvaged 50 entries, lost 0" in capsys.readouterr().out
    assert _cli(["db", "stats", "--latency-db", str(path)]) == 0
    assert "entries:          50" in capsys.readouterr().out
    assert _cli(["db", "repair", "--latency-db", str(path)]) == 0
    assert "nothing to repair" in capsys.readouterr().out
