"""--input-shape / --fix-shapes / --check at several shapes (onnx_depth.shapes), on small
models with symbolic dims built here and run by onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_depth import api, compare, runtime, shapes
from onnx_depth.cli import main
from onnx_depth.errors import InputError


def _seq128_model() -> onnx.ModelProto:
    """x [B, T, 8] -> Reshape [-1, 1024] -> MatMul [1024, 4]: runs only when B*T*8 % 1024 == 0
    (T = 128 for every B), i.e. not at the all-ones shape."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((1024, 4)).astype(np.float32), "w")
    shp = numpy_helper.from_array(np.array([-1, 1024], np.int64), "shp")
    nodes = [helper.make_node("Reshape", ["x", "shp"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    g = helper.make_graph(nodes, "seq128", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], [w, shp])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _conv_hw_model() -> onnx.ModelProto:
    """x [N, 3, H, W] -> Conv 3x3 p1 -> Relu -> Conv 1x1 -> Relu -> GlobalAveragePool -> Flatten."""
    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3, "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"]), helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("GlobalAveragePool", ["d"], ["e"]), helper.make_node("Flatten", ["e"], ["y"])]
    g = helper.make_graph(nodes, "convhw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


# ---------------------------------------------------------------------------- resolving
def test_parse_input_shapes_forms():
    assert shapes.parse_input_shapes(["x:1,3,8,8", "m:2,5"]) == {"x": [1, 3, 8, 8], "m": [2, 5]}
    assert shapes.parse_input_shapes(["1,3,8,8"]) == {"": [1, 3, 8, 8]}
    assert shapes.parse_input_shapes({"x": (1, 2)}) == {"x": [1, 2]}
    for bad in (["x:1,a"], ["x:0,3"], ["x:"], ["x:1", "x:2"]):
        with pytest.raises(InputError):
            shapes.parse_input_shapes(bad)


def test_resolve_defaults_given_and_errors():
    m = _conv_hw_model()
    with pytest.raises(InputError, match=r"x\[2\] \('H'\), x\[3\] \('W'\).*--input-shape"):
        shapes.resolve(m)
    got = shapes.resolve(m, ["1,3,20,24"])  # one input: the name may be left out
    assert got.shapes == {"x": (1, 3, 20, 24)} and got.source == {"x": "given"}
    with pytest.raises(InputError, match="axis 1 is static 3"):
        shapes.resolve(m, {"x": [1, 4, 8, 8]})
    with pytest.raises(InputError, match="rank 4"):
        shapes.resolve(m, {"x": [1, 3, 8]})
    with pytest.raises(InputError, match="no input named 'y'"):
        shapes.resolve(m, {"y": [1, 3, 8, 8]})
    # batch defaults to 1; the other dims come from calibration data
    cal = shapes_cal(m, np.zeros((2, 3, 12, 16), np.float32))
    got = shapes.resolve(m, None, cal)
    assert got.shapes == {"x": (1, 3, 12, 16)} and got.source == {"x": "calibration"}
    samples = shapes.check_samples(m, None, cal)
    assert [s.shapes["x"] for s in samples] == [(1, 3, 12, 16), (3, 3, 12, 16)]
    assert [s.shapes["x"] for s in shapes.check_samples(m, {"x": [2, 3, 8, 8]})] == [(2, 3, 8, 8)]


def shapes_cal(model, array):
    from onnx_depth.analysis.calibration import from_arrays

    return from_arrays({"x": array}, model)


def test_shared_dim_params_follow_the_given_input():
    x = helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])
    mask = helper.make_tensor_value_info("mask", TensorProto.INT64, ["B", "T"])
    g = helper.make_graph([helper.make_node("Add", ["ids", "mask"], ["y"])], "g", [x, mask],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, ["B", "T"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    got = shapes.resolve(m, {"ids": [2, 7]})
    assert got.shapes == {"ids": (2, 7), "mask": (2, 7)}
    with pytest.raises(InputError, match="'T' is given as"):
        shapes.resolve(m, {"ids": [2, 7], "mask": [2, 6]})


def test_fixed_view_runs_the_model_at_the_shape_and_names_a_failing_one():
    from onnx_depth import ir

    g = ir.load(_conv_hw_model())
    view = shapes.fixed_view(g, shapes.resolve(g_model := _conv_hw_model(), ["2,3,10,12"]))
    assert view["c"] == (2, 8, 10, 12) and view["y"] == (2, 8)
    assert g.shape("c")[2:] != (10, 12)  # the graph itself stays symbolic
    with pytest.raises(InputError, match=r"does not run at input shape x:1x64x8.*--input-shape"):
        shapes.fixed_view(ir.load(_seq128_model()), shapes.resolve(_seq128_model(), ["1,64,8"]))
    assert g_model.graph.input[0].type.tensor_type.shape.dim[2].dim_param == "H"


def test_fix_inputs_is_a_static_copy():
    m = _conv_hw_model()
    s = shapes.fix_inputs(m, shapes.resolve(m, ["1,3,9,9"]), infer=True)
    assert [d.dim_value for d in s.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 9, 9]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # input untouched
    onnx.checker.check_model(s, full_check=True)


# ---------------------------------------------------------------------------- --check
def test_compare_at_shapes_reference_failure_is_an_input_error():
    m = _seq128_model()
    c = compare.compare_at_shapes(m, m, shapes.check_samples(m, ["1,128,8"]), n_random=1)
    assert c.allclose and c.runs == 1 and "x:1x128x8" in c.summary()
    with pytest.raises(InputError, match="x:1x64x8"):
        compare.compare_at_shapes(m, m, [shapes.resolve(m, ["1,64,8"])], n_random=1)


def test_cli_check_on_a_seq128_model(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(_seq128_model(), src)
    assert main(["optimize", str(src), str(out), "--lossless", "--check", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x[1] ('T')" in err and "--input-shape" in err
    assert main(["optimize", str(src), str(out), "--lossless", "--check", "2", "--input-shape", "x:1,64,8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x:1x64x8" in err
    assert main(["optimize", str(src), str(out), "--lossless", "--check", "2", "--input-shape", "x:2,128,8"]) == 0
    assert "match over 2 run(s) at input shape(s) x:2x128x8" in capsys.readouterr().out
    m = onnx.load(out)
    assert [d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim[:2]] == ["B", "T"]


def test_check_samples_batch_1_and_3_and_keeps_dims(tmp_path):
    m = _conv_hw_model()
    cal = tmp_path / "cal.npy"
    np.save(cal, np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32))
    res = api.optimize(m, lossless=True, check=2, calibration=str(cal))
    assert res.report.check.allclose and res.report.check.runs == 4
    assert res.report.check.shapes == ["x:1x3x12x12", "x:3x3x12x12"]
    assert shapes.symbolic_signature(res.model) == shapes.symbolic_signature(m)


def test_fix_shapes_writes_static_inputs(tmp_path):
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(_conv_hw_model(), src)
    assert main(["-q", "optimize", str(src), str(out), "--lossless", "--fix-shapes", "--input-shape", "2,3,10,10",
                 "--check", "1"]) == 0
    m = onnx.load(out)
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 10, 10]
    assert [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim] == [2, 8]
    s = runtime.make_session(m)
    assert runtime.run(s, {"x": np.zeros((2, 3, 10, 10), np.float32)})["y"].shape == (2, 8)


def test_question_mark_dims_are_not_tied():
    """paddle2onnx writes "?" for every unknown dim (PP-OCR cls: [-1, 3, "?", "?"], H != W)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, "?", "?"])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert shapes.resolve(m, ["1,3,48,192"]).shapes == {"x": (1, 3, 48, 192)}
    with pytest.raises(InputError, match=r"x\[2\] \('\?'\), x\[3\] \('\?'\)"):
        shapes.resolve(m)


def test_profile_command_takes_input_shapes(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(_seq128_model(), src)
    db = str(tmp_path / "db.sqlite")
    assert main(["profile", str(src), "--latency-db", db, "-q"]) == 2
    assert "x[1] ('T')" in capsys.readouterr().err
    assert main(["profile", str(src), "--latency-db", db, "-q", "--input-shape", "x:1,128,8"]) == 0
    assert "measured" in capsys.readouterr().out
