"""Issue 13 "Done when" path test (and item 5): OUT, --report, --plan-out, --plot and the latency
DB pointing at the input, at each other, at symlinks, at a FIFO and at a directory are refused
with exit 2, and the input and every unrelated file are byte-identical afterwards. Also issue 14:
written files follow the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnx_depth import cli


def _chain() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((4, 4)).astype(np.float32), n) for n in ("W1", "W2")]
    g = h.make_graph([h.make_node("MatMul", ["x", "W1"], ["a"]), h.make_node("Relu", ["a"], ["b"]),
                      h.make_node("MatMul", ["b", "W2"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 4])], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def _snapshot(root: Path) -> dict[str, tuple[str, bytes | str | None]]:
    """Every entry under root: (kind, content or link target)."""
    out: dict[str, tuple[str, bytes | str | None]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p))
        elif stat.S_ISFIFO(st.st_mode):
            out[rel] = ("fifo", None)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", None)
        else:
            out[rel] = ("file", p.read_bytes())
    return out


@pytest.fixture
def scene(tmp_path, monkeypatch):
    """IN, an existing latency DB, unrelated files, a symlink to one, a FIFO and a directory."""
    monkeypatch.chdir(tmp_path)
    onnx.save(_chain(), tmp_path / "in.onnx")
    from onnx_depth.latency_db.store import Entry, LatencyStore

    with LatencyStore(tmp_path / "lat.sqlite") as s:
        s.put("fp", "sig", Entry(3, 1.0, 0.9, 1.1, 0.01))
        s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (tmp_path / "victim.txt").write_text("unrelated, must survive")
    (tmp_path / "link.json").symlink_to(tmp_path / "victim.txt")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "victim.txt")
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "keep.txt").write_text("inside a directory")
    os.link(tmp_path / "in.onnx", tmp_path / "hardlink.onnx")
    (tmp_path / "ortdir").mkdir()
    (tmp_path / "ortdir" / "required_operators.config").symlink_to(tmp_path / "victim.txt")
    return tmp_path


BUDGET = ["--latency-budget", "0.9", "--latency-db", "lat.sqlite"]
CASES = {
    "OUT is IN": ["in.onnx", "in.onnx"],
    "OUT is IN by another spelling": ["in.onnx", "./adir/../in.onnx"],
    "OUT is a hard link of IN": ["in.onnx", "hardlink.onnx"],
    "--report is IN": ["in.onnx", "o.onnx", "--report", "in.onnx"],
    "--report is OUT": ["in.onnx", "o.onnx", "--report", "o.onnx"],
    "--plan-out is IN": ["in.onnx", "o.onnx", "--plan-out", "in.onnx", *BUDGET],
    "--plan-out is --report": ["in.onnx", "o.onnx", "--plan-out", "r.json", "--report", "r.json", *BUDGET],
    "--plot is --report": ["in.onnx", "o.onnx", "--plot", "r.json", "--report", "r.json", *BUDGET],
    "--report is the latency DB": ["in.onnx", "o.onnx", "--report", "lat.sqlite", *BUDGET],
    "OUT is the latency DB": ["in.onnx", "lat.sqlite", *BUDGET],
    "the latency DB is IN": ["in.onnx", "o.onnx", "--latency-budget", "0.9", "--latency-db", "in.onnx"],
    "OUT is a symlink": ["in.onnx", "link.onnx"],
    "--report is a symlink": ["in.onnx", "o.onnx", "--report", "link.json"],
    "--report is a dangling symlink": ["in.onnx", "o.onnx", "--report", "dangling.json"],
    "--plan-out is a symlink": ["in.onnx", "o.onnx", "--plan-out", "link.json", *BUDGET],
    "OUT is a FIFO": ["in.onnx", "fifo"],
    "--report is a FIFO": ["in.onnx", "o.onnx", "--report", "fifo"],
    "OUT is a directory": ["in.onnx", "adir"],
    "--report is a directory": ["in.onnx", "o.onnx", "--report", "adir"],
    "OUT ends with a separator": ["in.onnx", "adir/x/"],
    "--emit-ort is a file": ["in.onnx", "o.onnx", "--emit-ort", "victim.txt"],
    "--emit-ort file is --report": ["in.onnx", "o.onnx", "--emit-ort", ".", "--report", "o.ort"],
    "--emit-ort config is a symlink": ["in.onnx", "o.onnx", "--emit-ort", "ortdir"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_output_paths_are_refused_and_nothing_changes(scene, capsys, case):
    before = _snapshot(scene)
    rc = cli.main(["optimize", *CASES[case]])
    err = capsys.readouterr().err
    assert rc == 2, (case, err)
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err, err
    assert _snapshot(scene) == before, case


@pytest.mark.parametrize("case", [
    ["db", "export", "lat.sqlite"],  # refused by format before anything; the DB is intact
    ["db", "export", "link.json"],
    ["db", "export", "fifo.json"],
    ["db", "export", "adir"],
])
def test_db_export_paths(scene, capsys, case):
    if case[-1] == "fifo.json":
        os.mkfifo(scene / "fifo.json")
    before = _snapshot(scene)
    rc = cli.main([*case, "--latency-db", "lat.sqlite"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert _snapshot(scene) == before


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(scene, capsys, mask, mode):
    """issue 14: model, report and ORT-free outputs get 0o666 & ~umask (0644 under 022)."""
    old = os.umask(mask)
    try:
        rc = cli.main(["optimize", "in.onnx", "o.onnx", "--report", "r.json"])
        rc2 = cli.main(["db", "export", "x.json", "--latency-db", "lat.sqlite"])
    finally:
        os.umask(old)
    assert rc == 0 and rc2 == 0, capsys.readouterr().err
    for name in ("o.onnx", "r.json", "x.json"):
        assert stat.S_IMODE(os.stat(scene / name).st_mode) == mode, name
    before = _snapshot(scene)
    assert before["victim.txt"] == ("file", b"unrelated, must survive")


def test_external_data_follows_the_umask_and_is_loadable(tmp_path):
    from onnx_depth import ir, runtime

    old = os.umask(0o022)
    try:
        ir.save(_chain(), tmp_path / "big.onnx", external_threshold=10)
    finally:
        os.umask(old)
    for name in ("big.onnx", "big.onnx.data"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644
    s = runtime.make_session(os.fspath(tmp_path / "big.onnx"))
    ref = runtime.make_session(_chain())
    feed = {"x": np.ones((1, 4), np.float32)}
    np.testing.assert_array_equal(runtime.run(s, feed)["y"], runtime.run(ref, feed)["y"])


def test_outputs_never_replace_the_inputs_external_data_or_calibration(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    onnx.save(_chain(), "ext.onnx", save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    np.save("cal.npy", np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32))
    before = _snapshot(tmp_path)
    for args in (["ext.onnx", "ext.onnx.data"], ["ext.onnx", "o.onnx", "--report", "ext.onnx.data"],
                 ["ext.onnx", "o.onnx", "--calibration", "cal.npy", "--report", "cal.npy"]):
        rc = cli.main(["optimize", *args])
        err = capsys.readouterr().err
        assert rc == 2 and "same file" in err, (args, err)
        assert _snapshot(tmp_path) == before
