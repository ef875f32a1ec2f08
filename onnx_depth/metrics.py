"""Model statistics for `analyze` and the before/after table: op histogram, depth, parameters,
MACs, activations, graph I/O.

Definitions (also in README):
* depth: the longest path from an input to an output counting *compute* operators, i.e. every
  operator except layout and bookkeeping ones (LAYOUT_OPS below: reshapes, transposes, casts,
  shape queries, slicing, concatenation, identity/dropout);
* parameters: elements of floating-point initializers (BatchNormalization running statistics
  included while BN nodes are present);
* MACs: multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul from inferred shapes, one
  sample at the model's input shape (symbolic dims taken as 1), on the constant-folded graph
  when the caller passes it (`macs_from`);
* activations: nodes whose op type is in ACTIVATION_OPS.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from .ir import Graph, Node

LAYOUT_OPS = frozenset(
    "Identity Dropout Reshape Flatten Squeeze Unsqueeze Transpose Shape Size Cast CastLike "
    "Constant ConstantOfShape Gather Slice Concat Split Expand Range".split()
)
ACTIVATION_OPS = frozenset(
    "Relu Clip LeakyRelu PRelu Sigmoid HardSigmoid HardSwish Tanh Elu Selu Celu Gelu Softplus "
    "Softsign Mish ThresholdedRelu Erf".split()
)
LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass
class TensorInfo:
    name: str
    shape: list[int | str | None] | None
    dtype: str | None


@dataclass
class ModelStats:
    nodes: int
    depth: int
    linear_depth: int
    params: int
    macs: int
    activations: int
    op_histogram: dict[str, int]
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    unknown_mac_nodes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def node_macs(graph: Graph, node: Node) -> int | None:
    """MACs of one node for one run at the inferred shapes; None when shapes are unknown."""
    op = node.op_type
    if op not in LINEAR_OPS or node.domain not in ("", "ai.onnx"):
        return 0
    out = _numel(graph.shape(node.outputs[0]))
    if op in ("Conv", "ConvTranspose"):
        w = graph.shape(node.inputs[1])
        if w is None or not all(isinstance(d, int) for d in w):
            return None
        per = int(np.prod(w[1:], dtype=np.int64))
        if op == "Conv":
            return None if out is None else out * per
        inp = _numel(graph.shape(node.inputs[0]))
        return None if inp is None else inp * per
    a = graph.shape(node.inputs[0])
    if out is None or a is None or not a or not isinstance(a[-1 if op == "MatMul" or not node.attr("transA", 0) else 0], int):
        return None
    if op == "Gemm":
        k = a[0] if node.attr("transA", 0) else a[-1]
    else:
        k = a[-1] if len(a) > 1 else a[0]
    return out * int(k)


def _numel(shape) -> int | None:
    if shape is None:
        return None
    n = 1
    for d in shape:
        n *= d if isinstance(d, int) else 1  # symbolic dims counted as 1
    return n


def _is_compute(node: Node) -> bool:
    return node.op_type not in LAYOUT_OPS


def longest_path(graph: Graph, weight) -> int:
    """Longest input-to-output path where each node counts weight(node) (0 or 1)."""
    best: dict[int, int] = {}
    for n in graph.topological_order():
        preds = [best[p.id] for p in graph.predecessors(n)]
        best[n.id] = (max(preds) if preds else 0) + weight(n)
    return max(best.values(), default=0)


def _tensor_info(graph: Graph, v: onnx.ValueInfoProto) -> TensorInfo:
    et = graph.elem_type(v.name)
    shape = graph.shape(v.name)
    return TensorInfo(v.name, None if shape is None else list(shape), onnx.TensorProto.DataType.Name(et) if et else None)


def model_stats(graph: Graph, *, macs_from: Graph | None = None) -> ModelStats:
    """Statistics of `graph`; MACs from `macs_from` when given: the same model with its constants
    folded, whose shapes inference can resolve (a dynamic-batch export computes its padding from
    Shape ops, so unfolded, every spatial dim after the first Pad is unknown and the MACs of the
    model as given came out 100x too small)."""
    hist = Counter(n.op_type for n in graph.nodes)
    macs, unknown = 0, 0
    mg = graph if macs_from is None else macs_from
    for n in mg.nodes:
        m = node_macs(mg, n)
        if m is None:
            unknown += 1
        else:
            macs += m
    params = sum(t.size for t in graph.initializers.values() if t.dtype.kind in "fc")
    return ModelStats(
        nodes=len(graph),
        depth=longest_path(graph, lambda n: int(_is_compute(n))),
        linear_depth=longest_path(graph, lambda n: int(n.op_type in LINEAR_OPS)),
        params=int(params),
        macs=int(macs),
        activations=sum(c for op, c in hist.items() if op in ACTIVATION_OPS),
        op_histogram=dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
        inputs=[_tensor_info(graph, v) for v in graph.inputs],
        outputs=[_tensor_info(graph, v) for v in graph.outputs],
        unknown_mac_nodes=unknown,
    )
