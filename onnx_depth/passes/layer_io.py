"""Write linear layers back into the IR: a ConvSpec as a Conv node, a dense (W, b) as a Gemm or
MatMul (+ bias Add).

Reading them (and the layer units every pass matches: a layer with its bias Add and BatchNorm)
is `analysis.layer_unit`; its names are re-exported here for the passes and planning modules
that read and write.
"""

from __future__ import annotations

import numpy as np

from ..analysis.layer_unit import (BN, Dense, LayerUnit, channel_vector, dense_ending_at, known_shape, rank_of, read_bn,
                                   read_conv, read_dense, spatial_shape, unit_ending_at)
from ..ir import Graph, Node
from ..kernels import ConvSpec

__all__ = ["BN", "Dense", "LayerUnit", "channel_vector", "conv_node", "dense_ending_at", "dense_nodes", "known_shape",
           "rank_of", "read_bn", "read_conv", "read_dense", "spatial_shape", "unit_ending_at"]

def conv_node(graph: Graph, spec: ConvSpec, x: str, y: str, name: str) -> Node:
    """A new Conv node computing `spec` from tensor x into tensor y (weights become initializers)."""
    w = graph.add_const(np.asarray(spec.weight, np.float32), name + ".weight")
    inputs = [x, w]
    if spec.bias is not None:
        inputs.append(graph.add_const(np.asarray(spec.bias, np.float32), name + ".bias"))
    n = Node("Conv", inputs, [y], name=graph.fresh_name(name))
    n.set_attr("kernel_shape", [int(k) for k in spec.weight.shape[2:]])
    n.set_attr("strides", list(spec.strides))
    n.set_attr("dilations", list(spec.dilations))
    n.set_attr("pads", list(spec.pads))
    n.set_attr("group", int(spec.group))
    return n


def dense_nodes(graph: Graph, W: np.ndarray, b: np.ndarray | None, x: str, y: str, name: str) -> list[Node]:
    """Gemm for 2-D activations, MatMul (+ bias Add) otherwise."""
    rank = len(graph.shape(x) or ())
    wn = graph.add_const(np.asarray(W, np.float32), name + ".weight")
    if rank == 2:
        inputs = [x, wn] + ([graph.add_const(np.asarray(b, np.float32), name + ".bias")] if b is not None else [])
        return [Node("Gemm", inputs, [y], name=graph.fresh_name(name))]
    if b is None:
        return [Node("MatMul", [x, wn], [y], name=graph.fresh_name(name))]
    mid = graph.fresh_name(name + ".matmul_out")
    if graph.shape(y) is not None:
        graph.set_shape(mid, graph.elem_type(y) or 1, graph.shape(y))
    bn = graph.add_const(np.asarray(b, np.float32), name + ".bias")
    return [Node("MatMul", [x, wn], [mid], name=graph.fresh_name(name)), Node("Add", [mid, bn], [y], name=graph.fresh_name(name + ".add"))]
