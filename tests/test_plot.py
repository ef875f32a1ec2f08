"""Plots: real PNG files of the expected size; a clear error without matplotlib."""

import sys

import pytest

from onnx_depth.errors import InputError, OnnxDepthError
from onnx_depth.plot import MissingExtra, plot_curves, plot_plans

pytest.importorskip("matplotlib")  # the `plot` extra; `test` installs it too
Image = pytest.importorskip("PIL.Image")


def _png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_plot_plans_png(tmp_path):
    points = [(1.0, 1.0), (0.9, 0.99), (0.8, 0.97), (0.7, 0.9), (0.6, float("nan"))]
    out = plot_plans(points, (0.8, 0.97), tmp_path / "plans.png", budget=0.85, title="resnet18")
    assert out == tmp_path / "plans.png"
    assert _png(out) == (640, 480)
    # plan-file style mappings, custom size
    pts = [{"latency_ratio_predicted": 0.9, "fidelity": 0.95}, {"latency_ratio": 0.7, "fidelity": 0.8}]
    assert _png(plot_plans(pts, pts[0], tmp_path / "m.png", figsize=(4, 3), dpi=50)) == (200, 150)
    assert _png(plot_plans([], None, tmp_path / "empty.png")) == (640, 480)


def test_plot_curves_png_and_svg(tmp_path):
    curves = {"DP with refit": [(0.9, 0.99), (0.7, 0.95), (0.5, 0.8)], "naive": [(0.5, 0.4), (0.9, 0.9), (0.7, 0.7)]}
    assert _png(plot_curves(curves, tmp_path / "c.png", title="fidelity vs budget", dpi=80)) == (512, 384)
    svg = plot_curves(curves, tmp_path / "c.svg")
    assert svg.read_text().lstrip().startswith("<?xml") and "DP with refit" in svg.read_text()


def test_plot_errors(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="does not exist"):
        plot_plans([(1, 1)], None, tmp_path / "nope" / "p.png")
    with pytest.raises(InputError, match="unsupported plot format"):
        plot_plans([(1, 1)], None, tmp_path / "p.xyz")
    with pytest.raises(InputError):
        plot_curves({}, tmp_path / "c.png")
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtra, match=r"pip install onnx-depth\[plot\]") as e:
        plot_plans([(1, 1)], None, tmp_path / "p.png")
    assert isinstance(e.value, OnnxDepthError) and e.value.exit_code == 2


def test_plot_report_marks_measured_predicted_and_data_free(tmp_path):
    """optimize --plot: measured plans with their band, predicted-only plans marked as such,
    the tightening rounds numbered, "no fidelity measured" without calibration data."""
    from onnx_depth.plot import plot_report

    report = {
        "budget": 0.7, "budget_tolerance": 0.0, "budget_met": True, "output": "o.onnx",
        "planning": {
            "importance": "data-free guess",
            "considered": [[0.68, -2.0], [0.6, -3.0], [0.5, -5.0]],
            "measured_plans": [{"predicted": 0.68, "measured": 0.74, "band": [0.7, 0.8], "importance": -2.0},
                               {"predicted": 0.6, "measured": 0.66, "band": [0.62, 0.7], "importance": -3.0}],
            "rounds": [{"measured": 0.74, "importance": -2.0}, {"measured": 0.66, "importance": -3.0}],
            "chosen": [0.6, -3.0], "chosen_measured": [0.66, 0.62, 0.7],
        },
    }
    svg = plot_report(report, tmp_path / "r.svg", title="m.onnx").read_text()
    for text in ("no fidelity measured", "measured (median, p10-p90)", "predicted only, not measured (1)",
                 "round 1", "round 2", "emitted (measured 0.660)", "budget 0.7", "data-free guess"):
        assert text in svg, text
    assert _png(plot_report(report, tmp_path / "r.png")) == (720, 500)
    report["planning"]["importance"] = "measured"
    assert "no fidelity measured" not in plot_report(report, tmp_path / "m.svg").read_text()
