"""Tests of the synthetic model zoo (onnx_depth.zoo.build)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_depth import compare, runtime
from onnx_depth.zoo import NAMES, build
from onnx_depth.zoo._builder import Builder
from onnx_depth.zoo.vgg import adaptive_avgpool7

SIZE = 64  # the exact image size does not matter for these checks; parameter counts do not depend on it

# torchvision's published parameter counts (conv/linear weights+biases, BN gamma/beta).
PUBLISHED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenetv2_1.0": 3_504_872,
    "vgg11_bn": 132_868_840,
    "vgg16_bn": 138_365_992,
}


def _is_cnn(name: str) -> bool:
    return name != "ffn_stack"


@pytest.fixture(scope="module", params=NAMES)
def pair(request):
    """(name, keep model, fold model, keep bytes, fold bytes), built once per name (module scope
    makes pytest group the tests by name). Serialized once: VGG weighs 0.5 GB."""
    name = request.param
    kw = {"image_size": SIZE} if _is_cnn(name) else {}
    keep, fold = build(name, bn="keep", **kw), build(name, bn="fold", **kw)
    return name, keep, fold, keep.SerializeToString(), fold.SerializeToString()


def _inits(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _shape(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]


def test_conventions(pair):
    name, keep, fold, keep_bytes, fold_bytes = pair
    onnx.checker.check_model(keep_bytes, full_check=True)
    onnx.checker.check_model(fold_bytes, full_check=True)
    for m in (keep, fold):
        assert [(o.domain, o.version) for o in m.opset_import] == [("", 17)]
        assert m.ir_version == 8
        assert m.producer_name == "onnx-depth-zoo"
        assert [i.name for i in m.graph.input] == ["input"]
        assert [o.name for o in m.graph.output] == ["output"]
        if _is_cnn(name):
            assert _shape(m.graph.input[0]) == [1, 3, SIZE, SIZE]
            assert _shape(m.graph.output[0]) == [1, 1000]
        else:
            assert _shape(m.graph.input[0]) == [1, 128, 256]
            assert _shape(m.graph.output[0]) == [1, 128, 256]
        names = [n.name for n in m.graph.node]
        assert all(names) and len(set(names)) == len(names)
        assert all(t.data_type == onnx.TensorProto.FLOAT for t in m.graph.initializer)
        assert len({t.name for t in m.graph.initializer}) == len(m.graph.initializer)


def test_runs_finite_and_sane(pair):
    name, _, _, keep_bytes, _ = pair
    sess = runtime.make_session(keep_bytes, optimization="disabled")
    for feed in runtime.random_feeds(sess, 2):
        out = runtime.run(sess, feed)["output"]
        assert np.isfinite(out).all()
        assert 1e-3 < float(out.std()) < 1e3, f"{name}: output std {out.std()}"


def test_keep_and_fold_agree(pair):
    name, _, _, keep_bytes, fold_bytes = pair
    cmp = compare.compare_models(keep_bytes, fold_bytes, n_random=2, rtol=1e-4, atol=1e-5)
    assert cmp.allclose, f"{name}: {cmp.summary()}"


def test_bn_present_only_when_kept(pair):
    name, keep, fold, _, _ = pair
    ops_keep = [n.op_type for n in keep.graph.node]
    ops_fold = [n.op_type for n in fold.graph.node]
    assert "BatchNormalization" not in ops_fold
    if _is_cnn(name):
        assert ops_keep.count("BatchNormalization") == ops_keep.count("Conv") == ops_fold.count("Conv")
        assert [o for o in ops_keep if o != "BatchNormalization"] == ops_fold
    else:
        assert ops_keep == ops_fold


def test_published_parameter_count(pair):
    name, keep, _, _, _ = pair
    if name not in PUBLISHED_PARAMS:
        pytest.skip(f"no published torchvision count for {name}")
    sizes = {t.name: math.prod(t.dims) for t in keep.graph.initializer}
    learned = {"Conv": (1, 2), "Gemm": (1, 2), "BatchNormalization": (1, 2)}  # not BN mean/var (3, 4)
    total = sum(
        sizes[n.input[i]]
        for n in keep.graph.node
        for i in learned.get(n.op_type, ())
        if i < len(n.input) and n.input[i]
    )
    assert total == PUBLISHED_PARAMS[name]


def test_bn_statistics_realistic():
    m = build("resnet18", image_size=32)
    inits = _inits(m)
    bns = [n for n in m.graph.node if n.op_type == "BatchNormalization"]
    gamma = np.concatenate([inits[n.input[1]] for n in bns])
    var = np.concatenate([inits[n.input[4]] for n in bns])
    assert abs(gamma.mean() - 1) < 0.02 and 0.05 < gamma.std() < 0.15 and (gamma > 0).mean() > 0.99
    assert var.min() >= 0.5 and var.max() <= 1.5
    assert all(math.isclose(n.attribute[0].f, 1e-5, rel_tol=1e-6) for n in bns)


# -- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_1.0", "ffn_stack"])
def test_deterministic(name):
    a = build(name, seed=3, image_size=32).SerializeToString()
    assert a == build(name, seed=3, image_size=32).SerializeToString()
    assert a != build(name, seed=4, image_size=32).SerializeToString()


def test_same_seed_same_weights_in_both_variants():
    keep, fold = _inits(build("mobilenetv2_1.0", seed=7, image_size=32)), _inits(build("mobilenetv2_1.0", seed=7, image_size=32, bn="fold"))
    np.testing.assert_array_equal(keep["classifier.1.weight"], fold["classifier.1.weight"])
    # folded weight = kept weight * gamma / sqrt(var + eps), per output channel
    s = keep["features.0.1.weight"] / np.sqrt(keep["features.0.1.running_var"] + 1e-5)
    np.testing.assert_allclose(fold["features.0.0.weight"], keep["features.0.0.weight"] * s[:, None, None, None], rtol=1e-6)


# -- family specifics -----------------------------------------------------------------------------


def test_resnet50_is_v1_5_with_downsample():
    m = build("resnet50", image_size=32)
    nodes = {n.name: n for n in m.graph.node}

    def strides(n):
        return next(list(a.ints) for a in nodes[n].attribute if a.name == "strides")

    assert strides("layer2.0.conv1") == [1, 1] and strides("layer2.0.conv2") == [2, 2]
    assert strides("layer2.0.downsample.0") == [2, 2]
    assert nodes["layer2.0.downsample.1"].op_type == "BatchNormalization"
    assert "layer1.1.downsample.0" not in nodes
    assert nodes["fc"].op_type == "Gemm"


@pytest.mark.parametrize("name,last", [("mobilenetv2_1.0", 1280), ("mobilenetv2_1.4", 1792)])
def test_mobilenetv2_structure(name, last):
    m = build(name, image_size=32)
    inits = _inits(m)
    clips = [n for n in m.graph.node if n.op_type == "Clip"]
    assert len(clips) == 35  # stem + 2 per expanding block (16) + dw of block 1 + last conv
    for c in clips:
        assert float(inits[c.input[1]]) == 0.0 and float(inits[c.input[2]]) == 6.0
    assert sum(n.op_type == "Add" for n in m.graph.node) == 10
    assert inits["classifier.1.weight"].shape == (1000, last)
    assert inits["features.18.0.weight"].shape[0] == last
    ops = [n.op_type for n in m.graph.node]
    assert ops[-3:] == ["GlobalAveragePool", "Flatten", "Gemm"]
    if name == "mobilenetv2_1.4":  # _make_divisible rounding: 32*1.4 -> 48, 16*1.4 -> 24, 24*1.4 -> 32
        assert inits["features.0.0.weight"].shape[0] == 48
        assert inits["features.1.conv.1.weight"].shape[0] == 24
        assert inits["features.2.conv.2.weight"].shape[0] == 32


def _torch_adaptive_avgpool(x: np.ndarray, out: int) -> np.ndarray:
    n = x.shape[-1]
    y = np.empty(x.shape[:-2] + (out, out), dtype=np.float64)
    for i in range(out):
        h0, h1 = math.floor(i * n / out), math.ceil((i + 1) * n / out)
        for j in range(out):
            w0, w1 = math.floor(j * n / out), math.ceil((j + 1) * n / out)
            y[..., i, j] = x[..., h0:h1, w0:w1].mean(axis=(-2, -1))
    return y


@pytest.mark.parametrize("s,op", [(7, None), (14, "AveragePool"), (21, "AveragePool"), (1, "MatMul"), (2, "MatMul"), (10, "MatMul")])
def test_vgg_adaptive_avgpool(s, op):
    b = Builder()
    y = adaptive_avgpool7(b, "input", s)
    y = b.node("Identity", "id", [y])
    m = b.model(y, [2, 3, s, s], [2, 3, 7, 7], "pool")
    onnx.checker.check_model(m, full_check=True)
    assert [n.op_type for n in m.graph.node if n.op_type != "Identity"][:1] == ([op] if op else [])
    x = np.random.default_rng(0).standard_normal((2, 3, s, s)).astype(np.float32)
    got = runtime.run(runtime.make_session(m), {"input": x})["output"]
    np.testing.assert_allclose(got, _torch_adaptive_avgpool(x, 7), rtol=1e-5, atol=1e-6)


def test_batch_and_num_classes():
    m = build("resnet18", image_size=32, batch=2, num_classes=10)
    onnx.checker.check_model(m, full_check=True)
    sess = runtime.make_session(m)
    assert runtime.run(sess, runtime.random_feeds(sess, 1)[0])["output"].shape == (2, 10)


# -- ffn_stack ------------------------------------------------------------------------------------


def _ffn_reference(m: onnx.ModelProto, x: np.ndarray, blocks: int, act: str) -> np.ndarray:
    """Independent numpy forward of ffn_stack from its initializers."""
    w = {k: v.astype(np.float64) for k, v in _inits(m).items()}
    erf = np.vectorize(math.erf)
    x = x.astype(np.float64)
    for i in range(blocks):
        p = f"blocks.{i}"
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        h = (x - mu) / np.sqrt(var + 1e-5) * w[f"{p}.ln.weight"] + w[f"{p}.ln.bias"]
        h = h @ w[f"{p}.fc1.weight"] + w[f"{p}.fc1.bias"]
        if act == "gelu":
            h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        else:
            h = np.where(h >= 0, h, h * w[f"{p}.act.slope"])
        x = x + h @ w[f"{p}.fc2.weight"] + w[f"{p}.fc2.bias"]
    return x


@pytest.mark.parametrize("act,slope", [("gelu", 0.25), ("prelu", 0.25), ("prelu", 1.0)])
def test_ffn_matches_reference(act, slope):
    kw = dict(seq=16, d_model=32, d_ff=64, blocks=2, act=act, prelu_slope=slope, batch=2)
    m = build("ffn_stack", **kw)
    onnx.checker.check_model(m, full_check=True)
    ops = {n.op_type for n in m.graph.node}
    assert ("Erf" in ops) == (act == "gelu") and ("PRelu" in ops) == (act == "prelu")
    assert ops >= {"LayerNormalization", "MatMul", "Add"}
    if act == "prelu":
        slopes = [v for k, v in _inits(m).items() if k.endswith("act.slope")]
        assert len(slopes) == 2 and all(s.shape == (64,) and (s == np.float32(slope)).all() for s in slopes)
    x = np.random.default_rng(1).standard_normal((2, 16, 32)).astype(np.float32)
    got = runtime.run(runtime.make_session(m), {"input": x})["output"]
    assert got.shape == (2, 16, 32)
    np.testing.assert_allclose(got, _ffn_reference(m, x, 2, act), rtol=1e-4, atol=1e-4)


def test_ffn_gelu_is_exporter_pattern():
    m = build("ffn_stack", blocks=1, seq=4, d_model=8, d_ff=16)
    ops = [n.op_type for n in m.graph.node]
    i = ops.index("Div")
    assert ops[i : i + 5] == ["Div", "Erf", "Add", "Mul", "Mul"]
    assert build("ffn_stack", bn="fold", blocks=1, seq=4, d_model=8, d_ff=16).SerializeToString() == m.SerializeToString()


# -- errors ---------------------------------------------------------------------------------------


def test_errors():
    with pytest.raises(ValueError, match="unknown zoo model"):
        build("resnet19")
    with pytest.raises(ValueError, match="bn must be"):
        build("resnet18", bn="drop")
    with pytest.raises(ValueError, match="act must be"):
        build("ffn_stack", act="relu")
    with pytest.raises(TypeError):
        build("resnet18", d_model=3)
