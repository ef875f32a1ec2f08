"""Cut a standalone ONNX model out of the IR: the single subgraph extractor.

`extract(graph, nodes)` returns a model that computes exactly what `nodes` compute inside
`graph`:

* inputs: every tensor the nodes read (explicitly or from a subgraph body) that no node of the
  set produces and that is not a constant, with the type and shape the IR knows (graph inputs
  keep their ValueInfo as declared; intermediates take their inferred value_info);
* outputs: every tensor the set produces that a node outside the set reads or that is a graph
  output (`outputs=` overrides this; if nothing qualifies, the set's sink tensors are used, so
  that no node of the set is dead in the extracted model);
* weights: the constants the nodes read, shared with the graph (no copy until emitted), or
  random arrays of the same shape and dtype when `random_weights` (floating tensors only, and
  not scalars: a Clip bound or a Pow exponent is a parameter, not a weight);
* value_info of the intermediates, the original ir_version, opsets and model functions.

Nodes are emitted in topological order by the IR exporter (`to_proto`), so the result passes
`onnx.checker` when `check` is true.
"""

from __future__ import annotations

import copy as _copy
from typing import Any, Iterable, Sequence

import networkx as nx
import numpy as np
import onnx

from .exporter import to_proto
from .graph import Graph
from .node import Node
from .tensor import Initializer


def _reads(node: Node) -> list[str]:
    return [t for t in node.inputs if t] + list(node.implicit_inputs)


def boundary(graph: Graph, nodes: Iterable[Node]) -> tuple[list[str], list[str], list[str]]:
    """(input tensors, constant tensors, output tensors) of a node set, in a stable order.

    Outputs are the produced tensors that are read outside the set or are graph outputs.
    """
    nodes = list(nodes)
    ids = {n.id for n in nodes}
    produced = {o for n in nodes for o in n.outputs if o}
    inputs: list[str] = []
    consts: list[str] = []
    seen: set[str] = set()
    for n in nodes:
        for t in _reads(n):
            if t in produced or t in seen:
                continue
            seen.add(t)
            (consts if graph.is_constant(t) else inputs).append(t)
    outputs: list[str] = []
    for n in nodes:
        for o in n.outputs:
            if not o:
                continue
            outside = any(c.id not in ids for c in graph.consumers(o))
            if outside or graph.is_graph_output(o):
                outputs.append(o)
    return inputs, consts, outputs


def _value_info(graph: Graph, tensor: str) -> onnx.ValueInfoProto:
    """The boundary tensor's ValueInfo; with a planning view (Graph.fixed_shapes) its static
    shape there, so that a timing model is static even when the graph is symbolic."""
    if tensor in graph.fixed_shapes and graph.shape(tensor) != graph.fixed_shapes[tensor]:
        elem = graph.elem_type(tensor) or onnx.TensorProto.FLOAT
        return onnx.helper.make_tensor_value_info(tensor, elem, list(graph.fixed_shapes[tensor]))
    for v in graph.inputs:
        if v.name == tensor:
            return _copy.deepcopy(v)
    for v in graph.outputs:
        if v.name == tensor:
            return _copy.deepcopy(v)
    v = graph.value_info.get(tensor)
    if v is not None:
        return _copy.deepcopy(v)
    elem = graph.elem_type(tensor) or onnx.TensorProto.FLOAT
    return onnx.helper.make_tensor_value_info(tensor, elem, None)


def _random_like(init: Initializer, rng: np.random.Generator) -> Initializer:
    dtype = init.dtype
    if not np.issubdtype(dtype, np.floating) or init.size <= 1:
        return init.copy()
    shape = init.shape
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else max(int(shape[0]) if shape else 1, 1)
    arr = (rng.standard_normal(shape) * np.sqrt(1.0 / max(fan_in, 1))).astype(dtype)
    return Initializer(init.name, array=arr)


def extract(graph: Graph, nodes: Iterable[Node | int], *, check: bool = False, **options: Any) -> onnx.ModelProto:
    """A standalone ModelProto computing `nodes` (Node objects or IR ids) of `graph`.

    `options` are `extract_graph`'s: random_weights (replace floating, non-scalar constants by
    seeded random arrays of the same shape and dtype, for timing: only shapes matter), seed,
    outputs (the tensors to expose instead of the automatic choice: any tensor produced by the
    set), name. check: run onnx.checker (full). The graph is not modified.
    """
    return to_proto(extract_graph(graph, nodes, **options), check=check)


def extract_graph(
    graph: Graph,
    nodes: Iterable[Node | int],
    *,
    random_weights: bool = False,
    seed: int = 0,
    outputs: Sequence[str] | None = None,
    name: str | None = None,
) -> Graph:
    """Like `extract`, but the standalone model as an IR Graph (to rewrite before emitting).
    Its nodes are copies; initializers share the graph's arrays until replaced."""
    chosen: list[Node] = []
    seen_ids: set[int] = set()
    for n in nodes:
        node = graph.node(n) if isinstance(n, int) else n
        if node.id not in graph.nx:
            raise ValueError(f"{node.label} is not a node of this graph")
        if node.id not in seen_ids:
            seen_ids.add(node.id)
            chosen.append(node)
    if not chosen:
        raise ValueError("extract needs at least one node")
    ins, consts, outs = boundary(graph, chosen)
    produced = {o for n in chosen for o in n.outputs if o}
    if outputs is not None:
        outs = list(outputs)
        missing = [o for o in outs if o not in produced]
        if missing:
            raise ValueError(f"requested outputs {missing} are not produced by the extracted nodes")
    if not outs:  # nothing read outside: expose the sinks so nothing is dead
        read_inside = {t for n in chosen for t in _reads(n)}
        outs = [o for n in chosen for o in n.outputs if o and o not in read_inside]

    meta = _copy.deepcopy(graph.meta)
    meta.training_info = []
    meta.graph_name = name or (meta.graph_name or "graph") + ".extract"
    meta.graph_doc_string = ""
    meta.sparse_initializers = [s for s in meta.sparse_initializers if s.values.name in consts]
    sub = Graph(meta)
    sub.inputs = [_value_info(graph, t) for t in ins]
    sub.outputs = [_value_info(graph, t) for t in outs]
    rng = np.random.default_rng(seed)
    for t in consts:
        init = graph.initializers[t]
        sub.initializers[t] = _random_like(init, rng) if random_weights else init.copy()
    out_set = set(outs)
    sub.value_info = {t: _copy.deepcopy(v) for t, v in graph.value_info.items() if t in produced and t not in out_set}
    order = nx.lexicographical_topological_sort(graph.nx.subgraph(seen_ids), key=lambda i: i)
    for i in order:
        sub.add_node(graph.node(i).copy())
    return sub


__all__ = ["boundary", "extract", "extract_graph"]

