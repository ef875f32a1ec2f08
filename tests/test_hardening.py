"""Issue 13 regression tests: one per item this file covers (2, 3, 6, 7, 8, 9, 11, 12), each
failing on the code before the fix. Item 5 and the path matrix: tests/test_output_paths.py;
the fuzz test: tests/test_fuzz.py. Models are built with onnx.helper and run by onnxruntime."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnx_depth import api, cli, compare, runtime, safe_io
from onnx_depth.latency_db.store import Entry, LatencyStore

F = lambda n, s: h.make_tensor_value_info(n, T.FLOAT, s)  # noqa: E731


def _model(nodes, inputs, outputs, inits=(), value_info=(), opset=17, ir=8, sparse=()):
    g = h.make_graph(nodes, "g", inputs, outputs, list(inits), value_info=list(value_info), sparse_initializer=list(sparse))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=ir)


def _w(name, *shape, seed=0, scale=0.5):
    return nh.from_array((np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32), name)


def _chain():
    """y = W2 relu(W1 x): the smallest model that every mode accepts."""
    return _model([h.make_node("MatMul", ["x", "W1"], ["a"]), h.make_node("Relu", ["a"], ["b"]),
                   h.make_node("MatMul", ["b", "W2"], ["y"])], [F("x", [1, 4])], [F("y", [1, 4])],
                  [_w("W1", 4, 4), _w("W2", 4, 4, seed=1)])


def _save(tmp_path, m, name="m.onnx") -> Path:
    p = tmp_path / name
    onnx.save(m, p)
    return p


def _cli(capsys, *args) -> tuple[int, str]:
    rc = cli.main([str(a) for a in args])
    return rc, capsys.readouterr().err


# ---------------------------------------------------------------- item 2: overridable initializers
def _overridable_model():
    """IR 8: W is an initializer AND a graph input; W2 = 2 W is foldable only if W is taken as a
    constant, and C = c1 + c1 is really foldable (so folding runs)."""
    nodes = [h.make_node("Mul", ["W", "two"], ["W2"]), h.make_node("Add", ["c1", "c1"], ["C"]),
             h.make_node("MatMul", ["X", "W2"], ["Y0"]), h.make_node("Add", ["Y0", "C"], ["Y"])]
    inits = [nh.from_array(np.full((4, 4), 5.0, np.float32), "W"), nh.from_array(np.array(2.0, np.float32), "two"),
             nh.from_array(np.ones(4, np.float32), "c1")]
    return _model(nodes, [F("X", [2, 4]), F("W", [4, 4])], [F("Y", [2, 4])], inits)


def test_item2_overridable_initializer_is_not_folded_and_is_checked(tmp_path):
    src = _save(tmp_path, _overridable_model())
    res = api.optimize(src, lossless=True, check=2)
    c = compare.compare_models(os.fspath(src), res.model, n_random=3, overridable=True)
    assert c.allclose, c.summary()
    # the check of optimize itself fed W: its feeds include the overridable initializer
    s = runtime.make_session(os.fspath(src))
    assert [x.name for x in runtime.overridable_specs(s)] == ["W"]
    assert "W" in runtime.random_feeds(s, 1, overridable=True)[0]


# ---------------------------------------------------------------- item 3: NaN/Inf calibration
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_item3_non_finite_calibration_refused(tmp_path, capsys, bad):
    src = _save(tmp_path, _chain())
    data = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    data[5, 2] = bad
    cal = tmp_path / "cal.npy"
    np.save(cal, data)
    rc, err = _cli(capsys, "optimize", src, tmp_path / "o.onnx", "--calibration", cal)
    assert rc == 2 and ("NaN" in err or "Inf" in err) and "sample 5" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


# ---------------------------------------------------------------- item 6: fixed temp names / symlinks
def test_item6_planted_temp_symlinks_are_not_followed(tmp_path, capsys):
    src = _save(tmp_path, _chain())
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("r.json.tmp", "o.onnx.tmp", ".o.onnx.tmp", "x.json.tmp"):
        (tmp_path / name).symlink_to(victim)
    rc, err = _cli(capsys, "optimize", src, tmp_path / "o.onnx", "--report", tmp_path / "r.json")
    assert rc == 0, err
    db = tmp_path / "lat.sqlite"
    with LatencyStore(db) as s:
        s.put("fp", "sig", Entry(3, 1.0, 0.9, 1.1, 0.01))
    rc, err = _cli(capsys, "db", "export", tmp_path / "x.json", "--latency-db", db)
    assert rc == 0, err
    assert victim.read_text() == "precious"
    assert json.loads((tmp_path / "r.json").read_text())["output"].endswith("o.onnx")
    assert json.loads((tmp_path / "x.json").read_text())["entries"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(safe_io.TMP_PREFIX)]


# ---------------------------------------------------------------- item 7: special files
def test_item7_fifo_out_is_refused_and_kept(tmp_path, capsys):
    src = _save(tmp_path, _chain())
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rc, err = _cli(capsys, "optimize", src, fifo)
    assert rc == 2 and "FIFO" in err
    assert fifo.is_fifo()


def test_item7_device_out_is_refused():
    with pytest.raises(Exception, match="device"):
        safe_io.check_destination("/dev/null", "OUT")


# ---------------------------------------------------------------- item 8: memory bomb
def _bomb(kind: str) -> onnx.ModelProto:
    """A [4096, 4096, 256] float tensor (16 GiB) from a model of under 200 bytes."""
    s = nh.from_array(np.array([4096, 4096, 256], np.int64), "s")
    if kind == "fold":  # ConstantOfShape of constants: a folding bomb
        nodes = [h.make_node("ConstantOfShape", ["s"], ["c"], value=h.make_tensor("v", T.FLOAT, [1], [1.0])),
                 h.make_node("ReduceSum", ["c"], ["r"], keepdims=0), h.make_node("Add", ["x", "r"], ["y"])]
        out = F("y", [1])
    else:  # Expand of an input: an evaluation bomb (--check)
        nodes = [h.make_node("Expand", ["x", "s"], ["e"]), h.make_node("ReduceSum", ["e"], ["y"], keepdims=0)]
        out = F("y", [])
    return _model(nodes, [F("x", [1])], [out], [s], opset=13)


# A fresh wrapper process whose only child is the CLI: RUSAGE_CHILDREN is that child's peak RSS.
# The child runs under RLIMIT_AS = 8 GiB so that a regression fails instead of swapping the box.
_MEASURE = """
import resource, subprocess, sys
def limit():
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
r = subprocess.run([sys.executable, "-m", "onnx_depth", *sys.argv[1:]], capture_output=True, text=True, preexec_fn=limit)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(r.stderr.strip())
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind,command", [("fold", "analyze"), ("eval", "optimize")])
def test_item8_memory_bomb_refused_before_evaluation(tmp_path, kind, command):
    bomb = _save(tmp_path, _bomb(kind), "bomb.onnx")
    assert bomb.stat().st_size < 1024
    args = [str(bomb)] + ([str(tmp_path / "o.onnx"), "--check", "2"] if command == "optimize" else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _MEASURE, command, *args], capture_output=True, text=True, env=env, timeout=300).stdout
    first, _, err = out.partition("\n")
    rc, rss_kb = map(int, first.split())
    assert rc == 2 and "refusing to evaluate" in err and len(err.strip().splitlines()) == 1, out
    assert rss_kb < 500 * 1024, f"peak RSS {rss_kb / 1024:.0f} MB"


# ---------------------------------------------------------------- item 9: latency DB
def _db(path: Path) -> Path:
    with LatencyStore(path) as s:
        s.put("fp", "sig", Entry(3, 1.0, 0.9, 1.1, 0.01))
        s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def test_item9_export_onto_the_db_is_refused(tmp_path, capsys):
    db = _db(tmp_path / "lat.json")  # a DB whose name looks like an export target
    before = db.read_bytes()
    rc, err = _cli(capsys, "db", "export", db, "--latency-db", db)
    assert rc == 2 and "same file" in err
    assert db.read_bytes() == before
    with LatencyStore(db, create=False) as s:
        assert s.stats()["entries"] == 1


def test_item9_repair_refuses_a_non_database(tmp_path, capsys):
    model = _save(tmp_path, _chain())
    before = model.read_bytes()
    for extra in ([], ["--force"]):
        rc, err = _cli(capsys, "db", "repair", "--latency-db", model, *extra)
        assert rc == 2 and "not an onnx-depth latency database" in err
    assert model.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_item9_foreign_sqlite_is_refused_without_switching_to_wal(tmp_path, capsys):
    foreign = tmp_path / "app.sqlite"
    c = sqlite3.connect(foreign)
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    before = foreign.read_bytes()
    rc, err = _cli(capsys, "db", "stats", "--latency-db", foreign)
    assert rc == 2 and "not an onnx-depth latency database" in err
    assert foreign.read_bytes() == before and not Path(f"{foreign}-wal").exists()
    c = sqlite3.connect(foreign)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    c.close()


def test_item9_corrupt_schema_page_is_exit_2_and_repairable(tmp_path, capsys):
    db = _db(tmp_path / "lat.sqlite")
    data = bytearray(db.read_bytes())
    i = data.find(b"CREATE TABLE entries")
    data[i + 7:i + 9] = b"\xff\xfe"  # invalid UTF-8 in the schema text
    db.write_bytes(bytes(data))
    for cmd in (["db", "stats"], ["profile", _save(tmp_path, _chain())]):
        rc, err = _cli(capsys, *cmd, "--latency-db", db)
        assert rc == 2 and "db repair --force" in err, err
    rc, err = _cli(capsys, "db", "repair", "--force", "--latency-db", db)
    assert rc == 0, err
    with LatencyStore(db, create=False) as s:
        assert s.stats()["entries"] == 1


def test_item9_nan_median_row_is_ignored(tmp_path, capsys):
    db = _db(tmp_path / "lat.sqlite")
    c = sqlite3.connect(db)
    c.execute("INSERT INTO entries (fingerprint, signature, samples, median_ms, p10_ms, p90_ms, measured_at)"
              " VALUES ('fp', 'nan', 3, 'NaN', 1, 1, '2024-01-01T00:00:00')")
    c.commit()
    c.close()
    with LatencyStore(db) as s:
        assert s.get("fp", "nan") is None  # as if never measured: profiling measures it again
        assert [sig for _, sig, _ in s.entries()] == ["sig"]
    rc, err = _cli(capsys, "db", "export", tmp_path / "x.json", "--latency-db", db)
    assert rc == 0, err


# ---------------------------------------------------------------- item 11: bool scalar, profile
def _if_model():
    then = h.make_graph([h.make_node("Identity", ["a"], ["t"])], "then", [], [F("t", [1, 4])])
    els = h.make_graph([h.make_node("Neg", ["a"], ["e"])], "else", [], [F("e", [1, 4])])
    return _model([h.make_node("MatMul", ["x", "W1"], ["a0"]), h.make_node("Relu", ["a0"], ["a1"]),
                   h.make_node("MatMul", ["a1", "W2"], ["a"]), h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)],
                  [F("x", [1, 4]), h.make_tensor_value_info("c", T.BOOL, [])], [F("y", [1, 4])], [_w("W1", 4, 4), _w("W2", 4, 4, seed=1)])


def test_item11_scalar_bool_input(tmp_path, capsys):
    src = _save(tmp_path, _if_model())
    rc, err = _cli(capsys, "optimize", src, tmp_path / "o.onnx", "--check", "2")
    assert rc == 0, err
    rc, err = _cli(capsys, "profile", src, "--latency-db", tmp_path / "lat.sqlite", "-q")
    assert rc == 0, err
    feed = runtime.random_feed([runtime.TensorSpec("c", (), np.dtype(np.bool_))], np.random.default_rng(0))
    assert isinstance(feed["c"], np.ndarray) and feed["c"].shape == ()


def _conv_pool_model(shape):
    inits = [_w("w1", 8, 3, 3, 3), _w("w2", 8, 8, 3, 3, seed=1), _w("w3", 8, 8, 1, 1, seed=2)]
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             h.make_node("MaxPool", ["a"], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
             h.make_node("Conv", ["p", "w2"], ["b"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["b"], ["c"]),
             h.make_node("Conv", ["c", "w3"], ["d"]), h.make_node("Conv", ["d", "w3"], ["y"])]
    return _model(nodes, [F("x", shape)], [F("y", [1, 8, None, None])], inits)


def test_item11_profile_symbolic_hw_and_ceil_mode_never_exit_4(tmp_path, capsys):
    db = tmp_path / "lat.sqlite"
    rc, err = _cli(capsys, "profile", _save(tmp_path, _conv_pool_model([1, 3, 15, 15]), "ceil.onnx"), "--latency-db", db, "-q")
    assert rc == 0, err
    # symbolic H/W profiled at H = W = 1 cannot run (the pool leaves 0 pixels): a one-line exit 2
    rc, err = _cli(capsys, "profile", _save(tmp_path, _conv_pool_model([1, 3, "H", "W"]), "sym.onnx"), "--latency-db", db, "-q")
    assert rc in (0, 2) and len(err.strip().splitlines()) <= 1, err


# ---------------------------------------------------------------- item 12: exit 4 -> 2
def _invalid_models():
    x = F("x", [1, 3, 8, 8])
    sp = h.make_sparse_tensor(nh.from_array(np.array([1.0, 2.0], np.float32), "Wsp"), nh.from_array(np.array([0, 5], np.int64), "i"), [4, 4])
    return {
        "conv channel mismatch": _model([h.make_node("Conv", ["x", "w"], ["y"])], [x], [F("y", [1, 4, 6, 6])], [_w("w", 4, 5, 3, 3)]),
        "no outputs": _model([h.make_node("Relu", ["x"], ["y"])], [x], []),
        "prelu slope": _model([h.make_node("PRelu", ["x", "s"], ["y"])], [x], [F("y", [1, 3, 8, 8])], [_w("s", 5)]),
        "2-d conv weight": _model([h.make_node("Conv", ["x", "w"], ["y"])], [x], [F("y", [1, 4, 8, 8])], [_w("w", 4, 3)]),
        "sparse initializer": _model([h.make_node("MatMul", ["v", "Wsp"], ["y"])], [F("v", [1, 4])], [F("y", [1, 4])], sparse=[sp]),
        "lying value_info": _model([h.make_node("MatMul", ["v", "W1"], ["a"]), h.make_node("MatMul", ["a", "W2"], ["y"])],
                                   [F("v", [1, 4])], [F("y", [1, 4])], [_w("W1", 4, 4), _w("W2", 4, 4)], value_info=[F("a", [7, 9, 2])]),
        "gather index out of range": _model([h.make_node("Gather", ["v", "idx"], ["y"], axis=1)], [F("v", [1, 4])], [F("y", [1, 1])],
                                            [nh.from_array(np.array([10], np.int64), "idx")]),
    }


@pytest.mark.parametrize("name", list(_invalid_models()))
def test_item12_invalid_models_are_one_line_exit_2(tmp_path, capfd, name):
    src = _save(tmp_path, _invalid_models()[name])
    rc = cli.main(["optimize", str(src), str(tmp_path / "o.onnx"), "--check", "1"])
    err = capfd.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "onnxruntime:" not in err, err  # no ORT log lines
    assert not (tmp_path / "o.onnx").exists()


def test_item12_truncated_external_data(tmp_path, capsys):
    d = tmp_path / "ext"
    d.mkdir()
    onnx.save(_chain(), d / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    data = (d / "m.onnx.data").read_bytes()
    (d / "m.onnx.data").write_bytes(data[: len(data) // 2])
    for cmd in (["analyze", d / "m.onnx"], ["optimize", d / "m.onnx", tmp_path / "o.onnx"]):
        rc, err = _cli(capsys, *cmd)
        assert rc == 2 and "truncated" in err, err


@pytest.mark.parametrize("args,needle", [
    (["--check", "-1"], "--check"), (["--latency-budget", "inf"], "finite"), (["--latency-budget", "nan"], "--latency-budget")])
def test_item12_bad_numbers_refused(tmp_path, capsys, args, needle):
    rc, err = _cli(capsys, "optimize", _save(tmp_path, _chain()), tmp_path / "o.onnx", *args)
    assert rc == 2 and needle in err


def test_item12_out_directory_and_trailing_separator(tmp_path, capsys):
    src = _save(tmp_path, _chain())
    (tmp_path / "d").mkdir()
    rc, err = _cli(capsys, "optimize", src, tmp_path / "d")
    assert rc == 2 and "directory" in err
    rc, err = _cli(capsys, "optimize", src, f"{tmp_path / 'd' / 'x'}{os.sep}")
    assert rc == 2 and "separator" in err and not (tmp_path / "d" / "x").exists()


def test_item12_memory_error_in_check_is_exit_2(tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(compare, "compare_models", boom)
    monkeypatch.setattr(compare, "compare_at_shapes", boom)  # --check's entry point (several shapes)
    rc, err = _cli(capsys, "optimize", _save(tmp_path, _chain()), tmp_path / "o.onnx", "--check", "1")
    assert rc == 2 and "out of memory" in err


def test_item12_new_db_where_no_folder_can_be_made(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    rc, err = _cli(capsys, "db", "import", tmp_path / "nothing.json", "--latency-db", blocker / "lat.sqlite")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    rc, err = _cli(capsys, "profile", _save(tmp_path, _chain()), "--latency-db", blocker / "lat.sqlite", "-q")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err


def test_item12_stale_temp_files_of_ours_are_cleaned(tmp_path, capsys):
    src = _save(tmp_path, _chain())
    stale = tmp_path / f"{safe_io.TMP_PREFIX}deadbeef{safe_io.TMP_SUFFIX}"
    fresh = tmp_path / f"{safe_io.TMP_PREFIX}cafecafe{safe_io.TMP_SUFFIX}"
    other = tmp_path / "user.tmp"
    work = tmp_path / f"{safe_io.TMP_PREFIX}ort-killed"  # an --emit-ort work folder left by SIGKILL
    work.mkdir()
    for p in (stale, fresh, other, work / "model.ort"):
        p.write_bytes(b"x" * 1000)
    old = time.time() - 2 * safe_io.STALE_SECONDS
    for p in (stale, other, work):
        os.utime(p, (old, old))
    rc, err = _cli(capsys, "optimize", src, tmp_path / "o.onnx")
    assert rc == 0, err
    assert not stale.exists() and not work.exists()
    assert fresh.exists() and other.exists()  # only ours, only old ones


# ---------------------------------------------------------------- found by tests/test_fuzz.py
def test_removing_an_activation_read_by_an_if_branch_rewires_the_branch():
    """Budget mode removed a Relu whose output an If branch read from the outer scope; the
    branch kept reading the removed tensor (exit 4: "Nodes in a graph must be topologically
    sorted"). Graph.replace_uses now renames outer-scope reads in subgraphs too."""
    from onnx_depth import ir

    then = h.make_graph([h.make_node("Identity", ["r"], ["t"])], "then", [], [F("t", [1, 4])])
    els = h.make_graph([h.make_node("Neg", ["r"], ["e"])], "else", [], [F("e", [1, 4])])
    m = _model([h.make_node("MatMul", ["x", "W1"], ["a"]), h.make_node("Relu", ["a"], ["r"]),
                h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)],
               [F("x", [1, 4]), h.make_tensor_value_info("c", T.BOOL, [])], [F("y", [1, 4])], [_w("W1", 4, 4)])
    g = ir.load(m)
    relu = next(n for n in g if n.op_type == "Relu")
    assert g.replace_uses("r", "a") == 1
    g.remove_node(relu)
    out = ir.to_proto(g)
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    w = nh.to_array(m.graph.initializer[0])
    s = runtime.make_session(out)
    for cond in (True, False):
        y = runtime.run(s, {"x": x, "c": np.array(cond)})["y"]
        np.testing.assert_allclose(y, (x @ w) if cond else -(x @ w), rtol=1e-5)
