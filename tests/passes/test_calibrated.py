import pytest

from onnx_depth import ir
from onnx_depth.analysis.criteria import decide
from onnx_depth.analysis.fidelity import evaluate
from onnx_depth.analysis.stats import collect_stats
from onnx_depth.compare import compare_models
from onnx_depth.passes.base import PassContext
from onnx_depth.passes.calibrated import calibrated_rewrites
from onnx_depth.passes.dead_channels import prune_dead_channels

from tests.analysis.models import randn
from tests.analysis.test_report import report_model


def test_calibrated_rewrites_prunes_then_linearizes():
    m = report_model()
    g = ir.load(m)
    x = randn(30, 3, 6, 6, seed=2)
    results = calibrated_rewrites(g, x)
    names = [r.name for r in results]
    assert names == ["dead_channels", "linearize"] and results[0].changed == 1
    c = compare_models(m, ir.to_proto(g), [{"x": x}])
    assert c.allclose, c.summary()


@pytest.mark.realmodel
def test_mnist_dead_channels_keep_accuracy():
    from onnx_depth.zoo import real

    try:
        path = real.mnist_cnn_onnx()
        x, y = real.mnist_digits(1200)
    except real.RealAssetMissing as e:
        pytest.skip(str(e))
    g = ir.load(path)
    m0 = ir.to_proto(g.copy())
    st = collect_stats(g, x[:800])
    decs = {s.name: decide(g, s, stats=st.for_site(s)) for s in st.sites}
    res = prune_dead_channels(g, PassContext(lossless=False), decisions=decs)
    assert res.changed >= 2
    f = evaluate(m0, ir.to_proto(g), x[800:], labels=y[800:])
    assert f.top1_agreement >= 0.995 and f.accuracy_candidate >= f.accuracy_reference - 0.005
