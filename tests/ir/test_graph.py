import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_depth import compare, ir
from onnx_depth.ir import Node

from tests.helpers import conv_relu_model, if_model


def test_queries_producer_consumers_constants_shapes():
    g = ir.load(conv_relu_model())
    conv = g.producer("c")
    relu = g.producer("y")
    assert conv.op_type == "Conv" and relu.op_type == "Relu"
    assert g.consumers("c") == [relu]
    assert g.consumers("x") == [conv]
    assert g.is_constant("w") and not g.is_constant("x")
    assert g.const("w").shape == (4, 3, 3, 3)
    assert g.shape("c") == (1, 4, 8, 8)
    assert g.elem_type("c") == onnx.TensorProto.FLOAT
    assert g.is_graph_output("y") and g.is_graph_input("x")
    assert g.successors(conv) == [relu] and g.predecessors(relu) == [conv]
    assert [n.op_type for n in g.topological_order()] == ["Conv", "Relu"]
    edge = list(g.nx.edges(conv.id, keys=True, data=True))[0]
    assert edge[3]["tensor"] == "c" and edge[3]["src_slot"] == 0 and edge[3]["dst_slot"] == 0


def test_constant_nodes_promoted_to_initializers():
    g = ir.load(conv_relu_model(with_constant_node=True))
    assert "b" in g.initializers
    assert all(n.op_type != "Constant" for n in g.nodes)


def test_replace_chain_and_dead_code():
    g = ir.load(conv_relu_model())
    conv, relu = g.producer("c"), g.producer("y")
    # replace Conv+Relu by Conv+Clip(0, inf) producing the same output name
    new_conv = Node("Conv", list(conv.inputs), ["c2"], name="conv2", attributes=dict(conv.attributes))
    lo = g.add_const(np.array(0, np.float32), "lo")
    clip = Node("Clip", ["c2", lo], ["y"], name="clip")
    g.replace_chain([conv, relu], [new_conv, clip])
    assert [n.op_type for n in g.nodes] == ["Conv", "Clip"]
    out = ir.to_proto(g)
    assert compare.compare_models(conv_relu_model(), out, n_random=2).allclose
    # a dangling node is removed by remove_dead_nodes
    g.add_node(Node("Neg", ["x"], ["unused"], name="dangling"))
    assert g.remove_dead_nodes() == 1
    assert len(g) == 2


def test_replace_chain_refuses_to_drop_a_used_tensor():
    m = conv_relu_model()
    m.graph.output.append(helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1, 4, 8, 8]))
    g = ir.load(m)
    conv, relu = g.producer("c"), g.producer("y")
    with pytest.raises(ValueError, match="used outside"):
        g.replace_chain([conv, relu], [Node("Relu", ["x"], ["y"])])


def test_set_input_and_replace_uses_keep_edges_consistent():
    g = ir.load(conv_relu_model())
    conv, relu = g.producer("c"), g.producer("y")
    neg = g.add_node(Node("Neg", ["c"], ["n"], name="neg"))
    g.set_input(relu, 0, "n")  # conv -> neg -> relu
    assert g.predecessors(relu) == [neg]
    assert g.consumers("c") == [neg] and g.consumers("n") == [relu]
    assert [n.op_type for n in g.topological_order()] == ["Conv", "Neg", "Relu"]
    assert g.replace_uses("n", "c") == 1  # relu reads c again, neg is dead
    assert g.consumers("c") == [neg, relu] or g.consumers("c") == [relu, neg]
    assert g.remove_dead_nodes() == 1 and g.producer("n") is None
    assert g.nx.number_of_edges() == 1


def test_fresh_names_are_unique():
    g = ir.load(conv_relu_model())
    a = g.fresh_name("w")
    b = g.fresh_name("w")
    assert a != "w" and b != "w" and a != b


def test_subgraph_outer_reads_are_edges_and_survive_round_trip():
    m = if_model()
    g = ir.load(m)
    if_node = g.producer("y")
    abs_node = g.producer("x")
    assert if_node.implicit_inputs == ["x"]
    assert g.predecessors(if_node) == [abs_node]
    assert g.remove_dead_nodes() == 0  # Abs is live through the subgraph read
    out = ir.to_proto(g)
    feeds = [{"x0": np.random.default_rng(i).standard_normal((2, 3)).astype(np.float32), "cond": np.array(bool(i % 2))} for i in range(2)]
    assert compare.compare_models(m, out, feeds).allclose


def test_metadata_functions_and_versions_are_kept():
    m = conv_relu_model(opset=13, ir_version=7)
    onnx.helper.set_model_props(m, {"author": "me"})
    m.doc_string = "doc"
    f = helper.make_function("custom", "Double", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])], [helper.make_opsetid("", 13)])
    m.functions.append(f)
    m.opset_import.append(helper.make_opsetid("custom", 1))
    out = ir.to_proto(ir.load(m))
    assert out.ir_version == 7
    assert {(o.domain, o.version) for o in out.opset_import} == {("", 13), ("custom", 1)}
    assert [(p.key, p.value) for p in out.metadata_props] == [("author", "me")]
    assert out.doc_string == "doc" and out.producer_name == "test"
    assert [fn.name for fn in out.functions] == ["Double"]


def test_external_data_is_loaded_lazily_and_written_back(tmp_path):
    m = conv_relu_model()
    src = tmp_path / "ext.onnx"
    onnx.save_model(m, src, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    g = ir.load(src)
    assert g.initializers["w"].is_external
    assert g.initializers["w"].shape == (4, 3, 3, 3)
    out = ir.to_proto(g)
    assert compare.compare_models(conv_relu_model(), out, n_random=2).allclose  # save_model mutated m
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in out.graph.initializer)


def test_graph_copy_is_independent():
    g = ir.load(conv_relu_model())
    c = g.copy()
    c.remove_node(c.producer("y"))
    assert len(g) == 2 and len(c) == 1


def test_constant_folding_removes_constant_subgraphs():
    m = conv_relu_model()
    # w2 = w * 2 computed at run time from constants: folds into an initializer
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.array(2, np.float32), "two"))
    m.graph.node.insert(0, helper.make_node("Mul", ["w", "two"], ["w2"], name="mul"))
    m.graph.node[1].input[1] = "w2"
    g = ir.load(m)
    assert [n.op_type for n in g.nodes] == ["Conv", "Relu"]
    assert compare.compare_models(m, ir.to_proto(g), n_random=2).allclose


def test_large_models_are_saved_with_external_data(tmp_path):
    m = conv_relu_model()
    out = tmp_path / "big.onnx"
    ir.save(m, out, external_threshold=100)  # pretend 100 bytes is "over 2 GB"
    assert (tmp_path / "big.onnx.data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    back = onnx.load(out, load_external_data=False)
    assert any(onnx.external_data_helper.uses_external_data(t) for t in back.graph.initializer)
    assert compare.compare_models(conv_relu_model(), str(out), n_random=1).allclose
    g = ir.load(out)
    assert compare.compare_models(conv_relu_model(), ir.to_proto(g), n_random=1).allclose
