"""planning.realize: the operator a plan emits equals, in onnxruntime, the original segment with
its inner activations removed and its pruned layers replaced by identity (exact away from the
border ring of padded convs; dense layers exactly)."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_depth import ir, runtime
from onnx_depth.analysis.stats import with_outputs
from onnx_depth.ir import Node
from onnx_depth.ir.exporter import to_proto
from onnx_depth.kernels.lstsq import OperatorFit
from onnx_depth.kernels import ConvSpec
from onnx_depth.kernels.conv_reference import conv_apply
from onnx_depth.planning import candidates
from onnx_depth.planning.realize import option_operator, option_target, pruned_layers, removed_activations


def _reference(cands, opt) -> ir.Graph:
    """The original graph with the option's inner activations and pruned layers made Identity."""
    g = cands.graph.copy()
    for n in removed_activations(cands, opt) + pruned_layers(cands, opt):
        cur = g.producer(n.outputs[0])
        g.replace_chain([cur], [Node("Identity", [cur.inputs[0]], [cur.outputs[0]], name=(cur.name or "n") + ".identity")])
    g.remove_dead_nodes()
    return g


def _ring(opt) -> int:
    """Output positions on each side that may differ (the merged conv's border ring)."""
    if opt.geom is None or opt.geom.kind != "conv":
        return 0
    s = max(opt.geom.strides)
    return -(-max(opt.geom.pads) // s) + 1


def _check_options(graph: ir.Graph, limit: int | None = None) -> int:
    cands = candidates(graph, max_layers=4)
    opts = [o for o in cands.options if o.kind != "keep"]
    if limit is not None:
        opts = opts[::max(1, len(opts) // limit)]
    checked = 0
    for o in opts:
        got_g = cands.apply_graph([o], {o.id: option_operator(cands, o)}, partial=True)
        ref_g = _reference(cands, o)
        t = option_target(cands, o)
        end_t = cands.chains[o.chain].tensors[o.end]
        outs = [t, end_t] if t != end_t else [t]
        s_ref = runtime.make_session(with_outputs(to_proto(ref_g, check=False), outs), optimization="disabled")
        s_got = runtime.make_session(with_outputs(to_proto(got_g, check=False), [end_t]), optimization="disabled")
        feed = runtime.random_feeds(s_ref, 1, seed=1)[0]
        a = runtime.run(s_ref, feed, [end_t])[end_t]
        b = runtime.run(s_got, feed, [end_t])[end_t]
        r = _ring(o)
        if a.ndim == 4 and r:
            if a.shape[2] <= 2 * r or a.shape[3] <= 2 * r:
                continue
            a, b = a[:, :, r:-r, r:-r], b[:, :, r:-r, r:-r]
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(a).max())), err_msg=o.label)
        checked += 1
    return checked


def test_hand_dag_every_option(hand_graph: ir.Graph) -> None:
    assert _check_options(hand_graph) >= 20


def test_resnet18_options(resnet18_graph: ir.Graph) -> None:
    assert _check_options(resnet18_graph, limit=30) >= 4


def test_mobilenet_options(mobilenet_graph: ir.Graph) -> None:
    assert _check_options(mobilenet_graph, limit=30) >= 4


def test_keep_has_no_operator(hand_graph: ir.Graph) -> None:
    cands = candidates(hand_graph)
    assert all(option_operator(cands, o) is None for o in cands.original_plan())


@pytest.mark.parametrize("group,stride,rows", [(1, 1, None), (2, 2, None), (1, 1, 300)])
def test_operator_fit_recovers_a_linear_map(group: int, stride: int, rows: int | None) -> None:
    """Targets made by a conv of the same geometry are recovered exactly from a wrong start
    (also from a random subset of rows)."""
    rng = np.random.default_rng(0)
    true = ConvSpec(rng.standard_normal((4, 6 // group, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32),
                    (stride, stride), (1, 1), (1, 1, 1, 1), group)
    start = ConvSpec(np.zeros_like(true.weight), None, true.strides, true.dilations, true.pads, group)
    fit = OperatorFit(start, max_rows=rows)
    for _ in range(3):
        x = rng.standard_normal((2, 6, 10, 10)).astype(np.float32)
        fit.add(x, conv_apply(true, x).astype(np.float32))
    op, nmse0, nmse1 = fit.solve(ridge=1e-9)
    assert nmse0 > 0.5 and nmse1 < 1e-8
    np.testing.assert_allclose(op.weight, true.weight, atol=1e-3)
    np.testing.assert_allclose(op.bias, true.bias, atol=1e-3)


def test_operator_fit_dense() -> None:
    rng = np.random.default_rng(1)
    W, b = rng.standard_normal((8, 5)), rng.standard_normal(5)
    fit = OperatorFit((np.zeros((8, 5), np.float32), None))
    x = rng.standard_normal((3, 40, 8)).astype(np.float32)
    fit.add(x, (x @ W + b).astype(np.float32))
    (W1, b1), _, nmse = fit.solve(ridge=1e-9)
    assert nmse < 1e-9
    np.testing.assert_allclose(W1, W, atol=1e-3)
    np.testing.assert_allclose(b1, b, atol=1e-3)
