"""The onnx-depth IR: an ONNX graph held in a networkx MultiDiGraph.

* networkx nodes are integer ids; the attribute ``"node"`` holds the :class:`Node`.
* an edge ``producer -> consumer`` exists for every tensor a node reads from another node;
  its key is ``(tensor name, consumer input slot)`` and it carries ``tensor``, ``src_slot`` and
  ``dst_slot``. A subgraph's read of an outer tensor has a negative ``dst_slot``.
* graph inputs and initializers are not nodes: they are tensors without a producer.

Passes use the queries (producer, consumers, is_constant, shape, ...) and the few mutations
(add_node, remove_node, set_input, replace_chain, ...), which keep the indexes and the
networkx edges consistent. Everything else about the model (opsets, ir_version, metadata,
functions, value_info) rides along in :class:`ModelMeta` and is emitted unchanged.
"""

from __future__ import annotations

import copy as _copy
import itertools
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import networkx as nx
import numpy as np
import onnx

from .node import Node
from .tensor import Initializer

Dim = "int | str | None"


@dataclass
class ModelMeta:
    ir_version: int = 8
    opset_import: dict[str, int] = field(default_factory=lambda: {"": 17})
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata_props: list[tuple[str, str]] = field(default_factory=list)
    functions: list[onnx.FunctionProto] = field(default_factory=list)
    training_info: list[onnx.TrainingInfoProto] = field(default_factory=list)
    graph_name: str = ""
    graph_doc_string: str = ""
    sparse_initializers: list[onnx.SparseTensorProto] = field(default_factory=list)
    graph_metadata_props: list[tuple[str, str]] = field(default_factory=list)

    @property
    def opset(self) -> int:
        """The default-domain opset version."""
        return self.opset_import.get("", self.opset_import.get("ai.onnx", 0))


def value_info_dims(v: "onnx.ValueInfoProto | None") -> tuple[int | str | None, ...] | None:
    """The dims of a tensor ValueInfo: ints for static dims, the dim_param (str) or None for
    dynamic ones (a negative dim_value is dynamic); None when it has no shape."""
    if v is None or not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in v.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


class Graph:
    def __init__(self, meta: ModelMeta | None = None) -> None:
        self.meta = meta or ModelMeta()
        self.nx = nx.MultiDiGraph()
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.value_info: dict[str, onnx.ValueInfoProto] = {}
        # planning view (onnx_depth.shapes.fixed_view): tensor -> its shape at the fixed input
        # dims; never emitted, and only `static_shape` reads it (sizes, not validity)
        self.fixed_shapes: dict[str, tuple[int, ...]] = {}
        self.initializers: dict[str, Initializer] = {}
        self._ids = itertools.count()
        self._producer: dict[str, tuple[int, int]] = {}
        self._consumers: dict[str, list[tuple[int, int]]] = {}
        self._names: set[str] = set()

    # ------------------------------------------------------------------ nodes
    def add_node(self, node: Node) -> Node:
        """Add a node; its outputs must not already be produced by another node."""
        for o in node.outputs:
            if o and (o in self._producer or o in self.initializers):
                raise ValueError(f"tensor {o!r} already has a producer")
        node.id = next(self._ids)
        self.nx.add_node(node.id, node=node)
        for slot, o in enumerate(node.outputs):
            if o:
                self._producer[o] = (node.id, slot)
                for cid, dslot in self._consumers.get(o, []):
                    self._add_edge(o, node.id, slot, cid, dslot)
        for slot, t in self._reads(node):
            self._link_input(node, slot, t)
        self._names.add(node.name)
        return node

    def remove_node(self, node: Node) -> None:
        """Remove a node. Its output tensors lose their producer (consumers keep reading them)."""
        for slot, t in self._reads(node):
            self._consumers[t].remove((node.id, slot))
            if not self._consumers[t]:
                del self._consumers[t]
        for o in node.outputs:
            if o and self._producer.get(o, (None,))[0] == node.id:
                del self._producer[o]
        self.nx.remove_node(node.id)

    def node(self, node_id: int) -> Node:
        return self.nx.nodes[node_id]["node"]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.topological_order())

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    @property
    def nodes(self) -> list[Node]:
        """All nodes in topological order (stable: ties keep insertion order)."""
        return self.topological_order()

    def topological_order(self) -> list[Node]:
        order = nx.lexicographical_topological_sort(self.nx, key=lambda i: i)
        return [self.nx.nodes[i]["node"] for i in order]

    def set_input(self, node: Node, slot: int, tensor: str) -> None:
        """Make input `slot` of `node` read `tensor` ('' for an omitted optional input)."""
        old = node.inputs[slot]
        if old:
            self._unlink_input(node, slot, old)
        node.inputs[slot] = tensor
        if tensor:
            self._link_input(node, slot, tensor)

    def replace_uses(self, old: str, new: str) -> int:
        """Point every consumer of tensor `old` at `new`. Graph outputs are not renamed."""
        n = 0
        for cid, slot in list(self._consumers.get(old, [])):
            node = self.node(cid)
            if slot >= 0:
                self.set_input(node, slot, new)
            else:  # read from the outer scope by a subgraph (If/Loop/Scan body)
                self._unlink_input(node, slot, old)
                node.rename_outer(old, new)
                self._link_input(node, slot, new)
            n += 1
        return n

    def replace_chain(self, old: Iterable[Node], new: Iterable[Node]) -> list[Node]:
        """Remove `old` nodes and add `new` ones.

        Every tensor produced inside `old` that is still needed after the rewrite (read by a
        node outside the chain or a graph output) must be produced again by `new`.
        """
        old = list(old)
        new = list(new)
        old_ids = {n.id for n in old}
        produced_new = {o for n in new for o in n.outputs if o}
        for n in old:
            for o in n.outputs:
                if not o or o in produced_new:
                    continue
                outside = [c for c, _ in self._consumers.get(o, []) if c not in old_ids]
                if outside or self.is_graph_output(o):
                    raise ValueError(f"tensor {o!r} of {n.label} is used outside the replaced chain")
        for n in old:
            self.remove_node(n)
        return [self.add_node(n) for n in new]

    # ------------------------------------------------------------------ queries
    def producer(self, tensor: str) -> Node | None:
        p = self._producer.get(tensor)
        return None if p is None else self.node(p[0])

    def consumers(self, tensor: str) -> list[Node]:
        """Distinct nodes reading `tensor` (explicitly or from a subgraph)."""
        seen: dict[int, Node] = {}
        for cid, _ in self._consumers.get(tensor, []):
            seen.setdefault(cid, self.node(cid))
        return list(seen.values())

    def uses(self, tensor: str) -> int:
        """Number of reads of `tensor`: node input slots plus graph outputs."""
        return len(self._consumers.get(tensor, [])) + int(self.is_graph_output(tensor))

    def successors(self, node: Node) -> list[Node]:
        return [self.node(i) for i in self.nx.successors(node.id)]

    def predecessors(self, node: Node) -> list[Node]:
        return [self.node(i) for i in self.nx.predecessors(node.id)]

    def is_graph_input(self, tensor: str) -> bool:
        return any(i.name == tensor for i in self.inputs)

    def is_graph_output(self, tensor: str) -> bool:
        return any(o.name == tensor for o in self.outputs)

    def is_constant(self, tensor: str) -> bool:
        """True for initializers that are not overridable graph inputs."""
        return tensor in self.initializers and not self.is_graph_input(tensor)

    def const(self, tensor: str) -> np.ndarray:
        if not self.is_constant(tensor):
            raise KeyError(f"{tensor!r} is not a constant")
        return self.initializers[tensor].array

    def add_const(self, array: np.ndarray, base: str = "const") -> str:
        name = self.fresh_name(base)
        self.initializers[name] = Initializer(name, array=np.asarray(array))
        return name

    def set_const(self, name: str, array: np.ndarray) -> None:
        if name in self._producer:
            raise ValueError(f"{name!r} is produced by a node")
        self.initializers[name] = Initializer(name, array=np.asarray(array))

    def fresh_name(self, base: str) -> str:
        """A tensor/node name not used anywhere in the graph."""
        taken = self._taken_names()
        if base not in taken:
            self._names.add(base)
            return base
        for i in itertools.count(1):
            cand = f"{base}_{i}"
            if cand not in taken:
                self._names.add(cand)
                return cand
        raise AssertionError

    def _taken_names(self) -> set[str]:
        return (
            self._names
            | set(self._producer)
            | set(self._consumers)
            | set(self.initializers)
            | {i.name for i in self.inputs}
            | {o.name for o in self.outputs}
        )

    def _value_info_of(self, tensor: str) -> onnx.ValueInfoProto | None:
        for v in itertools.chain(self.inputs, self.outputs):
            if v.name == tensor:
                return v
        return self.value_info.get(tensor)

    def shape(self, tensor: str) -> tuple[int | str | None, ...] | None:
        """Known shape: ints for static dims, the symbol (str) or None for dynamic ones."""
        if tensor in self.initializers:
            return self.initializers[tensor].shape
        return value_info_dims(self._value_info_of(tensor))

    def static_shape(self, tensor: str) -> tuple[int, ...] | None:
        """The concrete shape for sizes (MACs, latency, planning geometry): the declared shape
        when it is static, else the shape at the fixed input dims when the graph carries a
        planning view (`fixed_shapes`), else None. Rewrites whose validity depends on a dim
        must read `shape()`, which keeps symbolic dims symbolic."""
        s = self.shape(tensor)
        if s is None or not all(isinstance(d, int) and d >= 0 for d in s):
            return self.fixed_shapes.get(tensor)
        return s  # type: ignore[return-value]

    def elem_type(self, tensor: str) -> int | None:
        if tensor in self.initializers:
            return self.initializers[tensor].elem_type
        v = self._value_info_of(tensor)
        if v is None or not v.type.HasField("tensor_type"):
            return None
        return v.type.tensor_type.elem_type or None

    def set_shape(self, tensor: str, elem_type: int, shape: Iterable[int | str | None] | None) -> None:
        """Record (or replace) the type and shape of an intermediate tensor."""
        if self.is_graph_input(tensor) or self.is_graph_output(tensor):
            return
        self.value_info[tensor] = onnx.helper.make_tensor_value_info(tensor, elem_type, None if shape is None else list(shape))

    def tensors(self) -> set[str]:
        """Every tensor name that is produced, read, or a graph input/output/initializer."""
        return (
            set(self._producer)
            | set(self._consumers)
            | set(self.initializers)
            | {i.name for i in self.inputs}
            | {o.name for o in self.outputs}
        )

    # ------------------------------------------------------------------ cleanup
    def remove_dead_nodes(self) -> int:
        """Remove nodes whose outputs reach no graph output. Returns how many were removed."""
        live: set[int] = set()
        stack = [self._producer[o.name][0] for o in self.outputs if o.name in self._producer]
        while stack:
            i = stack.pop()
            if i in live:
                continue
            live.add(i)
            stack.extend(self.nx.predecessors(i))
        dead = [self.node(i) for i in list(self.nx.nodes) if i not in live]
        for n in dead:
            self.remove_node(n)
        return len(dead)

    def remove_unused_initializers(self) -> int:
        used = set(self._consumers) | {o.name for o in self.outputs} | {i.name for i in self.inputs}
        unused = [k for k in self.initializers if k not in used]
        for k in unused:
            del self.initializers[k]
        return len(unused)

    def prune_value_info(self) -> None:
        """Drop value_info of tensors that no longer exist."""
        alive = set(self._producer)
        self.value_info = {k: v for k, v in self.value_info.items() if k in alive}

    def copy(self) -> "Graph":
        """A deep copy (initializer arrays are shared until replaced: passes assign, never mutate)."""
        g = Graph(_copy.deepcopy(self.meta))
        g.inputs = [_copy.deepcopy(v) for v in self.inputs]
        g.outputs = [_copy.deepcopy(v) for v in self.outputs]
        g.value_info = {k: _copy.deepcopy(v) for k, v in self.value_info.items()}
        g.fixed_shapes = dict(self.fixed_shapes)
        g.initializers = {k: v.copy() for k, v in self.initializers.items()}
        for n in self.topological_order():
            g.add_node(n.copy())
        return g

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _reads(node: Node) -> list[tuple[int, str]]:
        r = [(s, t) for s, t in enumerate(node.inputs) if t]
        r += [(-1 - k, t) for k, t in enumerate(node.implicit_inputs)]
        return r

    def _link_input(self, node: Node, slot: int, tensor: str) -> None:
        self._consumers.setdefault(tensor, []).append((node.id, slot))
        p = self._producer.get(tensor)
        if p is not None:
            self._add_edge(tensor, p[0], p[1], node.id, slot)

    def _unlink_input(self, node: Node, slot: int, tensor: str) -> None:
        self._consumers[tensor].remove((node.id, slot))
        if not self._consumers[tensor]:
            del self._consumers[tensor]
        p = self._producer.get(tensor)
        if p is not None:
            self.nx.remove_edge(p[0], node.id, key=(tensor, slot))

    def _add_edge(self, tensor: str, src: int, src_slot: int, dst: int, dst_slot: int) -> None:
        self.nx.add_edge(src, dst, key=(tensor, dst_slot), tensor=tensor, src_slot=src_slot, dst_slot=dst_slot)
