"""`analyze --calibration` and `optimize --calibration` on the real MNIST CNN with real digits."""

import json

import numpy as np
import onnx
import pytest

from onnx_depth import cli, compare
from onnx_depth.zoo import real


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    try:
        images, labels = real.mnist_digits(300)
    except real.RealAssetMissing as e:
        pytest.skip(str(e))
    d = tmp_path_factory.mktemp("mnist")
    np.save(d / "cal.npy", images[:150])
    return real.mnist_cnn_onnx(), d / "cal.npy", images[150:], labels[150:]


def test_analyze_with_calibration_reports_every_activation(mnist, capsys):
    model, cal, _, _ = mnist
    assert cli.main(["analyze", str(model), "--calibration", str(cal), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    rows = d["activation_report"]
    assert len(rows) == 4 and all(r["op"] == "Relu" for r in rows)
    assert d["activations"] == 4


def test_optimize_with_calibration_is_lossy_and_measured(mnist, tmp_path, capsys):
    model, cal, images, labels = mnist
    out = tmp_path / "o.onnx"
    rep = tmp_path / "r.json"
    assert cli.main(["optimize", str(model), str(out), "--calibration", str(cal), "--report", str(rep)]) == 0
    r = json.loads(rep.read_text())
    # fidelity is reported on the held-out part, the fit part's beside it (issue 17)
    assert r["fidelity"]["samples"] + r["fidelity_fit"]["samples"] == 150 and r["notes"]
    assert r["validation"]["held_out"] and r["validation"]["validation_samples"] == r["fidelity"]["samples"]
    assert r["params_after"] < r["params_before"]  # dead channels pruned
    # held-out digits: the rewritten model still agrees with the original on almost all of them
    feeds = [{"input": images[i : i + 1]} for i in range(len(images))]
    c = compare.compare_models(str(model), onnx.load(out), feeds)
    assert c.top1_agreement >= 0.97


def test_lossless_with_calibration_changes_nothing_lossy(mnist, tmp_path):
    model, cal, _, _ = mnist
    out = tmp_path / "o.onnx"
    assert cli.main(["optimize", str(model), str(out), "--lossless", "--calibration", str(cal), "--check", "2"]) == 0


def test_bad_calibration_file_exit_2(mnist, tmp_path, capsys):
    model, _, _, _ = mnist
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 5), np.float32))
    assert cli.main(["analyze", str(model), "--calibration", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnx-depth: error:")
