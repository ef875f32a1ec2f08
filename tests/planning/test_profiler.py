"""`onnx-depth profile` and planning.profiler: fill the DB once, then find everything cached."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

from onnx_depth import cli
from onnx_depth.latency_db import LatencyStore, current
from onnx_depth.planning import candidates
from onnx_depth.planning.profiler import WHOLE, profile_candidates

FAST = {"warmup": 1, "rounds": 3, "inner": 1}


@pytest.fixture()
def model_file(tmp_path: Path, hand_model: onnx.ModelProto) -> Path:
    p = tmp_path / "hand.onnx"
    onnx.save(hand_model, p)
    return p


def _counts(out: str) -> tuple[int, int]:
    m = re.search(r"^(\d+) measured, (\d+) cached$", out.strip().splitlines()[-1])
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_profile_twice_measures_nothing_new(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "lat.sqlite"
    assert cli.main(["profile", str(model_file), "--latency-db", str(db)]) == 0
    out = capsys.readouterr()
    measured, cached = _counts(out.out)
    assert measured > 10 and cached == 0
    assert "candidate options" in out.out and "1 thread(s)" in out.out and "call overhead" in out.out
    assert "profile:" not in out.err  # no progress bar when stderr is not a terminal
    assert cli.main(["profile", str(model_file), "--latency-db", str(db)]) == 0
    assert _counts(capsys.readouterr().out) == (0, measured)
    # another thread count is another fingerprint: measured again
    assert cli.main(["-q", "profile", str(model_file), "--latency-db", str(db), "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and _counts(out) == (measured, 0)
    assert cli.main(["profile", str(model_file), "-q", "--latency-db", str(db), "--threads", "2"]) == 0
    assert _counts(capsys.readouterr().out) == (0, measured)
    with LatencyStore(db) as s:
        assert s.stats()["entries"] == 2 * measured


@pytest.mark.parametrize("argv,needle", [
    (["--threads", "0"], "--threads"),
    (["--provider", "NoSuchExecutionProvider"], "not available"),
])
def test_profile_bad_arguments(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               argv: list[str], needle: str) -> None:
    assert cli.main(["profile", str(model_file), "--latency-db", str(tmp_path / "x.sqlite"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_profile_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["profile", str(tmp_path / "nope.onnx"), "--latency-db", str(tmp_path / "x.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


def test_profile_help_documents_default_threads(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["profile", "--help"])
    assert "default 1" in capsys.readouterr().out


def test_profile_candidates_covers_every_option_pair_and_the_whole(hand_graph, tmp_path: Path) -> None:
    cands = candidates(hand_graph)
    fp = current(threads=1)
    with LatencyStore(tmp_path / "db.sqlite") as store:
        res = profile_candidates(cands, store, fp, group_size=8, **FAST)
        assert set(cands.unique()) <= set(res.entries)
        assert {cands.pair_key(c, i) for c, i in cands.cuts()} <= set(res.entries)
        assert res.whole is not None and res.entries[WHOLE] is res.whole
        assert res.measured == len(set(res.signatures.values())) and res.cached == 0
        assert all(e.floor_ms is not None for e in res.entries.values())
        again = profile_candidates(cands, store, fp, **FAST)
        assert (again.measured, again.cached) == (0, res.measured)
        lookup = profile_candidates(cands, store, current(threads=3), measure_missing=False)
        assert (lookup.measured, lookup.cached, lookup.missing) == (0, 0, res.measured) and not lookup.entries
