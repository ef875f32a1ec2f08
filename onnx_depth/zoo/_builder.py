"""A tiny graph builder shared by every zoo family.

It appends named nodes and float32 initializers, draws weights from one seeded generator, and does
the Conv + BatchNormalization pattern in exactly one place (`conv_bn`), either keeping the BN node
or folding it into the conv's weight and bias. Both variants draw the same random numbers in the
same order, so the same seed gives the same network.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8
PRODUCER = "onnx-depth-zoo"
BN_MODES = ("keep", "fold")
BN_EPS = 1e-5


class Builder:
    """Collects nodes and initializers; every node and every initializer gets a unique name.

    Node outputs are named after the node (one output per node), so tensor names are readable too.
    """

    def __init__(self, *, seed: int = 0, bn: str = "keep") -> None:
        if bn not in BN_MODES:
            raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
        self.rng = np.random.default_rng(seed)
        self.fold = bn == "fold"
        # Initializers go straight into the final ModelProto: copying VGG's 0.5 GB costs seconds.
        self._model = onnx.ModelProto()
        self._graph = self._model.graph
        self._node_names: set[str] = set()
        self._tensor_names: set[str] = {"input"}

    # -- primitives -----------------------------------------------------------------------------

    def _claim_tensor(self, name: str) -> None:
        if name in self._tensor_names:
            raise ValueError(f"duplicate tensor name {name!r}")
        self._tensor_names.add(name)

    def param(self, name: str, value: np.ndarray) -> str:
        """Add a float32 initializer; returns its name."""
        self._claim_tensor(name)
        arr = np.asarray(value, dtype="<f4")
        t = self._graph.initializer.add()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(arr.shape)
        t.raw_data = arr.tobytes()
        return name

    def const(self, name: str, value: float) -> str:
        """A shared float32 scalar initializer, created on first use."""
        if name not in self._tensor_names:
            self.param(name, np.array(value, dtype=np.float32))
        return name

    def node(self, op: str, name: str, inputs: Sequence[str], **attrs) -> str:
        """Append one node named `name` whose single output is also called `name`."""
        if name in self._node_names:
            raise ValueError(f"duplicate node name {name!r}")
        self._node_names.add(name)
        self._claim_tensor(name)
        self._graph.node.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    # -- random parameters ----------------------------------------------------------------------

    def normal(self, shape: Sequence[int], std: float) -> np.ndarray:
        return self.rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(std)

    def he(self, shape: Sequence[int], fan_in: int, gain: float = 2.0) -> np.ndarray:
        """Kaiming-normal by fan-in: std = sqrt(gain / fan_in)."""
        return self.normal(shape, np.sqrt(gain / fan_in))

    def bn_stats(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Realistic random (gamma, beta, running_mean, running_var)."""
        gamma = 1.0 + self.normal((c,), 0.1)
        beta = self.normal((c,), 0.1)
        mean = self.normal((c,), 0.1)
        var = self.rng.uniform(0.5, 1.5, size=c).astype(np.float32)
        return gamma, beta, mean, var

    # -- layers ---------------------------------------------------------------------------------

    def conv_bn(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        *,
        conv: str,
        bn: str,
        stride: int = 1,
        pad: int | None = None,
        groups: int = 1,
        conv_bias: bool = False,
        gain: float = 2.0,
    ) -> str:
        """Conv (named `conv`) then BatchNormalization (named `bn`), or the folded Conv alone."""
        pad = (k - 1) // 2 if pad is None else pad
        fan_in = cin // groups * k * k
        w = self.he((cout, cin // groups, k, k), fan_in, gain)
        b = self.normal((cout,), 0.01) if conv_bias else None
        gamma, beta, mean, var = self.bn_stats(cout)
        attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=groups)
        if self.fold:
            s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + BN_EPS)
            b64 = np.zeros(cout) if b is None else b.astype(np.float64)
            wf = w.astype(np.float64) * s[:, None, None, None]
            bf = beta.astype(np.float64) + (b64 - mean.astype(np.float64)) * s
            inputs = [x, self.param(f"{conv}.weight", wf), self.param(f"{conv}.bias", bf)]
            return self.node("Conv", conv, inputs, **attrs)
        inputs = [x, self.param(f"{conv}.weight", w)]
        if b is not None:
            inputs.append(self.param(f"{conv}.bias", b))
        y = self.node("Conv", conv, inputs, **attrs)
        bn_inputs = [y] + [
            self.param(f"{bn}.{p}", v)
            for p, v in zip(("weight", "bias", "running_mean", "running_var"), (gamma, beta, mean, var))
        ]
        return self.node("BatchNormalization", bn, bn_inputs, epsilon=BN_EPS)

    def conv(self, x: str, cin: int, cout: int, k: int, *, name: str, stride: int = 1,
             pad: int | None = None, groups: int = 1, gain: float = 2.0) -> str:
        """A plain Conv with weight and random bias (no BN)."""
        pad = (k - 1) // 2 if pad is None else pad
        w = self.he((cout, cin // groups, k, k), cin // groups * k * k, gain)
        b = self.normal((cout,), 0.01)
        inputs = [x, self.param(f"{name}.weight", w), self.param(f"{name}.bias", b)]
        return self.node("Conv", name, inputs, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4, group=groups)

    def gemm(self, x: str, cin: int, cout: int, *, name: str, gain: float = 2.0) -> str:
        """Gemm as torch exports nn.Linear: B = weight [out, in], transB=1, bias [out]."""
        w = self.he((cout, cin), cin, gain)
        b = self.normal((cout,), 0.01)
        inputs = [x, self.param(f"{name}.weight", w), self.param(f"{name}.bias", b)]
        return self.node("Gemm", name, inputs, alpha=1.0, beta=1.0, transB=1)

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", name, [x])

    def relu6(self, x: str, name: str) -> str:
        """ReLU6 as exporters emit it: Clip with min/max inputs (shared scalar initializers)."""
        return self.node("Clip", name, [x, self.const("relu6.min", 0.0), self.const("relu6.max", 6.0)])

    def classifier_head(self, x: str, cin: int, num_classes: int, *, fc: str) -> str:
        """GlobalAveragePool, Flatten, Gemm."""
        x = self.node("GlobalAveragePool", "avgpool", [x])
        x = self.node("Flatten", "flatten", [x], axis=1)
        return self.gemm(x, cin, num_classes, name=fc, gain=1.0)

    # -- model ----------------------------------------------------------------------------------

    def model(self, out: str, in_shape: Sequence[int], out_shape: Sequence[int], graph_name: str) -> onnx.ModelProto:
        """Finish: rename tensor `out` to "output", declare input/output and the conventions."""
        for n in self._graph.node:
            for i, v in enumerate(n.output):
                if v == out:
                    n.output[i] = "output"
        g = self._graph
        g.name = graph_name
        g.input.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_shape)))
        g.output.append(helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out_shape)))
        m = self._model
        m.ir_version = IR_VERSION
        m.producer_name = PRODUCER
        m.opset_import.append(helper.make_opsetid("", OPSET))
        self._model = None  # type: ignore[assignment]  # one model per builder
        return m
