"""The CLI as a pipeline step and as its peers behave (issue 14): closed pipes, demo errors and
cleanup, -q on every subcommand, warnings that -q does not hide and that the API raises, and the
README documenting exactly the CLI's flags."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from onnx_depth import api, diagnostics, ir, zoo
from onnx_depth.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    """FFN stack with PReLU 0.25: merging each block is ~60x fewer MACs (a budget of 0.5 is met)."""
    d = tmp_path_factory.mktemp("pipeline")
    ir.save(zoo.build("ffn_stack", seq=32, d_model=32, d_ff=1024, blocks=2, act="prelu", prelu_slope=0.25), d / "m.onnx")
    return {"dir": d, "model": d / "m.onnx", "db": d / "db.sqlite"}


def test_closed_pipe_is_a_quiet_exit(small: dict) -> None:
    """`onnx-depth analyze m.onnx | true`: the reader is gone before we write; no traceback, no
    'internal error', exit 128 + SIGPIPE."""
    p = subprocess.Popen([sys.executable, "-m", "onnx_depth", "analyze", str(small["model"])], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=_env())
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert err == "", err


def test_demo_unknown_model_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["demo", "--model", "nosuch"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in zoo.NAMES)


def test_demo_removes_its_temporary_folder_unless_out(tmp_path, monkeypatch, capsys) -> None:
    """A failing demo (bad budget: exit 2 after the model was built) leaves no temporary folder;
    with --out the folder and the model stay."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    assert main(["-q", "demo", "--model", "ffn_stack", "--budget", "-1"]) == 2
    assert list(tmp.iterdir()) == []
    out = tmp_path / "kept"
    assert main(["demo", "-q", "--model", "ffn_stack", "--budget", "-1", "--out", str(out)]) == 2
    assert (out / "ffn_stack.onnx").is_file()
    assert "--latency-budget" in capsys.readouterr().err


def _subparsers(p: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    out = {prefix: p}
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, child in a.choices.items():
                out.update(_subparsers(child, prefix + (name,)))
    return out


def test_quiet_is_accepted_before_and_after_every_subcommand() -> None:
    p = build_parser()
    commands = [c for c in _subparsers(p) if c and not any(isinstance(a, argparse._SubParsersAction)
                                                           for a in _subparsers(p)[c]._actions)]
    assert {("analyze",), ("optimize",), ("demo",), ("profile",), ("db", "stats")} <= set(commands)
    for c in commands:
        sub = _subparsers(p)[c]
        rest = ["x"] * sum(1 for a in sub._actions if not a.option_strings and a.nargs in (None, 1, "+"))
        needs = [a for a in sub._actions if a.option_strings and a.required]
        extra = [x for a in needs for x in (a.option_strings[0], "x.json")]
        after = p.parse_args([*c, *rest, *extra, "-q"])
        before = p.parse_args(["-q", *c, *rest, *extra])
        plain = p.parse_args([*c, *rest, *extra])
        assert after.quiet is True and before.quiet is True, c
        assert not getattr(plain, "quiet", False), c


def test_warnings_reach_stderr_under_quiet_and_the_api(small: dict, capsys) -> None:
    """Data-free decisions and unmeasured fidelity: Python warnings from the API (with their
    categories), listed in the report, and printed on stderr by the CLI even with -q."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = api.optimize(small["model"], latency_budget=0.5, latency_db=small["db"])
    cats = [w.category for w in caught]
    assert diagnostics.DataFreeWarning in cats
    unmeasured = [c for c in cats if issubclass(c, diagnostics.FidelityNotMeasuredWarning)]
    assert len(unmeasured) == 1  # one warning for "fidelity unknown / not measured" (it was two)
    assert {"data-free", "fidelity-not-measured"} <= {w["category"] for w in res.report.warnings}
    out = small["dir"] / "q.onnx"
    assert main(["optimize", str(small["model"]), str(out), "--latency-budget", "0.5", "--latency-db", str(small["db"]), "-q"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("onnx-depth: warning: ")]
    assert any("data-free" in ln for ln in lines) and any("NOT measured" in ln for ln in lines)
    # over-budget emission: a warning too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = api.optimize(small["model"], latency_budget=0.001, latency_db=small["db"], allow_over_budget=True)
    assert diagnostics.OverBudgetWarning in {w.category for w in caught}
    assert res.report.budget_met is False and res.report.budget_status == "no (allowed)"


# ---- README and CLI from one source ---------------------------------------------------------------
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _cli_flags() -> dict[tuple[str, ...], set[str]]:
    out = {}
    for c, sub in _subparsers(build_parser()).items():
        out[c] = {o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    return out


def _readme_commands(text: str) -> list[tuple[tuple[str, ...], set[str]]]:
    """Every `onnx-depth SUB ...` in the README (a code span, table cell or command line with its
    backslash continuations) with the flags written after it."""
    subs = {c for c in _cli_flags() if c}
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i]
        for m in re.finditer(r"onnx-depth(?: (?:-q|--quiet|--debug))*((?: [a-z]+)+)", line):
            words = tuple(m.group(1).split())
            c = max((s for s in subs if words[:len(s)] == s), key=len, default=None)
            if c is None:
                continue
            tail = line[m.end():]
            stop = re.search(r"`|\|", tail)  # the code span or table cell ends the command
            out.append((c, set(FLAG.findall(tail[:stop.start()] if stop else tail))))
        i += 1
    return out


def test_readme_documents_exactly_the_cli_flags() -> None:
    """Every flag the README shows after `onnx-depth SUB` exists on SUB; every CLI flag is
    documented in the README's CLI reference (between the `<!-- cli -->` markers)."""
    text = README.read_text()
    flags = _cli_flags()
    wrong = [(c, sorted(f - flags[c] - flags[()])) for c, f in _readme_commands(text) if f - flags[c] - flags[()]]
    assert not wrong, f"README shows flags the CLI rejects: {wrong}"
    m = re.search(r"<!-- cli -->(.*?)<!-- /cli -->", text, re.S)
    assert m, "README needs a CLI reference between <!-- cli --> and <!-- /cli -->"
    documented = set(FLAG.findall(m.group(1)))
    every = set().union(*flags.values())
    assert not every - documented, f"CLI flags missing from the README: {sorted(every - documented)}"
    assert not documented - every, f"README's CLI reference documents flags the CLI lacks: {sorted(documented - every)}"
    assert "--seed" not in every  # the README once documented it (issue 14): seed is an API parameter only


def test_node_counts_agree_between_analyze_and_optimize(tmp_path, capsys) -> None:
    """analyze counts the model as given; optimize's "before" is the same number, and the
    loader's constant folding is listed as a rewrite, so a change in nodes is always explained."""
    from onnx import TensorProto, helper, numpy_helper

    c = numpy_helper.from_array(np.full((4,), 2.0, np.float32), "c")
    d = numpy_helper.from_array(np.full((4,), 3.0, np.float32), "d")
    g = helper.make_graph([helper.make_node("Mul", ["c", "d"], ["cd"], name="fold_me"),
                           helper.make_node("Add", ["x", "cd"], ["y"], name="add")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [c, d])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = tmp_path / "m.onnx"
    ir.save(m, src)
    res = api.optimize(src, lossless=True)
    assert api.analyze(src).nodes == res.report.before.nodes == 2
    changed = sum(p["changed"] for p in res.report.passes)
    assert res.report.after.nodes == 1 and changed >= 1
    assert res.report.passes[0]["pass"] == "fold_constants"
    # a model with nothing to fold or rewrite: 0 rewrites and 0% change in nodes
    res2 = api.optimize(_plain(tmp_path), lossless=True)
    assert sum(p["changed"] for p in res2.report.passes) == 0 and res2.report.after.nodes == res2.report.before.nodes


def _plain(tmp_path) -> Path:
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"], name="s")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    ir.save(m, tmp_path / "plain.onnx")
    return tmp_path / "plain.onnx"


def test_tables_shorten_names_from_the_middle_and_explain_fidelity_cost(small: dict) -> None:
    from onnx_depth.fmt import humanize_macs, shorten

    long = "/features/features.3/conv/conv.2/Clip"
    s = shorten(long, 24)
    assert len(s) == 24 and s.startswith("/features/") and s.endswith("conv.2/Clip") and "..." in s
    assert humanize_macs("c1: merged kernel [5, 5] costs 38535168 MACs > 9633792") == \
        "c1: merged kernel [5, 5] costs 38.54M MACs > 9.63M"
    res = api.optimize(small["model"], latency_budget=0.5, latency_db=small["db"])
    table = res.report.segment_table()
    assert "fidelity cost (guess)" in table and "importance" not in table
    assert "blocks.0.fc1.matmul" in table  # node names, not segment ids
    assert res.report.to_dict()["segments"][0]["layers"] == ["blocks.0.fc1.matmul", "blocks.0.fc2.matmul"]
