"""CLI behaviour: results, error messages and exit codes. Runs the real console entry point."""

import json
import os
import subprocess
import sys

import onnx
import pytest
from onnx import helper

from onnx_depth import cli
from tests.helpers import conv_relu_model


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onnx_depth", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save_model(conv_relu_model(), p)
    return p


def test_analyze_prints_and_json(model_path, capsys):
    assert cli.main(["analyze", str(model_path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["nodes"] == 2 and d["params"] == 4 * 3 * 9 + 4
    assert d["macs"] == 1 * 4 * 8 * 8 * 3 * 9
    assert d["activations"] == 1 and d["depth"] == 2
    assert d["inputs"][0]["shape"] == [1, 3, 8, 8]


def test_optimize_round_trip_with_check_and_report(model_path, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    before = model_path.read_bytes()
    rc = cli.main(["optimize", str(model_path), str(out), "--check", "2", "--report", str(tmp_path / "r.json")])
    assert rc == 0
    assert model_path.read_bytes() == before  # input untouched
    assert onnx.load(out).ir_version == 8
    text = capsys.readouterr().out
    assert "nodes" in text and "match over 2 run(s)" in text
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["nodes_before"] == 2 and rep["fidelity"]["allclose"] is True
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # atomic write leaves nothing


def _bad_files(tmp_path, model_path):
    good = model_path.read_bytes()
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 2])
    bad = conv_relu_model()
    bad.graph.node[0].input[0] = "does_not_exist"
    onnx.save_model(bad, tmp_path / "invalid.onnx")
    return {
        "missing": (tmp_path / "nope.onnx", "no such file"),
        "directory": (tmp_path, "is a directory"),
        "empty": (tmp_path / "empty.onnx", "empty file"),
        "not onnx": (tmp_path / "text.onnx", "not an ONNX model"),
        "truncated": (tmp_path / "trunc.onnx", "not an ONNX model or truncated"),
        "checker": (tmp_path / "invalid.onnx", "fails the ONNX checker"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "not onnx", "truncated", "checker"])
@pytest.mark.parametrize("command", ["analyze", "optimize"])
def test_bad_input_gives_one_line_and_exit_2(case, command, tmp_path, model_path):
    path, message = _bad_files(tmp_path, model_path)[case]
    args = ["analyze", path] if command == "analyze" else ["optimize", path, tmp_path / "out.onnx"]
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-depth: error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_debug_shows_traceback(tmp_path):
    r = run_cli("--debug", "analyze", tmp_path / "nope.onnx")
    assert r.returncode != 0 and "Traceback" in r.stderr and "InputError" in r.stderr


def test_refuses_to_overwrite_input(model_path):
    before = model_path.read_bytes()
    r = run_cli("optimize", model_path, model_path)
    assert r.returncode == 2 and "refusing to overwrite the input" in r.stderr
    assert model_path.read_bytes() == before


def test_missing_output_directory(model_path, tmp_path):
    r = run_cli("optimize", model_path, tmp_path / "no" / "such" / "dir.onnx")
    assert r.returncode == 2 and "output directory does not exist" in r.stderr


def test_usage_error_exit_2():
    r = run_cli("optimize")
    assert r.returncode == 2 and "error" in r.stderr


def test_check_mismatch_exits_1(model_path, tmp_path, monkeypatch, capsys):
    # Make the emitter corrupt one weight: --check must catch it and exit 1 without writing.
    from onnx_depth import api, ir

    real = ir.to_proto

    def corrupting(graph, **kw):
        m = real(graph, **kw)
        w = m.graph.initializer[0]
        arr = onnx.numpy_helper.to_array(w).copy()
        arr.flat[0] += 1.0
        w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
        return m

    monkeypatch.setattr(api.ir, "to_proto", corrupting)
    out = tmp_path / "o.onnx"
    assert cli.main(["optimize", str(model_path), str(out), "--check", "2"]) == 1
    assert "MISMATCH" in capsys.readouterr().err
    assert not out.exists()


def test_console_script_help():
    r = run_cli("--help")
    assert r.returncode == 0 and "analyze" in r.stdout and "optimize" in r.stdout and "demo" in r.stdout
