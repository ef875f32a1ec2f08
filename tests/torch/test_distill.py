"""onnx_depth.torch: the ONNX graph run by torch (checked against onnxruntime) and `--distill`,
the short distillation of the operators a plan changed (issue 17 item 3)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnx_depth import api, cli, ir, runtime  # noqa: E402
from onnx_depth.analysis.calibration import from_arrays  # noqa: E402
from onnx_depth.passes import LOSSLESS, PassContext, run_to_fixed_point  # noqa: E402
from onnx_depth.torch.distill import distill_changed, distill_if_better, trainable_initializers  # noqa: E402
from onnx_depth.torch.onnx_module import OnnxModule, UnsupportedOp  # noqa: E402
from onnx_depth.zoo import build, real  # noqa: E402


def _dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    return m


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = runtime.make_session(model, threads=1)
    return runtime.run(s, {s.get_inputs()[0].name: x})[s.get_outputs()[0].name]


@pytest.mark.parametrize("name", ["mobilenetv2_1.0", "resnet18"])
def test_torch_runner_matches_onnxruntime_at_two_batch_sizes(name):
    """The interpreter against onnxruntime (all graph optimizations off), on the lossless graph
    (BN folded: Conv, Clip/Relu, Add, MaxPool, GlobalAveragePool, Flatten, Gemm), batch 1 and 3."""
    g = ir.load(_dynamic(build(name, image_size=64, num_classes=10)))
    run_to_fixed_point(g, LOSSLESS, PassContext(lossless=True))
    m = ir.to_proto(g)
    net = OnnxModule(m)
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 3, 64, 64)).astype(np.float32)
        with torch.no_grad():
            got = net(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(got, _ort(m, x), rtol=1e-4, atol=1e-4)


def test_torch_runner_refuses_an_operator_it_does_not_know():
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(UnsupportedOp, match="Softmax"):
        OnnxModule(helper.make_model(g))


def _perturbed_pair(seed=0):
    """A lossless MobileNetV2 (random weights, 32x32) as the original, and a copy whose last
    conv's weights are replaced by noisy new initializers: the 'changed operator' to train."""
    g = ir.load(_dynamic(build("mobilenetv2_1.0", image_size=32, num_classes=10)))
    run_to_fixed_point(g, LOSSLESS, PassContext(lossless=True))
    original = ir.to_proto(g)
    before = set(g.initializers)
    m = onnx.ModelProto()
    m.CopyFrom(original)
    conv = [n for n in m.graph.node if n.op_type == "Conv"][-1]
    inits = {t.name: t for t in m.graph.initializer}
    w = onnx.numpy_helper.to_array(inits[conv.input[1]])
    rng = np.random.default_rng(seed)
    noisy = (w + 0.5 * np.abs(w).mean() * rng.standard_normal(w.shape)).astype(np.float32)
    m.graph.initializer.append(onnx.numpy_helper.from_array(noisy, "changed.weight"))
    conv.input[1] = "changed.weight"
    x = np.random.default_rng(seed + 1).standard_normal((48, 3, 32, 32)).astype(np.float32)
    return original, m, before, from_arrays(x[:32], m), from_arrays(x[32:], m)


def test_distillation_trains_only_the_changed_weights_lowers_held_out_error_and_repeats():
    original, changed, before, fit, val = _perturbed_pair()
    assert trainable_initializers(changed, before) == {"changed.weight"}
    out, info = distill_if_better(changed, original, before, fit, val, threads=1, max_epochs=4, patience=4)
    assert info["trained"] == ["changed.weight"]
    old, new = info["val_nmse_onnxruntime"]
    assert info["kept"] and new < old, info
    a = {t.name: onnx.numpy_helper.to_array(t) for t in changed.graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    moved = sorted(k for k in a if not np.array_equal(a[k], b[k]))
    assert moved == ["changed.weight"]  # nothing else trained; same graph
    assert [n.SerializeToString() for n in out.graph.node] == [n.SerializeToString() for n in changed.graph.node]
    again, _ = distill_if_better(changed, original, before, fit, val, threads=1, max_epochs=4, patience=4)
    assert again.SerializeToString() == out.SerializeToString()  # seeded: same inputs, same bytes
    _, strict = distill_if_better(changed, original, before, fit, val, threads=1, max_epochs=4, patience=4, keep_top1=True)
    (o, n), (t_old, t_new) = strict["val_nmse_onnxruntime"], strict["val_top1_onnxruntime"]
    assert strict["kept"] == (n < o and t_new >= t_old)  # under --max-error top1: top-1 must not fall either


def test_validation_samples_decide_the_epoch_but_are_never_trained_on():
    """Training reads only the fit part: with early stopping switched off in effect (patience
    and epochs equal, a validation set on which every epoch improves or not), replacing the
    validation samples can change which epoch is kept, never the trajectory. Checked by the
    curve: the fit losses of two runs with different validation sets are identical."""
    original, changed, before, fit, val = _perturbed_pair()
    other = from_arrays(np.random.default_rng(9).standard_normal((16, 3, 32, 32)).astype(np.float32), changed)
    r1 = distill_changed(changed, original, before, fit, val, threads=1, max_epochs=3, patience=3)
    r2 = distill_changed(changed, original, before, fit, other, threads=1, max_epochs=3, patience=3)
    assert [c["fit_loss"] for c in r1.curve] == [c["fit_loss"] for c in r2.curve]
    assert [c["val_nmse"] for c in r1.curve] != [c["val_nmse"] for c in r2.curve]


def test_cli_distill_needs_calibration_and_a_goal(tmp_path, capsys):
    m = tmp_path / "m.onnx"
    onnx.save(build("mobilenetv2_1.0", image_size=32, num_classes=10), m)
    assert cli.main(["optimize", str(m), str(tmp_path / "o.onnx"), "--latency-budget", "0.9", "--distill"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--distill needs --calibration" in err[0]
    assert cli.main(["optimize", str(m), str(tmp_path / "o.onnx"), "--distill"]) == 2
    assert "--distill needs --latency-budget" in capsys.readouterr().err


@pytest.mark.realmodel
def test_distill_end_to_end_on_the_real_mnist_cnn(tmp_path):
    """optimize --latency-budget 0.95 --distill on the trained MNIST CNN with real digits: the
    report holds what the distillation did, the reported fidelity is that of the emitted model,
    and the emitted model (same graph as without --distill) runs in onnxruntime."""
    try:
        model = onnx.load(real.mnist_cnn_onnx())
        x, _ = real.mnist_digits(160)
    except real.RealAssetMissing as exc:
        pytest.skip(str(exc))
    np.savez(tmp_path / "calib.npz", input=x)
    kw = dict(latency_budget=0.95, calibration=str(tmp_path / "calib.npz"), threads=1, allow_over_budget=True,
              latency_db=str(tmp_path / "db.sqlite"))
    plain = api.optimize(model, **kw)
    res = api.optimize(model, distill=True, **kw)
    d = res.report.planning["distill"]
    assert d["trained"] and d["epochs"] >= 1
    if "val_nmse_onnxruntime" in d:  # an epoch improved on the torch runner's validation error
        old, new = d["val_nmse_onnxruntime"]
        assert d["kept"] == (new < old)
        assert res.report.fidelity.nmse == pytest.approx(new if d["kept"] else old, rel=1e-6)
    else:  # none did (the merged head Gemm is the output layer: its least-squares refit is already optimal)
        assert not d["kept"] and d["skipped"] == "no epoch improved the validation error"
        assert res.model.SerializeToString() == plain.model.SerializeToString()
        assert any("--distill" in n and "none lowered" in n for n in res.report.notes)
    assert [n.op_type for n in res.model.graph.node] == [n.op_type for n in plain.model.graph.node]
    y = _ort(res.model, x[:1])
    assert y.shape == (1, 10) and np.all(np.isfinite(y))
    json.dumps(res.report.to_dict())  # the report (with the distill record) serializes
