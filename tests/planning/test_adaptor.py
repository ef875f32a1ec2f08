"""planning.adaptor (issue 17, PRACTISE-style): where a plan drops a layer (identity operator),
the sequential refit fits an adaptor on the fit part and keeps it only when it beats the bare
identity on the validation part; the emitted graph (real onnxruntime) computes that adaptor."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_depth import ir, runtime
from onnx_depth.analysis.calibration import from_arrays, split_fit_validation
from onnx_depth.analysis.stats import stream_tensors
from onnx_depth.ir.exporter import to_proto
from onnx_depth.kernels import ConvSpec
from onnx_depth.kernels.conv_reference import conv_apply
from onnx_depth.passes import LOSSLESS, PassContext, run_to_fixed_point
from onnx_depth.planning import candidates
from onnx_depth.planning.adaptor import identity_adaptor
from onnx_depth.planning.realize import option_input, option_operator, option_target
from onnx_depth.planning.sequential_refit import only_outputs, refit_sequential
from onnx_depth.zoo.mobilenet import mobilenet_v2

DROP = "c0(7,8]:prune:-"  # a 3x3 depthwise conv (48 channels, 16x16) pruned to the identity


@pytest.fixture(scope="module")
def setup():
    m = mobilenet_v2(0.35, image_size=64, num_classes=10)
    g = ir.load(m)
    run_to_fixed_point(g, LOSSLESS, PassContext(lossless=True))
    c = candidates(g, max_layers=4)
    ref = to_proto(g.copy(), check=False)
    x = np.random.default_rng(0).standard_normal((64, 3, 64, 64)).astype(np.float32)
    return c, ref, split_fit_validation(from_arrays(x, ref))


def _segment_nmse(c, plan, ops, ref, data, o) -> float:
    """NMSE at the dropped layer's target tensor of the plan as emitted (onnxruntime)."""
    y = option_target(c, o)
    cand = to_proto(c.apply_graph(plan, ops, partial=True), check=False)
    num = den = 0.0
    for _, (a, b) in stream_tensors([(only_outputs(cand, [y]), [y]), (only_outputs(ref, [y]), [y])], data):
        num += float(np.sum((a[y].astype(np.float64) - b[y]) ** 2))
        den += float(np.sum(b[y].astype(np.float64) ** 2))
    return num / den


def test_adaptor_is_cheap_and_starts_at_the_identity(setup):
    c, _, _ = setup
    o = c.option(DROP)
    ad = identity_adaptor(c, o, option_operator(c, o))
    # a 1x1 conv over 48 channels would cost more than the 3x3 depthwise it replaces: per-channel
    assert isinstance(ad, ConvSpec) and ad.group == 48 and ad.weight.shape == (48, 1, 1, 1)
    x = np.random.default_rng(1).standard_normal((2, 48, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(conv_apply(ad, x), x, atol=1e-6)
    assert identity_adaptor(c, c.option("c0(0,1]:keep:1"), None) is None  # kept layers get none


def test_adaptor_kept_only_when_it_wins_on_validation_and_emitted_as_fitted(setup):
    c, ref, sp = setup
    o = c.option(DROP)
    plan = [o]
    bare = refit_sequential(c, plan, {}, ref, sp.fit, sp.validation, adaptors=False)
    fitted = refit_sequential(c, plan, {}, ref, sp.fit, sp.validation, adaptors=True)
    assert o.id not in bare.operators
    assert fitted.choices[o.id].startswith("adaptor ")
    op = fitted.operators[o.id]
    e_bare = _segment_nmse(c, plan, bare.operators, ref, sp.validation, o)
    e_fit = _segment_nmse(c, plan, fitted.operators, ref, sp.validation, o)
    assert e_fit < 0.9 * e_bare  # better than the identity on samples it was not fitted on
    assert abs(fitted.val_nmse[o.id] - e_fit) < 0.02 * e_bare  # the normal equations' estimate agrees with ORT
    # the emitted graph computes exactly the fitted adaptor (real onnxruntime)
    x_name = option_input(c, o)
    y_name = option_target(c, o)
    cand = to_proto(c.apply_graph(plan, fitted.operators, partial=True), check=False)
    feed = next(iter(sp.validation.batches(4)))
    sess = runtime.make_session(only_outputs(cand, [x_name, y_name]))
    xs, ys = sess.run([x_name, y_name], feed)
    np.testing.assert_allclose(ys, conv_apply(op, xs), rtol=1e-4, atol=1e-4)


def test_no_adaptor_without_validation(setup):
    c, ref, sp = setup
    o = c.option(DROP)
    sf = refit_sequential(c, [o], {}, ref, sp.fit, None, adaptors=True)
    assert o.id not in sf.operators  # nothing to choose on: the identity stays


def _disjoint_changes(c, n):
    """n options that change layers, on disjoint segments of chain 0, in order."""
    out, end = [], 0
    for o in sorted((o for o in c.options if o.kind != "keep" and o.chain == 0), key=lambda o: (o.st, o.end)):
        if o.st >= end and len(out) < n:
            out.append(o)
            end = o.end
    return out


def test_prefix_memo_gives_the_same_fits_and_skips_shared_prefixes(setup, monkeypatch):
    # the sequential fit of option k depends only on options 1..k-1: a memo keyed by that prefix
    # returns exactly the fresh result, and a plan whose every prefix was fitted streams no data
    import onnx_depth.planning.sequential_refit as sr

    c, ref, sp = setup
    a, b, d = _disjoint_changes(c, 3)
    memo: dict = {}
    refit_sequential(c, [a, b, d], {}, ref, sp.fit, sp.validation, memo=memo)
    runs = []
    real = sr.stream_tensors
    monkeypatch.setattr(sr, "stream_tensors", lambda *x, **k: runs.append(1) or real(*x, **k))
    for plan in ([a, d], [a, b]):
        runs.clear()
        cached = refit_sequential(c, plan, {}, ref, sp.fit, sp.validation, memo=memo)
        n_cached = len(runs)
        fresh = refit_sequential(c, plan, {}, ref, sp.fit, sp.validation)
        assert cached.choices == fresh.choices and cached.val_nmse == fresh.val_nmse
        assert cached.operators.keys() == fresh.operators.keys()
        for k, op in fresh.operators.items():
            np.testing.assert_array_equal(cached.operators[k].weight, op.weight)
        if plan == [a, b]:
            assert n_cached == 0  # both prefixes were fitted by [a, b, d]
        else:
            assert 0 < n_cached < len(runs) - n_cached  # d after a alone is fitted anew; a is not
