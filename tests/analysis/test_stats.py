import numpy as np
import pytest

from onnx_depth import ir
from onnx_depth.analysis.activations import find_activations
from onnx_depth.analysis.stats import collect_stats

from .models import Net, randn


def _identity_act_model(act, shape=("N", 4, 5, 5)):
    net = Net(shape)
    return net.model(getattr(net, act)("x"))


def test_relu_stats_match_numpy_over_several_batches():
    x = randn(37, 4, 5, 5, seed=1) + np.array([-2, 0, 1, 3], np.float32).reshape(1, 4, 1, 1)
    m = _identity_act_model("relu")
    st = collect_stats(m, x, budget_bytes=4 * 4 * 25 * 6)  # ~3 samples per run
    assert st.samples == 37 and st.runs > 5
    (site,) = st.sites
    t = st.for_site(site)
    ref = x.transpose(1, 0, 2, 3).reshape(4, -1).astype(np.float64)
    np.testing.assert_allclose(t.mean, ref.mean(1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(t.var, ref.var(1), rtol=1e-5)
    np.testing.assert_allclose(t.min, ref.min(1))
    np.testing.assert_allclose(t.max, ref.max(1))
    f = t.fractions()
    np.testing.assert_allclose(f["below"], (ref <= 0).mean(1))
    np.testing.assert_allclose(t.sq_below, (np.minimum(ref, 0) ** 2).sum(1), rtol=1e-5)


def test_clip_counts_both_regions():
    x = randn(20, 4, 5, 5, seed=2, scale=5.0)
    st = collect_stats(_identity_act_model("clip"), x)
    t = st.for_site(st.sites[0])
    ref = x.transpose(1, 0, 2, 3).reshape(4, -1)
    f = t.fractions()
    np.testing.assert_allclose(f["below"], (ref <= 0).mean(1))
    np.testing.assert_allclose(f["above"], (ref >= 6).mean(1))
    np.testing.assert_allclose(f["mid"], ((ref > 0) & (ref < 6)).mean(1))


def test_fixed_batch_model_runs_per_sample():
    net = Net((1, 4, 5, 5))
    m = net.model(net.relu("x"))
    st = collect_stats(m, randn(7, 4, 5, 5))
    assert st.samples == 7 and st.runs == 7 and st.batch_size == 1


@pytest.mark.parametrize(
    "builder, kind, n_nodes",
    [("hardswish_decomposed", "hardswish", 4), ("silu", "silu", 2), ("gelu_erf", "gelu", 5), ("prelu", "prelu", 1), ("clip", "clip", 1)],
)
def test_decomposed_forms_are_recognized(builder, kind, n_nodes):
    net = Net(("N", 4, 5, 5))
    fn = getattr(net, builder)
    y = fn("x", np.full((4, 1, 1), 0.25, np.float32)) if builder == "prelu" else fn("x")
    g = ir.load(net.model(y))
    (site,) = find_activations(g)
    assert site.kind == kind and len(site.nodes) == n_nodes and site.input == "x" and site.output == "y"
    st = collect_stats(g, randn(6, 4, 5, 5))
    assert st.for_site(site).channels == 4


def test_extra_tensors_and_segment_inputs():
    net = Net(("N", 3, 6, 6))
    h = net.rand_conv("x", 3, 4, 3)
    m = net.model(net.relu(h))
    st = collect_stats(m, randn(5, 3, 6, 6), extra={"x": 1})
    assert st.extra["x"].channels == 3 and st.extra["x"].sample_shape == (3, 6, 6)
