"""ir.extract: a standalone model of a node set computes what the nodes compute in the original."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest

from onnx_depth import ir, runtime, zoo
from onnx_depth.ir.extract import boundary, extract


@pytest.fixture(scope="module")
def resnet_graph() -> ir.Graph:
    return ir.load(zoo.build("resnet18", bn="fold", image_size=32, num_classes=10))


@pytest.fixture(scope="module")
def mobilenet_graph() -> ir.Graph:
    return ir.load(zoo.build("mobilenetv2_1.0", bn="keep", image_size=32, num_classes=10))


def _intermediates(graph: ir.Graph, names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Run the whole model with `names` exposed as extra outputs (ORT, optimizations off)."""
    m = ir.to_proto(graph.copy(), check=False)
    have = {o.name for o in m.graph.output}
    for t in names:
        if t in have or graph.is_graph_input(t):
            continue
        vi = graph.value_info.get(t)
        m.graph.output.append(copy.deepcopy(vi) if vi is not None else onnx.helper.make_tensor_value_info(t, 1, None))
    sess = runtime.make_session(m)
    feed = runtime.random_feeds(sess, 1, seed=seed)[0]
    out = runtime.run(sess, feed, [t for t in names if not graph.is_graph_input(t)])
    out.update({k: v for k, v in feed.items() if k in names})
    return out


def _check_window(graph: ir.Graph, nodes: list[ir.Node]) -> onnx.ModelProto:
    model = extract(graph, nodes, check=True)
    ins = [i.name for i in model.graph.input]
    outs = [o.name for o in model.graph.output]
    ref = _intermediates(graph, ins + outs)
    sess = runtime.make_session(model)
    got = runtime.run(sess, {k: ref[k] for k in ins})
    for o in outs:
        np.testing.assert_allclose(got[o], ref[o], rtol=1e-4, atol=1e-4)
    return model


@pytest.mark.parametrize("start,length", [(0, 3), (3, 5), (5, 7), (12, 9), (20, 14)])
def test_resnet_windows_match_original(resnet_graph: ir.Graph, start: int, length: int) -> None:
    nodes = resnet_graph.topological_order()[start:start + length]
    _check_window(resnet_graph, nodes)


@pytest.mark.parametrize("start,length", [(4, 6), (10, 11), (30, 17)])
def test_mobilenet_windows_match_original(mobilenet_graph: ir.Graph, start: int, length: int) -> None:
    nodes = mobilenet_graph.topological_order()[start:start + length]
    _check_window(mobilenet_graph, nodes)


def test_residual_block_boundary(resnet_graph: ir.Graph) -> None:
    """layer1.1: the Add reads the block input, which the first conv reads too: one input,
    and the block output feeds two nodes outside: one output."""
    block = [n for n in resnet_graph.nodes if n.name.startswith("layer1.1.")]
    ins, consts, outs = boundary(resnet_graph, block)
    assert ins == ["layer1.0.relu2"]
    assert outs == ["layer1.1.relu2"]
    assert all(resnet_graph.is_constant(c) for c in consts)
    model = _check_window(resnet_graph, block)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "Conv", "Add", "Relu"]


def test_two_inputs_and_a_middle_output(resnet_graph: ir.Graph) -> None:
    """The second half of a block: its Add reads the block input from outside; the first conv's
    relu (read outside when the set ends early) becomes an output."""
    by_name = {n.name: n for n in resnet_graph.nodes}
    conv2 = resnet_graph.consumers(by_name["layer1.1.relu1"].outputs[0])[0]
    nodes = [by_name["layer1.1.relu1"], conv2, by_name["layer1.1.add"], by_name["layer1.1.relu2"]]
    ins, _, _ = boundary(resnet_graph, nodes)
    assert sorted(ins) == sorted([by_name["layer1.1.relu1"].inputs[0], "layer1.0.relu2"])
    _check_window(resnet_graph, nodes)


def test_metadata_kept_and_graph_untouched(resnet_graph: ir.Graph) -> None:
    before = (len(resnet_graph), len(resnet_graph.initializers), len(resnet_graph.value_info))
    model = extract(resnet_graph, resnet_graph.topological_order()[:4])
    assert model.ir_version == resnet_graph.meta.ir_version
    assert {o.domain: o.version for o in model.opset_import} == resnet_graph.meta.opset_import
    assert (len(resnet_graph), len(resnet_graph.initializers), len(resnet_graph.value_info)) == before
    # inputs carry static shapes and dtypes
    for vi in model.graph.input:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        assert dims and all(d > 0 for d in dims)
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_random_weights_same_shapes_other_values(mobilenet_graph: ir.Graph) -> None:
    nodes = mobilenet_graph.topological_order()[:6]  # conv, clip, conv, clip, conv, ...
    a = extract(mobilenet_graph, nodes)
    b = extract(mobilenet_graph, nodes, random_weights=True, seed=3)
    c = extract(mobilenet_graph, nodes, random_weights=True, seed=3)
    ta = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    tb = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
    tc = {t.name: onnx.numpy_helper.to_array(t) for t in c.graph.initializer}
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].shape == tb[k].shape and ta[k].dtype == tb[k].dtype
        np.testing.assert_array_equal(tb[k], tc[k])  # seeded
        if ta[k].size > 1:
            assert not np.array_equal(ta[k], tb[k])
        else:  # Clip bounds are parameters, kept
            np.testing.assert_array_equal(ta[k], tb[k])
    onnx.checker.check_model(b, full_check=True)
    runtime.make_session(b)


def test_outputs_override_and_errors(resnet_graph: ir.Graph) -> None:
    nodes = resnet_graph.topological_order()[:3]
    mid = nodes[0].outputs[0]
    m = extract(resnet_graph, nodes, outputs=[mid, nodes[2].outputs[0]], check=True)
    assert [o.name for o in m.graph.output] == [mid, nodes[2].outputs[0]]
    with pytest.raises(ValueError, match="not produced"):
        extract(resnet_graph, nodes, outputs=["input"])
    with pytest.raises(ValueError, match="at least one"):
        extract(resnet_graph, [])


def test_subgraph_outer_reads_become_inputs() -> None:
    from tests.helpers import if_model

    g = ir.load(if_model())
    (if_node,) = [n for n in g.nodes if n.op_type == "If"]
    m = extract(g, [if_node], check=True)
    assert sorted(i.name for i in m.graph.input) == ["cond", "x"]
    sess = runtime.make_session(m)
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 3
    out = runtime.run(sess, {"x": x, "cond": np.array(True)})
    np.testing.assert_array_equal(out["y"], np.maximum(x, 0))
