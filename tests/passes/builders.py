"""The one model builder and the checks shared by the pass tests.

``ModelBuilder`` appends ONNX nodes to a graph with one float input (static or symbolic dims)
and constant float32 initializers; ``model()`` finishes it (opset 17, IR 8, shapes inferred,
onnx.checker). ``check_lossless`` runs the public API (``onnx_depth.api.optimize``), compares the
result with the original in onnxruntime (``onnx_depth.compare``, optimizations disabled) and
asserts that neither the node count nor the MACs went up.
"""

from __future__ import annotations

from collections import Counter
from math import prod
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_depth.api import OptimizeResult, optimize
from onnx_depth.compare import compare_models
from onnx_depth.kernels import ConvSpec

OPSET = 17
IR_VERSION = 8
RTOL = 1e-4
ATOL = 1e-5


# --------------------------------------------------------------------------- random weights
def rand_conv(rng, O, I, kernel, group=1, strides=None, dilations=None, pads=None, bias=True) -> ConvSpec:
    """Weights ~ N(0, 1/fan_in) (activations stay O(1) through a chain), bias ~ N(0, 1)."""
    fan_in = (I // group) * prod(kernel)
    w = rng.standard_normal((O, I // group, *kernel)) / np.sqrt(fan_in)
    b = rng.standard_normal(O) if bias else None
    return ConvSpec(w.astype(np.float32), None if b is None else b.astype(np.float32), strides, dilations, pads, group)


def rand_dense(rng, n_in, n_out, bias=True):
    W = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32) if bias else None
    return W, b


def rand_bn(rng, C):
    """(scale, bias, mean, var): |scale| in [0.5, 1.5] with random sign, var in [0.25, 2]."""
    scale = rng.uniform(0.5, 1.5, C) * rng.choice([-1.0, 1.0], C)
    return (
        scale.astype(np.float32),
        rng.standard_normal(C).astype(np.float32),
        rng.standard_normal(C).astype(np.float32),
        rng.uniform(0.25, 2.0, C).astype(np.float32),
    )


# --------------------------------------------------------------------------- builder
class ModelBuilder:
    """Append nodes to a graph reading input ``x``; ``model(out)`` makes ``out`` the output ``y``."""

    def __init__(self, input_shape: Sequence[int | str], input_name: str = "x") -> None:
        self.x = input_name
        self.input_shape = list(input_shape)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.extra_inputs: list[onnx.ValueInfoProto] = []
        self._n = 0

    def _name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, value, stem: str = "c") -> str:
        name = self._name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def int_const(self, value, stem: str = "i") -> str:
        name = self._name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
        return name

    def input(self, name: str, shape: Sequence[int | str]) -> str:
        """A second graph input (e.g. a weight fed at run time)."""
        self.extra_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def op(self, op_type: str, inputs: Sequence[str], **attrs) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    # ---- layers
    def conv(self, x: str, spec: ConvSpec, weight: str | None = None) -> str:
        ins = [x, weight or self.const(spec.weight, "w")]
        if spec.bias is not None:
            ins.append(self.const(spec.bias, "b"))
        return self.op("Conv", ins, **spec.to_onnx_attrs())

    def bn(self, x: str, params, eps: float = 1e-5) -> str:
        ins = [x] + [self.const(v, n) for v, n in zip(params, ("scale", "beta", "mean", "var"))]
        return self.op("BatchNormalization", ins, epsilon=float(eps))

    def gemm(self, x: str, W, b=None, *, transB: int = 0, alpha: float = 1.0, beta: float = 1.0) -> str:
        """y = alpha * x @ W + beta * C with W given canonically [in, out]; C = b / beta so the
        layer computes x @ (alpha W) + b."""
        B = np.asarray(W).T if transB else np.asarray(W)
        ins = [x, self.const(np.asarray(B) / alpha, "B")]
        if b is not None:
            ins.append(self.const(np.asarray(b) / beta, "C"))
        return self.op("Gemm", ins, transB=int(transB), alpha=float(alpha), beta=float(beta))

    def matmul(self, x: str, W, b=None, bias_first: bool = False) -> str:
        h = self.op("MatMul", [x, self.const(W, "W")])
        if b is None:
            return h
        bias = self.const(b, "bias")
        return self.op("Add", [bias, h] if bias_first else [h, bias])

    def add(self, a: str, b) -> str:
        return self.op("Add", [a, b if isinstance(b, str) else self.const(b, "add")])

    def model(self, out: str | Sequence[str], extra_outputs: Iterable[str] = ()) -> onnx.ModelProto:
        """Finish: `out` is exposed as graph output ``y`` (list: ``y0``, ``y1``, ...);
        `extra_outputs` (intermediate tensors) are graph outputs under their own names."""
        outs = [out] if isinstance(out, str) else list(out)
        names = ["y"] if isinstance(out, str) else [f"y{i}" for i in range(len(outs))]
        extra = set(extra_outputs)
        nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in self.nodes]
        producers = {o: n for n in nodes for o in n.output}
        for o, name in zip(outs, names):
            if o in producers and o not in extra and outs.count(o) == 1:
                # rename the tensor (no Identity: the tests count nodes)
                for n in nodes:
                    n.output[:] = [name if t == o else t for t in n.output]
                    n.input[:] = [name if t == o else t for t in n.input]
            else:
                nodes.append(helper.make_node("Identity", [o], [name], name=f"out_{name}"))
        outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]
        outputs += [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in extra_outputs]
        graph = helper.make_graph(
            nodes,
            "pass_test",
            [helper.make_tensor_value_info(self.x, TensorProto.FLOAT, self.input_shape)] + self.extra_inputs,
            outputs,
            initializer=self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = IR_VERSION
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        for o, io in zip(m.graph.output, inferred.graph.output):
            o.CopyFrom(io)
        onnx.checker.check_model(m, full_check=True)
        return m


# --------------------------------------------------------------------------- inspection
def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def n_nodes(model: onnx.ModelProto, *ops: str) -> int:
    c = op_counts(model)
    return sum(c[o] for o in ops) if ops else sum(c.values())


def refusals(result: OptimizeResult, pass_name: str | None = None) -> list[str]:
    return [r for p in result.report.passes if pass_name in (None, p["pass"]) for r in p["refused"]]


def feeds_for(model: onnx.ModelProto, shape: Sequence[int], n: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random standard-normal feeds of one concrete shape for the model's first input."""
    rng = np.random.default_rng(seed)
    name = model.graph.input[0].name
    return [{name: rng.standard_normal(tuple(shape)).astype(np.float32)} for _ in range(n)]


# --------------------------------------------------------------------------- the check
def assert_same(reference, candidate, feeds: Sequence[Mapping[str, np.ndarray]] | None = None, n_random: int = 2, seed: int = 0) -> None:
    c = compare_models(reference, candidate, feeds=feeds, n_random=n_random, seed=seed, rtol=RTOL, atol=ATOL)
    assert c.allclose, c.summary()


def check_lossless(
    model,
    feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
    *,
    n_random: int = 2,
    seed: int = 0,
    count_border_maps: bool = False,
) -> OptimizeResult:
    """optimize(model, lossless=True): outputs equal in onnxruntime at rtol 1e-4 / atol 1e-5,
    no more nodes, no more MACs, no more parameters, and the result loads again. Returns the result for
    structural assertions."""
    r = optimize(model, lossless=True)
    assert_same(model, r.model, feeds, n_random, seed)
    before, after = r.report.before, r.report.after
    assert after.nodes <= before.nodes, f"node count went up: {before.nodes} -> {after.nodes}"
    b_macs, a_macs = before.macs, after.macs
    if b_macs < 0 or a_macs < 0:
        # Some exporters (paddle2onnx) write -1 as a dim_value for a dynamic dim, which
        # onnx_depth.metrics multiplies in: count those dims as 1, like symbolic ones.
        b_macs, a_macs = macs_with_dynamic_dims_as_one(model), macs_with_dynamic_dims_as_one(r.model)
    assert a_macs <= b_macs, f"MACs went up: {b_macs} -> {a_macs}"
    if count_border_maps:
        assert after.params <= before.params, f"parameters went up: {before.params} -> {after.params}"
    else:  # a CORRECTABLE merge's constant border map is the only growth allowed
        border = sum(int(np.prod(t.dims)) for t in r.model.graph.initializer if ".border" in t.name)
        assert after.params - border <= before.params, f"parameters went up: {before.params} -> {after.params} ({border} in border maps)"
    assert len(r.model.graph.node) == after.nodes  # the report describes the emitted model
    return r


def macs_with_dynamic_dims_as_one(model) -> int:
    """MACs per onnx_depth.metrics after turning negative dim_values into symbolic dims."""
    from onnx_depth import ir, metrics

    m = onnx.load(model) if isinstance(model, str) else onnx.ModelProto.FromString(model.SerializeToString())
    g = m.graph
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.HasField("tensor_type"):
            for d in v.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value < 0:
                    d.dim_param = "dynamic"
    stats = metrics.model_stats(ir.load(m))
    assert stats.macs >= 0
    return stats.macs
