"""Every activation kind is a removal candidate in budget mode (issue 12 §2).

For each kind, a linear -> act -> linear graph built here: the planner offers the merge that
removes the activation; the realized operator (activation -> its fitted per-channel affine map
a_c x + b_c, merged into the layers) matches onnxruntime running the model in which the
activation is replaced by that affine map (Mul + Add); the refit operator the plan emits matches
its definition (x W + b) in onnxruntime. The FFN collapse (x + W2 act(W1 x + b1) + b2 between
LayerNorms -> one d x d layer with W + I) is exact with an identity activation, also at other
batch and sequence sizes. All comparisons: ORT with every graph optimization disabled.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_depth import ir, runtime
from onnx_depth.analysis.calibration import as_calibration
from onnx_depth.analysis.activation_affine import default_affine
from onnx_depth.ir.exporter import to_proto
from onnx_depth.kernels.conv_reference import conv_apply
from onnx_depth.planning import candidates
from onnx_depth.planning.activation_fit import fit_activation_maps
from onnx_depth.planning.importance import fit_operators
from onnx_depth.planning.realize import is_ffn_collapse, option_operator, removed_activations

RTOL, ATOL = 1e-4, 1e-5
OPSET = 20


class _B:
    """A tiny ONNX graph builder (constants become initializers)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, value, name: str | None = None) -> str:
        self.n += 1
        name = name or f"k{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def param(self, shape, scale: float) -> str:
        return self.const(self.rng.standard_normal(shape) * scale)

    def op(self, op: str, inputs, domain: str = "", **attrs) -> str:
        self.n += 1
        out = f"t{self.n}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"{op}_{self.n}", domain=domain, **attrs))
        return out

    def dense(self, x: str, n_in: int, n_out: int) -> str:
        return self.op("Add", [self.op("MatMul", [x, self.param((n_in, n_out), 1 / math.sqrt(n_in))]),
                               self.param((n_out,), 0.5)])

    def model(self, x_shape, y: str, y_shape) -> onnx.ModelProto:
        self.nodes[-1].output[0] = "y"
        for n in self.nodes:
            for i, t in enumerate(n.input):
                if t == y:
                    n.input[i] = "y"
        g = helper.make_graph(self.nodes, "acts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
        m.ir_version = 9
        m = onnx.shape_inference.infer_shapes(m)
        if any(n.domain == "com.microsoft" for n in self.nodes):
            # ONNX shape inference stops at contrib ops: record every shape as ORT computes it
            known = {v.name for v in m.graph.value_info}
            inner = [o for n in m.graph.node for o in n.output if o not in known and o != "y"]
            probe = onnx.ModelProto()
            probe.CopyFrom(m)
            probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in inner)
            s = runtime.make_session(probe, optimization="disabled")
            out = runtime.run(s, {"x": np.zeros(x_shape, np.float32)}, inner)
            m.graph.value_info.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, out[t].shape) for t in inner)
        return m


def _gelu_erf(b: _B, x: str, c: int) -> str:
    e = b.op("Erf", [b.op("Div", [x, b.const(math.sqrt(2.0))])])
    return b.op("Mul", [b.op("Mul", [x, b.op("Add", [e, b.const(1.0)])]), b.const(0.5)])


def _gelu_tanh(b: _B, x: str, c: int) -> str:  # as torch exports gelu(approximate="tanh")
    cube = b.op("Mul", [x, b.op("Mul", [x, x])])
    inner = b.op("Mul", [b.const(math.sqrt(2 / math.pi)), b.op("Add", [x, b.op("Mul", [b.const(0.044715), cube])])])
    t = b.op("Add", [b.const(1.0), b.op("Tanh", [inner])])
    return b.op("Mul", [b.const(0.5), b.op("Mul", [x, t])])


def _hardswish_decomposed(b: _B, x: str, c: int) -> str:
    h = b.op("Clip", [b.op("Add", [x, b.const(3.0)]), b.const(0.0), b.const(6.0)])
    return b.op("Div", [b.op("Mul", [x, h]), b.const(6.0)])


def _silu(b: _B, x: str, c: int) -> str:
    return b.op("Mul", [x, b.op("Sigmoid", [x])])


def _single(op: str, domain: str = "", bias: bool = False, **attrs):
    def build(b: _B, x: str, c: int) -> str:
        extra = [b.param((c,), 0.3)] if bias else []
        return b.op(op, [x, *extra], domain=domain, **attrs)
    return build


KINDS = {  # name: (builder, analysis kind)
    "gelu_erf": (_gelu_erf, "gelu"),
    "gelu_tanh": (_gelu_tanh, "gelu"),
    "gelu20": (_single("Gelu"), "gelu"),
    "gelu20_tanh": (_single("Gelu", approximate="tanh"), "gelu"),
    "ms_gelu": (_single("Gelu", "com.microsoft"), "gelu"),
    "ms_fastgelu": (_single("FastGelu", "com.microsoft", bias=True), "gelu"),
    "ms_biasgelu": (_single("BiasGelu", "com.microsoft", bias=True), "gelu"),
    "silu": (_silu, "silu"),
    "hardswish_decomposed": (_hardswish_decomposed, "hardswish"),
    "hardswish14": (_single("HardSwish"), "hardswish"),
    "hardsigmoid": (_single("HardSigmoid", alpha=0.25, beta=0.4), "hardsigmoid"),
    "elu": (_single("Elu", alpha=0.7), "elu"),
    "leaky_relu": (_single("LeakyRelu", alpha=0.3), "leaky_relu"),
    "sigmoid": (_single("Sigmoid"), "sigmoid"),
    "tanh": (_single("Tanh"), "tanh"),
}
CONV_KINDS = ("silu", "hardswish14", "hardswish_decomposed", "elu", "hardsigmoid", "gelu_erf")
X_DENSE, HID, OUT = (2, 5, 16), 24, 12


def _dense_model(kind: str) -> onnx.ModelProto:
    b = _B()
    h = b.dense("x", X_DENSE[-1], HID)
    return b.model(list(X_DENSE), b.dense(KINDS[kind][0](b, h, HID), HID, OUT), [*X_DENSE[:-1], OUT])


def _conv_model(kind: str) -> onnx.ModelProto:
    b = _B(1)
    h = b.op("Conv", ["x", b.param((8, 4, 3, 3), 0.3), b.param((8,), 0.5)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    a = KINDS[kind][0](b, h, 8)
    y = b.op("Conv", [a, b.param((6, 8, 1, 1), 0.3), b.param((6,), 0.1)], kernel_shape=[1, 1])
    return b.model([2, 4, 6, 6], y, [2, 6, 6, 6])


def _cal(model: onnx.ModelProto, shape, n: int = 24, seed: int = 3):
    x = (np.random.default_rng(seed).standard_normal((n, *shape[1:])) * 1.5).astype(np.float32)
    return as_calibration({"x": x}, model)


def _run(model: onnx.ModelProto, x: np.ndarray, outputs=("y",)) -> list[np.ndarray]:
    s = runtime.make_session(model, optimization="disabled")
    out = runtime.run(s, {"x": x}, list(outputs))
    return [out[o] for o in outputs]


def _affine_reference(model: onnx.ModelProto, act, a: np.ndarray, b: np.ndarray, conv: bool) -> onnx.ModelProto:
    """`model` with the activation's nodes replaced by y = a * x + b per channel (the definition
    of the removal), built on the ONNX proto independently of the rewrite code."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    drop = {n.name for n in act.nodes}
    keep = [n for n in m.graph.node if n.name not in drop]
    shape = (-1, 1, 1) if conv else (-1,)
    m.graph.initializer.extend([numpy_helper.from_array(a.reshape(shape).astype(np.float32), "ref.a"),
                                numpy_helper.from_array(b.reshape(shape).astype(np.float32), "ref.b")])
    mul = helper.make_node("Mul", [act.x, "ref.a"], ["ref.ax"], name="ref.mul")
    add = helper.make_node("Add", ["ref.ax", "ref.b"], [act.y], name="ref.add")
    pos = next(i for i, n in enumerate(keep) if act.y in n.input)
    del m.graph.node[:]
    m.graph.node.extend(keep[:pos] + [mul, add] + keep[pos:])
    return m


def _check_kind(model: onnx.ModelProto, kind: str, conv: bool) -> None:
    g = ir.load(model)
    cands = candidates(g)
    assert len(cands.chains) == 1 and cands.chains[0].L == 2, [c.describe() for c in cands.chains]
    opt = cands.option("c0(0,2]:merge:1,2")
    (act,) = removed_activations(cands, opt)
    assert act.kind == KINDS[kind][1] and act.y == cands.chains[0].tensors[1]
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    cal = _cal(model, shape)
    nmse = fit_activation_maps(cands, model, cal)
    a, b = cands.activation_maps[act.y]
    assert a.shape == (HID if not conv else 8,) and 0.0 <= nmse[act.y] < 1.0
    x = (np.random.default_rng(7).standard_normal(shape) * 1.5).astype(np.float32)
    # realize: the merged operator == the model with the activation replaced by its affine map
    op = option_operator(cands, opt)
    got = to_proto(cands.apply_graph([opt], {opt.id: op}), check=False)
    assert not {n.op_type for n in got.graph.node} & {"Erf", "Tanh", "Sigmoid", "Gelu", "Elu", "HardSwish",
                                                       "HardSigmoid", "LeakyRelu", "FastGelu", "BiasGelu"}
    (want,) = _run(_affine_reference(model, act, a, b, conv), x)
    (have,) = _run(got, x)
    np.testing.assert_allclose(have, want, rtol=RTOL, atol=ATOL * max(1.0, float(np.abs(want).max())))
    # refit: the least-squares operator, emitted, computes its definition x W + b
    ops, quality = fit_operators(cands, [opt], model, cal)
    n0, n1 = quality[opt.id]
    assert n1 <= n0 + 1e-9
    fitted = ops[opt.id]
    (have,) = _run(to_proto(cands.apply_graph([opt], {opt.id: fitted}), check=False), x)
    if conv:
        want = conv_apply(fitted, x.astype(np.float64))
    else:
        W, bias = fitted
        want = x.astype(np.float64) @ W.astype(np.float64) + bias
    np.testing.assert_allclose(have, want, rtol=RTOL, atol=ATOL * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_dense_activation_removal(kind: str) -> None:
    _check_kind(_dense_model(kind), kind, conv=False)


@pytest.mark.parametrize("kind", CONV_KINDS)
def test_conv_activation_removal(kind: str) -> None:
    _check_kind(_conv_model(kind), kind, conv=True)


def test_data_free_stand_ins() -> None:
    """Without data: identity for ReLU-like kinds, the middle piece of HardSigmoid, tangents at 0
    for Sigmoid (x/4 + 1/2) and Tanh (x); a BiasGelu's bias is added."""
    for kind, (a_want, b_want) in {"gelu_erf": (1, 0), "silu": (1, 0), "elu": (1, 0), "hardsigmoid": (0.25, 0.4),
                                   "sigmoid": (0.25, 0.5), "tanh": (1, 0)}.items():
        model = _dense_model(kind)
        cands = candidates(ir.load(model))
        opt = cands.option("c0(0,2]:merge:1,2")
        (act,) = removed_activations(cands, opt)
        ref = _affine_reference(model, act, np.full(HID, a_want, float), np.full(HID, b_want, float), False)
        x = np.random.default_rng(1).standard_normal(X_DENSE).astype(np.float32)
        (want,) = _run(ref, x)
        (have,) = _run(to_proto(cands.apply_graph([opt], {opt.id: option_operator(cands, opt)}), check=False), x)
        np.testing.assert_allclose(have, want, rtol=RTOL, atol=ATOL * max(1.0, float(np.abs(want).max())), err_msg=kind)
    model = _dense_model("ms_biasgelu")
    cands = candidates(ir.load(model))
    (act,) = removed_activations(cands, cands.option("c0(0,2]:merge:1,2"))
    bias = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == act.nodes[0].inputs[1]))
    np.testing.assert_allclose(default_affine(act.site, HID)[1], bias, rtol=1e-6)


# ------------------------------------------------------------------------- FFN collapse
def _encoder_ffn(act: str = "LeakyRelu", alpha: float = 1.0, shape=(2, 6, 16), d_ff: int = 40) -> onnx.ModelProto:
    """Post-LN BERT FFN: h = LN(x); y = LN(h + W2 act(W1 h + b1) + b2)."""
    b = _B(2)
    d = shape[-1]
    h = b.op("LayerNormalization", ["x", b.param((d,), 0.2), b.param((d,), 0.2)], axis=-1)
    f = b.op(act, [b.dense(h, d, d_ff)], alpha=alpha)
    r = b.op("Add", [b.dense(f, d_ff, d), h])
    y = b.op("LayerNormalization", [r, b.param((d,), 0.2), b.param((d,), 0.2)], axis=-1)
    return b.model(list(shape), y, list(shape))


def _symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with batch and sequence symbolic (B, T) and no inner shapes."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for v in list(m.graph.input) + list(m.graph.output):
        dims = v.type.tensor_type.shape.dim
        dims[0].dim_param, dims[1].dim_param = "B", "T"
    return m


def test_ffn_collapse_exact_with_identity_activation() -> None:
    model = _encoder_ffn()
    cands = candidates(ir.load(model))
    (chain,) = cands.chains  # the LayerNorms cut: one chain, the FFN with its residual
    opt = cands.option("c0(0,2]:merge:1,2")
    assert opt.fused == (2,) and is_ffn_collapse(cands, opt) and opt.geom.c_in == opt.geom.c_out == 16
    cal = _cal(model, (2, 6, 16))
    fit_activation_maps(cands, model, cal)
    a, b = cands.activation_maps[chain.acts[1].y]
    np.testing.assert_allclose(a, 1.0, atol=1e-6)
    np.testing.assert_allclose(b, 0.0, atol=1e-5)
    got = to_proto(cands.apply_graph([opt], {opt.id: option_operator(cands, opt)}), check=False)
    assert [n.op_type for n in got.graph.node] == ["LayerNormalization", "MatMul", "Add", "LayerNormalization"]
    for B, T in ((1, 3), (3, 7)):  # the emitted d x d layer is valid for any batch and sequence
        x = np.random.default_rng(B).standard_normal((B, T, 16)).astype(np.float32)
        (want,) = _run(_symbolic(model), x)
        (have,) = _run(_symbolic(got), x)
        np.testing.assert_allclose(have, want, rtol=RTOL, atol=ATOL)


def test_ffn_collapse_offered_for_gelu_and_refit_improves() -> None:
    """A GELU FFN: the collapse is an option; its refit operator fits the block better than
    W1 diag(a) W2 + I alone on the calibration rows."""
    b = _B(4)
    h = b.op("LayerNormalization", ["x", b.param((16,), 0.2), b.param((16,), 0.2)], axis=-1)
    f = _gelu_erf(b, b.dense(h, 16, 40), 40)
    y = b.op("LayerNormalization", [b.op("Add", [b.dense(f, 40, 16), h]), b.param((16,), 0.2), b.param((16,), 0.2)], axis=-1)
    model = b.model([2, 6, 16], y, [2, 6, 16])
    cands = candidates(ir.load(model))
    opt = cands.option("c0(0,2]:merge:1,2")
    assert is_ffn_collapse(cands, opt) and "+residual fused" in opt.label
    assert [a.op_type for a in removed_activations(cands, opt)] == ["GELU(Erf)"]
    cal = _cal(model, (2, 6, 16), n=32)
    fit_activation_maps(cands, model, cal)
    _, quality = fit_operators(cands, [opt], model, cal)
    n0, n1 = quality[opt.id]
    assert n1 < n0


def test_data_free_budget_warns_and_removes_gelu(tmp_path) -> None:
    """Budget mode without calibration data removes GELUs on a guess and says so."""
    from onnx_depth import zoo
    from onnx_depth.cli import main

    m = zoo.build("ffn_stack", seq=16, d_model=32, d_ff=1024, blocks=1, act="gelu")
    ir.save(m, tmp_path / "m.onnx")
    rc = main(["-q", "optimize", str(tmp_path / "m.onnx"), str(tmp_path / "o.onnx"), "--latency-budget", "0.5",
               "--latency-db", str(tmp_path / "db.sqlite"), "--report", str(tmp_path / "r.json"),
               "--plan-out", str(tmp_path / "p.json")])
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    said = r["notes"] + [w["message"] for w in r.get("warnings", [])]  # warnings: the report's own list
    assert any("data-free" in n or "guess" in n for n in said)
    p = json.loads((tmp_path / "p.json").read_text())
    assert [a["op_type"] for a in p["removed_activations"]] == ["GELU(Erf)"]
    assert not any(n.op_type == "Erf" for n in onnx.load(tmp_path / "o.onnx").graph.node)
