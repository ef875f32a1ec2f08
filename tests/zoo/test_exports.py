"""The real-export corpus (onnx_depth.zoo.exports) through the main job, as exported: symbolic
dims stay symbolic, budget mode never refuses a model for its shapes (exit 0 or 3), and the
emitted model is checker-valid and runs in onnxruntime at two values of every symbolic dim
(batch 1 and 3; H/W or the sequence at two sizes); lossless rewrites match the original there
at rtol 1e-4 / atol 1e-5 (onnxruntime, all graph optimizations disabled)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_depth import compare, runtime, shapes
from onnx_depth.cli import main

exports = pytest.importorskip("onnx_depth.zoo.exports")

# the flags a model needs without calibration data (symbolic dims other than the batch)
FLAGS = {
    "mbv2_tiny": [],
    "resnet_tiny_bn": [],
    "encoder_tiny": ["--input-shape", "input:1,16,32"],
    "yolov8n": ["--input-shape", "images:1,3,64,64"],
    "ppocr_det": ["--input-shape", "x:1,3,32,32"],
    "ppocr_rec": ["--input-shape", "x:1,3,48,64"],
}
SMALL = ("mbv2_tiny", "resnet_tiny_bn", "encoder_tiny")
ALL = [*SMALL, *(pytest.param(n, marks=pytest.mark.slow) for n in exports.SHIPPED_MODELS)]


def _path(name):
    try:
        return exports.export_path(name)
    except Exception as e:  # noqa: BLE001 - a missing package: RealAssetMissing / ImportError
        pytest.skip(f"{name}: {e}")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return str(tmp_path_factory.mktemp("latency") / "db.sqlite")


def _runs_at_both_shapes(name, model: onnx.ModelProto) -> None:
    s = runtime.make_session(model)
    for want in exports.SHAPES[name]:
        at = shapes.resolve(model, want)
        out = runtime.run(s, shapes.feed_at(runtime.input_specs(s), at, np.random.default_rng(0)))
        for v in out.values():
            assert v.shape[0] == want[next(iter(want))][0]  # batch follows the input
            assert np.isfinite(v).all()


def _check_emitted(name, src, out) -> onnx.ModelProto:
    m = onnx.load(out)
    onnx.checker.check_model(m, full_check=True)
    original = onnx.load(src)
    assert shapes.symbolic_signature(m) == shapes.symbolic_signature(original)
    assert [o.type for o in m.graph.output] == [o.type for o in original.graph.output]
    assert any(s.symbolic_axes for s in shapes.input_specs(m))
    _runs_at_both_shapes(name, m)
    return m


def _budget(src, out, db, extra):
    """Budget mode; --allow-over-budget turns a budget this machine cannot meet (exit 3) into the
    fastest plan found, so that there is always a model to check: any other exit code (2: a
    refusal, 4: a crash) fails the test."""
    args = ["-q", "optimize", str(src), str(out), "--latency-budget", "0.9", "--latency-db", db, "--threads", "1",
            "--allow-over-budget", *extra]
    assert main(args) == 0


@pytest.mark.parametrize("name", ALL)
def test_budget_on_the_export_as_is(name, tmp_path, db):
    src = _path(name)
    out = tmp_path / "out.onnx"
    _budget(src, out, db, FLAGS[name])
    _check_emitted(name, src, out)


@pytest.mark.parametrize("name", ["encoder_tiny", pytest.param("resnet_tiny_bn", marks=pytest.mark.slow),
                                  pytest.param("mbv2_tiny", marks=pytest.mark.slow),
                                  pytest.param("ppocr_det", marks=pytest.mark.slow)])
def test_budget_with_calibration_data_takes_its_shapes(name, tmp_path, db):
    """No --input-shape: batch 1, the other symbolic dims from the calibration data."""
    src = _path(name)
    first = next(iter(exports.SHAPES[name][0].values()))
    key = shapes.input_specs(src)[0].name
    cal = tmp_path / "cal.npz"
    np.savez(cal, **{key: np.random.default_rng(1).standard_normal((4, *first[1:])).astype(np.float32)})
    out = tmp_path / "out.onnx"
    _budget(src, out, db, ["--calibration", str(cal)])
    _check_emitted(name, src, out)


@pytest.mark.parametrize("name", [*SMALL, *exports.SHIPPED_MODELS])
def test_lossless_matches_the_original_at_two_shapes(name, tmp_path):
    src = _path(name)
    out = tmp_path / "out.onnx"
    assert main(["-q", "optimize", str(src), str(out), "--lossless"]) == 0
    m = _check_emitted(name, src, out)
    samples = [shapes.resolve(m, s) for s in exports.SHAPES[name]]
    c = compare.compare_at_shapes(str(src), str(out), samples, n_random=2, rtol=1e-4, atol=1e-5)
    assert c.allclose, c.summary()
    assert c.runs == 4


def test_encoder_dense_chains_merge_under_symbolic_batch_and_sequence(tmp_path, db):
    """MatMul chains on [B, T, C]: budget-mode rewrites are made for any B and T (checked at
    B,T = 1,16 and 3,48), while profiling ran at the given 1x16."""
    src = _path("encoder_tiny")
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    _budget(src, out, db, [*FLAGS["encoder_tiny"], "--report", str(report)])
    import json

    r = json.loads(report.read_text())
    assert r["planning"]["chains"] > 0 and r["planning"]["input_shapes"]["shapes"] == {"input": [1, 16, 32]}
    assert any("input:1x16x32" in n for n in r["notes"])
    m = _check_emitted("encoder_tiny", src, out)
    assert len(m.graph.node) < len(onnx.load(src).graph.node)  # something was rewritten


def test_check_on_the_encoder_needs_a_sequence_length(tmp_path, capsys):
    src = _path("encoder_tiny")
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(src), str(out), "--lossless", "--check", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input[1] ('T')" in err[0] and "--input-shape" in err[0]
    assert main(["optimize", str(src), str(out), "--lossless", "--check", "1", "--input-shape", "input:1,48,32"]) == 0


def test_corpus_is_in_the_exporters_form():
    fold, keep = onnx.load(_path("mbv2_tiny")), onnx.load(_path("resnet_tiny_bn"))
    assert not any(n.op_type == "BatchNormalization" for n in fold.graph.node)  # eval export folds BN
    assert sum(n.op_type == "BatchNormalization" for n in keep.graph.node) >= 7  # TrainingMode.PRESERVE
    for name in SMALL:
        m = onnx.load(_path(name))
        assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 13
        assert shapes.input_specs(m)[0].dims[0] in ("N", "B")  # the dynamic batch axis
    assert shapes.input_specs(onnx.load(_path("encoder_tiny")))[0].dims == ("B", "T", 32)
