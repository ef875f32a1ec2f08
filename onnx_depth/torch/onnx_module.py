"""An ONNX graph run by torch, with chosen initializers as trainable parameters.

A small interpreter (not a converter): the nodes run in the model's topological order with the
torch function of each op, so gradients flow to the initializers named `trainable`. It covers
the operators onnx-depth's emitted CNN / MLP graphs hold after its lossless passes (SUPPORTED);
any other operator raises UnsupportedOp, and the caller leaves the model as it is.
`write_back` puts the trained values into a copy of the model under the same names, so the
graph (and its measured latency) is unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

__all__ = ["SUPPORTED", "OnnxModule", "UnsupportedOp"]


class UnsupportedOp(ValueError):
    pass


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv(ins, a):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    r = w.dim() - 2
    if r != 2:
        raise UnsupportedOp(f"Conv of rank {r}")
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"", ""):
        raise UnsupportedOp("Conv with auto_pad")
    p = list(a.get("pads", [0] * 4))
    if p[0] != p[2] or p[1] != p[3]:  # asymmetric pads: pad first
        x = F.pad(x, (p[1], p[3], p[0], p[2]))
        p = [0, 0, 0, 0]
    return F.conv2d(x, w, b, stride=tuple(a.get("strides", [1, 1])), padding=(p[0], p[1]),
                    dilation=tuple(a.get("dilations", [1, 1])), groups=int(a.get("group", 1)))


def _clip(ins, a):
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else a.get("min")
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else a.get("max")
    return torch.clamp(ins[0], None if lo is None else float(lo), None if hi is None else float(hi))


def _pad(ins, a):
    if a.get("mode", b"constant") not in (b"constant", "constant"):
        raise UnsupportedOp("Pad other than constant")
    p = [int(v) for v in ins[1].tolist()]
    r = len(p) // 2
    tp: list[int] = []
    for d in reversed(range(r)):
        tp += [p[d], p[d + r]]
    val = float(ins[2]) if len(ins) > 2 and ins[2] is not None else 0.0
    return F.pad(ins[0], tp, value=val)


def _gemm(ins, a):
    A, B = ins[0], ins[1]
    if a.get("transA", 0):
        A = A.t()
    if a.get("transB", 0):
        B = B.t()
    y = float(a.get("alpha", 1.0)) * (A @ B)
    if len(ins) > 2 and ins[2] is not None:
        y = y + float(a.get("beta", 1.0)) * ins[2]
    return y


def _reshape(ins, a):
    shape = [int(v) for v in ins[1].tolist()]
    shape = [ins[0].shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return ins[0].reshape(shape)


def _unsqueeze(ins, a):
    axes = a["axes"] if "axes" in a else [int(v) for v in ins[1].tolist()]
    y = ins[0]
    for ax in sorted(int(v) % (y.dim() + len(axes)) for v in axes):
        y = y.unsqueeze(ax)
    return y


def _gather(ins, a):
    idx = ins[1].long()
    return torch.index_select(ins[0], int(a.get("axis", 0)), idx.reshape(-1)).reshape(
        list(ins[0].shape[:int(a.get("axis", 0))]) + list(idx.shape) + list(ins[0].shape[int(a.get("axis", 0)) + 1:]))


def _pool(kind):
    def f(ins, a):
        k = tuple(a["kernel_shape"])
        if len(k) != 2 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"", "") or a.get("dilations", [1, 1]) != [1, 1]:
            raise UnsupportedOp(f"{kind} other than 2-D with explicit pads")
        p = list(a.get("pads", [0] * 4))
        x = ins[0]
        if p[0] != p[2] or p[1] != p[3]:
            x = F.pad(x, (p[1], p[3], p[0], p[2]), value=float("-inf") if kind == "MaxPool" else 0.0)
            p = [0, 0, 0, 0]
        st = tuple(a.get("strides", [1, 1]))
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "MaxPool":
            return F.max_pool2d(x, k, st, (p[0], p[1]), ceil_mode=ceil)
        return F.avg_pool2d(x, k, st, (p[0], p[1]), ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))
    return f


OPS = {
    "MaxPool": _pool("MaxPool"),
    "AveragePool": _pool("AveragePool"),
    "Conv": _conv,
    "Clip": _clip,
    "Relu": lambda ins, a: F.relu(ins[0]),
    "LeakyRelu": lambda ins, a: F.leaky_relu(ins[0], float(a.get("alpha", 0.01))),
    "Sigmoid": lambda ins, a: torch.sigmoid(ins[0]),
    "Tanh": lambda ins, a: torch.tanh(ins[0]),
    "PRelu": lambda ins, a: torch.where(ins[0] >= 0, ins[0], ins[0] * ins[1]),
    "Add": lambda ins, a: ins[0] + ins[1],
    "Sub": lambda ins, a: ins[0] - ins[1],
    "Mul": lambda ins, a: ins[0] * ins[1],
    "Div": lambda ins, a: ins[0] / ins[1],
    "Pad": _pad,
    "GlobalAveragePool": lambda ins, a: ins[0].mean(dim=tuple(range(2, ins[0].dim())), keepdim=True),
    "Flatten": lambda ins, a: torch.flatten(ins[0], int(a.get("axis", 1))),
    "Shape": lambda ins, a: torch.tensor(list(ins[0].shape), dtype=torch.int64),
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda ins, a: torch.cat([t.reshape(-1) if t.dim() == 0 else t for t in ins], int(a.get("axis", 0))),
    "Reshape": _reshape,
    "Gemm": _gemm,
    "MatMul": lambda ins, a: ins[0] @ ins[1],
    "Identity": lambda ins, a: ins[0],
}
SUPPORTED = frozenset(OPS)


class OnnxModule(torch.nn.Module):
    """model's graph as a torch module; forward(*inputs) -> outputs (a tuple) in graph order."""

    def __init__(self, model: onnx.ModelProto, trainable: "set[str] | frozenset[str]" = frozenset()):
        super().__init__()
        bad = sorted({n.op_type for n in model.graph.node if n.op_type not in OPS or n.domain not in ("", "ai.onnx")})
        if bad:
            raise UnsupportedOp(f"operator(s) {', '.join(bad)} not supported by the torch runner")
        self.params = torch.nn.ParameterDict()
        self._keys: dict[str, str] = {}
        self._consts: dict[str, torch.Tensor] = {}
        for i, t in enumerate(model.graph.initializer):
            a = numpy_helper.to_array(t)
            if t.name in trainable:
                self._keys[t.name] = f"p{i}"
                self.params[f"p{i}"] = torch.nn.Parameter(torch.tensor(np.array(a, np.float32)))
            else:
                self._consts[t.name] = torch.tensor(np.array(a))
        self._nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in model.graph.node]
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [v.name for v in model.graph.input if v.name not in inits]
        self.output_names = [v.name for v in model.graph.output]

    def _value(self, env: dict, k: str):
        if not k:
            return None
        if k in env:
            return env[k]
        if k in self._keys:
            return self.params[self._keys[k]]
        return self._consts[k]

    def forward(self, *xs: torch.Tensor):
        env = dict(zip(self.input_names, xs))
        for op, ins, outs, a in self._nodes:
            env[outs[0]] = OPS[op]([self._value(env, k) for k in ins], a)
        return tuple(env[k] for k in self.output_names)

    def write_back(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `model` with the trainable initializers set to their current values."""
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for t in m.graph.initializer:
            if t.name in self._keys:
                arr = self.params[self._keys[t.name]].detach().cpu().numpy().astype(np.float32)
                t.CopyFrom(numpy_helper.from_array(arr, t.name))
        return m
