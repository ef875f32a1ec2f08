"""load -> emit is exact on every corpus model: outputs equal (ORT, optimizations disabled),
checker-valid (full check), same ir_version and opsets."""

from pathlib import Path

import onnx
import pytest

from onnx_depth import compare, ir
from onnx_depth.zoo import real
from tests.conftest import LIGHT_MODELS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real"


def assert_exact_round_trip(source, n_random=2):
    original = source if isinstance(source, onnx.ModelProto) else onnx.load(source, load_external_data=False)
    out = ir.to_proto(ir.load(source))
    onnx.checker.check_model(out, full_check=True)
    assert out.ir_version == original.ir_version
    assert {(o.domain, o.version) for o in out.opset_import} == {(o.domain, o.version) for o in original.opset_import}
    c = compare.compare_models(source if isinstance(source, onnx.ModelProto) else str(source), out, n_random=n_random, rtol=0, atol=1e-6)
    assert c.allclose, c.summary()
    return out


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.stem)
def test_light_models(path):
    assert_exact_round_trip(path, n_random=1)


def _ppocr(kind):
    try:
        return real.ppocr_model(kind)
    except real.RealAssetMissing as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("kind", ["det", "cls", "rec"])
def test_ppocr_models(kind):
    path = _ppocr(kind)
    out = assert_exact_round_trip(path, n_random=1)
    # paddle2onnx keeps its weights in Constant nodes: they became initializers
    assert not any(n.op_type == "Constant" for n in out.graph.node)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.onnx")))
def test_real_fixtures(name):
    assert_exact_round_trip(FIXTURES / name)


from onnx_depth.zoo import NAMES, build  # noqa: E402


@pytest.mark.parametrize("bn", ["keep", "fold"])
@pytest.mark.parametrize("name", [n for n in NAMES if not n.startswith("vgg")])
def test_zoo_models(name, bn):
    assert_exact_round_trip(build(name, bn=bn, image_size=64), n_random=1)


def test_zoo_vgg_small():
    assert_exact_round_trip(build("vgg11_bn", bn="keep", image_size=32), n_random=1)
