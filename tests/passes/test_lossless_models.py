"""The lossless pipeline on every zoo model and on the real trained models: outputs equal in
onnxruntime (rtol 1e-4, atol 1e-5), no more nodes, never more MACs (builders.check_lossless).

Sizes are kept small for CI time: CNNs at 64x64 (VGG at 32x32). VGG's cost is its classifier
(25088 x 4096 whatever the image size: ~0.5 GB of weights, ~20 s a model here), so only
vgg11_bn with BN kept runs: vgg16_bn is the same conv-BN-ReLU / Gemm blocks, repeated, and the
"fold" variants are the same graphs minus the BN nodes, exercised on ResNet and MobileNetV2.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnx_depth import zoo
from onnx_depth.zoo import real

from .builders import check_lossless, op_counts


def need(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except real.RealAssetMissing as exc:
        pytest.skip(str(exc))


CNNS = [n for n in zoo.NAMES if n not in ("ffn_stack", "vgg11_bn", "vgg16_bn")]


@pytest.mark.parametrize("bn", ["keep", "fold"])
@pytest.mark.parametrize("name", CNNS)
def test_zoo_cnn(name, bn):
    m = zoo.build(name, bn=bn, image_size=64)
    r = check_lossless(m)
    assert op_counts(r.model)["BatchNormalization"] == 0
    if bn == "keep":  # every BN folds into its conv: the result is the "fold" graph
        assert r.report.after.nodes == len(zoo.build(name, bn="fold", image_size=64).graph.node)


def test_zoo_vgg11_bn():
    m = zoo.build("vgg11_bn", bn="keep", image_size=32)
    r = check_lossless(m, n_random=1)
    assert op_counts(r.model)["BatchNormalization"] == 0
    assert r.report.after.nodes == r.report.before.nodes - 8


@pytest.mark.parametrize("act,slope", [("gelu", 0.25), ("prelu", 1.0), ("prelu", 0.25)])
def test_zoo_ffn_stack(act, slope):
    m = zoo.build("ffn_stack", act=act, prelu_slope=slope)
    check_lossless(m)


# ------------------------------------------------------------------ real trained models
def _ppocr_feeds(kind: str) -> list[dict[str, np.ndarray]]:
    """A real input (rendered text) and a random one of the same, realistic, shape."""
    need(pytest.importorskip, "PIL")
    if kind == "det":
        x = need(real.text_page, size=(96, 160))[0]
    elif kind == "cls":
        x = need(real.text_lines, width=real.PPOCR_CLS_SHAPE[2])[:2]
    else:
        x = need(real.text_lines)[:2]
    rng = np.random.default_rng(0)
    return [{"x": x}, {"x": rng.standard_normal(x.shape).astype(np.float32)}]


@pytest.mark.realmodel
@pytest.mark.parametrize("kind", ["det", "cls", "rec"])
def test_ppocr(kind):
    path = need(real.ppocr_model, kind)
    r = check_lossless(str(path), _ppocr_feeds(kind))
    assert r.report.after.nodes < r.report.before.nodes  # Constant nodes, BN, ... go


@pytest.mark.realmodel
def test_mnist_cnn():
    path = need(real.mnist_cnn_onnx)
    digits, _ = need(real.mnist_digits, 3)
    name = _input_name(path)
    check_lossless(str(path), [{name: d[None]} for d in digits])


@pytest.mark.realmodel
@pytest.mark.parametrize("net,size", [("pnet", 12), ("pnet", 48), ("rnet", 24), ("onet", 48)])
def test_mtcnn(net, size):
    path = need(real.mtcnn_onnx, net, size=size)
    faces, _ = need(real.lfw_faces)
    need(pytest.importorskip, "PIL")
    x = real.mtcnn_inputs(faces[[0, 150]], size=size)  # one face, one background patch
    name = _input_name(path)
    check_lossless(str(path), [{name: xi[None]} for xi in x])


def _input_name(path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name
