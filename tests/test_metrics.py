"""`analyze` numbers against values computed independently from the architectures' layer tables
(not from the zoo builders' code). Published figures for cross-reference: ResNet-18 1.814 GMACs,
MobileNetV2-1.0 300.8 MMACs (conv + fc only)."""

import onnx
import pytest

from onnx_depth import api, cli
from onnx_depth.zoo import build


def conv(k, cin, cout, out_hw, groups=1):
    """(params with bias, MACs) of a conv with a bias (BN folded)."""
    w = k * k * (cin // groups) * cout
    return w + cout, w * out_hw * out_hw


def resnet18_layers(size=224):
    layers = [conv(7, 3, 64, size // 2)]
    hw = size // 4
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            out = hw // s
            layers.append(conv(3, cin, cout, out))
            layers.append(conv(3, cout, cout, out))
            if s != 1 or cin != cout:
                layers.append(conv(1, cin, cout, out))
            cin, hw = cout, out
    layers.append((512 * 1000 + 1000, 512 * 1000))
    return layers


def mobilenetv2_layers(size=224):
    layers = [conv(3, 3, 32, size // 2)]
    hw, cin = size // 2, 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            if t != 1:
                layers.append(conv(1, cin, hidden, hw))
            out = hw // stride
            layers.append(conv(3, hidden, hidden, out, groups=hidden))
            layers.append(conv(1, hidden, c, out))
            cin, hw = c, out
    layers.append(conv(1, 320, 1280, hw))
    layers.append((1280 * 1000 + 1000, 1280 * 1000))
    return layers


@pytest.mark.parametrize(
    "name,layers,extra_params",
    [("resnet18", resnet18_layers, 0), ("mobilenetv2_1.0", mobilenetv2_layers, 2)],  # + ReLU6 bounds 0 and 6
)
def test_params_and_macs_match_independent_count(name, layers, extra_params):
    stats = api.analyze(build(name, bn="fold"))
    expected = layers()
    assert stats.params == sum(p for p, _ in expected) + extra_params
    assert stats.macs == sum(m for _, m in expected)
    assert stats.unknown_mac_nodes == 0


def test_published_totals():
    assert sum(m for _, m in resnet18_layers()) == 1_814_073_344
    assert round(sum(m for _, m in mobilenetv2_layers()) / 1e6, 1) == 300.8


def test_bn_kept_counts_running_stats_and_same_macs():
    keep = api.analyze(build("resnet18", bn="keep"))
    fold = api.analyze(build("resnet18", bn="fold"))
    # BN kept: conv without bias + gamma, beta, mean, var per channel = 3 extra values per channel
    channels = 64 + 4 * 64 + (4 * 128 + 128) + (4 * 256 + 256) + (4 * 512 + 512)
    assert keep.params - fold.params == 3 * channels
    assert keep.macs == fold.macs
    assert keep.op_histogram["BatchNormalization"] == 20 and "BatchNormalization" not in fold.op_histogram


def test_depth_and_activations_resnet18():
    s = api.analyze(build("resnet18", bn="fold"))
    # longest path: conv1, relu, maxpool, then 8 blocks of conv, relu, conv, add, relu, then
    # GlobalAveragePool and Gemm (Flatten is layout)
    assert s.linear_depth == 1 + 16 + 1
    assert s.depth == 3 + 8 * 5 + 2
    assert s.activations == 17


def test_analyze_cli_on_dynamic_batch(tmp_path, capsys):
    m = build("mobilenetv2_1.0", bn="fold", image_size=64)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save_model(m, tmp_path / "dyn.onnx")
    assert cli.main(["analyze", str(tmp_path / "dyn.onnx")]) == 0
    out = capsys.readouterr().out
    assert "['N', 3, 64, 64]" in out


def test_macs_of_a_model_whose_padding_is_computed_from_constants():
    """The node chain torch writes for EfficientNet-Lite's "same" padding (copied from the
    export): pads = Cast(Reshape(Transpose(Slice(Reshape(Concat(c, ConstantOfShape(4))))))).
    Unfolded, shape inference cannot read the pads, so every spatial dim after the Pad was unknown
    (counted as 1) and `analyze` / optimize's "before" gave EfficientNet-Lite0 3.3 M MACs instead
    of 384 M. The MACs are counted on the constant-folded graph."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def c(name, v, dt=np.int64):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(v, dt)))

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [c("n", [4]), c("c1", [0, 1, 0, 1]), helper.make_node("ConstantOfShape", ["n"], ["zeros"], value=numpy_helper.from_array(np.zeros(1, np.int64))),
             helper.make_node("Concat", ["c1", "zeros"], ["cat"], axis=0), c("s2", [-1, 2]),
             helper.make_node("Reshape", ["cat", "s2"], ["r"]), c("ax", [0]), c("st", [-1]),
             c("en", [-9223372036854775807]), c("sp", [-1]),
             helper.make_node("Slice", ["r", "st", "en", "ax", "sp"], ["sl"]),
             helper.make_node("Transpose", ["sl"], ["tr"], perm=[1, 0]), c("s1", [-1]),
             helper.make_node("Reshape", ["tr", "s1"], ["flat"]), helper.make_node("Cast", ["flat"], ["pads"], to=7),
             c("zero", 0.0, np.float32), helper.make_node("Pad", ["x", "pads", "zero"], ["xp"], mode="constant"),
             helper.make_node("Conv", ["xp", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Relu", ["y"], ["out"])]  # the Conv output is not a graph output
    g = helper.make_graph(nodes, "padded", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 4, 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    s = api.analyze(m)
    assert s.macs == 4 * 4 * 4 * 3 * 3 * 3  # output N x 4 x 4 x 4 (N counted as 1), 27 MACs each
    assert s.unknown_mac_nodes == 0
    assert s.op_histogram["Pad"] == 1 and s.op_histogram["Slice"] == 1  # the counts are of the model as given
